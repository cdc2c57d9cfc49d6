"""Tabular IQL, MA2QL and I2Q on the deterministic didactic games (REFERENCE.md §3, §4).

Games are given as tables (``TabularGame``): S states, n agents with A actions each, joint
action index j = Σ_i a_i·A^(n−1−i) (agent 0 most significant, so j = 3·a0 + a1 in the 3-action
games), deterministic successor next_state[s, j] and reward reward[s, j] = r(s, s'). Every
episode starts in state 0 and lasts exactly ``horizon`` steps:

* a matrix game is one step from state 0 to an outcome state 1 + j (terminal) paying the
  payoff of j. The outcome state is what a transition-value learner (I2Q) needs to tell
  joint outcomes apart; the Q-learners only see it as a terminal state.
* the I2Q tree game (``TreeGame``): node s, child 9s + j + 1, the step pays R(s), nodes of
  depth ``stages`` are terminal.

Learners (one online update per step, α-weighted, ε-greedy behaviour with a fixed ε; the
defaults are the I2Q paper's matrix-game settings α 0.1, γ 1, ε 0.5):

* IQL:   Q_i(s, a_i) ← Q_i + α·(r + γ·max_a Q_i(s', a) − Q_i)        (0 beyond terminal s')
* MA2QL: IQL, but only agent k = ⌊episode / turn_length⌋ mod n updates (all agents act).
* I2Q:   Q_ss,i(s, s') ← Q_ss,i + α·(r + γ·max_{s'' seen after s'} Q_ss,i(s', s'') − Q_ss,i)
         s'* = argmax_{s' seen after (s, a_i)} Q_ss,i(s, s')            (the ideal transition)
         Q_i(s, a_i) ← Q_i + α·(r(s, s'*) + γ·max_a Q_i(s'*, a) − Q_i)

A successor s' of s is stored in the slot j that produced it (the constructors check that
distinct joint actions lead to distinct successors), so Q_ss,i is an [S, J] table and "seen
after (s, a_i)" an [S, A, J] mask; agent i only ever reads slots it has observed, i.e. next
states it has seen following its own action. Tables start uniform in ±init_scale (the
authors' code: rand − 0.5), which also breaks greedy ties at random.

Everything is one compiled program: ``lax.scan`` over episodes, an inner ``lax.scan`` over
the horizon, agents vectorised, seeds ``vmap``-ed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("iql", "ma2ql", "i2q")


@dataclass(frozen=True)
class TabularGame:
    """A deterministic cooperative game as tables (numpy; closed over by the learners).

    next_state: [S, J] int32; reward: [S, J] float32 r(s, s'); terminal: [S] bool;
    every episode starts at state 0 and lasts ``horizon`` steps; ``optimum`` is the best
    return (dynamic programming).
    """

    next_state: np.ndarray
    reward: np.ndarray
    terminal: np.ndarray
    n_agents: int
    n_actions: int
    horizon: int
    optimum: float

    def __post_init__(self):
        live = ~self.terminal
        succ = self.next_state[live]
        if any(len(set(row)) != len(row) for row in succ.tolist()):
            raise ValueError("distinct joint actions must lead to distinct successor states")

    def joint_index(self, actions):
        """actions [..., n] -> joint index [...] (agent 0 most significant)."""
        weights = self.n_actions ** np.arange(self.n_agents - 1, -1, -1)
        return jnp.sum(actions * weights, axis=-1)


def matrix_game(payoff) -> TabularGame:
    """One-step game: state 0 -> outcome state 1 + j (terminal), paying payoff[j]."""
    payoff = np.asarray(payoff, np.float32)
    n, a = payoff.ndim, payoff.shape[0]
    joint = a**n
    states = 1 + joint
    next_state = np.tile(np.arange(states, dtype=np.int32)[:, None], (1, joint))
    next_state[0] = 1 + np.arange(joint)
    reward = np.zeros((states, joint), np.float32)
    reward[0] = payoff.reshape(-1)
    terminal = np.arange(states) > 0
    return TabularGame(next_state, reward, terminal, n, a, 1, float(payoff.max()))


def tree_game(stages: int = 3, game: int = 0) -> TabularGame:
    """The I2Q 9-ary tree game with the node rewards of ``TreeGame(stages, game)``."""
    from teamrl.envs.didactic import TreeGame

    env = TreeGame(stages, game)
    internal = env.rewards_np.shape[0]          # nodes of depths 0..stages-1
    states = internal + 9**stages               # plus the terminal leaves of depth `stages`
    node = np.arange(states, dtype=np.int64)
    next_state = np.where(node[:, None] < internal, 9 * node[:, None] + np.arange(9) + 1,
                          node[:, None]).astype(np.int32)
    reward = np.zeros((states, 9), np.float32)
    reward[:internal] = env.rewards_np[:, None]
    return TabularGame(next_state, reward, node >= internal, 2, 3, stages,
                       env.optimal_return())


@dataclass(frozen=True)
class TabularConfig:
    """Step size α, discount γ, fixed exploration ε, MA2QL turn length (episodes) and the
    scale of the uniform random initial tables."""

    alpha: float = 0.1
    gamma: float = 1.0
    epsilon: float = 0.5
    turn_length: int = 50
    init_scale: float = 0.5


class Tables(NamedTuple):
    """q [N, S, A]; qss [N, S, J] (I2Q); seen [N, S, A, J] bool: slot j observed after
    (s, a_i) (I2Q); reward_seen [N, S, J]: observed r(s, s') (I2Q)."""

    q: jax.Array
    qss: jax.Array
    seen: jax.Array
    reward_seen: jax.Array


class TabularResult(NamedTuple):
    """Per seed [K, ...]: final tables, greedy return, greedy joint actions [K, H, N], and
    the behaviour (ε-greedy) return of every training episode [K, episodes]."""

    tables: Tables
    greedy_return: np.ndarray
    greedy_actions: np.ndarray
    episode_returns: np.ndarray


def _init_tables(game: TabularGame, method: str, key, cfg: TabularConfig) -> Tables:
    n, a = game.n_agents, game.n_actions
    s, j = game.next_state.shape
    q_key, qss_key = jax.random.split(key)
    scale = cfg.init_scale
    q = jax.random.uniform(q_key, (n, s, a), minval=-scale, maxval=scale)
    if method != "i2q":  # keep the carry small: unused tables are empty
        return Tables(q, jnp.zeros((n, 0, j)), jnp.zeros((n, 0, a, j), bool),
                      jnp.zeros((n, 0, j)))
    qss = jax.random.uniform(qss_key, (n, s, j), minval=-scale, maxval=scale)
    return Tables(q, qss, jnp.zeros((n, s, a, j), bool), jnp.zeros((n, s, j)))


def _q_learning_update(game: TabularGame, cfg: TabularConfig, q, s, actions, r, s_next,
                       learner_mask):
    """IQL step for every agent i with learner_mask[i]: q [N, S, A] -> q."""
    agents = jnp.arange(game.n_agents)
    terminal = jnp.asarray(game.terminal)
    bootstrap = jnp.where(terminal[s_next], 0.0, q[:, s_next].max(-1))  # [N]
    old = q[agents, s, actions]
    delta = cfg.alpha * (r + cfg.gamma * bootstrap - old)
    return q.at[agents, s, actions].add(jnp.where(learner_mask, delta, 0.0))


def _i2q_update(game: TabularGame, cfg: TabularConfig, tables: Tables, s, actions, j, r,
                s_next) -> Tables:
    """I2Q step for every agent (see the module docstring)."""
    agents = jnp.arange(game.n_agents)
    next_state = jnp.asarray(game.next_state)
    terminal = jnp.asarray(game.terminal)
    seen = tables.seen.at[agents, s, actions, j].set(True)
    reward_seen = tables.reward_seen.at[agents, s, j].set(r)

    # Q_ss(s, s') toward r + γ max over the successors of s' this agent has seen.
    seen_after_next = seen[:, s_next].any(axis=1)                                  # [N, J]
    best_next = jnp.max(jnp.where(seen_after_next, tables.qss[:, s_next], -jnp.inf), -1)
    best_next = jnp.where(terminal[s_next] | ~seen_after_next.any(-1), 0.0, best_next)
    old = tables.qss[agents, s, j]
    qss = tables.qss.at[agents, s, j].add(cfg.alpha * (r + cfg.gamma * best_next - old))

    # The ideal transition of (s, a_i) and the Q_i update along it.
    mine = seen[agents, s, actions]                                                # [N, J]
    ideal = jnp.argmax(jnp.where(mine, qss[:, s], -jnp.inf), axis=-1)             # [N]
    s_ideal = next_state[s, ideal]
    r_ideal = reward_seen[agents, s, ideal]
    bootstrap = jnp.where(terminal[s_ideal], 0.0, tables.q[agents, s_ideal].max(-1))
    old_q = tables.q[agents, s, actions]
    q = tables.q.at[agents, s, actions].add(cfg.alpha * (r_ideal + cfg.gamma * bootstrap
                                                         - old_q))
    return Tables(q, qss, seen, reward_seen)


def _greedy(q, s):
    """[N] greedy actions of every agent at state s."""
    return jnp.argmax(q[:, s], axis=-1).astype(jnp.int32)


def _episode(game: TabularGame, method: str, cfg: TabularConfig, tables: Tables, inputs):
    """One ε-greedy training episode of ``horizon`` steps: -> (tables, return)."""
    episode, key = inputs
    next_state, reward = jnp.asarray(game.next_state), jnp.asarray(game.reward)
    turn_agent = (episode // cfg.turn_length) % game.n_agents
    learner_mask = (jnp.arange(game.n_agents) == turn_agent if method == "ma2ql"
                    else jnp.ones(game.n_agents, bool))

    def step(carry, step_key):
        tables, s, ret = carry
        explore_key, action_key = jax.random.split(step_key)
        explore = jax.random.uniform(explore_key, (game.n_agents,)) < cfg.epsilon
        uniform = jax.random.randint(action_key, (game.n_agents,), 0, game.n_actions)
        actions = jnp.where(explore, uniform, _greedy(tables.q, s))
        j = game.joint_index(actions)
        s_next, r = next_state[s, j], reward[s, j]
        if method == "i2q":
            tables = _i2q_update(game, cfg, tables, s, actions, j, r, s_next)
        else:
            tables = tables._replace(q=_q_learning_update(game, cfg, tables.q, s, actions, r,
                                                          s_next, learner_mask))
        return (tables, s_next, ret + r), None

    (tables, _, ret), _ = jax.lax.scan(step, (tables, jnp.int32(0), jnp.float32(0.0)),
                                       jax.random.split(key, game.horizon))
    return tables, ret


def greedy_rollout(game: TabularGame, q: jax.Array):
    """The greedy joint policy of q [N, S, A] from state 0: -> (return [], actions [H, N])."""
    next_state, reward = jnp.asarray(game.next_state), jnp.asarray(game.reward)

    def step(carry, _):
        s, ret = carry
        actions = _greedy(q, s)
        j = game.joint_index(actions)
        return (next_state[s, j], ret + reward[s, j]), actions

    (_, ret), actions = jax.lax.scan(step, (jnp.int32(0), jnp.float32(0.0)), None,
                                     length=game.horizon)
    return ret, actions


def train(method: str, game: TabularGame, keys: jax.Array, episodes: int,
          cfg: TabularConfig = TabularConfig()) -> TabularResult:
    """Train ``method`` (iql, ma2ql or i2q) for ``episodes`` episodes, one seed per key
    (keys [K, 2], vmapped), and return the greedy policies' results per seed."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")

    def one_seed(key):
        init_key, run_key = jax.random.split(key)
        tables = _init_tables(game, method, init_key, cfg)
        tables, returns = jax.lax.scan(
            partial(_episode, game, method, cfg), tables,
            (jnp.arange(episodes), jax.random.split(run_key, episodes)))
        greedy_return, greedy_actions = greedy_rollout(game, tables.q)
        return TabularResult(tables, greedy_return, greedy_actions, returns)

    result = jax.jit(jax.vmap(one_seed))(keys)
    return jax.tree.map(np.asarray, result)
