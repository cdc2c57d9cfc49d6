"""Shared by the experiment scripts: the code version of the checkout, resumable runs (a run
folder that already finished with the same request is not trained again; one interrupted
with the same config continues from its latest checkpoint) and evaluations reused from the
run folder.

Runs that take longer than one working session go under ``SAVED`` (experiments/saved/<name>/),
which is tracked by git except each run's checkpoints/ and tb/ (see .gitignore): what a report
needs (config.yaml, metrics.csv, experiment.json and the eval_*.json of the final policy)
survives the machine, so a grid can be finished over several sessions and its page rebuilt
with ``--report-only`` anywhere."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DONE_FILE = "experiment.json"
SAVED = ROOT / "experiments" / "saved"


def code_version() -> str:
    """Short commit of the teamrl checkout, '+dirty' when teamrl/ has uncommitted changes."""
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "teamrl"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def train_or_skip(run_dir: Path, algo: str, env_id: str, settings: dict, code: str,
                  force: bool = False) -> dict:
    """Train ``algo`` on ``env_id`` with ``settings`` into ``run_dir`` unless that folder
    already finished with exactly these settings (or ``force``); returns {"wall_s",
    "skipped", ...}. ``code`` is recorded (the version taken when teamrl was imported).

    A run interrupted with the same config (a checkpoint short of the target, as a grid
    stopped at the end of a session leaves) is resumed from its latest checkpoint, not
    restarted; its record then adds the interrupted part's training time to ``wall_s``,
    says ``resumed_at`` (updates done before) and ``code`` is the version that finished it."""
    from teamrl.cli_config import base_config
    from teamrl.config import apply_overrides
    from teamrl.train import train

    request = {"algo": algo, "env_id": env_id, "settings": settings}
    done = run_dir / DONE_FILE
    if done.is_file() and not force:
        record = json.loads(done.read_text())
        if record.get("request") == request:
            return {**record, "skipped": True}
    config = base_config(algo, env_id)
    apply_overrides(config, {**settings, "out": str(run_dir), "overwrite": "true",
                             "progress": "none"})
    resume = None if force or done.is_file() else resumable_updates(run_dir, config)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    if resume is None:
        summary = train(config)
        earlier, extra = 0.0, {}
    else:
        summary = train(config, resume_dir=run_dir)
        earlier, extra = resume["wall_time"], {"resumed_at": resume["updates"]}
    record = {"request": request, "code": code, **extra,
              "wall_s": earlier + time.perf_counter() - start,
              # the machine's 1-minute load average before and after (2 cores; others' jobs
              # share it, so wall times are only comparable at similar load)
              "load": [load_before, os.getloadavg()[0]],
              "env_steps": summary.get("env_steps"), "steps_per_s": summary.get("steps_per_s")}
    done.write_text(json.dumps(record, indent=2))
    return {**record, "skipped": False}


def with_new_defaults(saved: dict, config) -> dict:
    """``saved`` (a config.yaml) plus the keys teamrl gained since it was written, where the
    request leaves them at their defaults: a long run spread over sessions keeps resuming
    across a code change that only adds settings."""
    import dataclasses

    filled = {name: dict(values) if isinstance(values, dict) else values
              for name, values in saved.items()}
    for name, section in config.sections().items():
        have = filled.get(name)
        if not isinstance(have, dict):
            continue
        for f in dataclasses.fields(section):
            default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else f.default)
            if f.name not in have and getattr(section, f.name) == default:
                have[f.name] = default
    return filled


def resumable_updates(run_dir: Path, config) -> dict | None:
    """{"updates", "wall_time"} of an interrupted run in ``run_dir`` that ``config``
    (the requested one) can continue: a latest checkpoint short of the target, saved with the
    same config apart from what ``teamrl resume`` may change. None otherwise (nothing there,
    another config, or already at the target), and the run is trained afresh."""
    from teamrl import runs
    from teamrl.sweep import checkpoint_meta, config_differences
    from teamrl.train import total_updates

    if not runs.checkpoint_exists(run_dir, "latest"):
        return None
    try:
        saved = runs.read_config(run_dir)
        meta = checkpoint_meta(run_dir)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(saved, dict) or config_differences(config.to_dict(),
                                                         with_new_defaults(saved, config)):
        return None
    if int(meta["updates"]) >= total_updates(config.run):
        return None
    return {"updates": int(meta["updates"]), "wall_time": float(meta["wall_time"])}


def final_column(run_dir: Path, column: str) -> list[float]:
    """Per seed: mean of metrics.csv ``column`` over the last 10 % of log rows where it is
    defined (e.g. a final training return or win rate)."""
    import numpy as np

    from teamrl.runs import read_metrics

    per_seed: dict = {}
    for row in read_metrics(run_dir):
        value = row.get(column)
        if value is not None and np.isfinite(value):
            per_seed.setdefault(int(row["seed"]), []).append(value)
    return [float(np.mean(v[-max(1, len(v) // 10):])) for _, v in sorted(per_seed.items())]


def evaluate_or_reuse(run_dir: Path, episodes: int, deterministic: bool,
                      checkpoint: str = "latest") -> dict:
    """``teamrl.evaluate.evaluate_run`` of the run's final ``checkpoint``, or the result it
    wrote before (``eval_<checkpoint>_<det|stoch>.json``) when that covered the same number of
    episodes of the same checkpoint, so a saved run whose checkpoints are gone (SAVED keeps
    none) is still reported. (Training a run folder again deletes the folder first, so an
    eval file there always belongs to the run's current training.)"""
    from teamrl.evaluate import evaluate_run

    saved = run_dir / f"eval_{checkpoint}_{'det' if deterministic else 'stoch'}.json"
    if saved.is_file() and (run_dir / DONE_FILE).is_file():
        result = json.loads(saved.read_text())
        if result.get("episodes") == episodes and result.get("checkpoint") == checkpoint:
            return result
    return evaluate_run(run_dir, episodes, deterministic, checkpoint=checkpoint)


def trained_code_and_wall(results, code: str, wall: float) -> tuple[str, float]:
    """The code versions and summed training time of the runs in ``results`` ({key: record}
    with ``wall_s`` and ``code`` for trained runs), falling back to ``code`` / ``wall``: a
    --report-only rebuild trains nothing, so its own version and duration say nothing about
    the numbers."""
    trained = [r for r in results.values() if "wall_s" in r]
    return (", ".join(sorted({r.get("code") or code for r in trained})) or code,
            sum(r["wall_s"] for r in trained) or wall)
