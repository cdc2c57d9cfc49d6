"""The harness of the experiment scripts: their shared flags, the grid of runs (resumable: a
run folder that already finished with the same request is not trained again; one interrupted
with the same config continues from its latest checkpoint), ``--report-only`` rebuilds from
saved runs, evaluations reused from the run folder, and the pieces of a results page that
every script writes the same way. A script keeps only what is particular to its claim: its
flags, which runs make its grid, what it reads from a finished run, its figure and the text
of its page.

The grids plotted with `teamrl plot`'s learning curves (smax, mamujoco, football) hand these
to ``grid_main``; the others spell out the same steps where their figure or page needs more::

    parser = experiment_parser(__doc__, runs=SAVED / "name")   # + the script's own flags
    args, argv = parse_flags(parser, argv)
    out, code = page_folder(args), import_teamrl()
    results = run_grid([Run(...), ...], code, read, report_only=args.report_only)
    save_results(args, argv, by_name(results))
    # ... the figure and the page (table_rows, paragraph, command_block, ...) from results

Runs that take longer than one working session go under ``SAVED`` (experiments/saved/<name>/),
which is tracked by git except each run's checkpoints/ and tb/ (see .gitignore): what a report
needs (config.yaml, metrics.csv, experiment.json and the eval_*.json of the final policy)
survives the machine, so a grid can be finished over several sessions and its page rebuilt
with ``--report-only`` anywhere. Sections and their rows follow the protocol of
experiments/make_results.py."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from make_results import EXIT_NO_SAVED_RUNS

ROOT = Path(__file__).resolve().parents[1]
DONE_FILE = "experiment.json"
ARGV_FILE = "argv.json"
RESULTS_FILE = "results.json"
SAVED = ROOT / "experiments" / "saved"
PAGES = ROOT / "docs" / "results"
PAGE_WIDTH = 92  # the pages' prose is wrapped at this width, so their diffs stay readable


# ------------------------------------------------------------------------------ command line
def experiment_parser(doc: str, runs=None, note: bool = True,
                      report_only: str | None = "train nothing: rebuild the page from the "
                                                 "saved runs") -> argparse.ArgumentParser:
    """A script's parser, described by its docstring's first paragraph, with the flags the
    scripts share: --runs (folder of the run folders; only where ``runs``, its default, is
    given), --out (folder of the page), --note (a paragraph added to the page; where ``note``)
    and --report-only (help ``report_only``; None for a script with nothing saved to
    rebuild from). The script adds its own flags."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if runs is not None:
        parser.add_argument("--runs", default=str(runs))
    parser.add_argument("--out", default=str(PAGES))
    if note:
        parser.add_argument("--note", default="",
                            help="a paragraph added to the page (e.g. how the runs were made)")
    if report_only is not None:
        parser.add_argument("--report-only", action="store_true", help=report_only)
    return parser


def add_budget_flags(parser: argparse.ArgumentParser, steps: int, algos: list[str],
                     episodes: int, episodes_help: str, seeds: int = 3) -> None:
    """--steps (env steps per seed), --seeds, --algos (a subset of ``algos``) and --episodes
    (evaluation episodes per seed, ``episodes_help`` says which): the budget of a grid that
    trains every algorithm alike."""
    parser.add_argument("--steps", type=int, default=steps, help="env steps per seed")
    parser.add_argument("--seeds", type=int, default=seeds)
    parser.add_argument("--algos", nargs="+", default=algos, choices=algos)
    parser.add_argument("--episodes", type=int, default=episodes, help=episodes_help)


def add_protocol_flag(parser: argparse.ArgumentParser, protocol: str, help: str) -> None:
    """--eval-protocol: ``custom`` (the presets' evaluation during training) or the published
    ``protocol`` (see budget_settings)."""
    parser.add_argument("--eval-protocol", default="custom", choices=["custom", protocol],
                        help=help)


