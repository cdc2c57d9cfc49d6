"""Helpers shared by tests: build an algorithm on an env and collect one rollout batch."""

from __future__ import annotations

from functools import partial

import jax

from teamrl.cli_config import base_config
from teamrl.config import apply_overrides
from teamrl.rollout import collect
from teamrl.train import Trainer


def trainer_for(algo: str, env_id: str, **overrides) -> Trainer:
    config = base_config(algo, env_id)
    apply_overrides(config, {k: str(v) for k, v in overrides.items()})
    return Trainer(config)


def rollout_batch(trainer: Trainer, seed: int = 0, train_state=None):
    """(train state, Batch [T, E, ...]) of one rollout of the freshly initialised policy."""
    runner = trainer._init_one(jax.random.PRNGKey(seed))
    ts = runner.train_state if train_state is None else train_state

    def act(obs, key):
        action, log_prob, _ = trainer.algo.act(ts, obs, key)
        return action, log_prob, None

    _, batch, _ = collect(trainer.team_env, act, partial(trainer.algo.values, ts),
                          runner.rollout, jax.random.PRNGKey(seed + 1),
                          trainer.config.run.rollout_length)
    return ts, batch
