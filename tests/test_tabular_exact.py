"""Exact tabular checks of the multi-agent advantage machinery and HATRPO's monotonic improvement
(``teamrl.algos.tabular.exact``), all in float64 with a known model."""

import itertools

import numpy as np
import pytest

from teamrl.algos.tabular import (
    MarkovGame,
    evaluate,
    hatrpo_iteration,
    joint_policy,
    kl_constrained_argmax,
    kl_divergence,
    marginal_q,
    matrix_game,
    multi_agent_advantage,
    optimal_values,
    random_game,
    random_policies,
    select_axes,
    sequential_advantage,
    simultaneous_iteration,
    state_visitation,
    trajectory,
)


def _advantage_sum(Q, policies, order):
    """Σ_m A^{i_m}(s, a^{i_{1:m−1}}, a^{i_m}) as a joint array [S, A_1..A_n] (library path)."""
    total = np.zeros_like(Q)
    for m, agent in enumerate(order):
        total = total + multi_agent_advantage(Q, policies, [agent], given=list(order[:m]))
    return total


def test_decomposition_lemma_single_state_every_permutation_against_brute_force():
    rng = np.random.default_rng(0)
    game = matrix_game(rng.standard_normal((2, 3, 4)), gamma=0.7)
    policies = random_policies(rng, game, scale=1.5)
    ev = evaluate(game, policies)
    Q = ev.Q[0]  # [2, 3, 4]
    actions = [range(a) for a in game.n_actions]

    def brute_q(subset, a_subset):
        # Q^{subset}(a^{subset}) by enumerating every joint action of the other agents.
        total = 0.0
        for joint in itertools.product(*actions):
            if all(joint[i] == a_subset[k] for k, i in enumerate(subset)):
                weight = np.prod([policies[j][0, joint[j]] for j in range(3) if j not in subset])
                total += weight * Q[joint]
        return total

    for order in itertools.permutations(range(3)):
        library = _advantage_sum(ev.Q, policies, order)[0]
        for joint in itertools.product(*actions):
            brute = sum(brute_q(order[:m + 1], [joint[i] for i in order[:m + 1]])
                        - brute_q(order[:m], [joint[i] for i in order[:m]]) for m in range(3))
            assert abs(brute - (Q[joint] - ev.V[0])) < 1e-10
            assert abs(library[joint] - (Q[joint] - ev.V[0])) < 1e-10
            assert abs(library[joint] - brute) < 1e-10
        # the library's marginals are the brute-force ones
        for m in range(1, 3):
            marg = select_axes(marginal_q(ev.Q, policies, order[:m]), order[:m])[0]
            for sub in itertools.product(*[actions[i] for i in order[:m]]):
                assert abs(marg[sub] - brute_q(order[:m], sub)) < 1e-10


def test_decomposition_lemma_multi_state_every_permutation():
    rng = np.random.default_rng(1)
    game = random_game(rng, n_states=5, n_agents=3, n_actions=(3, 2, 4), gamma=0.95)
    policies = random_policies(rng, game, scale=1.0)
    ev = evaluate(game, policies)
    joint_advantage = ev.Q - ev.V[:, None, None, None]
    for order in itertools.permutations(range(3)):
        np.testing.assert_allclose(_advantage_sum(ev.Q, policies, order), joint_advantage,
                                   rtol=0, atol=1e-10)
        # each agent's advantage averages to 0 under its own (old) policy
        for m, agent in enumerate(order):
            adv = sequential_advantage(ev.Q, policies, policies, list(order[:m]), agent)
            np.testing.assert_allclose(np.sum(policies[agent] * adv, -1), 0.0, atol=1e-10)
    assert marginal_q(ev.Q, policies, ()).shape == (5, 1, 1, 1)
    np.testing.assert_allclose(marginal_q(ev.Q, policies, ()).ravel(), ev.V, atol=1e-12)


