"""The training loop: rollout -> update, compiled in chunks of updates, seeds vectorised.

``Trainer.run_chunk`` is one XLA program that performs K updates for every seed (vmap over
seeds, scan over updates) and returns per-update metrics; Python only logs and checkpoints
between chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from teamrl.algos import ALGORITHMS
from teamrl.config import Config, ConfigError, validate_section
from teamrl.envs.registry import make_env
from teamrl.rollout import RolloutCarry, collect, reset_envs


@flax.struct.dataclass
class Runner:
    """The whole state of one seed's training; batched over seeds with a leading [S] axis."""

    train_state: Any
    rollout: RolloutCarry
    key: jax.Array
    updates: jax.Array  # [] int32 updates done


def resolve_agent_id(config: Config) -> bool:
    setting = config.run.agent_id
    if setting == "auto":
        return bool(getattr(config.algo, "share_actor", False))
    return setting == "true"


def build(config: Config):
    """Validate the config and build (team env, algorithm). Raises ConfigError."""
    run = config.run
    for section in config.sections().values():
        validate_section(section)
    if run.algo not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {run.algo!r}; valid algorithms: "
                          + ", ".join(sorted(ALGORITHMS)))
    algo_cls = ALGORITHMS[run.algo]
    team_env = make_env(run.env_id, config.env, agent_id=resolve_agent_id(config),
                        team_reward=run.team_reward)
    algo_cls.check(team_env.spec, config.algo, run)
    algo = algo_cls(team_env.spec, config.algo, config.network, total_updates(run))
    return team_env, algo


def steps_per_update(run) -> int:
    return run.num_envs * run.rollout_length


def total_updates(run) -> int:
    return max(run.total_steps // steps_per_update(run), 1)


@dataclass
class Trainer:
    """Compiled training of ``config.run.seeds`` seeds of one (algorithm, env)."""

    config: Config

    def __post_init__(self):
        self.team_env, self.algo = build(self.config)
        self.spec = self.team_env.spec
        self._chunk = jax.jit(jax.vmap(self._run_chunk, in_axes=(0, None)), static_argnums=1)
        self._evaluate = None

    # ------------------------------------------------------------------------ init
    def seed_keys(self) -> jax.Array:
        run = self.config.run
        return jnp.stack([jax.random.PRNGKey(run.seed + i) for i in range(run.seeds)])

    def init(self) -> Runner:
        """[S]-batched initial runner state."""
        return jax.jit(jax.vmap(self._init_one))(self.seed_keys())

    def _init_one(self, key) -> Runner:
        init_key, env_key, key = jax.random.split(key, 3)
        train_state = self.algo.init(init_key)
        rollout = reset_envs(self.team_env, env_key, self.config.run.num_envs)
        return Runner(train_state, rollout, key, jnp.int32(0))

    # ----------------------------------------------------------------------- update
    def _update(self, runner: Runner, _):
        key, rollout_key, update_key = jax.random.split(runner.key, 3)
        ts = runner.train_state

        def act(obs, key):
            # Values are left to ``collect``, which evaluates the critic once, batched over
            # the whole rollout, after the scan (XLA drops the unused in-loop critic call).
            action, log_prob, _ = self.algo.act(ts, obs, key)
            return action, log_prob, None

        values = partial(self.algo.values, ts)
        rollout, batch, stats = collect(self.team_env, act, values, runner.rollout, rollout_key,
                                        self.config.run.rollout_length)
        ts, metrics = self.algo.update(ts, batch, update_key)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(ts)
                                    if jnp.issubdtype(x.dtype, jnp.floating)]))
        metrics = {**metrics, "params_finite": finite, "episodes": stats.count,
                   "return_sum": stats.return_sum, "return_min": stats.return_min,
                   "return_max": stats.return_max,
                   "reward_mean": batch.reward.mean()}
        return Runner(ts, rollout, key, runner.updates + 1), metrics

    def _run_chunk(self, runner: Runner, num_updates: int):
        return jax.lax.scan(self._update, runner, None, length=num_updates)

    def compile_chunk(self, runner: Runner, num_updates: int):
        """Ahead-of-time compile K updates for all seeds (so compile time is measured apart);
        returns a callable runner -> (runner, metrics)."""
        return self._chunk.lower(runner, num_updates).compile()

    def run_chunk(self, runner: Runner, num_updates: int):
        """K updates for all seeds: -> (runner, metrics dict of [S, K] arrays)."""
        return self._chunk(runner, num_updates)

    def evaluate(self, runner: Runner, episodes: int) -> dict:
        """Evaluation episodes of every seed's current policy, apart from training: ->
        {"eval_return_det": [S], "eval_return_stoch": [S]} (means over ``episodes``).

        The keys are folded from each seed's key, never split off it, so evaluating does
        not change the training random stream (resumed runs stay bitwise identical).
        """
        from teamrl.evaluate import episode_returns

        if self._evaluate is None:
            def both(ts, key):
                det_key, stoch_key = jax.random.split(jax.random.fold_in(key, 0x5EED))
                run = partial(episode_returns, self.team_env, self.algo, ts, episodes=episodes)
                return (jnp.nanmean(run(key=det_key, deterministic=True)),
                        jnp.nanmean(run(key=stoch_key, deterministic=False)))

            self._evaluate = jax.jit(jax.vmap(both))
        det, stoch = self._evaluate(runner.train_state, runner.key)
        return {"eval_return_det": det, "eval_return_stoch": stoch}


