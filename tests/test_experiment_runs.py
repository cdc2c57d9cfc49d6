"""experiments/experiment_runs.py, the harness of the experiment scripts: the grid of run
folders, what is trained, skipped, resumed or reported under --report-only, the saved
arguments, evaluations reused from a run folder and the page's rows. Fake run folders and a
fake trainer, except the resume test, which trains two tiny MPE runs."""

import argparse
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import experiment_runs  # noqa: E402
from experiment_runs import DONE_FILE, Run, run_folder, run_grid  # noqa: E402
from make_results import EXIT_NO_SAVED_RUNS  # noqa: E402

SETTINGS = {"seeds": "3", "total_steps": "2000"}


def finished_run(path: Path, algo="mappo", env_id="mpe/simple", settings=SETTINGS, **record):
    """A run folder as train_or_skip leaves a finished run."""
    path.mkdir(parents=True, exist_ok=True)
    request = {"algo": algo, "env_id": env_id, "settings": settings}
    (path / DONE_FILE).write_text(json.dumps({"request": request, "wall_s": 5.0, **record}))
    return path


def grid_of(runs: Path, algos=("mappo", "ippo")) -> list[Run]:
    return [Run(algo, algo.upper(), algo, "mpe/simple", SETTINGS,
                run_folder(runs, "simple", algo, 2000, 3)) for algo in algos]


@pytest.fixture
def trainer(monkeypatch):
    """train_or_skip replaced by a fake that records its calls and finishes the folder."""
    calls = []

    def fake(run_dir, algo, env_id, settings, code, force=False):
        calls.append((Path(run_dir).name, force))
        skipped = (Path(run_dir) / DONE_FILE).is_file() and not force
        finished_run(Path(run_dir), algo, env_id, settings, code=code)
        return {"wall_s": 1.0, "code": code, "skipped": skipped}

    monkeypatch.setattr(experiment_runs, "train_or_skip", fake)
    return calls


def test_run_folders_name_the_cell_budget_and_seeds():
    assert run_folder("runs", "3m", "mappo", 2_000_000, 3) == \
        Path("runs/3m_mappo_steps2000000_seeds3")
    assert run_folder("runs", "n4", "hatrpo", 1024, 5, "_kl0.01") == \
        Path("runs/n4_hatrpo_steps1024_seeds5_kl0.01")
    assert experiment_runs.budget_settings(2000, 3) == SETTINGS
    assert experiment_runs.budget_settings(2000, 3, "smac") == {
        **SETTINGS, "eval_protocol": "smac", "log_every": "5", "eval_every": "5"}


def test_a_grid_trains_every_cell_and_records_failures(tmp_path, trainer, capsys):
    def read(run, info):
        if run.algo == "ippo":
            raise RuntimeError("no checkpoint")
        return {"algo": run.algo, "wall_s": info["wall_s"]}

    results = run_grid(grid_of(tmp_path), "abc", read)
    assert results == {"mappo": {"algo": "mappo", "wall_s": 1.0},
                       "ippo": {"error": "RuntimeError: no checkpoint"}}
    assert trainer == [("simple_mappo_steps2000_seeds3", False),
                       ("simple_ippo_steps2000_seeds3", False)]
    assert "IPPO FAILED: RuntimeError: no checkpoint" in capsys.readouterr().out
    with pytest.raises(RuntimeError):
        run_grid(grid_of(tmp_path), "abc", read, keep_going=False)


def test_a_finished_run_that_no_longer_loads_is_trained_again(tmp_path, trainer):
    finished_run(tmp_path / "simple_mappo_steps2000_seeds3")
    loads = iter([ValueError("old checkpoint layout"), None])

    def read(run, info):
        error = next(loads)
        if error:
            raise error
        return {"skipped": info["skipped"]}

    grid = grid_of(tmp_path, ["mappo"])
    assert run_grid(grid, "c", read, retrain_unloadable=True) == {"mappo": {"skipped": False}}
    assert trainer == [("simple_mappo_steps2000_seeds3", False),
                       ("simple_mappo_steps2000_seeds3", True)]

    def unloadable(run, info):
        raise ValueError("old checkpoint layout")

    # Without the option the error is the run's failure.
    assert run_grid(grid, "c", unloadable) == {
        "mappo": {"error": "ValueError: old checkpoint layout"}}


