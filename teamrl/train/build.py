"""From a config to the (team env, algorithm) pair a trainer trains, every setting checked
first; and the arithmetic of updates and env steps."""

from __future__ import annotations

from teamrl.algos import ALGORITHMS
from teamrl.config import Config, ConfigError, check_sizes, round_total_steps, validate_section
from teamrl.envs.registry import make_env


def resolve_agent_id(config: Config) -> bool:
    """``agent_id=auto``: on when actors are shared, or when every agent observes the same
    global state (MaMuJoCo ``obs=global``), where the id is the only thing telling them apart."""
    setting = config.run.agent_id
    if setting == "auto":
        return (bool(getattr(config.algo, "share_actor", False))
                or getattr(config.env, "obs", None) == "global")
    return setting == "true"


def build(config: Config):
    """Validate the config and build (team env, algorithm). Raises ConfigError."""
    run = config.run
    for section in config.sections().values():
        validate_section(section)
    if run.algo not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {run.algo!r}; valid algorithms: "
                          + ", ".join(sorted(ALGORITHMS)))
    algo_cls = ALGORITHMS[run.algo]
    if config.network.recurrent:
        check_recurrent(config, algo_cls)
    team_env = make_env(run.env_id, config.env, agent_id=resolve_agent_id(config),
                        team_reward=run.team_reward)
    check_sizes(config, team_env.spec)  # memory with the env's real widths, before allocating
    algo_cls.check(team_env.spec, config.algo, run)
    round_total_steps(run)  # whole updates only, with a notice; after every refusal
    # Learners replaying whole episodes keep each env's running episode: they need num_envs.
    extra = {"num_envs": run.num_envs} if getattr(algo_cls, "episode_replay", False) else {}
    algo = algo_cls(team_env.spec, config.algo, config.network, total_updates(run), **extra)
    if config.network.obs_norm:
        from teamrl.algos.obs_norm import ObsNormalised

        algo = ObsNormalised(algo, team_env.spec)
    return team_env, algo


def check_recurrent(config: Config, algo_cls) -> None:
    """Reject ``recurrent=true`` where it cannot work, before anything is built."""
    from teamrl.envs.registry import get_entry

    run, net = config.run, config.network
    if not getattr(algo_cls, "supports_recurrent", False):
        valid = sorted(n for n, c in ALGORITHMS.items() if getattr(c, "supports_recurrent", False))
        raise ConfigError(f"recurrent=true is not available for {run.algo!r}; valid: "
                          + ", ".join(valid))
    if get_entry(run.env_id).host:
        raise ConfigError(f"recurrent=true needs a compiled env; {run.env_id!r} is stepped on "
                          "the host (valid: mpe/*, smax/*, didactic/*, gymnax/*)")
    if getattr(algo_cls, "episode_replay", False):
        return  # trained on whole stored episodes (teamrl/algos/iql.py): no chunks
    if run.rollout_length % net.chunk_length:
        raise ConfigError(f"chunk_length={net.chunk_length} must divide rollout_length="
                          f"{run.rollout_length} (recurrent=true)")
    sequences = run.num_envs * run.rollout_length // net.chunk_length
    minibatches = getattr(config.algo, "minibatches", 1)
    if sequences % minibatches:
        raise ConfigError(f"minibatches={minibatches} must divide the number of recurrent "
                          f"sequences num_envs*rollout_length/chunk_length={sequences}")
    if getattr(config.algo, "fisher_subsample", 1) > 1:
        raise ConfigError("fisher_subsample must be 1 with recurrent=true (subsampling would "
                          "cut the sequences)")


def steps_per_update(run) -> int:
    return run.num_envs * run.rollout_length


def total_updates(run) -> int:
    return max(run.total_steps // steps_per_update(run), 1)
