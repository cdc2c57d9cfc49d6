"""`teamrl plot`: bootstrap confidence intervals, grid interpolation, pooling of run folders,
and the command line (PNG/SVG output, bad input). Fake run folders, no training."""

import math

import numpy as np
import pytest

from teamrl import runs
from teamrl.cli import main
from teamrl.analysis.plots import (bootstrap_mean_ci, common_grid, group_curves, interpolate_curves,
                          load_runs, run_seed_curves)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = ["seed", "env_steps", "updates", "wall_time", "return_mean", "entropy"]


def fake_run(folder, algo, env_id, curves, config_extra=None, header=HEADER):
    """A run folder with config.yaml and metrics.csv; ``curves`` maps seed -> list of
    (env_steps, return_mean) pairs (return_mean may be nan). wall_time = env_steps / 1000."""
    folder.mkdir(parents=True)
    config = {"run": {"algo": algo, "env_id": env_id, "seed": min(curves), "seeds": len(curves)},
              "algo": {"lr": 3e-4}}
    for section, values in (config_extra or {}).items():
        config.setdefault(section, {}).update(values)
    runs.write_config(folder, config)
    lines = [",".join(header)]
    longest = max(len(points) for points in curves.values())
    for i in range(longest):  # rows interleave seeds, as training writes them
        for seed, points in curves.items():
            if i < len(points):
                steps, ret = points[i]
                cells = {"seed": seed, "env_steps": steps, "updates": i + 1,
                         "wall_time": steps / 1000, "return_mean": "" if math.isnan(ret) else ret,
                         "entropy": 1.0 / (i + 1)}
                lines.append(",".join(str(cells[h]) for h in header))
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


def linear(seed, steps, slope=1.0):
    return [(s, slope * s / 1000 + seed) for s in steps]


# ------------------------------------------------------------------ bootstrap statistics

def test_identical_seeds_give_zero_width_band():
    curve = np.array([0.0, 1.5, -2.0, 7.0])
    mean, low, high = bootstrap_mean_ci(np.tile(curve, (6, 1)), resamples=500)
    np.testing.assert_allclose(mean, curve)
    np.testing.assert_allclose(low, curve)
    np.testing.assert_allclose(high, curve)