@pytest.mark.parametrize("unfinished", ["exit", "not run", "left out"])
def test_report_only_trains_nothing_and_reports_what_finished(tmp_path, trainer, capsys,
                                                               unfinished):
    finished_run(tmp_path / "simple_mappo_steps2000_seeds3", code="abc")
    finished_run(tmp_path / "simple_ippo_steps2000_seeds3", algo="ippo",
                 settings={**SETTINGS, "lr": "1e-3"})  # another request: not this cell's run

    def read(run, info):
        return {"code": info["code"], "skipped": info["skipped"]}

    if unfinished == "exit":
        with pytest.raises(SystemExit) as stop:
            run_grid(grid_of(tmp_path), "now", read, report_only=True, unfinished=unfinished)
        assert stop.value.code == EXIT_NO_SAVED_RUNS
        assert "no finished run of ippo" in capsys.readouterr().err
        return
    results = run_grid(grid_of(tmp_path), "now", read, report_only=True,
                       unfinished=unfinished)
    assert trainer == []
    assert results["mappo"] == {"code": "abc", "skipped": True}
    out = capsys.readouterr().out
    assert "finished with other settings" in out
    if unfinished == "not run":
        assert results["ippo"] == {"not_run": True} and out.rstrip().endswith("not run yet")
    else:
        assert "ippo" not in results and out.rstrip().endswith("left out")


def test_results_and_the_training_arguments_are_saved_beside_the_runs(tmp_path):
    results = {("3m", "mappo"): {"curve": [1, 2], "win": 0.5}, ("3m", "ippo"): {"error": "x"}}
    args = argparse.Namespace(runs=str(tmp_path / "runs"), report_only=True)
    experiment_runs.save_results(args, ["--steps", "5"], experiment_runs.by_name(
        results, drop=("curve",)))
    saved = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert saved == {"3m mappo": {"win": 0.5}, "3m ippo": {"error": "x"}}
    assert not (tmp_path / "runs" / "argv.json").exists()  # a rebuild records no arguments
    args.report_only = False
    experiment_runs.save_results(args, ["--steps", "5"], {})
    assert json.loads((tmp_path / "runs" / "argv.json").read_text()) == {
        "argv": ["--steps", "5"]}


def test_page_rows_of_cells_without_numbers():
    results = {"a": {"x": 1.0}, "b": {"error": "ValueError: bad"}, "c": {"not_run": True}}
    cells = [(key, [key.upper()]) for key in "abcd"]
    rows = experiment_runs.table_rows(cells, results, 4, lambda key, r: [f"{r['x']:.1f}", "–"])
    assert rows == ["| A | 1.0 | – |", "| B | failed: ValueError: bad | | |",
                    "| C | not run yet | | |"]
    assert experiment_runs.table_rows(cells, results, 4, lambda key, r: ["1", "2"],
                                      absent="not run")[-1] == "| D | not run | | |"
    note = experiment_runs.missing_note({k.upper(): results.get(k) for k in "abcd"})
    assert note == " (failed: B, D) (not run yet: C)"
    assert experiment_runs.missing_note({"A": results["a"]}) == ""


def test_report_only_reuses_the_saved_arguments(tmp_path):
    parser = experiment_runs.experiment_parser("A script.\n\nMore.", runs=tmp_path / "runs")
    parser.add_argument("--seeds", type=int, default=1)
    with pytest.raises(SystemExit) as stop:  # nothing saved: do not guess the settings
        experiment_runs.parse_flags(parser, ["--report-only"])
    assert stop.value.code == EXIT_NO_SAVED_RUNS
    assert experiment_runs.parse_flags(parser, ["--report-only", "--seeds", "4"])[0].seeds == 4
    experiment_runs.save_argv(tmp_path / "runs" / "argv.json",
                              ["--seeds", "5", "--note", "how it was run"])
    args, argv = experiment_runs.parse_flags(parser, ["--report-only"])
    assert (args.seeds, args.note, args.report_only, argv) == (5, "how it was run", True,
                                                               ["--report-only"])
    args, _ = experiment_runs.parse_flags(parser, ["--report-only", "--seeds", "2"])
    assert (args.seeds, args.note) == (2, "how it was run")
    assert experiment_runs.parse_flags(parser, ["--seeds", "2"])[0].note == ""
    assert experiment_runs.parse_flags(parser, ["--report-only"],
                                       reuse_saved=False)[0].seeds == 1


