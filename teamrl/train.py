"""The training loop: rollout -> update, compiled in chunks of updates, seeds vectorised.

``Trainer.run_chunk`` is one XLA program that performs K updates for every seed (vmap over
seeds, scan over updates) and returns per-update metrics; Python only logs and checkpoints
between chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from teamrl import distributed
from teamrl.algos import ALGORITHMS
from teamrl.config import (Config, ConfigError, check_sizes, round_total_steps,
                           validate_section)
from teamrl.envs.registry import make_env
from teamrl.envs.spec import TeamObs
from teamrl.host_policy import numpy_policy
from teamrl.rollout import (Batch, HostCollector, RolloutCarry, collect, collect_recurrent,
                            reset_envs)


@flax.struct.dataclass
class Runner:
    """The whole state of one seed's training; batched over seeds with a leading [S] axis."""

    train_state: Any
    rollout: RolloutCarry
    key: jax.Array
    updates: jax.Array  # [] int32 updates done


def all_finite(tree) -> jax.Array:
    """[] bool: every floating-point leaf of ``tree`` is finite (the divergence check)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.floating)]))


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
    algo = algo_cls(team_env.spec, config.algo, config.network, total_updates(run))
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


def make_trainer(config: Config) -> "Trainer":
    """The trainer for ``config``: compiled envs train in one XLA program per chunk of
    updates, host envs (MaMuJoCo, PettingZoo) through :class:`HostTrainer`."""
    from teamrl.envs.registry import get_entry

    return HostTrainer(config) if get_entry(config.run.env_id).host else Trainer(config)


@dataclass
class Trainer:
    """Compiled training of ``config.run.seeds`` seeds of one (algorithm, env)."""

    config: Config

    def close(self) -> None:
        """Release resources held outside JAX (none for compiled envs)."""

    def __post_init__(self):
        self.team_env, self.algo = build(self.config)
        self.spec = self.team_env.spec
        self.placement = distributed.placement(self.config.run)
        self._chunk = jax.jit(jax.vmap(self._run_chunk, in_axes=(0, None)), static_argnums=1)
        self._sharded_chunks = {}
        self._evaluate = None

    # ------------------------------------------------------------------------ init
    def seed_keys(self) -> jax.Array:
        run = self.config.run
        return jnp.stack([jax.random.PRNGKey(run.seed + i) for i in range(run.seeds)])

    @property
    def runner_shape(self) -> Runner:
        """The [S]-batched Runner as ShapeDtypeStructs (the template of shardings)."""
        return jax.eval_shape(jax.vmap(self._init_one), self.seed_keys())

    def init(self) -> Runner:
        """[S]-batched initial runner state (on several devices: the environments split over
        them, everything else replicated)."""
        init_all = jax.vmap(self._init_one)
        if self.placement.mesh is None:
            return jax.jit(init_all)(self.seed_keys())
        shardings = self.placement.runner_shardings(self.runner_shape)
        return jax.jit(init_all, out_shardings=shardings)(self.seed_keys())

    def place(self, runner: Runner) -> Runner:
        """A runner loaded from a checkpoint (numpy leaves), put where ``init`` puts one."""
        if self.placement.mesh is None:
            return runner  # the compiled chunk takes numpy leaves as they are
        return self.placement.place(runner, self.runner_shape)

    def _init_one(self, key) -> Runner:
        init_key, env_key, key = jax.random.split(key, 3)
        train_state = self.algo.init(init_key)
        num_envs = self.config.run.num_envs
        memory = self.algo.init_memory(num_envs) if self.algo_recurrent else ()
        rollout = reset_envs(self.team_env, env_key, num_envs, memory)
        return Runner(train_state, rollout, key, jnp.int32(0))

    @property
    def algo_recurrent(self) -> bool:
        return bool(getattr(self.algo, "recurrent", False))

    # ----------------------------------------------------------------------- update
    def collect(self, ts, rollout, key):
        """One rollout of ``rollout_length`` steps with the current policy: -> (rollout carry,
        Batch [T, E, ...], EpisodeStats)."""
        length = self.config.run.rollout_length
        if self.algo_recurrent:
            return collect_recurrent(
                self.team_env, partial(self.algo.recurrent_act, ts),
                partial(self.algo.recurrent_value, ts), rollout, key, length)

        def act(obs, key):
            # Values are left to ``collect``, which evaluates the critic once, batched
            # over the whole rollout, after the scan (XLA drops the in-loop critic call).
            action, log_prob, _ = self.algo.act(ts, obs, key)
            return action, log_prob, None

        return collect(self.team_env, act, partial(self.algo.values, ts), rollout, key, length)

    def _update(self, runner: Runner, _):
        key, rollout_key, update_key = jax.random.split(runner.key, 3)
        ts = runner.train_state
        rollout, batch, stats = self.collect(ts, runner.rollout, rollout_key)
        ts, metrics = self.algo.update(ts, batch, update_key)
        finite = all_finite(ts)
        metrics = {**metrics, "params_finite": finite, "episodes": stats.count,
                   "return_sum": stats.return_sum, "return_min": stats.return_min,
                   "return_max": stats.return_max,
                   "reward_mean": batch.reward.mean()}
        if self.spec.has_wins:
            metrics["win_sum"] = stats.win_count
        return Runner(ts, rollout, key, runner.updates + 1), metrics

    def _run_chunk(self, runner: Runner, num_updates: int):
        return jax.lax.scan(self._update, runner, None, length=num_updates)

    def _sharded_chunk(self, num_updates: int):
        """The chunk of K updates compiled for the device mesh (runner shardings in and out,
        replicated metrics)."""
        if num_updates not in self._sharded_chunks:
            chunk = jax.vmap(self._run_chunk, in_axes=(0, None))
            self._sharded_chunks[num_updates] = self.placement.jit(
                lambda runner: chunk(runner, num_updates), self.runner_shape, extra_out=True)
        return self._sharded_chunks[num_updates]

    def compile_chunk(self, runner: Runner, num_updates: int):
        """Ahead-of-time compile K updates for all seeds (so compile time is measured apart);
        returns a callable runner -> (runner, metrics)."""
        if self.placement.mesh is not None:
            return self._sharded_chunk(num_updates).lower(runner).compile()
        return self._chunk.lower(runner, num_updates).compile()

    def run_chunk(self, runner: Runner, num_updates: int):
        """K updates for all seeds: -> (runner, metrics dict of [S, K] arrays)."""
        if self.placement.mesh is not None:
            return self._sharded_chunk(num_updates)(runner)
        return self._chunk(runner, num_updates)

    def eval_names(self) -> list[str]:
        """The metrics.csv columns of :meth:`evaluate`'s result, in order."""
        names = ["return"] + (["win_rate"] if self.spec.has_wins else []) + list(
            self.spec.episode_metrics)
        return [f"eval_{name}_{suffix}" for name in names for suffix in ("det", "stoch")]

    def evaluation_returns(self, train_state, keys, episodes: int, deterministic: bool):
        """(returns, won) [S, episodes] of the first episode of ``episodes`` envs per seed."""
        from teamrl.evaluate import episode_returns

        return jax.jit(jax.vmap(lambda ts, key: episode_returns(
            self.team_env, self.algo, ts, key, episodes, deterministic)))(train_state, keys)

    def evaluate(self, runner: Runner, episodes: int) -> dict:
        """Evaluation episodes of every seed's current policy, apart from training: ->
        {"eval_return_det": [S], "eval_return_stoch": [S]} (means over ``episodes``), plus
        ``eval_win_rate_det`` / ``eval_win_rate_stoch`` for envs with wins.

        The keys are folded from each seed's key, never split off it, so evaluating does
        not change the training random stream (resumed runs stay bitwise identical).
        """
        from teamrl.evaluate import episode_returns

        if self._evaluate is None:
            def both(ts, key):
                det_key, stoch_key = jax.random.split(jax.random.fold_in(key, 0x5EED))
                run = partial(episode_returns, self.team_env, self.algo, ts, episodes=episodes)
                (det, det_won), (stoch, stoch_won) = (run(key=det_key, deterministic=True),
                                                      run(key=stoch_key, deterministic=False))
                return {"eval_return_det": jnp.nanmean(det),
                        "eval_return_stoch": jnp.nanmean(stoch),
                        "eval_win_rate_det": jnp.nanmean(det_won),
                        "eval_win_rate_stoch": jnp.nanmean(stoch_won)}

            replicated = ({} if self.placement.mesh is None
                          else {"out_shardings": self.placement.replicated})
            self._evaluate = jax.jit(jax.vmap(both), **replicated)
        result = self._evaluate(runner.train_state, runner.key)
        if not self.spec.has_wins:
            result = {k: v for k, v in result.items() if "win" not in k}
        return result