def test_policy_evaluation_satisfies_bellman_and_visitation_equations():
    rng = np.random.default_rng(2)
    game = random_game(rng, n_states=6, n_agents=3, n_actions=3, gamma=0.9)
    policies = random_policies(rng, game)
    ev = evaluate(game, policies)
    pi = joint_policy(policies)
    np.testing.assert_allclose(pi.sum((1, 2, 3)), 1.0, atol=1e-12)
    axes = (1, 2, 3)
    V_from_Q = np.sum(pi * ev.Q, axes)
    residual = ev.Q - game.reward - game.gamma * np.einsum("sabct,t->sabc", game.transition,
                                                           V_from_Q)
    assert np.abs(residual).max() < 1e-10
    assert np.abs(V_from_Q - ev.V).max() < 1e-10
    # ρ = d0 + γ ρ P_π, Σ ρ = 1/(1−γ), J = d0·V = Σ_s ρ(s) r_π(s)
    p_pi = np.einsum("sabc,sabct->st", pi, game.transition)
    np.testing.assert_allclose(ev.rho, game.initial + game.gamma * ev.rho @ p_pi, atol=1e-12)
    assert abs(ev.rho.sum() - 1 / (1 - game.gamma)) < 1e-10
    assert abs(ev.J - ev.rho @ np.sum(pi * game.reward, axes)) < 1e-10
    np.testing.assert_allclose(state_visitation(game, policies), ev.rho, atol=1e-12)


def test_single_state_closed_form():
    payoff = np.array([[11.0, -30.0, 0.0], [-30.0, 7.0, 6.0], [0.0, 0.0, 5.0]])  # climbing
    game = matrix_game(payoff, gamma=0.8)
    policies = [np.array([[0.5, 0.3, 0.2]]), np.array([[0.1, 0.6, 0.3]])]
    ev = evaluate(game, policies)
    expected_reward = policies[0][0] @ payoff @ policies[1][0]
    assert abs(ev.V[0] - expected_reward / 0.2) < 1e-10
    np.testing.assert_allclose(ev.Q[0], payoff + 0.8 * ev.V[0], atol=1e-10)
    assert abs(ev.rho[0] - 5.0) < 1e-12 and abs(ev.J - ev.V[0]) < 1e-12
    # Q^1(a1) = Σ_a2 π2(a2) Q(a1, a2)
    q1 = select_axes(marginal_q(ev.Q, policies, [0]), [0])[0]
    np.testing.assert_allclose(q1, payoff @ policies[1][0] + 0.8 * ev.V[0], atol=1e-10)


def test_performance_difference_lemma():
    rng = np.random.default_rng(3)
    game = random_game(rng, n_states=4, n_agents=2, n_actions=3, gamma=0.9)
    old, new = random_policies(rng, game), random_policies(rng, game, scale=2.0)
    ev_old, ev_new = evaluate(game, old), evaluate(game, new)
    advantage = ev_old.Q - ev_old.V[:, None, None]
    gain = ev_new.rho @ np.sum(ev_new.pi * advantage, (1, 2))
    assert abs((ev_new.J - ev_old.J) - gain) < 1e-10


def test_kl_solver_is_feasible_active_and_optimal():
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(4), size=6)
    advantage = rng.standard_normal((6, 4))
    for delta in (0.01, 0.2, 1.0):
        q, multiplier = kl_constrained_argmax(p, advantage, delta, return_multiplier=True)
        kl = kl_divergence(p, q)
        assert (kl <= delta).all() and (kl > delta * (1 - 1e-8)).all()  # active at the optimum
        value = np.sum(q * advantage, -1)
        # no random feasible policy does better in any state
        candidates = rng.dirichlet(np.full(4, 0.7), size=(20000, 6))
        feasible = kl_divergence(p, candidates) <= delta
        scores = np.where(feasible, np.sum(candidates * advantage, -1), -np.inf)
        assert (scores.max(0) <= value + 1e-12).all()
        # λ = dF/dδ (finite difference of the optimum)
        eps = 1e-6 * delta
        value_up = np.sum(kl_constrained_argmax(p, advantage, delta + eps) * advantage, -1)
        np.testing.assert_allclose((value_up - value) / eps, multiplier, rtol=1e-4)
    # constant advantage: nothing to gain, the policy stays
    np.testing.assert_allclose(kl_constrained_argmax(p, np.ones((6, 4)), 0.5), p, atol=1e-12)


def test_kl_solver_matches_two_action_closed_form():
    # Two actions, Ā = (1, 0): the optimum puts q(0) = x > p(0) with KL(p ‖ (x, 1−x)) = δ.
    p0, delta = 0.3, 0.15
    q = kl_constrained_argmax(np.array([[p0, 1 - p0]]), np.array([[1.0, 0.0]]), delta)
    kl = lambda x: p0 * np.log(p0 / x) + (1 - p0) * np.log((1 - p0) / (1 - x))
    lo, hi = p0, 1.0 - 1e-15
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kl(mid) <= delta else (lo, mid)
    assert abs(q[0, 0] - lo) < 1e-9


