"""The trainer interface: what the training loop (:mod:`teamrl.train.loop`) asks of a trainer,
and the state it carries from one chunk of updates to the next.

Two implementations: :class:`~teamrl.train.compiled.CompiledTrainer` (compiled envs: a chunk
of K updates for every seed is one XLA program) and :class:`~teamrl.train.host.HostTrainer`
(host envs: the envs are stepped by worker processes, the update is compiled). The loop that
logs, evaluates and checkpoints is written once, against this interface.
"""

from __future__ import annotations

import abc
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from teamrl.config import Config
from teamrl.core.rollout import RolloutCarry
from teamrl.scale import distributed
from teamrl.train.build import build

# Host envs' episode metrics travel as per-update sums and counts under these prefixes;
# the loop's chunk_rows turns them into per-episode means (NaN where none was defined).
EPISODE_SUM, EPISODE_COUNT = "episode_sum/", "episode_count/"


@flax.struct.dataclass
class Runner:
    """The whole state of one seed's training; batched over seeds with a leading [S] axis."""

    train_state: Any
    rollout: RolloutCarry
    key: jax.Array
    updates: jax.Array  # [] int32 updates done


def all_finite(tree) -> jax.Array:
    """[] bool: every floating-point leaf of ``tree`` is finite (the divergence check)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.floating)]))


class Trainer(abc.ABC):
    """Training of ``config.run.seeds`` seeds of one (algorithm, env).

    The loop calls, in order: :meth:`init` (or :meth:`place` on a checkpoint's runner), then
    repeatedly ``compile_chunk(runner, K)`` once per chunk length and the callable it returns
    (runner -> (runner, metrics dict of [S, K] arrays)), :meth:`evaluate` every ``eval_every``
    rows, and :meth:`close` at the end.
    """

    #: Whether the environments are stepped on the host (their placement on devices differs).
    host_env: bool = False

    def __init__(self, config: Config):
        self.config = config
        self.team_env, self.algo = build(config)
        self.spec = self.team_env.spec
        self.placement = distributed.placement(config.run, host_env=self.host_env)

    def close(self) -> None:
        """Release resources held outside JAX (env workers); nothing by default."""

    # ------------------------------------------------------------------------ init
    def seed_keys(self) -> jax.Array:
        """[S, 2] the seeds' PRNG keys: seed, seed + 1, ..."""
        run = self.config.run
        return jnp.stack([jax.random.PRNGKey(run.seed + i) for i in range(run.seeds)])

    @property
    def runner_shape(self) -> Runner:
        """The [S]-batched Runner as ShapeDtypeStructs (the template of shardings)."""
        return jax.eval_shape(jax.vmap(self._init_one), self.seed_keys())

    def init(self) -> Runner:
        """[S]-batched initial runner state (on several devices: the environments split over
        them, everything else replicated)."""
        init_all = jax.vmap(self._init_one)
        if self.placement.mesh is None:
            return jax.jit(init_all)(self.seed_keys())
        shardings = self.placement.runner_shardings(self.runner_shape)
        return jax.jit(init_all, out_shardings=shardings)(self.seed_keys())

    def place(self, runner: Runner) -> Runner:
        """A runner loaded from a checkpoint (numpy leaves), put where ``init`` puts one."""
        if self.placement.mesh is None:
            return runner  # the compiled chunk takes numpy leaves as they are
        return self.placement.place(runner, self.runner_shape)

    @abc.abstractmethod
    def _init_one(self, key) -> Runner:
        """One seed's initial Runner from its key."""

    # ----------------------------------------------------------------------- update
    @abc.abstractmethod
    def compile_chunk(self, runner: Runner, num_updates: int):
        """Compile K updates for all seeds ahead of time (so compile time is measured apart);
        returns a callable runner -> (runner, metrics dict of [S, K] arrays)."""

    @abc.abstractmethod
    def run_chunk(self, runner: Runner, num_updates: int):
        """K updates for all seeds: -> (runner, metrics dict of [S, K] arrays)."""

    # ------------------------------------------------------------------- evaluation
    def eval_names(self) -> list[str]:
        """The metrics.csv columns of :meth:`evaluate`'s result, in order."""
        names = ["return"] + (["win_rate"] if self.spec.has_wins else []) + list(
            self.spec.episode_metrics)
        return [f"eval_{name}_{suffix}" for name in names for suffix in ("det", "stoch")]

    @abc.abstractmethod
    def evaluation_returns(self, train_state, keys, episodes: int, deterministic: bool):
        """(returns, won) [S, episodes] of one evaluation episode in each of ``episodes``
        envs per seed, apart from the training envs."""

    @abc.abstractmethod
    def evaluate(self, runner: Runner, episodes: int) -> dict:
        """Evaluation of every seed's current policy: {column of :meth:`eval_names`: [S]}
        means over ``episodes``. Must not change the training random stream."""