# =============================================================================== host loop
class TrainingDiverged(RuntimeError):
    """A loss or parameter became non-finite; the message names the update and quantity."""


_NOT_LOSSES = {"params_finite", "episodes", "return_sum", "return_min", "return_max"}


def _first_nonfinite(metrics: dict, start_update: int, seeds: list[int]) -> str | None:
    """Describe the first non-finite loss/parameter in a chunk's [S, K] metrics, if any."""
    import numpy as np

    bad = {}
    for name, values in metrics.items():
        if name in _NOT_LOSSES and name != "params_finite":
            continue
        values = np.asarray(values)
        flags = ~values.astype(bool) if name == "params_finite" else ~np.isfinite(values)
        if flags.any():
            seed_idx, update_idx = np.argwhere(flags)[np.argmin(np.argwhere(flags)[:, 1])]
            bad[name] = (update_idx, seed_idx)
    if not bad:
        return None
    name, (update_idx, seed_idx) = min(bad.items(), key=lambda item: item[1][0])
    quantity = "parameters" if name == "params_finite" else name
    return (f"non-finite {quantity} at update {start_update + update_idx + 1} "
            f"(seed {seeds[seed_idx]})")


def chunk_rows(metrics: dict, config: Config, updates_done: int, wall_time: float,
               steps_per_s: float) -> list[dict]:
    """One metrics.csv row per seed summarising a chunk of updates ([S, K] metrics)."""
    import math

    import numpy as np

    run = config.run
    rows = []
    for s in range(run.seeds):
        count = float(np.sum(metrics["episodes"][s]))
        row = {"seed": run.seed + s, "env_steps": updates_done * steps_per_update(run),
               "updates": updates_done, "wall_time": round(wall_time, 3),
               "steps_per_s": round(steps_per_s, 1),
               "return_mean": float(np.sum(metrics["return_sum"][s]) / count) if count else math.nan,
               "return_min": float(np.min(metrics["return_min"][s])) if count else math.nan,
               "return_max": float(np.max(metrics["return_max"][s])) if count else math.nan,
               "episodes": int(count)}
        for name, values in metrics.items():
            if name not in _NOT_LOSSES:
                row[name] = float(np.mean(values[s]))
        rows.append(row)
    return rows