def _random_setups(count, seed):
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        n_agents, n_actions, n_states = rng.integers(2, 4), rng.integers(2, 4), rng.integers(2, 5)
        game = random_game(rng, n_states, n_agents, n_actions, gamma=0.9)
        yield game, random_policies(rng, game, scale=1.5), rng


def test_hatrpo_never_decreases_J_and_respects_the_trust_region():
    for game, policies, rng in _random_setups(20, seed=5):
        for delta in (0.05, 1.0):  # the per-state argument holds for any δ, large included
            current = policies
            ev = evaluate(game, current)
            for _ in range(4):
                new, info = hatrpo_iteration(game, current, delta, rng=rng, evaluation=ev)
                ev_new = evaluate(game, new)
                assert ev_new.J >= ev.J - 1e-10
                assert (ev_new.V >= ev.V - 1e-10).all()  # in fact state by state
                assert (info.kl_max <= delta + 1e-12).all() and (info.surrogate >= -1e-12).all()
                for old_pi, new_pi in zip(current, new):
                    assert (kl_divergence(old_pi, new_pi) <= delta + 1e-12).all()
                    np.testing.assert_allclose(new_pi.sum(-1), 1.0, atol=1e-12)
                current, ev = new, ev_new


def test_penalised_hatrpo_satisfies_the_papers_bound():
    # J(π_new) ≥ J(π_old) + Σ_m [L_m − C·D_KL^max,m] ≥ J(π_old), with C = 4γ max|A| / (1−γ)^2.
    for game, policies, rng in _random_setups(4, seed=6):
        ev = evaluate(game, policies)
        for trust_region, delta in (("penalty", None), ("kl_max", 0.3)):
            new, info = hatrpo_iteration(game, policies, delta, rng=rng,
                                         trust_region=trust_region, evaluation=ev)
            if trust_region == "kl_max":  # the lemma holds for any update; C is the same
                _, ref = hatrpo_iteration(game, policies, rng=rng, trust_region="penalty",
                                          evaluation=ev)
                info.penalty = ref.penalty
            bound = np.sum(info.surrogate - info.penalty * info.kl_max)
            gain = evaluate(game, new).J - ev.J
            assert gain >= bound - 1e-10
            if trust_region == "penalty":
                assert bound >= -1e-12 and (info.kl_max > 0).all()


def test_simultaneous_updates_can_decrease_J_where_hatrpo_cannot():
    # Two agents who must match actions, leaning opposite ways: each moves towards the other's
    # old choice, so simultaneous steps swap the mismatch (J falls); sequential steps coordinate.
    game = matrix_game([[10.0, 0.0], [0.0, 10.0]], gamma=0.9)
    policies = [np.array([[0.6, 0.4]]), np.array([[0.4, 0.6]])]
    J_sim, _ = trajectory(game, policies, 3, "simultaneous", 0.3)
    J_seq, _ = trajectory(game, policies, 3, "hatrpo", 0.3, rng=np.random.default_rng(0))
    assert J_sim[1] < J_sim[0] - 5.0
    assert (np.diff(J_seq) > 0).all() and J_seq[-1] > 99.0
    new, info = simultaneous_iteration(game, policies, 0.3)
    assert (info.surrogate > 0).all() and np.allclose(info.kl_max, 0.3)  # each agent "improved"


def test_optimal_values_is_the_greedy_deterministic_profile_and_a_ceiling():
    rng = np.random.default_rng(7)
    game = random_game(rng, n_states=4, n_agents=2, n_actions=3, gamma=0.9)
    V_star, J_star = optimal_values(game)
    Q_star = game.reward + game.gamma * game.transition @ V_star
    best = Q_star.reshape(4, -1).argmax(-1)
    greedy = [np.eye(3)[best // 3], np.eye(3)[best % 3]]  # deterministic per-agent policies
    ev = evaluate(game, greedy)
    np.testing.assert_allclose(ev.V, V_star, atol=1e-9)
    for _ in range(5):
        assert evaluate(game, random_policies(rng, game, scale=3.0)).J <= J_star + 1e-9
    J, _ = trajectory(game, random_policies(rng, game), 30, "hatrpo", 1.0, rng=rng)
    assert J[-1] <= J_star + 1e-9


def test_game_validation():
    with pytest.raises(ValueError, match="transition shape"):
        MarkovGame(np.zeros((2, 2)), np.ones((2, 2, 3)) / 3, 0.9, np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="gamma"):
        matrix_game(np.zeros((2, 2)), gamma=1.0)
    with pytest.raises(ValueError, match="delta"):
        hatrpo_iteration(matrix_game(np.zeros((2, 2))), [np.full((1, 2), 0.5)] * 2, None)
