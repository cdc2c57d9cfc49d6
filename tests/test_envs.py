"""Conformance of every registered env id with the team-array contract, and the adapter's
padding, masking, agent ids and termination/truncation bookkeeping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teamrl.envs.registry import REGISTRY, default_env_options, list_env_ids, make_env

COMPILED_IDS = [env_id for env_id in list_env_ids() if not REGISTRY[env_id].host]
VARIANTS = [(env_id, {}) for env_id in COMPILED_IDS] + [
    (env_id, {"action": "continuous"}) for env_id in list_env_ids() if env_id.startswith("mpe/")]


def _build(env_id, options, agent_id=False):
    opts = default_env_options(env_id)
    for k, v in options.items():
        setattr(opts, k, v)
    return make_env(env_id, opts, agent_id=agent_id)


def _random_actions(spec, key, avail):
    if spec.discrete:
        logits = jnp.where(avail, 0.0, -jnp.inf)
        return jax.random.categorical(key, logits).astype(jnp.int32)
    return jax.random.normal(key, (spec.n_agents, spec.action_dim))


def _play(team, key, steps):
    state, obs = team.reset(key)

    def step(carry, k):
        state, obs = carry
        a_key, s_key = jax.random.split(k)
        state, out = team.step(s_key, state, _random_actions(team.spec, a_key, obs.avail))
        return (state, out.next_obs), out

    _, outs = jax.lax.scan(step, (state, obs), jax.random.split(key, steps))
    return obs, outs


@pytest.mark.parametrize("env_id,options", VARIANTS, ids=lambda v: str(v))
def test_env_conformance(env_id, options):
    team = _build(env_id, options, agent_id=True)
    spec = team.spec
    n, d, a = spec.n_agents, spec.obs_dim, spec.action_dim
    steps = spec.max_steps + 3
    play = jax.jit(lambda k: _play(team, k, steps))
    obs0, outs = play(jax.random.PRNGKey(0))
    assert obs0.obs.shape == (n, d) and obs0.obs.dtype == jnp.float32
    assert obs0.state.shape == (spec.state_dim,) and obs0.state.dtype == jnp.float32
    assert obs0.avail.shape == (n, a) and obs0.avail.dtype == jnp.bool_
    assert obs0.alive.shape == (n,)
    assert outs.reward.shape == (steps,) and outs.reward.dtype == jnp.float32
    assert outs.next_obs.obs.shape == (steps, n, d)
    assert bool(jnp.isfinite(outs.reward).all())
    assert not bool((outs.terminated & outs.truncated).any())
    assert bool(obs0.avail.any(-1).all())
    # agent ids are the last n entries
    np.testing.assert_array_equal(obs0.obs[:, d - n:], np.eye(n))
    # padded observation entries are zero
    assert bool(jnp.where(jnp.asarray(spec.obs_mask), 0.0, outs.next_obs.obs).sum() == 0)
    # auto-reset: an episode ends within max_steps steps, and the next obs is a fresh start
    done = np.asarray(outs.terminated | outs.truncated)
    assert done[: spec.max_steps].any()
    # reproducible from a key
    _, again = play(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(outs.reward, again.reward)
    np.testing.assert_array_equal(outs.next_obs.obs, again.next_obs.obs)


def test_mpe_time_limit_is_truncation_and_didactic_end_is_termination():
    spread = _build("mpe/simple_spread", {})
    _, outs = jax.jit(lambda k: _play(spread, k, 60))(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.flatnonzero(outs.truncated), [24, 49])
    assert not bool(outs.terminated.any())
    climbing = _build("didactic/climbing", {})
    _, outs = jax.jit(lambda k: _play(climbing, k, 3))(jax.random.PRNGKey(1))
    assert bool(outs.terminated.all()) and not bool(outs.truncated.any())


def test_padding_round_trip_heterogeneous_agents():
    team = _build("mpe/simple_speaker_listener", {}, agent_id=True)
    spec = team.spec
    assert spec.obs_dims == (3, 11) and spec.action_dims == (3, 5)
    raw_obs, env_state = team.env.reset(jax.random.PRNGKey(4))
    packed = team._team_obs(raw_obs, env_state)
    for i, name in enumerate(spec.agent_names):
        np.testing.assert_array_equal(packed.obs[i, : spec.obs_dims[i]], raw_obs[name])
        assert float(jnp.abs(packed.obs[i, spec.obs_dims[i]: 11]).sum()) == 0.0
    np.testing.assert_array_equal(packed.state, jnp.concatenate([raw_obs[n] for n in spec.agent_names]))
    np.testing.assert_array_equal(packed.avail, [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])


def test_continuous_actions_are_clipped_and_unpadded():
    team = _build("mpe/simple_speaker_listener", {"action": "continuous"})
    action = jnp.array([[2.0, -1.0, 0.5, 9.0, 9.0], [0.3, 0.4, 1.5, -0.2, 0.1]])
    env_actions = team._env_actions(action)
    np.testing.assert_allclose(env_actions["speaker_0"], [1.0, 0.0, 0.5])
    np.testing.assert_allclose(env_actions["listener_0"], [0.3, 0.4, 1.0, 0.0, 0.1])


def test_team_reward_mean_and_sum():
    mean_env = _build("mpe/simple_spread", {})
    sum_env = make_env("mpe/simple_spread", default_env_options("mpe/simple_spread"),
                       team_reward="sum")
    key = jax.random.PRNGKey(0)
    _, a = jax.jit(lambda k: _play(mean_env, k, 5))(key)
    _, b = jax.jit(lambda k: _play(sum_env, k, 5))(key)
    np.testing.assert_allclose(b.reward, 3 * a.reward, rtol=1e-5)
