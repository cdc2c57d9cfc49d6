"""Host environments as team arrays, NumPy only (imported by worker processes, so no JAX here).

A *host* environment runs outside XLA (MuJoCo's C engine, any PettingZoo ParallelEnv). Each
one is wrapped in a :class:`TeamAdapter` that writes its observations straight into rows of
shared arrays (:class:`TeamBuffers`) laid out as DESIGN.md's team arrays; worker processes
own slices of the environments and are driven by one-word commands over a pipe, while
observations and actions travel through shared memory (nothing is pickled per step).

Agents that leave an episode early (PettingZoo envs whose ``env.agents`` shrinks): from the
step after they leave, their observation row is zero, ``alive`` is False (so every algorithm
masks them out of its policy losses; critics see them death-masked), their actions are not
sent to the env, and their reward counts as 0. The episode ends when no agent is left or every remaining agent is done; it is a
truncation (bootstrapped) if any agent reported truncation at that step or the adapter's
``max_steps`` was reached, otherwise a termination.
"""

from __future__ import annotations

import importlib
import signal
import traceback
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EnvRecipe:
    """How to build one environment in any process: ``module.function(**kwargs)`` must return
    a PettingZoo ``ParallelEnv``. Picklable, so worker processes build their own envs."""

    module: str
    function: str
    kwargs: dict = field(default_factory=dict)
    # Optional: ``module.batch_function(num_envs=K, **kwargs)`` builds K envs as one batch env
    # (see BatchTeamAdapter) that a worker steps with one call per step; ``function`` still
    # builds single envs (probes, Ray actors, rendering).
    batch_function: str = ""

    def build(self):
        return getattr(importlib.import_module(self.module), self.function)(**self.kwargs)

    def build_batch(self, num_envs: int):
        return getattr(importlib.import_module(self.module), self.batch_function)(
            num_envs=num_envs, **self.kwargs)


@dataclass(frozen=True)
class TeamLayout:
    """Shapes and conventions shared by the adapters and the buffers (plain data, picklable).

    N agents, D padded obs width (incl. agent id), S state width, A padded action width.
    """

    agent_names: tuple
    obs_dims: tuple
    obs_dim: int
    state_dim: int
    discrete: bool
    action_dims: tuple
    action_low: tuple
    action_high: tuple
    agent_id: bool
    max_steps: int           # adapter time limit (truncation); 0 = only the env's own
    team_reward: str         # "mean" or "sum"
    state_source: str        # "env" (env.state()) or "concat" (concatenated observations,
                             # zeros for removed agents: for envs whose state() is unusable)
    obs_key: str | None      # Dict observations: the key holding the observation vector
    mask_key: str | None     # Dict observations: the key holding the action mask
    # Per-episode metrics the env reports at each episode's end (its ``episode_metric_names``
    # and ``episode_metrics()``, e.g. football's goals and passes); "won" gives win rates.
    metric_names: tuple = ()

    @property
    def n_agents(self) -> int:
        return len(self.agent_names)

    @property
    def action_dim(self) -> int:
        return max(self.action_dims)

    def buffer_fields(self, num_envs: int) -> list[tuple[str, tuple, str]]:
        """(name, shape, dtype) of every shared array for ``num_envs`` environments."""
        E, N, D, S, A = num_envs, self.n_agents, self.obs_dim, self.state_dim, self.action_dim
        obs = [("obs", (E, N, D), "float32"), ("state", (E, S), "float32"),
               ("avail", (E, N, A), "bool"), ("alive", (E, N), "bool")]
        return ([(name, shape, dtype) for name, shape, dtype in obs]
                + [("final_" + name, shape, dtype) for name, shape, dtype in obs]
                + [("action", (E, N) if self.discrete else (E, N, A),
                    "int32" if self.discrete else "float32"),
                   ("reward", (E,), "float32"), ("terminated", (E,), "bool"),
                   ("truncated", (E,), "bool"),
                   # Written when an episode ends (terminated | truncated), NaN if unknown.
                   ("episode_metrics", (E, max(len(self.metric_names), 1)), "float32")])