class HostTrainer(Trainer):
    """Training on host environments: each update is a Python loop of T steps (one jitted
    action call per step, the envs stepped by worker processes) followed by the same
    compiled ``algo.update`` as for compiled envs, vmapped over seeds.

    The environments live outside the checkpoint: a resumed run restarts their episodes.
    """

    def __post_init__(self):
        self.team_env, self.algo = build(self.config)
        self.spec = self.team_env.spec
        self.placement = distributed.placement(self.config.run, host_env=True)

        def act(ts, obs, key):
            action, log_prob, _ = self.algo.act(ts, obs, key)
            return action, log_prob

        self._act = act
        self._collector = None
        self._split = jax.jit(jax.vmap(lambda k: jax.random.split(k, 3)))
        self._update_seeds = jax.jit(jax.vmap(self._host_update, in_axes=(0, 1, 0)))
        self._compiled_update = None
        self._evaluate = None
        self._eval_env = None

    @property
    def collector(self) -> HostCollector:
        """The training envs and their workers, started on first use (evaluation and
        rendering of a saved run need none)."""
        if self._collector is None:
            run = self.config.run
            policy = numpy_policy(self.algo) if run.host_act == "numpy" else None
            self._collector = HostCollector(self.team_env, self._act, run.seeds, run.num_envs,
                                            run.rollout_length, run.seed, numpy_policy=policy)
            self._collector.reset()
        return self._collector

    def _init_one(self, key) -> Runner:
        init_key, _, key = jax.random.split(key, 3)  # same key use as compiled envs
        return Runner(self.algo.init(init_key), None, key, jnp.int32(0))

    def host_batch(self, ts, arrays) -> Batch:
        """One seed's Batch from its rollout arrays ([T, E, ...] each, as collected): the
        critic is evaluated once over the observations and the final observations."""
        obs, final_obs, action, log_prob, reward, terminated, truncated = arrays
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), obs, final_obs)
        value, next_value = jnp.split(self.algo.values(ts, both), 2)
        return Batch(obs=obs, action=action, log_prob=log_prob, value=value,
                     next_value=next_value, reward=reward, terminated=terminated,
                     truncated=truncated, next_obs=final_obs)

    def _host_update(self, ts, arrays, update_key):
        """One seed's update from its rollout arrays ([T, E, ...] each)."""
        reward = arrays[4]
        ts, metrics = self.algo.update(ts, self.host_batch(ts, arrays), update_key)
        finite = all_finite(ts)
        return ts, {**metrics, "params_finite": finite, "reward_mean": reward.mean()}

    def _seed_major(self, arrays):
        """[T, S·E, ...] -> [T, S, E, ...] views, the layout ``_update_seeds`` maps over."""
        S, E = self.config.run.seeds, self.config.run.num_envs
        return jax.tree.map(lambda x: x.reshape(x.shape[:1] + (S, E) + x.shape[2:]), arrays)

    def _one_update(self, runner: Runner):
        import time

        import numpy as np

        keys = self._split(runner.key)
        next_key, rollout_key, update_key = keys[:, 0], keys[:, 1], keys[:, 2]
        arrays, stats = self.collector.collect(runner.train_state, rollout_key)
        t0 = time.perf_counter()
        update = self._compiled_update or self._update_seeds
        ts, metrics = update(runner.train_state, self._seed_major(arrays), update_key)
        metrics = jax.tree.map(np.asarray, metrics)
        self.collector.timings["update"] = (self.collector.timings.get("update", 0.0)
                                            + time.perf_counter() - t0)
        metrics.update(episodes=stats.count, return_sum=stats.return_sum,
                       return_min=stats.return_min, return_max=stats.return_max)
        if self.spec.has_wins:
            metrics["win_sum"] = stats.win_count
        for k, name in enumerate(self.spec.episode_metrics):
            metrics[EPISODE_SUM + name] = stats.metric_sum[:, k]
            metrics[EPISODE_COUNT + name] = stats.metric_count[:, k]
        return Runner(ts, None, next_key, runner.updates + 1), metrics

    def compile_chunk(self, runner: Runner, num_updates: int):
        """Compile the update ahead of time (the action function compiles on its first call);
        returns runner -> (runner, metrics dict of [S, K] arrays)."""
        if self._compiled_update is None:
            c = self.collector
            arrays = (c.obs, c.final_obs, c.action, c.log_prob, c.reward, c.terminated,
                      c.truncated)
            keys = self._split(runner.key)[:, 2]
            self._compiled_update = self._update_seeds.lower(
                runner.train_state, self._seed_major(arrays), keys).compile()
        return lambda r: self.run_chunk(r, num_updates)

    def run_chunk(self, runner: Runner, num_updates: int):
        import numpy as np

        rows = []
        for _ in range(num_updates):
            runner, metrics = self._one_update(runner)
            rows.append(metrics)
        stacked = {name: np.stack([m[name] for m in rows], axis=1) for name in rows[0]}
        return runner, stacked

    def evaluation_returns(self, train_state, keys, episodes: int, deterministic: bool):
        """(returns, won) [S, episodes] of the first episode of ``episodes`` fresh host envs
        per seed (fixed start seeds, apart from the training envs). ``won`` is the env's
        "won" metric (0 for envs without one). The first episodes' other metrics are left in
        ``self.last_eval_metrics`` ({name: [S, episodes]})."""
        import numpy as np

        S = self.config.run.seeds
        if self._eval_env is None or self._eval_env.num_envs != S * episodes:
            if self._eval_env is not None:
                self._eval_env.close()
            self._eval_env = self.team_env.vector(S * episodes)
        if self._evaluate is None:
            # The step's key is folded in inside the compiled call (no per-step tracing).
            self._evaluate = jax.jit(jax.vmap(
                lambda ts, obs, key, t, det: self.algo.policy_action(
                    ts, obs, jax.random.fold_in(key, t), det),
                in_axes=(0, 0, 0, None, None)), static_argnums=4)
        vec = self._eval_env
        vec.reset([2**30 + (self.config.run.seed + s) * 100_003 + e
                   for s in range(S) for e in range(episodes)])
        names = vec.layout.metric_names
        running = np.zeros(S * episodes)
        final = np.full(S * episodes, np.nan)
        metrics = np.full((S * episodes, max(len(names), 1)), np.nan)
        limit = self.spec.max_steps or 100_000
        for t in range(limit):
            obs = vec.observation()
            obs = TeamObs(*(x.reshape((S, episodes) + x.shape[1:]) for x in obs))
            action = np.asarray(self._evaluate(train_state, obs, keys, np.int32(t),
                                               deterministic))
            vec.step(action.reshape((S * episodes,) + action.shape[2:]))
            b = vec.buffers
            running += b.reward
            done = (b.terminated | b.truncated) & np.isnan(final)
            final[done] = running[done]
            metrics[done] = b.episode_metrics[done]
            if not np.isnan(final).any():
                break
        self.last_eval_metrics = {n: metrics[:, k].reshape(S, episodes)
                                  for k, n in enumerate(names)}
        won = (self.last_eval_metrics.pop("won") if "won" in names
               else np.where(np.isnan(final), np.nan, 0.0).reshape(S, episodes))
        return final.reshape(S, episodes), won

    def evaluate(self, runner: Runner, episodes: int) -> dict:
        import numpy as np

        keys = jax.vmap(lambda k: jax.random.fold_in(k, 0x5EED))(runner.key)
        det_keys, stoch_keys = (jax.vmap(lambda k: jax.random.split(k)[i])(keys)
                                for i in (0, 1))
        result = {}
        for suffix, keys, deterministic in (("det", det_keys, True),
                                            ("stoch", stoch_keys, False)):
            returns, won = self.evaluation_returns(runner.train_state, keys, episodes,
                                                   deterministic)
            result[f"eval_return_{suffix}"] = np.nanmean(returns, axis=1)
            if self.spec.has_wins:
                result[f"eval_win_rate_{suffix}"] = np.nanmean(won, axis=1)
            for name, values in self.last_eval_metrics.items():
                result[f"eval_{name}_{suffix}"] = _nanmean_rows(values)
        return result

    def close(self) -> None:
        if self._collector is not None:
            self._collector.close()
        if self._eval_env is not None:
            self._eval_env.close()


