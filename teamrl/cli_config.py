"""Assembling a resolved Config from the command line, presets and saved run folders."""

from __future__ import annotations

import pathlib

import yaml

from teamrl.algos import ALGORITHMS
from teamrl.config import (Config, ConfigError, NetworkConfig, RunConfig, apply_overrides,
                           apply_sections, load_preset, preset_paths)
from teamrl.envs.registry import default_env_options, get_entry


def base_config(algo: str, env_id: str) -> Config:
    """Defaults of (algo, env) with the shipped presets applied."""
    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algo!r}; valid algorithms: "
                          + ", ".join(sorted(ALGORITHMS)))
    get_entry(env_id)
    config = Config(RunConfig(algo=algo, env_id=env_id), NetworkConfig(),
                    ALGORITHMS[algo].config_class(), default_env_options(env_id))
    for relpath in preset_paths(env_id, algo):
        apply_sections(config, load_preset(relpath), f"preset {relpath}")
    return config


def config_from_file(path, overrides: dict) -> Config:
    """A saved/hand-written config.yaml (sections run/network/algo/env) plus overrides."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    run = data.get("run", {}) if isinstance(data, dict) else {}
    algo = overrides.get("algo", run.get("algo"))
    env_id = overrides.get("env_id", run.get("env_id"))
    if not algo or not env_id:
        raise ConfigError(f"{path}: run.algo and run.env_id must be set")
    config = base_config(algo, env_id)
    apply_sections(config, data, str(path))
    apply_overrides(config, overrides)
    return config


def config_from_run_dir(run_dir, overrides: dict) -> Config:
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run folder (no config.yaml)")
    return config_from_file(run_dir / "config.yaml", overrides)