def parse_flags(parser: argparse.ArgumentParser, argv=None, reuse_saved: bool = True):
    """(args, argv) of this invocation (``argv`` None: the command line). ``reuse_saved``:
    under --report-only the arguments that trained the runs come first (reuse_saved_argv,
    from --runs/argv.json)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if reuse_saved:
        return reuse_saved_argv(parser, argv, lambda a: Path(a.runs) / ARGV_FILE), argv
    return parser.parse_args(argv), argv


def page_folder(args) -> Path:
    """--out, created: where the page and its figures go."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_argv(path: Path, argv: list[str]) -> None:
    """Record a training invocation's arguments next to its runs (see reuse_saved_argv)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"argv": list(argv)}, ensure_ascii=False, indent=1))


def reuse_saved_argv(parser: argparse.ArgumentParser, argv: list[str], saved_path):
    """Parse ``argv``; with ``--report-only``, the arguments saved by the invocation that trained
    the runs (``saved_path(args)``, written by save_argv) come first, so the rebuilt section
    keeps its settings and ``--note``; arguments given now still win. ``--report-only`` alone
    without saved arguments exits EXIT_NO_SAVED_RUNS: rebuilding with the defaults could drop
    the page's --note or describe other settings."""
    args = parser.parse_args(argv)
    if not getattr(args, "report_only", False):
        return args
    path = Path(saved_path(args))
    if not path.is_file():
        if any(a != "--report-only" for a in argv):
            return args
        print(f"--report-only: {path} (the arguments of the run that saved the results) is "
              "missing; give them, and its --note, explicitly", file=sys.stderr)
        raise SystemExit(EXIT_NO_SAVED_RUNS)
    saved = json.loads(path.read_text()).get("argv", [])
    return parser.parse_args([a for a in saved if a != "--report-only"] + list(argv))


# ------------------------------------------------------------------------------ code, output
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


def import_teamrl() -> str:
    """The code version (code_version), then teamrl's envs and trainer imported: the runs of
    this process train with the code of this moment, whatever the working tree becomes, so
    that is the version their records give. Call it before echoed_output: importing jaxmarl
    (via teamrl.envs) resets sys.stdout to the real stream, which would end a capture."""
    code = code_version()
    import teamrl.envs  # noqa: F401
    import teamrl.train  # noqa: F401
    import teamrl.train.evaluate  # noqa: F401

    return code


@contextmanager
def echoed_output():
    """Print as usual and keep a copy: yields the StringIO that collects what is printed (for
    the page's "Output of the run that produced this page")."""
    log = io.StringIO()

    class Tee(io.TextIOBase):
        def write(self, text):
            sys.__stdout__.write(text)
            sys.__stdout__.flush()
            return log.write(text)

    with redirect_stdout(Tee()):
        yield log


# ------------------------------------------------------------------------------ one run
def train_or_skip(run_dir: Path, algo: str, env_id: str, settings: dict, code: str,
                  force: bool = False) -> dict:
    """Train ``algo`` on ``env_id`` with ``settings`` into ``run_dir`` unless that folder
    already finished with exactly these settings (or ``force``); returns {"wall_s",
    "skipped", ...}. ``code`` is recorded (the version taken when teamrl was imported).

    A run interrupted with the same config (a checkpoint short of the target, as a grid
    stopped at the end of a session leaves) is resumed from its latest checkpoint, not
    restarted; its record then adds the interrupted part's training time to ``wall_s``,
    says ``resumed_at`` (updates done before) and ``code`` is the version that finished it."""
    from teamrl.config import apply_overrides
    from teamrl.train import train
    from teamrl.train.presets import base_config

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


def resumable_updates(run_dir: Path, config) -> dict | None:
    """{"updates", "wall_time"} of an interrupted run in ``run_dir`` that ``config``
    (the requested one) can continue: a latest checkpoint short of the target, saved with the
    same config apart from what ``teamrl resume`` may change. None otherwise (nothing there,
    another config, or already at the target), and the run is trained afresh."""
    from teamrl import runs
    from teamrl.cli.sweep import checkpoint_meta, config_differences
    from teamrl.config import with_new_defaults
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


