"""`teamrl sweep FILE.yaml [jobs=N] [dry_run=true] [backend=local|ray] [address=HOST:PORT]`: a
grid of runs as parallel local processes, or as tasks on a Ray cluster (``backend=ray``).

A sweep file names the grid; every field is checked before anything is launched::

    out: runs/sweep_spread            # sweep folder (relative to the working directory)
    algos: [mappo, happo]
    envs: [mpe/simple_spread]         # or a mapping env id -> settings for that env only
    seeds: [0, 1, 2]                  # or an int N meaning 0..N-1
    settings: {total_steps: 200000}   # applied to every run
    grid: {lr: [3e-4, 1e-3]}          # optional: cartesian product of overrides
    report: {metric: eval_return_det} # optional: metric, resamples, seed, norm (as `teamrl report`)

One run is one (algo, env, grid point, seed), trained with ``seeds=1`` in its own process
(``teamrl train``) into ``out/<algo>__<env>[__<key>=<value>...]__seed<s>``; the name is derived
from the request only, so running the sweep again finds its folders. What a folder holds decides
what happens to it (:func:`inspect_run`):

- ``finished``: its latest checkpoint counts the requested number of updates and the learning
  curve was drawn (``train`` writes ``curve.png`` after the last checkpoint) -> skipped;
- ``resume``: a checkpoint short of the target (an interrupted or crashed run, or a sweep whose
  ``total_steps`` was raised) -> ``teamrl resume``, which continues from that checkpoint;
- ``train``: no folder, or a folder without a checkpoint (nothing to resume; see
  :func:`prepare_folder` for what happens to it) -> ``teamrl train``;
- ``conflict``: a checkpointed folder whose config.yaml differs from what the sweep now asks
  (other than the keys ``teamrl resume`` may change), that holds more updates than asked, or
  in which a live process trains (its lock, :class:`teamrl.runs.RunLock`, is held) ->
  the sweep refuses to start, naming the folder and the first differing key, rather than mix
  results.

Outside the folders: ``out/logs/<run>.log`` (each attempt's stdout and stderr, appended),
``out/report/`` (:func:`teamrl.analysis.report.write_report` over the finished runs, one sub-folder per
grid point when there is a grid: the report groups runs by algorithm, so runs of different grid
points must not be pooled), ``out/aside/`` (see :func:`prepare_folder`), ``out/.jax_cache``.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import yaml

from teamrl.config import PLACEMENT_KEYS, ConfigError, with_new_defaults

SWEEP_KEYS = ("out", "algos", "envs", "seeds", "settings", "grid", "report")
REPORT_KEYS = ("metric", "resamples", "seed", "norm")
# Keys the sweep sets itself, and where the user says what they want instead.
RESERVED_KEYS = {"algo": "algos:", "env_id": "envs:", "seed": "seeds:", "seeds": "seeds:",
                 "out": "out:", "overwrite": "nothing (the sweep never overwrites a run)"}
# What `teamrl resume` may change (cli.cmd_resume): a folder differing only in these is the
# same run, continued with the sweep's values.
RESUME_KEYS = ("total_steps", "progress", "log_every", "checkpoint_every")
_IGNORED = ({"run.out", "run.overwrite"} | {f"run.{k}" for k in RESUME_KEYS}
            | {f"run.{k}" for k in PLACEMENT_KEYS})
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=-]+")
MAX_NAME = 120
STOP_GRACE_S = 30.0
# Runs `teamrl ARGS` pinned (see teamrl.cli.launch). -P: `-m` would put the working directory first on
# sys.path, so a yaml.py (or any module name) there would be imported by every run.
LAUNCHER = (sys.executable, "-P", "-m", "teamrl.cli.launch")


# ------------------------------------------------------------------------------ the file
@dataclass
class SweepSpec:
    """A checked sweep file. ``envs`` maps env id -> that env's own settings."""

    path: pathlib.Path
    out: pathlib.Path
    algos: list[str]
    envs: dict[str, dict]
    seeds: list[int]
    settings: dict[str, Any]
    grid: dict[str, list]
    report: dict[str, Any]


def _cli_value(value) -> str:
    """A YAML value as the ``key=value`` string `teamrl train` parses back to the same value
    (JSON is valid YAML; strings go as they are, as ``coerce`` leaves str fields alone)."""
    return value if isinstance(value, str) else json.dumps(value)


