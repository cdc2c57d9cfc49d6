"""The training loop, written once for both trainers: init or resume, then chunks of updates,
each followed by its metrics rows, evaluation and checkpoints, until ``total_steps``."""

from __future__ import annotations

from functools import partial

import jax

from teamrl.config import Config, ConfigError
from teamrl.scale import distributed
from teamrl.train.build import steps_per_update, total_updates
from teamrl.train.compiled import CompiledTrainer
from teamrl.train.host import HostTrainer
from teamrl.train.trainer import EPISODE_COUNT, EPISODE_SUM, Trainer


def make_trainer(config: Config) -> "Trainer":
    """The trainer for ``config``: compiled envs train in one XLA program per chunk of
    updates, host envs (MaMuJoCo, PettingZoo) through :class:`HostTrainer`."""
    from teamrl.envs.registry import get_entry

    return HostTrainer(config) if get_entry(config.run.env_id).host else CompiledTrainer(config)


class TrainingStopped(RuntimeError):
    """Training could not go on; the message says why and where the last checkpoint is."""


class TrainingDiverged(TrainingStopped):
    """A loss or parameter became non-finite; the message names the update and quantity."""


_NOT_LOSSES = {"params_finite", "episodes", "return_sum", "return_min", "return_max",
               "win_sum"}


def _is_loss(name: str) -> bool:
    return name not in _NOT_LOSSES and not name.startswith((EPISODE_SUM, EPISODE_COUNT))


def _first_nonfinite(metrics: dict, start_update: int, seeds: list[int]) -> str | None:
    """Describe the first non-finite loss/parameter in a chunk's [S, K] metrics, if any."""
    import numpy as np

    bad = {}
    for name, values in metrics.items():
        if not _is_loss(name) and name != "params_finite":
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
        if "win_sum" in metrics:
            row["win_rate"] = float(np.sum(metrics["win_sum"][s]) / count) if count else math.nan
        for name, values in metrics.items():
            if name.startswith(EPISODE_SUM):
                defined = float(np.sum(metrics[EPISODE_COUNT + name[len(EPISODE_SUM):]][s]))
                row[name[len(EPISODE_SUM):]] = (float(np.sum(values[s])) / defined if defined
                                                else math.nan)
        for name, values in metrics.items():
            if _is_loss(name):
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
    from teamrl import runs

    run = config.run
    distributed.initialize(run)  # before JAX touches a device; nothing for one process
    lock = runs.RunLock(run.out if resume_dir is None else resume_dir)
    trainer_config = config
    if resume_dir is None:
        refusal = None
        if distributed.is_writer():
            try:
                runs.check_run_dir_free(run.out, run.overwrite)
            except ConfigError as err:
                refusal = err
        if not distributed.writer_value(refusal is None):
            raise refusal or ConfigError("process 0 refused to start the run (its run folder "
                                         "exists); see its message")
    else:
        if distributed.is_writer():
            lock.acquire()  # before anything is read: a live run's files are moving
        trainer_config = with_schedule_horizon(config, resume_dir)
    try:
        trainer = make_trainer(trainer_config)  # validates everything before the run folder is touched
        try:
            return _train_loop(config, trainer, resume_dir, log, lock)
        finally:
            trainer.close()
    finally:
        lock.release()


