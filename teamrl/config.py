"""Typed configuration: dataclass sections, ``key=value`` parsing, validation, YAML presets.

A resolved configuration has four sections: ``run`` (RunConfig), ``network`` (NetworkConfig),
``algo`` (the algorithm's own dataclass) and ``env`` (the env's option dataclass). On the command
line every key is flat (``lr=3e-4 hidden_sizes=[64,64] action=continuous``) and names are
unique across sections, so each key belongs to exactly one section.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml


class ConfigError(ValueError):
    """Bad user input; the message is one line naming the bad value and the valid choices."""


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


@dataclass
class RunConfig:
    """Settings of a training run that every algorithm shares."""

    algo: str = option("mappo", "algorithm name (see `teamrl list`)")
    env_id: str = option("mpe/simple_spread", "environment id (see `teamrl list`)")
    total_steps: int = option(1_000_000, "env steps per seed (all envs summed)", low=1)
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
    try:
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            raise TypeError
        if tp is int:
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise TypeError
            value = float(raw)
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
            valid = ", ".join(sorted(owners))
            where = f" in {origin}" if origin else ""
            raise ConfigError(f"unknown key {key!r}{where}; valid keys: {valid}")
        sec_name, sec = owners[key]
        value = coerce(key, raw, field_types(sec)[key])
        setattr(sec, key, value)
        if key == "eval_protocol" and value in EVAL_PROTOCOLS:
            # A protocol sets its three keys; keys given after it may re-cut the same cadence
            # (log_every=5 eval_every=5), which RunConfig.check verifies.
            interval, episodes = EVAL_PROTOCOLS[value]
            sec.log_every, sec.eval_every, sec.eval_episodes = interval, 1, episodes


def apply_sections(config: Config, data: dict, origin: str) -> None:
    """Apply a nested {section: {key: value}} mapping (a preset or a saved config.yaml)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections {SECTION_NAMES}")
    flat = {}
    for sec_name, values in data.items():
        if sec_name not in SECTION_NAMES:
            raise ConfigError(f"{origin}: unknown section {sec_name!r}; valid sections: "
                              + ", ".join(SECTION_NAMES))
        flat.update(values or {})
    apply_overrides(config, flat, origin)


def parse_key_values(args: list[str]) -> dict[str, str]:
    """``["lr=3e-4", "seeds=4"]`` -> ``{"lr": "3e-4", "seeds": "4"}``."""
    out = {}
    for arg in args:
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"argument {arg!r} is not of the form key=value")
        key, value = arg.split("=", 1)
        out[key.strip()] = value
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
