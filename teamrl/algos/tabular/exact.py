r"""Exact computations for small cooperative Markov games with a known model.

An analysis tool, not the compiled training path: everything is float64 numpy, vectorised over
states and joint actions with broadcasting and ``einsum`` (the only Python loops run over agents
and over bisection steps).

Notation and shapes (n agents, S states, agent i has A_i actions):

* ``game.reward``      r[s, a_1, ..., a_n]            [S, A_1, ..., A_n]
* ``game.transition``  P[s, a_1, ..., a_n, s']        [S, A_1, ..., A_n, S]
* ``game.initial``     d0[s]                           [S]
* a policy profile is a list of n arrays, ``policies[i][s, a_i] = π^i(a_i | s)``  [S, A_i]
* "keepdims" arrays over agent subsets have shape [S, d_1, ..., d_n] with d_i = A_i for the
  agents in the subset and d_i = 1 for the others, so they broadcast against joint arrays.

Definitions (Kuba et al. 2022, "Trust Region Policy Optimisation in Multi-Agent RL"):

* Q^{S}(s, a^S) = E_{a^{-S} ~ π^{-S}(.|s)}[Q(s, a^S, a^{-S})]: the return when the agents in S
  take a^S in s and every agent follows π afterwards (``marginal_q``); Q^{∅} = V.
* A^{i_{1:m}}(s, a^{j_{1:k}}, a^{i_{1:m}}) = Q^{j_{1:k}, i_{1:m}} − Q^{j_{1:k}}
  (``multi_agent_advantage``). Decomposition lemma: for every permutation i_{1:n},
  A(s, a) = Q(s, a) − V(s) = Σ_m A^{i_m}(s, a^{i_{1:m−1}}, a^{i_m}).
* ρ_π(s) = Σ_t γ^t Pr(s_t = s | d0, π), the unnormalised discounted visitation (Σ_s ρ = 1/(1−γ)),
  so J(π) = d0·V = Σ_s ρ(s) Σ_a π(a|s) r(s, a).

Exact HATRPO iteration (``hatrpo_iteration``): draw a permutation i_{1:n}; for m = 1..n agent
i_m maximises the surrogate

    L_m(π^{i_m}) = Σ_s ρ_{π_old}(s) Σ_{a^{i_m}} π^{i_m}(a^{i_m}|s) Ā_m(s, a^{i_m}),
    Ā_m(s, a^{i_m})
      = E_{a^{i_{1:m−1}} ~ π_new^{i_{1:m−1}}}[A^{i_m}_{π_old}(s, a^{i_{1:m−1}}, a^{i_m})]

(``sequential_advantage``) inside a trust region, the earlier agents already at their new
policies. Two trust regions are implemented:

``trust_region="kl_max"`` (default): max_s KL(π_old^{i_m}(.|s) ‖ π^{i_m}(.|s)) ≤ δ.
    Why the monotonic-improvement theorem applies for *every* δ: L_m is a ρ-weighted sum over
    states and the max-KL constraint is one constraint per state, so the problem separates into
    one problem per state. In each state the old policy is feasible and scores exactly 0
    (Σ_a π_old^{i_m} A^{i_m} = Q^{i_{1:m−1}} − Q^{i_{1:m−1}} = 0), so the per-state optimum
    scores ≥ 0: E_{a^{i_{1:m}} ~ π_new}[A^{i_m}(s, a^{i_{1:m−1}}, a^{i_m})] ≥ 0 for every s, m.
    Summing over m and using the decomposition lemma, E_{a ~ π_new(.|s)}[A_{π_old}(s, a)] ≥ 0 in
    every state, and the performance-difference lemma
    J(π_new) − J(π_old) = Σ_s ρ_{π_new}(s) E_{a ~ π_new(.|s)}[A_{π_old}(s, a)] gives
    J(π_new) ≥ J(π_old) (indeed V_new ≥ V_old state by state). The paper's bound
    J(π_new) ≥ J(π_old) + Σ_m [L_m − C·D^max_KL,m] also holds, but with a large δ its right-hand
    side can be negative, so the per-state argument is what guarantees improvement here.

``trust_region="penalty"``: the paper's penalised objective L_m − C·max_s KL(π_old ‖ π), with
    C = 4γ max_{s,a}|A_{π_old}(s, a)| / (1−γ)^2 (``penalty_coefficient``). Its lemma
    J(π_new) ≥ J(π_old) + Σ_m [L_m − C·D^max_KL,m] and "the old policy scores 0" give the theorem
    directly. C is very conservative (γ = 0.9 gives C = 360·max|A|), so the steps are tiny.

Solving the per-state problem (``kl_constrained_argmax``): maximise Σ_a q(a) Ā(a) subject to
KL(p ‖ q) = Σ_a p(a) log(p(a)/q(a)) ≤ δ, Σ_a q(a) = 1. The KKT conditions give
Ā(a) + λ p(a)/q(a) − μ = 0, i.e.

    q(a) = λ p(a) / (μ − Ā(a)),   μ > max_a Ā(a),   λ = 1 / Σ_a p(a) / (μ − Ā(a)),

a one-parameter family in μ (λ is the constraint's multiplier); KL(p ‖ q_μ) falls from its
limit at μ ↓ max Ā to 0 as μ → ∞, so μ is found by bisection on log(μ − max Ā), keeping the
feasible end. (The exponentiated family q ∝ p·exp(Ā/η) solves the *reverse* constraint
KL(q ‖ p) ≤ δ, not this one.) Every member of the family reweights p by a weight increasing in Ā,
so its score E_q[Ā] ≥ E_p[Ā] = 0 even where bisection is inexact: monotonicity does not rest on
the solver's tolerance.

The penalised problem (``kl_penalised_argmax``) is max_{t ≥ 0} [Σ_s ρ(s) F_s(t) − C t] with F_s(t)
the per-state constrained optimum at δ = t: concave in t with derivative Σ_s ρ(s) λ_s(t) − C,
decreasing in t, so t is found by an outer multisection on log t around the inner solver.

Simultaneous independent variant (``simultaneous_iteration``): every agent solves the same
trust-region problem with its own advantage A^i_{π_old}(s, a^i) = Q^i(s, a^i) − V(s) (the others
at their old policies) and all updates are applied at once. Each agent still scores ≥ 0 in every
state, but E_{a ~ π_new}[A(s, a)] = Σ_i E[A^i] + (interaction terms between the agents' changes),
and the interaction terms can be negative, so J can decrease.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

_AGENT_LETTERS = string.ascii_lowercase  # einsum subscripts for agents; "S"/"T" = state/next

# Bisection range for log((μ − max Ā) / spread(Ā)) and for log t: wide enough that the ends
# are (numerically) the deterministic limit and the old policy.
_LOG_RANGE = 40.0
_INNER_STEPS = 64
_OUTER_ROUNDS = 9


@dataclass(frozen=True)
class MarkovGame:
    """A cooperative Markov game with a known model (shared reward).

    Attributes:
        reward:     [S, A_1, ..., A_n] r(s, a).
        transition: [S, A_1, ..., A_n, S] P(s' | s, a); sums to 1 over the last axis.
        gamma:      discount in [0, 1).
        initial:    [S] initial state distribution d0.
    """

    reward: np.ndarray
    transition: np.ndarray
    gamma: float
    initial: np.ndarray

    def __post_init__(self):
        reward = np.asarray(self.reward, np.float64)
        transition = np.asarray(self.transition, np.float64)
        initial = np.asarray(self.initial, np.float64)
        object.__setattr__(self, "reward", reward)
        object.__setattr__(self, "transition", transition)
        object.__setattr__(self, "initial", initial)
        n_states = reward.shape[0]
        if reward.ndim < 2:
            raise ValueError(f"reward must be [S, A_1, ..., A_n], got shape {reward.shape}")
        if transition.shape != reward.shape + (n_states,):
            raise ValueError(f"transition shape {transition.shape} != reward shape + (S,) = "
                             f"{reward.shape + (n_states,)}")
        if initial.shape != (n_states,):
            raise ValueError(f"initial shape {initial.shape} != ({n_states},)")
        if not np.allclose(transition.sum(-1), 1.0) or (transition < 0).any():
            raise ValueError("transition rows must be probability distributions")
        if not np.isclose(initial.sum(), 1.0) or (initial < 0).any():
            raise ValueError("initial must be a probability distribution")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1), got {self.gamma}")

    @property
    def n_states(self) -> int:
        return self.reward.shape[0]

    @property
    def n_agents(self) -> int:
        return self.reward.ndim - 1

    @property
    def n_actions(self) -> tuple[int, ...]:
        return self.reward.shape[1:]


@dataclass(frozen=True)
class Evaluation:
    """Exact evaluation of a policy profile.

    Attributes:
        V:   [S] state values.
        Q:   [S, A_1, ..., A_n] joint action values.
        rho: [S] unnormalised discounted visitation ρ(s) = Σ_t γ^t Pr(s_t = s); Σ ρ = 1/(1−γ).
        J:   scalar d0·V.
        pi:  [S, A_1, ..., A_n] joint policy Π_i π^i(a_i | s).
    """

    V: np.ndarray
    Q: np.ndarray
    rho: np.ndarray
    J: float
    pi: np.ndarray


@dataclass
class IterationInfo:
    """What one iteration did, per agent in update order.

    Attributes:
        order:     [n] the agents in the order they were updated (all at once for simultaneous).
        surrogate: [n] L of each agent's update, Σ_s ρ_old(s) Σ_a π_new(a|s) Ā(s, a) (≥ 0).
        kl_max:    [n] max_s KL(π_old^i(.|s) ‖ π_new^i(.|s)).
        penalty:   C used by the penalised trust region (nan for kl_max).
    """

    order: np.ndarray
    surrogate: np.ndarray = field(default_factory=lambda: np.zeros(0))
    kl_max: np.ndarray = field(default_factory=lambda: np.zeros(0))
    penalty: float = float("nan")


# ---------------------------------------------------------------------------------------------
# Games and policies


def random_game(rng: np.random.Generator, n_states: int, n_agents: int,
                n_actions: int | Sequence[int], gamma: float = 0.9, *,
                reward_scale: float = 1.0, concentration: float = 1.0) -> MarkovGame:
    """A random cooperative Markov game.

    Rewards are i.i.d. N(0, reward_scale^2) per (s, a); each P(.|s, a) and d0 are drawn from a
    symmetric Dirichlet(concentration) (small concentration = nearly deterministic transitions).

    Args:
        n_actions: an int (every agent) or one int per agent.
    Returns:
        a ``MarkovGame`` with reward [S, A_1..A_n], transition [S, A_1..A_n, S], initial [S].
    """
    actions = ((int(n_actions),) * n_agents if np.isscalar(n_actions)
               else tuple(int(a) for a in n_actions))
    if len(actions) != n_agents:
        raise ValueError(f"{len(actions)} action counts for {n_agents} agents")
    shape = (n_states,) + actions
    reward = reward_scale * rng.standard_normal(shape)
    transition = rng.dirichlet(np.full(n_states, concentration), size=shape)
    initial = rng.dirichlet(np.ones(n_states))
    return MarkovGame(reward, transition, gamma, initial)


def matrix_game(payoff, gamma: float = 0.9) -> MarkovGame:
    """A repeated matrix game: one state that loops on itself, reward payoff[a_1, ..., a_n].

    Then Q(a) = r(a) + γ V and V = Σ_a π(a) r(a) / (1 − γ).
    """
    payoff = np.asarray(payoff, np.float64)
    reward = payoff[None]
    transition = np.ones(reward.shape + (1,))
    return MarkovGame(reward, transition, gamma, np.ones(1))


def random_policies(rng: np.random.Generator, game: MarkovGame,
                    scale: float = 1.0) -> list[np.ndarray]:
    """Softmax policies with N(0, scale^2) logits (scale 0 gives uniform); list of [S, A_i]."""
    policies = []
    for actions in game.n_actions:
        logits = scale * rng.standard_normal((game.n_states, actions))
        logits -= logits.max(-1, keepdims=True)
        policy = np.exp(logits)
        policies.append(policy / policy.sum(-1, keepdims=True))
    return policies


def joint_policy(policies: Sequence[np.ndarray]) -> np.ndarray:
    """Π_i π^i(a_i | s): list of [S, A_i] -> [S, A_1, ..., A_n]."""
    letters = _AGENT_LETTERS[:len(policies)]
    return np.einsum(",".join("S" + c for c in letters) + "->S" + letters, *policies)


# ---------------------------------------------------------------------------------------------
# Policy evaluation and multi-agent advantages


def _policy_matrices(game: MarkovGame, pi: np.ndarray):
    """r_π [S] and P_π [S, S] of a joint policy pi [S, A_1..A_n]."""
    letters = _AGENT_LETTERS[:game.n_agents]
    r_pi = np.einsum(f"S{letters},S{letters}->S", pi, game.reward)
    p_pi = np.einsum(f"S{letters},S{letters}T->ST", pi, game.transition)
    return r_pi, p_pi


def evaluate(game: MarkovGame, policies: Sequence[np.ndarray]) -> Evaluation:
    """Exact V, Q, ρ and J of a policy profile by linear solves (no sampling).

    V = (I − γ P_π)^{-1} r_π,  Q(s, a) = r(s, a) + γ Σ_{s'} P(s'|s, a) V(s'),
    ρ = (I − γ P_π)^{-T} d0,   J = d0·V.
    """
    pi = joint_policy(policies)
    r_pi, p_pi = _policy_matrices(game, pi)
    system = np.eye(game.n_states) - game.gamma * p_pi
    V = np.linalg.solve(system, r_pi)
    Q = game.reward + game.gamma * game.transition @ V
    rho = np.linalg.solve(system.T, game.initial)
    return Evaluation(V=V, Q=Q, rho=rho, J=float(game.initial @ V), pi=pi)


def state_visitation(game: MarkovGame, policies: Sequence[np.ndarray]) -> np.ndarray:
    """ρ_π(s) = Σ_t γ^t Pr(s_t = s | s_0 ~ d0, π), shape [S] (unnormalised: Σ = 1/(1−γ))."""
    _, p_pi = _policy_matrices(game, joint_policy(policies))
    return np.linalg.solve((np.eye(game.n_states) - game.gamma * p_pi).T, game.initial)


def _along(policy: np.ndarray, agent: int, n_agents: int) -> np.ndarray:
    """[S, A_agent] -> [S, 1, .., A_agent, .., 1] to broadcast against joint arrays."""
    shape = [policy.shape[0]] + [1] * n_agents
    shape[1 + agent] = policy.shape[1]
    return policy.reshape(shape)


def marginal_q(Q: np.ndarray, policies: Sequence[np.ndarray], agents: Sequence[int]) -> np.ndarray:
    """Q^{agents}(s, a^{agents}): Q with every other agent's action averaged under its policy.

    Args:
        Q:        [S, A_1, ..., A_n] joint action values (or any keepdims array over agents).
        policies: list of n [S, A_i].
        agents:   the subset kept (order irrelevant); () gives V as [S, 1, ..., 1].
    Returns:
        keepdims array [S, d_1, ..., d_n], d_i = A_i for i in agents, 1 otherwise.
    """
    n = len(policies)
    keep = set(int(i) for i in agents)
    for j in range(n):
        if j not in keep and Q.shape[1 + j] != 1:
            Q = (Q * _along(policies[j], j, n)).sum(axis=1 + j, keepdims=True)
    return Q


def multi_agent_advantage(Q: np.ndarray, policies: Sequence[np.ndarray], agents: Sequence[int],
                          given: Sequence[int] = ()) -> np.ndarray:
    """A^{agents}(s, a^{given}, a^{agents}) = Q^{given ∪ agents} − Q^{given}.

    Args:
        Q: [S, A_1, ..., A_n]; policies: list of n [S, A_i] (the policy the values belong to).
        agents, given: disjoint agent index lists.
    Returns:
        keepdims array [S, d_1, ..., d_n], d_i = A_i for i in agents ∪ given, 1 otherwise
        (``select_axes`` turns it into [S, A_{given...}, A_{agents...}]).
    """
    if set(agents) & set(given):
        raise ValueError(f"agents {tuple(agents)} and given {tuple(given)} overlap")
    return marginal_q(Q, policies, list(given) + list(agents)) - marginal_q(Q, policies, given)


def select_axes(x: np.ndarray, agents: Sequence[int]) -> np.ndarray:
    """Keepdims array [S, d_1..d_n] over ``agents`` -> [S, A_{agents[0]}, ..., A_{agents[-1]}]."""
    agents = [int(i) for i in agents]
    n = x.ndim - 1
    others = tuple(1 + j for j in range(n) if j not in agents)
    if any(x.shape[axis] != 1 for axis in others):
        raise ValueError(f"array of shape {x.shape} depends on agents outside {agents}")
    x = np.squeeze(x, axis=others)
    kept = sorted(agents)
    return np.transpose(x, [0] + [1 + kept.index(i) for i in agents])


def sequential_advantage(Q: np.ndarray, old: Sequence[np.ndarray], new: Sequence[np.ndarray],
                         earlier: Sequence[int], agent: int) -> np.ndarray:
    """Ā(s, a^{agent}) = E_{a^{earlier} ~ new}[A^{agent}_{old}(s, a^{earlier}, a^{agent})].

    The advantage HATRPO's m-th agent maximises: the earlier agents' actions are drawn from
    their *new* policies, the values are those of the old profile.

    Args:
        Q: [S, A_1..A_n] of the old profile; old, new: lists of n [S, A_i]; earlier: agent ids.
    Returns:
        [S, A_agent].
    """
    n = len(old)
    adv = multi_agent_advantage(Q, old, [agent], given=earlier)
    for j in earlier:
        adv = (adv * _along(new[j], j, n)).sum(axis=1 + j, keepdims=True)
    return select_axes(adv, [agent])


def optimal_values(game: MarkovGame, tol: float = 1e-12, max_iterations: int = 100_000):
    """Optimal V* [S] and J* = d0·V* of the game, by value iteration over joint actions.

    In a cooperative game the optimum is a deterministic joint action per state, which is a
    product of deterministic individual policies, so J* is the ceiling for every method here.
    """
    axes = tuple(range(1, game.n_agents + 1))
    V = np.zeros(game.n_states)
    for _ in range(max_iterations):
        V_next = (game.reward + game.gamma * game.transition @ V).max(axis=axes)
        if np.abs(V_next - V).max() < tol:
            V = V_next
            break
        V = V_next
    return V, float(game.initial @ V)


def penalty_coefficient(game: MarkovGame, evaluation: Evaluation) -> float:
    """C = 4γ max_{s,a} |A_π(s, a)| / (1 − γ)^2 of the HATRPO / TRPO lower bound."""
    advantage = evaluation.Q - evaluation.V.reshape((-1,) + (1,) * game.n_agents)
    return 4.0 * game.gamma * float(np.abs(advantage).max()) / (1.0 - game.gamma) ** 2


# ---------------------------------------------------------------------------------------------
# Trust-region solvers


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p ‖ q) = Σ_a p log(p/q) over the last axis: [..., A] -> [...] (0·log 0 = 0)."""
    # q = 0 where p > 0 (an underflowed near-deterministic policy) gives KL = inf, quietly.
    with np.errstate(divide="ignore"):
        if (p > 0).all():
            return np.sum(p * np.log(p / q), axis=-1)
        ratio = np.where(p > 0, p, 1.0) / np.where(p > 0, q, 1.0)
        return np.sum(np.where(p > 0, p * np.log(ratio), 0.0), axis=-1)


def _kl_family(p: np.ndarray, gap: np.ndarray, margin: np.ndarray):
    """q ∝ p / (margin − gap) with gap = Ā − max Ā ≤ 0 and margin = μ − max Ā > 0.

    Shapes: p, gap [..., A]; margin [...] (leading axes broadcast).
    Returns q [..., A], KL(p ‖ q) [...] and the multiplier λ = 1 / Σ_a p / (μ − Ā) [...].
    """
    weight = 1.0 / (margin[..., None] - gap)
    mass = np.sum(p * weight, axis=-1)
    q = p * weight / mass[..., None]
    # KL measured exactly as callers measure it, so "KL ≤ δ" holds bit for bit for the q returned.
    return q, kl_divergence(p, q), 1.0 / mass


def kl_constrained_argmax(p: np.ndarray, advantage: np.ndarray, delta,
                          steps: int = _INNER_STEPS, return_multiplier: bool = False):
    """Per state: argmax_q Σ_a q(a) Ā(s, a) subject to KL(p(.|s) ‖ q) ≤ δ.

    Solution q = λ p / (μ − Ā), μ > max Ā (see the module docstring); bisection on
    log((μ − max Ā) / spread(Ā)) per state, vectorised, keeping the feasible end, so
    KL(p ‖ q) ≤ δ holds exactly and E_q[Ā] ≥ E_p[Ā].

    Args:
        p:         [S, A] old policy (rows strictly positive where it matters).
        advantage: [S, A] Ā.
        delta:     KL budget > 0: a scalar, [S], or [K, S] to solve K budgets at once.
        steps:     bisection steps (64 reaches float64 resolution of the 80-wide log range).
    Returns:
        q [S, A] (or [K, S, A]); with return_multiplier also λ [S] (or [K, S]), the
        derivative dF/dδ of the per-state optimum F(δ) = max E_q[Ā].
    """
    p = np.asarray(p, np.float64)
    advantage = np.asarray(advantage, np.float64)
    delta = np.asarray(delta, np.float64)
    shape = np.broadcast_shapes(p.shape[:-1], delta.shape)
    gap = advantage - advantage.max(-1, keepdims=True)
    spread = -gap.min(-1)
    scale = np.where(spread > 0, spread, 1.0)
    lo = np.full(shape, -_LOG_RANGE)  # μ near max Ā: (near) deterministic, KL large
    hi = np.full(shape, _LOG_RANGE)   # μ far above max Ā: q ≈ p, KL ≈ 0 (feasible)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        _, kl, _ = _kl_family(p, gap, scale * np.exp(mid))
        feasible = kl <= delta
        hi = np.where(feasible, mid, hi)
        lo = np.where(feasible, lo, mid)
    q, _, multiplier = _kl_family(p, gap, scale * np.exp(hi))
    return (q, multiplier) if return_multiplier else q


def kl_penalised_argmax(p: np.ndarray, advantage: np.ndarray, rho: np.ndarray, penalty: float,
                        rounds: int = _OUTER_ROUNDS, points: int = 16) -> np.ndarray:
    """argmax_q Σ_s ρ(s) Σ_a q(a|s) Ā(s, a) − C · max_s KL(p(.|s) ‖ q(.|s)).

    Rewritten as max over t ≥ 0 of Σ_s ρ(s) F_s(t) − C t, F_s(t) the per-state optimum under
    KL ≤ t. Its derivative Σ_s ρ(s) λ_s(t) − C decreases in t; the root is bracketed on log t
    by multisection (``points`` budgets solved at once per round, the bracket shrinking
    (points + 1)-fold per round).

    Args:
        p, advantage: [S, A]; rho: [S] state weights (ρ_{π_old}); penalty: C > 0.
    Returns:
        q [S, A].
    """
    lo, hi = -2.0 * _LOG_RANGE, np.log(_LOG_RANGE)
    for _ in range(rounds):
        grid = np.linspace(lo, hi, points + 2)[1:-1]
        _, multiplier = kl_constrained_argmax(p, advantage, np.exp(grid)[:, None],
                                              return_multiplier=True)
        gaining = int(np.sum(multiplier @ rho > penalty))  # grid points left of the root
        lo, hi = (grid[gaining - 1] if gaining else lo), (grid[gaining] if gaining < points else hi)
    return kl_constrained_argmax(p, advantage, np.exp(lo))


# ---------------------------------------------------------------------------------------------
# Iterations


def _solve(p, advantage, rho, delta, penalty, trust_region):
    if trust_region == "kl_max":
        return kl_constrained_argmax(p, advantage, delta)
    if trust_region == "penalty":
        return kl_penalised_argmax(p, advantage, rho, penalty)
    raise ValueError(f"trust_region must be 'kl_max' or 'penalty', got {trust_region!r}")


def _check_delta(delta, trust_region):
    if trust_region == "kl_max" and (delta is None or not delta > 0):
        raise ValueError(f"trust_region='kl_max' needs delta > 0, got {delta}")


def hatrpo_iteration(game: MarkovGame, policies: Sequence[np.ndarray], delta: float | None = None,
                     *, order: Sequence[int] | None = None,
                     rng: np.random.Generator | None = None, trust_region: str = "kl_max",
                     evaluation: Evaluation | None = None):
    """One exact HATRPO iteration: sequential trust-region updates in a random order.

    Agent order[m] maximises Σ_s ρ_old(s) Σ_a π(a|s) Ā_m(s, a) (``sequential_advantage``, the
    earlier agents at their new policies) under the trust region: max_s KL ≤ delta
    ("kl_max") or the penalty C·max_s KL ("penalty", C from ``penalty_coefficient``).

    Args:
        policies: list of n [S, A_i] (π_old). order: a permutation, else drawn from rng.
    Returns:
        (new policies: list of n [S, A_i], IterationInfo).
    """
    _check_delta(delta, trust_region)
    ev = evaluation if evaluation is not None else evaluate(game, policies)
    n = game.n_agents
    if order is None:
        order = (rng if rng is not None else np.random.default_rng()).permutation(n)
    order = np.asarray(order, int)
    if sorted(order.tolist()) != list(range(n)):
        raise ValueError(f"order {order.tolist()} is not a permutation of {n} agents")
    penalty = penalty_coefficient(game, ev) if trust_region == "penalty" else float("nan")
    new = [np.array(pi, np.float64) for pi in policies]
    surrogate, kl_max = np.zeros(n), np.zeros(n)
    for m, agent in enumerate(order):
        advantage = sequential_advantage(ev.Q, policies, new, order[:m].tolist(), int(agent))
        new[agent] = _solve(policies[agent], advantage, ev.rho, delta, penalty, trust_region)
        surrogate[m] = ev.rho @ np.sum(new[agent] * advantage, -1)
        kl_max[m] = kl_divergence(policies[agent], new[agent]).max()
    return new, IterationInfo(order=order, surrogate=surrogate, kl_max=kl_max, penalty=penalty)


def simultaneous_iteration(game: MarkovGame, policies: Sequence[np.ndarray],
                           delta: float | None = None, *, trust_region: str = "kl_max",
                           evaluation: Evaluation | None = None):
    """Simultaneous independent trust-region updates (the counterexample to monotonicity).

    Every agent i maximises Σ_s ρ_old(s) Σ_a π^i(a|s) A^i_old(s, a), A^i = Q^i − V (the others
    at their old policies), under the same trust region as ``hatrpo_iteration``; all updates
    are applied at once.

    Returns:
        (new policies: list of n [S, A_i], IterationInfo with order = arange(n)).
    """
    _check_delta(delta, trust_region)
    ev = evaluation if evaluation is not None else evaluate(game, policies)
    n = game.n_agents
    penalty = penalty_coefficient(game, ev) if trust_region == "penalty" else float("nan")
    new, surrogate, kl_max = [], np.zeros(n), np.zeros(n)
    for agent in range(n):
        advantage = select_axes(multi_agent_advantage(ev.Q, policies, [agent]), [agent])
        q = _solve(policies[agent], advantage, ev.rho, delta, penalty, trust_region)
        new.append(q)
        surrogate[agent] = ev.rho @ np.sum(q * advantage, -1)
        kl_max[agent] = kl_divergence(policies[agent], q).max()
    return new, IterationInfo(order=np.arange(n), surrogate=surrogate, kl_max=kl_max,
                              penalty=penalty)


def trajectory(game: MarkovGame, policies: Sequence[np.ndarray], iterations: int,
               method: str = "hatrpo", delta: float | None = None, *,
               rng: np.random.Generator | None = None, trust_region: str = "kl_max"):
    """Run ``iterations`` exact iterations of ``method`` ("hatrpo" or "simultaneous").

    Returns:
        (J: [iterations + 1] returns J(π_0), ..., J(π_K); final policies: list of n [S, A_i]).
    """
    if method not in ("hatrpo", "simultaneous"):
        raise ValueError(f"method must be 'hatrpo' or 'simultaneous', got {method!r}")
    rng = rng if rng is not None else np.random.default_rng()
    current = [np.array(pi, np.float64) for pi in policies]
    ev = evaluate(game, current)
    returns = [ev.J]
    for _ in range(iterations):
        if method == "hatrpo":
            current, _ = hatrpo_iteration(game, current, delta, rng=rng,
                                          trust_region=trust_region, evaluation=ev)
        else:
            current, _ = simultaneous_iteration(game, current, delta,
                                                trust_region=trust_region, evaluation=ev)
        ev = evaluate(game, current)
        returns.append(ev.J)
    return np.asarray(returns), current