def _settings(where: str, data) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of key: value, got {data!r}")
    for key in data:
        if key in RESERVED_KEYS:
            raise ConfigError(f"{where}: {key!r} is set by the sweep; use {RESERVED_KEYS[key]}")
    return {str(k): v for k, v in data.items()}


def _names(where: str, value) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(
            isinstance(v, str) and v for v in values):
        raise ConfigError(f"{where} must be a non-empty list of names, got {value!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{where} lists a name twice: {value!r}")
    return values


def load_sweep(path) -> SweepSpec:
    """Read and check a sweep file (module docstring); ConfigError names the bad value."""
    from teamrl.algos import ALGORITHMS
    from teamrl.config import check_output_path, read_yaml, suggest
    from teamrl.envs.registry import get_entry

    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key {unknown[0]!r}; valid keys: "
                          + ", ".join(SWEEP_KEYS))
    for key in ("out", "algos", "envs", "seeds"):
        if data.get(key) in (None, "", []):
            raise ConfigError(f"{path}: {key} is required")
    if not isinstance(data["out"], str):
        raise ConfigError(f"{path}: out={data['out']!r} must be a folder path")
    try:
        check_output_path(data["out"], folder=True)
    except ConfigError as err:
        raise ConfigError(f"{path}: out: {err}") from None

    algos = _names(f"{path}: algos", data["algos"])
    for algo in algos:
        if algo not in ALGORITHMS:  # the same message as `teamrl train`
            raise ConfigError(f"{path}: unknown algorithm {algo!r}"
                              + suggest(algo, ALGORITHMS, "valid algorithms"))
    raw_envs = data["envs"]
    if isinstance(raw_envs, dict):
        envs = {str(e): _settings(f"{path}: envs: {e}", s) for e, s in raw_envs.items()}
    else:
        envs = {e: {} for e in _names(f"{path}: envs", raw_envs)}
    for env_id in envs:
        try:
            get_entry(env_id)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    seeds = data["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"{path}: seeds={seeds} is out of range; give N >= 1 or a list")
        seeds = list(range(seeds))
    elif not (isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool)
                                              and s >= 0 for s in seeds)):
        raise ConfigError(f"{path}: seeds={seeds!r} must be N >= 1 or a list of integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: seeds={seeds!r} lists a seed twice")

    settings = _settings(f"{path}: settings", data.get("settings"))
    grid = _settings(f"{path}: grid", data.get("grid"))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid: {key}={values!r} must be a non-empty list of "
                              "values")
        if key in settings or any(key in s for s in envs.values()):
            raise ConfigError(f"{path}: grid key {key!r} is also a setting; give it in one place")

    report = data.get("report") or {}
    if not isinstance(report, dict):
        raise ConfigError(f"{path}: report must be a mapping with keys {', '.join(REPORT_KEYS)}")
    bad = sorted(set(map(str, report)) - set(REPORT_KEYS))
    if bad:
        raise ConfigError(f"{path}: unknown report key {bad[0]!r}; valid keys: "
                          + ", ".join(REPORT_KEYS))
    report = _report_options(path, report)
    return SweepSpec(path, pathlib.Path(data["out"]), algos, envs, seeds, settings, grid, report)


def _report_options(path, report: dict) -> dict:
    from teamrl.config import coerce
    from teamrl.analysis.report import DEFAULT_METRIC, read_norm_file

    options = {"metric": str(report.get("metric") or DEFAULT_METRIC),
               "resamples": coerce("resamples", report.get("resamples", 2000), int),
               "seed": coerce("seed", report.get("seed", 0), int),
               "norm": str(report["norm"]) if report.get("norm") else None}
    if options["resamples"] < 1:
        raise ConfigError(f"{path}: report: resamples={options['resamples']} is out of range; "
                          "must be >= 1")
    if options["norm"]:
        try:
            read_norm_file(options["norm"])  # fail now, not after hours of training
        except ConfigError as err:
            raise ConfigError(f"{path}: report: {err}") from None
    return options


