"""`teamrl report`: final scores of many runs, aggregated across envs and seeds.

``teamrl report RUN_DIR... out=DIR [metric=eval_return_det] [resamples=2000] [seed=0]
[norm=FILE.yaml]`` writes into DIR:

- ``scores.csv``: one row per (algo, env, seed): the final score, its normalised value, how
  many values it averages, the last env_steps and the run folder;
- ``summary.md`` / ``summary.csv``: per env the mean final score of each algorithm with a
  95% bootstrap interval over seeds; over all envs the IQM and the mean of normalised scores
  per algorithm with stratified-bootstrap intervals; P(X > Y) for every pair of algorithms;
- ``aggregate.png`` (IQM and mean with their intervals) and ``profiles.png`` (performance
  profiles with bootstrap bands);
- ``marl_eval.json``: the raw data in marl-eval's format (:func:`marl_eval_data`).

The final score of a seed is the mean of its last 10% (rounded up, at least one) of finite
values of the metric, in env_steps order, after a resume's re-logged rows have replaced the
rows they repeat. For ``eval_return_*`` these are the evaluation rows only (every
``eval_every`` log rows and at the end); averaging a few values rather than taking the last
one damps evaluation noise. Runs of the same (algo, env) pool their seeds, as in
``teamrl plot``. Statistics: :mod:`teamrl.analysis.stats`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib

import numpy as np

from teamrl.analysis import stats
from teamrl.config import ConfigError

DEFAULT_METRIC = "eval_return_det"
FINAL_FRACTION = 0.1
FILES = ("scores.csv", "summary.md", "summary.csv", "aggregate.png", "profiles.png",
         "marl_eval.json")
PROFILE_POINTS = 101


class ReportInputError(ConfigError):
    """Bad input to :func:`write_report` (the CLI turns it into a one-line error, exit 2)."""


# ---------------------------------------------------------------------------------- scores


def final_score(values):
    """``(mean of the last ceil(FINAL_FRACTION * n) of values [n], how many)``; n >= 1."""
    values = np.asarray(values, dtype=np.float64)
    k = max(1, math.ceil(FINAL_FRACTION * len(values) - 1e-9))
    return float(values[-k:].mean()), k


def load_report_runs(run_dirs, metric: str) -> list[dict]:
    """Read and check run folders (see :func:`teamrl.analysis.plots.load_runs`) and that ``metric`` is
    a column of every metrics.csv. Raises ReportInputError naming the bad path or value."""
    from teamrl.analysis.plots import PlotInputError, load_runs, missing_column

    if not run_dirs:
        raise ReportInputError("report needs at least one RUN_DIR")
    for d in run_dirs:  # plots' message for these ("no config.yaml") would mislead
        if not pathlib.Path(d).exists():
            raise ReportInputError(f"{str(d)!r} does not exist")
        if not pathlib.Path(d).is_dir():
            raise ReportInputError(f"{str(d)!r} is not a run folder")
    try:
        loaded = load_runs(run_dirs, "env_steps", "env_steps")
    except PlotInputError as err:
        raise ReportInputError(str(err)) from None
    missing = missing_column(loaded, {"metric": metric})
    if missing:
        raise ReportInputError(missing)
    return loaded


def collect_scores(loaded: list[dict], metric: str):
    """Final score of every (run folder, seed): ``(records, notes)``.

    ``records``: list of dicts with ``algo``, ``env_id``, ``seed``, ``run_dir``, ``steps``
    [T] and ``values`` [T] (the seed's finite metric values), ``score`` and ``n_final``
    (values averaged), in order of run folders then seeds. Seeds without a finite value are
    left out with a note.
    """
    from teamrl.analysis.plots import _BOOKKEEPING_KEYS, _flatten, _seed_name, run_seed_curves

    records, notes, owner, group_configs = [], [], {}, {}
    for run in loaded:
        name = f"{run['algo']} on {run['env_id']}"
        per_seed = run_seed_curves(run["rows"], "env_steps", metric)
        for s in sorted({r.get("seed", 0.0) for r in run["rows"]} - set(per_seed), key=str):
            notes.append(f"{name}: seed {_seed_name(s)} of {run['dir']} has no finite {metric}; "
                         f"left out")
        for s in sorted(per_seed, key=str):
            key = (run["algo"], run["env_id"], s)
            if key in owner:
                notes.append(f"{name}: seed {_seed_name(s)} is in both {owner[key]} and "
                             f"{run['dir']}; each counts as a separate seed")
            owner.setdefault(key, run["dir"])
            steps, values = per_seed[s]
            score, n_final = final_score(values)
            records.append({"algo": run["algo"], "env_id": run["env_id"], "seed": _seed_name(s),
                            "run_dir": run["dir"], "steps": steps, "values": values,
                            "score": score, "n_final": n_final})
        group_configs.setdefault((run["algo"], run["env_id"]), []).append(
            _flatten(run["config"]))
    for (algo, env_id), flat in group_configs.items():
        keys = sorted({k for f in flat for k in f} - _BOOKKEEPING_KEYS)
        differ = [k for k in keys if any(f.get(k) != flat[0].get(k) for f in flat[1:])]
        if differ:
            shown = ", ".join(differ[:5]) + (", ..." if len(differ) > 5 else "")
            notes.append(f"{algo} on {env_id}: pooling {len(flat)} runs whose configs differ "
                         f"in {shown}")
    return records, notes


# ----------------------------------------------------------------------------- normalising


def read_norm_file(path) -> dict:
    """``{env_id: (low, high)}`` from a YAML mapping of env id to ``[low, high]`` or
    ``{low: L, high: H}``, e.g. ``mpe/simple_spread: [-200, -60]``."""
    import yaml

    path = pathlib.Path(path)
    if not path.is_file():
        raise ReportInputError(f"norm={str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ReportInputError(f"norm={str(path)!r} is not readable YAML "
                               f"({type(err).__name__})") from None
    if not isinstance(data, dict) or not data:
        raise ReportInputError(f"norm={str(path)!r} must map env ids to [low, high]")
    table = {}
    for env, value in data.items():
        pair = (value.get("low"), value.get("high")) if isinstance(value, dict) else value
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in pair)
        if not ok or not pair[1] > pair[0]:
            raise ReportInputError(f"norm={str(path)!r}: {env} must be [low, high] with "
                                   f"finite numbers and high > low, got {value!r}")
        table[str(env)] = (float(pair[0]), float(pair[1]))
    return table


def normalisation_bounds(records: list[dict], norm: dict | None, norm_name: str = "norm"):
    """Per env ``(low, high, source)``: from ``norm`` where given, else the min and max final
    score over all runs (all algorithms) of that env. Returns ``(bounds, notes)``."""
    bounds, notes = {}, []
    for env in dict.fromkeys(r["env_id"] for r in records):
        scores = [r["score"] for r in records if r["env_id"] == env]
        if norm and env in norm:
            bounds[env] = (*norm[env], norm_name)
            continue
        if norm:
            notes.append(f"{env} is not in {norm_name}; normalised by the min and max over its "
                         f"runs")
        bounds[env] = (min(scores), max(scores), "runs")
        if min(scores) == max(scores):
            notes.append(f"every run of {env} scores {min(scores):g}; its normalised scores "
                         f"are all 0")
    return bounds, notes


# ------------------------------------------------------------------------------ statistics


def compute_report(records: list[dict], bounds: dict, ci: float = 0.95,
                   resamples: int = 2000, seed: int = 0) -> dict:
    """All the numbers of the report (every interval uses the bootstrap ``seed``, so each
    is reproducible on its own and does not shift when runs of other algorithms are added).

    Returns a dict with ``algos`` and ``envs`` (order of first appearance), ``per_env``
    {(algo, env): (mean, low, high, n_seeds)} of raw final scores, ``aggregate``
    {algo: {"iqm": (p, lo, hi), "mean": (p, lo, hi), "envs": M, "runs": N}} of normalised
    scores, ``improvement`` [(x, y, p, lo, hi, n_envs)] for each pair of algorithms that
    share an env, and ``taus`` [K] with ``profiles`` {algo: (profile, lo, hi)} each [K].
    Adds each record's ``normalised`` score.
    """
    from teamrl.analysis.plots import bootstrap_mean_ci

    algos = list(dict.fromkeys(r["algo"] for r in records))
    envs = list(dict.fromkeys(r["env_id"] for r in records))
    raw, normed = {}, {}
    for r in records:
        low, high, _ = bounds[r["env_id"]]
        r["normalised"] = float(stats.min_max_normalise(r["score"], low, high))
        raw.setdefault((r["algo"], r["env_id"]), []).append(r["score"])
        normed.setdefault((r["algo"], r["env_id"]), []).append(r["normalised"])
    kw = {"ci": ci, "resamples": resamples, "seed": seed}
    per_env = {}
    for (algo, env), values in raw.items():
        mean, low, high = bootstrap_mean_ci(np.array(values)[:, None], **kw)
        per_env[(algo, env)] = (float(mean[0]), float(low[0]), float(high[0]), len(values))

    def task_scores(algo, among=envs):
        return [np.array(normed[(algo, e)]) for e in among if (algo, e) in normed]

    aggregate = {}
    for algo in algos:
        ts = task_scores(algo)
        aggregate[algo] = {"iqm": tuple(map(float, stats.iqm_interval(ts, **kw))),
                           "mean": tuple(map(float, stats.mean_interval(ts, **kw))),
                           "envs": len(ts), "runs": sum(len(s) for s in ts)}
    improvement = []
    for i, x in enumerate(algos):
        for y in algos[i + 1:]:
            shared = [e for e in envs if (x, e) in normed and (y, e) in normed]
            if shared:
                p = stats.improvement_interval(task_scores(x, shared), task_scores(y, shared),
                                               **kw)
                improvement.append((x, y, *map(float, p), len(shared)))
    all_normed = [r["normalised"] for r in records]
    # The grid spans [0, 1] and any score outside it (given norm bounds allow that).
    taus = np.linspace(min(0.0, min(all_normed)), max(1.0, max(all_normed)), PROFILE_POINTS)
    profiles = {algo: stats.profile_interval(task_scores(algo), taus, **kw) for algo in algos}
    return {"algos": algos, "envs": envs, "per_env": per_env, "aggregate": aggregate,
            "improvement": improvement, "taus": taus, "profiles": profiles}


def coverage_notes(result: dict) -> list[str]:
    """Remarks on aggregates that cover different env sets (then not comparable)."""
    notes = []
    env_sets = {a: [e for e in result["envs"] if (a, e) in result["per_env"]]
                for a in result["algos"]}
    for a, es in env_sets.items():
        if len(es) < len(result["envs"]):
            missing = [e for e in result["envs"] if e not in es]
            notes.append(f"{a} has no runs on {', '.join(missing)}: its aggregates cover "
                         f"{len(es)} of {len(result['envs'])} envs, and P(X > Y) with it only "
                         f"the envs both algorithms ran")
    return notes


# ------------------------------------------------------------------------------ marl-eval


def marl_eval_data(records: list[dict], metric: str):
    """The runs in marl-eval's raw-data JSON layout. Returns ``(data, notes)``.

    ``data[environment][task][algo][run]`` where ``environment`` and ``task`` are the env
    id split at its first ``/`` (``mpe/simple_spread`` -> ``mpe``, ``simple_spread``; an id
    without ``/`` is both), ``run`` is ``seed_<seed>`` (as marl-eval's JsonLogger names runs;
    a seed number repeated by pooled run folders gets ``_2``, ``_3``, ...), and each run is::

        {"step_0": {"step_count": 1024, "<metric>": [value]},
         ...,
         "step_<T-1>": {"step_count": ..., "<metric>": [value]},
         "absolute_metrics": {"<metric>": [final score]}}

    with one step per finite logged value of the metric (``step_count`` = env_steps of
    that seed) and one-element lists (metrics.csv holds per-row means, not per-episode
    values; marl-eval accepts one element). ``absolute_metrics`` is the last key (older
    marl-eval versions read the last step as the absolute metric) and holds the final score
    of scores.csv, not Gorsane et al.'s re-evaluation of the best policy with 10x episodes.
    marl-eval lower-cases names, normalises the metrics it is told to, and needs, within an
    environment, the same algorithms, run counts and number of steps everywhere; the notes
    say where these runs differ.
    """
    data, notes = {}, []
    for r in records:
        family, _, task = r["env_id"].partition("/")
        runs = data.setdefault(family, {}).setdefault(task or family, {}).setdefault(
            r["algo"], {})
        key, k = f"seed_{r['seed']}", 2
        while key in runs:
            key, k = f"seed_{r['seed']}_{k}", k + 1
        run = {f"step_{i}": {"step_count": int(s), metric: [float(v)]}
               for i, (s, v) in enumerate(zip(r["steps"], r["values"]))}
        run["absolute_metrics"] = {metric: [r["score"]]}
        runs[key] = run
    for family, tasks in data.items():
        algo_sets = {tuple(sorted(algos)) for algos in tasks.values()}
        run_counts = {len(runs) for algos in tasks.values() for runs in algos.values()}
        step_counts = {len(run) - 1 for algos in tasks.values() for runs in algos.values()
                       for run in runs.values()}
        differ = [what for what, found in (("algorithms per task", algo_sets),
                                           ("runs per algorithm", run_counts),
                                           ("steps per run", step_counts)) if len(found) > 1]
        if differ:
            notes.append(f"marl_eval.json: {family} has different {' and '.join(differ)}; "
                         f"marl-eval needs them equal within an environment")
    return data, notes


# ---------------------------------------------------------------------------------- output


def _fmt(v: float) -> str:
    return f"{v:.3f}"


def _interval(p, lo, hi) -> str:
    return f"{_fmt(p)} [{_fmt(lo)}, {_fmt(hi)}]"


def scores_csv(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["algo", "env", "seed", "score", "normalised_score", "n_values",
                "last_env_steps", "run_dir"])
    for r in records:
        w.writerow([r["algo"], r["env_id"], r["seed"], repr(r["score"]), repr(r["normalised"]),
                    r["n_final"], int(r["steps"][-1]), r["run_dir"]])
    return buf.getvalue()


def summary_csv(result: dict) -> str:
    """One table: ``section`` env (raw final scores), aggregate (normalised scores) or
    improvement; ``n`` is seeds, runs or shared envs respectively."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "statistic", "env", "algo", "other", "value", "ci_low", "ci_high",
                "n"])
    for env in result["envs"]:
        for algo in result["algos"]:
            if (algo, env) in result["per_env"]:
                m, lo, hi, n = result["per_env"][(algo, env)]
                w.writerow(["env", "mean", env, algo, "", repr(m), repr(lo), repr(hi), n])
    for algo, agg in result["aggregate"].items():
        for stat in ("iqm", "mean"):
            w.writerow(["aggregate", stat, "", algo, "", *map(repr, agg[stat]), agg["runs"]])
    for x, y, p, lo, hi, n in result["improvement"]:
        w.writerow(["improvement", "P(algo > other)", "", x, y, repr(p), repr(lo), repr(hi), n])
    return buf.getvalue()