def saved_record(run_dir) -> dict | None:
    """The record a finished run left (train_or_skip's experiment.json), None when there is
    none or it cannot be read."""
    done = Path(run_dir) / DONE_FILE
    try:
        return json.loads(done.read_text()) if done.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def require_saved_run(run_dir, algo: str, env_id: str, settings: dict) -> None:
    """``--report-only``: exit EXIT_NO_SAVED_RUNS unless ``run_dir`` finished with exactly this
    request, so nothing gets trained."""
    record = saved_record(run_dir)
    request = {"algo": algo, "env_id": env_id, "settings": settings}
    if record is None or record.get("request") != request:
        print(f"--report-only: no finished run of {algo} on {env_id} with {settings} in "
              f"{run_dir}; run the script without --report-only to train it", file=sys.stderr)
        raise SystemExit(EXIT_NO_SAVED_RUNS)


# ------------------------------------------------------------------------------ the grid
@dataclass(frozen=True)
class Run:
    """One cell of a grid: ``algo`` trained on ``env_id`` with ``settings`` (the overrides of
    its preset, all strings) into ``run_dir``. ``key`` indexes its record in the results;
    ``label`` names it in printed lines (padded where a script aligns its columns)."""

    key: object
    label: str
    algo: str
    env_id: str
    settings: dict
    run_dir: Path


def run_folder(runs, name: str, algo: str, steps: int, seeds: int, tag: str = "") -> Path:
    """``runs/<name>_<algo>_steps<steps>_seeds<seeds><tag>``, every script's run folder."""
    return Path(runs) / f"{name}_{algo}_steps{steps}_seeds{seeds}{tag}"


def budget_settings(steps: int, seeds: int, eval_protocol: str = "custom") -> dict:
    """The settings of a run of ``seeds`` seeds and ``steps`` env steps per seed; with a
    published ``eval_protocol`` (harl, smac) its evaluation during training as well."""
    settings = {"seeds": str(seeds), "total_steps": str(steps)}
    if eval_protocol != "custom":
        # Logged every 5 updates, evaluated every 5 rows: the protocols' 25 updates.
        settings.update(eval_protocol=eval_protocol, log_every="5", eval_every="5")
    return settings


def _print_now(text: str) -> None:
    print(text, flush=True)


def run_grid(grid: list[Run], code: str, read, *, report_only: bool = False,
             unfinished: str = "exit", keep_going: bool = True,
             retrain_unloadable: bool = False, say=_print_now) -> dict:
    """{run.key: record} for the runs of ``grid``, in order.

    Each run is trained unless its folder finished with the same request (train_or_skip,
    which also resumes an interrupted one; ``code`` is recorded); then ``read(run, info)``
    (``info``: train_or_skip's record) returns the run's record, printing its line if it
    wants one. ``report_only`` trains nothing: ``info`` is the saved record, and a run that
    did not finish with this request exits EXIT_NO_SAVED_RUNS (``unfinished="exit"``), is
    recorded as {"not_run": True} ("not run": a grid spread over sessions reports what is
    done so far) or is left out of the results ("left out").

    ``keep_going``: a run that fails is recorded as {"error": "<type>: <message>"} and the
    grid goes on (otherwise the error propagates). ``retrain_unloadable``: a run found
    finished whose ``read`` raises ValueError (a folder of older code that no longer loads)
    is trained again from scratch. ``say`` prints the harness's lines."""
    results = {}
    for run in grid:
        if report_only:
            record = saved_record(run.run_dir)
            request = {"algo": run.algo, "env_id": run.env_id, "settings": run.settings}
            if record is None or record.get("request") != request:
                if unfinished == "exit":
                    require_saved_run(run.run_dir, run.algo, run.env_id, run.settings)
                why = (f"no finished run in {run.run_dir}" if record is None else
                       f"{run.run_dir} finished with other settings "
                       f"{record.get('request', {}).get('settings')}")
                if unfinished == "not run":
                    say(f"{run.label}: {why}; not run yet")
                    results[run.key] = {"not_run": True}
                else:
                    say(f"{run.label}: {why}; left out")
                continue
        try:
            if report_only:
                results[run.key] = read(run, {**record, "skipped": True})
                continue
            info = train_or_skip(run.run_dir, run.algo, run.env_id, run.settings, code)
            try:
                results[run.key] = read(run, info)
            except ValueError as err:
                if not (retrain_unloadable and info["skipped"]):
                    raise
                say(f"{run.label.rstrip()}: earlier run folder not loadable ({err}); "
                    "retraining")
                info = train_or_skip(run.run_dir, run.algo, run.env_id, run.settings, code,
                                     force=True)
                results[run.key] = read(run, info)
        except Exception as err:  # report and go on with the other runs
            if not keep_going:
                raise
            results[run.key] = {"error": f"{type(err).__name__}: {err}"}
            say(f"{run.label} FAILED: {type(err).__name__}: {err}")
            traceback.print_exc(file=sys.stderr)
    return results


