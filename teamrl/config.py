"""Typed configuration: dataclass sections, ``key=value`` parsing, validation, YAML presets.

A resolved configuration has four sections: ``run`` (RunConfig), ``network`` (NetworkConfig),
``algo`` (the algorithm's own dataclass) and ``env`` (the env's option dataclass). On the command
line every key is flat (``lr=3e-4 hidden_sizes=[64,64] action=continuous``) and names are
unique across sections, so each key belongs to exactly one section.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml


class ConfigError(ValueError):
    """Bad user input; the message is one line naming the bad value and the valid choices."""


def suggest(name, valid, what: str, limit: int = 15) -> str:
    """``"; did you mean 'x'?"`` when ``name`` is close to a valid choice, else the choices
    (``what``: e.g. ``"valid keys"``), cut to ``limit`` so a typo does not print 80 names."""
    valid = sorted(map(str, valid))
    close = difflib.get_close_matches(str(name), valid, n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    more = f" ... ({len(valid) - limit} more; see `teamrl list`)" if len(valid) > limit else ""
    return f"; {what}: " + ", ".join(valid[:limit]) + more


def option(default, help: str, choices=None, low=None, high=None, low_open=False,
           high_open=False):
    """A dataclass field with its help text and range (``*_open``: bound excluded), used for
    parsing and validation."""
    meta = {"help": help, "choices": choices, "low": low, "high": high, "low_open": low_open,
            "high_open": high_open}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# Published evaluation protocols: (updates between evaluations, episodes per evaluation). Both
# papers' code evaluates the deterministic (mean / most likely action) policy on a separate set
# of environments; teamrl records it as the ``eval_*_det`` columns.
EVAL_PROTOCOLS = {"harl": (25, 40), "smac": (25, 32)}
# No run takes 10^12 env steps: a larger total_steps is a typo (an extra zero or an exponent).
MAX_TOTAL_STEPS = 10**12
# Share of physical memory the arrays a run allocates up front may take (check_sizes): the
# rest is left to XLA's temporaries, the envs and everything else on the machine.
MEMORY_FRACTION = 0.75


@dataclass
class RunConfig:
    """Settings of a training run that every algorithm shares."""

    algo: str = option("mappo", "algorithm name (see `teamrl list`)")
    env_id: str = option("mpe/simple_spread", "environment id (see `teamrl list`)")
    total_steps: int = option(1_000_000, "env steps per seed (all envs summed); rounded "
                              "down to whole updates of num_envs*rollout_length (at least one)",
                              low=1, high=MAX_TOTAL_STEPS)
    num_envs: int = option(16, "parallel environments per seed", low=1)
    rollout_length: int = option(128, "steps per env per update", low=1)
    seeds: int = option(1, "independent seeds trained together in one compiled program", low=1)
    seed: int = option(0, "first seed; seed i of the run uses seed+i", low=0)
    out: str = option("", "run folder (default runs/<env>_<algo>_<time>)")
    overwrite: bool = option(False, "replace an existing run folder")
    eval_protocol: str = option("custom", "a published evaluation protocol, setting "
                                "log_every, eval_every and eval_episodes: harl (HARL's "
                                "MaMuJoCo curves: 40 episodes every 25 updates) or smac (the "
                                "SMAC papers': 32 episodes every 25 updates); the published "
                                "figure is the deterministic column (custom: as set)",
                                choices=["custom", *EVAL_PROTOCOLS])
    log_every: int = option(0, "updates per log row / compiled chunk (0: about 40 rows)", low=0)
    checkpoint_every: int = option(1, "log rows between checkpoints", low=1)
    agent_id: str = option("auto", "append one-hot agent ids to observations "
                           "(auto: when actors are shared)", choices=["auto", "true", "false"])
    team_reward: str = option("mean", "team reward from per-agent rewards", choices=["mean", "sum"])
    progress: str = option("auto", "progress display", choices=["auto", "bar", "lines", "none"])
    eval_episodes: int = option(32, "episodes per seed for each evaluation (during training "
                                "and `teamrl eval`)", low=1)
    eval_every: int = option(5, "log rows between evaluations during training, deterministic "
                             "and stochastic, recorded in metrics.csv (0: off)", low=0)
    host_act: str = option("numpy", "how host-stepped envs compute each step's actions: "
                           "numpy (a NumPy forward pass of feed-forward actors, far cheaper "
                           "per call than XLA at these batch sizes; the same draws) or jax "
                           "(one jitted call per step, always used for Q-learners)",
                           choices=["numpy", "jax"])
    host_overlap: str = option("auto", "host-stepped envs with several seeds: step one seed's "
                               "envs while another seed's update computes, keeping both "
                               "cores busy; the results are identical to false (auto: on "
                               "with seeds >= 2)", choices=["auto", "true", "false"])
    devices: int = option(0, "local devices to split each seed's environments over, "
                          "gradients averaged across them (0: as many as divide num_envs; "
                          "host-stepped envs use 1)", low=0)
    coordinator: str = option("", "HOST:PORT of process 0 in a multi-process (multi-host) run "
                              "through jax.distributed (empty: one process)")
    num_processes: int = option(1, "processes in a multi-process run (one per host)", low=1)
    process_id: int = option(0, "this process's index in a multi-process run; process 0 "
                             "writes the run folder", low=0)
    distributed_timeout: int = option(300, "seconds to wait for every process to join a "
                                      "multi-process run", low=1)

    def check(self) -> None:
        if self.process_id >= self.num_processes:
            raise ConfigError(f"process_id={self.process_id} is out of range; valid: "
                              f"0..{self.num_processes - 1} (num_processes="
                              f"{self.num_processes})")
        if self.eval_protocol == "custom":
            return
        interval, episodes = EVAL_PROTOCOLS[self.eval_protocol]
        if (self.log_every * self.eval_every != interval or self.eval_episodes != episodes):
            raise ConfigError(
                f"eval_protocol={self.eval_protocol} evaluates {episodes} episodes every "
                f"{interval} updates, but log_every={self.log_every} x eval_every="
                f"{self.eval_every} and eval_episodes={self.eval_episodes} disagree; keep the "
                "protocol's values (log_every x eval_every = "
                f"{interval}) or set eval_protocol=custom")



@dataclass
class NetworkConfig:
    """Actor and critic networks: multilayer perceptrons, optionally with a GRU."""

    hidden_sizes: list = option([64, 64], "hidden layer widths")
    activation: str = option("tanh", "hidden activation", choices=["tanh", "relu", "gelu", "silu"])
    layer_norm: bool = option(False, "layer norm after each hidden layer's activation")
    input_norm: bool = option(False, "layer norm of the network input (HARL's feature "
                              "normalisation)")
    obs_norm: bool = option(False, "standardise observations and states by running mean/std "
                            "(kept in checkpoints), clipped to +-10")
    log_std_init: float = option(-0.5, "initial log std of Gaussian policies")
    log_std_min: float = option(-5.0, "lower clip of the Gaussian log std")
    log_std_max: float = option(2.0, "upper clip of the Gaussian log std")
    recurrent: bool = option(False, "GRU actors and critics: hidden_sizes -> GRU(gru_size) -> "
                             "output, hidden states reset at episode starts")
    gru_size: int = option(64, "GRU hidden state width (recurrent=true)", low=1)
    chunk_length: int = option(16, "recurrent training sequence length: rollouts are cut into "
                               "chunks that start from the stored hidden state; must divide "
                               "rollout_length", low=1)

    def check(self) -> None:
        if self.log_std_min >= self.log_std_max:
            raise ConfigError(f"log_std_min={self.log_std_min!r} must be < log_std_max="
                              f"{self.log_std_max!r}")
        if not self.log_std_min <= self.log_std_init <= self.log_std_max:
            raise ConfigError(f"log_std_init={self.log_std_init!r} must lie in [log_std_min, "
                              f"log_std_max] = [{self.log_std_min!r}, {self.log_std_max!r}]")


# Run settings that say where a run executes, not which run it is: `teamrl resume` may change
# them, and a sweep treats folders that differ only in them as the same run.
PLACEMENT_KEYS = ("devices", "coordinator", "num_processes", "process_id",
                  "distributed_timeout")

SECTION_NAMES = ("run", "network", "algo", "env")


@dataclass
class Config:
    """A fully resolved configuration."""

    run: RunConfig
    network: NetworkConfig
    algo: Any
    env: Any

    def sections(self) -> dict[str, Any]:
        return {"run": self.run, "network": self.network, "algo": self.algo, "env": self.env}

    def to_dict(self) -> dict:
        return {name: _to_plain(dataclasses.asdict(sec)) for name, sec in self.sections().items()}


def _to_plain(value):
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------- parsing
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(name: str, raw, tp):
    """Convert ``raw`` (a CLI string or a YAML value) to the declared type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            return None
        return coerce(name, raw, args[0])
    if isinstance(raw, str) and tp is not str:
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"{name}={raw!r} is not a valid {_type_name(tp)}") from None
    fraction = False
    try:
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            raise TypeError
        if tp is int:
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise TypeError
            if isinstance(raw, int):
                return raw  # exact: float() would round integers above 2**53
            value = float(raw)
            if isinstance(raw, float) and math.isfinite(value) and not value.is_integer():
                fraction = True  # raised below, outside this try (ConfigError is a ValueError)
                raise TypeError
            if not value.is_integer():
                raise TypeError
            return int(value)
        if tp is float:
            if isinstance(raw, bool):
                raise TypeError
            return float(raw)
        if tp is str:
            return str(raw)
        if tp is dict or origin is dict:
            if not isinstance(raw, dict):
                raise TypeError
            return dict(raw)
        if tp is list or origin is list:
            if not isinstance(raw, (list, tuple)):
                raise TypeError
            return [int(v) if isinstance(v, (int, float)) and float(v).is_integer() else v
                    for v in raw]
    except (TypeError, ValueError):
        if fraction:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        valid = "true or false" if tp is bool else f"a {_type_name(tp)}"
        raise ConfigError(f"{name}={raw!r} has the wrong type; expected {valid}") from None
    return raw


