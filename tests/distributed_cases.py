"""Run by tests/test_distributed.py in a subprocess with two simulated CPU devices (XLA's
host device count flag must be set before JAX starts): trains each case on one and on two
devices from the same seed and prints one JSON line per case with the largest parameter
difference relative to the parameters' scale."""

from __future__ import annotations

import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from teamrl.train.presets import base_config  # noqa: E402
from teamrl.config import ConfigError, apply_overrides  # noqa: E402
from teamrl.train import make_trainer  # noqa: E402

SMALL = {"num_envs": 4, "rollout_length": 16, "total_steps": 1024}
CASES = {
    # the sequential agent-by-agent update (a scan over the agent order), two seeds
    # vectorised at the same time
    "happo_seeds2": ("happo", "mpe/simple_spread", {"seeds": 2}),
    # a shared actor with agent ids
    "mappo": ("mappo", "mpe/simple_spread", {}),
    # GRU actor and critic, chunked training from stored hidden states, dead agents masked
    "mappo_recurrent_smax": ("mappo", "smax/3m", {"num_envs": 4, "rollout_length": 16,
                                                  "chunk_length": 8, "minibatches": 2,
                                                  "hidden_sizes": [32], "gru_size": 32}),
}


def train(algo: str, env_id: str, settings: dict, devices: int, chunks: int = 2):
    """Train ``chunks`` chunks of 2 updates; -> (train state as numpy, Placement size)."""
    config = base_config(algo, env_id)
    apply_overrides(config, {**{k: str(v) for k, v in {**SMALL, **settings}.items()},
                             "devices": str(devices)})
    trainer = make_trainer(config)
    runner = trainer.init()
    step = trainer.compile_chunk(runner, 2)
    for _ in range(chunks):
        runner, _ = step(runner)
    note = trainer.placement.check_replicas(runner.train_state)
    return jax.tree.map(np.asarray, runner.train_state), trainer.placement.size, note


def relative_difference(a, b) -> float:
    """max |a - b| / (max |a| + 1e-8) over the floating-point leaves."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if np.issubdtype(x.dtype, np.floating) and x.size:
            worst = max(worst, float(np.max(np.abs(x - y)) / (np.max(np.abs(x)) + 1e-8)))
        else:
            assert np.array_equal(x, y), "integer leaves differ"
    return worst


def main() -> None:
    assert jax.local_device_count() == 2, jax.devices()
    for name in sys.argv[1:] or CASES:
        algo, env_id, settings = CASES[name]
        one, size_one, _ = train(algo, env_id, settings, devices=1)
        two, size_two, note = train(algo, env_id, settings, devices=2)
        print(json.dumps({"case": name, "devices": [size_one, size_two], "note": note,
                          "rel_diff": relative_difference(one, two)}), flush=True)
    try:
        train("mappo", "mpe/simple_spread", {"num_envs": 3}, devices=2)
    except ConfigError as err:
        print(json.dumps({"case": "indivisible", "error": str(err)}), flush=True)


if __name__ == "__main__":
    main()