def test_require_saved_run_accepts_only_the_same_request(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        experiment_runs.require_saved_run(run, "mappo", "mpe/simple", SETTINGS)
    assert stop.value.code == EXIT_NO_SAVED_RUNS
    finished_run(run)
    experiment_runs.require_saved_run(run, "mappo", "mpe/simple", SETTINGS)
    with pytest.raises(SystemExit):
        experiment_runs.require_saved_run(run, "mappo", "mpe/simple", {"seeds": "5"})


def test_saved_evaluation_is_reused_only_when_it_matches(tmp_path, monkeypatch):
    """A saved run keeps no checkpoints (experiments/saved/ ignores them): its final
    evaluation is read back from eval_latest_<mode>.json when episodes and checkpoint match,
    and otherwise evaluated again (here: evaluate_run is called)."""
    import experiment_runs
    import teamrl.train.evaluate

    calls = []
    monkeypatch.setattr(teamrl.train.evaluate, "evaluate_run",
                        lambda run_dir, episodes, det, checkpoint: calls.append(
                            (episodes, det, checkpoint)) or {"fresh": True})
    run = tmp_path / "run"
    run.mkdir()
    saved = {"checkpoint": "latest", "episodes": 8, "deterministic": True, "seeds": []}
    (run / "eval_latest_det.json").write_text(json.dumps(saved))
    # No experiment.json: the run never finished, so the file is not trusted.
    assert experiment_runs.evaluate_or_reuse(run, 8, True) == {"fresh": True}
    (run / experiment_runs.DONE_FILE).write_text(json.dumps({"request": {}}))
    assert experiment_runs.evaluate_or_reuse(run, 8, True) == saved
    assert experiment_runs.evaluate_or_reuse(run, 16, True) == {"fresh": True}  # episodes
    assert experiment_runs.evaluate_or_reuse(run, 8, False) == {"fresh": True}  # mode
    assert calls == [(8, True, "latest"), (16, True, "latest"), (8, False, "latest")]


def test_an_interrupted_grid_run_is_resumed_not_restarted(tmp_path):
    """A grid stopped mid-run (a checkpoint short of the target, no experiment.json) continues
    from that checkpoint when the script runs again, and ends where an uninterrupted run ends;
    a folder holding another config is trained afresh."""
    import jax
    import numpy as np

    from experiment_runs import DONE_FILE, train_or_skip
    from teamrl import runs
    from teamrl.train.presets import config_from_run_dir
    from teamrl.train import CompiledTrainer

    common = {"num_envs": "8", "rollout_length": "64", "log_every": "2", "seeds": "2"}
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train_or_skip(whole, "mappo", "mpe/simple_spread", {**common, "total_steps": "4096"}, "c")
    train_or_skip(parts, "mappo", "mpe/simple_spread", {**common, "total_steps": "2048"}, "c")
    (parts / DONE_FILE).unlink()  # as a run killed after its 2048-step checkpoint leaves it
    before = json.loads((parts / "checkpoints" / "latest.json").read_text())["meta"]
    record = train_or_skip(parts, "mappo", "mpe/simple_spread",
                           {**common, "total_steps": "4096"}, "c")
    assert record["resumed_at"] == 4 and not record["skipped"]
    assert record["wall_s"] > before["wall_time"] > 0  # the interrupted part's time counts

    def final(run_dir):
        trainer = CompiledTrainer(config_from_run_dir(run_dir, {}))
        return runs.load_checkpoint(run_dir, "latest", trainer.init())

    (a, meta_a), (b, meta_b) = final(whole), final(parts)
    assert meta_a["updates"] == meta_b["updates"] == 8
    for x, y in zip(jax.tree.leaves(a.train_state), jax.tree.leaves(b.train_state)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    column = lambda d: [r["return_mean"] for r in runs.read_metrics(d)]
    assert column(parts) == column(whole) and len(column(whole)) >= 4  # rows x 2 seeds

    (parts / DONE_FILE).unlink()
    other = train_or_skip(parts, "mappo", "mpe/simple_spread",
                          {**common, "total_steps": "4096", "lr": "1e-4"}, "c")
    assert "resumed_at" not in other


def test_a_setting_added_to_teamrl_since_a_grid_run_started_does_not_restart_it():
    """A key missing from a saved config.yaml counts as its default: a run whose request leaves
    it there still resumes after teamrl gains the setting; one that sets it does not."""
    from teamrl.config import with_new_defaults
    from teamrl.train.presets import base_config
    from teamrl.config import apply_overrides
    from teamrl.cli.sweep import config_differences

    config = base_config("mappo", "mpe/simple_spread")
    saved = config.to_dict()
    del saved["run"]["eval_protocol"]  # as written before the key existed
    assert config_differences(config.to_dict(), saved)
    assert not config_differences(config.to_dict(), with_new_defaults(saved, config))
    apply_overrides(config, {"eval_protocol": "smac"})
    assert config_differences(config.to_dict(), with_new_defaults(saved, config))
