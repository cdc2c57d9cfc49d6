"""Any registered Gymnasium environment as a one-agent PettingZoo ParallelEnv, so it runs
through the host runner as a team of one (``gymnasium/<id>``).

Imported by worker processes: gymnasium and NumPy only, no JAX.
"""

from __future__ import annotations

import numpy as np

AGENT = "agent_0"


class SingleAgentTeam:
    """``gymnasium.make(env_id, **kwargs)`` seen as a ParallelEnv with one agent.

    The observation must be a Box (flattened); the action space a Box or Discrete. The
    global state is the observation. Termination and truncation are passed through as
    they are, so Gymnasium's TimeLimit truncations stay truncations (bootstrapped).
    """

    metadata = {"name": "gymnasium_single_agent"}

    def __init__(self, env_id: str, render_mode: str | None = None, **kwargs):
        import gymnasium

        self.env = gymnasium.make(env_id, render_mode=render_mode, **kwargs)
        if not isinstance(self.env.observation_space, gymnasium.spaces.Box):
            raise ValueError(f"gymnasium/{env_id}: observation space "
                             f"{type(self.env.observation_space).__name__} is not supported; "
                             "valid: Box")
        if not isinstance(self.env.action_space, (gymnasium.spaces.Box,
                                                  gymnasium.spaces.Discrete)):
            raise ValueError(f"gymnasium/{env_id}: action space "
                             f"{type(self.env.action_space).__name__} is not supported; "
                             "valid: Box or Discrete")
        self.possible_agents = [AGENT]
        self.agents: list[str] = []
        self._obs = np.zeros(self.env.observation_space.shape, np.float32)

    @property
    def unwrapped(self):
        return self.env.unwrapped

    def observation_space(self, agent):
        return self.env.observation_space

    def action_space(self, agent):
        return self.env.action_space

    def reset(self, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = np.asarray(obs)
        self.agents = [AGENT]
        return {AGENT: self._obs}, {AGENT: info}

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions[AGENT])
        self._obs = np.asarray(obs)
        if terminated or truncated:
            self.agents = []
        return ({AGENT: self._obs}, {AGENT: float(reward)}, {AGENT: bool(terminated)},
                {AGENT: bool(truncated)}, {AGENT: info})

    def state(self):
        return self._obs

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


def make_parallel_env(env_id: str, kwargs: dict | None = None, render_mode: str | None = None):
    return SingleAgentTeam(env_id, render_mode=render_mode, **(kwargs or {}))
