"""Helpers shared by tests: build an algorithm on an env and collect one rollout batch."""

from __future__ import annotations

import jax

from teamrl.train.presets import base_config
from teamrl.config import apply_overrides
from teamrl.train import Trainer, make_trainer


def trainer_for(algo: str, env_id: str, **overrides) -> Trainer:
    """The trainer of (algo, env) with overrides (a HostTrainer for host envs: close it)."""
    config = base_config(algo, env_id)
    apply_overrides(config, {k: str(v) for k, v in overrides.items()})
    return make_trainer(config)


def host_rollout_batch(trainer):
    """(train state, Batch [T, E, ...]) of one host-env rollout of seed 0's fresh policy."""
    runner = trainer.init()
    keys = trainer._split(runner.key)[:1, 1]
    arrays, _ = trainer.collectors[0].collect(runner.train_state, keys)
    ts = jax.tree.map(lambda x: x[0], runner.train_state)
    arrays = jax.tree.map(jax.numpy.asarray, arrays)
    return ts, trainer.host_batch(ts, arrays)


def rollout_batch(trainer: Trainer, seed: int = 0, train_state=None):
    """(train state, Batch [T, E, ...]) of one rollout of the freshly initialised policy."""
    runner = trainer._init_one(jax.random.PRNGKey(seed))
    ts = runner.train_state if train_state is None else train_state
    _, batch, _ = trainer.collect(ts, runner.rollout, jax.random.PRNGKey(seed + 1))
    return ts, batch