# ------------------------------------------------------------------------------- the runs
@dataclass
class RunPlan:
    """One run of the sweep and what to do with its folder."""

    name: str
    algo: str
    env_id: str
    seed: int
    point: dict                      # the grid point {key: value}
    overrides: dict[str, str]        # every key=value of `teamrl train`, sweep keys included
    config: Any                      # the requested teamrl.config.Config
    run_dir: pathlib.Path
    state: str = ""                  # finished | resume | train | conflict
    detail: str = ""


def _slug(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "-".join(_slug(v) for v in value)
    if isinstance(value, dict):
        return "_".join(f"{k}-{_slug(v)}" for k, v in value.items())
    return str(value)


def run_name(algo: str, env_id: str, point: dict, seed: int) -> str:
    """``mappo__mpe-simple_spread__lr=0.001__seed0``: readable, filesystem safe, and a function
    of the request only (grid keys sorted, so reordering the file keeps the names)."""
    parts = [algo, env_id.replace("/", "-")]
    parts += [f"{k}={_slug(point[k])}" for k in sorted(point)]
    name = "__".join(_NAME_CHARS.sub("-", p) for p in parts)
    if len(name) > MAX_NAME:  # file names are limited to 255 bytes; keep it unique
        import hashlib

        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 11]}-{digest}"
    return f"{name}__seed{seed}"


def grid_points(grid: dict[str, list]) -> list[dict]:
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def plan_runs(spec: SweepSpec) -> list[RunPlan]:
    """Every run of the sweep, its config checked as `teamrl train` checks it (unknown keys,
    types, ranges, algorithm/env compatibility), in launch order, each with its folder's
    state. Seed-major order: the first runs cover every (algo, env, grid point) once, so early
    results span the grid and later seeds reuse those compiled programs (``.jax_cache``)."""
    from teamrl.train.presets import base_config
    from teamrl.config import apply_overrides
    from teamrl.train import build

    plans, seen_names, seen_configs, checked = [], {}, {}, set()
    points = grid_points(spec.grid)
    for seed in spec.seeds:
        for algo, (env_id, env_settings), point in itertools.product(
                spec.algos, spec.envs.items(), points):
            name = run_name(algo, env_id, point, seed)
            run_dir = spec.out / name
            overrides = {k: _cli_value(v) for k, v in
                         {**spec.settings, **env_settings, **point}.items()}
            overrides.update(seed=str(seed), seeds="1", out=str(run_dir))
            where = f"{spec.path}: {algo} on {env_id}" + "".join(
                f" {k}={v!r}" for k, v in point.items())
            try:
                config = base_config(algo, env_id)
                apply_overrides(config, overrides)
                key = _config_key(config, drop=("run.seed",))
                if key not in checked:  # seeds share everything build() checks
                    build(config)
                    checked.add(key)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            if name in seen_names:
                raise ConfigError(f"{where}: grid values {seen_names[name]} and {point} give "
                                  f"the same folder name {name!r}; make them distinct")
            seen_names[name] = point
            key = _config_key(config)
            if key in seen_configs:
                raise ConfigError(f"{where}: gives the same config as {seen_configs[key]!r} "
                                  "(equal grid values written differently?)")
            seen_configs[key] = name
            plan = RunPlan(name, algo, env_id, seed, point, overrides, config, run_dir)
            inspect_run(plan)
            plans.append(plan)
    return plans


def _flat(config_dict: dict) -> dict:
    return {f"{sec}.{k}": v for sec, values in config_dict.items()
            for k, v in (values or {}).items()}


def _config_key(config, drop=()) -> str:
    """What makes two requested runs the same run (a grid over total_steps is not)."""
    drop = {"run.out", "run.overwrite", "run.progress", *drop}
    return json.dumps({k: v for k, v in _flat(config.to_dict()).items() if k not in drop},
                      sort_keys=True, default=str)


def config_differences(requested: dict, saved: dict) -> list[str]:
    """``section.key`` entries (with both values) where a saved config.yaml differs from the
    requested config, apart from what resume may change; the request goes through YAML as
    config.yaml did, so the types compare alike."""
    want = _flat(yaml.safe_load(yaml.safe_dump(requested, sort_keys=False)))
    have = _flat(saved)
    return [f"{k}: {have.get(k, '(missing)')!r} in the folder, {want.get(k, '(missing)')!r} "
            f"requested" for k in sorted(set(want) | set(have))
            if k not in _IGNORED and want.get(k) != have.get(k)]


