"""Small PettingZoo ParallelEnvs for the host-environment tests (importable by worker
processes as ``pettingzoo/host_fixtures``: pytest puts tests/ on sys.path and spawned
workers inherit it)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import gymnasium
import numpy as np
from pettingzoo import ParallelEnv


class Relay(ParallelEnv):
    """Three agents with observation widths 2, 3, 4 and 3 discrete actions; action 2 is
    unavailable on odd steps. Agent ``a2`` terminates at step 3 (leaves early); the
    episode is truncated by the env at step 6. Reward of each agent: its action + the step
    index; observations carry the step and a seeded random number.

    Faults, counted in steps of this instance: ``crash_at`` raises; ``hang_at`` hangs forever
    in a worker process, ignoring SIGTERM (after writing ``"<pid>"`` to ``hang_file`` if
    given, so a test knows the hang began); ``eval_crash_at`` raises only in an instance
    reset with an evaluation seed (teamrl's evaluation envs start from seeds >= 2**30,
    training envs far below)."""

    metadata = {"name": "relay_v0"}

    def __init__(self, leave_at: int = 3, horizon: int = 6, crash_at: int = 0,
                 hang_at: int = 0, hang_file: str = "", eval_crash_at: int = 0):
        self.possible_agents = ["a0", "a1", "a2"]
        self.leave_at, self.horizon, self.crash_at = leave_at, horizon, crash_at
        self.hang_at, self.hang_file, self.eval_crash_at = hang_at, hang_file, eval_crash_at
        self.evaluating = False
        self._obs_spaces = {
            a: gymnasium.spaces.Dict({
                "observation": gymnasium.spaces.Box(-np.inf, np.inf, (2 + i,), np.float32),
                "action_mask": gymnasium.spaces.MultiBinary(3)})
            for i, a in enumerate(self.possible_agents)}
        self.rng = np.random.default_rng(0)
        self.total_steps = 0

    def observation_space(self, agent):
        return self._obs_spaces[agent]

    def action_space(self, agent):
        return gymnasium.spaces.Discrete(3)

    def _observe(self):
        mask = np.array([1, 1, self.t % 2 == 0], np.int8)
        return {a: {"observation": np.full(2 + i, self.t + self.noise, np.float32),
                    "action_mask": mask}
                for i, a in enumerate(self.possible_agents) if a in self.agents}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
            self.evaluating = seed >= 2**30
        self.agents = list(self.possible_agents)
        self.t = 0
        self.noise = float(self.rng.random())
        return self._observe(), {a: {} for a in self.agents}

    def step(self, actions):
        assert set(actions) == set(self.agents), (sorted(actions), self.agents)
        self.total_steps += 1
        if self.crash_at and self.total_steps >= self.crash_at:
            raise RuntimeError("relay env exploded on purpose")
        if self.eval_crash_at and self.evaluating and self.total_steps >= self.eval_crash_at:
            raise RuntimeError("relay eval env exploded on purpose")
        # Only in worker processes: the learner's own instances (the probe of state()) step too.
        if (self.hang_at and self.total_steps >= self.hang_at
                and multiprocessing.parent_process() is not None):
            if self.hang_file:
                with open(self.hang_file + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(self.hang_file + ".tmp", self.hang_file)  # never seen half-written
            # A hung simulator that also ignores SIGTERM, as SDL-based (pygame) envs do.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(3600)
        self.t += 1
        rewards = {a: float(actions[a]) + self.t for a in self.agents}
        terminations = {a: a == "a2" and self.t >= self.leave_at for a in self.agents}
        truncations = {a: self.t >= self.horizon for a in self.agents}
        observations = self._observe()
        infos = {a: {} for a in self.agents}
        self.agents = [a for a in self.agents if not (terminations[a] or truncations[a])]
        return observations, rewards, terminations, truncations, infos

    def state(self):
        return np.array([self.t, self.noise], np.float32)


def parallel_env(**kwargs):
    return Relay(**kwargs)
