"""teamrl.analysis.stats: IQM, stratified bootstrap intervals, probability of improvement and
performance profiles against hand computations and synthetic data."""

import numpy as np
import pytest
import scipy.stats

from teamrl.analysis import stats

# ------------------------------------------------------------------ IQM


def test_iqm_of_a_multiple_of_four_drops_a_quarter_at_each_end():
    x = np.array([9.0, 1.0, 7.0, 3.0, 100.0, 5.0, -50.0, 2.0])  # sorted: -50 1 2 3 5 7 9 100
    expected = (2 + 3 + 5 + 7) / 4
    assert stats.iqm(x) == pytest.approx(expected)
    assert stats.iqm(x, fractional=True) == pytest.approx(expected)


def test_iqm_default_cuts_whole_values_as_rliable_and_scipy():
    # n = 9: floor(9/4) = 2 cut at each end -> mean of the sorted 3rd..7th values.
    x = np.array([10.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0])  # sorted 0 1 2 ... 7 10
    assert stats.iqm(x) == pytest.approx((2 + 3 + 4 + 5 + 6) / 5)
    # n = 3 and 1: nothing cut.
    assert stats.iqm([1.0, 2.0, 10.0]) == pytest.approx(13 / 3)
    assert stats.iqm([4.0]) == 4.0
    rng = np.random.default_rng(0)
    for n in range(1, 23):
        v = rng.normal(size=n)
        assert stats.iqm(v) == pytest.approx(scipy.stats.trim_mean(v, 0.25))


def test_iqm_fractional_weights_boundary_values():
    # n = 9 (each quartile holds 2.25 values): (0.75 x3 + x4 + x5 + x6 + 0.75 x7) / 4.5.
    x = np.array([10.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0])  # sorted 0 1 2 3 4 5 6 7 10
    assert stats.iqm(x, fractional=True) == pytest.approx((0.75 * 2 + 3 + 4 + 5 + 0.75 * 6) / 4.5)
    # n = 10: 2.5 cut at each end -> (0.5 x3 + x4..x7 + 0.5 x8) / 5.
    y = np.arange(10.0) ** 2                                       # 0 1 4 9 16 25 36 49 64 81
    expected = (0.5 * 4 + 9 + 16 + 25 + 36 + 0.5 * 49) / 5
    assert stats.iqm(y, fractional=True) == pytest.approx(expected)
    assert stats.iqm([7.0], fractional=True) == pytest.approx(7.0)
    assert stats.iqm([1.0, 3.0], fractional=True) == pytest.approx(2.0)


def test_iqm_is_batched_along_an_axis():
    x = np.random.default_rng(1).normal(size=(3, 7, 5))
    out = stats.iqm(x, axis=1)
    assert out.shape == (3, 5)
    assert out[2, 4] == pytest.approx(stats.iqm(x[2, :, 4]))
    np.testing.assert_allclose(stats.iqm(x, axis=1, fractional=True)[1],
                               [stats.iqm(x[1, :, j], fractional=True) for j in range(5)])


def test_aggregates_pool_runs_or_average_task_means():
    tasks = [np.array([0.0, 0.2, 0.4, 0.6]), np.array([1.0, 0.8])]
    assert stats.aggregate_mean(tasks) == pytest.approx((0.3 + 0.9) / 2)
    assert stats.aggregate_iqm(tasks) == pytest.approx(np.mean([0.2, 0.4, 0.6, 0.8]))


# ------------------------------------------------------------------ bootstrap intervals


def test_stratified_resample_stays_within_each_task():
    tasks = [np.array([1.0, 2.0, 3.0]), np.array([10.0]), np.array([100.0, 200.0])]
    boot = stats.stratified_resample(tasks, 50, np.random.default_rng(0))
    assert [b.shape for b in boot] == [(50, 3), (50, 1), (50, 2)]
    assert set(boot[0].ravel()) <= {1.0, 2.0, 3.0}
    assert np.all(boot[1] == 10.0)
    assert set(boot[2].ravel()) == {100.0, 200.0}


@pytest.mark.parametrize("interval", [stats.mean_interval, stats.iqm_interval])
def test_interval_coverage_on_synthetic_normal_data(interval):
    # 200 repeated experiments, each 2 tasks x 20 runs of N(mu_m, 1); the population mean and
    # IQM of every task's (symmetric) distribution equal mu_m.
    rng = np.random.default_rng(0)
    mus = np.array([0.0, 3.0])
    truth = mus.mean()
    hits = 0
    for rep in range(200):
        tasks = [rng.normal(mu, 1.0, size=20) for mu in mus]
        point, low, high = interval(tasks, resamples=1000, seed=rep)
        assert low <= point <= high
        hits += low <= truth <= high
    assert 0.88 <= hits / 200 <= 0.99, hits


