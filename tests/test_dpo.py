"""DPO (decentralised policy optimisation): the per-agent loss against its closed form, the
adaptive coefficient rule at and around its thresholds and bounds, per-agent vs shared
coefficients, one update against an independent recomputation, the coefficients across a
checkpoint resume, and (slow) learning on the DPO authors' random stochastic game."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import rollout_batch, trainer_for
from teamrl import runs
from teamrl.algos.common import prepare_batch
from teamrl.algos.dpo import SQRT_EPS, DPOConfig, adapt_coefficient, dpo_agent_losses
from teamrl.cli import main
from teamrl.config import ConfigError
from teamrl.core.policies import DiagGaussian, MaskedCategorical


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ---------------------------------------------------------------------- the loss
@pytest.mark.parametrize("divide_by_n", [False, True])
def test_loss_equals_closed_form_on_a_hand_made_batch(divide_by_n):
    # 3 samples x 2 agents x 3 actions; agent 1 is dead in sample 2 and action 2 is
    # unavailable to agent 0 in sample 0.
    old_logits = np.array([[[0.0, 0.5, 0.0], [1.0, 0.0, -1.0]],
                           [[0.2, -0.3, 0.1], [0.0, 0.0, 0.0]],
                           [[-1.0, 0.0, 1.0], [0.5, 0.5, -0.5]]], np.float32)
    new_logits = old_logits + np.array([[[0.3, -0.2, 0.0], [0.0, 0.4, 0.1]],
                                        [[-0.5, 0.2, 0.0], [0.1, -0.1, 0.3]],
                                        [[0.0, 0.0, 0.0], [0.9, -0.4, 0.2]]], np.float32)
    avail = np.ones((3, 2, 3), bool)
    avail[0, 0, 2] = False
    alive = np.array([[True, True], [True, True], [True, False]])
    action = np.array([[1, 0], [2, 1], [0, 2]])
    adv = np.array([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.7]], np.float32)
    old_logp = _log_softmax(np.where(avail, old_logits, -1e9))
    new_logp = _log_softmax(np.where(avail, new_logits, -1e9))
    beta_kl, beta_sqrt, ent_coef = np.array([0.7, 2.0]), np.array([0.3, 0.05]), 0.01
    n = 2.0 if divide_by_n else 1.0

    # Closed form, one agent and one sample at a time.
    expected = np.zeros(2)
    for i in range(2):
        samples = [b for b in range(3) if alive[b, i]]
        pol = kl = sq = ent = 0.0
        for b in samples:
            a = avail[b, i]
            p_old, p_new = np.exp(old_logp[b, i][a]), np.exp(new_logp[b, i][a])
            ratio = p_new[list(np.flatnonzero(a)).index(action[b, i])] / p_old[
                list(np.flatnonzero(a)).index(action[b, i])]
            kl_b = float(np.sum(p_old * (np.log(p_old) - np.log(p_new))))
            pol += ratio * adv[b, i]
            kl += kl_b
            sq += math.sqrt(kl_b + SQRT_EPS)
            ent += float(-np.sum(p_new * np.log(p_new)))
        m = len(samples)
        expected[i] = (-pol / m / n + beta_sqrt[i] * sq / m + beta_kl[i] * kl / m
                       - ent_coef * ent / m)

    old = MaskedCategorical(jnp.asarray(old_logits), jnp.asarray(avail))
    new = MaskedCategorical(jnp.asarray(new_logits), jnp.asarray(avail))
    log_ratio = jnp.where(alive, new.log_prob(jnp.asarray(action)) - old.log_prob(
        jnp.asarray(action)), 0.0)
    loss, terms = dpo_agent_losses(new, old, log_ratio, jnp.asarray(adv), jnp.asarray(alive),
                                   jnp.asarray(beta_kl, jnp.float32),
                                   jnp.asarray(beta_sqrt, jnp.float32), ent_coef, n)
    np.testing.assert_allclose(np.asarray(loss), expected, rtol=1e-5, atol=1e-6)
    assert float(terms["kl"].min()) > 0.0


def test_gaussian_kl_terms_and_finite_gradient_at_zero():
    mean_old = jnp.array([[[0.0, 1.0]], [[0.5, -0.5]]])  # [B=2, N=1, D=2]
    log_std_old = jnp.array([[[-0.5, 0.0]], [[-0.5, 0.0]]])
    mask = jnp.ones((2, 1, 2), bool)
    old = DiagGaussian(mean_old, log_std_old, mask)
    alive = jnp.ones((2, 1), bool)

    def loss(shift):
        new = DiagGaussian(mean_old + shift, log_std_old, mask)
        return dpo_agent_losses(new, old, jnp.zeros((2, 1)), jnp.zeros((2, 1)), alive, 1.0,
                                1.0, 0.0)

    # KL of a mean shift s with stds sigma: sum_d s_d^2 / (2 sigma_d^2).
    shift = jnp.array([0.1, -0.2])
    closed = 0.5 * (0.1**2 / math.exp(-1.0) + 0.2**2)
    _, terms = loss(shift)
    np.testing.assert_allclose(float(terms["kl"][0]), closed, rtol=1e-5)
    np.testing.assert_allclose(float(terms["sqrt_kl"][0]), math.sqrt(closed + SQRT_EPS),
                               rtol=1e-5)
    # At the old parameters KL = 0: the sqrt term is finite and so is its gradient.
    grad = jax.grad(lambda s: loss(s)[0].sum())(jnp.zeros(2))
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-6)


# --------------------------------------------------------------- adaptive rule
def test_adaptive_rule_halves_doubles_and_keeps_at_the_thresholds():
    d, tol = 0.01, 1.5
    low, high = d / tol, d * tol  # halve strictly below low, double strictly above high
    measured = jnp.array([0.0, low * 0.999, low, 0.01, high, high * 1.001, 1.0], jnp.float32)
    beta = jnp.ones(7, jnp.float32)
    new = adapt_coefficient(beta, measured, d, tol, 2.0, 1e-3, 1e3)
    np.testing.assert_array_equal(np.asarray(new), [0.5, 0.5, 1.0, 1.0, 1.0, 2.0, 2.0])
    # The sqrt coefficient uses target sqrt(d) with the same rule.
    s = math.sqrt(d)
    new = adapt_coefficient(jnp.ones(3), jnp.array([s / tol * 0.99, s, s * tol * 1.01]), s,
                            tol, 2.0, 1e-3, 1e3)
    np.testing.assert_array_equal(np.asarray(new), [0.5, 1.0, 2.0])


def test_adaptive_rule_respects_the_bounds():
    beta = jnp.array([1.5e-3, 1e-3, 800.0, 1e3, 1.0], jnp.float32)
    measured = jnp.array([0.0, 0.0, 1.0, 1.0, 0.01], jnp.float32)
    new = np.asarray(adapt_coefficient(beta, measured, 0.01, 1.5, 2.0, 1e-3, 1e3))
    np.testing.assert_allclose(new, [1e-3, 1e-3, 1e3, 1e3, 1.0], rtol=1e-6)
    # Repeated halving from 1 reaches the floor and stays there; doubling the ceiling.
    b = jnp.ones(())
    for _ in range(20):
        b = adapt_coefficient(b, 0.0, 0.01, 1.5, 2.0, 1e-3, 1e3)
    np.testing.assert_allclose(float(b), 1e-3, rtol=1e-6)
    for _ in range(25):
        b = adapt_coefficient(b, 1.0, 0.01, 1.5, 2.0, 1e-3, 1e3)
    np.testing.assert_allclose(float(b), 1e3, rtol=1e-6)


@pytest.mark.parametrize("per_agent", [True, False])
def test_per_agent_and_shared_coefficients(per_agent):
    trainer = trainer_for("dpo", "didactic/dpo-random-game", coef_per_agent=per_agent)
    algo = trainer.algo
    # One sample per agent, agent i's new policy moved by a different amount.
    old = MaskedCategorical(jnp.zeros((1, 3, 5)), jnp.ones((1, 3, 5), bool))
    moves = jnp.array([0.05, 0.22, 1.5])[:, None] * jnp.array([1.0, -1.0, 0.0, 0.0, 0.0])
    new = MaskedCategorical(moves[None], jnp.ones((1, 3, 5), bool))
    kl_term, sqrt_term = algo.measured_terms(old, new, jnp.ones((1, 3), bool))
    per = np.asarray(old.kl(new))[0]
    if per_agent:
        np.testing.assert_allclose(np.asarray(kl_term), per, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(sqrt_term), np.sqrt(per + SQRT_EPS), rtol=1e-6)
    else:
        np.testing.assert_allclose(np.asarray(kl_term), np.full(3, per.mean()), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(sqrt_term),
                                   np.full(3, np.sqrt(per + SQRT_EPS).mean()), rtol=1e-6)
    assert per[0] < 0.01 / 1.5 and 0.01 / 1.5 < per[1] < 0.015 and per[2] > 0.015
    betas = algo.adapt(algo.init_algo_state(), kl_term, sqrt_term)
    if per_agent:  # each agent's beta follows its own KL
        np.testing.assert_array_equal(np.asarray(betas["beta_kl"]), [0.5, 1.0, 2.0])
        np.testing.assert_array_equal(np.asarray(betas["beta_sqrt"]), [0.5, 1.0, 2.0])
    else:  # one pair for the team, moved by the mean over agents (0.1 > 0.015)
        np.testing.assert_array_equal(np.asarray(betas["beta_kl"]), [2.0, 2.0, 2.0])
        np.testing.assert_array_equal(np.asarray(betas["beta_sqrt"]), [2.0, 2.0, 2.0])


def test_config_defaults_and_bad_bounds():
    cfg = DPOConfig()  # the DPO code's defaults
    assert (cfg.epochs, cfg.lr, cfg.kl_target, cfg.beta_min, cfg.beta_max) == (
        15, 5e-4, 0.01, 1e-3, 1e3)
    assert (cfg.beta_kl_init, cfg.beta_sqrt_init, cfg.adapt_tolerance, cfg.adapt_factor) == (
        1.0, 1.0, 1.5, 2.0)
    assert not (cfg.central_critic or cfg.coef_per_agent or cfg.divide_by_n)
    trainer = trainer_for("dpo", "didactic/dpo-random-game")
    assert trainer.algo.cfg.lr == 5e-4 and trainer.algo.cfg.epochs == 15
    assert not trainer.algo.central_critic and trainer.algo.critic_tx.stacked  # V_i(o_i)
    state = trainer.algo.init_algo_state()
    np.testing.assert_array_equal(np.asarray(state["beta_kl"]), np.ones(3))
    np.testing.assert_array_equal(np.asarray(state["beta_sqrt"]), np.ones(3))
    with pytest.raises(ConfigError, match="beta_min"):
        trainer_for("dpo", "mpe/simple_spread", beta_min=10.0, beta_max=1.0)


# ------------------------------------------------------------------- one update
@pytest.mark.parametrize("env,settings", [
    ("didactic/dpo-random-game", {"coef_per_agent": True, "minibatches": 2}),
    ("mpe/simple_spread", {"action": "continuous", "coef_per_agent": False,
                           "share_actor": True, "central_critic": True, "divide_by_n": True}),
])
def test_one_update_measures_kl_after_the_epochs_and_adapts(env, settings):
    """The measured terms are the mean KL(old || new) over the batch after all epochs, and
    the coefficients move by the rule on them (per agent, or on the mean over agents)."""
    trainer = trainer_for("dpo", env, num_envs=4, rollout_length=32, epochs=3, **settings)
    algo = trainer.algo
    assert algo.central_critic == settings.get("central_critic", False)
    ts, batch = rollout_batch(trainer)
    new_ts, metrics = jax.jit(algo.update)(ts, batch, jax.random.PRNGKey(3))
    _, data = prepare_batch(algo, ts, batch)
    obs = data["obs"]
    old = algo.actor.distribution(ts.actor_params, obs.obs, obs.avail)
    new = algo.actor.distribution(new_ts.actor_params, obs.obs, obs.avail)
    kl = np.asarray(old.kl(new))
    alive = np.asarray(obs.alive)
    kl_agent = (kl * alive).sum(0) / alive.sum(0)
    sqrt_agent = (np.sqrt(np.maximum(kl, 0) + SQRT_EPS) * alive).sum(0) / alive.sum(0)
    assert kl_agent.min() > 0.0  # every agent moved
    np.testing.assert_allclose(float(metrics["kl"]), kl_agent.mean(), rtol=1e-4)
    np.testing.assert_allclose(float(metrics["sqrt_kl"]), sqrt_agent.mean(), rtol=1e-4)
    if not settings["coef_per_agent"]:
        kl_agent, sqrt_agent = np.full(3, kl_agent.mean()), np.full(3, sqrt_agent.mean())
    rule = dict(tolerance=1.5, factor=2.0, low=1e-3, high=1e3)
    for name, measured, target in (("beta_kl", kl_agent, 0.01), ("beta_sqrt", sqrt_agent, 0.1)):
        expected = adapt_coefficient(jnp.ones(3), jnp.asarray(measured, jnp.float32), target,
                                     **rule)
        np.testing.assert_allclose(np.asarray(new_ts.algo_state[name]), expected)
        np.testing.assert_allclose(float(metrics[name]), float(expected.mean()), rtol=1e-6)
    assert all(np.isfinite(float(v)) for v in metrics.values())


# --------------------------------------------------------------------- resume
def _checkpoint_state(run_dir):
    """The latest checkpoint's train state as a nested dict (seed axis first), and its meta."""
    from flax import serialization

    folder = run_dir / "checkpoints"
    state = serialization.msgpack_restore(
        runs.checkpoint_files(run_dir, "latest")[0].read_bytes())
    meta = json.loads((folder / "latest.json").read_text())["meta"]
    return state["train_state"], meta