def with_schedule_horizon(config: Config, run_dir) -> Config:
    """``config`` with the ``total_steps`` the run's schedules were built for (learning-rate
    decay, exploration): extending a run keeps them over the original horizon, holding their
    final values after it, so the learning rate never jumps. The horizon is recorded in the
    checkpoints (``schedule_updates``); older runs' is the total_steps of their config.yaml."""
    import copy
    import json
    import pathlib

    from teamrl import runs

    horizon = None
    for name in ("latest", "best"):
        try:
            sidecar = json.loads((pathlib.Path(run_dir) / runs.CHECKPOINT_DIR / f"{name}.json")
                                 .read_text(encoding="utf-8"))
            horizon = int(sidecar["meta"]["schedule_updates"])
            break
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if horizon is None:
        try:
            horizon = max(int(runs.read_config(run_dir)["run"]["total_steps"])
                          // steps_per_update(config.run), 1)
        except Exception:  # unreadable: the current total, as before
            return config
    if horizon == total_updates(config.run):
        return config
    built = copy.deepcopy(config)
    built.run.total_steps = horizon * steps_per_update(config.run)
    return built


def check_checkpoint(config: Config, run_dir, name: str, meta: dict) -> None:
    """Refuse checkpoint ``name`` of ``run_dir`` (one line) if it was saved for another config
    (CheckpointMismatch) or its counters were edited or are inconsistent (CheckpointError)."""
    from teamrl import runs

    run = config.run
    record = meta.get("config")
    if isinstance(record, dict):
        mismatch = runs.config_mismatch(record, runs.config_record(config.to_dict()))
        if mismatch:
            raise runs.CheckpointMismatch(
                f"checkpoint '{name}' of '{run_dir}' was saved for another configuration "
                f"({mismatch}); restore config.yaml or train a new run")

    def whole(key):
        value = meta.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    bad = f"checkpoint '{name}' has inconsistent counters (edited?): "
    updates = whole("updates")
    if updates is None or updates < 0:
        raise runs.CheckpointError(bad + f"updates={meta.get('updates')!r} is not a whole "
                                   "number >= 0")
    if "env_steps" in meta and meta["env_steps"] != updates * steps_per_update(run):
        raise runs.CheckpointError(bad + f"env_steps={meta['env_steps']!r} is not updates x "
                                   f"num_envs x rollout_length = {updates * steps_per_update(run)}")
    total, chunk = whole("total_updates"), whole("chunk")
    if total is not None and updates > total:
        raise runs.CheckpointError(bad + f"updates={updates} is above its run's {total} updates")
    if total is not None and chunk and updates % chunk and updates != total:
        raise runs.CheckpointError(bad + f"updates={updates} is not a multiple of its {chunk} "
                                   "updates per log row")
    if "seeds" in meta and meta["seeds"] != [run.seed + s for s in range(run.seeds)]:
        raise runs.CheckpointMismatch(f"checkpoint '{name}' of '{run_dir}' holds seeds "
                                      f"{meta['seeds']!r}, config.yaml asks for seed={run.seed} "
                                      f"seeds={run.seeds}; restore config.yaml")
    for key in ("wall_time", "best_return"):
        if key in meta and (isinstance(meta[key], bool)
                            or not isinstance(meta[key], (int, float))):
            raise runs.CheckpointError(bad + f"{key}={meta[key]!r} is not a number")


def _train_loop(config: Config, trainer: Trainer, resume_dir, log, lock=None) -> dict:
    import math
    import pathlib
    import sys
    import time

    import numpy as np

    from teamrl import runs
    from teamrl.envs.host_env import HostEnvError
    from teamrl.analysis.plots import plot_learning_curve
    from teamrl.train.progress import ProgressReporter

    run = config.run
    writes = distributed.is_writer()  # process 0 of a multi-process run; always on one
    runner = trainer.init()
    meta = {"updates": 0, "wall_time": 0.0, "best_return": -math.inf}
    spu = steps_per_update(run)
    target_updates = total_updates(run)
    # The last checkpoints written (or resumed from): {name: update}, named if training stops.
    saved = {}
    if resume_dir is not None:
        run_dir = pathlib.Path(resume_dir)
        if writes:
            runs.clean_checkpoints(run_dir)  # leftovers of a killed write; the lock is held
        again = f"start it again with `teamrl train --config {run_dir / runs.CONFIG_FILE} " \
                "overwrite=true`"
        name, runner, meta = runs.load_with_fallback(
            run_dir, runner, check=partial(check_checkpoint, config, run_dir),
            what_to_do=again, note=lambda line: print(line, file=sys.stderr) if writes else None)
        saved[name] = int(meta["updates"])
        done = int(meta["updates"])
        if done > target_updates or (done == target_updates
                                     and (run_dir / runs.CURVE_FILE).is_file()):
            # (A run killed after its last checkpoint but before its curve is finished below.)
            raise ConfigError(
                f"total_steps={run.total_steps} ({target_updates} updates) is not above the "
                f"{done} updates ({done * spu:,} env steps) '{run_dir}' has done; pass "
                f"total_steps={(done + 1) * spu} or more to train longer")
        runner = trainer.place(runner)
        if writes:
            runs.write_config(run_dir, config.to_dict())
    elif writes:
        run_dir = runs.prepare_run_dir(run.out, run.overwrite, lock)
        runs.write_config(run_dir, config.to_dict())
    else:
        run_dir = pathlib.Path(run.out)

    updates_done, wall_offset = int(meta["updates"]), float(meta["wall_time"])
    best_return = float(meta["best_return"])
    # An extended run keeps its rows' spacing (the automatic one depends on total_steps).
    saved_chunk = meta.get("chunk")
    chunk = run.log_every or (saved_chunk if isinstance(saved_chunk, int) and saved_chunk > 0
                              else default_log_every(run))
    record = runs.config_record(config.to_dict())
    fixed_meta = {"total_updates": target_updates, "chunk": chunk,
                  "schedule_updates": total_updates(trainer.config.run),
                  "algo": run.algo, "env_id": run.env_id, "config": record,
                  "config_sha256": runs.config_sha256(record)}
    seeds = [run.seed + s for s in range(run.seeds)]
    progress = ProgressReporter(target_updates * steps_per_update(run),
                                start_steps=updates_done * steps_per_update(run),
                                enabled=run.progress != "none" and writes)
    if run.progress in ("bar", "lines"):
        progress.is_terminal = run.progress == "bar"
    compiled = {}
    summary = {"run_dir": str(run_dir), "updates": updates_done,
               "env_steps": updates_done * spu, "return_mean": math.nan}
    row_index = 0
    start = time.perf_counter()
    metrics_writer = (runs.MetricsWriter(run_dir, resume=resume_dir is not None,
                                         keep_updates=updates_done,
                                         keep_steps=updates_done * spu) if writes
                      else runs.NullWriter())

    def where_saved() -> str:
        name = "latest" if "latest" in saved else "best" if saved else None
        if name is None:
            return ("No checkpoint was written before it stopped, so there is nothing to "
                    f"resume; `teamrl train --config {run_dir / runs.CONFIG_FILE} "
                    "overwrite=true` starts it again")
        return (f"The last good checkpoint is '{name}' in {run_dir / runs.CHECKPOINT_DIR} "
                f"(update {saved[name]}); `teamrl resume {run_dir}` continues from it")

    with progress, metrics_writer as writer:
        while updates_done < target_updates:
            # Up to the next multiple of `chunk` (a run extended past a total that was not
            # one realigns), so rows fall at the updates of an uninterrupted run.
            k = min(chunk - updates_done % chunk, target_updates - updates_done)
            if k not in compiled:
                t0 = time.perf_counter()
                compiled[k] = trainer.compile_chunk(runner, k)
                progress.log(f"[teamrl] compiled {k} updates x {run.seeds} seed(s) "
                             f"in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            try:
                new_runner, metrics = compiled[k](runner)
            except HostEnvError as err:
                raise TrainingStopped(
                    f"{err}\ntraining stopped at update {updates_done}. {where_saved()}") \
                    from None
            metrics = jax.tree.map(np.asarray, metrics)
            elapsed = time.perf_counter() - t0
            problem = _first_nonfinite(metrics, updates_done, seeds)
            if problem:
                raise TrainingDiverged(f"{problem}; training stopped. {where_saved()}")
            runner = new_runner
            updates_done += k
            wall = wall_offset + time.perf_counter() - start
            sps = k * steps_per_update(run) * run.seeds / max(elapsed, 1e-9)
            rows = chunk_rows(metrics, config, updates_done, wall, sps)
            # The row's index in the whole run (chunks are `chunk` updates but the last), so a
            # resumed run evaluates and checkpoints at the same updates as an uninterrupted one.
            row_index = updates_done // chunk
            if run.eval_every:
                due = row_index % run.eval_every == 0 or updates_done >= target_updates
                try:
                    evaluation = (jax.tree.map(np.asarray, trainer.evaluate(runner,
                                                                            run.eval_episodes))
                                  if due else None)
                except HostEnvError as err:  # a failed, dead or hung eval env: as in training
                    raise TrainingStopped(f"{err}\ntraining stopped at update {updates_done}, "
                                          f"in its evaluation. {where_saved()}") from None
                names = trainer.eval_names()
                for s, row in enumerate(rows):
                    for name in names:
                        row[name] = float(evaluation[name][s]) if due else math.nan
            writer.write(rows)
            if writes:
                runs.fault("metrics:row")
            mean_return = float(np.nanmean([r["return_mean"] for r in rows])) \
                if any(math.isfinite(r["return_mean"]) for r in rows) else math.nan
            progress.update(updates_done * steps_per_update(run),
                            {"steps_per_s": sps, "return_mean": mean_return})
            is_best = math.isfinite(mean_return) and mean_return > best_return
            if is_best:
                best_return = mean_return
            meta = {"updates": updates_done, "env_steps": updates_done * steps_per_update(run),
                    "wall_time": wall, "best_return": best_return, "seeds": seeds,
                    **fixed_meta}
            last_chunk = updates_done >= target_updates
            if row_index % run.checkpoint_every == 0 or last_chunk or is_best:
                # A collective with several processes: every process gathers, one writes.
                host_runner = trainer.placement.host_copy(runner)
                if writes and (row_index % run.checkpoint_every == 0 or last_chunk):
                    runs.save_checkpoint(run_dir, "latest", host_runner, meta)
                if writes and is_best:
                    runs.save_checkpoint(run_dir, "best", host_runner, meta)
                if row_index % run.checkpoint_every == 0 or last_chunk:
                    saved["latest"] = updates_done
                if is_best:
                    saved["best"] = updates_done
            summary.update(updates=updates_done, return_mean=mean_return,
                           env_steps=updates_done * steps_per_update(run), steps_per_s=sps)
    if "steps_per_s" not in summary and writes and (run_dir / runs.METRICS_FILE).is_file():
        # Resumed only to finish (nothing left to train): report the last rows' return.
        last = [r.get("return_mean", math.nan) for r in runs.read_metrics(run_dir)[-run.seeds:]]
        finite = [x for x in last if isinstance(x, float) and math.isfinite(x)]
        summary["return_mean"] = float(np.mean(finite)) if finite else math.nan
    replicas = trainer.placement.check_replicas(runner.train_state)
    if replicas:
        progress.log(f"[teamrl] {replicas}")
    if writes and (run_dir / "metrics.csv").exists():
        plot_learning_curve(run_dir / "metrics.csv", run_dir / "curve.png",
                            title=f"{run.algo} on {run.env_id}")
    summary["best_return"] = best_return
    summary["runner"] = runner
    return summary