def _nanmean_rows(values):
    """Row means ignoring NaN ([S, episodes] -> [S]; NaN for rows with no defined value)."""
    import numpy as np

    defined = ~np.isnan(values)
    counts = defined.sum(axis=1)
    return np.where(counts > 0, np.where(defined, values, 0.0).sum(axis=1)
                    / np.maximum(counts, 1), np.nan)


# =============================================================================== host loop
class TrainingStopped(RuntimeError):
    """Training could not go on; the message says why and where the last checkpoint is."""


class TrainingDiverged(TrainingStopped):
    """A loss or parameter became non-finite; the message names the update and quantity."""


_NOT_LOSSES = {"params_finite", "episodes", "return_sum", "return_min", "return_max",
               "win_sum"}
# Host envs' episode metrics travel as per-update sums and counts under these prefixes;
# chunk_rows turns them into per-episode means (NaN in chunks where none was defined).
EPISODE_SUM, EPISODE_COUNT = "episode_sum/", "episode_count/"


def _is_loss(name: str) -> bool:
    return name not in _NOT_LOSSES and not name.startswith((EPISODE_SUM, EPISODE_COUNT))


def _first_nonfinite(metrics: dict, start_update: int, seeds: list[int]) -> str | None:
    """Describe the first non-finite loss/parameter in a chunk's [S, K] metrics, if any."""
    import numpy as np

    bad = {}
    for name, values in metrics.items():
        if not _is_loss(name) and name != "params_finite":
            continue
        values = np.asarray(values)
        flags = ~values.astype(bool) if name == "params_finite" else ~np.isfinite(values)
        if flags.any():
            seed_idx, update_idx = np.argwhere(flags)[np.argmin(np.argwhere(flags)[:, 1])]
            bad[name] = (update_idx, seed_idx)
    if not bad:
        return None
    name, (update_idx, seed_idx) = min(bad.items(), key=lambda item: item[1][0])
    quantity = "parameters" if name == "params_finite" else name
    return (f"non-finite {quantity} at update {start_update + update_idx + 1} "
            f"(seed {seeds[seed_idx]})")