class TeamBuffers:
    """NumPy views of the shared arrays of ``TeamLayout.buffer_fields`` over one flat byte
    buffer (a ``multiprocessing.RawArray`` shared with the workers, or a private bytearray)."""

    def __init__(self, layout: TeamLayout, num_envs: int, raw=None):
        fields = layout.buffer_fields(num_envs)
        offsets, total = [], 0
        for _, shape, dtype in fields:
            offsets.append(total)
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            total += -(-size // 8) * 8  # 8-byte aligned
        self.nbytes = max(total, 8)
        self.raw = raw if raw is not None else bytearray(self.nbytes)
        memory = np.frombuffer(self.raw, dtype=np.uint8, count=self.nbytes)
        for (name, shape, dtype), offset in zip(fields, offsets):
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            setattr(self, name, memory[offset:offset + size].view(dtype).reshape(shape))

    @staticmethod
    def size(layout: TeamLayout, num_envs: int) -> int:
        return TeamBuffers(layout, num_envs).nbytes


def split_observation(layout: TeamLayout, raw_obs):
    """(observation vector, action mask or None) of one agent's raw observation."""
    if layout.obs_key is not None:
        mask = raw_obs.get(layout.mask_key) if layout.mask_key is not None else None
        return np.asarray(raw_obs[layout.obs_key]).reshape(-1), mask
    return np.asarray(raw_obs).reshape(-1), None


class TeamAdapter:
    """One PettingZoo ParallelEnv writing into row ``index`` of shared team buffers.

    The per-step path is plain Python over cached row views: with MuJoCo stepping in tens of
    microseconds, small NumPy calls would otherwise cost as much as the physics.
    """

    def __init__(self, env, layout: TeamLayout, buffers: TeamBuffers, index: int):
        self.env, self.layout, self.buffers, self.index = env, layout, buffers, index
        self.episode_step = 0
        self.names = list(layout.agent_names)
        self.alive = [True] * layout.n_agents
        # Row views of this env in every shared array: {"": {...}, "final_": {...}}.
        self.rows = {p: {n: getattr(buffers, p + n)[index] for n in ("obs", "state", "avail",
                                                                     "alive")}
                     for p in ("", "final_")}
        self.action_row = buffers.action[index]
        self.id_columns = slice(layout.obs_dim - layout.n_agents, layout.obs_dim)
        self.eye = np.eye(layout.n_agents, dtype=np.float32)
        if not layout.discrete:
            self.low = np.asarray(layout.action_low, np.float32)
            self.high = np.asarray(layout.action_high, np.float32)
        self.mean_reward = layout.team_reward == "mean"

    # ------------------------------------------------------------------------- packing
    def _write(self, prefix: str, observations: dict, alive: list) -> None:
        """Write one observation (``prefix`` "" or "final_") of this env into the buffers."""
        lay, row = self.layout, self.rows[prefix]
        obs, avail = row["obs"], row["avail"]
        obs.fill(0.0)
        avail.fill(False)
        for i, name in enumerate(self.names):
            dim, width = lay.obs_dims[i], lay.action_dims[i]
            raw = observations.get(name) if alive[i] else None
            if raw is None:
                avail[i, :width] = True  # dead agents: any valid mask, their samples are masked
                continue
            vector, mask = split_observation(lay, raw)
            obs[i, :dim] = vector
            avail[i, :width] = True if mask is None else np.asarray(mask, bool)[:width]
        if lay.agent_id:
            obs[:, self.id_columns] = self.eye
        if lay.state_source == "env":
            try:
                state = self.env.state()
            except Exception as err:  # noqa: BLE001 - the probe at start missed this case
                raise RuntimeError(f"env.state() failed ({type(err).__name__}: {err}); set the "
                                   "env option state=concat to build the global state from "
                                   "the agents' observations") from err
            row["state"][:] = np.asarray(state).reshape(-1)
        else:
            row["state"][:] = np.concatenate([obs[i, :d] for i, d in enumerate(lay.obs_dims)])
        row["alive"][:] = alive

    # ----------------------------------------------------------------------------- API
    def reset_seeds(self, seeds: dict) -> None:
        """:meth:`reset` with ``seeds[index]`` ({env index: seed or None})."""
        self.reset(seeds[self.index])

    def reset(self, seed: int | None) -> None:
        """Start an episode (seeded if ``seed`` is given); writes the next observation."""
        observations, _ = self.env.reset(seed=seed)
        self.episode_step = 0
        self.alive = [n in observations for n in self.names]
        self._write("", observations, self.alive)

    def step(self) -> None:
        """Step with this env's row of ``buffers.action``; write reward, flags, the final
        observation and the next one (after an automatic reset when the episode ended)."""
        lay, b, e, names, alive = self.layout, self.buffers, self.index, self.names, self.alive
        if lay.discrete:
            actions = {n: int(self.action_row[i]) for i, n in enumerate(names) if alive[i]}
        else:
            clipped = np.clip(self.action_row, self.low, self.high)
            actions = {n: clipped[i, :lay.action_dims[i]] for i, n in enumerate(names)
                       if alive[i]}
        observations, rewards, terminations, truncations, _ = self.env.step(actions)
        self.episode_step += 1
        total = sum(float(rewards.get(n, 0.0)) for n in names)
        b.reward[e] = total / len(names) if self.mean_reward else total
        truncated_any = any(truncations.get(n, False) for n in names)
        finished = [bool(terminations.get(n, False)) or bool(truncations.get(n, False))
                    for n in names]
        over = not self.env.agents or not any(a and not f for a, f in zip(alive, finished))
        at_limit = lay.max_steps > 0 and self.episode_step >= lay.max_steps
        # A terminal state is never bootstrapped, even when it coincides with a time limit.
        terminated = over and not truncated_any
        b.terminated[e] = terminated
        b.truncated[e] = (over or at_limit) and not terminated
        # The final observation: every agent that acted this step is still "alive" in it.
        self._write("final_", observations, alive)
        if over or at_limit:
            if lay.metric_names:
                values = self.env.episode_metrics()
                b.episode_metrics[e] = [values.get(n, np.nan) for n in lay.metric_names]
            self.reset(None)
            return
        self.alive = [a and not f for a, f in zip(alive, finished)]
        now, final = self.rows[""], self.rows["final_"]
        for name in ("obs", "state", "avail"):
            now[name][:] = final[name]
        now["alive"][:] = self.alive
        for i, a in enumerate(self.alive):
            if not a:  # left this step: zero observation from now on (agent id kept)
                now["obs"][i, :lay.obs_dims[i]] = 0.0
        if lay.state_source == "concat" and not all(self.alive):  # ... and in the state
            now["state"][:] = np.concatenate([now["obs"][i, :d]
                                              for i, d in enumerate(lay.obs_dims)])

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


class BatchTeamAdapter:
    """A batch env of K envs writing into rows ``indices`` (contiguous) of shared team
    buffers: one call steps all K, and every array is written K rows at a time.

    The batch env (``EnvRecipe.build_batch``) has ``reset(j, seed)`` (env j < K; seed None
    continues its random stream), ``step(actions [K, N, A] float32) -> (reward [K],
    terminated [K], truncated [K])``, ``observe() -> ([N] x [K, obs_dims[i]], state [K, S])``,
    ``close()``, and ``episode_metrics(j) -> dict`` if the layout names metrics. Its agents all
    act until their env's episode ends (none leaves early, no action masks), so the rows equal
    what TeamAdapter writes for the same envs as ParallelEnvs (every agent gets the env's
    reward, as MaMuJoCo gives it).
    """

    def __init__(self, env, layout: TeamLayout, buffers: TeamBuffers, indices):
        indices = [int(i) for i in indices]
        if indices != list(range(indices[0], indices[0] + len(indices))):
            raise ValueError(f"a batch env needs contiguous rows, got {indices}")
        self.env, self.layout, self.buffers, self.indices = env, layout, buffers, indices
        self.rows = slice(indices[0], indices[-1] + 1)
        self.episode_step = np.zeros(len(indices), np.int64)
        lay = layout
        self.low = np.asarray(lay.action_low, np.float32)
        self.high = np.asarray(lay.action_high, np.float32)
        self.avail = np.zeros((lay.n_agents, lay.action_dim), bool)
        for i, width in enumerate(lay.action_dims):
            self.avail[i, :width] = True
        self.id_columns = slice(lay.obs_dim - lay.n_agents, lay.obs_dim)
        self.eye = np.eye(lay.n_agents, dtype=np.float32)

    def _write(self, prefix: str) -> None:
        """Write the batch's current observation into the ``prefix`` ("" or "final_") rows."""
        lay, b, rows = self.layout, self.buffers, self.rows
        observations, state = self.env.observe()
        obs = getattr(b, prefix + "obs")[rows]
        obs.fill(0.0)
        for i, values in enumerate(observations):
            obs[:, i, :lay.obs_dims[i]] = values
        if lay.agent_id:
            obs[:, :, self.id_columns] = self.eye
        getattr(b, prefix + "state")[rows] = state
        getattr(b, prefix + "avail")[rows] = self.avail
        getattr(b, prefix + "alive")[rows] = True

    def reset_seeds(self, seeds: dict) -> None:
        """Start an episode in every env, env ``e`` seeded with ``seeds[e]`` (or None)."""
        for j, e in enumerate(self.indices):
            self.env.reset(j, seeds[e])
        self.episode_step[:] = 0
        self._write("")

    def step(self) -> None:
        """Step every env with its rows of ``buffers.action``; write rewards, flags, the final
        observations and the next ones (after automatic resets of ended episodes)."""
        lay, b, rows = self.layout, self.buffers, self.rows
        reward, terminated, truncated = self.env.step(
            np.clip(b.action[rows], self.low, self.high))
        self.episode_step += 1
        total = np.zeros(len(self.indices))
        for _ in range(lay.n_agents):  # TeamAdapter's sum over agents, in the same order
            total = total + reward
        b.reward[rows] = total / lay.n_agents if lay.team_reward == "mean" else total
        over = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        at_limit = (self.episode_step >= lay.max_steps if lay.max_steps > 0
                    else np.zeros_like(over))
        terminated = over & ~np.asarray(truncated, bool)
        b.terminated[rows] = terminated
        b.truncated[rows] = (over | at_limit) & ~terminated
        self._write("final_")
        done = np.flatnonzero(over | at_limit)
        if len(done) == 0:
            for name in ("obs", "state"):
                getattr(b, name)[rows] = getattr(b, "final_" + name)[rows]
            return
        for j in done:
            if lay.metric_names:
                values = self.env.episode_metrics(int(j))
                b.episode_metrics[self.indices[j]] = [values.get(n, np.nan)
                                                      for n in lay.metric_names]
            self.env.reset(int(j), None)
            self.episode_step[j] = 0
        self._write("")

    def close(self):
        self.env.close()


def build_adapters(recipe: EnvRecipe, layout: TeamLayout, buffers: TeamBuffers,
                   indices) -> list:
    """The adapters of envs ``indices``: one BatchTeamAdapter if the recipe builds batches,
    else a TeamAdapter per env."""
    indices = [int(i) for i in indices]
    if recipe.batch_function:
        return [BatchTeamAdapter(recipe.build_batch(len(indices)), layout, buffers, indices)]
    return [TeamAdapter(recipe.build(), layout, buffers, e) for e in indices]


# ============================================================================ worker process
def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the learner dies (even by SIGKILL),
    so a worker hung inside its env never outlives the run. Elsewhere a worker still exits
    when its pipe closes, once its env returns."""
    import ctypes
    import multiprocessing
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)  # the learner died before prctl took effect


def worker_main(worker_index: int, recipe: EnvRecipe, layout: TeamLayout, raw, num_envs: int,
                env_indices: list, conn) -> None:
    """Entry point of one worker process: build its envs, then serve commands until "close".

    Commands (``conn.recv()``): ("reset", {env_index: seed or None}), ("step", None),
    ("close", None). Replies: ("ok", None) or ("error", traceback text).
    """
    # Ctrl-C reaches the whole process group; the learner decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    adapters = []
    try:
        buffers = TeamBuffers(layout, num_envs, raw)
        adapters = build_adapters(recipe, layout, buffers, env_indices)
        conn.send(("ok", None))
        while True:
            command, argument = conn.recv()
            if command == "step":
                for adapter in adapters:
                    adapter.step()
            elif command == "reset":
                for adapter in adapters:
                    adapter.reset_seeds(argument)
            elif command == "close":
                break
            conn.send(("ok", None))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass  # the learner went away; nothing to report to
    except BaseException:  # noqa: BLE001 - any failure is reported with its traceback
        try:
            conn.send(("error", f"worker {worker_index} (envs {env_indices[0]}..."
                                f"{env_indices[-1]}):\n{traceback.format_exc()}"))
        except (BrokenPipeError, OSError):
            pass
    finally:
        for adapter in adapters:
            try:
                adapter.close()
            except Exception:  # noqa: BLE001
                pass
        conn.close()