def summary_md(result: dict, bounds: dict, metric: str, ci: float, resamples: int, seed: int,
               n_runs: int, notes: list[str]) -> str:
    pct = f"{100 * ci:g}%"
    lines = [
        f"# teamrl report: {metric}", "",
        f"{n_runs} runs (seeds) of {len(result['algos'])} algorithm(s) on "
        f"{len(result['envs'])} env(s). The final score of a seed is the mean of its last "
        f"{100 * FINAL_FRACTION:g}% (at least one) of {metric} values. Intervals are {pct} "
        f"percentile-bootstrap intervals ({resamples} resamples, seed {seed}); aggregates "
        f"resample runs within each env (stratified bootstrap).", "",
        f"## Per env: mean final {metric} [{pct} CI]", "",
        "| env | algo | mean [CI] | seeds |", "| --- | --- | --- | --- |"]
    for env in result["envs"]:
        for algo in result["algos"]:
            if (algo, env) in result["per_env"]:
                m, lo, hi, n = result["per_env"][(algo, env)]
                lines.append(f"| {env} | {algo} | {_interval(m, lo, hi)} | {n} |")
    lines += [
        "", f"## Aggregate over envs: normalised final score [{pct} CI]", "",
        "IQM: mean of the middle 50% of all runs of all envs pooled (25% trimmed mean, "
        "floor(n/4) runs cut at each end, as rliable). Mean: mean over envs of the mean over "
        "runs.", "",
        "| algo | IQM [CI] | mean [CI] | envs | runs |", "| --- | --- | --- | --- | --- |"]
    for algo, agg in result["aggregate"].items():
        lines.append(f"| {algo} | {_interval(*agg['iqm'])} | {_interval(*agg['mean'])} | "
                     f"{agg['envs']} | {agg['runs']} |")
    lines += ["", "Normalised score = (score - low) / (high - low) per env:", "",
              "| env | low | high | from |", "| --- | --- | --- | --- |"]
    for env, (low, high, source) in bounds.items():
        src = "min and max over runs" if source == "runs" else source
        lines.append(f"| {env} | {low:g} | {high:g} | {src} |")
    lines += ["", f"## Probability of improvement [{pct} CI]", "",
              "P(X > Y): chance that a run of X scores higher than a run of Y on the same env "
              "(ties count 1/2; Mann-Whitney U / (n_X n_Y)), averaged over the envs both ran. "
              "P(Y > X) = 1 - P(X > Y).", ""]
    if result["improvement"]:
        lines += ["| X | Y | P(X > Y) [CI] | envs |", "| --- | --- | --- | --- |"]
        lines += [f"| {x} | {y} | {_interval(p, lo, hi)} | {n} |"
                  for x, y, p, lo, hi, n in result["improvement"]]
    else:
        lines.append("(needs two algorithms that ran the same env)")
    lines += ["", "Figures: `aggregate.png` (IQM and mean with intervals), `profiles.png` "
              "(fraction of runs with normalised score > tau, with bootstrap bands). "
              "`marl_eval.json`: the runs in marl-eval's raw-data format."]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def aggregate_png(result: dict, ci: float) -> bytes:
    """IQM and mean per algorithm as intervals (bars from low to high, tick at the point)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    algos = result["algos"]
    fig = Figure(figsize=(9, 1.2 + 0.5 * len(algos)))
    FigureCanvasAgg(fig)
    for i, (stat, title) in enumerate((("iqm", "IQM"), ("mean", "Mean"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, algo in enumerate(algos):
            p, lo, hi = result["aggregate"][algo][stat]
            color = f"C{j % 10}"
            ax.barh(j, hi - lo, left=lo, height=0.6, color=color, alpha=0.5)
            ax.plot([p, p], [j - 0.3, j + 0.3], color="black", linewidth=2)
        ax.set_yticks(range(len(algos)))
        ax.set_yticklabels(algos if i == 0 else [])
        ax.invert_yaxis()
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, 0.0), max(hi, 1.0))  # always show the [0, 1] normalised range
        ax.set_title(title)
        ax.set_xlabel("normalised score")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"{100 * ci:g}% stratified-bootstrap CIs", fontsize="medium")
    fig.tight_layout()
    return _png(fig)


def profiles_png(result: dict, ci: float) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    taus = result["taus"]
    for j, (algo, (prof, lo, hi)) in enumerate(result["profiles"].items()):
        color = f"C{j % 10}"
        ax.plot(taus, prof, color=color, linewidth=2, label=algo)
        ax.fill_between(taus, lo, hi, color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("normalised score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"performance profiles, {100 * ci:g}% bootstrap bands")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return _png(fig)


def write_report(run_dirs, out, metric: str = DEFAULT_METRIC, resamples: int = 2000,
                 seed: int = 0, norm=None, ci: float = 0.95):
    """Compute and write the report (module docstring) into folder ``out``.

    Everything is read, checked and computed before anything is written; each file is
    replaced atomically and other files in ``out`` are left alone.
    Returns ``(out, result, notes)`` (see :func:`compute_report`). Raises ReportInputError.
    """
    from teamrl.runs import _atomic_write_bytes

    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise ReportInputError(f"out={str(out)!r} is a file; give a folder")
    if not 0.0 < ci < 1.0:
        raise ReportInputError(f"ci={ci} is out of range; must be > 0 and < 1")
    if resamples < 1:
        raise ReportInputError(f"resamples={resamples} is out of range; must be >= 1")
    loaded = load_report_runs(run_dirs, metric)
    norm_table = read_norm_file(norm) if norm else None
    records, notes = collect_scores(loaded, metric)
    if not records:
        hint = " (evaluation off? try metric=return_mean)" if metric.startswith("eval_") else ""
        raise ReportInputError(f"no finite {metric} values in the given run folders{hint}")
    bounds, norm_notes = normalisation_bounds(records, norm_table, norm_name=str(norm))
    result = compute_report(records, bounds, ci=ci, resamples=resamples, seed=seed)
    marl_eval, marl_notes = marl_eval_data(records, metric)
    notes = notes + norm_notes + coverage_notes(result) + marl_notes
    files = {
        "scores.csv": scores_csv(records).encode(),
        "summary.md": summary_md(result, bounds, metric, ci, resamples, seed, len(records),
                                 notes).encode(),
        "summary.csv": summary_csv(result).encode(),
        "aggregate.png": aggregate_png(result, ci),
        "profiles.png": profiles_png(result, ci),
        "marl_eval.json": (json.dumps(marl_eval, indent=2) + "\n").encode(),
    }
    for name, data in files.items():
        _atomic_write_bytes(out / name, data)
    return out, result, notes