def checkpoint_meta(run_dir: pathlib.Path) -> dict:
    """The meta (updates, wall_time, ...) of the checkpoint ``teamrl resume`` would continue
    from: ``latest``, else ``best`` when latest is missing or broken (its msgpack's hash
    verified). Raises runs.CheckpointError when neither is sound."""
    from teamrl import runs

    try:
        return runs.read_checkpoint(run_dir, "latest")[1]
    except runs.CheckpointError:
        if not runs.checkpoint_exists(run_dir, "best"):
            raise
        return runs.read_checkpoint(run_dir, "best")[1]


def _checkpoint_updates(run_dir: pathlib.Path) -> int:
    return int(checkpoint_meta(run_dir)["updates"])


def _holds_results(run_dir: pathlib.Path) -> bool:
    """Whether a folder without a checkpoint still holds something worth keeping: anything but
    config.yaml, a metrics.csv without data rows and empty folders (what a run killed before its
    first checkpoint leaves, e.g. during compilation)."""
    for item in run_dir.rglob("*"):
        if item.is_dir():
            continue
        rel = item.relative_to(run_dir).as_posix()
        if rel == "config.yaml":
            continue
        if rel == "metrics.csv":
            with open(item, encoding="utf-8", errors="replace") as f:
                if sum(1 for line in f if line.strip()) <= 1:
                    continue
        return True
    return False


def inspect_run(plan: RunPlan) -> None:
    """Set ``plan.state`` and ``plan.detail`` from what its folder holds (module docstring)."""
    from teamrl import runs
    from teamrl.train import total_updates

    run_dir, target = plan.run_dir, total_updates(plan.config.run)
    if not run_dir.exists():
        plan.state, plan.detail = "train", "new"
        return
    if not run_dir.is_dir():
        plan.state, plan.detail = "conflict", f"{str(run_dir)!r} is a file, not a run folder"
        return
    holder = runs.lock_holder(run_dir)
    if holder is not None:
        who = f"process {holder}" if isinstance(holder, int) else holder
        plan.state, plan.detail = "conflict", f"is in use by {who} (training in it; wait for it)"
        return
    if not any(runs.checkpoint_exists(run_dir, n) for n in ("latest", "best")):
        # Nothing to resume, whatever config it had: train afresh (prepare_folder).
        plan.state = "train"
        plan.detail = ("no checkpoint; the folder holds results and will be moved to "
                       f"{plan.run_dir.parent / 'aside'}" if _holds_results(run_dir)
                       else "no checkpoint; the folder holds no results and will be cleared")
        return
    config_file = run_dir / runs.CONFIG_FILE
    try:
        saved = runs.read_config(run_dir) if config_file.is_file() else None
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict):
        plan.state = "conflict"
        plan.detail = f"has a checkpoint but no readable {runs.CONFIG_FILE}"
        return
    diffs = config_differences(plan.config.to_dict(), with_new_defaults(saved, plan.config))
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        plan.state = "conflict"
        plan.detail = f"holds a run with another config: {diffs[0]}{more}"
        return
    try:
        done = _checkpoint_updates(run_dir)
    except (OSError, ValueError, KeyError, TypeError) as err:
        plan.state = "conflict"
        plan.detail = f"has no sound checkpoint ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        return
    if done > target:
        plan.state = "conflict"
        plan.detail = (f"holds {done} updates, more than the {target} of total_steps="
                       f"{plan.config.run.total_steps}")
    elif done == target and (run_dir / runs.CURVE_FILE).is_file():
        plan.state, plan.detail = "finished", f"update {done}/{target}"
    else:
        plan.state = "resume"
        plan.detail = f"update {done}/{target}" + ("" if done < target else ", finishing")


def prepare_folder(plan: RunPlan, log) -> None:
    """Make way for ``teamrl train`` in a folder without a checkpoint.

    A folder without results (config.yaml, an empty metrics.csv) is removed: nothing in it can
    be resumed or reported. One that holds results (metrics rows logged between checkpoints,
    files a user put there) is never deleted: it is moved to ``out/aside/<run>.<time>``, and
    the move is reported, so nothing is lost silently."""
    import shutil

    if not plan.run_dir.exists():
        return
    if _holds_results(plan.run_dir):
        aside = plan.run_dir.parent / "aside" / f"{plan.name}.{time.strftime('%Y%m%d-%H%M%S')}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        plan.run_dir.rename(aside)
        log(f"[teamrl] {plan.name}: no checkpoint; its old folder was moved to {aside}")
    else:
        shutil.rmtree(plan.run_dir)