def grid_main(parser: argparse.ArgumentParser, argv, name: str, grid, read, write_markdown,
              y: str = "return_mean", unfinished: str = "exit") -> None:
    """main() of a script whose page reports a grid with `teamrl plot`'s learning curves.

    Parses the flags (parse_flags), runs ``grid(args)`` (a list of Run) through run_grid with
    ``read(args, run, info)``, plots ``y`` of the finished runs to <out>/<name>.png, saves
    results.json (and argv.json after training) and writes the page <out>/<name>.md with
    ``write_markdown(path, args, results, code, wall)``."""
    args, argv = parse_flags(parser, argv)
    out = page_folder(args)
    code = import_teamrl()
    from teamrl.analysis.plots import plot_runs

    start = time.time()
    results = run_grid(grid(args), code, lambda run, info: read(args, run, info),
                       report_only=args.report_only, unfinished=unfinished)
    run_dirs = [Path(r["run_dir"]) for r in finished(results).values()]
    if args.report_only and unfinished == "not run" and not run_dirs:
        raise SystemExit(EXIT_NO_SAVED_RUNS)  # nothing finished yet: no page to rebuild
    if run_dirs:
        plot_runs(run_dirs, out / f"{name}.png", y=y)
    save_results(args, argv, by_name(results))
    write_markdown(out / f"{name}.md", args, results, code, time.time() - start)


def finished(results: dict) -> dict:
    """The records of ``results`` that hold numbers (not failed, not run yet)."""
    return {key: r for key, r in results.items() if "error" not in r and "not_run" not in r}


def by_name(results: dict, drop=()) -> dict:
    """``results`` keyed by text for results.json ((map, algo) -> "map algo"), without the
    fields in ``drop`` (e.g. arrays)."""
    return {" ".join(map(str, key)) if isinstance(key, tuple) else str(key):
            {k: v for k, v in r.items() if k not in drop} for key, r in results.items()}


def save_results(args, argv, summary) -> None:
    """``summary`` as results.json under --runs and, after a training invocation, its
    arguments (argv.json: what --report-only parses again). ``argv`` None: none saved."""
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    (runs / RESULTS_FILE).write_text(json.dumps(summary, indent=2, default=str))
    if argv is not None and not args.report_only:
        save_argv(runs / ARGV_FILE, argv)


# ------------------------------------------------------------------------------ a run's numbers
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


def read_curves(run_dir: Path):
    """(env_steps [T], return_mean [seeds, T], steps_per_s [T]) of the run's log rows."""
    import numpy as np

    from teamrl.runs import read_metrics

    per_seed: dict = {}
    sps: dict = {}
    for row in read_metrics(run_dir):
        per_seed.setdefault(int(row["seed"]), []).append((row["env_steps"], row["return_mean"]))
        sps[row["env_steps"]] = row["steps_per_s"]
    series = [sorted(v) for _, v in sorted(per_seed.items())]
    x = np.array([p[0] for p in series[0]])
    return x, np.array([[p[1] for p in s] for s in series]), np.array([sps[v] for v in x])


def steady_rate(steps_per_s) -> float:
    """Env steps per second in the steady state: the median over log rows after the first
    (compilation happens outside the timed chunk, but the first chunk warms caches)."""
    import numpy as np

    return float(np.median(steps_per_s[1:] if len(steps_per_s) > 1 else steps_per_s))