def default_log_every(run) -> int:
    """Updates per log row: ``log_every``, or about 40 rows. The automatic choice prefers a
    divisor of the total number of updates (within 2x of the target) so every chunk has the
    same length and the program compiles once, not again for a shorter last chunk."""
    if run.log_every:
        return run.log_every
    total = total_updates(run)
    target = max(total // 40, 1)
    divisors = [k for k in range(max(target // 2, 1), 2 * target + 1) if total % k == 0]
    return min(divisors, key=lambda k: abs(k - target)) if divisors else target


def train(config: Config, resume_dir=None, log=print) -> dict:
    """Train (or resume) a run and return a summary dict.

    Args:
        config: resolved config (for a resume: the run's saved config with overrides).
        resume_dir: run folder to continue from its ``latest`` checkpoint.
    """
    import math
    import pathlib
    import time

    import numpy as np

    from teamrl import runs
    from teamrl.plots import plot_learning_curve
    from teamrl.progress import ProgressReporter

    run = config.run
    if resume_dir is None:
        runs.check_run_dir_free(run.out, run.overwrite)
    trainer = Trainer(config)  # validates everything before the run folder is touched
    runner = trainer.init()
    meta = {"updates": 0, "wall_time": 0.0, "best_return": -math.inf}
    if resume_dir is not None:
        run_dir = pathlib.Path(resume_dir)
        runner, meta = runs.load_checkpoint(run_dir, "latest", runner)
        runs.write_config(run_dir, config.to_dict())
    else:
        run_dir = runs.prepare_run_dir(run.out, run.overwrite)
        runs.write_config(run_dir, config.to_dict())

    target_updates = total_updates(run)
    updates_done, wall_offset = int(meta["updates"]), float(meta["wall_time"])
    best_return = float(meta["best_return"])
    chunk = default_log_every(run)
    seeds = [run.seed + s for s in range(run.seeds)]
    progress = ProgressReporter(target_updates * steps_per_update(run),
                                start_steps=updates_done * steps_per_update(run),
                                enabled=run.progress != "none")
    if run.progress in ("bar", "lines"):
        progress.is_terminal = run.progress == "bar"
    compiled = {}
    summary = {"run_dir": str(run_dir), "updates": updates_done}
    rows_written = 0
    saved_update = updates_done
    start = time.perf_counter()
    with progress, runs.MetricsWriter(run_dir, resume=resume_dir is not None) as writer:
        while updates_done < target_updates:
            k = min(chunk, target_updates - updates_done)
            if k not in compiled:
                t0 = time.perf_counter()
                compiled[k] = trainer.compile_chunk(runner, k)
                progress.log(f"[teamrl] compiled {k} updates x {run.seeds} seed(s) "
                             f"in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            new_runner, metrics = compiled[k](runner)
            metrics = jax.tree.map(np.asarray, metrics)
            elapsed = time.perf_counter() - t0
            problem = _first_nonfinite(metrics, updates_done, seeds)
            if problem:
                raise TrainingDiverged(
                    f"{problem}; training stopped. The last good checkpoint is "
                    f"{run_dir / 'checkpoints' / 'latest.msgpack'} (update {saved_update})")
            runner = new_runner
            updates_done += k
            wall = wall_offset + time.perf_counter() - start
            sps = k * steps_per_update(run) * run.seeds / max(elapsed, 1e-9)
            rows = chunk_rows(metrics, config, updates_done, wall, sps)
            rows_written += 1
            if run.eval_every:
                due = rows_written % run.eval_every == 0 or updates_done >= target_updates
                evaluation = (jax.tree.map(np.asarray, trainer.evaluate(runner,
                                                                        run.eval_episodes))
                              if due else None)
                for s, row in enumerate(rows):
                    for name in ("eval_return_det", "eval_return_stoch"):
                        row[name] = float(evaluation[name][s]) if due else math.nan
            writer.write(rows)
            mean_return = float(np.nanmean([r["return_mean"] for r in rows])) \
                if any(math.isfinite(r["return_mean"]) for r in rows) else math.nan
            progress.update(updates_done * steps_per_update(run),
                            {"steps_per_s": sps, "return_mean": mean_return})
            is_best = math.isfinite(mean_return) and mean_return > best_return
            if is_best:
                best_return = mean_return
            meta = {"updates": updates_done, "env_steps": updates_done * steps_per_update(run),
                    "wall_time": wall, "best_return": best_return, "seeds": seeds}
            last_chunk = updates_done >= target_updates
            if rows_written % run.checkpoint_every == 0 or last_chunk:
                runs.save_checkpoint(run_dir, "latest", runner, meta)
                saved_update = updates_done
            if is_best:
                runs.save_checkpoint(run_dir, "best", runner, meta)
            summary.update(updates=updates_done, return_mean=mean_return,
                           env_steps=updates_done * steps_per_update(run), steps_per_s=sps)
    if (run_dir / "metrics.csv").exists():
        plot_learning_curve(run_dir / "metrics.csv", run_dir / "curve.png",
                            title=f"{run.algo} on {run.env_id}")
    summary["best_return"] = best_return
    summary["runner"] = runner
    return summary