def check_conflicts(plans: list[RunPlan]) -> None:
    bad = [p for p in plans if p.state == "conflict"]
    if bad:
        more = (f" (and {len(bad) - 1} more conflicting folders; see dry_run=true)"
                if len(bad) > 1 else "")
        raise ConfigError(f"{bad[0].run_dir} {bad[0].detail}; give the sweep another out= or "
                          f"move the folder away{more}")


def describe(plans: list[RunPlan]) -> list[str]:
    """One line per run for ``dry_run=true``: state, name, detail."""
    return [f"  {p.state:9s} {p.name}  ({p.detail})" for p in plans]


def counts(plans: list[RunPlan]) -> str:
    n = {s: sum(p.state == s for p in plans) for s in ("finished", "resume", "train", "conflict")}
    text = f"{n['finished']} finished, {n['resume']} to resume, {n['train']} to train"
    return text + (f", {n['conflict']} in conflict" if n["conflict"] else "")


# ------------------------------------------------------------------------------ launching
def command(plan: RunPlan) -> list[str]:
    """The `teamrl` arguments that run ``plan`` (train, or resume with the sweep's budget)."""
    if plan.state == "resume":
        return ["resume", str(plan.run_dir)] + [f"{k}={plan.overrides[k]}" for k in RESUME_KEYS
                                                if k in plan.overrides]
    return ["train", plan.algo, plan.env_id] + [f"{k}={v}" for k, v in plan.overrides.items()]


