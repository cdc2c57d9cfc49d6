"""Single-agent Gymnasium envs as teams of one (``gymnasium/<id>``): the team against the env
itself, TRPO/HATRPO/TNPG on them against dense references, and observation normalisation."""

from __future__ import annotations

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from support import host_rollout_batch, trainer_for
from test_trust_region import _dense_trpo_reference

from teamrl.algos.sequential import take_agent
from teamrl.envs.registry import default_env_options, make_env


def _step_alongside(gym_id: str, seed: int, steps: int) -> bool:
    """Step the one-agent team of ``gym_id`` and the env itself with the same random actions
    for up to ``steps`` steps or one episode, asserting equal sizes, observations (and the
    global state), rewards, end flags and the final observation; returns ``terminated``."""
    opts = default_env_options(f"gymnasium/{gym_id}")
    opts.workers = 0
    team = make_env(f"gymnasium/{gym_id}", opts)
    env = gymnasium.make(gym_id)
    spec = team.spec
    discrete = isinstance(env.action_space, gymnasium.spaces.Discrete)
    assert spec.n_agents == 1 and spec.obs_dims == env.observation_space.shape
    assert spec.discrete == discrete
    assert spec.action_dim == (env.action_space.n if discrete else env.action_space.shape[0])
    rng = np.random.default_rng(seed)
    terminated = False
    with team.vector(1) as vec:
        vec.reset([seed])
        obs, _ = env.reset(seed=seed)
        b = vec.buffers
        for _ in range(steps):
            np.testing.assert_allclose(b.obs[0, 0], obs, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(b.state[0], obs, rtol=1e-6, atol=1e-6)
            if discrete:
                action = int(rng.integers(spec.action_dim))
                vec.step(np.array([[action]]))
            else:
                action = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
                vec.step(action[None, None])
            obs, reward, terminated, truncated, _ = env.step(action)
            assert b.reward[0] == pytest.approx(reward, rel=1e-5, abs=1e-6)
            assert (b.terminated[0], b.truncated[0]) == (terminated, truncated)
            if terminated or truncated:
                np.testing.assert_allclose(b.final_obs[0, 0], obs, rtol=1e-6, atol=1e-6)
                break
    return terminated


@pytest.mark.parametrize("gym_id", ["Hopper-v5", "CartPole-v1"])
def test_one_agent_team_matches_the_gymnasium_env(gym_id):
    terminated = _step_alongside(gym_id, seed=5, steps=2000)
    assert terminated  # random actions end these episodes by the game's own rules


@pytest.mark.parametrize("algo_name", ["hatrpo", "trpo"])
def test_trpo_on_gymnasium_equals_dense_trpo(algo_name):
    """HATRPO with one agent and TRPO take the same step, the one of a dense TRPO."""
    trainer = trainer_for(algo_name, "gymnasium/Pendulum-v1", num_envs=4, rollout_length=64,
                          hidden_sizes="[4]", cg_iters=100, kl_threshold=0.02, workers=0,
                          cg_damping=0.1)
    try:
        ts, batch = host_rollout_batch(trainer)
        new, metrics = trainer.algo.update(ts, batch, jax.random.PRNGKey(0))
        reference, _ = _dense_trpo_reference(trainer.algo, ts, batch, jax.random.PRNGKey(0))
    finally:
        trainer.close()
    assert float(metrics["rejections"]) == 0.0
    for a, b in zip(jax.tree.leaves(take_agent(new.actor_params, 0)),
                    jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


def test_hatrpo_one_agent_and_trpo_give_identical_runs():
    params = []
    for algo in ("hatrpo", "trpo"):
        trainer = trainer_for(algo, "gymnasium/Pendulum-v1", num_envs=4, rollout_length=64,
                              workers=0, progress="none", eval_every=0)
        try:
            runner = trainer.init()
            runner, _ = trainer.compile_chunk(runner, 2)(runner)
        finally:
            trainer.close()
        params.append(jax.tree.leaves(runner.train_state.actor_params))
    for a, b in zip(*params):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tnpg_on_gymnasium_takes_the_natural_gradient_step():
    trainer = trainer_for("tnpg", "gymnasium/Pendulum-v1", num_envs=4, rollout_length=64,
                          hidden_sizes="[4]", cg_iters=100, kl_threshold=0.02, workers=0,
                          cg_damping=0.1)
    try:
        ts, batch = host_rollout_batch(trainer)
        new, _ = trainer.algo.update(ts, batch, jax.random.PRNGKey(0))
        _, full = _dense_trpo_reference(trainer.algo, ts, batch, jax.random.PRNGKey(0))
    finally:
        trainer.close()
    before, _ = ravel_pytree(take_agent(ts.actor_params, 0))
    after, _ = ravel_pytree(take_agent(new.actor_params, 0))
    np.testing.assert_allclose(np.asarray(after - before, np.float64), full, rtol=2e-3,
                               atol=2e-6)


def test_obs_norm_statistics_and_inputs():
    """The update sees observations standardised with the rollout's statistics; afterwards
    the statistics hold the batch's mean and variance (from the initial count of 1e-4)."""
    trainer = trainer_for("ppo", "gymnasium/Hopper-v5", num_envs=4, rollout_length=64,
                          workers=0, obs_norm="true")
    try:
        st, batch = host_rollout_batch(trainer)
        algo = trainer.algo
        normalised = algo.normalise(st, batch.obs)
        # Fresh statistics (mean 0, var 1): inputs pass through unchanged except the clip.
        np.testing.assert_allclose(normalised.obs, jnp.clip(batch.obs.obs, -10, 10), rtol=1e-4)
        new, _ = algo.update(st, batch, jax.random.PRNGKey(0))
    finally:
        trainer.close()
    raw = np.asarray(batch.obs.obs, np.float64).reshape(-1, *batch.obs.obs.shape[2:])
    n, prior = raw.shape[0], 1e-4
    mean = raw.mean(0) * n / (n + prior)
    var = (prior * 1.0 + raw.var(0) * n + raw.mean(0) ** 2 * prior * n / (n + prior)) / (n + prior)
    np.testing.assert_allclose(new.obs.mean, mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new.obs.var, var, rtol=1e-3, atol=1e-6)
    # The next inputs are standardised: mean ~0 and std ~1 per entry on this batch.
    z = np.asarray(trainer.algo.normalise(new, batch.obs).obs).reshape(raw.shape)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-3)
    varying = raw.std(0) > 1e-3
    np.testing.assert_allclose(z.std(0)[varying], 1, atol=1e-2)


ISSUE_IDS = ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Swimmer-v5", "Ant-v5",
             "InvertedPendulum-v5", "InvertedDoublePendulum-v5", "CartPole-v1", "Acrobot-v1",
             "MountainCar-v0"]


@pytest.mark.parametrize("gym_id", ISSUE_IDS)
def test_every_listed_gymnasium_id_is_a_one_agent_team_of_that_env(gym_id):
    """Each id the issue lists: the team's sizes are the env's, and 100 random steps give the
    env's own observations, rewards and end flags (the episode test above covers ends)."""
    _step_alongside(gym_id, seed=3, steps=100)
