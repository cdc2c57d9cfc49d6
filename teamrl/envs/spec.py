"""The team as arrays: static description (TeamSpec) and the per-step array bundles.

Shapes use E = parallel environments (added by vmap outside the adapter), N = agents,
D = padded observation width, S = global-state width, A = padded number of discrete actions
or padded continuous action dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import numpy as np


@dataclass(frozen=True)
class TeamSpec:
    """Static facts about a team environment; hashable so it can be a jit static argument.

    Attributes:
        env_id: registry id, e.g. ``mpe/simple_spread``.
        agent_names: names in the env's agent order; index i is agent i on every agent axis.
        obs_dims: raw observation width per agent (before padding / agent id).
        obs_dim: D, padded observation width including the optional one-hot agent id.
        state_dim: S, width of the global state seen by centralised critics.
        action_kind: ``"discrete"`` or ``"continuous"``.
        action_dims: per agent: number of discrete actions, or continuous action dimensions.
        action_low, action_high: per agent, per padded dim bounds for continuous actions
            (actions are clipped to them before the env sees them); empty for discrete.
        max_steps: episode time limit (reaching it is truncation, not termination).
        agent_id: whether a one-hot agent id is appended to each observation.
        has_wins: the env reports whether an episode was won (SMAX); win rates are logged.
        episode_metrics: names of further per-episode metrics a host env reports at each
            episode's end (football: goals, passes, ...); their means are logged.
    """

    env_id: str
    agent_names: tuple[str, ...]
    obs_dims: tuple[int, ...]
    obs_dim: int
    state_dim: int
    action_kind: str
    action_dims: tuple[int, ...]
    action_low: tuple[tuple[float, ...], ...] = ()
    action_high: tuple[tuple[float, ...], ...] = ()
    max_steps: int = 1
    agent_id: bool = False
    has_wins: bool = False
    episode_metrics: tuple[str, ...] = ()

    @property
    def n_agents(self) -> int:
        return len(self.agent_names)

    @property
    def action_dim(self) -> int:
        """A: padded number of discrete actions or continuous dimensions."""
        return max(self.action_dims)

    @property
    def discrete(self) -> bool:
        return self.action_kind == "discrete"

    @property
    def action_mask(self) -> np.ndarray:
        """[N, A] bool: which padded action entries exist for each agent."""
        return np.arange(self.action_dim)[None, :] < np.asarray(self.action_dims)[:, None]

    @property
    def obs_mask(self) -> np.ndarray:
        """[N, D] bool: which padded observation entries are real (agent id entries count as real)."""
        raw = np.arange(self.obs_dim)[None, :] < np.asarray(self.obs_dims)[:, None]
        if self.agent_id:
            raw[:, self.obs_dim - self.n_agents :] = True
        return raw


class TeamObs(NamedTuple):
    """What the agents and critics see at one step of one environment.

    obs:   [N, D] float32, zero-padded, with the one-hot agent id in the last N entries if enabled.
    state: [S] float32 global state for centralised critics.
    avail: [N, A] bool available actions (discrete; for continuous: the padded-dims mask).
    alive: [N] bool, agents still taking part (all True for envs without deaths).
    """

    obs: jax.Array
    state: jax.Array
    avail: jax.Array
    alive: jax.Array


class TeamStep(NamedTuple):
    """The outcome of one team step of one environment (after auto-reset).

    next_obs:   TeamObs to act on next (the reset observation if the episode ended).
    final_obs:  TeamObs reached by this step before any reset; used to bootstrap on truncation.
    reward:     [] float32 team reward.
    terminated: [] bool, the episode ended by the game's own rules (no bootstrap).
    truncated:  [] bool, the episode was cut by the time limit (bootstrap from final_obs).
    won:        [] bool, the episode ended with this step and was won (always False for envs
                without ``has_wins``).
    """

    next_obs: TeamObs
    final_obs: TeamObs
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    won: jax.Array