def test_one_seed_band_collapses_onto_the_line():
    mean, low, high = bootstrap_mean_ci([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(mean, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(low, mean)
    np.testing.assert_array_equal(high, mean)


def test_large_sample_matches_normal_theory_interval():
    rng = np.random.default_rng(1)
    values = rng.normal([0.0, 5.0, -3.0], [1.0, 2.0, 0.5], size=(1000, 3))  # [S, X]
    mean, low, high = bootstrap_mean_ci(values, ci=0.95, resamples=4000, seed=3)
    half = 1.959964 * values.std(axis=0, ddof=1) / math.sqrt(len(values))
    np.testing.assert_allclose(mean, values.mean(axis=0))
    np.testing.assert_allclose(mean - low, half, rtol=0.1)
    np.testing.assert_allclose(high - mean, half, rtol=0.1)


@pytest.mark.parametrize("ci,lo,hi", [(0.95, 0.90, 0.975), (0.5, 0.42, 0.56)])
def test_coverage_on_synthetic_data(ci, lo, hi):
    # 2000 independent experiments (columns) of 20 seeds each, true mean 1.0.
    rng = np.random.default_rng(0)
    values = rng.normal(1.0, 2.0, size=(20, 2000))
    _, low, high = bootstrap_mean_ci(values, ci=ci, resamples=1000, seed=0)
    coverage = np.mean((low <= 1.0) & (1.0 <= high))
    assert lo < coverage < hi, coverage
    assert np.all(low <= high)


def test_bootstrap_is_deterministic_given_seed_and_propagates_nan():
    values = np.random.default_rng(0).normal(size=(5, 4))
    a = bootstrap_mean_ci(values, seed=7)
    b = bootstrap_mean_ci(values, seed=7)
    c = bootstrap_mean_ci(values, seed=8)
    d = bootstrap_mean_ci(values, rng=np.random.default_rng(7))
    for u, v, w in zip(a, b, d):
        np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(u, w)
    assert not np.array_equal(a[1], c[1])
    values[2, 1] = np.nan
    mean, low, high = bootstrap_mean_ci(values)
    assert np.isnan(mean[1]) and np.isnan(low[1]) and np.isnan(high[1])
    assert np.all(np.isfinite(np.delete(np.stack([mean, low, high]), 1, axis=1)))


@pytest.mark.parametrize("kwargs", [{"values": np.zeros((0, 3))}, {"values": np.zeros(3)},
                                    {"ci": 1.0}, {"ci": 0.0}, {"resamples": 0}])
def test_bootstrap_rejects_bad_arguments(kwargs):
    args = {"values": np.zeros((2, 3)), **kwargs}
    with pytest.raises(ValueError):
        bootstrap_mean_ci(**args)


# ------------------------------------------------------------------ curves and grid

def test_seed_curves_drop_nan_and_handle_single_rows_and_resumes():
    nan = math.nan
    rows = [
        {"seed": 0.0, "env_steps": 100.0, "return_mean": nan},
        {"seed": 1.0, "env_steps": 100.0, "return_mean": 5.0},
        {"seed": 0.0, "env_steps": 200.0, "return_mean": 1.0},
        {"seed": 0.0, "env_steps": 300.0, "return_mean": 2.0},   # lost in a crash ...
        {"seed": 0.0, "env_steps": 300.0, "return_mean": 3.0},   # ... re-logged on resume
        {"seed": 0.0, "env_steps": 400.0, "return_mean": 4.0},
        {"seed": 2.0, "env_steps": 100.0, "return_mean": nan},   # no finite value at all
    ]
    curves = run_seed_curves(rows, "env_steps", "return_mean")
    assert set(curves) == {0.0, 1.0}
    np.testing.assert_array_equal(curves[0.0][0], [200, 300, 400])
    np.testing.assert_array_equal(curves[0.0][1], [1.0, 3.0, 4.0])
    np.testing.assert_array_equal(curves[1.0][0], [100])
    np.testing.assert_array_equal(curves[1.0][1], [5.0])


def test_common_grid_is_the_union_within_the_shared_range():
    a = (np.array([0.0, 10.0, 20.0, 30.0]), np.array([0.0, 1.0, 2.0, 3.0]))
    b = (np.array([5.0, 15.0, 25.0]), np.array([10.0, 20.0, 30.0]))
    grid = common_grid([a, b])
    np.testing.assert_array_equal(grid, [5.0, 10.0, 15.0, 20.0, 25.0])
    values = interpolate_curves([a, b], grid)
    assert values.shape == (2, 5)
    np.testing.assert_allclose(values[0], grid / 10)          # exact for linear curves
    np.testing.assert_allclose(values[1], [10.0, 15.0, 20.0, 25.0, 30.0])

    assert common_grid([a, (np.array([40.0, 50.0]), np.array([1.0, 2.0]))]) is None
    assert common_grid([]) is None
    single = (np.array([20.0]), np.array([7.0]))
    np.testing.assert_array_equal(common_grid([a, single]), [20.0])
    np.testing.assert_allclose(interpolate_curves([a, single], [20.0]), [[2.0], [7.0]])

    dense = (np.arange(1000.0), np.zeros(1000))
    assert len(common_grid([dense, a], max_points=50)) == 31  # 0, 1, ..., 30
    grid = common_grid([dense, a], max_points=20)
    assert len(grid) == 20 and grid[0] == 0.0 and grid[-1] == 30.0


# ------------------------------------------------------------------ grouping and pooling

def test_runs_of_the_same_algo_and_env_pool_their_seeds(tmp_path):
    steps_a, steps_b = [1000, 2000, 3000, 4000], [1500, 3000, 4500]
    a = fake_run(tmp_path / "a", "ippo", "mpe/simple", {s: linear(s, steps_a) for s in (0, 1)})
    b = fake_run(tmp_path / "b", "ippo", "mpe/simple", {s: linear(s, steps_b) for s in (2, 3)})
    c = fake_run(tmp_path / "c", "mappo", "mpe/simple", {0: linear(0, steps_a, 2.0)})
    d = fake_run(tmp_path / "d", "ippo", "didactic/climbing", {0: linear(0, steps_a)})
    loaded = load_runs([a, b, c, d, tmp_path / "a" / "."])  # the same folder twice: read once
    assert len(loaded) == 4
    groups, notes = group_curves(loaded, "env_steps", "return_mean", resamples=200)
    assert list(groups) == [("ippo", "mpe/simple"), ("mappo", "mpe/simple"),
                            ("ippo", "didactic/climbing")]
    ippo = groups[("ippo", "mpe/simple")]
    assert ippo["n_seeds"] == 4 and ippo["runs"] == [str(a), str(b)]
    np.testing.assert_array_equal(ippo["grid"], [1500, 2000, 3000, 4000])
    # y = steps/1000 + seed, so the mean over seeds 0..3 is steps/1000 + 1.5
    np.testing.assert_allclose(ippo["mean"], ippo["grid"] / 1000 + 1.5)
    assert np.all(ippo["low"] < ippo["mean"]) and np.all(ippo["mean"] < ippo["high"])
    assert np.all(ippo["high"] - ippo["low"] <= 3.0 + 1e-9)  # within the seeds' spread
    mappo = groups[("mappo", "mpe/simple")]
    assert mappo["n_seeds"] == 1
    np.testing.assert_array_equal(mappo["low"], mappo["high"])
    assert ippo["x_max"] == 4500
    # same config apart from the seeds and distinct seed numbers: the only note is the cut
    assert notes == ["ippo on mpe/simple: plotted up to env_steps=4000, the range all 4 seeds "
                     "cover (longest reaches 4500)"]


def test_pooling_notes_differing_configs_repeated_seeds_and_empty_seeds(tmp_path):
    nan = math.nan
    steps = [1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000]
    a = fake_run(tmp_path / "a", "ippo", "mpe/simple", {0: linear(0, steps), 1: [(1000, nan)]})
    b = fake_run(tmp_path / "b", "ippo", "mpe/simple", {0: linear(1, steps[:4])},
                 config_extra={"algo": {"lr": 1e-3}})
    groups, notes = group_curves(load_runs([a, b]), "env_steps", "return_mean", resamples=100)
    g = groups[("ippo", "mpe/simple")]
    assert g["n_seeds"] == 2 and g["grid"][-1] == 4000 and g["x_max"] == 8000
    text = "\n".join(notes)
    assert "seed 1 of" in text and "has no finite return_mean yet; left out" in text
    assert "seed 0 is in both" in text and "each counts as a separate seed" in text
    assert "configs differ in algo.lr" in text
    assert "plotted up to env_steps=4000" in text


def test_seeds_that_share_no_range_are_not_plotted(tmp_path):
    nan = math.nan
    a = fake_run(tmp_path / "a", "ippo", "mpe/simple",
                 {0: [(1000, 1.0)], 1: [(1000, nan), (2000, 2.0), (3000, 3.0)]})
    groups, notes = group_curves(load_runs([a]), "env_steps", "return_mean")
    assert groups[("ippo", "mpe/simple")]["grid"] is None
    assert "share no env_steps range" in notes[0]


def test_labels_split_runs_of_one_algorithm_and_must_match_the_folders(tmp_path):
    from teamrl.analysis.plots import PlotInputError, plot_runs

    steps = [1000, 2000, 3000]
    a = fake_run(tmp_path / "a", "trpo", "gymnasium/Hopper-v5", {0: linear(0, steps)})
    b = fake_run(tmp_path / "b", "trpo", "gymnasium/Hopper-v5", {0: linear(5, steps)},
                 config_extra={"run": {"num_envs": 5}})
    _, pooled, _ = plot_runs([a, b], tmp_path / "pooled.png", resamples=50)
    assert list(pooled) == [("trpo", "gymnasium/Hopper-v5")]
    assert pooled[("trpo", "gymnasium/Hopper-v5")]["n_seeds"] == 2
    _, split, _ = plot_runs([a, b], tmp_path / "split.png", resamples=50,
                            labels=["TRPO", "TRPO (5k batch)"])
    assert list(split) == [("TRPO", "gymnasium/Hopper-v5"),
                           ("TRPO (5k batch)", "gymnasium/Hopper-v5")]
    np.testing.assert_allclose(split[("TRPO (5k batch)", "gymnasium/Hopper-v5")]["mean"],
                               np.asarray(steps) / 1000 + 5)
    with pytest.raises(PlotInputError, match="1 labels for 2 run folders"):
        plot_runs([a, b], tmp_path / "bad.png", labels=["TRPO"])
    assert not (tmp_path / "bad.png").exists()


# ------------------------------------------------------------------ command line

@pytest.fixture
def three_runs(tmp_path):
    nan = math.nan
    steps = [512, 1024, 1536, 2048]
    a = fake_run(tmp_path / "a", "ippo", "mpe/simple",
                 {0: [(512, nan)] + linear(0, steps[1:]), 1: linear(1, steps)})
    b = fake_run(tmp_path / "b", "ippo", "mpe/simple", {2: linear(2, [1000, 2000])})
    c = fake_run(tmp_path / "c", "mappo", "didactic/climbing", {0: [(1024, 3.0)]})  # one row
    return [str(a), str(b), str(c)]


@pytest.mark.parametrize("name,magic", [("curves.png", PNG_MAGIC), ("curves.SVG", b"<?xml")])
def test_cli_writes_png_and_svg(tmp_path, capfd, three_runs, name, magic):
    out = tmp_path / "plots" / name
    assert main(["plot", *three_runs, f"out={out}", "resamples=200"]) == 0
    data = out.read_bytes()
    assert data.startswith(magic)
    if magic == b"<?xml":
        assert b"<svg" in data[:1000] and data.rstrip().endswith(b"</svg>")
    captured = capfd.readouterr()
    assert "mpe/simple: ippo, 3 seed(s) from 2 run(s)" in captured.out
    assert "didactic/climbing: mappo, 1 seed(s) from 1 run(s)" in captured.out
    assert f"plot written to {out}" in captured.out
    assert "Traceback" not in captured.err


def test_cli_wall_time_and_other_columns(tmp_path, capfd, three_runs):
    out = tmp_path / "w.svg"
    assert main(["plot", *three_runs, f"out={out}", "x=wall_time", "y=entropy", "ci=0.9",
                 "seed=3", "resamples=100"]) == 0
    assert out.read_bytes().startswith(b"<?xml")
    first = out.read_bytes()
    assert main(["plot", *three_runs, f"out={out}", "x=wall_time", "y=entropy", "ci=0.9",
                 "seed=3", "resamples=100"]) == 0
    assert out.read_bytes() == first  # deterministic output
    assert "final mean entropy" in capfd.readouterr().out


@pytest.mark.parametrize("extra,needle", [
    ([], "plot needs at least one RUN_DIR"),
    (["{runs}", "out="], "plot needs out=FILE ending in .png or .svg"),
    (["{runs}"], "plot needs out=FILE ending in .png or .svg"),
    (["{runs}", "{tmp}/nope", "out={out}"], "is not a run folder (no config.yaml)"),
    (["{tmp}", "out={out}"], "is not a run folder (no config.yaml)"),
    (["{runs}", "out={out}", "y=nope"],
     "y='nope' is not a column of metrics.csv; valid columns: seed, env_steps, updates, "
     "wall_time, return_mean, entropy"),
    (["{runs}", "out={out}", "x=updates"], "x='updates' is not valid; valid choices: env_steps, wall_time"),
    (["{runs}", "out={tmp}/sub/plot.pdf"], "must end in .png or .svg"),
    (["{runs}", "out={tmp}/sub/plot"], "must end in .png or .svg"),
    (["{runs}", "out={out}", "ci=95"], "ci=95.0 is out of range; must be > 0 and < 1"),
    (["{runs}", "out={out}", "resamples=0"], "resamples=0 is out of range; must be >= 1"),
    (["{runs}", "out={out}", "resamples=many"], "resamples='many' has the wrong type"),
    (["{runs}", "out={out}", "colour=red"], "unknown plot key 'colour'; valid keys: ci, out,"),
    (["{empty}", "out={out}"], "metrics.csv has no rows yet"),
    (["{nometrics}", "out={out}"], "has no metrics.csv yet"),
    (["{allnan}", "out={out}"], "no finite return_mean values to plot"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capfd, extra, needle):
    run = fake_run(tmp_path / "r", "ippo", "mpe/simple", {0: linear(0, [100, 200])})
    empty = tmp_path / "empty"
    empty.mkdir()
    runs.write_config(empty, {"run": {"algo": "ippo", "env_id": "mpe/simple"}})
    (empty / "metrics.csv").write_text(",".join(HEADER) + "\n")
    nometrics = tmp_path / "nometrics"
    nometrics.mkdir()
    runs.write_config(nometrics, {"run": {"algo": "ippo", "env_id": "mpe/simple"}})
    allnan = fake_run(tmp_path / "allnan", "ippo", "mpe/simple", {0: [(100, math.nan)]})
    out = tmp_path / "sub" / "plot.png"
    names = {"runs": run, "tmp": tmp_path, "out": out, "empty": empty, "nometrics": nometrics,
             "allnan": allnan}
    argv = ["plot"] + [a.format(**names) for a in extra]
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("teamrl: error: ") and "\n" not in err and needle in err, err
    assert sorted(p for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "sub").exists()


def test_y_missing_from_one_of_several_runs_names_that_run(tmp_path, capfd):
    a = fake_run(tmp_path / "a", "ippo", "mpe/simple", {0: linear(0, [100, 200])})
    b = fake_run(tmp_path / "b", "hatrpo", "mpe/simple", {0: linear(0, [100, 200])},
                 header=HEADER[:-1])
    assert main(["plot", str(a), str(b), f"out={tmp_path / 'p.png'}", "y=entropy"]) == 2
    err = capfd.readouterr().err.strip()
    assert f"y='entropy' is not a column of metrics.csv of '{b}'" in err
    assert err.endswith("valid columns: seed, env_steps, updates, wall_time, return_mean")
    assert not (tmp_path / "p.png").exists()
