"""Value-based learners (IQL, MA2QL, I2Q) and their compiled replay buffer: buffer insertion,
wrap-around, uniform sampling and reproducibility; the ε schedule; the double DQN target and
the IQL loss against hand computations; action masks; next observations at episode ends;
MA2QL's turns (only the turn's agent changes); I2Q's target mixing; continuous I2Q (its λ
normalisation, forward model, critic target and policy gradient on hand-made data, and a
short learning run on continuous MPE); short CLI runs with a calibrated return threshold,
evaluation and exact resume; tabular IQL / I2Q on the didactic games (REFERENCE.md §4)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import rollout_batch, trainer_for
from teamrl.core import replay
from teamrl import runs
from teamrl.algos.i2q import expectile_loss
from teamrl.algos.i2q_continuous import ContinuousI2Q, model_loss
from teamrl.algos.iql import epsilon_greedy, linear_epsilon, masked_argmax, q_learning_target
from teamrl.algos.tabular.qlearning import matrix_game, train, tree_game
from teamrl.cli import main
from teamrl.envs.didactic import overgeneralisation
from teamrl.envs.spec import TeamObs
from teamrl.train.evaluate import evaluate_run


# ------------------------------------------------------------------------ replay buffer
def _items(start, count):
    """count items numbered start.. : {"x": [count, 2] float, "i": [count] int32}."""
    ids = np.arange(start, start + count)
    return {"x": jnp.asarray(np.stack([ids, -ids], 1), jnp.float32),
            "i": jnp.asarray(ids, jnp.int32)}


def test_buffer_insertion_and_wrap_around():
    buf = replay.init({"x": jnp.zeros(2), "i": jnp.int32(0)}, capacity=5)
    assert buf.capacity == 5 and int(buf.size) == 0 and buf.data["x"].shape == (5, 2)
    buf = jax.jit(replay.add)(buf, _items(0, 3))
    assert (int(buf.position), int(buf.size)) == (3, 3)
    np.testing.assert_array_equal(buf.data["i"], [0, 1, 2, 0, 0])
    buf = replay.add(buf, _items(3, 4))  # 3, 4 at the end, 5, 6 wrap to the front
    assert (int(buf.position), int(buf.size)) == (2, 5)
    np.testing.assert_array_equal(buf.data["i"], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(buf.data["x"][:, 1], [-5, -6, -2, -3, -4])
    # More items than the capacity at once: only the last 5 survive, each where the circular
    # order puts it, and the position moves on by the full count.
    buf = replay.add(buf, _items(10, 7))
    assert (int(buf.position), int(buf.size)) == (4, 5)
    np.testing.assert_array_equal(buf.data["i"], [13, 14, 15, 16, 12])  # item b at (2 + b) % 5
    assert int(replay.clear(buf).size) == 0


def test_buffer_samples_uniformly_from_filled_entries_only():
    buf = replay.add(replay.init({"i": jnp.int32(0)}, capacity=16), {"i": jnp.arange(10)})
    draws = np.asarray(replay.sample(buf, jax.random.PRNGKey(3), 20_000)["i"])
    assert draws.min() >= 0 and draws.max() <= 9  # entries 10..15 are empty
    counts = np.bincount(draws, minlength=10)
    expected = len(draws) / 10
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 33.72, (chi_square, counts)  # chi2(9) 0.9999 quantile
    # Full and wrapped: every entry again equally likely.
    buf = replay.add(buf, {"i": jnp.arange(10, 30)})
    draws = np.asarray(replay.sample(buf, jax.random.PRNGKey(4), 32_000)["i"])
    counts = np.bincount(draws - 14, minlength=16)  # entries hold items 14..29
    assert counts.shape == (16,) and counts.min() > 0
    chi_square = float(((counts - 2000.0) ** 2 / 2000.0).sum())
    assert chi_square < 44.26, (chi_square, counts)  # chi2(15) 0.9999 quantile


def test_buffer_sampling_is_reproducible_by_key():
    buf = replay.add(replay.init({"x": jnp.zeros(2), "i": jnp.int32(0)}, 50), _items(0, 40))
    a = replay.sample(buf, jax.random.PRNGKey(7), 64)
    b = jax.jit(replay.sample, static_argnums=2)(buf, jax.random.PRNGKey(7), 64)
    c = replay.sample(buf, jax.random.PRNGKey(8), 64)
    np.testing.assert_array_equal(a["i"], b["i"])
    np.testing.assert_array_equal(a["x"][:, 0], a["i"])  # items stay whole
    assert not np.array_equal(a["i"], c["i"])


# ----------------------------------------------------------------------- pieces of IQL
def test_epsilon_schedule_values():
    eps = lambda t, decay=10_000: float(linear_epsilon(t, 1.0, 0.05, decay))
    assert eps(0) == pytest.approx(1.0)
    assert eps(2_500) == pytest.approx(1.0 - 0.25 * 0.95)
    assert eps(5_000) == pytest.approx(0.525)
    assert eps(10_000) == pytest.approx(0.05)
    assert eps(1_000_000) == pytest.approx(0.05)
    assert eps(0, decay=0) == pytest.approx(0.05)


def test_update_reports_the_epsilon_of_the_schedule():
    trainer = trainer_for("iql", "didactic/climbing", num_envs=8, rollout_length=8,
                          eps_decay_steps=256, learning_starts=64, updates_per_rollout=1)
    algo = trainer.algo
    ts, batch = rollout_batch(trainer)
    update = jax.jit(algo.update)
    seen = []
    for k in range(5):
        ts, metrics = update(ts, batch, jax.random.PRNGKey(k))
        seen.append((float(metrics["epsilon"]), float(metrics["learning"])))
    # 64 env steps per update: eps at 0, 64, 128, 192, 256 steps; learning from the first.
    expected = [1.0 - 0.95 * min(64 * k / 256, 1.0) for k in range(5)]
    np.testing.assert_allclose([e for e, _ in seen], expected, rtol=1e-6)
    assert [lrn for _, lrn in seen] == [1.0] * 5
    assert int(ts.env_steps) == 320 and int(ts.grad_steps) == 5


def test_double_dqn_target_by_hand():
    next_online = jnp.array([[1.0, 5.0, 2.0], [0.0, 1.0, 3.0], [2.0, 2.0, 9.0],
                             [4.0, 0.0, 0.0]])
    next_target = jnp.array([[10.0, 20.0, 30.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0],
                             [1.0, 2.0, 3.0]])
    avail = jnp.array([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 1, 1]], bool)
    reward = jnp.array([1.0, 2.0, 3.0, 4.0])
    terminated = jnp.array([False, False, False, True])
    # Row 0: online argmax 1 -> target 20. Row 1: action 2 unavailable, online argmax over
    # {0, 1} is 1 -> 5. Row 2: nothing available -> no bootstrap. Row 3: terminated.
    double = q_learning_target(next_online, next_target, avail, reward, terminated, 0.9, True)
    np.testing.assert_allclose(double, [1 + 0.9 * 20, 2 + 0.9 * 5, 3.0, 4.0])
    plain = q_learning_target(next_online, next_target, avail, reward, terminated, 0.9, False)
    np.testing.assert_allclose(plain, [1 + 0.9 * 30, 2 + 0.9 * 5, 3.0, 4.0])


def test_iql_loss_against_a_hand_computation():
    trainer = trainer_for("iql", "didactic/climbing", gamma=0.8)
    algo = trainer.algo
    ts = algo.init(jax.random.PRNGKey(0))
    # A target network different from the online one, so double DQN matters.
    target = jax.tree.map(lambda p: p + 0.3 * jnp.sin(7.0 * p + 1.0), ts.params)
    sample = {"obs": jnp.array([[[1.0], [1.0]], [[0.5], [-1.0]], [[2.0], [0.0]]]),
              "action": jnp.array([[0, 2], [1, 1], [2, 0]], jnp.int32),
              "alive": jnp.array([[True, True], [True, False], [True, True]]),
              "reward": jnp.array([1.5, -2.0, 0.5]),
              "next_obs": jnp.array([[[0.3], [0.7]], [[-0.4], [1.2]], [[1.1], [-0.2]]]),
              "next_avail": jnp.array([[[1, 1, 1], [1, 0, 1]], [[1, 1, 1], [1, 1, 1]],
                                       [[0, 1, 1], [1, 1, 0]]], bool),
              "terminated": jnp.array([False, False, True])}
    loss, metrics = algo.team_loss(ts.params, target, sample)

    q = np.asarray(algo.q_values(ts.params, sample["obs"]))             # [B, N, A]
    q_next = np.asarray(algo.q_values(ts.params, sample["next_obs"]))
    q_next_target = np.asarray(algo.q_values(target, sample["next_obs"]))
    avail = np.asarray(sample["next_avail"])
    expected = 0.0
    for i in range(2):
        errors = []
        for b in range(3):  # every sample: a dead agent's Q is a bootstrap, so it is learned
            a_star = max((a for a in range(3) if avail[b, i, a]), key=lambda a: q_next[b, i, a])
            bootstrap = 0.0 if sample["terminated"][b] else q_next_target[b, i, a_star]
            y = float(sample["reward"][b]) + 0.8 * bootstrap
            errors.append(q[b, i, int(sample["action"][b, i])] - y)
        expected += np.mean(np.square(errors))  # per-agent mean, summed over agents
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["q_loss"]) == pytest.approx(expected / 2, rel=1e-5)


def test_actions_respect_the_available_action_mask():
    key = jax.random.PRNGKey(0)
    q = jax.random.normal(key, (512, 3, 5))
    avail = jax.random.uniform(jax.random.PRNGKey(1), (512, 3, 5)) < 0.5
    avail = avail.at[..., 4].set(True)  # at least one available action per row
    greedy = np.asarray(masked_argmax(q, avail))
    masked_q = np.where(np.asarray(avail), np.asarray(q), -np.inf)
    np.testing.assert_array_equal(greedy, masked_q.argmax(-1))
    explore = np.asarray(epsilon_greedy(q, avail, jax.random.PRNGKey(2), 1.0))
    chosen_avail = np.take_along_axis(np.asarray(avail), explore[..., None], -1)[..., 0]
    assert chosen_avail.all()
    assert len(np.unique(explore)) == 5
    np.testing.assert_array_equal(epsilon_greedy(q, avail, jax.random.PRNGKey(2), 0.0), greedy)

    # Through the algorithm: greedy evaluation and acting also use obs.avail.
    trainer = trainer_for("iql", "didactic/climbing")
    ts = trainer.algo.init(jax.random.PRNGKey(0))
    obs = TeamObs(jnp.ones((64, 2, 1)), jnp.ones((64, 1)),
                  jnp.broadcast_to(jnp.array([False, True, False]), (64, 2, 3)),
                  jnp.ones((64, 2), bool))
    assert (np.asarray(trainer.algo.policy_action(ts, obs, key, True)) == 1).all()
    assert (np.asarray(trainer.algo.policy_action(ts, obs, key, False)) == 1).all()
    action, log_prob, value = trainer.algo.act(ts, obs, key)  # eps = 1 at the start
    assert (np.asarray(action) == 1).all()
    assert log_prob.shape == value.shape == (64, 2)


def test_transitions_store_the_observation_reached_before_the_reset():
    # Tree game with 2 stages: every second step terminates and the env resets.
    trainer = trainer_for("iql", "didactic/tree", stages=2, num_envs=2, rollout_length=4)
    _, batch = rollout_batch(trainer)
    items = trainer.algo.transitions(batch)
    depth = lambda x: np.asarray(x)[..., :2]  # the depth one-hot block
    terminated = np.asarray(batch.terminated)
    np.testing.assert_array_equal(terminated[:, 0], [False, True, False, True])
    for t in range(4):
        reached = depth(batch.next_obs.obs[t])
        if terminated[t, 0]:
            assert (reached == 0).all()  # final observation past the last stage
            if t < 3:
                assert (depth(batch.obs.obs[t + 1]) == [1, 0]).all()  # the reset one
        else:
            np.testing.assert_array_equal(batch.next_obs.obs[t], batch.obs.obs[t + 1])
    assert items["obs"].shape == (8, 2, trainer.spec.obs_dim)
    np.testing.assert_array_equal(items["terminated"], terminated.reshape(-1))
    np.testing.assert_array_equal(items["next_obs"], np.asarray(batch.next_obs.obs).reshape(
        8, 2, -1))


# ------------------------------------------------------------------------------- MA2QL
def _changed_agents(before, after) -> list[int]:
    """Agents whose slice of any leaf differs between two stacked pytrees."""
    changed = set()
    for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        x, y = np.asarray(x), np.asarray(y)
        for agent in range(x.shape[0]):
            if not np.array_equal(x[agent], y[agent]):
                changed.add(agent)
    return sorted(changed)


def test_ma2ql_only_the_agent_whose_turn_it_is_changes():
    trainer = trainer_for("ma2ql", "didactic/climbing", num_envs=8, rollout_length=8,
                          learning_starts=128, turn_length=2, updates_per_rollout=3,
                          target_update_every=2)
    algo = trainer.algo
    ts, batch = rollout_batch(trainer)
    update = jax.jit(algo.update)
    turns = []
    for k in range(7):
        new, metrics = update(ts, batch, jax.random.PRNGKey(k))
        changed = _changed_agents(ts.params, new.params)
        assert _changed_agents(ts.opt_state, new.opt_state) == changed
        assert set(_changed_agents(ts.target_params, new.target_params)) <= set(changed)
        turns.append((changed, float(metrics["turn_agent"])))
        ts = new
    # Updates 1 (64 steps) waits for learning_starts; then turns of 2 updates: 0, 0, 1, 1, 0, 0.
    assert [c for c, _ in turns] == [[], [0], [0], [1], [1], [0], [0]]
    assert [a for _, a in turns[1:]] == [0, 0, 1, 1, 0, 0]
    assert int(ts.algo_state["learn_updates"]) == 6


def test_ma2ql_turn_start_syncs_the_target_and_can_clear_the_buffer():
    trainer = trainer_for("ma2ql", "didactic/climbing", num_envs=8, rollout_length=8,
                          learning_starts=0, turn_length=1, updates_per_rollout=2,
                          target_update_every=1000, clear_buffer_on_turn=True)
    algo = trainer.algo
    ts, batch = rollout_batch(trainer)
    update = jax.jit(algo.update)
    ts, _ = update(ts, batch, jax.random.PRNGKey(0))  # agent 0's turn
    ts, _ = update(ts, batch, jax.random.PRNGKey(1))  # agent 1's turn
    assert int(ts.buffer.size) == 64  # cleared at the turn start, then this rollout
    before = ts
    ts, _ = update(ts, batch, jax.random.PRNGKey(2))  # agent 0 again: target synced first
    for online, tgt in zip(jax.tree.leaves(before.params), jax.tree.leaves(ts.target_params)):
        np.testing.assert_array_equal(np.asarray(online)[0], np.asarray(tgt)[0])


# --------------------------------------------------------------------------------- I2Q
def test_expectile_loss_weights():
    diff = jnp.array([2.0, -2.0, 0.0])
    np.testing.assert_allclose(expectile_loss(diff, 0.7), [0.7 * 4, 0.3 * 4, 0.0], rtol=1e-6)


def test_i2q_with_lambda_zero_has_the_iql_q_loss():
    i2q = trainer_for("i2q", "didactic/tree", stages=2, num_envs=4, rollout_length=4,
                      lamb=0.0)
    iql = trainer_for("iql", "didactic/tree", stages=2, num_envs=4, rollout_length=4)
    ts, batch = rollout_batch(i2q)
    sample = i2q.algo.transitions(batch)
    _, m_i2q = i2q.algo.team_loss(ts.params, ts.target_params, sample)
    iql_params = {"q": ts.params["q"]}
    _, m_iql = iql.algo.team_loss(iql_params, iql_params, sample)
    assert float(m_i2q["q_loss"]) == pytest.approx(float(m_iql["q_loss"]), rel=1e-6)
    # lamb = 1: the Q target is r + gamma * V_target(o').
    full = trainer_for("i2q", "didactic/tree", stages=2, num_envs=4, rollout_length=4,
                       lamb=1.0, gamma=0.9)
    _, m_full = full.algo.team_loss(ts.params, ts.target_params, sample)
    q_mod, v_mod = (full.algo.networks()[n][0] for n in ("q", "v"))
    q = np.asarray(q_mod.apply(ts.params["q"], sample["obs"]))
    v_next = np.asarray(v_mod.apply(ts.target_params["v"], sample["next_obs"]))[..., 0]
    not_done = 1.0 - np.asarray(sample["terminated"], np.float32)[:, None]
    y = np.asarray(sample["reward"])[:, None] + 0.9 * not_done * v_next
    q_taken = np.take_along_axis(q, np.asarray(sample["action"])[..., None], -1)[..., 0]
    assert float(m_full["q_loss"]) == pytest.approx(np.mean((q_taken - y) ** 2), rel=1e-5)


# ---------------------------------------------------------------------- continuous I2Q
def test_i2q_on_continuous_actions_builds_the_forward_model_learner():
    trainer = trainer_for("i2q", "didactic/product")
    algo = trainer.algo
    assert isinstance(algo, ContinuousI2Q)
    assert not isinstance(trainer_for("i2q", "didactic/climbing").algo, ContinuousI2Q)
    ts = algo.init(jax.random.PRNGKey(0))
    assert set(ts.params) == {"actor", "q", "qss", "model"}
    obs = TeamObs(jnp.zeros((8, 2, 1)), jnp.zeros((8, 1)), jnp.ones((8, 2, 1), bool),
                  jnp.ones((8, 2), bool))
    action, log_prob, _ = algo.act(ts, obs, jax.random.PRNGKey(1))
    assert action.shape == (8, 2, 1) and log_prob.shape == (8, 2)
    assert (np.abs(np.asarray(action)) <= 1.0).all()
    det = algo.policy_action(ts, obs, jax.random.PRNGKey(1), True)
    np.testing.assert_allclose(det, algo.to_env(algo.unit_actions(ts.params, obs.obs)))
    # Env range <-> [-1, 1] units, on MPE's [0, 1] actions.
    mpe = trainer_for("i2q", "mpe/simple_spread", action="continuous").algo
    env_action = jnp.array([[0.0, 0.25, 0.5, 0.75, 1.0]] * 3)
    np.testing.assert_allclose(mpe.to_unit(env_action), [[-1.0, -0.5, 0.0, 0.5, 1.0]] * 3)
    np.testing.assert_allclose(mpe.to_env(mpe.to_unit(env_action)), env_action, atol=1e-6)


def test_continuous_i2q_lambda_normalises_the_qss_term():
    """λ = α / mean|Q_ss(o, f(o, a))| over alive samples: the model's loss is
    −λ·Q_ss + mean_d (f − o')², and rescaling Q_ss leaves its Q term (and gradient) alone."""
    pred = jnp.array([[0.5, 1.0, 9.0], [0.0, -1.0, 9.0], [2.0, 2.0, 9.0]])
    nxt = jnp.array([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    q = jnp.array([4.0, -2.0, 100.0])
    alive = jnp.array([True, True, False])
    mask = jnp.array([1.0, 1.0, 0.0])  # the third entry is padding
    loss, lam, error = model_loss(pred, nxt, q, alive, mask, alpha=0.3)
    assert float(lam) == pytest.approx(0.3 / 3.0)  # mean |4|, |-2| over the alive rows
    errors = np.array([(0.25 + 0.0) / 2, (1.0 + 4.0) / 2])
    assert float(error) == pytest.approx(errors.mean())
    assert float(loss) == pytest.approx(np.mean(-0.1 * np.array([4.0, -2.0]) + errors))
    grad = lambda scale: jax.grad(lambda qq: model_loss(pred, nxt, qq, alive, mask, 0.3)[0])(
        scale * q)
    np.testing.assert_allclose(grad(1.0), [-0.05, -0.05, 0.0], rtol=1e-6)
    np.testing.assert_allclose(grad(10.0), grad(1.0) / 10.0, rtol=1e-6)  # λ·Q scale-free
    # Through the learner: the reported λ is α over the mean |Q_ss(o, f(o, a))| of its nets.
    trainer = trainer_for("i2q", "mpe/simple_spread", action="continuous", alpha=0.05)
    algo = trainer.algo
    ts, batch = rollout_batch(trainer)
    sample = jax.tree.map(lambda x: x[:64], algo.transitions(batch))
    _, metrics = algo.team_loss(ts.params, ts.target_params, sample)
    nets = algo.networks()
    pred = nets["model"][0].apply(ts.params["model"], jnp.concatenate(
        [sample["obs"], sample["action"]], -1))
    q_pred = nets["qss"][0].apply(ts.params["qss"], jnp.concatenate([sample["obs"], pred], -1))
    by_hand = 0.05 / np.abs(np.asarray(q_pred)[..., 0]).mean(0)  # per agent
    assert float(metrics["lambda"]) == pytest.approx(by_hand.mean(), rel=1e-4)


def _hand_made_buffer(algo, key, size=2048, slope=0.5, sign=-1.0):
    """Transitions of a deterministic 1-D system o' = o + slope·a (both agents alike),
    episodes of one step (terminated) with reward sign·o'."""
    k_obs, k_act = jax.random.split(key)
    obs = jax.random.uniform(k_obs, (size, 1, 1), minval=-1.0, maxval=1.0)
    act = jax.random.uniform(k_act, (size, 1, 1), minval=-1.0, maxval=1.0)
    nxt = obs + slope * act
    items = {"obs": jnp.repeat(obs, 2, 1), "action": jnp.repeat(act, 2, 1),
             "alive": jnp.ones((size, 2), bool), "reward": sign * nxt[:, 0, 0],
             "next_obs": jnp.repeat(nxt, 2, 1), "terminated": jnp.ones((size,), bool)}
    return replay.add(replay.init(algo.example_transition(), size), items)


def test_continuous_i2q_forward_model_fits_a_linear_transition():
    trainer = trainer_for("i2q", "didactic/product", alpha=0.0, lr=3e-3, batch_size=128,
                          hidden_sizes=[32, 32])
    algo = trainer.algo
    ts = algo.init(jax.random.PRNGKey(0))
    ts = ts.replace(buffer=_hand_made_buffer(algo, jax.random.PRNGKey(1)))
    steps = jax.jit(lambda ts, keys: jax.lax.scan(algo.gradient_step, ts, keys))
    ts, metrics = steps(ts, jax.random.split(jax.random.PRNGKey(2), 1500))
    error = np.asarray(metrics["model_error"])
    assert error[-100:].mean() < 0.02 * error[:10].mean(), (error[:10], error[-100:])
    o = jnp.linspace(-0.8, 0.8, 9)
    a = jnp.linspace(0.8, -0.8, 9)
    x = jnp.broadcast_to(jnp.stack([o, a], -1)[:, None, :], (9, 2, 2))
    pred = np.asarray(algo.networks()["model"][0].apply(ts.params["model"], x))[..., 0]
    np.testing.assert_allclose(pred, np.broadcast_to((o + 0.5 * a)[:, None], (9, 2)),
                               atol=0.05)


def test_continuous_i2q_policy_moves_to_the_higher_value_predicted_next_state():
    """o' = o + a/2 and reward −o' (terminal): Q_ss(o, o') learns −o', the model f(o, a)
    learns o + a/2, the critic's target max(Q_ss(o, f(o, a)), Q_ss(o, o')) is −o − a/2,
    and the actor's gradient drives π(o) to the action of the best predicted next
    state, −1 (it starts near 0)."""
    trainer = trainer_for("i2q", "didactic/product", alpha=0.01, lr=2e-3, batch_size=128,
                          hidden_sizes=[32, 32], target_update_every=1, tau=0.05)
    algo = trainer.algo
    ts = algo.init(jax.random.PRNGKey(0))
    ts = ts.replace(buffer=_hand_made_buffer(algo, jax.random.PRNGKey(1), sign=-1.0))
    o = jnp.broadcast_to(jnp.linspace(-0.8, 0.8, 9)[:, None, None], (9, 2, 1))
    start = np.asarray(algo.unit_actions(ts.params, o))
    assert np.abs(start).max() < 0.2
    steps = jax.jit(lambda ts, keys: jax.lax.scan(algo.gradient_step, ts, keys))
    ts, metrics = steps(ts, jax.random.split(jax.random.PRNGKey(2), 1500))
    end = np.asarray(algo.unit_actions(ts.params, o))
    assert (end < -0.8).all(), end[..., 0]
    nets = algo.networks()
    qss = nets["qss"][0].apply(ts.params["qss"], jnp.concatenate([o, o + 0.3], -1))
    np.testing.assert_allclose(np.asarray(qss)[..., 0], -np.asarray(o + 0.3)[..., 0],
                               atol=0.1)
    assert float(metrics["actor_loss"][-1]) < float(metrics["actor_loss"][0]) - 0.2


def test_continuous_i2q_learns_continuous_simple_spread(tmp_path):
    """Continuous MPE simple_spread, 30k env steps at a sample-efficient setting (4 envs,
    8 gradient steps per 100 env steps, Polyak targets as the authors): the greedy policy's
    return (team reward = mean over agents, 25 steps) improves on the initial one (about
    −24) by more than 2. Calibration: 2 seeds reached −19.8 and −19.5 at 30k steps."""
    out = _train(tmp_path, "i2q", "mpe/simple_spread", "action=continuous",
                 "total_steps=30000", "num_envs=4", "rollout_length=25", "log_every=50",
                 "eval_every=0", "lr=1e-3", "target_update_every=1", "tau=0.005",
                 "eps_decay_steps=10000", "learning_starts=1000")
    trainer = trainer_for("i2q", "mpe/simple_spread", action="continuous", num_envs=4)
    initial = float(trainer.evaluate(trainer.init(), 64)["eval_return_det"][0])
    result = evaluate_run(out, episodes=64, deterministic=True, checkpoint="latest")
    final = result["seeds"][0]["return_mean"]
    assert final > initial + 2.0, (initial, final)
    for r in runs.read_metrics(out):
        assert all(np.isfinite(r[k]) for k in ("q_loss", "qss_loss", "model_loss",
                                               "actor_loss", "lambda", "model_error"))


# ------------------------------------------------------------------------ configuration
def test_incompatible_settings_are_one_line_errors(tmp_path, capfd):
    cases = [(["iql", "didactic/product"],
              "algorithm 'iql' needs discrete actions but 'didactic/product' has continuous"),
             (["ma2ql", "didactic/product"], "algorithm 'ma2ql' needs discrete actions"),
             (["ma2ql", "didactic/climbing", "share_q=true"],
              "ma2ql updates one agent's Q-network per turn"),
             (["iql", "didactic/climbing", "batch_size=512", "buffer_size=100"],
              "batch_size=512 must be <= buffer_size=100")]
    for k, (args, needle) in enumerate(cases):
        out = tmp_path / f"r{k}"
        assert main(["train", *args, f"out={out}"]) == 2
        err = capfd.readouterr().err.strip()
        assert err.startswith("teamrl: error: ") and "\n" not in err and needle in err, err
        assert not out.exists()


def test_share_q_appends_agent_ids():
    trainer = trainer_for("iql", "didactic/climbing", share_q=True)
    assert trainer.spec.agent_id and trainer.spec.obs_dim == 1 + 2
    ts = trainer.algo.init(jax.random.PRNGKey(0))
    kernel = ts.params["q"]["params"]["Dense_0"]["kernel"]
    assert kernel.shape == (3, 64)  # one network, no agent axis


# --------------------------------------------------------------------- training runs
def _train(tmp_path, algo, env_id, *settings, name="run"):
    out = tmp_path / f"{algo}_{name}"
    assert main(["train", algo, env_id, f"out={out}", "progress=none", *settings]) == 0
    return out


def test_iql_learns_the_penalty_game(tmp_path):
    """Penalty game (k = -100): independent learners settle on a coordinated equilibrium,
    in practice the safe (1, 1) worth 2 (every seed we tried); uniform play is worth -19.8
    and a learner that does not learn plays a random fixed pair (>= 2 for 1 pair in 3)."""
    out = _train(tmp_path, "iql", "didactic/penalty", "total_steps=20000", "seeds=4",
                 "eval_every=0")
    result = evaluate_run(out, episodes=8, deterministic=True, checkpoint="latest")
    greedy = np.array([s["return_mean"] for s in result["seeds"]])
    assert (greedy >= 2.0).all(), greedy
    rows = runs.read_metrics(out)
    last = [r for r in rows if r["env_steps"] == rows[-1]["env_steps"]]
    assert all(r["return_mean"] >= 1.5 for r in last), [r["return_mean"] for r in last]
    # The learned value of the equilibrium action is the equilibrium's payoff.
    assert all(1.0 <= r["q_taken"] <= 3.0 for r in last), [r["q_taken"] for r in last]
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("q_loss", "grad_norm", "epsilon", "td_abs"))


@pytest.mark.parametrize("algo,extra", [("ma2ql", ["turn_length=5"]), ("i2q", [])])
def test_ma2ql_and_i2q_train_and_evaluate_from_the_cli(tmp_path, algo, extra):
    out = _train(tmp_path, algo, "didactic/climbing", "total_steps=4096", "seeds=2",
                 "log_every=32", "eval_every=0", "eps_decay_steps=1024", *extra)
    rows = runs.read_metrics(out)
    assert sorted(r["env_steps"] for r in rows) == [2048, 2048, 4096, 4096]
    columns = {"ma2ql": ("q_loss", "turn_agent"), "i2q": ("q_loss", "qss_loss", "v_loss")}
    for r in rows:
        for col in columns[algo] + ("return_mean", "epsilon", "grad_norm"):
            assert np.isfinite(r[col]), (col, r)
    # Uniform play on climbing is worth -3.4; any pure equilibrium at eps = 0.05 over 4.
    assert all(r["return_mean"] > 0.0 for r in rows if r["env_steps"] == 4096), rows
    assert main(["eval", str(out), "episodes=4", "deterministic=true"]) == 0
    result = json.loads((out / "eval_best_det.json").read_text())
    assert len(result["seeds"]) == 2 and np.isfinite(result["return_mean"])


def test_iql_resume_is_exact(tmp_path):
    """The replay buffer, counters, targets and optimiser live in the train state, so a run
    checkpointed after 4 updates and continued from the file equals the uninterrupted run
    bit for bit (the CLI's resume is this save/load around the same compiled chunk)."""
    trainer = trainer_for("iql", "didactic/tree", stages=2, num_envs=8, rollout_length=8,
                          learning_starts=100, target_update_every=3)
    chunk = trainer.compile_chunk(trainer.init(), 4)
    half, _ = chunk(trainer.init())
    whole, _ = chunk(half)
    runs.save_checkpoint(tmp_path, "latest", half, {"updates": 4})
    loaded, meta = runs.load_checkpoint(tmp_path, "latest", trainer.init())
    resumed, _ = chunk(loaded)
    assert meta["updates"] == 4 and int(whole.train_state.buffer.size[0]) == 512
    assert int(whole.train_state.grad_steps[0]) == 7 * 4  # learning from update 2 on
    for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------ tabular
def test_tabular_i2q_reaches_the_tree_optimum():
    game = tree_game(stages=3, game=0)
    result = train("i2q", game, jax.random.split(jax.random.PRNGKey(0), 4), episodes=20_000)
    np.testing.assert_allclose(result.greedy_return, game.optimum, rtol=1e-5)


def test_tabular_iql_overgeneralises_and_i2q_does_not():
    """Relative overgeneralisation [[8,-12,-12],[-12,6,0],[-12,0,6]] with ε = 0.5: against an
    exploring partner action 0 averages worst, so IQL's greedy joint action settles on a
    6-equilibrium; I2Q values each action by its best observed outcome and plays (0, 0)."""
    game = matrix_game(overgeneralisation().payoff_np)
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    iql = train("iql", game, keys, episodes=5_000)
    i2q = train("i2q", game, keys, episodes=5_000)
    np.testing.assert_array_equal(iql.greedy_return[:4], 6.0)  # the fixed seeds
    assert (iql.greedy_return == 6.0).sum() >= 6 and not (iql.greedy_return == 8.0).any()
    iql_joint = {tuple(a[0]) for a, r in zip(iql.greedy_actions, iql.greedy_return) if r == 6}
    assert iql_joint <= {(1, 1), (2, 2)}
    np.testing.assert_array_equal(i2q.greedy_return, 8.0)
    assert (i2q.greedy_actions[:, 0] == 0).all()
