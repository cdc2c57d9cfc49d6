"""Aggregate statistics over tasks and seeds (Agarwal et al. 2021; Gorsane et al. 2022).

The protocol of rliable / marl-eval, written with numpy: interquartile mean (IQM) and mean of
normalised scores, probability of improvement and performance profiles, each with a
stratified-bootstrap percentile confidence interval.

Scores of one algorithm are a list of 1-D arrays, one per task (env), one entry per run
(seed): ``task_scores = [scores_task_0 [N_0], scores_task_1 [N_1], ...]``. Tasks may have
different run counts. A *stratified* bootstrap resamples runs with replacement within each
task independently, so every resample keeps the task set and each task's run count; the
interval then says how the estimate would move with other seeds on the same tasks.

rliable itself is not used: rliable 1.2.0 (Aug 2024) installs without downgrading anything,
but pulls in arch, statsmodels and five more packages for what is a few lines of numpy,
draws its resamples from numpy's global random state (its ``random_state`` argument does
not reach the index draws), and needs equal run counts on every task. Every statistic here is computed on
arrays with a leading resample axis, so a bootstrap is one vectorised call, and ``seed``
makes it reproducible. With equal run counts the point estimates equal rliable's
(``aggregate_iqm``, ``aggregate_mean``, ``probability_of_improvement``,
``create_performance_profile``), and the intervals are the same percentile bootstrap.
"""

from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------
# Point statistics. Each takes batched task scores, a list of [..., N_m] arrays (the leading
# axes are resamples), and returns [...] (or [..., K] for a profile).


def iqm(scores, axis: int = -1, fractional: bool = False):
    """Interquartile mean: the mean of the middle 50% of ``scores`` along ``axis``.

    Args:
        scores: array [..., N, ...] with N >= 1 values along ``axis``.
        fractional: how to trim when N is not a multiple of 4.
            False (default, as rliable's ``aggregate_iqm``, which calls
            ``scipy.stats.trim_mean(scores, 0.25)``): cut ``floor(N / 4)`` whole values from
            each end and average the rest; so N < 4 gives the plain mean, N = 5 the mean of
            the middle 3. This is the default so that numbers match papers that used
            rliable / marl-eval.
            True: cut exactly N/4 values' worth from each end, the boundary values entering
            with fractional weight (e.g. N = 9: (0.75 x_3 + x_4 + x_5 + x_6 + 0.75 x_7) / 4.5
            over the sorted x_1..x_9); continuous in the data and the textbook IQM.
            Both agree when N is a multiple of 4.

    Returns:
        array with ``axis`` removed.
    """
    x = np.sort(np.asarray(scores, dtype=np.float64), axis=axis)
    x = np.moveaxis(x, axis, -1)
    n = x.shape[-1]
    if n < 1:
        raise ValueError("iqm needs at least one value")
    if not fractional:
        cut = n // 4  # int(0.25 * n), as scipy.stats.trim_mean
        return x[..., cut:n - cut].mean(axis=-1)
    # Sorted value i covers the unit interval [i, i+1] of the mass line [0, N]; its weight is
    # how much of that interval lies inside the kept middle [N/4, 3N/4].
    i = np.arange(n)
    w = np.clip(np.minimum(i + 1, 0.75 * n) - np.maximum(i, 0.25 * n), 0.0, 1.0)
    return x @ w / (0.5 * n)


def _pooled(task_scores):
    return np.concatenate([np.asarray(s, dtype=np.float64) for s in task_scores], axis=-1)


def aggregate_iqm(task_scores, fractional: bool = False):
    """IQM of all runs of all tasks pooled (as rliable). ``task_scores``: list of [..., N_m];
    returns [...]."""
    return iqm(_pooled(task_scores), axis=-1, fractional=fractional)


def aggregate_mean(task_scores):
    """Mean over tasks of the mean over runs of each task (as rliable; every task weighs the
    same whatever its run count). ``task_scores``: list of [..., N_m]; returns [...]."""
    return np.mean([np.mean(s, axis=-1) for s in task_scores], axis=0)


def improvement_probability(task_scores_x, task_scores_y):
    """P(X > Y): per task, the Mann-Whitney U statistic of X's runs against Y's divided by
    N_x N_y (the chance that a random run of X beats a random run of Y, ties counting 1/2),
    then averaged over tasks (as rliable's ``probability_of_improvement``).

    Args:
        task_scores_x, task_scores_y: lists of the same length M (the same tasks in the same
            order) of [..., N_x,m] and [..., N_y,m].

    Returns:
        [...]. P(X > Y) + P(Y > X) = 1 exactly; identical scores give 0.5.
    """
    if len(task_scores_x) != len(task_scores_y) or not task_scores_x:
        raise ValueError("X and Y need scores on the same, non-empty list of tasks")
    per_task = []
    for x, y in zip(task_scores_x, task_scores_y):
        x = np.asarray(x, dtype=np.float64)[..., :, None]     # [..., N_x, 1]
        y = np.asarray(y, dtype=np.float64)[..., None, :]     # [..., 1, N_y]
        per_task.append(((x > y) + 0.5 * (x == y)).mean(axis=(-2, -1)))
    return np.mean(per_task, axis=0)


