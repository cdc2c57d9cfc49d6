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

    def build(self):
        return getattr(importlib.import_module(self.module), self.function)(**self.kwargs)


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
        adapters = [TeamAdapter(recipe.build(), layout, buffers, e) for e in env_indices]
        conn.send(("ok", None))
        while True:
            command, argument = conn.recv()
            if command == "step":
                for adapter in adapters:
                    adapter.step()
            elif command == "reset":
                for adapter in adapters:
                    adapter.reset(argument[adapter.index])
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
