"""Assembling a resolved Config from the command line, presets and saved run folders."""

from __future__ import annotations

import pathlib

from teamrl.algos import ALGORITHMS
from teamrl.config import (SECTION_NAMES, Config, ConfigError, NetworkConfig, RunConfig,
                           apply_overrides, apply_sections, load_preset, preset_paths,
                           read_yaml, suggest)
from teamrl.envs.registry import default_env_options, get_entry


def base_config(algo: str, env_id: str) -> Config:
    """Defaults of (algo, env) with the shipped presets applied."""
    if algo not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {algo!r}"
                          + suggest(algo, ALGORITHMS, "valid algorithms"))
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
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections {', '.join(SECTION_NAMES)}")
    run = data.get("run") or {}
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: section run must be a mapping of key: value")
    algo = overrides.get("algo", run.get("algo"))
    env_id = overrides.get("env_id", run.get("env_id"))
    if not algo or not env_id:
        raise ConfigError(f"{path}: run.algo and run.env_id must be set")
    if not isinstance(algo, str) or not isinstance(env_id, str):
        raise ConfigError(f"{path}: run.algo and run.env_id must be names, got {algo!r:.40} "
                          f"and {env_id!r:.40}")
    config = base_config(algo, env_id)
    apply_sections(config, data, str(path))
    apply_overrides(config, overrides)
    return config


def config_from_run_dir(run_dir, overrides: dict) -> Config:
    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run folder (no config.yaml)")
    return config_from_file(run_dir / "config.yaml", overrides)
