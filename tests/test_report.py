"""`teamrl report`: final scores, the files it writes (scores.csv, summary.md/csv, figures,
marl_eval.json) and bad input. Fake run folders, no training."""

import csv
import json

import numpy as np
import pytest

from teamrl import runs
from teamrl.cli import main
from teamrl.analysis.report import FILES, final_score

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HEADER = ["seed", "env_steps", "updates", "return_mean", "eval_return_det", "eval_return_stoch"]
ALGOS = {"ippo": 1.0, "mappo": 2.0, "happo": 3.0}          # algo -> level (happo best)
ENVS = {"mpe/simple_spread": (-100.0, 10.0), "didactic/climbing": (0.0, 1.0)}  # offset, scale
ROWS, EVAL_EVERY, SEEDS = 20, 5, (0, 1, 2)


def value(algo, env, seed, row):
    """return_mean at row i (0-based) of a seed: rises to the algo's level, a seed offset."""
    offset, scale = ENVS[env]
    return offset + scale * (ALGOS[algo] * (row + 1) / ROWS + 0.1 * seed)


def fake_run(folder, algo, env_id, seeds=SEEDS, rows=ROWS, nan_eval_seeds=()):
    """A run folder: config.yaml and metrics.csv with ``rows`` rows per seed (interleaved, as
    training writes them); eval columns filled every EVAL_EVERY rows and on the last row,
    with eval_return_det = return_mean + 0.5 and eval_return_stoch = return_mean - 0.5."""
    folder.mkdir(parents=True)
    runs.write_config(folder, {"run": {"algo": algo, "env_id": env_id, "seed": min(seeds),
                                       "seeds": len(seeds)}, "algo": {"lr": 3e-4}})
    lines = [",".join(HEADER)]
    for i in range(rows):
        for s in seeds:
            ret = value(algo, env_id, s, i)
            due = (i + 1) % EVAL_EVERY == 0 or i == rows - 1
            det = ret + 0.5 if due and s not in nan_eval_seeds else ""
            stoch = ret - 0.5 if due and s not in nan_eval_seeds else ""
            lines.append(f"{s},{(i + 1) * 100},{i + 1},{ret},{det},{stoch}")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def run_dirs(tmp_path):
    return [str(fake_run(tmp_path / "runs" / f"{env.split('/')[1]}-{algo}", algo, env))
            for env in ENVS for algo in ALGOS]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ final score


@pytest.mark.parametrize("n,k", [(1, 1), (5, 1), (10, 1), (11, 2), (20, 2), (30, 3), (101, 11)])
def test_final_score_is_the_mean_of_the_last_tenth(n, k):
    values = np.arange(float(n))
    score, used = final_score(values)
    assert used == k
    assert score == pytest.approx(values[-k:].mean())


# ------------------------------------------------------------------ the files