def test_intervals_are_deterministic_given_the_seed():
    tasks = [np.random.default_rng(3).normal(size=6), np.arange(4.0)]
    a = stats.iqm_interval(tasks, seed=5)
    b = stats.iqm_interval(tasks, seed=5)
    c = stats.iqm_interval(tasks, seed=6)
    d = stats.iqm_interval(tasks, rng=np.random.default_rng(5))
    assert a == b == d
    assert a[0] == c[0] and (a[1], a[2]) != (c[1], c[2])


def test_identical_runs_give_a_zero_width_interval():
    tasks = [np.full(5, 0.4), np.full(3, 0.8)]
    for fn in (stats.mean_interval, stats.iqm_interval):
        point, low, high = fn(tasks, resamples=100)
        assert point == pytest.approx(low) and point == pytest.approx(high)


@pytest.mark.parametrize("kwargs", [{"ci": 1.0}, {"ci": 0.0}, {"resamples": 0}])
def test_interval_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        stats.mean_interval([np.ones(3)], **kwargs)
    with pytest.raises(ValueError):
        stats.mean_interval([np.ones(0)])


# ------------------------------------------------------------------ probability of improvement


def test_improvement_of_identical_distributions_is_one_half():
    rng = np.random.default_rng(0)
    x = [rng.normal(size=30), rng.normal(5.0, 2.0, size=30)]
    assert stats.improvement_probability(x, x) == 0.5          # ties count 1/2, exactly
    y = [rng.normal(size=30), rng.normal(5.0, 2.0, size=30)]   # same distributions, new draws
    p, low, high = stats.improvement_interval(x, y, resamples=500)
    assert abs(p - 0.5) < 0.15 and low < 0.5 < high


def test_improvement_of_separated_distributions_is_one():
    x = [np.array([10.0, 11.0, 12.0]), np.array([0.9, 0.95])]
    y = [np.array([1.0, 2.0]), np.array([0.1, 0.2, 0.3, 0.4])]
    assert stats.improvement_interval(x, y, resamples=200) == (1.0, 1.0, 1.0)
    assert stats.improvement_interval(y, x, resamples=200) == (0.0, 0.0, 0.0)


def test_improvement_matches_mann_whitney_and_is_complementary():
    rng = np.random.default_rng(2)
    x = [rng.integers(0, 5, size=7).astype(float), rng.normal(size=4)]  # with ties
    y = [rng.integers(0, 5, size=5).astype(float), rng.normal(size=6)]
    expected = np.mean([scipy.stats.mannwhitneyu(a, b, alternative="greater").statistic
                        / (len(a) * len(b)) for a, b in zip(x, y)])
    assert stats.improvement_probability(x, y) == pytest.approx(expected)
    assert stats.improvement_probability(x, y) + stats.improvement_probability(y, x) \
        == pytest.approx(1.0)
    with pytest.raises(ValueError):
        stats.improvement_probability(x, y[:1])


# ------------------------------------------------------------------ performance profiles


def test_profile_is_monotone_non_increasing_with_bands():
    rng = np.random.default_rng(0)
    tasks = [rng.uniform(size=10), rng.beta(2.0, 5.0, size=7), np.array([0.5, 0.5, 0.9])]
    taus = np.linspace(-0.1, 1.1, 61)
    prof, low, high = stats.profile_interval(tasks, taus, resamples=300)
    for curve in (prof, low, high):
        assert np.all(np.diff(curve) <= 1e-12)
    assert prof[0] == 1.0 and prof[-1] == 0.0
    assert np.all(low <= prof + 1e-12) and np.all(prof <= high + 1e-12)
    # tau = 0.5 on the third task: one of three runs is > 0.5 (strictly).
    third = stats.score_profile([tasks[2]], [0.5, 0.49])
    np.testing.assert_allclose(third, [1 / 3, 1.0])


def test_profile_averages_tasks():
    tasks = [np.array([0.2, 0.8]), np.array([0.1, 0.3, 0.6, 0.9])]
    np.testing.assert_allclose(stats.score_profile(tasks, [0.5]), [(1 / 2 + 2 / 4) / 2])


def test_min_max_normalise():
    np.testing.assert_allclose(stats.min_max_normalise([2.0, 4.0, 6.0], 2.0, 6.0), [0, 0.5, 1])
    np.testing.assert_array_equal(stats.min_max_normalise([3.0, 3.0], 3.0, 3.0), [0.0, 0.0])
