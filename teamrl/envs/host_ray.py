"""Host environments on Ray actors (``worker_backend=ray``): env-stepping capacity that grows
with a Ray cluster, behind the interface of :class:`teamrl.envs.host_env.HostVectorEnv`.

Each actor owns a contiguous slice of the E environments, built from the same
:class:`EnvRecipe` and written by the same :class:`TeamAdapter` as in a local worker process,
into team buffers of its own. Per step the learner sends each actor the actions of its slice
and receives the slice's rows of every team array (observations, final observations, rewards,
terminations, truncations), all actors stepping in parallel; the rows land in the learner's
``buffers``, where the rollout code reads them as it reads the shared-memory buffers of local
workers. Environment e is seeded exactly as with local workers, so a run gives the same
results with either backend (tested). What an actor raises, or an actor (or its node) dying,
stops the run with a HostEnvError naming the actor and its envs; so does an actor that does not
answer within ``step_timeout`` seconds (a hung env), which is then killed.
"""

from __future__ import annotations

import time

import numpy as np

from teamrl.envs.host_base import HostEnvError, VectorEnvBase
from teamrl.envs.host_worker import EnvRecipe, TeamAdapter, TeamBuffers, TeamLayout

# The rows an actor sends back after reset and step (everything but the actions).
RETURNED = ("obs", "state", "avail", "alive", "final_obs", "final_state", "final_avail",
            "final_alive", "reward", "terminated", "truncated", "episode_metrics")


class EnvSlice:
    """The body of one Ray actor: environments ``env_indices`` of ``num_envs``."""

    def __init__(self, recipe: EnvRecipe, layout: TeamLayout, num_envs: int, env_indices: list):
        # Full-size private buffers keep TeamAdapter's row indexing; only this slice's rows
        # are used or sent.
        self.buffers = TeamBuffers(layout, num_envs)
        self.rows = np.asarray(env_indices)
        self.adapters = [TeamAdapter(recipe.build(), layout, self.buffers, int(e))
                         for e in env_indices]

    def ready(self) -> bool:
        return True

    def _slice(self) -> dict:
        return {name: getattr(self.buffers, name)[self.rows[0]:self.rows[-1] + 1].copy()
                for name in RETURNED}

    def reset(self, seeds: dict) -> dict:
        for adapter in self.adapters:
            adapter.reset(seeds[adapter.index])
        return self._slice()

    def step(self, actions: np.ndarray) -> dict:
        self.buffers.action[self.rows[0]:self.rows[-1] + 1] = actions
        for adapter in self.adapters:
            adapter.step()
        return self._slice()

    def close(self) -> None:
        for adapter in self.adapters:
            adapter.close()


class RayVectorEnv(VectorEnvBase):
    """E host environments over W Ray actors (``workers=-1``: one per CPU of the cluster
    beyond one, at most E). Same interface as HostVectorEnv: ``buffers``, ``reset``,
    ``step``, ``observation``, ``close``, context manager."""

    def __init__(self, recipe: EnvRecipe, layout: TeamLayout, num_envs: int, workers: int,
                 address: str = "", step_timeout: float = 60.0):
        from teamrl.scale.ray_cluster import connect

        self.ray = ray = connect(address)
        if workers < 1:
            workers = max(1, int(ray.cluster_resources().get("CPU", 2)) - 1)
        self.layout, self.num_envs = layout, num_envs
        self.workers = min(workers, num_envs)
        self.buffers = TeamBuffers(layout, num_envs)
        self.step_timeout = float(step_timeout)
        self.closed = False
        self._hung = set()  # actors that did not answer: close() kills them without asking
        self.slices = [s for s in np.array_split(np.arange(num_envs), self.workers)]
        actor = ray.remote(num_cpus=1, max_restarts=0)(EnvSlice)
        self.actors = [actor.remote(recipe, layout, num_envs, [int(i) for i in s])
                       for s in self.slices]
        # An env that cannot be built fails here, naming its actor, not at the first step.
        self._gather([a.ready.remote() for a in self.actors],
                     max(10 * self.step_timeout, 300.0))

    @property
    def pids(self) -> list[int]:
        return []  # actors live in Ray's worker processes, possibly on other machines

    def _gather(self, refs: list, timeout: float | None = None) -> list:
        """Results of one call per actor, all within ``timeout`` s (default step_timeout); a
        HostEnvError naming every failed or hung actor."""
        timeout = self.step_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        results, errors = [], []
        for w, ref in enumerate(refs):
            envs = self.slices[w]
            try:
                results.append(self.ray.get(ref, timeout=max(0.0, deadline - time.monotonic())))
            except self.ray.exceptions.GetTimeoutError:
                self._hung.add(w)
                errors.append(f"env actor {w} (envs {envs[0]}...{envs[-1]}) did not answer "
                              f"within {timeout:g} s (step_timeout={self.step_timeout:g}): "
                              "the env is hung or too slow; killed it")
            except self.ray.exceptions.RayError as err:
                errors.append(f"env actor {w} (envs {envs[0]}...{envs[-1]}) failed: "
                              f"{str(err).strip()}")
        if errors:
            self.close()
            raise HostEnvError("; ".join(errors))
        return results

    def _store(self, slices: list) -> None:
        for rows, values in zip(self.slices, slices):
            for name in RETURNED:
                getattr(self.buffers, name)[rows[0]:rows[-1] + 1] = values[name]

    def reset(self, seeds) -> None:
        """Reset every env; ``seeds``: [E] ints (or None entries to continue the stream)."""
        if self.closed:
            raise HostEnvError("the host environments are closed")
        seeds = {e: None if s is None else int(s) for e, s in enumerate(seeds)}
        self._store(self._gather([a.reset.remote(seeds) for a in self.actors]))

    def step(self, action: np.ndarray) -> None:
        """Step all envs with ``action`` [E, N] int or [E, N, A] float; results are in
        ``buffers`` afterwards."""
        if self.closed:
            raise HostEnvError("the host environments are closed")
        self.buffers.action[...] = action
        action = self.buffers.action
        self._store(self._gather([a.step.remote(action[rows[0]:rows[-1] + 1])
                                  for a, rows in zip(self.actors, self.slices)]))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for w, actor in enumerate(self.actors):
            try:
                if w not in self._hung:
                    self.ray.get(actor.close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a dead actor has nothing left to close
                pass
            self.ray.kill(actor)