def chunk_rows(metrics: dict, config: Config, updates_done: int, wall_time: float,
               steps_per_s: float) -> list[dict]:
    """One metrics.csv row per seed summarising a chunk of updates ([S, K] metrics)."""
    import math

    import numpy as np

    run = config.run
    rows = []
    for s in range(run.seeds):
        count = float(np.sum(metrics["episodes"][s]))
        row = {"seed": run.seed + s, "env_steps": updates_done * steps_per_update(run),
               "updates": updates_done, "wall_time": round(wall_time, 3),
               "steps_per_s": round(steps_per_s, 1),
               "return_mean": float(np.sum(metrics["return_sum"][s]) / count) if count else math.nan,
               "return_min": float(np.min(metrics["return_min"][s])) if count else math.nan,
               "return_max": float(np.max(metrics["return_max"][s])) if count else math.nan,
               "episodes": int(count)}
        if "win_sum" in metrics:
            row["win_rate"] = float(np.sum(metrics["win_sum"][s]) / count) if count else math.nan
        for name, values in metrics.items():
            if name.startswith(EPISODE_SUM):
                defined = float(np.sum(metrics[EPISODE_COUNT + name[len(EPISODE_SUM):]][s]))
                row[name[len(EPISODE_SUM):]] = (float(np.sum(values[s])) / defined if defined
                                                else math.nan)
        for name, values in metrics.items():
            if _is_loss(name):
                row[name] = float(np.mean(values[s]))
        rows.append(row)
    return rows


