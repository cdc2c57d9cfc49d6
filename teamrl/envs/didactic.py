"""Compiled didactic cooperative games with exact oracles (REFERENCE.md §4).

Every game follows JaxMARL's ``MultiAgentEnv`` API (``reset`` / ``step_env`` / ``get_obs`` /
``get_avail_actions``, agents ``agent_0..agent_{n-1}``), pays the shared team reward to every
agent, and signals natural termination through ``dones`` (``__all__`` included). Extras:

* ``world_state(state)``: flat float32 global state for centralised critics (here always the
  shared observation vector);
* ``oracle()``: plain NumPy dict with ``optimum`` (best expected episode return) and ``random``
  (expected episode return of the uniform random joint policy; for the continuous product game,
  of its initial Gaussian policies), computed by enumeration / dynamic programming.

Games (``DIDACTIC_GAMES`` maps the names to constructors taking keyword options):
``climbing``, ``penalty`` (k), ``overgeneralisation``, ``split`` (n_agents), ``product``,
``tree`` (stages, game) and ``dpo-random-game``.
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
import teamrl.envs.quiet_jaxmarl  # noqa: F401  (before any jaxmarl import)
from jaxmarl.environments.multi_agent_env import MultiAgentEnv
from jaxmarl.environments.spaces import Box, Discrete

DATA_DIR = Path(__file__).resolve().parent / "data"


@struct.dataclass
class DidacticState:
    """State of every didactic game.

    Attributes:
        done: bool scalar, the episode has terminated.
        step: int32 scalar, number of joint actions taken so far.
        node: int32 scalar, the current node / state id (0 for single-state games).
        history: int32 (H,), joint-action ids of the previous steps, -1 where not yet taken
            (H = stages - 1 for the tree game, 0 otherwise).
    """

    done: jnp.ndarray
    step: jnp.ndarray
    node: jnp.ndarray
    history: jnp.ndarray


class DidacticEnv(MultiAgentEnv):
    """Shared machinery: dict plumbing, spaces, shared observations and rewards.

    Subclasses set ``obs_dim``, ``max_steps``, the action spaces, and implement
    ``_obs_vec(state) -> (obs_dim,) float32`` and
    ``_transition(key, state, actions (n,) or (n, act_dim)) -> (state, reward, done)``.
    """

    obs_dim: int
    max_steps: int
    history_len: int = 0

    def __init__(self, num_agents: int, obs_dim: int, max_steps: int, action_space):
        super().__init__(num_agents)
        self.obs_dim, self.max_steps = obs_dim, max_steps
        obs_space = Box(0.0, 1.0, (obs_dim,), jnp.float32)
        self.observation_spaces = {a: obs_space for a in self.agents}
        self.action_spaces = {a: action_space for a in self.agents}

    # --- MultiAgentEnv API -------------------------------------------------------------------
    @partial(jax.jit, static_argnums=(0,))
    def reset(self, key: jax.Array) -> tuple[dict, DidacticState]:
        """Returns ({agent: (obs_dim,) float32}, state) at the start state."""
        state = DidacticState(
            done=jnp.array(False),
            step=jnp.array(0, jnp.int32),
            node=jnp.array(0, jnp.int32),
            history=-jnp.ones((self.history_len,), jnp.int32),
        )
        return self.get_obs(state), state

    @partial(jax.jit, static_argnums=(0,))
    def step_env(self, key: jax.Array, state: DidacticState, actions: dict):
        """One joint step; returns (obs, state, rewards, dones incl. ``__all__``, infos).

        ``actions[agent]`` is an int32 scalar (discrete games) or float32 (act_dim,) (Box).
        Rewards are float32 scalars (the shared team reward), dones bool scalars.
        """
        joint = jnp.stack([jnp.asarray(actions[a]) for a in self.agents])
        state, reward, done = self._transition(key, state, joint)
        reward = jnp.asarray(reward, jnp.float32)
        done = jnp.asarray(done, bool)
        state = state.replace(done=done)
        rewards = {a: reward for a in self.agents}
        dones = {a: done for a in self.agents} | {"__all__": done}
        return self.get_obs(state), state, rewards, dones, {}

    def get_obs(self, state: DidacticState) -> dict:
        """{agent: (obs_dim,) float32}: every agent sees the same vector."""
        obs = self._obs_vec(state)
        return {a: obs for a in self.agents}

    def world_state(self, state: DidacticState) -> jnp.ndarray:
        """(obs_dim,) float32 global state (the shared observation)."""
        return self._obs_vec(state)

    def get_avail_actions(self, state: DidacticState) -> dict:
        """{agent: all-true bool mask}, (n_actions,) or (act_dim,) for Box actions."""
        space = self.action_spaces[self.agents[0]]
        n = space.n if isinstance(space, Discrete) else space.shape[0]
        return {a: jnp.ones((n,), bool) for a in self.agents}

    @property
    def agent_classes(self) -> dict:
        return {"agent": list(self.agents)}

    # --- to implement ------------------------------------------------------------------------
    def _obs_vec(self, state: DidacticState) -> jnp.ndarray:
        raise NotImplementedError

    def _transition(self, key, state, joint):
        raise NotImplementedError

    def oracle(self) -> dict:
        raise NotImplementedError


class OneStepGame(DidacticEnv):
    """Single-state, one-step game: observation is the constant [1.0], done after one step."""

    def __init__(self, num_agents: int, action_space):
        super().__init__(num_agents, obs_dim=1, max_steps=1, action_space=action_space)

    def _obs_vec(self, state):
        return jnp.ones((1,), jnp.float32)

    def _transition(self, key, state, joint):
        return state.replace(step=state.step + 1), self._reward(joint), jnp.array(True)

    def _reward(self, joint: jnp.ndarray) -> jnp.ndarray:
        raise NotImplementedError


class MatrixGame(OneStepGame):
    """One-step common-payoff matrix game; ``payoff[a_0, a_1, ...]`` (agent_0 indexes the rows)."""

    def __init__(self, payoff, name: str = "MatrixGame"):
        self.payoff_np = np.asarray(payoff, np.float64)
        self.payoff = jnp.asarray(self.payoff_np, jnp.float32)
        self._name = name
        n_actions = self.payoff_np.shape
        if len(set(n_actions)) != 1:
            raise ValueError("all agents must have the same number of actions")
        super().__init__(self.payoff_np.ndim, Discrete(n_actions[0]))

    @property
    def name(self) -> str:
        return self._name

    def _reward(self, joint):
        return self.payoff[tuple(joint)]

    def oracle(self) -> dict:
        return {"optimum": float(self.payoff_np.max()), "random": float(self.payoff_np.mean())}


def climbing() -> MatrixGame:
    """Climbing game: optimum 11 at (0, 0), guarded by -30 miscoordination penalties."""
    return MatrixGame([[11, -30, 0], [-30, 7, 6], [0, 0, 5]], name="climbing")


def penalty(k: float = -100.0) -> MatrixGame:
    """Penalty game with miscoordination penalty ``k <= 0``: two optima 10, safe 2."""
    if k > 0:
        raise ValueError(f"penalty game needs k <= 0, got {k}")
    return MatrixGame([[10, 0, k], [0, 2, 0], [k, 0, 10]], name="penalty")


def overgeneralisation() -> MatrixGame:
    """Relative overgeneralisation: optimum 8 vs the 'safe' 6."""
    return MatrixGame([[8, -12, -12], [-12, 6, 0], [-12, 0, 6]], name="overgeneralisation")


class SplitGame(OneStepGame):
    """HATRPO Prop. 1: n agents pick 0/1; reward 1 iff the joint action is (0^{n/2}, 1^{n/2})
    or (1^{n/2}, 0^{n/2}). Identical policies without agent id cannot reach the optimum 1."""

    def __init__(self, n_agents: int = 4):
        if not isinstance(n_agents, (int, np.integer)) or n_agents < 2 or n_agents % 2:
            raise ValueError(f"split game needs an even n_agents >= 2, got {n_agents}")
        half = n_agents // 2
        self.targets_np = np.array([[0] * half + [1] * half, [1] * half + [0] * half])
        self.targets = jnp.asarray(self.targets_np, jnp.int32)
        super().__init__(n_agents, Discrete(2))

    def _reward(self, joint):
        return jnp.any(jnp.all(joint[None, :] == self.targets, axis=1)).astype(jnp.float32)

    def oracle(self) -> dict:
        n = self.num_agents
        if n <= 20:  # enumerate all 2^n joint actions
            joint = np.array(list(itertools.product((0, 1), repeat=n)), np.int8)
            r = (joint[:, None, :] == self.targets_np[None]).all(-1).any(-1).astype(float)
            optimum, random = r.max(), r.mean()
        else:  # exactly the two target joint actions pay 1
            optimum, random = 1.0, 2.0 / 2.0**n
        # Best shared (identical, id-free) stochastic policy: P(a=1) = p for every agent.
        p = np.linspace(0.0, 1.0, 200_001)
        shared = 2.0 * p ** (n // 2) * (1.0 - p) ** (n // 2)
        return {
            "optimum": float(optimum),
            "random": float(random),
            "shared_policy_max": float(shared.max()),
            "shared_policy_argmax": float(p[shared.argmax()]),
        }


def expected_clipped_normal(mu: float, std: float, lo: float = -1.0, hi: float = 1.0) -> float:
    """E[clip(X, lo, hi)] for X ~ N(mu, std^2), in closed form."""
    cdf = lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    a, b = (lo - mu) / std, (hi - mu) / std
    inside = mu * (cdf(b) - cdf(a)) + std * (pdf(a) - pdf(b))  # E[X; lo < X < hi]
    return lo * cdf(a) + inside + hi * (1.0 - cdf(b))


def expected_clipped_product(mu0: float, mu1: float, std0: float, std1: float) -> float:
    """E[clip(a0,-1,1)·clip(a1,-1,1)] for independent a_i ~ N(mu_i, std_i^2)."""
    return expected_clipped_normal(mu0, std0) * expected_clipped_normal(mu1, std1)


class ProductGame(OneStepGame):
    """Two agents, actions in Box(-1, 1, (1,)), one step, reward clip(a0)·clip(a1).

    ``init_means`` / ``init_std`` describe the initial Gaussian policies of REFERENCE §4; the
    oracle's ``random`` is their expected reward.
    """

    init_means = (-0.25, 0.25)
    init_std = 1.0

    def __init__(self):
        super().__init__(2, Box(-1.0, 1.0, (1,), jnp.float32))

    def _reward(self, joint):
        a = jnp.clip(joint.astype(jnp.float32), -1.0, 1.0)  # (2, 1)
        return a[0, 0] * a[1, 0]

    def oracle(self) -> dict:
        corners = np.array(list(itertools.product((-1.0, 1.0), repeat=2)))
        return {
            "optimum": float(corners.prod(axis=1).max()),
            "random": expected_clipped_product(*self.init_means, self.init_std, self.init_std),
        }


class TreeGame(DidacticEnv):
    """The I2Q paper's 9-ary tree game: 2 agents × 3 actions, deterministic s' = 9s + 3a0 + a1 + 1.

    Convention of the I2Q authors' code (jiechuanjiang/I2Q, "Matrix Game/matrix.py" and
    "generate_game.py"): an episode has ``stages`` steps; step t (t = 0..stages-1) pays R of the
    node where the agents *are* (depth t) and then moves to the child picked by the joint action;
    done after ``stages`` steps. So the return is the sum of R over the visited nodes of depths
    0..stages-1 and the last step's action does not matter. R(node) ~ U[-1, 1] from
    ``np.random.default_rng(game)`` for all (9^stages - 1) / 8 nodes of depths 0..stages-1.

    Observation (both agents, dim stages + 9·(stages-1)): one-hot of the current depth, then a
    one-hot of each of the first stages-1 joint actions (3a0 + a1; zeros where not yet taken).
    After the final step the depth block is all zeros.
    """

    def __init__(self, stages: int = 5, game: int = 0):
        if not 1 <= stages <= 8:
            raise ValueError(f"tree game needs 1 <= stages <= 8, got {stages}")
        self.stages, self.game, self.history_len = stages, game, stages - 1
        n_nodes = (9**stages - 1) // 8
        self.rewards_np = np.random.default_rng(game).uniform(-1.0, 1.0, n_nodes)
        self.rewards = jnp.asarray(self.rewards_np, jnp.float32)
        super().__init__(2, stages + 9 * (stages - 1), stages, Discrete(3))

    def _obs_vec(self, state):
        depth = jax.nn.one_hot(state.step, self.stages, dtype=jnp.float32)
        hist = jax.nn.one_hot(state.history, 9, dtype=jnp.float32).reshape(-1)  # -1 -> zeros
        return jnp.concatenate([depth, hist])

    def _transition(self, key, state, joint):
        reward = self.rewards[jnp.minimum(state.node, self.rewards.shape[0] - 1)]
        a = 3 * joint[0] + joint[1]
        history = jnp.where(jnp.arange(self.history_len) == state.step, a, state.history)
        step = state.step + 1
        new = state.replace(step=step, node=9 * state.node + a + 1, history=history)
        return new, reward, step >= self.stages

    def _values(self, reduce: Callable) -> list[np.ndarray]:
        """Per-depth values V_d (9^d,) with V_d = R_d + reduce over the 9 children of V_{d+1}."""
        starts = [(9**d - 1) // 8 for d in range(self.stages + 1)]
        values = [self.rewards_np[starts[-2] : starts[-1]]]
        for d in range(self.stages - 2, -1, -1):
            child = values[0].reshape(-1, 9)
            values.insert(0, self.rewards_np[starts[d] : starts[d + 1]] + reduce(child, axis=1))
        return values

    def oracle(self) -> dict:
        return {
            "optimum": float(self._values(np.max)[0][0]),
            "random": float(self._values(np.mean)[0][0]),
        }

    def optimal_return(self) -> float:
        """Best achievable return (dynamic programming over the tree)."""
        return self.oracle()["optimum"]

    def optimal_actions(self) -> list[tuple[int, int]]:
        """A DP-optimal joint-action sequence of length ``stages`` (the last one is arbitrary)."""
        values, node, path = self._values(np.max), 0, []
        for d in range(1, self.stages):
            first = 9 * node + 1  # index of the first child; its position within depth d:
            offset = first - (9**d - 1) // 8
            a = int(np.argmax(values[d][offset : offset + 9]))
            path.append((a // 3, a % 3))
            node = first + a
        return path + [(0, 0)]


class DPORandomGame(DidacticEnv):
    """The DPO authors' random cooperative stochastic game: 30 states, 3 agents × 5 actions.

    Start state 0, exactly 30 steps; reward[s, a0, a1, a2]; next state ~ trans_mat[s, a0, a1, a2];
    observation = one-hot state (30,) for every agent. Data: ``data/dpo_random_game_3.npz``.
    """

    def __init__(self, horizon: int = 30, path: str | Path | None = None):
        data = np.load(Path(path) if path else DATA_DIR / "dpo_random_game_3.npz")
        self.reward_np = np.asarray(data["reward"], np.float64)  # (S, A, A, A)
        self.trans_np = np.asarray(data["trans_mat"], np.float64)  # (S, A, A, A, S)
        self.n_states, n_actions = self.reward_np.shape[0], self.reward_np.shape[1]
        self.reward = jnp.asarray(self.reward_np, jnp.float32)
        with np.errstate(divide="ignore"):
            self.log_trans = jnp.asarray(np.log(self.trans_np), jnp.float32)
        super().__init__(self.reward_np.ndim - 1, self.n_states, horizon, Discrete(n_actions))

    def _obs_vec(self, state):
        return jax.nn.one_hot(state.node, self.n_states, dtype=jnp.float32)

    def _transition(self, key, state, joint):
        idx = (state.node, *joint)
        nxt = jax.random.categorical(key, self.log_trans[idx]).astype(jnp.int32)
        step = state.step + 1
        return state.replace(step=step, node=nxt), self.reward[idx], step >= self.max_steps

    def oracle(self) -> dict:
        """Finite-horizon undiscounted DP from state 0."""
        s = self.n_states
        v_opt, v_rnd = np.zeros(s), np.zeros(s)
        for _ in range(self.max_steps):
            q_opt = self.reward_np + self.trans_np @ v_opt
            q_rnd = self.reward_np + self.trans_np @ v_rnd
            v_opt, v_rnd = q_opt.reshape(s, -1).max(1), q_rnd.reshape(s, -1).mean(1)
        return {"optimum": float(v_opt[0]), "random": float(v_rnd[0])}


DIDACTIC_GAMES: dict[str, Callable[..., DidacticEnv]] = {
    "climbing": climbing,
    "penalty": penalty,
    "overgeneralisation": overgeneralisation,
    "split": SplitGame,
    "product": ProductGame,
    "tree": TreeGame,
    "dpo-random-game": DPORandomGame,
}