def cpu_slots(jobs: int) -> list[list[int] | None]:
    """CPU sets for ``jobs`` parallel runs: disjoint blocks of this process's CPUs (XLA sizes
    its thread pools by the CPUs a process may run on, so pinned runs do not oversubscribe the
    machine). None (no pinning) for one job or where affinity is unavailable."""
    if jobs == 1 or not hasattr(os, "sched_getaffinity"):
        return [None] * jobs
    cpus = sorted(os.sched_getaffinity(0))
    if jobs >= len(cpus):
        return [[cpus[i % len(cpus)]] for i in range(jobs)]
    return [cpus[i * len(cpus) // jobs:(i + 1) * len(cpus) // jobs] for i in range(jobs)]


def child_env(out: pathlib.Path, jobs: int, cpus, base=None) -> dict:
    """Environment of a run's process (``base``, default this process's, plus what the sweep
    sets): unbuffered output for the log; a compilation cache shared by the sweep's runs (runs
    differing only in seed compile the same programs); with several jobs, BLAS/OpenMP threads
    limited to the run's CPUs and no GPU memory preallocation (the runs share the device)."""
    # PYTHONSAFEPATH: neither the run nor its env worker processes (`python -c`) import
    # modules from the working directory (see LAUNCHER).
    env = dict(os.environ if base is None else base, PYTHONUNBUFFERED="1", PYTHONSAFEPATH="1")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str((out / ".jax_cache").resolve()))
    if jobs > 1:
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        threads = str(len(cpus) if cpus else max(1, (os.cpu_count() or 1) // jobs))
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, threads)
    return env


@dataclass
class _Running:
    plan: RunPlan
    proc: subprocess.Popen
    slot: int
    log_path: pathlib.Path
    log_file: Any
    start: float


@dataclass
class SweepOutcome:
    """What :func:`execute` did: plans by outcome, failures with ``(plan, exit code, log)``."""

    finished: list[RunPlan] = field(default_factory=list)
    failed: list[tuple[RunPlan, int, pathlib.Path]] = field(default_factory=list)
    interrupted: bool = False


def _last_line(path: pathlib.Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""


def _say(line: str) -> None:
    try:
        print(line, flush=True)  # progress must show when the sweep's output is piped to a file
    except BrokenPipeError:
        # The reader went away (`teamrl sweep ... | head`): the runs go on, unseen (their
        # logs have everything); later lines go to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def execute(plans: list[RunPlan], out: pathlib.Path, jobs: int, log=_say,
            backend: str = "local") -> SweepOutcome:
    """Run every plan in state train/resume as a `teamrl` process, at most ``jobs`` at a time.

    A failed run does not stop the others. Ctrl-C (or SIGTERM) sends SIGINT to every running
    run (which then stops like an interrupted `teamrl train`, keeping its latest checkpoint),
    waits up to STOP_GRACE_S for them, then kills what is left; a second Ctrl-C kills at once.
    """
    todo = deque(p for p in plans if p.state in ("train", "resume"))
    outcome = SweepOutcome(finished=[p for p in plans if p.state == "finished"])
    total, done = len(todo), 0
    # Ray places each run on a node and reserves its CPUs there: no local pinning.
    slots = cpu_slots(jobs) if backend == "local" else [None] * jobs
    free = list(range(jobs))
    running: list[_Running] = []
    (out / "logs").mkdir(parents=True, exist_ok=True)
    previous_term = _on_sigterm_raise_interrupt()
    try:
        while todo or running:
            while todo and free:
                running.append(_start(todo.popleft(), out, jobs, slots, free.pop(0), log,
                                      backend))
            time.sleep(0.2)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                r.log_file.close()
                free.append(r.slot)
                done += 1
                seconds = time.monotonic() - r.start
                rc = r.proc.returncode
                inspect_run(r.plan)
                if rc == 0 and r.plan.state == "finished":
                    outcome.finished.append(r.plan)
                    log(f"[teamrl] sweep {done}/{total}: {r.plan.name} done in {seconds:.0f} s"
                        + _tally(outcome, running))
                else:
                    outcome.failed.append((r.plan, rc, r.log_path))
                    why = getattr(r.proc, "error", None) or _last_line(r.log_path) \
                        or "no output"
                    log(f"[teamrl] sweep {done}/{total}: {r.plan.name} FAILED (exit {rc}): "
                        f"{why}; log {r.log_path}" + _tally(outcome, running))
    except KeyboardInterrupt:
        outcome.interrupted = True
        _stop(running, log)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    return outcome


def _tally(outcome: SweepOutcome, running: list) -> str:
    failed = f", {len(outcome.failed)} failed" if outcome.failed else ""
    return f" ({len(running)} running{failed})"


def _start(plan: RunPlan, out, jobs, slots, slot, log, backend: str = "local") -> _Running:
    if plan.state == "train":
        prepare_folder(plan, log)
    args = command(plan)
    cpus = slots[slot]
    launcher = list(LAUNCHER)
    if cpus:
        launcher += ["--cpus", ",".join(map(str, cpus))]
    log_path = out / "logs" / f"{plan.name}.log"
    log_file = open(log_path, "ab")
    pinned = f" (cpus {','.join(map(str, cpus))})" if cpus else ""
    log_file.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} teamrl "
                   f"{shlex.join(args)}{pinned}\n".encode())
    log_file.flush()
    # A session of its own: a terminal's Ctrl-C reaches only the sweep, which stops the runs
    # itself (so it knows they were interrupted rather than failed).
    if backend == "ray":
        from teamrl.scale.ray_cluster import RayRun

        log_file.close()  # the task appends to the log on its node
        # Only what the sweep sets travels: the node keeps its own PATH and environment.
        proc = RayRun(args, child_env(out, jobs, cpus, base={}), log_path, STOP_GRACE_S)
    else:
        proc = subprocess.Popen(launcher + args, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=child_env(out, jobs, cpus),
                                start_new_session=True)
    log(f"[teamrl] {args[0]} {plan.name}" + (f" ({plan.detail})" if args[0] == "resume" else ""))
    return _Running(plan, proc, slot, log_path, log_file, time.monotonic())


