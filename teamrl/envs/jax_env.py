"""Adapter from any JaxMARL-API environment to compiled team arrays (one environment;
vmap over environments outside).

The env protocol is JaxMARL's ``MultiAgentEnv``: ``reset(key) -> (obs_dict, state)``,
``step_env(key, state, actions_dict) -> (obs_dict, state, rewards, dones, infos)``, per-agent
``observation_space`` / ``action_space`` and an optional ``get_avail_actions(state)``. Envs may
also provide ``world_state(state) -> [S]`` (otherwise the global state is the concatenation of
the agents' raw observations), ``agents_alive(state) -> [N] bool`` (agents that died are
masked out of every policy loss and death-masked for critics; default: all alive) and
``won(state) -> [] bool`` (whether a finished episode was won; win rates are then logged). We
call ``step_env`` and reset ourselves so that the observation reached at a time limit is kept
for bootstrapping (JaxMARL's ``step`` would discard it).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import teamrl.envs.quiet_jaxmarl  # noqa: F401  (before any jaxmarl import)
from jaxmarl.environments import spaces  # noqa: E402

from teamrl.envs.spec import TeamObs, TeamSpec, TeamStep


class AdapterState(NamedTuple):
    """Env state plus the number of steps taken in the current episode ([] int32)."""

    env_state: Any
    episode_step: jax.Array


def _has_method(env, name: str, *probe_args) -> bool:
    """Whether ``env.name(*probe_args)`` is implemented (traced abstractly, nothing runs)."""
    if not hasattr(env, name):
        return False
    try:
        jax.eval_shape(getattr(env, name), *probe_args)
        return True
    except NotImplementedError:
        return False


class JaxTeamEnv:
    """A JaxMARL ``MultiAgentEnv`` seen as a team: stacked [N, ...] arrays, no dicts.

    Args:
        env: the JaxMARL environment.
        env_id: registry id (for messages and the spec).
        agent_id: append a one-hot agent id to each observation.
        team_reward: ``"mean"`` or ``"sum"`` of the per-agent rewards.
        max_steps: episode time limit; defaults to ``env.max_steps``.
        time_limit_is_truncation: if True, an episode ending at ``max_steps`` is a truncation
            (bootstrapped); use False for games whose fixed horizon is part of the task.
    """

    def __init__(
        self,
        env,
        env_id: str,
        agent_id: bool = False,
        team_reward: str = "mean",
        max_steps: int | None = None,
        time_limit_is_truncation: bool = True,
    ):
        self.env = env
        names = tuple(env.agents)
        action_spaces = [env.action_space(a) for a in names]
        if all(isinstance(s, spaces.Discrete) for s in action_spaces):
            kind, action_dims = "discrete", tuple(int(s.n) for s in action_spaces)
            low = high = ()
        elif all(isinstance(s, spaces.Box) for s in action_spaces):
            kind = "continuous"
            action_dims = tuple(int(np.prod(s.shape)) for s in action_spaces)
            width = max(action_dims)

            def padded(bound, s):
                values = np.broadcast_to(np.asarray(bound, np.float32), s.shape).reshape(-1)
                return tuple(float(v) for v in np.pad(values, (0, width - values.size)))

            low = tuple(padded(s.low, s) for s in action_spaces)
            high = tuple(padded(s.high, s) for s in action_spaces)
        else:
            kinds = sorted({type(s).__name__ for s in action_spaces})
            raise ValueError(f"{env_id}: mixed or unsupported action spaces {kinds}; "
                             "valid: all Discrete or all Box")
        obs_dims = tuple(int(np.prod(env.observation_space(a).shape)) for a in names)
        key = jax.random.PRNGKey(0)
        _, probe_state = jax.eval_shape(env.reset, key)
        self._has_world_state = _has_method(env, "world_state", probe_state)
        self._has_avail = kind == "discrete" and _has_method(env, "get_avail_actions", probe_state)
        self._has_alive = _has_method(env, "agents_alive", probe_state)
        has_wins = _has_method(env, "won", probe_state)
        # Envs whose game can end on the time-limit step itself (a SMAX battle decided on the
        # last step) say so; there a decided game is a termination, never a truncation.
        self._has_decided = _has_method(env, "decided", probe_state)
        if self._has_world_state:
            state_dim = int(np.prod(jax.eval_shape(env.world_state, probe_state).shape))
        else:
            state_dim = sum(obs_dims)
        if max_steps is None:
            max_steps = int(getattr(env, "max_steps"))
        if team_reward not in ("mean", "sum"):
            raise ValueError(f"team_reward={team_reward!r} is not valid; valid: mean, sum")
        self.team_reward = team_reward
        self.time_limit_is_truncation = time_limit_is_truncation
        self.spec = TeamSpec(
            env_id=env_id,
            agent_names=names,
            obs_dims=obs_dims,
            obs_dim=max(obs_dims) + (len(names) if agent_id else 0),
            state_dim=state_dim,
            action_kind=kind,
            action_dims=action_dims,
            action_low=low,
            action_high=high,
            max_steps=int(max_steps),
            agent_id=agent_id,
            has_wins=has_wins,
        )

    # ----------------------------------------------------------------- observation packing
    def _team_obs(self, obs: dict, env_state) -> TeamObs:
        spec = self.spec
        width = max(spec.obs_dims)
        rows = [jnp.ravel(obs[a]).astype(jnp.float32) for a in spec.agent_names]
        padded = jnp.stack([jnp.pad(r, (0, width - r.shape[0])) for r in rows])
        if spec.agent_id:
            padded = jnp.concatenate([padded, jnp.eye(spec.n_agents, dtype=jnp.float32)], axis=1)
        if self._has_world_state:
            state = jnp.ravel(self.env.world_state(env_state)).astype(jnp.float32)
        else:
            state = jnp.concatenate(rows)
        avail = jnp.asarray(spec.action_mask)
        if self._has_avail:
            env_avail = self.env.get_avail_actions(env_state)
            rows_avail = [jnp.asarray(env_avail[a], bool).reshape(-1) for a in spec.agent_names]
            avail = avail & jnp.stack(
                [jnp.pad(r, (0, spec.action_dim - r.shape[0])) for r in rows_avail])
        alive = (jnp.asarray(self.env.agents_alive(env_state), bool).reshape(spec.n_agents)
                 if self._has_alive else jnp.ones((spec.n_agents,), bool))
        return TeamObs(obs=padded, state=state, avail=avail, alive=alive)

    def _env_actions(self, action: jax.Array) -> dict:
        spec = self.spec
        if spec.discrete:
            return {a: action[i].astype(jnp.int32) for i, a in enumerate(spec.agent_names)}
        low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
        clipped = jnp.clip(action, low, high)
        return {a: clipped[i, : spec.action_dims[i]] for i, a in enumerate(spec.agent_names)}

    # ----------------------------------------------------------------------------- API
    def reset(self, key: jax.Array) -> tuple[AdapterState, TeamObs]:
        """Start an episode. Returns (AdapterState, TeamObs)."""
        obs, env_state = self.env.reset(key)
        return AdapterState(env_state, jnp.int32(0)), self._team_obs(obs, env_state)

    def step(self, key: jax.Array, state: AdapterState, action: jax.Array
             ) -> tuple[AdapterState, TeamStep]:
        """One team step with auto-reset.

        Args:
            action: [N] int32 (discrete) or [N, A] float32 (continuous, unclipped).
        """
        key_step, key_reset = jax.random.split(key)
        obs, env_state, rewards, dones, _ = self.env.step_env(
            key_step, state.env_state, self._env_actions(action))
        per_agent = jnp.stack([jnp.asarray(rewards[a], jnp.float32) for a in self.spec.agent_names])
        reward = per_agent.mean() if self.team_reward == "mean" else per_agent.sum()
        episode_step = state.episode_step + 1
        at_limit = episode_step >= self.spec.max_steps
        env_done = jnp.asarray(dones["__all__"], bool)
        if self.time_limit_is_truncation and self._has_decided:
            terminated = env_done & jnp.asarray(self.env.decided(env_state), bool)
            truncated = (at_limit | env_done) & ~terminated
        elif self.time_limit_is_truncation:
            truncated, terminated = at_limit, env_done & ~at_limit
        else:
            terminated, truncated = env_done, at_limit & ~env_done
        final_obs = self._team_obs(obs, env_state)
        won = (terminated | truncated) & (jnp.asarray(self.env.won(env_state), bool)
                                          if self.spec.has_wins else False)
        reset_state, reset_obs = self.reset(key_reset)
        done = terminated | truncated
        next_state = jax.tree.map(lambda r, c: jnp.where(done, r, c), reset_state,
                                  AdapterState(env_state, episode_step))
        next_obs = jax.tree.map(lambda r, c: jnp.where(done, r, c), reset_obs, final_obs)
        return next_state, TeamStep(next_obs, final_obs, reward, terminated, truncated,
                                    won)
