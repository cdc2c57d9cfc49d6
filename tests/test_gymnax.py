"""Single-agent gymnax environments as teams of one: the team trajectory equals gymnax's own
for the same keys (observations, rewards, termination vs truncation), and the team spec."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teamrl.envs.registry import GymnaxOptions, list_env_ids, make_env

GYMNAX_IDS = [e for e in list_env_ids() if e.startswith("gymnax/")]


def _team(env_id, max_steps=0):
    return make_env(env_id, GymnaxOptions(max_steps=max_steps))


def _play_both(team, key, steps):
    """The team and gymnax itself (``env.step``, auto-reset) stepped with the same keys and
    the same random actions (continuous ones drawn beyond the bounds: the team clips them,
    gymnax is given them clipped)."""
    spec, genv, params = team.spec, team.env.gymnax_env, team.env.params
    low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
    key_reset, key_steps = jax.random.split(key)
    state, obs = team.reset(key_reset)
    gobs, gstate = genv.reset(key_reset, params)

    def step(carry, k):
        state, gstate = carry
        k_act, k_env = jax.random.split(k)
        if spec.discrete:
            action = jax.random.randint(k_act, (1,), 0, spec.action_dim)
            gaction = action[0]
        else:
            action = 1.5 * high * jax.random.normal(k_act, (1, spec.action_dim))
            gaction = jnp.clip(action, low, high)[0]
        state, out = team.step(k_env, state, action)
        gobs, gstate, greward, gterm, gtrunc, ginfo = genv.step(k_env, gstate, gaction, params)
        theirs = (gobs, ginfo["final_observation"], greward, gterm, gtrunc)
        return (state, gstate), (out, theirs)

    _, (outs, theirs) = jax.lax.scan(step, (state, gstate), jax.random.split(key_steps, steps))
    return (obs, gobs), outs, theirs


@pytest.mark.parametrize("env_id", GYMNAX_IDS)
def test_team_matches_gymnax(env_id):
    team = _team(env_id)
    steps = 450 if env_id == "gymnax/Pendulum-v1" else 300
    (obs0, gobs0), outs, (gobs, gfinal, greward, gterm, gtrunc) = jax.jit(
        lambda k: _play_both(team, k, steps))(jax.random.PRNGKey(3))
    np.testing.assert_allclose(obs0.obs[0], jnp.ravel(gobs0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(outs.next_obs.obs[:, 0], gobs.reshape(steps, -1), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(outs.final_obs.obs[:, 0], gfinal.reshape(steps, -1), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(outs.reward, greward.reshape(steps), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outs.terminated, gterm)
    # gymnax may flag both at once; a natural ending wins (no bootstrap)
    np.testing.assert_array_equal(outs.truncated, gtrunc & ~gterm)
    assert outs.next_obs.obs.dtype == jnp.float32
    if env_id == "gymnax/CartPole-v1":
        # a random policy drops the pole within a few dozen steps: terminations, no truncation
        assert int(outs.terminated.sum()) >= 5 and not bool(outs.truncated.any())
    if env_id == "gymnax/Pendulum-v1":
        # the pendulum never ends by itself: truncation at exactly 200 steps
        np.testing.assert_array_equal(np.flatnonzero(outs.truncated), [199, 399])
        assert not bool(outs.terminated.any())


SPECS = {
    "gymnax/CartPole-v1": ("discrete", 4, 2, 500, None),
    "gymnax/Pendulum-v1": ("continuous", 3, 1, 200, (-2.0, 2.0)),
    "gymnax/Acrobot-v1": ("discrete", 6, 3, 500, None),
    "gymnax/MountainCar-v0": ("discrete", 2, 3, 200, None),
    "gymnax/MountainCarContinuous-v0": ("continuous", 2, 1, 999, (-1.0, 1.0)),
}


@pytest.mark.parametrize("env_id", sorted(SPECS))
def test_gymnax_team_spec(env_id):
    kind, obs_dim, action_dim, max_steps, bounds = SPECS[env_id]
    spec = _team(env_id).spec
    assert env_id in GYMNAX_IDS
    assert spec.n_agents == 1 and spec.agent_names == ("agent_0",)
    assert spec.action_kind == kind and spec.discrete == (kind == "discrete")
    assert spec.obs_dims == (obs_dim,) and spec.state_dim == obs_dim
    assert spec.action_dims == (action_dim,)
    assert spec.max_steps == max_steps
    if bounds is None:
        assert spec.action_low == () and spec.action_high == ()
    else:
        assert spec.action_low == ((bounds[0],),) and spec.action_high == ((bounds[1],),)


def test_gymnax_ids_include_cartpole_and_pendulum():
    assert {"gymnax/CartPole-v1", "gymnax/Pendulum-v1"} <= set(GYMNAX_IDS)


def _push_right(team, key, steps):
    state, _ = team.reset(key)

    def step(state, k):
        state, out = team.step(k, state, jnp.ones((1,), jnp.int32))
        return state, out

    return jax.lax.scan(step, state, jax.random.split(key, steps))[1]


def test_max_steps_override_and_natural_end_at_the_limit_is_termination():
    key = jax.random.PRNGKey(0)
    # always pushing right, the pole falls after `fall` steps
    outs = jax.jit(lambda k: _push_right(_team("gymnax/CartPole-v1"), k, 40))(key)
    fall = int(np.flatnonzero(outs.terminated)[0]) + 1
    assert 3 < fall < 40
    # a limit one step earlier cuts the episode: truncation, and gymnax's params follow it
    early = _team("gymnax/CartPole-v1", max_steps=fall - 1)
    assert early.spec.max_steps == fall - 1
    assert early.env.params.max_steps_in_episode == fall - 1
    outs = jax.jit(lambda k: _push_right(early, k, fall - 1))(key)
    assert bool(outs.truncated[-1]) and not bool(outs.terminated.any())
    # the pole falling exactly at the limit is a termination (no bootstrap), not a truncation
    exact = _team("gymnax/CartPole-v1", max_steps=fall)
    outs = jax.jit(lambda k: _push_right(exact, k, fall))(key)
    assert bool(outs.terminated[-1]) and not bool(outs.truncated.any())