def evaluation_returns(run_dir: Path, episodes: int, deterministic: bool) -> list[float]:
    """Per seed: the mean return of ``episodes`` evaluation episodes of the final (``latest``)
    checkpoint, evaluated now (``teamrl eval RUN_DIR checkpoint=latest``)."""
    from teamrl.train.evaluate import evaluate_run

    result = evaluate_run(run_dir, episodes, deterministic, checkpoint="latest")
    return [row["return_mean"] for row in result["seeds"]]


def evaluate_or_reuse(run_dir: Path, episodes: int, deterministic: bool,
                      checkpoint: str = "latest") -> dict:
    """``teamrl.train.evaluate.evaluate_run`` of the run's final ``checkpoint``, or the result
    it wrote before (``eval_<checkpoint>_<det|stoch>.json``) when that covered the same number
    of episodes of the same checkpoint, so a saved run whose checkpoints are gone (SAVED keeps
    none) is still reported. (Training a run folder again deletes the folder first, so an
    eval file there always belongs to the run's current training.)"""
    from teamrl.train.evaluate import evaluate_run

    saved = run_dir / f"eval_{checkpoint}_{'det' if deterministic else 'stoch'}.json"
    if saved.is_file() and (run_dir / DONE_FILE).is_file():
        result = json.loads(saved.read_text())
        if result.get("episodes") == episodes and result.get("checkpoint") == checkpoint:
            return result
    return evaluate_run(run_dir, episodes, deterministic, checkpoint=checkpoint)


def curve_record(run_dir: Path, info: dict, episodes: int, **extra) -> dict:
    """A run's learning curve and final numbers: "curve" (env steps [T], training return
    [seeds, T]), per seed the final training return (last log row) and the deterministic
    evaluation of the final policy (``episodes`` per seed, evaluation_returns), what
    train_or_skip recorded (``info``), the steady-state env steps per second, then ``extra``
    and the folder."""
    x, y, sps = read_curves(run_dir)
    return {"curve": (x, y), "final_train": y[:, -1].tolist(),
            "eval_det": evaluation_returns(run_dir, episodes, True),
            "wall_s": info["wall_s"], "skipped": info["skipped"],
            "code": info.get("code", "unknown"), "load": info.get("load"),
            "env_steps": int(x[-1]), "steps_per_s": steady_rate(sps), **extra,
            "run_dir": str(run_dir)}


def curve_line(label: str, r: dict, seeds: int, after_train: str = "") -> str:
    """The printed line of a curve_record: budget, wall time, speed, final training return
    (``after_train`` follows it) and evaluation."""
    return (f"{label} {r['env_steps']:,} steps x {seeds} seeds | "
            f"wall {r['wall_s']:.0f} s{' (earlier run)' if r['skipped'] else ''}"
            + (f" (load {r['load'][0]:.1f}->{r['load'][1]:.1f})" if r.get("load") else "")
            + f" | {r['steps_per_s']:,.0f} env-steps/s (all seeds) | "
            f"final train {mean_sd(r['final_train'])} "
            f"{[round(v, 2) for v in r['final_train']]}{after_train} | "
            f"det eval {mean_sd(r['eval_det'])} {[round(v, 2) for v in r['eval_det']]}")


def run_facts(info: dict, run_dir: Path) -> dict:
    """What a run's record says besides its numbers: wall time (all seeds), env steps per
    second, the machine's load before and after, the code version and the folder."""
    return {"wall_s": info["wall_s"], "steps_per_s": info.get("steps_per_s"),
            "load": info.get("load"), "code": info.get("code"), "run_dir": str(run_dir)}


# ------------------------------------------------------------------------------ figures
def new_figure(rows: int, cols: int, figsize):
    """(fig, axes [rows, cols]) of a page's figure, drawn with matplotlib's Agg backend (no
    display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=figsize, squeeze=False)


def save_figure(fig, path: Path, title: str | None = None) -> None:
    """Write ``fig`` (with its ``title`` above the panels) to ``path`` and free it."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def seed_bands(ax, records: dict, colors: dict, names: dict, digits: int, scale=None) -> None:
    """One panel of learning curves: per algorithm ({algo: record}; records without a
    ``curve`` are skipped), the mean over seeds and a min–max band over seeds of
    ``scale(return)``, labelled with its mean final training return (``digits``)."""
    import numpy as np

    scale = scale or np.asarray
    for algo, r in records.items():
        if r is None or "curve" not in r:
            continue
        x, y = r["curve"][0], scale(r["curve"][1])
        ax.plot(x, y.mean(0), color=colors[algo], lw=1.6,
                label=f"{names[algo]} ({np.mean(scale(r['final_train'])):.{digits}f})")
        ax.fill_between(x, y.min(0), y.max(0), color=colors[algo], alpha=0.18, lw=0)
    ax.set_xlabel("env steps per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", title="final mean", title_fontsize=8)