def test_coefficients_survive_a_checkpoint_resume(tmp_path):
    """Resume continues from the checkpointed coefficients: after the resume each logged beta
    is the rule applied to the previous one and that update's measured term, starting from the
    checkpoint's (not from the initial 1)."""
    out = tmp_path / "run"
    common = ["num_envs=8", "rollout_length=32", "log_every=1", "progress=none", "epochs=4",
              "eval_every=0"]
    assert main(["train", "dpo", "didactic/dpo-random-game", f"out={out}", "total_steps=512",
                 *common]) == 0
    halfway, meta = _checkpoint_state(out)
    assert meta["updates"] == 2
    saved = {name: np.asarray(halfway["algo_state"][name])[0] for name in ("beta_kl",
                                                                        "beta_sqrt")}
    assert saved["beta_kl"].shape == (3,) and not np.allclose(saved["beta_kl"], 1.0)
    assert main(["resume", str(out), "total_steps=1024"]) == 0
    rows = runs.read_metrics(out)
    assert [r["env_steps"] for r in rows] == [256, 512, 768, 1024]
    rule = dict(tolerance=1.5, factor=2.0, low=1e-3, high=1e3)
    for name, term, target in (("beta_kl", "kl", 0.01), ("beta_sqrt", "sqrt_kl", 0.1)):
        beta = jnp.asarray(saved[name])  # shared coefficients: equal entries
        assert rows[1][name] == float(beta.mean())
        for row in rows[2:]:
            beta = adapt_coefficient(beta, jnp.float32(row[term]), target, **rule)
            assert row[name] == float(beta.mean()), (name, row)
        final, meta = _checkpoint_state(out)
        assert meta["updates"] == 4
        np.testing.assert_array_equal(np.asarray(final["algo_state"][name])[0],
                                      np.asarray(beta))


# ------------------------------------------------------------------- learning
# didactic/dpo-random-game: optimal 30-step return 148.26, uniform random -1.76. With the
# didactic preset (16 envs x 64 steps, lr 5e-4, 15 epochs), seeds 0-3 logged -1.0, 8.3, 36.4
# and 65.4 (seed means) over updates 1-10, 11-20, 21-30 and 31-40, every seed 58.8-71.6 over
# the last 10 (about 108 after 100 updates; IPPO at the same settings: 108).
@pytest.mark.slow
def test_dpo_learns_the_random_stochastic_game(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "dpo", "didactic/dpo-random-game", f"out={out}", "seeds=3",
                 "total_steps=40960", "log_every=10", "progress=none", "eval_every=0"]) == 0
    rows = runs.read_metrics(out)
    steps = sorted({r["env_steps"] for r in rows})
    assert steps == [10240, 20480, 30720, 40960]
    means = [np.mean([r["return_mean"] for r in rows if r["env_steps"] == s]) for s in steps]
    final = [r["return_mean"] for r in rows if r["env_steps"] == steps[-1]]
    assert min(final) >= 35.0, final  # random play: -1.76
    assert all(b > a for a, b in zip(means, means[1:])), means  # improves at every log row