def score_profile(task_scores, taus):
    """Performance profile (score distribution): for each threshold tau, the fraction of runs
    whose score is > tau, averaged over tasks (equal to rliable's fraction over all runs
    pooled when every task has the same run count).

    Args:
        task_scores: list of [..., N_m]; taus: [K].

    Returns:
        [..., K], non-increasing in tau when ``taus`` is increasing.
    """
    taus = np.asarray(taus, dtype=np.float64)
    return np.mean([(np.asarray(s, dtype=np.float64)[..., :, None] > taus).mean(axis=-2)
                    for s in task_scores], axis=0)


# ---------------------------------------------------------------------------
# Stratified bootstrap


def stratified_resample(task_scores, resamples: int, rng):
    """Bootstrap resamples of each task's runs, drawn independently per task.

    Args:
        task_scores: list of M arrays [N_m], each N_m >= 1.
        resamples: R.
        rng: a ``numpy.random.Generator``.

    Returns:
        list of M arrays [R, N_m]: row r of array m is N_m runs of task m drawn with
        replacement.
    """
    return [s[rng.integers(0, len(s), size=(resamples, len(s)))] for s in _tasks(task_scores)]


def _tasks(task_scores):
    """Check and convert a list of M tasks' 1-D run scores."""
    out = [np.asarray(s, dtype=np.float64) for s in task_scores]
    if not out:
        raise ValueError("need at least one task")
    for s in out:
        if s.ndim != 1 or len(s) < 1:
            raise ValueError(f"each task needs a 1-D array of >= 1 runs, got shape {s.shape}")
    return out


def _check(ci: float, resamples: int):
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")


def _percentiles(boot, ci: float):
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha], axis=0)
    return low, high


def interval_estimate(statistic, *task_scores, ci: float = 0.95, resamples: int = 2000,
                      seed: int = 0, rng=None):
    """A statistic of one or several algorithms' task scores and its stratified-bootstrap
    percentile interval.

    Args:
        statistic: function of as many lists of batched task scores ([..., N_m] each) as
            there are ``task_scores`` arguments, returning [...] or [..., K]; e.g.
            :func:`aggregate_iqm`, or :func:`improvement_probability` with two arguments.
        *task_scores: one list of M 1-D arrays [N_m] per argument of ``statistic``. Each is
            resampled independently (rliable's ``StratifiedIndependentBootstrap`` for
            several arguments), runs within each task.
        ci: confidence level in (0, 1); resamples: R >= 1.
        rng: a ``numpy.random.Generator``; if None one is made from ``seed``.

    Returns:
        ``(point, low, high)``, each [] or [K]: the statistic on the data, and the
        (1-ci)/2 and (1+ci)/2 quantiles of the statistic over R resamples. Like every
        percentile bootstrap it is too narrow with very few runs per task.
    """
    _check(ci, resamples)
    rng = np.random.default_rng(seed) if rng is None else rng
    point = statistic(*[_tasks(ts) for ts in task_scores])
    boot = statistic(*[stratified_resample(ts, resamples, rng) for ts in task_scores])
    low, high = _percentiles(boot, ci)
    return np.asarray(point), low, high


def iqm_interval(task_scores, fractional: bool = False, **kwargs):
    """:func:`aggregate_iqm` and its interval: ``(point, low, high)``, scalars. ``kwargs``:
    ci, resamples, seed, rng (see :func:`interval_estimate`)."""
    return interval_estimate(lambda ts: aggregate_iqm(ts, fractional), task_scores, **kwargs)


def mean_interval(task_scores, **kwargs):
    """:func:`aggregate_mean` and its interval: ``(point, low, high)``, scalars."""
    return interval_estimate(aggregate_mean, task_scores, **kwargs)


def improvement_interval(task_scores_x, task_scores_y, **kwargs):
    """:func:`improvement_probability` P(X > Y) and its interval (X's and Y's runs resampled
    independently within each task): ``(point, low, high)``, scalars."""
    return interval_estimate(improvement_probability, task_scores_x, task_scores_y, **kwargs)


def profile_interval(task_scores, taus, **kwargs):
    """:func:`score_profile` over ``taus`` [K] and its pointwise bootstrap band:
    ``(profile [K], low [K], high [K])``. Each resample's profile is non-increasing, so are
    the band's edges (quantiles keep the order)."""
    return interval_estimate(lambda ts: score_profile(ts, taus), task_scores, **kwargs)


# ---------------------------------------------------------------------------
# Normalisation


def min_max_normalise(scores, low: float, high: float):
    """``(scores - low) / (high - low)``; with ``high == low`` (every run of a task equal)
    all scores map to 0, as marl-eval's ``(x - min) / (max - min + 1e-6)`` does."""
    scores = np.asarray(scores, dtype=np.float64)
    span = high - low
    if span == 0:
        return np.zeros_like(scores)
    return (scores - low) / span