def _on_sigterm_raise_interrupt():
    """While runs are going, SIGTERM stops them as Ctrl-C does; returns the previous handler."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _stop(running: list[_Running], log) -> None:
    if not running:
        return
    log(f"[teamrl] sweep interrupted: stopping {len(running)} run(s) (their latest checkpoints "
        "are kept; run the sweep again to resume them)")
    for r in running:
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    try:
        while any(r.proc.poll() is None for r in running) and time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    for r in running:
        if r.proc.poll() is None:
            r.proc.kill()
        r.proc.wait()
        r.log_file.close()


# -------------------------------------------------------------------------------- report
def write_reports(spec: SweepSpec, finished: list[RunPlan]) -> list[tuple[pathlib.Path, dict]]:
    """`teamrl report` over the finished runs into ``out/report`` (``out/report/<grid point>``
    per grid point: the report pools run folders by algorithm name, so each grid point gets its
    own comparison of algorithms). Returns ``[(folder, result)]``; raises ReportInputError."""
    from teamrl.analysis.report import write_report

    groups: dict[str, list[RunPlan]] = {}
    for plan in finished:
        label = "__".join(f"{k}={_slug(plan.point[k])}" for k in sorted(plan.point))
        groups.setdefault(_NAME_CHARS.sub("-", label), []).append(plan)
    written = []
    for label, members in groups.items():
        folder = spec.out / "report" / label if label else spec.out / "report"
        order = sorted(members, key=lambda p: (p.algo, p.env_id, p.seed))
        out, result, _ = write_report([str(p.run_dir) for p in order], folder, **spec.report)
        written.append((out, result))
    return written


def run_sweep(path, jobs: int = 1, dry_run: bool = False, log=_say, backend: str = "local",
              address: str = "") -> int:
    """The `teamrl sweep` command: check, plan, run, report; returns the exit code (0 all
    finished, 1 a run or the report failed, 130 interrupted). Raises ConfigError on bad input
    or a conflicting folder, before anything is launched or written. ``backend="ray"`` runs
    the runs as Ray tasks (:mod:`teamrl.scale.ray_cluster`) on the cluster at ``address`` (empty: a
    local Ray instance)."""
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend={backend!r} is not valid; valid choices: local, ray")
    if address and backend != "ray":
        raise ConfigError(f"address={address!r} needs backend=ray")
    if backend == "ray":
        from teamrl.scale.ray_cluster import require_ray

        require_ray()  # before anything is planned or written
    spec = load_sweep(path)
    plans = plan_runs(spec)
    log(f"[teamrl] sweep {spec.path}: {len(plans)} runs in {spec.out} ({counts(plans)})")
    if dry_run:
        for line in describe(plans):
            log(line)
        check_conflicts(plans)
        return 0
    check_conflicts(plans)
    if backend == "ray" and any(p.state in ("train", "resume") for p in plans):
        from teamrl.scale.ray_cluster import connect

        ray = connect(address)
        log(f"[teamrl] sweep on Ray: {len(ray.nodes())} node(s), "
            f"{int(ray.cluster_resources().get('CPU', 0))} CPUs")
    spec.out.mkdir(parents=True, exist_ok=True)
    with _SweepLock(spec.out):
        outcome = execute(plans, spec.out, jobs, log, backend)
    if outcome.interrupted:
        print("teamrl: sweep interrupted; run it again to resume", file=sys.stderr)
        return 130
    code = 0
    if outcome.finished:
        try:
            for folder, result in write_reports(spec, outcome.finished):
                iqms = ", ".join(f"{algo} {agg['iqm'][0]:.3f}"
                                 for algo, agg in result["aggregate"].items())
                log(f"[teamrl] report written to {folder} (normalised IQM: {iqms})")
        except ConfigError as err:
            print(f"teamrl: error: report: {err}", file=sys.stderr)
            code = 1
    if outcome.failed:
        print(f"teamrl: error: {len(outcome.failed)} of {len(plans)} runs failed:",
              file=sys.stderr)
        for plan, rc, log_path in outcome.failed:
            print(f"  {plan.name} (exit {rc}): log {log_path}", file=sys.stderr)
        return 1
    log(f"[teamrl] sweep done: {len(outcome.finished)}/{len(plans)} runs finished")
    return code


class _SweepLock:
    """An exclusive lock on ``out/.sweep.lock``: two sweeps in one folder would train the same
    run twice. Released by the OS if the sweep dies."""

    def __init__(self, out: pathlib.Path):
        self.path = out / ".sweep.lock"
        self.file = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.file = open(self.path, "w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise ConfigError(f"another sweep is running in {self.path.parent}; wait for it "
                              "or stop it first") from None
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()
