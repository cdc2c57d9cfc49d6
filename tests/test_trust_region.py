"""The heterogeneous-agent trust-region family, checked against the mathematics:
Fisher-vector products against the dense Fisher, conjugate gradient, the KL constraint and the
line search, the sequential factor, the n = 1 reductions (HAPPO = PPO, HATRPO = TRPO, TNPG's
step), preceding-agent corrected GAE, A2PO's order and clip, CoPPO's objective, and the
product game where sequential trust-region steps improve and simultaneous ones do not."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from support import rollout_batch, trainer_for
from teamrl.core.advantages import corrected_gae, gae
from teamrl.algos.a2po import adaptive_clip, semi_greedy_order
from teamrl.algos.common import ppo_update, prepare_batch
from teamrl.algos.coppo import coppo_surrogate
from teamrl.algos.sequential import (actor_data, agent_columns, log_ratio, masked_mean,
                                     ppo_agent_step, sequential_actor_update, take_agent)
from teamrl.envs.didactic import expected_clipped_product
from teamrl.core.policies import DiagGaussian, MaskedCategorical
from teamrl.core.trust_region import (TrustRegionConfig, conjugate_gradient, gauss_newton_fvp,
                                 trust_region_step)

# jax 0.10 has jax.enable_x64 and no longer jax.experimental.enable_x64; jax 0.6 only the latter.
enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64


# ------------------------------------------------------------------ Fisher and CG
@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_fisher_vector_product_equals_dense_fisher(kind):
    with enable_x64():
        rng = np.random.default_rng(0)
        obs = jnp.asarray(rng.normal(size=(32, 3)))
        params = {"w1": jnp.asarray(rng.normal(size=(3, 4))), "b1": jnp.zeros(4),
                  "w2": jnp.asarray(rng.normal(size=(4, 2)) * 0.5), "b2": jnp.zeros(2),
                  "log_std": jnp.asarray([-0.3, 0.2])}
        avail = jnp.ones((32, 2), bool)

        def outputs(p):
            return jnp.tanh(obs @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"], p["log_std"]

        def wrap(out):
            mean, log_std = out
            if kind == "discrete":
                return MaskedCategorical(mean, avail)
            return DiagGaussian(mean, jnp.broadcast_to(log_std, mean.shape), avail)

        flat, unravel = ravel_pytree(params)
        old = jax.lax.stop_gradient(wrap(outputs(params)))
        kl_of_outputs = lambda out: old.kl(wrap(out)).mean()
        kl = lambda x: kl_of_outputs(outputs(unravel(x)))
        dense = jax.hessian(kl)(flat)  # the Fisher: Hessian of the mean KL at the old params
        v = jnp.asarray(rng.normal(size=flat.shape))
        product = gauss_newton_fvp(lambda x: outputs(unravel(x)), kl_of_outputs, flat)
        fvp = product(v)
        assert np.linalg.norm(fvp - dense @ v) <= 1e-5 * np.linalg.norm(dense @ v)
        np.testing.assert_allclose(fvp, dense @ v, rtol=1e-5, atol=1e-12)
        damped = gauss_newton_fvp(lambda x: outputs(unravel(x)), kl_of_outputs, flat, 0.1)(v)
        np.testing.assert_allclose(damped, dense @ v + 0.1 * v, rtol=1e-9)


def test_conjugate_gradient_solves_a_random_spd_system():
    with enable_x64():
        rng = np.random.default_rng(1)
        q = rng.normal(size=(20, 20))
        a = q @ q.T + 0.5 * np.eye(20)
        b = rng.normal(size=20)
        x = conjugate_gradient(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), iterations=60,
                               residual_tol=1e-28)
        np.testing.assert_allclose(a @ np.asarray(x), b, atol=1e-8)
        # Fewer iterations than dimensions still reduce the residual monotonically in A-norm.
        few = conjugate_gradient(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), iterations=5)
        assert np.linalg.norm(a @ np.asarray(few) - b) < np.linalg.norm(b)


# -------------------------------------------------------------- trust-region step
def _shrinking_gaussian_problem():
    """A 1-D Gaussian policy whose advantage rewards shrinking the std. KL(old‖new) grows
    exponentially as the std shrinks, so the quadratic model underestimates it."""
    samples = jax.random.normal(jax.random.PRNGKey(0), (4096, 1))
    adv = 1.0 - samples[:, 0] ** 2
    mask = jnp.ones((4096, 1), bool)
    params = {"mean": jnp.zeros(1), "log_std": jnp.zeros(1)}
    outputs = lambda p: p
    dist = lambda out: DiagGaussian(jnp.broadcast_to(out["mean"], (4096, 1)),
                                    jnp.broadcast_to(out["log_std"], (4096, 1)), mask)
    old = jax.lax.stop_gradient(dist(params))
    old_log_prob = old.log_prob(samples)
    objective = lambda out: jnp.mean(jnp.exp(dist(out).log_prob(samples) - old_log_prob) * adv)
    kl = lambda out: jnp.mean(old.kl(dist(out)))
    return params, outputs, objective, kl


def test_line_search_keeps_kl_within_delta_and_rejects_a_violating_step():
    params, outputs, objective, kl = _shrinking_gaussian_problem()
    delta = 1.0
    cfg = TrustRegionConfig(kl_threshold=delta, cg_damping=0.0)
    full, stats = trust_region_step(outputs, objective, kl, params, cfg, line_search=False)
    assert float(stats["kl"]) > delta  # precondition: the full step violates the region
    assert float(full["log_std"][0]) < 0.0
    # One line-search step = only the full step: it must be rejected, parameters unchanged.
    one = TrustRegionConfig(kl_threshold=delta, cg_damping=0.0, line_search_steps=1)
    kept, stats = trust_region_step(outputs, objective, kl, params, one)
    assert float(stats["accepted"]) == 0.0
    np.testing.assert_array_equal(kept["log_std"], params["log_std"])
    # With backtracking a shorter step is accepted, inside the region, and improves.
    new, stats = trust_region_step(outputs, objective, kl, params, cfg)
    assert float(stats["accepted"]) == 1.0 and float(stats["step_fraction"]) < 1.0
    assert float(kl(new)) <= delta * (1 + 1e-6)
    assert float(objective(new)) > float(objective(params))
    assert float(stats["improvement"]) >= 0.5 * float(stats["expected_improvement"]) * float(
        stats["step_fraction"])


def test_hatrpo_every_agent_step_stays_within_delta():
    delta = 0.01
    trainer = trainer_for("hatrpo", "mpe/simple_spread", num_envs=8, rollout_length=64,
                          kl_threshold=delta)
    algo = trainer.algo
    ts, batch = rollout_batch(trainer)
    new_ts, metrics = algo.update(ts, batch, jax.random.PRNGKey(3))
    _, data = prepare_batch(algo, ts, batch)
    d = actor_data(data)
    moved = 0
    for agent in range(3):
        cols = agent_columns(d, agent)
        old = algo.actor.distribution_of(take_agent(ts.actor_params, agent), cols["obs"],
                                         cols["avail"])
        new = algo.actor.distribution_of(take_agent(new_ts.actor_params, agent), cols["obs"],
                                         cols["avail"])
        step_kl = float(masked_mean(old.kl(new), cols["alive"]))
        assert step_kl <= delta * (1 + 1e-4), (agent, step_kl)
        moved += step_kl > 0.1 * delta
    assert moved == 3 - int(metrics["rejections"])
    assert moved >= 1


# ------------------------------------------------------------ the sequential factor
def test_factor_of_each_agent_is_the_product_of_earlier_ratios():
    trainer = trainer_for("happo", "mpe/simple_spread", num_envs=4, rollout_length=32)
    algo = trainer.algo
    ts, batch = rollout_batch(trainer)
    _, data = prepare_batch(algo, ts, batch)
    d = actor_data(data)
    order = jnp.asarray([2, 0, 1], jnp.int32)
    step = ppo_agent_step(algo.actor, algo.actor_tx.tx, algo.cfg, algo.surrogate)
    params, _, _, factors, _ = sequential_actor_update(
        algo.actor, False, ts.actor_params, ts.actor_opt, d, order, jax.random.PRNGKey(0), step)
    ratios = {a: np.exp(np.asarray(log_ratio(algo.actor, take_agent(params, a),
                                             agent_columns(d, a))))
              for a in range(3)}
    expected = np.ones_like(ratios[0])
    for position, agent in enumerate(np.asarray(order)):
        np.testing.assert_allclose(np.asarray(factors[position]), expected, rtol=1e-5)
        expected = expected * ratios[agent]
    assert not np.allclose(np.asarray(factors[2]), 1.0)  # the agents did move


def test_happo_with_one_agent_equals_ppo():
    common = dict(num_envs=8, rollout_length=32, lr=1e-3, epochs=3, minibatches=2,
                  ent_coef=0.01, clip_eps=0.2, share_actor=False)
    happo = trainer_for("happo", "mpe/simple", **common)
    mappo = trainer_for("mappo", "mpe/simple", **common)
    ts, batch = rollout_batch(happo)
    ts_m, batch_m = rollout_batch(mappo)
    for a, b in zip(jax.tree.leaves(ts.actor_params), jax.tree.leaves(ts_m.actor_params)):
        np.testing.assert_array_equal(a, b)
    key = jax.random.PRNGKey(7)
    new, _ = happo.algo.update(ts, batch, key)
    # HAPPO splits its key into (order, actor, critic) and the actor key per agent; PPO's
    # simultaneous update shuffles with the key it is given.
    agent_key = jax.random.split(jax.random.split(key, 3)[1], 1)[0]
    reference, _ = ppo_update(mappo.algo, ts, batch, agent_key)
    moved = False
    for a, b, old in zip(jax.tree.leaves(new.actor_params),
                         jax.tree.leaves(reference.actor_params),
                         jax.tree.leaves(ts.actor_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        moved |= not np.allclose(a, old)
    assert moved


def _dense_trpo_reference(algo, ts, batch, key):
    """TRPO written densely: exact Fisher by jax.hessian, a linear solve, the line search."""
    cfg = algo.cfg
    _, data = prepare_batch(algo, ts, batch)
    d = agent_columns(actor_data(data), 0)
    params = take_agent(ts.actor_params, 0)
    flat, unravel = ravel_pytree(params)
    dist = lambda p: algo.actor.distribution_of(p, d["obs"], d["avail"])
    old = jax.lax.stop_gradient(dist(params))

    def objective(x):
        ratio = jnp.exp(dist(unravel(x)).log_prob(d["action"]) - d["log_prob"])
        return jnp.mean(ratio * d["adv"])

    kl = lambda x: jnp.mean(old.kl(dist(unravel(x))))
    grad = np.asarray(jax.grad(objective)(flat), np.float64)
    fisher = np.asarray(jax.hessian(kl)(flat), np.float64) + cfg.cg_damping * np.eye(flat.size)
    s = np.linalg.solve(fisher, grad)
    full = np.sqrt(2 * cfg.kl_threshold / (s @ fisher @ s)) * s
    expected, base = grad @ full, float(objective(flat))
    for k in range(cfg.line_search_steps):
        fraction = cfg.backtrack_coef ** k
        x = flat + jnp.asarray(fraction * full, jnp.float32)
        improvement = float(objective(x)) - base
        if (float(kl(x)) <= cfg.kl_threshold and improvement > 0
                and improvement >= cfg.accept_ratio * expected * fraction):
            return unravel(x), full
    return params, full


@pytest.mark.parametrize("algo_name", ["hatrpo", "trpo"])
def test_hatrpo_with_one_agent_equals_dense_trpo(algo_name):
    trainer = trainer_for(algo_name, "mpe/simple", num_envs=8, rollout_length=32,
                          hidden_sizes="[4]", cg_iters=100, kl_threshold=0.02)
    ts, batch = rollout_batch(trainer)
    new, metrics = trainer.algo.update(ts, batch, jax.random.PRNGKey(0))
    reference, _ = _dense_trpo_reference(trainer.algo, ts, batch, jax.random.PRNGKey(0))
    assert float(metrics["rejections"]) == 0.0
    for a, b in zip(jax.tree.leaves(take_agent(new.actor_params, 0)),
                    jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)


def test_tnpg_takes_the_natural_gradient_step_of_the_configured_size():
    delta = 0.02
    trainer = trainer_for("tnpg", "mpe/simple", num_envs=8, rollout_length=32,
                          hidden_sizes="[4]", cg_iters=100, kl_threshold=delta)
    algo = trainer.algo
    ts, batch = rollout_batch(trainer)
    new, _ = algo.update(ts, batch, jax.random.PRNGKey(0))
    _, full = _dense_trpo_reference(algo, ts, batch, jax.random.PRNGKey(0))
    before, _ = ravel_pytree(take_agent(ts.actor_params, 0))
    after, _ = ravel_pytree(take_agent(new.actor_params, 0))
    step = np.asarray(after - before, np.float64)
    np.testing.assert_allclose(step, full, rtol=2e-3, atol=2e-6)
    # Its size in the (damped) Fisher metric is exactly the trust-region size: ½ΔᵀFΔ = δ.
    _, data = prepare_batch(algo, ts, batch)
    d = agent_columns(actor_data(data), 0)
    _, unravel = ravel_pytree(take_agent(ts.actor_params, 0))
    old = jax.lax.stop_gradient(algo.actor.distribution_of(unravel(before), d["obs"],
                                                           d["avail"]))
    kl = lambda x: jnp.mean(old.kl(algo.actor.distribution_of(unravel(x), d["obs"], d["avail"])))
    fisher = np.asarray(jax.hessian(kl)(before), np.float64) + algo.cfg.cg_damping * np.eye(
        before.size)
    assert 0.5 * step @ fisher @ step == pytest.approx(delta, rel=1e-3)


# ------------------------------------------------------------- A2PO and CoPPO pieces
def test_corrected_gae_reduces_to_gae_and_matches_a_hand_computed_case():
    rng = np.random.default_rng(0)
    t, e, n = 7, 3, 2
    reward = jnp.asarray(rng.normal(size=(t, e)), jnp.float32)
    value = jnp.asarray(rng.normal(size=(t, e, n)), jnp.float32)
    next_value = jnp.asarray(rng.normal(size=(t, e, n)), jnp.float32)
    terminated = jnp.asarray(rng.random((t, e)) < 0.15)
    truncated = jnp.asarray(rng.random((t, e)) < 0.15) & ~terminated
    plain = gae(reward, value, next_value, terminated, truncated, 0.9, 0.8)
    ones = corrected_gae(reward, value, next_value, terminated, truncated,
                         jnp.ones((t, e, n)), 0.9, 0.8)
    for a, b in zip(plain, ones):
        np.testing.assert_allclose(a, b, rtol=1e-6)

    # 3 steps, one env, one agent; earlier agents' ratio products 1.7, 1.5, 0.5 truncated at 1.
    g, lam = 0.9, 0.8
    r, v, nv = [1.0, 2.0, 3.0], [0.5, 0.4, 0.3], [0.4, 0.3, 0.2]
    trace = np.minimum(1.0, [1.7, 1.5, 0.5])
    delta = [r[i] + g * nv[i] - v[i] for i in range(3)]
    a2 = delta[2]
    a1 = delta[1] + g * lam * trace[2] * a2  # c_2 = 0.5 cuts the continuation
    a0 = delta[0] + g * lam * trace[1] * a1  # c_1 = min(1, 1.5) = 1
    shape = lambda x: jnp.asarray(x, jnp.float32).reshape(3, 1, 1)
    adv, returns = corrected_gae(jnp.asarray(r).reshape(3, 1), shape(v), shape(nv),
                                 jnp.zeros((3, 1), bool), jnp.zeros((3, 1), bool),
                                 shape(trace), g, lam)
    np.testing.assert_allclose(adv[:, 0, 0], [a0, a1, a2], rtol=1e-6)
    np.testing.assert_allclose(returns[:, 0, 0], np.array([a0, a1, a2]) + v, rtol=1e-6)
    # A termination at step 1 stops both the bootstrap and the continuation.
    adv, _ = corrected_gae(jnp.asarray(r).reshape(3, 1), shape(v), shape(nv),
                           jnp.asarray([[False], [True], [False]]), jnp.zeros((3, 1), bool),
                           shape(trace), g, lam)
    np.testing.assert_allclose(adv[:, 0, 0], [delta[0] + g * lam * (r[1] - v[1]), r[1] - v[1],
                                              a2], rtol=1e-6)


def test_a2po_semi_greedy_order_and_adaptive_clip():
    scores = jnp.asarray([0.1, 0.9, 0.5, 0.3, 0.7])
    seconds = []
    orders = jax.jit(jax.vmap(semi_greedy_order, in_axes=(None, 0)))(
        scores, jax.random.split(jax.random.PRNGKey(0), 200))
    for order in np.asarray(orders):
        assert sorted(order) == [0, 1, 2, 3, 4]
        assert order[0] == 1  # the best agent first
        remaining = [a for a in [4, 2, 3, 0] if a != order[1]]  # by score, descending
        assert order[2] == remaining[0]  # the best of those left after the random pick
        assert order[4] in [a for a in range(5) if a not in order[:4]]
        seconds.append(order[1])
    counts = np.bincount(seconds, minlength=5)
    assert counts[1] == 0 and counts[[0, 2, 3, 4]].min() >= 25  # uniform over the others
    np.testing.assert_allclose([float(adaptive_clip(0.2, k, 4)) for k in range(4)],
                               [0.125, 0.15, 0.175, 0.2], rtol=1e-6)


def test_coppo_objective_and_its_per_agent_gradient():
    eps_in, eps_out = 0.1, 0.2
    log_ratio = jnp.asarray([[0.05, -0.3, 0.2], [0.01, 0.02, -0.01]])
    adv = np.asarray([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]], np.float32)
    alive = jnp.ones((2, 3), bool)
    surr = np.asarray(coppo_surrogate(log_ratio, jnp.asarray(adv), alive, eps_in, eps_out))
    r = np.exp(np.asarray(log_ratio))
    for b, i in itertools.product(range(2), range(3)):
        others = np.prod(np.delete(r[b], i))
        joint = r[b, i] * others * adv[b, i]
        clipped = np.clip(r[b, i] * np.clip(others, 1 - eps_in, 1 + eps_in), 1 - eps_out,
                          1 + eps_out) * adv[b, i]
        assert surr[b, i] == pytest.approx(float(min(joint, clipped)), rel=1e-6)
    # Agent i's objective depends on its own ratio only through the gradient.
    jac = jax.jacobian(lambda lr: coppo_surrogate(lr, adv, alive, eps_in, eps_out))(log_ratio)
    jac = np.asarray(jac)  # [2, 3, 2, 3]
    for b, i, c, j in itertools.product(range(2), range(3), range(2), range(3)):
        if (b, i) != (c, j):
            assert jac[b, i, c, j] == 0.0


# ------------------------------------------------------------------ product game
def _product_game_rewards(sequential: bool, seeds) -> list[tuple[float, float]]:
    """(expected reward before, after) one HATRPO update from the reference start, per seed."""
    # REFERENCE §4: unit-std Gaussian policies, so the std is pinned (log std bounded to
    # ±1e-4 around its initial 0) and the trust region goes into the means.
    trainer = trainer_for("hatrpo", "didactic/product", num_envs=64, rollout_length=64,
                          kl_threshold=0.5, sequential=str(sequential).lower(),
                          log_std_init=0.0, log_std_min=-1e-4, log_std_max=1e-4)
    algo = trainer.algo
    update = jax.jit(algo.update)
    results = []
    for seed in seeds:
        ts = trainer._init_one(jax.random.PRNGKey(seed)).train_state
        # Start from the reference policies: means (-0.25, +0.25), independent of the obs.
        params = jax.tree.map(lambda x: x, ts.actor_params)
        dense = params["params"]["MLP_0"]
        last = sorted(k for k in dense if k.startswith("Dense_"))[-1]
        dense[last]["kernel"] = jnp.zeros_like(dense[last]["kernel"])
        dense[last]["bias"] = jnp.asarray([[-0.25], [0.25]])
        ts = ts.replace(actor_params=params)
        ts, batch = rollout_batch(trainer, seed, train_state=ts)
        new, _ = update(ts, batch, jax.random.PRNGKey(seed + 100))
        obs = batch.obs

        def expected_reward(train_state):
            dist = algo.actor.distribution(train_state.actor_params, obs.obs[0, 0],
                                           obs.avail[0, 0])
            mean, std = np.asarray(dist.mean)[:, 0], np.exp(np.asarray(dist.log_std))[:, 0]
            return expected_clipped_product(mean[0], mean[1], std[0], std[1])

        results.append((expected_reward(ts), expected_reward(new)))
    return results


def test_product_game_sequential_step_improves_and_simultaneous_does_not():
    seeds = [0, 1, 2]
    start = expected_clipped_product(-0.25, 0.25, 1.0, 1.0)
    for before, after in _product_game_rewards(True, seeds):
        assert before == pytest.approx(start, rel=1e-5)
        assert after > before
    for before, after in _product_game_rewards(False, seeds):
        assert after < before


# ------------------------------------------------------- every variant runs and moves
@pytest.mark.parametrize("algo,settings", [
    ("happo", dict(action="continuous", share_actor="true")),
    ("hatrpo", dict(action="continuous", share_actor="true")),
    ("a2po", dict(action="continuous", critic_refit="true")),
    ("coppo", dict(action="continuous", share_actor="true")),
    ("happo", dict(factor_clip="inside")),
])
def test_variants_update_finitely_and_move_the_policy(algo, settings):
    trainer = trainer_for(algo, "mpe/simple_spread", num_envs=4, rollout_length=32,
                          epochs=2, **settings)
    ts, batch = rollout_batch(trainer)
    new, metrics = jax.jit(trainer.algo.update)(ts, batch, jax.random.PRNGKey(0))
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves((new, metrics)))
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new.actor_params),
                                                      jax.tree.leaves(ts.actor_params))]
    assert any(changed)


def _critic_step_size(algo, ts, g: float = 1e-3) -> float:
    """The critic's current learning rate, measured: with Adam's moments reset, one step on a
    constant gradient g moves every parameter by lr·g/(g + eps) (bias-corrected m̂ = g,
    v̂ = g²), which leaves only the schedule's position in the optimiser state."""
    reset = lambda s: (s._replace(count=jnp.zeros_like(s.count),
                                  mu=jax.tree.map(jnp.zeros_like, s.mu),
                                  nu=jax.tree.map(jnp.zeros_like, s.nu))
                       if isinstance(s, optax.ScaleByAdamState) else s)
    state = jax.tree.map(reset, ts.critic_opt,
                         is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
    grads = jax.tree.map(lambda p: jnp.full_like(p, g), ts.critic_params)
    updates, _ = algo.critic_tx.tx.update(grads, state, ts.critic_params)
    step = -float(jax.tree.leaves(updates)[0].ravel()[0])
    return step * (g + algo.cfg.adam_eps) / g


@pytest.mark.parametrize("refit", ["true", "false"])
def test_a2po_critic_lr_decays_over_the_whole_run_with_and_without_refit(refit):
    """lr_decay is linear over the run: after half the updates the critic's lr is half the
    initial one, whether the critic makes one pass per update or N (the refit, one per
    agent; its schedule used to count N passes against a one-pass horizon and hit 0 after
    1/N of the run)."""
    updates, samples = 4, 4 * 8
    trainer = trainer_for("a2po", "mpe/simple_spread", num_envs=4, rollout_length=8,
                          epochs=2, minibatches=2, lr_decay="true", critic_refit=refit,
                          total_steps=updates * samples)
    algo = trainer.algo
    assert algo.critic_passes() == (algo.spec.n_agents if refit == "true" else 1)
    ts, batch = rollout_batch(trainer)
    lr = algo.cfg.critic_lr
    assert _critic_step_size(algo, ts) == pytest.approx(lr, rel=1e-4)
    update = jax.jit(algo.update)
    for k in range(updates // 2):
        ts, _ = update(ts, batch, jax.random.PRNGKey(k))
    assert _critic_step_size(algo, ts) == pytest.approx(lr / 2, rel=1e-4)
    for k in range(updates // 2, updates - 1):
        ts, _ = update(ts, batch, jax.random.PRNGKey(k))
    assert _critic_step_size(algo, ts) == pytest.approx(lr / updates, rel=1e-4)


def test_a2po_critic_refit_fits_the_updated_agent_samples_only():
    """Two-stage A2PO refits the critic on the updated agent's samples (its agent-specific
    critic input), as the A2PO code does: the other agents' inputs and stored values do not
    change the refitted critic or the agent's fresh values."""
    trainer = trainer_for("a2po", "mpe/simple_spread", num_envs=4, rollout_length=16,
                          epochs=2, critic_state="agent", critic_refit="true")
    algo = trainer.algo
    ts, batch = rollout_batch(trainer)
    steps, envs = batch.reward.shape
    flat = lambda x: x.reshape((steps * envs,) + x.shape[2:])
    unflat = lambda x: x.reshape((steps, envs) + x.shape[1:])
    agent = 1
    returns = jax.random.normal(jax.random.PRNGKey(3), (steps * envs, 1))
    next_value = flat(ts.value_norm.denormalise(batch.next_value))[:, agent:agent + 1]

    def refit(obs, value):
        data = {"obs": jax.tree.map(flat, obs), "value": flat(value)}
        return algo.refit_critic(ts, data, returns, jnp.asarray(agent), jax.random.PRNGKey(4),
                                 flat, unflat, next_value, batch)

    others = np.arange(3) != agent
    noise = jax.random.normal(jax.random.PRNGKey(5), batch.obs.obs.shape)
    moved_obs = batch.obs._replace(obs=batch.obs.obs + 3.0 * noise * others[:, None])
    moved_value = batch.value + 2.0 * others
    a, b = refit(batch.obs, batch.value), refit(moved_obs, moved_value)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)
    # ... and the refit does move the critic towards the agent's returns.
    before = algo.critic_values(ts.critic_params, {"obs": jax.tree.map(flat, batch.obs)})
    after = algo.critic_values(a[0].critic_params, {"obs": jax.tree.map(flat, batch.obs)})
    target = np.asarray(ts.value_norm.normalise(returns))[:, 0]
    err = lambda v: np.mean((np.asarray(v)[:, agent] - target) ** 2)
    assert err(after) < err(before)
