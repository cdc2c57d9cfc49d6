"""Single-agent gymnax environments as teams of one.

``GymnaxAgentEnv`` presents a gymnax ``Environment`` (``gymnax.make(name)``) through the
JaxMARL ``MultiAgentEnv`` API that ``JaxTeamEnv`` adapts: one agent, dict observations,
actions, rewards and dones, and ``max_steps`` (gymnax's ``max_steps_in_episode``) as the time
limit. It calls gymnax's ``reset_env`` / ``step_env`` with its env params; the adapter counts
steps, applies the time limit and auto-resets (splitting the step key exactly as gymnax's own
``step`` does, so a team trajectory equals gymnax's for the same keys).

Termination vs truncation: gymnax >= 1.0 reports only the game's own ending from ``step_env``
(``is_terminated``) and the time limit separately (``is_truncated``), so ``dones`` here are
natural terminations only. The adapter must then be built with
``time_limit_is_truncation=False``: that branch keeps an env-reported ending as a termination
and marks a step at the limit as truncated only when the env did not end by itself -- the
order gymnax / Gymnasium use (the registry does this).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import teamrl.envs.quiet_jaxmarl  # noqa: F401  (before any jaxmarl import)
from jaxmarl.environments import spaces

AGENT = "agent_0"


def _jaxmarl_action_space(space):
    """gymnax action space -> the JaxMARL space class the adapter understands."""
    kind = type(space).__name__
    if kind == "Discrete":
        return spaces.Discrete(int(space.n))
    if kind == "Box":
        shape = tuple(space.shape)
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape)
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape)
        return spaces.Box(low, high, shape, jnp.float32)
    raise ValueError(f"gymnax action space {kind} is not supported; valid: Discrete, Box")


class GymnaxAgentEnv:
    """A gymnax env as a one-agent JaxMARL-style env.

    Args:
        name: gymnax env name, e.g. ``CartPole-v1``.
        max_steps: episode time limit; None keeps gymnax's ``max_steps_in_episode``
            (otherwise the env params are changed too, so gymnax's own ``is_truncated`` agrees).
    """

    def __init__(self, name: str, max_steps: int | None = None):
        import gymnax

        env, params = gymnax.make(name)
        if max_steps is not None:
            params = params.replace(max_steps_in_episode=int(max_steps))
        self.name = name
        self.gymnax_env, self.params = env, params
        self.agents = [AGENT]
        self.num_agents = 1
        self.max_steps = int(params.max_steps_in_episode)
        gymnax_action = env.action_space(params)
        self._action_shape = tuple(gymnax_action.shape)
        self._action_space = _jaxmarl_action_space(gymnax_action)
        obs_shape = jax.eval_shape(env.reset_env, jax.random.PRNGKey(0), params)[0].shape
        width = int(np.prod(obs_shape))
        self._obs_space = spaces.Box(-np.inf, np.inf, (width,), jnp.float32)

    def action_space(self, agent: str = AGENT):
        return self._action_space

    def observation_space(self, agent: str = AGENT):
        return self._obs_space

    def _obs(self, obs) -> dict:
        return {AGENT: jnp.ravel(obs).astype(jnp.float32)}

    def reset(self, key: jax.Array):
        obs, state = self.gymnax_env.reset_env(key, self.params)
        return self._obs(obs), state

    def step_env(self, key: jax.Array, state, actions: dict):
        """One gymnax step (no time limit, no reset: the adapter does both).

        Returns (obs, state, rewards, dones, info) with dones = natural termination only.
        """
        action = actions[AGENT]
        if isinstance(self._action_space, spaces.Box):
            action = jnp.reshape(action, self._action_shape)
        obs, state, reward, done, info = self.gymnax_env.step_env(key, state, action,
                                                                  self.params)
        done = jnp.asarray(done, bool)
        rewards = {AGENT: jnp.asarray(reward, jnp.float32).reshape(())}
        return self._obs(obs), state, rewards, {AGENT: done, "__all__": done}, info