def default_log_every(run) -> int:
    """Updates per log row: ``log_every``, or about 40 rows. The automatic choice prefers a
    divisor of the total number of updates (within 2x of the target) so every chunk has the
    same length and the program compiles once, not again for a shorter last chunk."""
    if run.log_every:
        return run.log_every
    total = total_updates(run)
    target = max(total // 40, 1)
    divisors = [k for k in range(max(target // 2, 1), 2 * target + 1) if total % k == 0]
    return min(divisors, key=lambda k: abs(k - target)) if divisors else target


def train(config: Config, resume_dir=None, log=print) -> dict:
    """Train (or resume) a run and return a summary dict.

    Args:
        config: resolved config (for a resume: the run's saved config with overrides).
        resume_dir: run folder to continue from its ``latest`` checkpoint.
    """
    from teamrl import runs

    run = config.run
    distributed.initialize(run)  # before JAX touches a device; nothing for one process
    lock = runs.RunLock(run.out if resume_dir is None else resume_dir)
    trainer_config = config
    if resume_dir is None:
        refusal = None
        if distributed.is_writer():
            try:
                runs.check_run_dir_free(run.out, run.overwrite)
            except ConfigError as err:
                refusal = err
        if not distributed.writer_value(refusal is None):
            raise refusal or ConfigError("process 0 refused to start the run (its run folder "
                                         "exists); see its message")
    else:
        if distributed.is_writer():
            lock.acquire()  # before anything is read: a live run's files are moving
        trainer_config = with_schedule_horizon(config, resume_dir)
    try:
        trainer = make_trainer(trainer_config)  # validates everything before the run folder is touched
        try:
            return _train_loop(config, trainer, resume_dir, log, lock)
        finally:
            trainer.close()
    finally:
        lock.release()


def with_schedule_horizon(config: Config, run_dir) -> Config:
    """``config`` with the ``total_steps`` the run's schedules were built for (learning-rate
    decay, exploration): extending a run keeps them over the original horizon, holding their
    final values after it, so the learning rate never jumps. The horizon is recorded in the
    checkpoints (``schedule_updates``); older runs' is the total_steps of their config.yaml."""
    import copy
    import json
    import pathlib

    from teamrl import runs

    horizon = None
    for name in ("latest", "best"):
        try:
            sidecar = json.loads((pathlib.Path(run_dir) / runs.CHECKPOINT_DIR / f"{name}.json")
                                 .read_text(encoding="utf-8"))
            horizon = int(sidecar["meta"]["schedule_updates"])
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if horizon is None:
        try:
            horizon = max(int(runs.read_config(run_dir)["run"]["total_steps"])
                          // steps_per_update(config.run), 1)
        except Exception:  # unreadable: the current total, as before
            return config
    if horizon == total_updates(config.run):
        return config
    built = copy.deepcopy(config)
    built.run.total_steps = horizon * steps_per_update(config.run)
    return built


def check_checkpoint(config: Config, run_dir, name: str, meta: dict) -> None:
    """Refuse checkpoint ``name`` of ``run_dir`` (one line) if it was saved for another config
    (CheckpointMismatch) or its counters were edited or are inconsistent (CheckpointError)."""
    from teamrl import runs

    run = config.run
    record = meta.get("config")
    if isinstance(record, dict):
        mismatch = runs.config_mismatch(record, runs.config_record(config.to_dict()))
        if mismatch:
            raise runs.CheckpointMismatch(
                f"checkpoint '{name}' of '{run_dir}' was saved for another configuration "
                f"({mismatch}); restore config.yaml or train a new run")

    def whole(key):
        value = meta.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    bad = f"checkpoint '{name}' has inconsistent counters (edited?): "
    updates = whole("updates")
    if updates is None or updates < 0:
        raise runs.CheckpointError(bad + f"updates={meta.get('updates')!r} is not a whole "
                                   "number >= 0")
    if "env_steps" in meta and meta["env_steps"] != updates * steps_per_update(run):
        raise runs.CheckpointError(bad + f"env_steps={meta['env_steps']!r} is not updates x "
                                   f"num_envs x rollout_length = {updates * steps_per_update(run)}")
    total, chunk = whole("total_updates"), whole("chunk")
    if total is not None and updates > total:
        raise runs.CheckpointError(bad + f"updates={updates} is above its run's {total} updates")
    if total is not None and chunk and updates % chunk and updates != total:
        raise runs.CheckpointError(bad + f"updates={updates} is not a multiple of its {chunk} "
                                   "updates per log row")
    if "seeds" in meta and meta["seeds"] != [run.seed + s for s in range(run.seeds)]:
        raise runs.CheckpointMismatch(f"checkpoint '{name}' of '{run_dir}' holds seeds "
                                      f"{meta['seeds']!r}, config.yaml asks for seed={run.seed} "
                                      f"seeds={run.seeds}; restore config.yaml")
    for key in ("wall_time", "best_return"):
        if key in meta and (isinstance(meta[key], bool)
                            or not isinstance(meta[key], (int, float))):
            raise runs.CheckpointError(bad + f"{key}={meta[key]!r} is not a number")


def _train_loop(config: Config, trainer: Trainer, resume_dir, log, lock=None) -> dict:
    import math
    import pathlib
    import sys
    import time

    import numpy as np

    from teamrl import runs
    from teamrl.envs.host_env import HostEnvError
    from teamrl.plots import plot_learning_curve
    from teamrl.progress import ProgressReporter

    run = config.run
    writes = distributed.is_writer()  # process 0 of a multi-process run; always on one
    runner = trainer.init()
    meta = {"updates": 0, "wall_time": 0.0, "best_return": -math.inf}
    spu = steps_per_update(run)
    target_updates = total_updates(run)
    # The last checkpoints written (or resumed from): {name: update}, named if training stops.
    saved = {}
    if resume_dir is not None:
        run_dir = pathlib.Path(resume_dir)
        if writes:
            runs.clean_checkpoints(run_dir)  # leftovers of a killed write; the lock is held
        again = f"start it again with `teamrl train --config {run_dir / runs.CONFIG_FILE} " \
                "overwrite=true`"
        name, runner, meta = runs.load_with_fallback(
            run_dir, runner, check=partial(check_checkpoint, config, run_dir),
            what_to_do=again, note=lambda line: print(line, file=sys.stderr) if writes else None)
        saved[name] = int(meta["updates"])
        done = int(meta["updates"])
        if done > target_updates or (done == target_updates
                                     and (run_dir / runs.CURVE_FILE).is_file()):
            # (A run killed after its last checkpoint but before its curve is finished below.)
            raise ConfigError(
                f"total_steps={run.total_steps} ({target_updates} updates) is not above the "
                f"{done} updates ({done * spu:,} env steps) '{run_dir}' has done; pass "
                f"total_steps={(done + 1) * spu} or more to train longer")
        runner = trainer.place(runner)
        if writes:
            runs.write_config(run_dir, config.to_dict())
    elif writes:
        run_dir = runs.prepare_run_dir(run.out, run.overwrite, lock)
        runs.write_config(run_dir, config.to_dict())
    else:
        run_dir = pathlib.Path(run.out)

    updates_done, wall_offset = int(meta["updates"]), float(meta["wall_time"])
    best_return = float(meta["best_return"])
    # An extended run keeps its rows' spacing (the automatic one depends on total_steps).
    saved_chunk = meta.get("chunk")
    chunk = run.log_every or (saved_chunk if isinstance(saved_chunk, int) and saved_chunk > 0
                              else default_log_every(run))
    record = runs.config_record(config.to_dict())
    fixed_meta = {"total_updates": target_updates, "chunk": chunk,
                  "schedule_updates": total_updates(trainer.config.run),
                  "algo": run.algo, "env_id": run.env_id, "config": record,
                  "config_sha256": runs.config_sha256(record)}
    seeds = [run.seed + s for s in range(run.seeds)]
    progress = ProgressReporter(target_updates * steps_per_update(run),
                                start_steps=updates_done * steps_per_update(run),
                                enabled=run.progress != "none" and writes)
    if run.progress in ("bar", "lines"):
        progress.is_terminal = run.progress == "bar"
    compiled = {}
    summary = {"run_dir": str(run_dir), "updates": updates_done,
               "env_steps": updates_done * spu, "return_mean": math.nan}
    row_index = 0
    start = time.perf_counter()
    metrics_writer = (runs.MetricsWriter(run_dir, resume=resume_dir is not None,
                                         keep_updates=updates_done,
                                         keep_steps=updates_done * spu) if writes
                      else runs.NullWriter())

    def where_saved() -> str:
        name = "latest" if "latest" in saved else "best" if saved else None
        if name is None:
            return ("No checkpoint was written before it stopped, so there is nothing to "
                    f"resume; `teamrl train --config {run_dir / runs.CONFIG_FILE} "
                    "overwrite=true` starts it again")
        return (f"The last good checkpoint is '{name}' in {run_dir / runs.CHECKPOINT_DIR} "
                f"(update {saved[name]}); `teamrl resume {run_dir}` continues from it")

    with progress, metrics_writer as writer:
        while updates_done < target_updates:
            # Up to the next multiple of `chunk` (a run extended past a total that was not
            # one realigns), so rows fall at the updates of an uninterrupted run.
            k = min(chunk - updates_done % chunk, target_updates - updates_done)
            if k not in compiled:
                t0 = time.perf_counter()
                compiled[k] = trainer.compile_chunk(runner, k)
                progress.log(f"[teamrl] compiled {k} updates x {run.seeds} seed(s) "
                             f"in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            try:
                new_runner, metrics = compiled[k](runner)
            except HostEnvError as err:
                raise TrainingStopped(
                    f"{err}\ntraining stopped at update {updates_done}. {where_saved()}") \
                    from None
            metrics = jax.tree.map(np.asarray, metrics)
            elapsed = time.perf_counter() - t0
            problem = _first_nonfinite(metrics, updates_done, seeds)
            if problem:
                raise TrainingDiverged(f"{problem}; training stopped. {where_saved()}")
            runner = new_runner
            updates_done += k
            wall = wall_offset + time.perf_counter() - start
            sps = k * steps_per_update(run) * run.seeds / max(elapsed, 1e-9)
            rows = chunk_rows(metrics, config, updates_done, wall, sps)
            # The row's index in the whole run (chunks are `chunk` updates but the last), so a
            # resumed run evaluates and checkpoints at the same updates as an uninterrupted one.
            row_index = updates_done // chunk
            if run.eval_every:
                due = row_index % run.eval_every == 0 or updates_done >= target_updates
                try:
                    evaluation = (jax.tree.map(np.asarray, trainer.evaluate(runner,
                                                                            run.eval_episodes))
                                  if due else None)
                except HostEnvError as err:  # a failed, dead or hung eval env: as in training
                    raise TrainingStopped(f"{err}\ntraining stopped at update {updates_done}, "
                                          f"in its evaluation. {where_saved()}") from None
                names = trainer.eval_names()
                for s, row in enumerate(rows):
                    for name in names:
                        row[name] = float(evaluation[name][s]) if due else math.nan
            writer.write(rows)
            if writes:
                runs.fault("metrics:row")
            mean_return = float(np.nanmean([r["return_mean"] for r in rows])) \
                if any(math.isfinite(r["return_mean"]) for r in rows) else math.nan
            progress.update(updates_done * steps_per_update(run),
                            {"steps_per_s": sps, "return_mean": mean_return})
            is_best = math.isfinite(mean_return) and mean_return > best_return
            if is_best:
                best_return = mean_return
            meta = {"updates": updates_done, "env_steps": updates_done * steps_per_update(run),
                    "wall_time": wall, "best_return": best_return, "seeds": seeds,
                    **fixed_meta}
            last_chunk = updates_done >= target_updates
            if row_index % run.checkpoint_every == 0 or last_chunk or is_best:
                # A collective with several processes: every process gathers, one writes.
                host_runner = trainer.placement.host_copy(runner)
                if writes and (row_index % run.checkpoint_every == 0 or last_chunk):
                    runs.save_checkpoint(run_dir, "latest", host_runner, meta)
                if writes and is_best:
                    runs.save_checkpoint(run_dir, "best", host_runner, meta)
                if row_index % run.checkpoint_every == 0 or last_chunk:
                    saved["latest"] = updates_done
                if is_best:
                    saved["best"] = updates_done
            summary.update(updates=updates_done, return_mean=mean_return,
                           env_steps=updates_done * steps_per_update(run), steps_per_s=sps)
    if "steps_per_s" not in summary and writes and (run_dir / runs.METRICS_FILE).is_file():
        # Resumed only to finish (nothing left to train): report the last rows' return.
        last = [r.get("return_mean", math.nan) for r in runs.read_metrics(run_dir)[-run.seeds:]]
        finite = [x for x in last if isinstance(x, float) and math.isfinite(x)]
        summary["return_mean"] = float(np.mean(finite)) if finite else math.nan
    replicas = trainer.placement.check_replicas(runner.train_state)
    if replicas:
        progress.log(f"[teamrl] {replicas}")
    if writes and (run_dir / "metrics.csv").exists():
        plot_learning_curve(run_dir / "metrics.csv", run_dir / "curve.png",
                            title=f"{run.algo} on {run.env_id}")
    summary["best_return"] = best_return
    summary["runner"] = runner
    return summary
