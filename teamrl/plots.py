"""Learning-curve plots from a run's metrics.csv."""

from __future__ import annotations

import math
import pathlib

import numpy as np

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
