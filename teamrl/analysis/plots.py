"""Learning-curve plots from a run's metrics.csv."""

from __future__ import annotations

import math
import pathlib

import numpy as np

from teamrl.config import ConfigError
from teamrl.runs import read_metrics_csv


def _seed_curves(rows: list[dict], x: str, y: str) -> dict:
    curves: dict = {}
    for row in rows:
        xv, yv = row.get(x), row.get(y)
        if not isinstance(xv, float) or not isinstance(yv, float):
            continue
        if math.isnan(xv) or math.isnan(yv):
            continue
        curves.setdefault(row.get("seed", 0.0), []).append((xv, yv))
    out = {}
    for seed, pts in curves.items():
        pts.sort()
        out[seed] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    return out


def _mean_curve(curves: dict):
    """Mean over seeds on the x range every seed covers.

    Seeds usually log at identical env_steps, in which case this is an exact
    per-x mean; interpolation only matters when logging points differ.
    Outside the shared range the mean would silently drop seeds, so it is cut.
    """
    lo = max(xs[0] for xs, _ in curves.values())
    hi = min(xs[-1] for xs, _ in curves.values())
    if lo > hi:
        return None
    grid = np.unique(np.concatenate([xs for xs, _ in curves.values()]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    ys = [np.interp(grid, xs, vals) for xs, vals in curves.values()]
    return grid, np.mean(ys, axis=0)


def plot_learning_curve(metrics_csv_path, out_png, y: str = "return_mean",
                        x: str = "env_steps", title: str | None = None) -> pathlib.Path:
    """Plot ``y`` against ``x``: a thin line per seed plus, with several seeds,
    the cross-seed mean as a thick line. Returns the PNG path."""
    # Figure + FigureCanvasAgg rather than pyplot: no display or global
    # backend state is needed, so this is safe on headless machines and in
    # processes that use another backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics_csv_path = pathlib.Path(metrics_csv_path)
    out_png = pathlib.Path(out_png)
    curves = _seed_curves(read_metrics_csv(metrics_csv_path), x, y)

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    multi = len(curves) > 1
    for seed in sorted(curves, key=lambda s: (isinstance(s, str), s)):
        xs, ys = curves[seed]
        name = int(seed) if isinstance(seed, float) and seed.is_integer() else seed
        # Past a handful of seeds a per-seed legend is noise; the mean says it.
        label = f"seed {name}" if len(curves) <= 5 else None
        # Markers keep single-point curves visible.
        marker = "o" if len(xs) == 1 else None
        ax.plot(xs, ys, linewidth=0.8, alpha=0.5 if multi else 0.9, marker=marker, markersize=3, label=label)
    if multi:
        mean = _mean_curve(curves)
        if mean is not None:
            gx, gy = mean
            ax.plot(gx, gy, linewidth=2.5, color="black", marker="o" if len(gx) == 1 else None,
                    label=f"mean ({len(curves)} seeds)")
    if not curves:
        ax.text(0.5, 0.5, f"no data for '{y}'", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title if title is not None else metrics_csv_path.resolve().parent.name)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120, format="png")
    return out_png


# ---------------------------------------------------------------------------
# Several runs: mean over seeds with a bootstrap confidence interval
#
# `teamrl plot RUN_DIR... out=FILE`. The statistics (`bootstrap_mean_ci`,
# `common_grid`, `interpolate_curves`) are plain numpy functions so that other
# reports can reuse them without matplotlib.

X_COLUMNS = ("env_steps", "wall_time")
X_LABELS = {"env_steps": "env steps (per seed)", "wall_time": "wall time (s)"}
OUT_FORMATS = {".png": "png", ".svg": "svg"}
MAX_GRID_POINTS = 500

# config.yaml keys that do not change what a run learns: pooling runs that differ only in
# these is expected (e.g. separate seed ranges), pooling runs that differ in anything else
# gets a note.
_BOOKKEEPING_KEYS = {"run.seed", "run.seeds", "run.out", "run.overwrite", "run.progress",
                     "run.log_every", "run.checkpoint_every", "run.total_steps",
                     "run.eval_episodes"}


def bootstrap_mean_ci(values, ci: float = 0.95, resamples: int = 2000, rng=None,
                      seed: int = 0):
    """Mean over seeds and its percentile-bootstrap confidence interval, per column.

    Args:
        values: [S, X] array, one row per seed (S >= 1), one column per x point. NaN
            propagates: a column holding a NaN gets NaN mean and bounds.
        ci: confidence level in (0, 1), e.g. 0.95 for a 95% interval.
        resamples: number of bootstrap resamples R (>= 1).
        rng: a ``numpy.random.Generator``; if None one is made from ``seed``, so the
            result is deterministic given ``seed``.

    Returns:
        ``(mean [X], low [X], high [X])``: the sample mean over seeds, and the
        (1-ci)/2 and (1+ci)/2 quantiles of the mean over R resamples of the S seeds
        drawn with replacement. The same resampled seed indices [R, S] are used for every
        column, so each resample is a set of whole seed curves. With one seed (or identical
        seeds) every resample equals the mean and the band collapses onto the line. Like
        any percentile bootstrap it is too narrow with very few seeds (it cannot reach
        beyond the observed seeds' values); read bands from < 5 seeds with care.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"values must have shape [S, X] with S >= 1, got {values.shape}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed) if rng is None else rng
    n_seeds = values.shape[0]
    idx = rng.integers(0, n_seeds, size=(resamples, n_seeds))            # [R, S]
    # counts[r, s]: how often seed s is drawn in resample r; the resampled means are then
    # one matrix product ([R, S] @ [S, X]) rather than an [R, S, X] gather.
    counts = np.zeros((resamples, n_seeds))
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
    boot = counts @ values / n_seeds                                     # [R, X]
    if np.isnan(values).any():  # 0 * nan is nan, but make the rule explicit and exact
        boot[:, np.isnan(values).any(axis=0)] = np.nan
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha], axis=0)
    return values.mean(axis=0), low, high


def run_seed_curves(rows: list[dict], x: str, y: str) -> dict:
    """Per-seed ``(xs, ys)`` arrays (sorted by x) from metrics rows.

    Rows are read in file order per seed. A row whose ``env_steps`` does not exceed the
    previous kept row's supersedes every kept row at or beyond its ``env_steps``: that is a
    resume from an earlier checkpoint re-logging the same steps after a crash. Rows with a
    non-numeric or non-finite ``x`` or ``y`` (e.g. ``return_mean`` is NaN before any episode
    finished) are then dropped, so a seed's curve may start later than its first row, have no
    points at all (it is then absent from the result), or have a single point.
    """
    by_seed: dict = {}
    for row in rows:
        seed = row.get("seed", 0.0)
        kept = by_seed.setdefault(seed, [])
        steps = _number(row.get("env_steps"))
        if steps is not None:
            while kept and _number(kept[-1].get("env_steps")) is not None \
                    and _number(kept[-1].get("env_steps")) >= steps:
                kept.pop()
        kept.append(row)
    out = {}
    for seed, kept in by_seed.items():
        pts = [(_number(r.get(x)), _number(r.get(y))) for r in kept]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        if not pts:
            continue
        xs = np.array([p[0] for p in pts])
        ys = np.array([p[1] for p in pts])
        order = np.argsort(xs, kind="stable")
        xs, ys = xs[order], ys[order]
        # Equal x (possible for wall_time): keep the last row logged at that x.
        last = np.r_[xs[1:] != xs[:-1], True]
        out[seed] = (xs[last], ys[last])
    return out


def common_grid(curves, max_points: int = MAX_GRID_POINTS):
    """The x points at which every curve is defined, or None if they share no x.

    Args:
        curves: iterable of ``(xs, ys)`` with ``xs`` sorted ascending.

    Returns:
        The union of all curves' x values inside [max of first x, min of last x], i.e.
        only the range that *every* seed covers (a mean over a shrinking set of seeds would
        jump where a seed ends, so nothing is extrapolated). Above ``max_points`` points it
        is ``max_points`` evenly spaced points over that range instead. None when the
        range is empty; a single point when it is one x.
    """
    curves = list(curves)
    if not curves:
        return None
    lo = max(xs[0] for xs, _ in curves)
    hi = min(xs[-1] for xs, _ in curves)
    if lo > hi:
        return None
    grid = np.unique(np.concatenate([xs for xs, _ in curves]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    if len(grid) > max_points:
        grid = np.linspace(lo, hi, max_points)
    return grid


def interpolate_curves(curves, grid):
    """``[S, X]``: each of the S curves ``(xs, ys)`` linearly interpolated onto ``grid``
    (which should lie within every curve's x range, see :func:`common_grid`)."""
    return np.stack([np.interp(grid, xs, ys) for xs, ys in curves])


class PlotInputError(ConfigError):
    """Bad input to :func:`plot_runs` (the CLI turns it into a one-line error, exit 2)."""


def _flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_runs(run_dirs, x: str = "env_steps", y: str = "return_mean") -> list[dict]:
    """Read and check run folders: a list of ``{"dir", "algo", "env_id", "config", "rows"}``.

    Raises PlotInputError (one line) for: no folders, a path without config.yaml or
    metrics.csv, a config without run.algo / run.env_id, an empty metrics.csv, an x not
    in X_COLUMNS, or an x or y column missing from some run's metrics.csv (the message
    lists the columns every given run has). The same folder given twice is read once.
    """
    from teamrl.runs import CONFIG_FILE, METRICS_FILE, read_config, read_metrics

    if x not in X_COLUMNS:
        raise PlotInputError(f"x={x!r} is not valid; valid choices: {', '.join(X_COLUMNS)}")
    if not run_dirs:
        raise PlotInputError("plot needs at least one RUN_DIR")
    loaded, seen = [], set()
    for d in run_dirs:
        path = pathlib.Path(d)
        if not (path / CONFIG_FILE).is_file():
            raise PlotInputError(f"{str(d)!r} is not a run folder (no config.yaml)")
        if not (path / METRICS_FILE).is_file():
            raise PlotInputError(f"{str(d)!r} has no metrics.csv yet")
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        try:
            config = read_config(path)
        except Exception as err:  # yaml errors are multi-line
            raise PlotInputError(f"{str(d)!r}: config.yaml is not readable "
                                 f"({type(err).__name__})") from None
        run = config.get("run") if isinstance(config, dict) else None
        if not isinstance(run, dict) or not run.get("algo") or not run.get("env_id"):
            raise PlotInputError(f"{str(d)!r}: config.yaml has no run.algo / run.env_id")
        rows = read_metrics(path)
        if not rows:
            raise PlotInputError(f"{str(d)!r}: metrics.csv has no rows yet")
        loaded.append({"dir": str(d), "algo": str(run["algo"]), "env_id": str(run["env_id"]),
                       "config": config, "rows": rows})
    missing = missing_column(loaded, {"x": x, "y": y})
    if missing:
        raise PlotInputError(missing)
    return loaded


def missing_column(loaded: list[dict], wanted: dict) -> str | None:
    """The message for the first ``{setting: column}`` missing from some run's metrics.csv
    (listing the columns every run has), or None when all are present."""
    columns = [set().union(*(r.keys() for r in run["rows"])) for run in loaded]
    common = set.intersection(*columns)
    for run, cols in zip(loaded, columns):
        for name, col in wanted.items():
            if col not in cols:
                valid = ", ".join(c for c in loaded[0]["rows"][0] if c in common)
                where = "" if len(loaded) == 1 else f" of {run['dir']!r}"
                return (f"{name}={col!r} is not a column of metrics.csv{where}; "
                        f"valid columns: {valid}")
    return None


def group_curves(loaded: list[dict], x: str, y: str, ci: float = 0.95,
                 resamples: int = 2000, seed: int = 0):
    """Pool the seeds of runs with the same (algo, env) and summarise them.

    Returns ``(groups, notes)``: ``groups`` maps ``(algo, env_id)`` (in order of first
    appearance) to a dict with ``grid``, ``mean``, ``low``, ``high`` (all [X]), ``n_seeds``,
    ``runs`` (folders) and ``x_max`` (the furthest x any seed reached); ``grid`` is None when
    the seeds share no x range. ``notes`` are one-line remarks for the user (seeds without
    data, ranges cut short, pooled runs whose configs differ, repeated seed numbers).
    Each (run folder, seed) is one curve, so separate runs of the same pair pool their seeds.
    """
    members: dict = {}
    for run in loaded:
        members.setdefault((run["algo"], run["env_id"]), []).append(run)
    groups, notes = {}, []
    for (algo, env_id), group_runs in members.items():
        name = f"{algo} on {env_id}"
        curves, seed_owner = [], {}
        for run in group_runs:
            per_seed = run_seed_curves(run["rows"], x, y)
            all_seeds = {r.get("seed", 0.0) for r in run["rows"]}
            for s in sorted(all_seeds - set(per_seed), key=str):
                notes.append(f"{name}: seed {_seed_name(s)} of {run['dir']} has no finite "
                             f"{y} yet; left out")
            for s in sorted(per_seed, key=str):
                if s in seed_owner:
                    notes.append(f"{name}: seed {_seed_name(s)} is in both {seed_owner[s]} "
                                 f"and {run['dir']}; each counts as a separate seed")
                seed_owner.setdefault(s, run["dir"])
                curves.append(per_seed[s])
        if len(group_runs) > 1:
            flat = [_flatten(r["config"]) for r in group_runs]
            keys = sorted({k for f in flat for k in f} - _BOOKKEEPING_KEYS)
            differ = [k for k in keys if any(f.get(k) != flat[0].get(k) for f in flat[1:])]
            if differ:
                shown = ", ".join(differ[:5]) + (", ..." if len(differ) > 5 else "")
                notes.append(f"{name}: pooling {len(group_runs)} runs whose configs differ "
                             f"in {shown}")
        grid = common_grid(curves)
        entry = {"grid": grid, "n_seeds": len(curves), "runs": [r["dir"] for r in group_runs],
                 "x_max": max((xs[-1] for xs, _ in curves), default=None)}
        if grid is None:
            if curves:
                notes.append(f"{name}: the {len(curves)} seeds share no {x} range (one starts "
                             f"at {max(xs[0] for xs, _ in curves):g}, one ends at "
                             f"{min(xs[-1] for xs, _ in curves):g}); not plotted")
        else:
            # Small differences (e.g. runs that log at slightly different steps) are normal.
            if grid[-1] < entry["x_max"] - 0.05 * (entry["x_max"] - grid[0]):
                notes.append(f"{name}: plotted up to {x}={grid[-1]:g}, the range all "
                             f"{len(curves)} seeds cover (longest reaches {entry['x_max']:g})")
            values = interpolate_curves(curves, grid)
            entry["mean"], entry["low"], entry["high"] = bootstrap_mean_ci(
                values, ci=ci, resamples=resamples, seed=seed)
        groups[(algo, env_id)] = entry
    return groups, notes


def _number(value):
    """A finite float cell as float, else None (NaN, empty or text cells)."""
    return value if isinstance(value, float) and math.isfinite(value) else None


def _seed_name(seed):
    return int(seed) if isinstance(seed, float) and seed.is_integer() else seed


def plot_runs(run_dirs, out, x: str = "env_steps", y: str = "return_mean", ci: float = 0.95,
              resamples: int = 2000, seed: int = 0, labels=None):
    """Learning curves of one or many run folders, grouped by (algorithm, env).

    ``labels`` (optional, one string per run folder) replaces each folder's algorithm name
    in the grouping and the legend, e.g. to tell apart two settings of the same algorithm.

    One panel per env, one line per algorithm: the mean over all seeds of all run folders
    of that (algo, env), with a shaded ``ci`` percentile-bootstrap band over seeds
    (:func:`bootstrap_mean_ci`; collapses onto the line for a single seed). Seeds that log at
    different x are linearly interpolated onto a common grid, restricted to the x range
    that every seed of the group covers (:func:`common_grid`); rows where ``y`` is NaN are
    skipped. The format (PNG or SVG) follows ``out``'s suffix. Everything is checked before
    anything is written, and the file is replaced atomically.

    Returns ``(path, groups, notes)`` (see :func:`group_curves`). Raises PlotInputError.
    """
    import io

    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from teamrl.runs import _atomic_write_bytes

    out = pathlib.Path(out)
    fmt = OUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise PlotInputError(f"out={str(out)!r} must end in .png or .svg")
    if out.is_dir():
        raise PlotInputError(f"out={str(out)!r} is a folder; give a file name ending in .{fmt}")
    if not 0.0 < ci < 1.0:
        raise PlotInputError(f"ci={ci} is out of range; must be > 0 and < 1")
    if resamples < 1:
        raise PlotInputError(f"resamples={resamples} is out of range; must be >= 1")
    if labels is not None and len(labels) != len(run_dirs):
        raise PlotInputError(f"{len(labels)} labels for {len(run_dirs)} run folders; give one "
                             "label per run folder")
    loaded = load_runs(run_dirs, x, y)
    if labels is not None:
        label_of = {str(d): str(label) for d, label in zip(run_dirs, labels)}
        for run in loaded:
            run["algo"] = label_of[run["dir"]]
    groups, notes = group_curves(loaded, x, y, ci=ci, resamples=resamples, seed=seed)
    if all(g["grid"] is None for g in groups.values()):
        raise PlotInputError(f"no finite {y} values to plot in the given run folders")

    envs = list(dict.fromkeys(env for _, env in groups))
    algos = list(dict.fromkeys(algo for algo, _ in groups))
    colors = {a: f"C{i % 10}" for i, a in enumerate(algos)}
    ncols = min(len(envs), 3)
    nrows = math.ceil(len(envs) / ncols)
    fig = Figure(figsize=(5.5 * ncols, 4.0 * nrows))
    FigureCanvasAgg(fig)
    for i, env in enumerate(envs):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for (algo, env_id), g in groups.items():
            if env_id != env or g["grid"] is None:
                continue
            single = len(g["grid"]) == 1
            label = f"{algo} ({g['n_seeds']} seed{'s' if g['n_seeds'] != 1 else ''})"
            ax.plot(g["grid"], g["mean"], color=colors[algo], linewidth=2,
                    marker="o" if single else None, label=label)
            if single:
                ax.errorbar(g["grid"], g["mean"], yerr=[g["mean"] - g["low"], g["high"] - g["mean"]],
                            color=colors[algo], capsize=4)
            else:
                ax.fill_between(g["grid"], g["low"], g["high"], color=colors[algo], alpha=0.2,
                                linewidth=0)
        ax.set_title(env)
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel(y)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, f"no finite {y}", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"mean over seeds, {100 * ci:g}% bootstrap CI", fontsize="medium")
    fig.tight_layout()
    buf = io.BytesIO()
    # No date and a fixed id salt in SVGs: the same runs give the same bytes.
    with rc_context({"svg.hashsalt": "teamrl"}):
        fig.savefig(buf, format=fmt, dpi=120, metadata={"Date": None} if fmt == "svg" else None)
    _atomic_write_bytes(out, buf.getvalue())
    return out, groups, notes
