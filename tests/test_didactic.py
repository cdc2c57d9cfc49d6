"""Tests of the compiled didactic games and their oracles (REFERENCE.md §4)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teamrl.envs.didactic import (
    DIDACTIC_GAMES,
    DPORandomGame,
    MatrixGame,
    ProductGame,
    SplitGame,
    TreeGame,
    expected_clipped_product,
)

MATRICES = {
    "climbing": [[11, -30, 0], [-30, 7, 6], [0, 0, 5]],
    "penalty": [[10, 0, -100], [0, 2, 0], [-100, 0, 10]],
    "overgeneralisation": [[8, -12, -12], [-12, 6, 0], [-12, 0, 6]],
}
N_MC = 4096


def rollout(env, key, policy):
    """Plays one episode of ``env.max_steps`` steps with ``policy(key, t) -> actions dict``.

    Returns (return, done, (obs, rewards, dones) stacked over time)."""

    def body(carry, t):
        state, key, ret, done = carry
        key, k_act, k_step = jax.random.split(key, 3)
        obs, state, rew, dones, _ = env.step_env(k_step, state, policy(k_act, t))
        ret = ret + jnp.where(done, 0.0, rew["agent_0"])
        return (state, key, ret, done | dones["__all__"]), (obs, rew, dones)

    key, k_reset = jax.random.split(key)
    _, state = env.reset(k_reset)
    init = (state, key, jnp.float32(0.0), jnp.array(False))
    (_, _, ret, done), traj = jax.lax.scan(body, init, jnp.arange(env.max_steps))
    return ret, done, traj


def fixed_policy(env, seq):
    """seq: (max_steps, n_agents) int joint actions."""
    seq = jnp.asarray(seq, jnp.int32)
    return lambda key, t: {a: seq[t, i] for i, a in enumerate(env.agents)}


def uniform_policy(env):
    def policy(key, t):
        keys = jax.random.split(key, env.num_agents)
        return {a: env.action_spaces[a].sample(k) for a, k in zip(env.agents, keys)}

    return policy


def gaussian_policy(env):
    means, std = ProductGame.init_means, ProductGame.init_std

    def policy(key, t):
        keys = jax.random.split(key, env.num_agents)
        return {a: m + std * jax.random.normal(k, (1,)) for a, m, k in zip(env.agents, means, keys)}

    return policy


def play(env, seq):
    ret, done, _ = jax.jit(lambda k: rollout(env, k, fixed_policy(env, seq)))(jax.random.PRNGKey(0))
    assert bool(done)
    return float(ret)


# --- oracles ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MATRICES))
def test_matrix_oracles(name):
    payoff = np.array(MATRICES[name], float)
    oracle = DIDACTIC_GAMES[name]().oracle()
    assert oracle["optimum"] == {"climbing": 11, "penalty": 10, "overgeneralisation": 8}[name]
    assert oracle["random"] == pytest.approx(payoff.mean())


def test_penalty_option_and_validation():
    game = DIDACTIC_GAMES["penalty"](k=-5.0)
    assert game.oracle()["optimum"] == 10.0
    assert game.oracle()["random"] == pytest.approx((10 + 2 + 10 - 10) / 9)
    with pytest.raises(ValueError):
        DIDACTIC_GAMES["penalty"](k=1.0)


@pytest.mark.parametrize("n", [2, 4, 6, 22])
def test_split_oracle_and_shared_policy(n):
    oracle = SplitGame(n_agents=n).oracle()
    assert oracle["optimum"] == 1.0
    assert oracle["random"] == pytest.approx(2.0 / 2**n)
    # identical id-free policies: max_p 2 p^{n/2} (1-p)^{n/2} = 2/2^n, reached at p = 1/2
    assert oracle["shared_policy_max"] == pytest.approx(2.0 / 2**n, rel=1e-9)
    assert oracle["shared_policy_max"] <= 2.0 / 2**n * (1 + 1e-12)
    assert oracle["shared_policy_argmax"] == pytest.approx(0.5)


@pytest.mark.parametrize("n", [0, 3, 5])
def test_split_validation(n):
    with pytest.raises(ValueError):
        SplitGame(n_agents=n)


def test_product_oracle_and_closed_form():
    oracle = ProductGame().oracle()
    assert oracle["optimum"] == 1.0
    assert oracle["random"] == pytest.approx(expected_clipped_product(-0.25, 0.25, 1.0, 1.0))
    rng = np.random.default_rng(0)
    for mu0, mu1, s0, s1 in [(-0.25, 0.25, 1.0, 1.0), (0.5, 0.8, 0.3, 2.0), (1.5, -0.1, 0.7, 0.1)]:
        n = 1_000_000
        x = np.clip(rng.normal(mu0, s0, n), -1, 1) * np.clip(rng.normal(mu1, s1, n), -1, 1)
        se = x.std() / np.sqrt(n)
        assert abs(x.mean() - expected_clipped_product(mu0, mu1, s0, s1)) < 5 * se


def test_dpo_oracle():
    oracle = DIDACTIC_GAMES["dpo-random-game"]().oracle()
    assert oracle["optimum"] == pytest.approx(148.2578, abs=1e-3)
    assert oracle["random"] == pytest.approx(-1.7590, abs=1e-3)


def brute_force_tree(env):
    """(max, mean) of the return over all joint-action sequences that matter (stages - 1)."""
    returns = []
    for seq in itertools.product(range(9), repeat=env.stages - 1):
        node, ret = 0, env.rewards_np[0]
        for a in seq:
            node = 9 * node + a + 1
            ret += env.rewards_np[node]
        returns.append(ret)
    return max(returns), float(np.mean(returns))


@pytest.mark.parametrize("game", [0, 1, 7])
def test_tree_oracle_brute_force(game):
    env = TreeGame(stages=3, game=game)
    best, mean = brute_force_tree(env)
    assert env.oracle()["optimum"] == pytest.approx(best)
    assert env.oracle()["random"] == pytest.approx(mean)
    assert env.optimal_return() == env.oracle()["optimum"]
    big = TreeGame(stages=5, game=game).oracle()
    assert big["optimum"] > big["random"]


def test_tree_rewards_from_seed():
    env = TreeGame(stages=4, game=3)
    assert env.rewards_np.shape == ((9**4 - 1) // 8,)
    np.testing.assert_array_equal(env.rewards_np, TreeGame(stages=4, game=3).rewards_np)
    assert not np.array_equal(env.rewards_np, TreeGame(stages=4, game=4).rewards_np)
    assert env.rewards_np.min() >= -1 and env.rewards_np.max() <= 1


# --- compiled play ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MATRICES))
def test_matrix_payoffs_under_jit(name):
    env = DIDACTIC_GAMES[name]()
    assert isinstance(env, MatrixGame) and env.max_steps == 1
    cells = jnp.array(list(itertools.product(range(3), repeat=2)), jnp.int32)[:, None, :]
    f = jax.jit(jax.vmap(lambda seq: rollout(env, jax.random.PRNGKey(0), fixed_policy(env, seq))))
    ret, done, _ = f(cells)
    np.testing.assert_array_equal(np.asarray(ret), np.array(MATRICES[name], np.float32).ravel())
    assert bool(done.all())


def test_split_rewards_under_jit():
    env = SplitGame(n_agents=4)
    joint = np.array(list(itertools.product((0, 1), repeat=4)), np.int32)
    f = jax.jit(jax.vmap(lambda seq: rollout(env, jax.random.PRNGKey(0), fixed_policy(env, seq))))
    ret, _, _ = f(jnp.asarray(joint)[:, None, :])
    expected = [float(tuple(j) in {(0, 0, 1, 1), (1, 1, 0, 0)}) for j in joint]
    np.testing.assert_array_equal(np.asarray(ret), expected)


def test_product_rewards_clip():
    env = ProductGame()
    step = jax.jit(env.step_env)
    _, state = env.reset(jax.random.PRNGKey(0))
    for a0, a1, r in [(0.5, -0.5, -0.25), (2.0, -0.5, -0.5), (-3.0, -7.0, 1.0), (1.0, 1.0, 1.0)]:
        acts = {"agent_0": jnp.array([a0], jnp.float32), "agent_1": jnp.array([a1], jnp.float32)}
        _, _, rew, dones, _ = step(jax.random.PRNGKey(1), state, acts)
        assert float(rew["agent_0"]) == pytest.approx(r) and bool(dones["__all__"])
    assert env.action_spaces["agent_0"].shape == (1,)


def test_tree_path_returns():
    env = TreeGame(stages=5, game=2)
    rng = np.random.default_rng(1)
    for _ in range(3):
        seq = rng.integers(0, 3, size=(env.stages, 2))
        node, expected = 0, env.rewards_np[0]
        for a0, a1 in seq[:-1]:
            node = 9 * node + 3 * a0 + a1 + 1
            expected += env.rewards_np[node]
        assert play(env, seq) == pytest.approx(expected, abs=1e-5)
        seq[-1] = (seq[-1] + 1) % 3  # the last action does not matter (I2Q authors' convention)
        assert play(env, seq) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("game", [0, 5])
def test_tree_optimal_actions_reach_optimum(game):
    env = TreeGame(stages=5, game=game)
    seq = env.optimal_actions()
    assert len(seq) == env.stages
    assert play(env, seq) == pytest.approx(env.oracle()["optimum"], abs=1e-5)


def test_tree_observation_identifies_node():
    env = TreeGame(stages=3)
    seqs = np.array([list(s) + [0, 0] for s in itertools.product(range(3), repeat=4)])
    seqs = seqs.reshape(-1, env.stages, 2)
    f = jax.jit(jax.vmap(lambda seq: rollout(env, jax.random.PRNGKey(0), fixed_policy(env, seq))))
    obs = np.asarray(f(jnp.asarray(seqs))[2][0]["agent_0"])  # (81, stages, obs_dim)
    seen = {}
    for seq, o in zip(seqs, obs):
        node = 0
        for t, (a0, a1) in enumerate(seq[:-1]):
            node = 9 * node + 3 * a0 + a1 + 1  # after step t the agents stand on `node`
            assert seen.setdefault(o[t].tobytes(), node) == node
    assert len(seen) == 9 + 81


@pytest.mark.parametrize("name", list(DIDACTIC_GAMES))
def test_monte_carlo_matches_random_oracle(name):
    env = DIDACTIC_GAMES[name]()
    policy = gaussian_policy(env) if name == "product" else uniform_policy(env)
    keys = jax.random.split(jax.random.PRNGKey(42), N_MC)
    ret, done, _ = jax.jit(jax.vmap(lambda k: rollout(env, k, policy)))(keys)
    ret = np.asarray(ret, np.float64)
    assert bool(done.all())
    se = ret.std() / np.sqrt(N_MC)
    assert abs(ret.mean() - env.oracle()["random"]) < 4.5 * se + 1e-6


# --- API -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(DIDACTIC_GAMES))
def test_api_shapes_dtypes_and_determinism(name):
    env = DIDACTIC_GAMES[name]()
    assert env.agents == [f"agent_{i}" for i in range(env.num_agents)]
    obs, state = env.reset(jax.random.PRNGKey(0))
    for a in env.agents:
        assert obs[a].dtype == jnp.float32 and obs[a].shape == env.observation_spaces[a].shape
        avail = env.get_avail_actions(state)[a]
        assert avail.dtype == jnp.bool_ and bool(avail.all())
    ws = env.world_state(state)
    assert ws.dtype == jnp.float32 and ws.ndim == 1
    np.testing.assert_array_equal(ws, obs["agent_0"])

    policy = gaussian_policy(env) if name == "product" else uniform_policy(env)
    run = jax.jit(lambda k: rollout(env, k, policy))
    ret, done, (obs_t, rew_t, dones_t) = run(jax.random.PRNGKey(3))
    T = env.max_steps
    assert set(dones_t) == set(env.agents) | {"__all__"}
    for a in env.agents:
        assert obs_t[a].shape == (T, env.obs_dim) and obs_t[a].dtype == jnp.float32
        assert rew_t[a].shape == (T,) and rew_t[a].dtype == jnp.float32
        assert dones_t[a].dtype == jnp.bool_
        np.testing.assert_array_equal(rew_t[a], rew_t["agent_0"])  # shared team reward
    # natural termination exactly at the last step
    np.testing.assert_array_equal(dones_t["__all__"], np.arange(1, T + 1) == T)
    # same key, same trajectory
    again = run(jax.random.PRNGKey(3))
    for x, y in zip(jax.tree.leaves((ret, obs_t, rew_t)), jax.tree.leaves((again[0], again[2]))):
        np.testing.assert_array_equal(x, y)


def test_dpo_stochastic_transitions_and_one_hot():
    env = DPORandomGame()
    run = jax.jit(jax.vmap(lambda k: rollout(env, k, fixed_policy(env, np.zeros((30, 3))))))
    _, _, (obs, _, _) = run(jax.random.split(jax.random.PRNGKey(0), 64))
    obs = np.asarray(obs["agent_0"])  # (64, 30, 30)
    np.testing.assert_array_equal(obs.sum(-1), 1.0)
    assert len({o.tobytes() for o in obs[:, 0]}) > 1  # next state depends on the key
    # empirical first transition matches trans_mat[0, 0, 0, 0]
    keys = jax.random.split(jax.random.PRNGKey(1), N_MC)
    _, state = env.reset(keys[0])
    acts = {a: jnp.int32(0) for a in env.agents}
    nxt = jax.jit(jax.vmap(lambda k: env.step_env(k, state, acts)[1].node))(keys)
    freq = np.bincount(np.asarray(nxt), minlength=30) / N_MC
    p = env.trans_np[0, 0, 0, 0]
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / N_MC) + 1e-9)


def test_auto_reset_step():
    env = DIDACTIC_GAMES["climbing"]()
    _, state = env.reset(jax.random.PRNGKey(0))
    acts = {a: jnp.int32(0) for a in env.agents}
    obs, state, rew, dones, _ = env.step(jax.random.PRNGKey(1), state, acts)
    assert float(rew["agent_0"]) == 11.0 and bool(dones["__all__"])
    assert int(state.step) == 0 and not bool(state.done)


def _softmax_gradient_ascent(payoff, logits, lr, entropy_coef, iterations):
    """Exact expected dynamics of two independent softmax actors on a shared-payoff matrix
    game: each ascends J = p1ᵀ R p2 + entropy_coef·(H(p1) + H(p2)) in its logits (the
    direction of MAPPO/IPPO's policy-gradient update in expectation; a baseline or a critic
    does not change it). logits [K, 2, A] for K starts; returns the final [K, 2, A] policies."""
    payoff = np.asarray(payoff, float)
    for _ in range(iterations):
        policy = np.exp(logits - logits.max(-1, keepdims=True))
        policy /= policy.sum(-1, keepdims=True)
        p, q = policy[:, 0], policy[:, 1]
        action_values = np.stack([q @ payoff.T, p @ payoff], axis=1)  # [K, 2, A]
        score = action_values - entropy_coef * np.log(policy)
        logits = logits + lr * policy * (score - (policy * score).sum(-1, keepdims=True))
    policy = np.exp(logits - logits.max(-1, keepdims=True))
    return policy / policy.sum(-1, keepdims=True)


@pytest.mark.parametrize("lr, entropy_coef", [(0.1, 0.0), (1.0, 0.0), (1.0, 0.01), (0.3, 0.1)])
def test_climbing_policy_gradient_from_uniform_reaches_7_not_11(lr, entropy_coef):
    """Why the MAPPO climbing test asserts a coordinated equilibrium (>= 7) and not the
    optimum 11: from (near-)uniform policies, which is what the actor's orthogonal init with
    output gain 0.01 gives, the exact expected policy-gradient dynamics go to the (1, 1)
    equilibrium worth 7 for every step size and entropy bonus we try, while the optimum
    (0, 0) is itself a stable point of the same dynamics (a start near it stays there)."""
    payoff = MATRICES["climbing"]
    rng = np.random.default_rng(0)
    near_uniform = 0.01 * rng.standard_normal((64, 2, 3))
    policy = _softmax_gradient_ascent(payoff, near_uniform, lr, entropy_coef, 20_000)
    values = np.einsum("ka,ab,kb->k", policy[:, 0], np.asarray(payoff, float), policy[:, 1])
    np.testing.assert_allclose(values, 7.0, atol=0.1)
    assert (policy.argmax(-1) == 1).all()

    near_optimum = np.tile(np.array([3.0, 0.0, 0.0]), (4, 2, 1))
    policy = _softmax_gradient_ascent(payoff, near_optimum, lr, entropy_coef, 20_000)
    assert (policy.argmax(-1) == 0).all()
    values = np.einsum("ka,ab,kb->k", policy[:, 0], np.asarray(payoff, float), policy[:, 1])
    assert (values > 10.0).all(), values
