"""The Gaussian log-std bound: smooth, inside the bounds, a gradient that never vanishes at or
past a bound, the exact initial log std, and the same bound on the host (NumPy) path."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from support import trainer_for
from teamrl.core.policies import soft_clip, soft_clip_inverse

BOUNDS = [(-5.0, 2.0), (-20.0, 2.0), (-1.0, 0.2)]  # default, the A2PO preset, a narrow one


@pytest.mark.parametrize("low,high", BOUNDS)
def test_soft_clip_stays_within_bounds_and_is_the_identity_well_inside(low, high):
    x = jnp.linspace(low - 50.0, high + 50.0, 20001)
    y = np.asarray(soft_clip(x, low, high))
    assert (y >= low - 1e-6).all() and (y <= high + 1e-6).all()  # float32 rounding
    assert (np.diff(y) >= -1e-5).all()  # monotone (to float32 rounding)
    w = min(1.0, (high - low) / 2)
    inside = (np.asarray(x) >= low + w) & (np.asarray(x) <= high - w)
    np.testing.assert_array_equal(y[inside], np.asarray(x)[inside])
    # NumPy (host acting) and JAX give the same values.
    np.testing.assert_allclose(soft_clip(np.asarray(x), low, high, xp=np), y, atol=1e-6)


@pytest.mark.parametrize("low,high", BOUNDS)
def test_soft_clip_gradient_at_and_beyond_the_bounds_points_back_inside(low, high):
    """A loss pulling the log std to a value inside has a non-zero gradient at each bound and
    up to 3 units past it, and a descent step moves the raw parameter back towards the inside
    (a hard clip's gradient there is exactly 0)."""
    target = (low + high) / 2
    loss = lambda x: (soft_clip(x, low, high) - target) ** 2
    slope = jax.vmap(jax.grad(lambda x: soft_clip(x, low, high)))
    for bound, outward in ((high, 1.0), (low, -1.0)):
        xs = bound + outward * jnp.array([0.0, 0.5, 1.0, 3.0])
        assert (slope(xs) > 0).all()
        grads = jax.vmap(jax.grad(loss))(xs)
        assert (np.sign(np.asarray(grads)) == outward).all()  # descent moves inwards
        assert float(jax.grad(lambda x: jnp.clip(x, low, high))(bound + outward)) == 0.0


@pytest.mark.parametrize("low,high,y", [(-5.0, 2.0, -0.5), (-20.0, 2.0, -1.0064),
                                        (-5.0, 2.0, 1.7), (-5.0, 2.0, -4.9), (-1.0, 0.2, 0.0)])
def test_soft_clip_inverse_gives_the_exact_initial_value(low, high, y):
    assert float(soft_clip(jnp.float32(soft_clip_inverse(y, low, high)), low, high)) == \
        pytest.approx(y, abs=1e-5)


def test_soft_clip_with_equal_bounds_pins_the_value():
    np.testing.assert_array_equal(soft_clip(jnp.array([-3.0, 0.0, 4.0]), 0.0, 0.0), 0.0)


@pytest.mark.parametrize("log_std_init", ["-0.5", "1.8"])
def test_actor_starts_at_log_std_init_and_recovers_from_past_the_bound(log_std_init):
    """The actor's initial log std equals log_std_init (also inside the soft band), and a log
    std parameter pushed past log_std_max is brought back inside by Adam on an objective that
    prefers a smaller std (with the old hard clip it stayed frozen at the bound)."""
    trainer = trainer_for("ippo", "mpe/simple_spread", num_envs=2, rollout_length=8,
                          action="continuous", log_std_init=log_std_init)
    actor, spec = trainer.algo.actor, trainer.algo.spec
    params = actor.init(jax.random.PRNGKey(0))
    obs = jnp.zeros((4, spec.n_agents, spec.obs_dim))
    avail = jnp.ones((4, spec.n_agents, spec.action_dim), bool)
    dist = actor.distribution(params, obs, avail)
    np.testing.assert_allclose(dist.log_std, float(log_std_init), atol=1e-5)

    high = trainer.config.network.log_std_max
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, high + 0.5) if "log_std" in str(path) else x, params)
    loss = lambda p: actor.distribution(p, obs, avail).entropy().mean()
    tx = optax.adam(0.05)
    opt = tx.init(params)
    for _ in range(30):
        updates, opt = tx.update(jax.grad(loss)(params), opt, params)
        params = optax.apply_updates(params, updates)
    log_std = np.asarray(actor.distribution(params, obs, avail).log_std)
    assert (log_std < high - 0.5).all()
