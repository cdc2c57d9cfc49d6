"""Host environments (MaMuJoCo, any PettingZoo ParallelEnv) as batched team arrays.

``HostTeamEnv`` describes a host env family member (its :class:`TeamSpec`, derived from one
probe instance) and creates :class:`HostVectorEnv` s: E environments stepped either in this
process (``workers=0``) or spread over W worker processes (``teamrl.envs.host_worker``) that
read actions from and write observations to shared memory. Each step costs one pipe message
per worker; the learner computes every environment's and agent's actions in one jitted call
(``teamrl.core.rollout.HostCollector``).

Determinism: environment i is reset with seed ``seed + i`` at the start and continues its own
random stream through later episodes, so results do not depend on how many workers share the
environments.

Faults: a worker that fails or dies, or that does not answer a command within ``step_timeout``
seconds (a hung env), stops the vector env with a :class:`HostEnvError` naming it; the workers
are then stopped, escalating to SIGKILL for one that ignores SIGTERM (as SDL-based envs do), so
the learner never waits on a hung worker at exit. Workers also die with the learner (Linux:
``PR_SET_PDEATHSIG``), and Ctrl-C interrupts any wait on them.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.connection import wait

import numpy as np

from teamrl.envs.host_base import HostEnvError, VectorEnvBase
from teamrl.envs.host_worker import (EnvRecipe, TeamBuffers, TeamLayout, build_adapters,
                                    worker_main)
from teamrl.envs.spec import TeamSpec


def default_workers(num_envs: int) -> int:
    """Worker processes for ``num_envs`` envs: one per core beyond the learner's, at least one
    (on 2 cores: 1 worker stepping all envs while the learner computes actions)."""
    return max(1, min(num_envs, (os.cpu_count() or 2) - 1))


def _describe_space(space, what: str):
    import gymnasium

    if isinstance(space, gymnasium.spaces.Discrete):
        return "discrete", int(space.n), None, None
    if isinstance(space, gymnasium.spaces.Box):
        return "continuous", int(np.prod(space.shape)), np.broadcast_to(
            space.low, space.shape).reshape(-1), np.broadcast_to(space.high,
                                                                 space.shape).reshape(-1)
    raise HostEnvError(f"{what}: unsupported action space {type(space).__name__}; valid: "
                       "Discrete or Box")


def _state_usable(env, discrete: bool, probe_steps: int) -> bool:
    """Whether ``env.state()`` works after a seeded reset and after each step of one episode
    of random actions (at most ``probe_steps`` steps). Some envs' state() fails once agents
    are removed (multiwalker's remove_on_fall, at the latest on its episode's last step), some
    shadow it with an attribute (rps): those get the concatenated observations instead. Only
    state() failing counts: an env whose reset or step fails fails where it is used."""
    def works() -> bool:
        try:
            np.asarray(env.state())
            return True
        except Exception:  # noqa: BLE001 - whatever state() raises, it is unusable
            return False

    rng = np.random.default_rng(0)
    try:
        observations, _ = env.reset(seed=0)
    except Exception:  # noqa: BLE001
        return True
    if not works():
        return False
    for _ in range(probe_steps):
        actions = {}
        for name in env.agents:
            space = env.action_space(name)
            if discrete:
                raw = observations.get(name)
                mask = raw.get("action_mask") if isinstance(raw, dict) else None
                choices = (np.flatnonzero(mask) if mask is not None and np.any(mask)
                           else np.arange(space.n))
                actions[name] = int(space.start + rng.choice(choices))
            else:
                low, high = (np.nan_to_num(b, posinf=1.0, neginf=-1.0)
                             for b in (space.low, space.high))
                actions[name] = rng.uniform(low, high).astype(space.dtype)
        try:
            observations, _, terminations, truncations, _ = env.step(actions)
        except Exception:  # noqa: BLE001
            return True
        if not works():
            return False
        if not env.agents or all(terminations.get(n, False) or truncations.get(n, False)
                                 for n in env.agents):
            return True
    return True


def inspect_env(env, env_id: str, agent_id: bool, team_reward: str, max_steps: int,
                state: str = "auto", probe_steps: int = 100) -> TeamLayout:
    """Read agent names, spaces and conventions from one (not yet reset) ParallelEnv.

    ``state``: the global state's source: "env" (``env.state()``), "concat" (the agents'
    observations concatenated, zeros for removed agents) or "auto" (env.state() when
    :func:`_state_usable` finds it works over ``probe_steps`` random steps)."""
    import gymnasium

    names = tuple(env.possible_agents)
    kinds, action_dims, lows, highs = [], [], [], []
    for name in names:
        kind, dim, low, high = _describe_space(env.action_space(name), f"{env_id} {name}")
        kinds.append(kind)
        action_dims.append(dim)
        lows.append(low)
        highs.append(high)
    if len(set(kinds)) != 1:
        raise HostEnvError(f"{env_id}: mixed action spaces {sorted(set(kinds))}; valid: all "
                           "Discrete or all Box")
    discrete = kinds[0] == "discrete"
    obs_key = mask_key = None
    obs_dims = []
    for name in names:
        space = env.observation_space(name)
        if isinstance(space, gymnasium.spaces.Dict):
            obs_key = "observation" if "observation" in space.spaces else None
            mask_key = "action_mask" if "action_mask" in space.spaces else None
            if obs_key is None:
                raise HostEnvError(f"{env_id}: Dict observation without an 'observation' "
                                   f"entry (keys {sorted(space.spaces)})")
            space = space.spaces[obs_key]
        obs_dims.append(int(np.prod(space.shape)))
    width = max(action_dims)

    def padded(bounds):
        return tuple(tuple(float(v) for v in np.pad(np.asarray(b, np.float64),
                                                     (0, width - len(b)))) for b in bounds)

    if state not in ("auto", "env", "concat"):
        raise HostEnvError(f"state={state!r} is not valid; valid: auto, env, concat")
    if state == "auto":
        state = "env" if _state_usable(env, discrete, probe_steps) else "concat"
    state_source, state_dim = state, sum(obs_dims)
    if state == "env":
        env.reset(seed=0)
        try:
            state_dim = int(np.asarray(env.state()).size)
        except Exception as err:  # noqa: BLE001
            raise HostEnvError(f"{env_id}: env.state() failed ({type(err).__name__}: {err}); "
                               "valid: state=concat or state=auto") from None
    if team_reward not in ("mean", "sum"):
        raise HostEnvError(f"team_reward={team_reward!r} is not valid; valid: mean, sum")
    return TeamLayout(
        agent_names=names, obs_dims=tuple(obs_dims),
        obs_dim=max(obs_dims) + (len(names) if agent_id else 0), state_dim=state_dim,
        discrete=discrete, action_dims=tuple(action_dims),
        action_low=() if discrete else padded(lows),
        action_high=() if discrete else padded(highs),
        agent_id=agent_id, max_steps=int(max_steps), team_reward=team_reward,
        state_source=state_source, obs_key=obs_key, mask_key=mask_key,
        metric_names=tuple(str(n) for n in getattr(env, "episode_metric_names", ())))


@contextlib.contextmanager
def _main_module_hidden():
    """Start spawned workers without re-running the user's ``__main__``: everything a worker
    needs is importable from teamrl and the recipe's module. Without this, a script lacking an
    ``if __name__ == "__main__":`` guard would be re-executed in every worker, and code fed on
    stdin could not start workers at all. Only read while ``Process.start()`` runs."""
    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__file__", "__spec__")
             if main is not None and name in main.__dict__}
    try:
        for name in saved:
            if name == "__spec__":
                main.__spec__ = None
            else:
                del main.__dict__[name]
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


class HostTeamEnv:
    """A host environment seen as a team: the static spec plus a factory of vector envs.

    Args:
        recipe: how to build one PettingZoo ParallelEnv (in any process).
        env_id: registry id.
        max_steps: the adapter's episode limit (truncation); 0 keeps only the env's own
            limit, in which case ``episode_limit`` must say how long episodes can last.
        episode_limit: the longest possible episode (the evaluation horizon).
        workers: default worker processes of vector envs (-1: ``default_workers``).
        step_timeout: seconds a worker (process or Ray actor) may take to answer one reset or
            step of its envs before the run stops as hung (starting the workers and building
            the envs gets 10x as long, at least 5 minutes).
        state: the global state's source, "auto", "env" or "concat" (see ``inspect_env``).
        worker_backend: "processes" (shared memory) or "ray" (Ray actors,
            :class:`teamrl.envs.host_ray.RayVectorEnv`, on the cluster at ``ray_address``).
    """

    is_host = True

    def __init__(self, recipe: EnvRecipe, env_id: str, agent_id: bool = False,
                 team_reward: str = "mean", max_steps: int = 0, episode_limit: int = 0,
                 workers: int = -1, worker_backend: str = "processes", ray_address: str = "",
                 step_timeout: float = 60.0, state: str = "auto"):
        self.recipe, self.workers, self.step_timeout = recipe, workers, float(step_timeout)
        self.worker_backend, self.ray_address = worker_backend, ray_address
        try:
            probe = recipe.build()
        except Exception as err:  # noqa: BLE001 - whatever the env raises, name it once
            raise HostEnvError(f"{env_id}: building the environment failed: "
                               f"{type(err).__name__}: {err}") from None
        try:
            self.layout = inspect_env(probe, env_id, agent_id, team_reward, max_steps, state)
        finally:
            probe.close()
        lay = self.layout
        self.spec = TeamSpec(
            env_id=env_id, agent_names=tuple(str(n) for n in lay.agent_names),
            obs_dims=lay.obs_dims, obs_dim=lay.obs_dim, state_dim=lay.state_dim,
            action_kind="discrete" if lay.discrete else "continuous",
            action_dims=lay.action_dims, action_low=lay.action_low,
            action_high=lay.action_high, max_steps=int(max_steps or episode_limit),
            agent_id=agent_id, has_wins="won" in lay.metric_names,
            episode_metrics=tuple(n for n in lay.metric_names if n != "won"))

    def vector(self, num_envs: int, workers: int | None = None) -> "HostVectorEnv":
        """``num_envs`` envs over ``workers`` workers (default: the env's ``workers``) of the
        env's ``worker_backend``; the same interface either way."""
        workers = self.workers if workers is None else workers
        if self.worker_backend == "ray":
            from teamrl.envs.host_ray import RayVectorEnv

            return RayVectorEnv(self.recipe, self.layout, num_envs, workers, self.ray_address,
                                step_timeout=self.step_timeout)
        if workers < 0:
            workers = default_workers(num_envs)
        return HostVectorEnv(self.recipe, self.layout, num_envs, workers, self.step_timeout)


class HostVectorEnv(VectorEnvBase):
    """E host environments, in-process (``workers=0``) or over W worker processes.

    ``buffers`` holds the team arrays: ``obs/state/avail/alive`` (the observation to act on),
    ``final_*`` (the observation reached by the last step, before any reset), ``action``
    (written by the learner before :meth:`step`), ``reward``, ``terminated``, ``truncated``.
    Use as a context manager (or call :meth:`close`): workers are stopped on exit. In-process
    envs (``workers=0``) cannot be timed out: only a worker process can be abandoned.
    """

    def __init__(self, recipe: EnvRecipe, layout: TeamLayout, num_envs: int, workers: int,
                 step_timeout: float = 60.0):
        self.layout, self.num_envs = layout, num_envs
        self.workers = min(max(workers, 0), num_envs)
        self.step_timeout = float(step_timeout)
        self._processes, self._conns, self._adapters = [], [], []
        self._slices = []
        self._busy = set()  # workers owing a reply: close() does not wait on them
        self.closed = False
        if self.workers == 0:
            self.buffers = TeamBuffers(layout, num_envs)
            self._adapters = build_adapters(recipe, layout, self.buffers, range(num_envs))
            return
        ctx = mp.get_context("spawn")  # never fork a process that runs XLA threads
        raw = ctx.RawArray("b", TeamBuffers.size(layout, num_envs))
        self.buffers = TeamBuffers(layout, num_envs, raw)
        self._slices = slices = np.array_split(np.arange(num_envs), self.workers)
        try:
            for w, indices in enumerate(slices):
                parent, child = ctx.Pipe()
                process = ctx.Process(target=worker_main, name=f"teamrl-env-worker-{w}",
                                      args=(w, recipe, layout, raw, num_envs,
                                            [int(i) for i in indices], child), daemon=True)
                with _main_module_hidden():
                    process.start()
                child.close()
                self._processes.append(process)
                self._conns.append(parent)
            # Starting Python, importing and building the envs may take long on a busy machine.
            self._gather(max(10 * self.step_timeout, 300.0))
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    # ------------------------------------------------------------------- communication
    def _gather(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for every worker's reply; raise HostEnvError naming a
        failed, dead or hung one (and stop the workers)."""
        pending = dict(zip(self._conns, range(len(self._conns))))
        self._busy = set(pending.values())
        deadline = time.monotonic() + timeout
        errors = []
        while pending:
            # A bounded wait, retried: Ctrl-C (KeyboardInterrupt) ends it at once.
            ready = wait(list(pending), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                for w in sorted(pending.values()):
                    envs = self._slices[w]
                    errors.append(f"env worker {w} (pid {self._processes[w].pid}, envs "
                                  f"{envs[0]}...{envs[-1]}) did not answer within "
                                  f"{timeout:g} s (step_timeout={self.step_timeout:g}): "
                                  "the env is hung or too slow; stopped it")
                break
            for conn in ready:
                w = pending.pop(conn)
                self._busy.discard(w)
                try:
                    status, detail = conn.recv()
                except (EOFError, OSError):
                    process = self._processes[w]
                    process.join(timeout=1.0)
                    errors.append(f"env worker {w} (pid {process.pid}) died with exit code "
                                  f"{process.exitcode}")
                    continue
                if status == "error":
                    errors.append(f"env worker failed: {detail.rstrip()}")
        if errors:
            self.close()
            raise HostEnvError("; ".join(errors))

    def _broadcast(self, command: str, argument=None) -> None:
        if self.closed:
            raise HostEnvError("the host environments are closed")
        for w, conn in enumerate(self._conns):
            try:
                conn.send((command, argument))
            except (BrokenPipeError, OSError):
                pass  # reported by _gather with the worker's exit code
        self._gather(self.step_timeout)

    # ----------------------------------------------------------------------------- API
    def reset(self, seeds) -> None:
        """Reset every env; ``seeds``: [E] ints (or None entries to continue the stream)."""
        seeds = [None if s is None else int(s) for s in seeds]
        if self.workers == 0:
            try:
                for adapter in self._adapters:
                    adapter.reset_seeds(dict(enumerate(seeds)))
            except Exception as err:
                raise HostEnvError(f"host env reset failed: {type(err).__name__}: {err}") \
                    from err
        else:
            self._broadcast("reset", dict(enumerate(seeds)))

    def step(self, action: np.ndarray) -> None:
        """Step all envs with ``action`` [E, N] int or [E, N, A] float; results are in
        ``buffers`` afterwards."""
        self.buffers.action[...] = action
        if self.workers == 0:
            try:
                for adapter in self._adapters:
                    adapter.step()
            except Exception as err:
                raise HostEnvError(f"host env step failed: {type(err).__name__}: {err}") \
                    from err
        else:
            self._broadcast("step")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for w, process in enumerate(self._processes):
            if w not in self._busy:  # an idle worker exits on "close"; a busy one may be hung
                process.join(timeout=5.0)
            if process.is_alive():
                process.terminate()
                process.join(timeout=1.0)
            if process.is_alive():
                # SIGTERM ignored (SDL envs do): without SIGKILL, multiprocessing's exit
                # handler would join this process forever and the learner never exit.
                process.kill()
                process.join(timeout=5.0)
        for conn in self._conns:
            conn.close()
        for adapter in self._adapters:
            adapter.close()
