"""Env ids -> factories. The only place that knows which environments exist.

Each entry has an options dataclass (the ``env`` section of a config, settable as
``key=value`` on the command line) and a builder returning a JaxMARL-API env plus the
adapter settings for its family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from teamrl.config import ConfigError, option, suggest
from teamrl.envs.jax_env import JaxTeamEnv


class EnvIdError(ConfigError):
    """Unknown environment id."""


# ---------------------------------------------------------------------------- options
@dataclass
class MPEOptions:
    """Options of the multi-agent particle environments (JaxMARL's MPE)."""

    action: str = option("discrete", "action space", choices=["discrete", "continuous"])
    max_steps: int = option(25, "episode length (time limit; truncation)", low=1)


@dataclass
class SpreadOptions(MPEOptions):
    num_agents: int = option(3, "agents (and landmarks unless num_landmarks is set)", low=1)
    num_landmarks: int = option(0, "landmarks (0: as many as agents)", low=0)
    local_ratio: float = option(0.5, "weight of the per-agent collision penalty", low=0.0,
                                high=1.0)


@dataclass
class NoOptions:
    """This environment has no options."""


@dataclass
class PenaltyOptions:
    k: float = option(-100.0, "penalty of miscoordinated optimal actions (k <= 0)", high=0.0)


@dataclass
class SplitOptions:
    n_agents: int = option(4, "number of agents (even)", low=2)

    def check(self):
        if self.n_agents % 2:
            raise ConfigError(f"n_agents={self.n_agents} must be even; valid: 2, 4, 6, ...")


@dataclass
class TreeOptions:
    stages: int = option(5, "depth levels of the 9-ary tree", low=2, high=7)
    game: int = option(0, "seed of the random node rewards", low=0)


@dataclass
class GymnaxOptions:
    """Options of the single-agent gymnax environments (teams of one)."""

    max_steps: int = option(0, "episode time limit, truncation (0: gymnax's "
                            "max_steps_in_episode)", low=0)


@dataclass
class SMAXOptions:
    """Options of SMAX battles against jaxmarl's heuristic enemy."""

    see_enemy_actions: bool = option(True, "observations include the enemies' last actions")
    walls_cause_death: bool = option(True, "units that touch the map edge die")
    attack_mode: str = option("closest", "the heuristic enemy's target choice",
                              choices=["closest", "random"])
    max_steps: int = option(100, "episode limit (truncation, bootstrapped)", low=1)
    won_battle_bonus: float = option(1.0, "reward for winning on top of the damage reward",
                                     low=0.0)


@dataclass
class HostOptions:
    """Options shared by environments stepped on the host (outside XLA)."""

    workers: int = option(-1, "worker processes stepping the envs (0: in the learner's "
                          "process; -1: one per CPU core beyond the learner's, or per Ray CPU "
                          "beyond one with worker_backend=ray)", low=-1)
    worker_backend: str = option("processes", "where the workers run: local processes "
                                 "(shared memory) or Ray actors on a cluster (pip install "
                                 "\"teamrl[ray]\")", choices=["processes", "ray"])
    ray_address: str = option("", "worker_backend=ray: HOST:PORT of the Ray cluster's head "
                              "(empty: a local Ray instance)")
    step_timeout: float = option(60.0, "seconds an env worker may take for one step (or "
                                 "reset) of its envs before training stops as hung, keeping "
                                 "the latest checkpoint (starting the workers may take 10x, "
                                 "at least 300 s)",
                                 low=0.0, low_open=True)

    def host_settings(self) -> dict:
        """What the host adapter takes of these options."""
        return {"host": True, "workers": self.workers, "worker_backend": self.worker_backend,
                "ray_address": self.ray_address, "step_timeout": self.step_timeout}


@dataclass
class MaMuJoCoOptions(HostOptions):
    """Options of Multi-Agent MuJoCo (gymnasium-robotics mamujoco_v1)."""

    obs: str = option("global", "observation protocol: global (the full state plus the agent "
                      "id, as in the HAPPO/HATRPO/A2PO papers) or local (obsk neighbourhoods)",
                      choices=["global", "local"])
    obsk: int = option(1, "obs=local: observe the joints within obsk hops", low=0)
    max_steps: int = option(1000, "episode limit (truncation, bootstrapped)", low=1)
    backend: str = option("native", "simulation: native (each worker steps its envs as one "
                          "batch through MuJoCo's API; env stepping ~1.8x faster) or gymnasium_robotics (the "
                          "reference mamujoco_v1 envs one by one); the same task either way",
                          choices=["native", "gymnasium_robotics"])


@dataclass
class PettingZooOptions(HostOptions):
    """Options of any PettingZoo ParallelEnv ``pettingzoo/<module>``."""

    env_kwargs: dict = option({}, "keyword arguments of <module>.parallel_env(...), "
                              "e.g. {N: 3, continuous_actions: false}")
    max_steps: int = option(0, "episode limit of the adapter (truncation) on top of the "
                            "env's own (0: the env's own only)", low=0)
    state: str = option("auto", "global state of the critics: env (env.state()), concat (the "
                        "agents' observations, zeros for removed ones) or auto (env when "
                        "env.state() works through a probe episode of random steps: "
                        "multiwalker's fails once walkers are removed)",
                        choices=["auto", "env", "concat"])


@dataclass
class GymnasiumOptions(HostOptions):
    """Options of a single-agent Gymnasium env ``gymnasium/<id>`` (a team of one)."""

    env_kwargs: dict = option({}, "keyword arguments of gymnasium.make(<id>, ...)")
    max_steps: int = option(0, "episode limit of the adapter (truncation) on top of the "
                            "env's own TimeLimit (0: the env's own only)", low=0)


@dataclass
class FootballOptions(HostOptions):
    """Options of Google Research Football ``football/<scenario>`` (``teamrl install
    football`` builds it)."""

    players: int = option(0, "controlled left-team players (0: the scenario's default, "
                          "HARL's setting)", low=0)
    representation: str = option("simple115v2", "observation vector per player",
                                 choices=["simple115v2", "simple115"])
    rewards: str = option("scoring", "reward: goals only, or plus gfootball's checkpoint "
                          "shaping", choices=["scoring", "scoring,checkpoints"])


@dataclass(frozen=True)
class EnvEntry:
    env_id: str
    description: str
    options: type
    build: Callable[[Any], tuple[Any, dict]]
    host: bool = False  # stepped on the host by worker processes, not compiled


_MPE_SCENARIOS = {
    "simple": ("MPE_simple_v3", "one agent reaches a landmark"),
    "simple_spread": ("MPE_simple_spread_v3", "N agents cover N landmarks, avoiding collisions"),
    "simple_reference": ("MPE_simple_reference_v3", "two agents guide each other to "
                         "goal landmarks by communication"),
    "simple_speaker_listener": ("MPE_simple_speaker_listener_v4", "a speaker tells a "
                                "listener which landmark to reach"),
}


def _mpe_builder(jaxmarl_name: str):
    def build(opts: MPEOptions):
        import jaxmarl

        kwargs = {"action_type": "Continuous" if opts.action == "continuous" else "Discrete",
                  "max_steps": opts.max_steps}
        if isinstance(opts, SpreadOptions):
            kwargs.update(num_agents=opts.num_agents, local_ratio=opts.local_ratio,
                          num_landmarks=opts.num_landmarks or opts.num_agents)
        return jaxmarl.make(jaxmarl_name, **kwargs), {"time_limit_is_truncation": True}

    return build


def _didactic_builder(name: str, option_names: tuple[str, ...] = ()):
    def build(opts):
        from teamrl.envs.didactic import DIDACTIC_GAMES

        try:
            env = DIDACTIC_GAMES[name](**{k: getattr(opts, k) for k in option_names})
        except ValueError as err:
            raise ConfigError(f"didactic/{name}: {err}") from None
        # The horizon of a didactic game is part of the game: its end is a termination.
        return env, {"time_limit_is_truncation": False}

    return build


_GYMNAX_ENVS = {
    "CartPole-v1": "gymnax: balance a pole on a cart (one agent, 2 actions, 500 steps)",
    "Pendulum-v1": "gymnax: swing up a pendulum (one agent, 1-d torque, 200 steps)",
    "Acrobot-v1": "gymnax: swing a two-link arm above a line (one agent, 3 actions, 500 steps)",
    "MountainCar-v0": "gymnax: drive a car up a hill (one agent, 3 actions, 200 steps)",
    "MountainCarContinuous-v0": "gymnax: drive a car up a hill (one agent, 1-d force, "
                                "999 steps)",
}


def _gymnax_builder(name: str):
    def build(opts: GymnaxOptions):
        from teamrl.envs.gymnax_env import GymnaxAgentEnv

        env = GymnaxAgentEnv(name, max_steps=opts.max_steps or None)
        # The wrapper's dones are the game's own endings only; with False the adapter keeps
        # them as terminations and marks reaching max_steps otherwise as truncation
        # (see teamrl/envs/gymnax_env.py).
        return env, {"time_limit_is_truncation": False}

    return build


def _smax_builder(map_name: str):
    def build(opts: SMAXOptions):
        from teamrl.envs.smax import make_smax

        env = make_smax(map_name, opts.see_enemy_actions, opts.walls_cause_death,
                        opts.attack_mode, opts.max_steps, opts.won_battle_bonus)
        return env, {"time_limit_is_truncation": True}

    return build


def _smax_entries() -> dict[str, EnvEntry]:
    from teamrl.envs.smax import smax_maps

    return {f"smax/{m}": EnvEntry(f"smax/{m}", f"SMAX (compiled SMAC) {m} vs the heuristic "
                                  "enemy", SMAXOptions, _smax_builder(m)) for m in smax_maps()}


def _entries() -> dict[str, EnvEntry]:
    entries = {}
    for scenario, (name, text) in _MPE_SCENARIOS.items():
        opts = SpreadOptions if scenario == "simple_spread" else MPEOptions
        entries[f"mpe/{scenario}"] = EnvEntry(f"mpe/{scenario}", f"MPE: {text}", opts,
                                              _mpe_builder(name))
    didactic = [
        ("climbing", "climbing matrix game, optimum 11", NoOptions, ()),
        ("penalty", "penalty matrix game (k), two optima 10", PenaltyOptions, ("k",)),
        ("overgeneralisation", "relative overgeneralisation 8/6/-12 game", NoOptions, ()),
        ("split", "HATRPO Prop. 1: heterogeneous optimum 1", SplitOptions, ("n_agents",)),
        ("product", "continuous r = a1*a2 trust-region game", NoOptions, ()),
        ("tree", "I2Q 9-ary deterministic tree game", TreeOptions, ("stages", "game")),
        ("dpo-random-game", "DPO's random 30-state 3-agent stochastic game", NoOptions, ()),
    ]
    for name, text, opts, keys in didactic:
        entries[f"didactic/{name}"] = EnvEntry(f"didactic/{name}", text, opts,
                                               _didactic_builder(name, keys))
    for name, text in _GYMNAX_ENVS.items():
        entries[f"gymnax/{name}"] = EnvEntry(f"gymnax/{name}", text, GymnaxOptions,
                                             _gymnax_builder(name))
    return entries


def _mamujoco_builder(scenario: str, agent_conf: str):
    def build(opts: MaMuJoCoOptions):
        from teamrl.envs.host_worker import EnvRecipe

        kwargs = {"scenario": scenario, "agent_conf": agent_conf, "obs": opts.obs,
                  "obsk": opts.obsk, "max_steps": opts.max_steps}
        if opts.backend == "native":  # workers step their envs as one batch
            recipe = EnvRecipe("teamrl.envs.mamujoco_native", "make_parallel_env", kwargs,
                               batch_function="make_batch_env")
        else:
            recipe = EnvRecipe("teamrl.envs.mamujoco", "make_parallel_env", kwargs)
        # The env's own TimeLimit truncates at max_steps; the adapter only needs the horizon.
        return recipe, {**opts.host_settings(), "episode_limit": opts.max_steps,
                        "max_steps": 0}

    return build


def _football_builder(scenario: str):
    def build(opts: FootballOptions):
        from teamrl.envs.football import SCENARIOS, game_duration
        from teamrl.envs.host_worker import EnvRecipe

        default, most, _ = SCENARIOS[scenario]
        players = opts.players or default
        if players > most:
            raise ConfigError(f"players={players} is not valid for football/{scenario}; "
                              f"valid: 1..{most}")
        recipe = EnvRecipe("teamrl.envs.football", "make_parallel_env",
                           {"scenario": scenario, "players": players,
                            "representation": opts.representation, "rewards": opts.rewards})
        # gfootball ends every episode itself, at the latest when its clock has run
        # game_duration frames: game_duration + 1 steps, the clock starting before the first.
        return recipe, {**opts.host_settings(), "max_steps": 0,
                        "episode_limit": game_duration(scenario) + 1}

    return build


def _pettingzoo_builder(module: str):
    def build(opts: PettingZooOptions):
        import importlib

        from teamrl.envs.host_worker import EnvRecipe

        try:
            imported = importlib.import_module(module)
        except ImportError as err:
            raise EnvIdError(f"pettingzoo/{module}: cannot import module {module!r} "
                             f"({type(err).__name__}: {err}); install the package that "
                             "provides it") from None
        except (Exception, SystemExit) as err:  # a module's own code failed while importing
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise EnvIdError(f"pettingzoo/{module}: importing module {module!r} failed "
                             f"({type(err).__name__}: {first})") from None
        if not callable(getattr(imported, "parallel_env", None)):
            raise EnvIdError(f"pettingzoo/{module}: module {module!r} has no parallel_env(); "
                             "valid: a module exposing a PettingZoo parallel_env factory")
        recipe = EnvRecipe("teamrl.envs.registry", "build_pettingzoo",
                           {"module": module, "kwargs": dict(opts.env_kwargs)})
        return recipe, {**opts.host_settings(), "max_steps": opts.max_steps,
                        "episode_limit": opts.max_steps or 10_000, "state": opts.state}

    return build


def _gymnasium_builder(gym_id: str):
    def build(opts: GymnasiumOptions):
        import gymnasium

        from teamrl.envs.host_worker import EnvRecipe

        try:
            spec = gymnasium.spec(gym_id)
        except gymnasium.error.Error as err:
            raise EnvIdError(f"gymnasium/{gym_id}: not a registered Gymnasium env ({err}); "
                             "e.g. gymnasium/Hopper-v5, gymnasium/CartPole-v1") from None
        limit = opts.max_steps or spec.max_episode_steps or 10_000
        recipe = EnvRecipe("teamrl.envs.gymnasium_env", "make_parallel_env",
                           {"env_id": gym_id, "kwargs": dict(opts.env_kwargs)})
        return recipe, {**opts.host_settings(), "max_steps": opts.max_steps,
                        "episode_limit": limit}

    return build


# Listed by `teamrl list` (any other registered Gymnasium id works too).
GYMNASIUM_LISTED = {
    "Hopper-v5": "MuJoCo hopper (3-d torque)", "Walker2d-v5": "MuJoCo walker (6-d torque)",
    "HalfCheetah-v5": "MuJoCo half cheetah (6-d torque)",
    "Swimmer-v5": "MuJoCo swimmer (2-d torque)", "Ant-v5": "MuJoCo ant (8-d torque)",
    "InvertedPendulum-v5": "MuJoCo inverted pendulum (1-d force)",
    "InvertedDoublePendulum-v5": "MuJoCo inverted double pendulum (1-d force)",
    "CartPole-v1": "classic cart-pole (2 actions)", "Acrobot-v1": "classic acrobot (3 actions)",
    "MountainCar-v0": "classic mountain car (3 actions)",
    "Pendulum-v1": "classic pendulum swing-up (1-d torque)",
}


def build_pettingzoo(module: str, kwargs: dict):
    """``<module>.parallel_env(**kwargs)`` (the recipe of ``pettingzoo/<module>`` env ids)."""
    import importlib

    return importlib.import_module(module).parallel_env(**kwargs)


def _host_entries() -> dict[str, EnvEntry]:
    from teamrl.envs.mamujoco import all_splits

    entries = {}
    for scenario, conf in all_splits():
        env_id = f"mamujoco/{scenario}-{conf}"
        entries[env_id] = EnvEntry(env_id, f"MaMuJoCo {scenario} split {conf} (host, MuJoCo)",
                                   MaMuJoCoOptions, _mamujoco_builder(scenario, conf), host=True)
    from teamrl.envs.football import SCENARIOS

    for scenario, (default, most, text) in SCENARIOS.items():
        entries[f"football/{scenario}"] = EnvEntry(
            f"football/{scenario}", f"Google Research Football: {text} ({default} of at most "
            f"{most} players controlled; host)", FootballOptions, _football_builder(scenario),
            host=True)
    for gym_id, text in GYMNASIUM_LISTED.items():
        entries[f"gymnasium/{gym_id}"] = EnvEntry(
            f"gymnasium/{gym_id}", f"Gymnasium {text}, one agent (host)", GymnasiumOptions,
            _gymnasium_builder(gym_id), host=True)
    return entries


# ------------------------------------------------------------------------------ plugins
ENV_PLUGIN_GROUP = "teamrl.envs"


class PluginRegistry(dict):
    """A dict of names that adds the entry points of ``group`` (installed packages' plugins,
    ``importlib.metadata``) on its first read, so that importing teamrl imports no plugin.

    ``add(entry_point, loaded_object)`` registers what one entry point loaded. A plugin that
    fails (importing it, or registering) is reported as one line on stderr naming it and its
    entry point, and left out; everything else works. ``TEAMRL_NO_PLUGINS=1`` loads none.
    Writes (``registry[name] = ...``) do not load plugins."""

    def __init__(self, group: str, add: Callable[[Any, Any], None], entries=()):
        super().__init__(entries)
        self.group, self._add, self._loaded = group, add, False
        self.failures: dict[str, str] = {}  # entry point name -> the one-line report

    def load_plugins(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: a plugin registering its names reads the registry
        import os

        if os.environ.get("TEAMRL_NO_PLUGINS", "") not in ("", "0"):
            return
        import sys
        from importlib.metadata import entry_points

        for point in entry_points(group=self.group):
            try:
                self._add(point, point.load())
            except (Exception, SystemExit) as err:  # noqa: BLE001 - any plugin fault: one line
                dist = getattr(getattr(point, "dist", None), "name", None)
                why = (str(err).strip().splitlines() or [""])[0][:200]
                line = (f"teamrl: warning: plugin {dist or point.name!r} failed to load "
                        f"(entry point {self.group}: {point.name} = {point.value}): "
                        f"{type(err).__name__}: {why}; continuing without it")
                self.failures[point.name] = line
                print(line, file=sys.stderr)

    def __getitem__(self, name):
        self.load_plugins()
        return super().__getitem__(name)

    def __contains__(self, name) -> bool:
        self.load_plugins()
        return super().__contains__(name)

    def __iter__(self):  # (overriding it also routes dict(registry) through keys())
        self.load_plugins()
        return super().__iter__()

    def __len__(self) -> int:
        self.load_plugins()
        return super().__len__()

    def get(self, name, default=None):
        self.load_plugins()
        return super().get(name, default)

    def keys(self):
        self.load_plugins()
        return super().keys()

    def values(self):
        self.load_plugins()
        return super().values()

    def items(self):
        self.load_plugins()
        return super().items()

    def copy(self) -> dict:
        self.load_plugins()
        return dict(super().items())


def register_env(env_id: str, factory: Callable[[Any], Any], options: type | None = None,
                 description: str = "", host: bool = False, overwrite: bool = False) -> EnvEntry:
    """Add env id ``family/task`` to the registry (what ``teamrl list``, ``teamrl train`` and
    every command see). ``factory(options)`` returns a JaxMARL-API env, or ``(env, adapter
    keyword arguments)`` (``time_limit_is_truncation``, ``max_steps``; see
    docs/adding_an_environment.md); ``options``: a dataclass of ``option(...)`` fields, the
    config's ``env`` section (default: none). Raises ConfigError (one line) for a malformed
    id, a non-callable factory, or an id already registered without ``overwrite``."""
    import dataclasses

    family, _, task = env_id.partition("/") if isinstance(env_id, str) else ("", "", "")
    if not family or not task or any(c.isspace() for c in env_id):
        raise ConfigError(f"env id {env_id!r} is not valid; valid: 'family/task' without "
                          "spaces, e.g. 'mine/beacon'")
    if family == "pettingzoo":
        raise ConfigError(f"env id {env_id!r}: pettingzoo/<module> ids need no registration "
                          "(any module with parallel_env works); choose another family")
    if not callable(factory):
        raise ConfigError(f"register_env({env_id!r}): factory {factory!r} is not callable; "
                          "valid: a function options -> env or (env, adapter kwargs)")
    options = NoOptions if options is None else options
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise ConfigError(f"register_env({env_id!r}): options={options!r} is not a dataclass "
                          "class; valid: a @dataclass of option(...) fields, or None")
    if env_id in REGISTRY and not overwrite:
        known = REGISTRY[env_id].description
        raise ConfigError(f"env id {env_id!r} is already registered ({known}); pass "
                          "overwrite=True to replace it")

    def build(opts):
        made = factory(opts)
        if isinstance(made, tuple) and len(made) == 2 and isinstance(made[1], dict):
            return made
        return made, {}

    entry = EnvEntry(env_id, description or f"{env_id} (registered)", options, build, host)
    REGISTRY[env_id] = entry
    return entry


def _add_env_plugin(point, loaded) -> None:
    """An entry point of group ``teamrl.envs`` names an :class:`EnvEntry` or a function of no
    arguments that calls :func:`register_env` for each of its ids."""
    if isinstance(loaded, EnvEntry):
        if loaded.env_id in REGISTRY:
            raise ConfigError(f"env id {loaded.env_id!r} is already registered")
        REGISTRY[loaded.env_id] = loaded
    elif callable(loaded):
        loaded()
    else:
        raise ConfigError(f"{point.value} is a {type(loaded).__name__}; valid: an EnvEntry "
                          "or a function that calls teamrl.register_env")


REGISTRY: dict[str, EnvEntry] = PluginRegistry(
    ENV_PLUGIN_GROUP, _add_env_plugin, {**_entries(), **_smax_entries(), **_host_entries()})


def list_env_ids() -> list[str]:
    """Registered ids (besides these, ``pettingzoo/<module>`` takes any PettingZoo module)."""
    return sorted(REGISTRY)


def get_entry(env_id: str) -> EnvEntry:
    family, _, module = env_id.partition("/")
    if family == "pettingzoo" and module:
        return EnvEntry(env_id, f"PettingZoo {module}.parallel_env (host)", PettingZooOptions,
                        _pettingzoo_builder(module), host=True)
    if family == "gymnasium" and module and env_id not in REGISTRY:
        return EnvEntry(env_id, f"Gymnasium {module}, one agent (host)", GymnasiumOptions,
                        _gymnasium_builder(module), host=True)
    if env_id not in REGISTRY:
        # A close id, else the ids of the family named, else the families: not all 80 ids.
        same_family = [e for e in list_env_ids() if e.startswith(family + "/")]
        hint = suggest(env_id, list_env_ids(), "valid env ids")
        if "did you mean" not in hint:
            families = sorted({e.split("/")[0] for e in REGISTRY})
            hint = (suggest(env_id, same_family, f"valid {family} ids") if same_family else
                    f"; valid families: {', '.join(families)}, pettingzoo/<module>, "
                    f"gymnasium/<id> (`teamrl list` shows all {len(REGISTRY)} ids)")
        failed = getattr(REGISTRY, "failures", {})
        if failed:  # the id may be a broken plugin's
            hint += f" (plugins that failed to load: {', '.join(sorted(failed))})"
        raise EnvIdError(f"unknown env id {env_id!r}{hint}")
    return REGISTRY[env_id]


def default_env_options(env_id: str):
    return get_entry(env_id).options()


def make_env(env_id: str, options=None, agent_id: bool = False, team_reward: str = "mean"
             ) -> JaxTeamEnv:
    """Build the team adapter for ``env_id`` with its options dataclass (defaults if None)."""
    entry = get_entry(env_id)
    opts = options if options is not None else entry.options()
    env, adapter_kwargs = entry.build(opts)
    if adapter_kwargs.pop("host", False):
        from teamrl.envs.host_env import HostEnvError, HostTeamEnv

        try:
            return HostTeamEnv(env, env_id, agent_id=agent_id, team_reward=team_reward,
                               **adapter_kwargs)
        except HostEnvError as err:
            raise ConfigError(str(err)) from None
    return JaxTeamEnv(env, env_id, agent_id=agent_id, team_reward=team_reward, **adapter_kwargs)