def test_report_writes_every_file(tmp_path, capfd, run_dirs):
    out = tmp_path / "report"
    assert main(["report", *run_dirs, f"out={out}", "resamples=200"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    captured = capfd.readouterr()
    assert f"report written to {out}" in captured.out
    assert "[teamrl] happo: IQM 0.9" in captured.out          # the best, near the top (1)
    assert "Traceback" not in captured.err

    # scores.csv: one row per algo, env, seed; eval_return_det has 4 finite values per seed
    # (rows 5, 10, 15, 20), so the final score is the last one.
    scores = read_csv(out / "scores.csv")
    assert list(scores[0]) == ["algo", "env", "seed", "score", "normalised_score", "n_values",
                               "last_env_steps", "run_dir"]
    assert len(scores) == len(ALGOS) * len(ENVS) * len(SEEDS)
    assert {(r["algo"], r["env"], r["seed"]) for r in scores} == \
        {(a, e, str(s)) for a in ALGOS for e in ENVS for s in SEEDS}
    for r in scores:
        assert float(r["score"]) == pytest.approx(value(r["algo"], r["env"], int(r["seed"]),
                                                        ROWS - 1) + 0.5)
        assert r["n_values"] == "1" and r["last_env_steps"] == str(ROWS * 100)
    # default normalisation: min and max over each env's runs (ippo seed 0 .. happo seed 2)
    norm = {(r["algo"], r["env"], r["seed"]): float(r["normalised_score"]) for r in scores}
    for env in ENVS:
        assert norm[("ippo", env, "0")] == pytest.approx(0.0)
        assert norm[("happo", env, "2")] == pytest.approx(1.0)
        assert 0.0 < norm[("mappo", env, "1")] < 1.0

    # summary.csv: per env mean over seeds, aggregates, every pair's P(X > Y)
    summary = read_csv(out / "summary.csv")
    env_rows = [r for r in summary if r["section"] == "env"]
    assert len(env_rows) == len(ALGOS) * len(ENVS)
    row = next(r for r in env_rows if r["algo"] == "mappo" and r["env"] == "mpe/simple_spread")
    expected = np.mean([value("mappo", "mpe/simple_spread", s, ROWS - 1) + 0.5 for s in SEEDS])
    assert float(row["value"]) == pytest.approx(expected)
    assert float(row["ci_low"]) < expected < float(row["ci_high"]) and row["n"] == "3"
    agg = {(r["algo"], r["statistic"]): r for r in summary if r["section"] == "aggregate"}
    assert set(agg) == {(a, s) for a in ALGOS for s in ("iqm", "mean")}
    assert float(agg[("happo", "iqm")]["value"]) > float(agg[("mappo", "iqm")]["value"]) \
        > float(agg[("ippo", "iqm")]["value"])
    assert agg[("ippo", "mean")]["n"] == "6"
    pairs = {(r["algo"], r["other"]): r for r in summary if r["section"] == "improvement"}
    assert set(pairs) == {("ippo", "mappo"), ("ippo", "happo"), ("mappo", "happo")}
    for r in pairs.values():  # fully separated: the earlier algo never wins
        assert (float(r["value"]), float(r["ci_low"]), float(r["ci_high"])) == (0.0, 0.0, 0.0)
        assert r["n"] == "2"

    md = (out / "summary.md").read_text()
    for heading in ("# teamrl report: eval_return_det", "## Per env", "## Aggregate over envs",
                    "## Probability of improvement"):
        assert heading in md
    assert "| mpe/simple_spread | mappo | " in md
    assert "| ippo | happo | 0.000 [0.000, 0.000] | 2 |" in md
    assert "last 10%" in md

    for name in ("aggregate.png", "profiles.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)


def test_marl_eval_json_has_marl_evals_layout(tmp_path, run_dirs):
    out = tmp_path / "report"
    assert main(["report", *run_dirs, f"out={out}", "resamples=50"]) == 0
    data = json.loads((out / "marl_eval.json").read_text())
    # environment -> task -> algorithm -> run -> step / absolute_metrics
    assert set(data) == {"mpe", "didactic"}
    assert set(data["mpe"]) == {"simple_spread"} and set(data["didactic"]) == {"climbing"}
    for family, task in (("mpe", "simple_spread"), ("didactic", "climbing")):
        algos = data[family][task]
        assert set(algos) == set(ALGOS)
        for algo, algo_runs in algos.items():
            assert list(algo_runs) == ["seed_0", "seed_1", "seed_2"]
            for seed, run in enumerate(algo_runs.values()):
                keys = list(run)
                assert keys == ["step_0", "step_1", "step_2", "step_3", "absolute_metrics"]
                assert [run[k]["step_count"] for k in keys[:-1]] == [500, 1000, 1500, 2000]
                for k in keys[:-1]:
                    assert set(run[k]) == {"step_count", "eval_return_det"}
                    assert isinstance(run[k]["step_count"], int)
                    assert len(run[k]["eval_return_det"]) == 1
                final = value(algo, f"{family}/{task}", seed, ROWS - 1) + 0.5
                assert run["step_3"]["eval_return_det"][0] == pytest.approx(final)
                assert run["absolute_metrics"] == {"eval_return_det": [pytest.approx(final)]}


def test_other_metric_averages_the_last_tenth_of_rows(tmp_path, run_dirs):
    out = tmp_path / "report"
    assert main(["report", *run_dirs, f"out={out}", "metric=return_mean", "resamples=50",
                 "seed=3"]) == 0
    scores = read_csv(out / "scores.csv")
    key = ("mappo", "didactic/climbing", "1")
    r = next(r for r in scores if (r["algo"], r["env"], r["seed"]) == key)
    assert r["n_values"] == "2"  # 10% of 20 rows
    expected = np.mean([value("mappo", "didactic/climbing", 1, i) for i in (ROWS - 2, ROWS - 1)])
    assert float(r["score"]) == pytest.approx(expected)
    data = json.loads((out / "marl_eval.json").read_text())
    run = data["didactic"]["climbing"]["mappo"]["seed_1"]
    assert len(run) == ROWS + 1  # every row's return_mean, then absolute_metrics
    assert run["absolute_metrics"]["return_mean"][0] == pytest.approx(expected)


def test_report_is_deterministic_given_the_seed(tmp_path, run_dirs):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["report", *run_dirs, f"out={a}", "resamples=100", "seed=4"]) == 0
    assert main(["report", *run_dirs, f"out={b}", "resamples=100", "seed=4"]) == 0
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_norm_file_sets_the_bounds(tmp_path, capfd, run_dirs):
    norm = tmp_path / "norm.yaml"
    norm.write_text("mpe/simple_spread: [-100, -60]\n")
    out = tmp_path / "report"
    assert main(["report", *run_dirs, f"out={out}", f"norm={norm}", "resamples=50"]) == 0
    for r in read_csv(out / "scores.csv"):
        if r["env"] == "mpe/simple_spread":
            expected = (float(r["score"]) + 100) / 40
            assert float(r["normalised_score"]) == pytest.approx(expected)
    # an env missing from the file falls back to min-max over its runs, with a note
    assert "didactic/climbing is not in" in capfd.readouterr().err
    md = (out / "summary.md").read_text()
    assert f"| mpe/simple_spread | -100 | -60 | {norm} |" in md
    assert "| didactic/climbing |" in md and "min and max over runs |" in md


def test_pooled_runs_unequal_envs_and_missing_values_are_noted(tmp_path, capfd):
    a = fake_run(tmp_path / "a", "ippo", "mpe/simple_spread", nan_eval_seeds=(2,))
    b = fake_run(tmp_path / "b", "ippo", "mpe/simple_spread", seeds=(0,), rows=10)
    c = fake_run(tmp_path / "c", "mappo", "mpe/simple_spread")
    d = fake_run(tmp_path / "d", "mappo", "didactic/climbing")
    out = tmp_path / "report"
    assert main(["report", str(a), str(b), str(c), str(d), f"out={out}", "resamples=50"]) == 0
    err = capfd.readouterr().err
    assert "seed 2 of" in err and "has no finite eval_return_det; left out" in err
    assert "seed 0 is in both" in err
    assert "ippo has no runs on didactic/climbing" in err
    assert "marl_eval.json: mpe has different steps per run" in err
    scores = read_csv(out / "scores.csv")
    assert [(r["algo"], r["seed"], r["run_dir"]) for r in scores if r["algo"] == "ippo"] == \
        [("ippo", "0", str(a)), ("ippo", "1", str(a)), ("ippo", "0", str(b))]
    data = json.loads((out / "marl_eval.json").read_text())
    assert list(data["mpe"]["simple_spread"]["ippo"]) == ["seed_0", "seed_1", "seed_0_2"]
    pairs = [r for r in read_csv(out / "summary.csv") if r["section"] == "improvement"]
    assert len(pairs) == 1 and pairs[0]["n"] == "1"  # only the env both ran
    assert "## Notes" in (out / "summary.md").read_text()


def test_help_lists_report(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "report" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "marl_eval.json" in capsys.readouterr().out


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("extra,needle", [
    ([], "report needs at least one RUN_DIR"),
    (["{runs}"], "report needs out=DIR"),
    (["{runs}", "{tmp}/nope", "out={out}"], "'{tmp}/nope' does not exist"),
    (["{runs}", "{nometrics}", "out={out}"], "'{nometrics}' has no metrics.csv yet"),
    (["{tmp}/runs", "out={out}"], "'{tmp}/runs' is not a run folder (no config.yaml)"),
    (["{runs}/metrics.csv", "out={out}"], "is not a run folder"),
    (["{runs}", "out={out}", "metric=nope"], "metric='nope' is not a column of metrics.csv; "
     "valid columns: seed, env_steps, updates, return_mean, eval_return_det"),
    (["{allnan}", "out={out}"], "no finite eval_return_det values in the given run folders"),
    (["{runs}", "out={out}", "resamples=0"], "resamples=0 is out of range; must be >= 1"),
    (["{runs}", "out={out}", "seed=x"], "seed='x' has the wrong type"),
    (["{runs}", "out={out}", "colour=red"], "unknown report key 'colour'; valid keys: metric,"),
    (["{runs}", "out={tmp}/file.txt"], "is a file; give a folder"),
    (["{runs}", "out={out}", "norm={tmp}/missing.yaml"], "missing.yaml' does not exist"),
    (["{runs}", "out={out}", "norm={badnorm}"], "mpe/simple_spread must be [low, high]"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capfd, extra, needle):
    run = fake_run(tmp_path / "runs" / "r", "ippo", "mpe/simple_spread")
    nometrics = tmp_path / "runs" / "nometrics"
    nometrics.mkdir()
    runs.write_config(nometrics, {"run": {"algo": "ippo", "env_id": "mpe/simple_spread"}})
    allnan = fake_run(tmp_path / "runs" / "allnan", "ippo", "mpe/simple_spread",
                      nan_eval_seeds=SEEDS)
    (tmp_path / "file.txt").write_text("x")
    badnorm = tmp_path / "badnorm.yaml"
    badnorm.write_text("mpe/simple_spread: [5, 1]\n")
    out = tmp_path / "out"
    names = {"runs": run, "tmp": tmp_path, "out": out, "nometrics": nometrics,
             "allnan": allnan, "badnorm": badnorm}
    argv = ["report"] + [a.format(**names) for a in extra]
    before = sorted(tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("teamrl: error: ") and "\n" not in err, err
    assert needle.format(**names) in err, err
    assert sorted(tmp_path.rglob("*")) == before
    assert not out.exists()