def field_types(section) -> dict[str, Any]:
    cls = section if isinstance(section, type) else type(section)
    return typing.get_type_hints(cls)


def validate_section(section) -> None:
    """Check each field against its choices and range; raise ConfigError on the first bad one."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        meta = f.metadata
        if value is None:
            continue
        if meta.get("choices") is not None and value not in meta["choices"]:
            choices = ", ".join(str(c) for c in meta["choices"])
            raise ConfigError(f"{f.name}={value!r} is not valid; valid choices: {choices}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{f.name}={value!r} must be finite")
            low, high = meta.get("low"), meta.get("high")
            low_rel = ">" if meta.get("low_open") else ">="
            high_rel = "<" if meta.get("high_open") else "<="
            too_low = low is not None and (value < low or (meta.get("low_open") and value == low))
            too_high = high is not None and (value > high
                                             or (meta.get("high_open") and value == high))
            if too_low or too_high:
                bounds = [f"{rel} {b}" for rel, b in ((low_rel, low), (high_rel, high))
                          if b is not None]
                raise ConfigError(f"{f.name}={value!r} is out of range; must be "
                                  + " and ".join(bounds))
        if isinstance(value, list) and f.name == "hidden_sizes":
            if not value or not all(isinstance(v, int) and v > 0 for v in value):
                raise ConfigError(f"hidden_sizes={value!r} must be a non-empty list of "
                                  "positive integers, e.g. [64,64]")
    check = getattr(section, "check", None)
    if check is not None:
        check()


def apply_overrides(config: Config, overrides: dict[str, Any], origin: str = "") -> None:
    """Set flat ``key=value`` overrides on the section that owns each key."""
    owners = {}
    for sec_name, sec in config.sections().items():
        for f in dataclasses.fields(sec):
            owners[f.name] = (sec_name, sec)
    for key, raw in overrides.items():
        if key not in owners:
            where = f" in {origin}" if origin else ""
            raise ConfigError(f"unknown key {key!r}{where}"
                              + suggest(key, owners, "valid keys (`teamrl list --keys ALGO ENV`)"))
        sec_name, sec = owners[key]
        value = coerce(key, raw, field_types(sec)[key])
        if key == "out" and value and not origin:  # the user's out=: fail before any work
            check_output_path(value, folder=True)
        setattr(sec, key, value)
        if key == "eval_protocol" and value in EVAL_PROTOCOLS:
            # A protocol sets its three keys; keys given after it may re-cut the same cadence
            # (log_every=5 eval_every=5), which RunConfig.check verifies.
            interval, episodes = EVAL_PROTOCOLS[value]
            sec.log_every, sec.eval_every, sec.eval_episodes = interval, 1, episodes
    # Every path to a resolved config (train, resume, eval, sweep) ends here with the user's
    # values: refuse absurd sizes now, before an env is built or a folder written.
    check_sizes(config)


def round_total_steps(run: RunConfig) -> None:
    """A one-line notice when total_steps is not a whole number of updates of
    num_envs*rollout_length: training runs whole updates only (at least one). config.yaml keeps
    the value asked for, so a saved run compares equal to the request that made it (the grids'
    and sweeps' resume); metrics.csv's env_steps say what ran."""
    per_update = run.num_envs * run.rollout_length
    whole = max(run.total_steps // per_update, 1) * per_update
    if whole != run.total_steps:
        print(f"teamrl: note: total_steps={run.total_steps} is not a whole number of updates of "
              f"num_envs*rollout_length={per_update} steps; rounded to {whole} "
              f"({whole // per_update} updates)", file=sys.stderr)


def physical_memory() -> int | None:
    """Bytes of physical memory (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def memory_estimates(config: Config, spec=None) -> list[tuple[str, int]]:
    """(what, bytes) of the largest arrays a run allocates: rollout buffer, evaluation envs'
    observations, replay buffer, networks with their gradients and Adam moments. ``spec``
    (the env's TeamSpec) gives agents and widths; without it one agent with width-1
    observation and state is assumed, a lower bound."""
    run, net = config.run, config.network
    agents = len(spec.agent_names) if spec is not None else 1
    obs = spec.obs_dim if spec is not None else 1
    state = spec.state_dim if spec is not None else 1
    ints = [run.num_envs, run.rollout_length, run.seeds, run.eval_episodes, *net.hidden_sizes,
            getattr(config.algo, "buffer_size", 1)]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ints):
        return []  # validate_section names the bad value
    a, f = agents, 4  # float32
    out = [(f"the rollout buffer (num_envs*rollout_length*seeds*agents*(obs+state)*4 bytes = "
            f"{run.num_envs}*{run.rollout_length}*{run.seeds}*{a}*{obs + state}*4)",
            run.num_envs * run.rollout_length * run.seeds * a * (obs + state) * f),
           (f"evaluation (eval_episodes*seeds*agents*(obs+state)*4 bytes = {run.eval_episodes}*"
            f"{run.seeds}*{a}*{obs + state}*4)",
            run.eval_episodes * run.seeds * a * (obs + state) * f)]
    buffer = getattr(config.algo, "buffer_size", None)
    episodes = getattr(config.algo, "buffer_episodes", None)
    limit = getattr(spec, "max_steps", 0) or 0
    if net.recurrent and isinstance(episodes, int) and episodes > 0:
        if limit > 0:  # whole episodes padded to the step limit (teamrl/core/replay.py)
            out.append((f"the episode replay (buffer_episodes*seeds*(max_steps+1)*agents*obs*4 "
                        f"bytes = {episodes}*{run.seeds}*{limit + 1}*{a}*{obs}*4)",
                        episodes * run.seeds * (limit + 1) * a * obs * f))
    elif buffer is not None:
        out.append((f"the replay buffer (buffer_size*seeds*agents*2*(obs+state)*4 bytes = "
                    f"{buffer}*{run.seeds}*{a}*2*{obs + state}*4)",
                    buffer * run.seeds * a * 2 * (obs + state) * f))
    widths = [max(obs, state), *net.hidden_sizes, 1]
    params = sum(i * o for i, o in zip(widths, widths[1:]))
    # actor and critic, each with gradients and two Adam moments: 8 copies per agent and seed
    out.append((f"the networks (hidden_sizes={net.hidden_sizes}: {params:,} weights per "
                f"network, x 8 copies x agents {a} x seeds {run.seeds} x 4 bytes)",
                params * 8 * a * run.seeds * f))
    return out


def check_sizes(config: Config, spec=None) -> None:
    """Refuse a config whose arrays would not fit in MEMORY_FRACTION of physical memory (see
    memory_estimates), naming the estimate, before anything is allocated or written."""
    total = physical_memory()
    if not total:
        return
    for what, need in memory_estimates(config, spec):
        if need > MEMORY_FRACTION * total:
            raise ConfigError(f"{what} needs about {need / 2**30:,.1f} GiB, more than "
                              f"{MEMORY_FRACTION:.0%} of this machine's {total / 2**30:.1f} GiB "
                              "of memory; lower these sizes")


def apply_sections(config: Config, data: dict, origin: str) -> None:
    """Apply a nested {section: {key: value}} mapping (a preset or a saved config.yaml)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections {SECTION_NAMES}")
    flat = {}
    for sec_name, values in data.items():
        if sec_name not in SECTION_NAMES:
            raise ConfigError(f"{origin}: unknown section {sec_name!r}; valid sections: "
                              + ", ".join(SECTION_NAMES))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section {sec_name} must be a mapping of key: value, "
                              f"got {type(values).__name__} {_short(values)}")
        for key in values:
            if not isinstance(key, str):
                raise ConfigError(f"{origin}: section {sec_name}: key {_short(key)} is not a "
                                  "name")
        flat.update(values)
    apply_overrides(config, flat, origin)


def check_output_path(path, folder: bool) -> None:
    """Refuse, before any work, an output ``path`` (a folder, or a file with ``folder=False``)
    that cannot be written: one under a file, on a read-only, full-inode or pseudo file system
    (/proc), or a folder that is a file. Probes the nearest existing folder by creating an
    anonymous temporary file in it, the only test that sees all of these; leaves nothing."""
    import errno
    import pathlib
    import tempfile

    target = pathlib.Path(path).absolute()

    def refuse(code: int, why: str = "") -> ConfigError:
        return ConfigError(f"cannot write {path}: [Errno {code}] {os.strerror(code)}{why}")

    if folder and target.is_file():
        raise refuse(errno.ENOTDIR, " (it is a file; give a folder)")
    if not folder and target.is_dir():
        raise refuse(errno.EISDIR)
    probe = target if folder else target.parent
    try:
        while not probe.exists():
            probe = probe.parent
    except OSError as err:
        raise refuse(err.errno or errno.EACCES) from None
    if not probe.is_dir():
        raise refuse(errno.ENOTDIR, f" ({probe} is a file)")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".teamrl-probe-"):
            pass
    except OSError as err:
        raise refuse(err.errno or errno.EACCES, f" ({probe})" if probe != target else "") \
            from None


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_yaml(path) -> Any:
    """A YAML file's data (safe loader: no python/* tags); ConfigError, one line, for a file
    that cannot be read, is not UTF-8 or is not valid YAML."""
    import pathlib

    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: [Errno {err.errno}] {err.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}: "
                          f"{getattr(err, 'problem', None) or type(err).__name__}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None


def parse_key_values(args: list[str]) -> dict[str, str]:
    """``["lr=3e-4", "seeds=4"]`` -> ``{"lr": "3e-4", "seeds": "4"}``; a key given twice is an
    error (which one was meant is a guess)."""
    out = {}
    for arg in args:
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"argument {arg!r} is not of the form key=value")
        key, value = arg.split("=", 1)
        key = key.strip()
        if key in out:
            raise ConfigError(f"{key} is given twice ({key}={out[key]} and {arg}); give it once")
        out[key] = value
    return out


# ------------------------------------------------------------------------------- presets
def preset_paths(env_id: str, algo: str) -> list[str]:
    """Preset files that apply to (env, algo), most general first:
    ``<family>/<algo>.yaml`` then ``<family>/<task>/<algo>.yaml``."""
    family, _, task = env_id.partition("/")
    candidates = [f"{family}/{algo}.yaml", f"{family}/{task}/{algo}.yaml"]
    root = resources.files("teamrl") / "configs"
    return [c for c in candidates if (root / c).is_file()]


def load_preset(relpath: str) -> dict:
    text = (resources.files("teamrl") / "configs" / relpath).read_text()
    return yaml.safe_load(text) or {}


def list_presets() -> list[str]:
    root = resources.files("teamrl") / "configs"
    found = []

    def walk(node, prefix):
        for child in sorted(node.iterdir(), key=lambda c: c.name):
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".yaml"):
                found.append(prefix + child.name[:-5])

    walk(root, "")
    return found


def with_new_defaults(saved: dict, config: "Config") -> dict:
    """``saved`` (a run's config.yaml as a dict) plus the keys teamrl gained since it was
    written, where ``config`` (the request) leaves them at their defaults: a run spread over
    sessions (a sweep's, an experiment grid's) keeps resuming across a teamrl version that only
    adds settings, and one that sets a new key to another value is another run."""
    filled = {name: dict(values) if isinstance(values, dict) else values
              for name, values in saved.items()}
    for name, section in config.sections().items():
        have = filled.get(name)
        if not isinstance(have, dict):
            continue
        for f in dataclasses.fields(section):
            default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else f.default)
            if f.name not in have and getattr(section, f.name) == default:
                have[f.name] = default
    return filled
