"""Host-env training with several seeds: each seed steps its own envs and runs its own compiled
update, and with ``host_overlap`` one seed's envs step while another's update computes. The
results must not depend on either: overlapped and waiting runs give identical parameters and
metrics, and a seed trains the same whether or not other seeds share its run."""

import jax
import numpy as np
import pytest

from teamrl.config import apply_overrides
from teamrl.train import HostTrainer, base_config

TINY = {"num_envs": 4, "rollout_length": 40, "epochs": 2, "progress": "none",
        "eval_every": 0, "workers": 1, "total_steps": 10**6}


def train_updates(algo, env_id, updates=3, **settings):
    """(train state as NumPy [S, ...] leaves, metrics {name: [S, K]}) after ``updates``."""
    config = base_config(algo, env_id)
    apply_overrides(config, {k: str(v) for k, v in {**TINY, **settings}.items()})
    trainer = HostTrainer(config)
    try:
        runner = trainer.init()
        chunk = trainer.compile_chunk(runner, updates)
        runner, metrics = chunk(runner)
        return jax.tree.map(np.asarray, runner.train_state), metrics, trainer.overlap
    finally:
        trainer.close()


def assert_identical(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("algo,env_id", [("happo", "mamujoco/HalfCheetah-2x3"),
                                         ("mappo", "mamujoco/Hopper-3x1")])
def test_overlapped_and_waiting_updates_give_identical_results(algo, env_id):
    overlapped, metrics_o, on = train_updates(algo, env_id, seeds=3, host_overlap="auto")
    waiting, metrics_w, off = train_updates(algo, env_id, seeds=3, host_overlap="false")
    assert on and not off
    assert_identical(overlapped, waiting)
    assert metrics_o.keys() == metrics_w.keys()
    for name in metrics_o:
        assert metrics_o[name].shape == (3, 3), name
        np.testing.assert_array_equal(metrics_o[name], metrics_w[name], err_msg=name)


def test_a_seed_trains_the_same_alone_and_beside_other_seeds():
    both, metrics, _ = train_updates("happo", "mamujoco/HalfCheetah-2x3", seeds=2, seed=5)
    alone, alone_metrics, _ = train_updates("happo", "mamujoco/HalfCheetah-2x3", seeds=1,
                                            seed=6)
    assert_identical(jax.tree.map(lambda x: x[1:], both), alone)
    np.testing.assert_array_equal(metrics["reward_mean"][1:], alone_metrics["reward_mean"])
    # and the two seeds of one run differ (they are seeds, not copies)
    leaf = jax.tree.leaves(both)[0]
    assert not np.array_equal(leaf[0], leaf[1])