# ------------------------------------------------------------------------------ the page
def trained_code_and_wall(results, code: str, wall: float) -> tuple[str, float]:
    """The code versions and summed training time of the runs in ``results`` ({key: record}
    with ``wall_s`` and ``code`` for trained runs), falling back to ``code`` / ``wall``: a
    --report-only rebuild trains nothing, so its own version and duration say nothing about
    the numbers."""
    trained = [r for r in results.values() if "wall_s" in r]
    return (", ".join(sorted({r.get("code") or code for r in trained})) or code,
            sum(r["wall_s"] for r in trained) or wall)


def table_rows(cells, results: dict, columns: int, numbers, absent: str | None = None):
    """The rows of a page's table, one per grid cell ``(key, leading cells)``: the leading
    cells, then ``numbers(key, record)`` (the rest of the row) for a record with numbers, or
    "failed: <error>" / "not run yet" and empty cells up to ``columns``. A cell without a
    record reads ``absent`` the same way, or is left out (None)."""
    rows = []
    for key, leading in cells:
        record = results.get(key)
        if record is None:
            if absent is None:
                continue
            text = absent
        elif "error" in record:
            text = f"failed: {record['error']}"
        elif "not_run" in record:
            text = "not run yet"
        else:
            rows.append("| " + " | ".join([*leading, *numbers(key, record)]) + " |")
            continue
        rows.append("| " + " | ".join([*leading, text]) + " |"
                    + " |" * (columns - len(leading) - 1))
    return rows


def missing_note(records: dict) -> str:
    """' (failed: A, B) (not run yet: C)' for the cells of a results row ({name: record or
    None}) that hold no numbers; '' when all do."""
    failed = [name for name, r in records.items() if r is None or "error" in r]
    not_run = [name for name, r in records.items() if r is not None and "not_run" in r]
    return ((f" (failed: {', '.join(failed)})" if failed else "")
            + (f" (not run yet: {', '.join(not_run)})" if not_run else ""))


def paragraph(text: str, break_on_hyphens: bool = True) -> list[str]:
    """``text`` as the page's lines (PAGE_WIDTH), then a blank line. ``break_on_hyphens``
    False keeps "one-hot" whole (broken, it renders as "one- hot")."""
    import textwrap

    return textwrap.wrap(text, PAGE_WIDTH, break_on_hyphens=break_on_hyphens) + [""]


REPRODUCE_RUNS = ("**Reproduce** (runs are bitwise reproducible on CPU; finished run folders "
                  "are reused):")


def command_block(commands: list[str], heading: str = REPRODUCE_RUNS) -> list[str]:
    """``heading`` (how to reproduce the page) and the shell ``commands`` in a bash block."""
    return [heading, "", "```bash", *commands, "```", ""]


def output_block(output: str, python_version: bool = False) -> list[str]:
    """What the run that produced the page printed, in a text block; ``python_version``:
    the heading names the Python that ran it."""
    import platform

    where = f" ({platform.python_version()}, CPU)" if python_version else ""
    return [f"Output of the run that produced this page{where}:", "", "```text",
            output.rstrip(), "```", ""]


def mean_sd(values, digits: int = 2) -> str:
    """'mean ± sd' over seeds."""
    import numpy as np

    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def with_minus(value: float) -> str:
    """One decimal with a typographic minus (−), as the results rows print returns."""
    return f"{value:.1f}".replace("-", "−")


def load_cell(record: dict) -> str:
    """'1.2 → 3.4', the table cell of the machine's load before and after a run, or '–'."""
    load = record.get("load")
    return f"{load[0]:.1f} → {load[1]:.1f}" if load else "–"
