"""MDPO (model-based decentralised policy optimisation, MDPO.md): the sliding window's shift,
gradient isolation of losses 1 and 2 from the latent functions, the reduction to IPPO/DPO
with no imagination and only real data, log-probs stored in imagination equal to the old
policy's, config refusals, and (slow) learning on the DPO authors' random game."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import rollout_batch, trainer_for
from teamrl.algos.mdpo import shift_window
from teamrl import runs
from teamrl.cli import main
from teamrl.config import ConfigError
from teamrl.envs.didactic import DPORandomGame

ENV = "didactic/dpo-random-game"
# Tiny sizes: the tests check invariants, not learning, and compile the update once.
SMALL = dict(num_envs=4, rollout_length=16, total_steps=640, dynamics_hidden=[16],
             reward_hidden=[16], psi_hidden=[16], pred_hidden=[16], hidden_sizes=[16],
             model_batch=16, pred_batch=16, model_epochs=1, model_epochs_first=2,
             pred_epochs=1, latent_dim=2, branch_length=3, epochs=2, minibatches=2)


def _tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def setup():
    trainer = trainer_for("mdpo", ENV, **SMALL)
    ts0, batch0 = rollout_batch(trainer, seed=0)
    _, batch1 = rollout_batch(trainer, seed=5)
    update = jax.jit(trainer.algo.update)
    ts1, _ = update(ts0, batch0, jax.random.PRNGKey(0))
    ts2, metrics = update(ts1, batch1, jax.random.PRNGKey(1))
    return trainer.algo, (ts0, ts1, ts2), (batch0, batch1), metrics


# --------------------------------------------------------------------- the window
def test_shift_moves_every_slot_down_one_and_keeps_the_newest():
    x = jnp.arange(4 * 3 * 2.0).reshape(4, 3, 2)
    shifted = shift_window(x)
    for j in range(3):
        np.testing.assert_array_equal(shifted[j], x[j + 1])
    np.testing.assert_array_equal(shifted[3], x[3])


def test_update_writes_the_newest_batch_and_shifts_window_and_latent_functions(setup):
    algo, (ts0, ts1, ts2), (batch0, batch1), _ = setup
    l = algo.cfg.window
    w1, w2 = ts1.algo_state.window, ts2.algo_state.window
    flat1 = batch1.obs.obs.reshape((-1,) + batch1.obs.obs.shape[2:])
    flat0 = batch0.obs.obs.reshape(flat1.shape)
    # First iteration: D^1 copied into every slot (warm-up), then shifted: still D^1 everywhere.
    for j in range(l):
        np.testing.assert_array_equal(w1["obs"][j], flat0)
    # Second iteration: batch 1 written into slot l, then slot j <- slot j+1; slot l kept.
    for j in range(l - 2):
        np.testing.assert_array_equal(w2["obs"][j], w1["obs"][j + 1])
    np.testing.assert_array_equal(w2["obs"][l - 2], flat1)
    np.testing.assert_array_equal(w2["obs"][l - 1], flat1)
    psi1, psi2 = ts1.algo_state.psi, ts2.algo_state.psi
    slot = lambda tree, j: jax.tree.map(lambda p: p[j], tree)
    for j in range(l - 2):  # frozen snapshots move down one slot
        assert _tree_equal(slot(psi2, j), slot(psi1, j + 1))
    # ψ_l was trained this iteration (warm-started from its previous value) and kept after
    # the shift, so slots l-1 and l hold it and it differs from the previous iteration's.
    assert _tree_equal(slot(psi2, l - 2), slot(psi2, l - 1))
    assert not _tree_equal(slot(psi2, l - 1), slot(psi1, l - 1))
    # After the first iteration every slot holds the ψ_l trained on D^1 (warm-up copy).
    for j in range(l - 1):
        assert _tree_equal(slot(psi1, j), slot(psi1, l - 1))
    assert int(ts2.algo_state.iteration) == 2


def test_update_metrics_are_finite(setup):
    *_, metrics = setup
    for name in ("model_nll", "reward_mse", "pred_nll", "latent_drift", "forecast_error",
                 "imagined_reward", "actor_loss", "value_loss"):
        assert np.isfinite(float(metrics[name])), name
    assert float(metrics["latent_drift"]) > 0  # ψ_l moved away from its frozen snapshot


# -------------------------------------------------------------- gradient isolation
def _one_agent_window(algo, ms, agent=0, m=8):
    data = jax.tree.map(lambda x: x[:, :m], ms.window)
    n = algo.spec.n_agents
    data["reward"] = jnp.broadcast_to(data["reward"][..., None], data["alive"].shape)
    data["terminated"] = jnp.broadcast_to(data["terminated"][..., None], data["alive"].shape)
    data = jax.tree.map(lambda x: x[:, :, agent] if x.ndim >= 3 and x.shape[2] == n else x,
                        data)
    stats = jax.tree.map(lambda x: x[agent], algo.norm_stats(ms))
    return data, stats


def test_loss1_gives_no_gradient_to_the_frozen_latent_functions(setup):
    algo, (_, ts1, _), _, _ = setup
    ms = ts1.algo_state
    agent = jax.tree.map(lambda p: p[:, 0], ms.psi)  # agent 0's ψ_1..ψ_l
    trainable = {"model": jax.tree.map(lambda p: p[0], ms.model),
                 "psi": jax.tree.map(lambda p: p[-1], agent)}
    frozen = jax.tree.map(lambda p: p[:-1], agent)
    data, stats = _one_agent_window(algo, ms)
    weights = jnp.ones(algo.cfg.window)
    loss = lambda t, f: algo.model_loss(t, f, data, jax.random.PRNGKey(3), weights, stats,
                                        algo.raw_mask[0])[0]
    g_trainable, g_frozen = jax.grad(loss, argnums=(0, 1))(trainable, frozen)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_frozen))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(g_trainable["psi"]))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(g_trainable["model"]))


def test_loss2_gives_no_gradient_to_any_latent_function(setup):
    algo, (_, ts1, _), _, _ = setup
    ms = ts1.algo_state
    psi = jax.tree.map(lambda p: p[:, 0], ms.psi)
    pred = jax.tree.map(lambda p: p[0], ms.pred)
    obs = ms.window["obs"][-1, :8, 0]
    stats = jax.tree.map(lambda x: x[0], algo.norm_stats(ms))
    loss = lambda f, p: algo.pred_loss(f, p, obs, jax.random.PRNGKey(4), stats)[0]
    g_pred, g_psi = jax.grad(loss, argnums=(0, 1))(pred, psi)
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_psi))
    assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(g_pred))


# ------------------------------------------------------------------- imagination
def test_imagined_log_probs_are_the_old_policys(setup):
    algo, (_, ts1, _), (_, batch1), _ = setup
    imagined = jax.jit(algo.imagine)(ts1, batch1, jax.random.PRNGKey(7))
    k, s, n = imagined.log_prob.shape
    assert (k, s, n) == (algo.cfg.branch_length, 64, algo.spec.n_agents)
    dist = algo.actor.distribution(ts1.actor_params, imagined.obs.obs, imagined.obs.avail)
    np.testing.assert_allclose(dist.log_prob(imagined.action), imagined.log_prob, atol=1e-5)
    # One-hot next states on the game's 30 features; the branch end is a truncation.
    np.testing.assert_allclose(imagined.obs.obs.sum(-1), 1.0)
    np.testing.assert_array_equal(imagined.truncated[-1], ~imagined.terminated[-1])
    assert not bool(imagined.truncated[:-1].any())
    # A branch the done head ended stays ended: dead, no reward.
    ended = jnp.cumsum(imagined.terminated, axis=0) > imagined.terminated
    assert not bool((imagined.obs.alive & ended).any())
    assert bool((jnp.where(ended, imagined.reward, 0.0) == 0).all())
    assert imagined.reward.shape == (k, s, n)


def test_the_other_options_run_and_stay_finite():
    # Gaussian dynamics, real segments mixed in, a real-data warm-up iteration, the ablation,
    # mean inputs of f and DPO inside: two compiled updates (warm-up, then imagination).
    overrides = dict(SMALL, dynamics="gaussian", real_ratio=0.5, warmup_real_iters=1,
                     prediction=False, pred_input="mean", inner="dpo", branch_length=4)
    trainer = trainer_for("mdpo", ENV, **overrides)
    algo = trainer.algo
    ts, batch = rollout_batch(trainer)
    imagined = jax.jit(algo.policy_batch)(ts, batch, jax.random.PRNGKey(0))
    assert imagined.reward.shape == (4, 64 + 8, algo.spec.n_agents)  # 64 starts + 8 segments
    update = jax.jit(algo.update)
    for i in range(2):
        ts, metrics = update(ts, batch, jax.random.PRNGKey(i))
        assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(ts))


# -------------------------------------------------------------------- reduction
@pytest.mark.parametrize("inner", ["ippo", "dpo"])
def test_no_imagination_and_only_real_data_is_the_base_algorithm(inner):
    common = dict(num_envs=4, rollout_length=16, total_steps=640, hidden_sizes=[16],
                  minibatches=2, lr=1e-3, critic_lr=1e-3)
    epochs = {"ippo": 5, "dpo": 15}[inner]
    mdpo = trainer_for("mdpo", ENV, inner=inner, branch_length=0, real_ratio=1.0,
                       dynamics_hidden=[8], reward_hidden=[8], psi_hidden=[8],
                       pred_hidden=[8], model_batch=16, pred_batch=16, model_epochs_first=1,
                       model_epochs=1, pred_epochs=1, **common).algo
    base = trainer_for(inner, ENV, epochs=epochs, **common)
    ts, batch = rollout_batch(base)
    ts_mdpo = ts.replace(algo_state=mdpo.init_model_state(jax.random.PRNGKey(1),
                                                          ts.algo_state))
    key = jax.random.PRNGKey(2)
    want, _ = jax.jit(base.algo.update)(ts, batch, key)
    got, _ = jax.jit(mdpo.update)(ts_mdpo, batch, key)
    for name in ("actor_params", "critic_params", "value_norm"):
        for x, y in zip(jax.tree.leaves(getattr(got, name)), jax.tree.leaves(getattr(want, name))):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(got.algo_state.inner), jax.tree.leaves(want.algo_state)):
        np.testing.assert_allclose(x, y)  # DPO's adapted coefficients


# ----------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, message", [
    (dict(window=1), "window=1"),
    (dict(branch_length=0), "real_ratio=1"),
    (dict(share_actor=True), "decentralised"),
    (dict(real_ratio=0.5, branch_length=7), "divide rollout_length"),
])
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        trainer_for("mdpo", ENV, **overrides)


# ---------------------------------------------------------------------- learning
# Normalised return (0 = uniform play, 1 = optimum) both seeds must reach at 40,960 steps. One
# seed of the preset reached 0.84 there (124.7), IPPO's preset 0.63 (93.8): a wide margin.
LEARNING_THRESHOLD = 0.3


@pytest.mark.slow
def test_mdpo_learns_the_random_stochastic_game(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "mdpo", ENV, f"out={out}", "seeds=2", "total_steps=40960",
                 "log_every=10", "progress=none", "eval_every=0"]) == 0
    rows = runs.read_metrics(out)
    last = max(r["env_steps"] for r in rows)
    final = [r["return_mean"] for r in rows if r["env_steps"] == last]
    oracle = DPORandomGame().oracle()  # optimum 148.3, uniform play -1.76
    normalised = [(f - oracle["random"]) / (oracle["optimum"] - oracle["random"]) for f in final]
    assert min(normalised) >= LEARNING_THRESHOLD, final
