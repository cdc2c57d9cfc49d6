"""A PettingZoo ParallelEnv that reports per-episode metrics (``pettingzoo/metric_fixtures``),
for the episode-metric path of the host runner without gfootball: every episode lasts 3
steps; episode k of an env has ``won`` = k % 2, ``hits`` = 3 and ``rate`` = 0.5 for odd k,
NaN (undefined) for even k."""

from __future__ import annotations

import gymnasium
import numpy as np
from pettingzoo import ParallelEnv


class Scored(ParallelEnv):
    metadata = {"name": "scored_v0"}
    episode_metric_names = ("won", "hits", "rate")

    def __init__(self):
        self.possible_agents = ["a0", "a1"]
        self.agents = []
        self.episode = -1
        self.t = 0

    def observation_space(self, agent):
        return gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)

    def action_space(self, agent):
        return gymnasium.spaces.Discrete(2)

    def _obs(self):
        return {a: np.array([self.t, self.episode], np.float32) for a in self.possible_agents}

    def reset(self, seed=None, options=None):
        self.episode += 1
        self.t = 0
        self.agents = list(self.possible_agents)
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        self.t += 1
        done = self.t >= 3
        if done:
            self.agents = []
        names = self.possible_agents
        return (self._obs(), {a: 1.0 for a in names}, {a: done for a in names},
                {a: False for a in names}, {a: {} for a in names})

    def episode_metrics(self):
        odd = self.episode % 2 == 1
        return {"won": float(odd), "hits": float(self.t), "rate": 0.5 if odd else float("nan")}


def parallel_env():
    return Scored()
