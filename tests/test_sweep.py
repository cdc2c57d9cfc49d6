"""`teamrl sweep`: a grid of runs as processes that skips finished runs, resumes broken ones,
refuses folders holding another config, survives failed runs and Ctrl-C, and ends with a
report. One real sweep (4 tiny runs) is shared by the first tests; the others fake run folders
or the launched process, so they train nothing."""

import contextlib
import io
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import yaml

from teamrl import runs

from teamrl.cli import sweep
from teamrl.cli import main

# 2 updates of 128 steps of the smallest programs (no evaluation: the reports use return_mean)
FAST = {"total_steps": 256, "num_envs": 4, "rollout_length": 32, "log_every": 1,
        "eval_every": 0, "epochs": 1, "minibatches": 1, "hidden_sizes": [8]}


def write_sweep(path, out, **fields):
    data = {"out": str(out), "algos": ["mappo", "ippo"], "envs": ["didactic/climbing"],
            "seeds": 2, "settings": dict(FAST), "report": {"metric": "return_mean"}, **fields}
    path.write_text(yaml.safe_dump(data))
    return path


def run_main(argv):
    """(exit code, stdout, stderr) of `teamrl ARGV` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def plan_of(plans, algo, seed, **point):
    return next(p for p in plans if p.algo == algo and p.seed == seed and p.point == point)


def snapshot(folder):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")
            if p.is_file() and "report" not in p.parts and p.name != ".sweep.lock"}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep of mappo, ippo x seeds 0, 1 on didactic/climbing (jobs=2) into a folder where an
    earlier sweep left mappo seed 1 interrupted after its first checkpoint (update 1 of 2:
    config.yaml asking for 256 steps, one metrics row, no curve.png)."""
    root = tmp_path_factory.mktemp("sweep")
    file = write_sweep(root / "sweep.yaml", root / "out")
    broken = plan_of(sweep.plan_runs(sweep.load_sweep(file)), "mappo", 1)
    half = sweep.RunPlan(**{**broken.__dict__, "overrides": {**broken.overrides,
                                                             "total_steps": "128"}})
    assert main(sweep.command(half) + ["progress=none"]) == 0
    runs.write_config(broken.run_dir, broken.config.to_dict())
    (broken.run_dir / "curve.png").unlink()
    first_row = (broken.run_dir / "metrics.csv").read_text().splitlines()[:2]
    start = time.monotonic()
    code, out, err = run_main(["sweep", str(file), "jobs=2"])
    return {"file": file, "out": root / "out", "code": code, "stdout": out, "stderr": err,
            "broken": broken, "first_row": first_row, "seconds": time.monotonic() - start}


def test_sweep_trains_all_runs_resumes_the_broken_one_and_reports(swept):
    assert swept["code"] == 0, swept["stderr"]
    assert "4 runs in" in swept["stdout"]
    assert "(0 finished, 1 to resume, 3 to train)" in swept["stdout"]
    plans = sweep.plan_runs(sweep.load_sweep(swept["file"]))
    assert sorted(p.name for p in plans) == [
        "ippo__didactic-climbing__seed0", "ippo__didactic-climbing__seed1",
        "mappo__didactic-climbing__seed0", "mappo__didactic-climbing__seed1"]
    assert {p.state for p in plans} == {"finished"}
    for p in plans:
        header = (swept["out"] / "logs" / f"{p.name}.log").read_text().splitlines()[0]
        verb = "resume" if p.name == swept["broken"].name else "train"
        assert f"teamrl {verb} " in header, header
        assert runs.read_config(p.run_dir)["run"]["seed"] == p.seed
    # resumed, not restarted: the first checkpoint's row is kept and the second appended
    broken = swept["broken"].run_dir
    assert (broken / "metrics.csv").read_text().splitlines()[:2] == swept["first_row"]
    assert [r["env_steps"] for r in runs.read_metrics(broken)] == [128, 256]
    report = swept["out"] / "report"
    assert {f.name for f in report.iterdir()} >= {"summary.md", "scores.csv", "aggregate.png"}
    assert len((report / "scores.csv").read_text().splitlines()) == 1 + 4


def test_running_the_sweep_again_skips_every_finished_run(swept):
    before = snapshot(swept["out"])
    code, out, err = run_main(["sweep", str(swept["file"]), "jobs=2"])
    assert code == 0, err
    assert "(4 finished, 0 to resume, 0 to train)" in out
    assert "train " not in out and "resume " not in out
    assert snapshot(swept["out"]) == before  # no file of a run or log touched


def test_dry_run_lists_states_and_a_conflicting_folder_stops_the_sweep(tmp_path):
    out = tmp_path / "out"
    file = write_sweep(tmp_path / "s.yaml", out, algos=["mappo"], seeds=[0, 1, 2, 3],
                       grid={"lr": [0.001, 0.003]})
    plans = sweep.plan_runs(sweep.load_sweep(file))
    assert len(plans) == 8 and {p.state for p in plans} == {"train"}

    def fake(plan, updates=None, curve=False, **config_changes):
        plan.run_dir.mkdir(parents=True)
        config = plan.config.to_dict()
        for key, value in config_changes.items():
            config["algo"][key] = value
        runs.write_config(plan.run_dir, config)
        if updates is not None:
            runs.save_checkpoint(plan.run_dir, "latest", {"w": np.zeros(2)},
                                 {"updates": updates})
        if curve:
            (plan.run_dir / "curve.png").write_bytes(b"png")

    states = {}
    for i, (point, seed, kwargs, state) in enumerate([
            ({"lr": 0.001}, 0, {"updates": 2, "curve": True}, "finished"),
            ({"lr": 0.001}, 1, {"updates": 1}, "resume"),
            ({"lr": 0.001}, 2, {"updates": 2}, "resume"),         # curve not drawn yet
            ({"lr": 0.001}, 3, {}, "train"),                      # no checkpoint, no results
            ({"lr": 0.003}, 0, {}, "train"),                      # no checkpoint, has results
            ({"lr": 0.003}, 1, {"updates": 1, "lr": 0.5}, "conflict"),
            ({"lr": 0.003}, 2, {"updates": 3}, "conflict")]):      # more updates than asked
        plan = plan_of(plans, "mappo", seed, **point)
        fake(plan, **kwargs)
        states[plan.name] = state
    results = plan_of(plans, "mappo", 0, lr=0.003).run_dir
    (results / "metrics.csv").write_text("seed,env_steps\n0,128\n")
    states["mappo__didactic-climbing__lr=0.003__seed3"] = "train"  # no folder

    code, stdout, stderr = run_main(["sweep", str(file), "dry_run=true"])
    assert code == 2
    listed = {line.split()[1]: line.split()[0] for line in stdout.splitlines()[1:]}
    assert listed == states
    assert "algo.lr: 0.5 in the folder, 0.003 requested" in stdout
    assert "holds 3 updates, more than the 2 of total_steps=256" in stdout
    assert "aside" in stdout and "will be cleared" in stdout
    assert len(stderr.strip().splitlines()) == 1
    assert "mappo__didactic-climbing__lr=0.003__seed1 holds a run with another config" in stderr
    assert "(and 1 more conflicting folders; see dry_run=true)" in stderr

    code, stdout, stderr = run_main(["sweep", str(file)])  # refuses before launching anything
    assert code == 2 and "another config" in stderr and not (out / "logs").exists()

    # a folder without a checkpoint: cleared when it holds nothing, else moved aside intact
    empty = plan_of(plans, "mappo", 3, lr=0.001)
    sweep.prepare_folder(empty, log=lambda line: None)
    assert not empty.run_dir.exists()
    moved = []
    sweep.prepare_folder(plan_of(plans, "mappo", 0, lr=0.003), log=moved.append)
    (aside,) = (out / "aside").iterdir()
    assert aside.name.startswith("mappo__didactic-climbing__lr=0.003__seed0.")
    assert (aside / "metrics.csv").read_text() == "seed,env_steps\n0,128\n"
    assert str(aside) in moved[0] and not results.exists()


def test_grid_points_get_a_report_each(tmp_path):
    file = write_sweep(tmp_path / "s.yaml", tmp_path / "out", grid={"lr": [0.001, 0.003]},
                       report={"metric": "return_mean", "resamples": 50})
    spec = sweep.load_sweep(file)
    plans = sweep.plan_runs(spec)
    for p in plans:  # fake finished runs: config.yaml and a metrics.csv
        p.run_dir.mkdir(parents=True)
        runs.write_config(p.run_dir, p.config.to_dict())
        (p.run_dir / "metrics.csv").write_text(
            f"seed,env_steps,return_mean\n{p.seed},128,{p.seed + p.point['lr']}\n")
    written = sweep.write_reports(spec, plans)
    folders = sorted(f.name for f, _ in written)
    assert folders == ["lr=0.001", "lr=0.003"]
    for folder, result in written:
        assert folder.parent == spec.out / "report"
        assert set(result["aggregate"]) == {"mappo", "ippo"}
        assert len((folder / "scores.csv").read_text().splitlines()) == 1 + 4


def test_a_grid_over_the_budget_gives_distinct_runs(tmp_path):
    settings = {k: v for k, v in FAST.items() if k != "total_steps"}
    file = write_sweep(tmp_path / "s.yaml", tmp_path / "out", algos=["ippo"], seeds=1,
                       settings=settings, grid={"total_steps": [256, 512]})
    plans = sweep.plan_runs(sweep.load_sweep(file))
    assert [p.name for p in plans] == ["ippo__didactic-climbing__total_steps=256__seed0",
                                       "ippo__didactic-climbing__total_steps=512__seed0"]
    assert [p.config.run.total_steps for p in plans] == [256, 512]
    file = write_sweep(tmp_path / "s.yaml", tmp_path / "out", algos=["ippo"], seeds=1,
                       settings=settings, grid={"total_steps": [256, 0]})
    code, _, stderr = run_main(["sweep", str(file)])
    assert code == 2 and "total_steps=0 is out of range; must be >= 1" in stderr


def test_a_failed_run_does_not_stop_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "LAUNCHER", (sys.executable, "-c",
                                            "import sys; print('boom'); sys.exit(3)"))
    file = write_sweep(tmp_path / "s.yaml", tmp_path / "out", algos=["ippo"])
    code, stdout, stderr = run_main(["sweep", str(file), "jobs=2"])
    assert code == 1
    assert "2 of 2 runs failed" in stderr
    for seed in (0, 1):
        log = tmp_path / "out" / "logs" / f"ippo__didactic-climbing__seed{seed}.log"
        assert f"(exit 3): log {log}" in stderr
        assert log.read_text().splitlines()[-1] == "boom"
    assert "FAILED (exit 3): boom" in stdout
    assert not (tmp_path / "out" / "report").exists()


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt, as in a fresh `teamrl` process, whatever handler an
    earlier test in the same xdist worker left behind (once, under heavy load, the Ctrl-C
    below did not interrupt the sweep; the cause is not known)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_running_runs(tmp_path, monkeypatch, sigint_raises):
    monkeypatch.setattr(sweep, "LAUNCHER", (
        sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"))
    started = []
    real_start = sweep._start

    def start(*args, **kwargs):
        running = real_start(*args, **kwargs)
        started.append(running)
        if len(started) == 2:  # both runs up: press Ctrl-C
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        return running

    monkeypatch.setattr(sweep, "_start", start)
    file = write_sweep(tmp_path / "s.yaml", tmp_path / "out", algos=["ippo"])
    t0 = time.monotonic()
    code, stdout, stderr = run_main(["sweep", str(file), "jobs=2"])
    assert code == 130 and time.monotonic() - t0 < 20
    assert "stopping 2 run(s)" in stdout and "interrupted" in stderr
    assert all(r.proc.returncode is not None for r in started)


@pytest.mark.parametrize("fields,needle", [
    ({"algo": "mappo"}, "unknown sweep key 'algo'; valid keys: out, algos, envs, seeds, "
                        "settings, grid, report"),
    ({"algos": ["mappo", "nosuch"]}, "unknown algorithm 'nosuch'; valid algorithms: a2po, "),
    ({"envs": ["mpe/nope"]}, "unknown env id 'mpe/nope'; did you mean 'mpe/simple'?"),
    ({"seeds": 0}, "seeds=0 is out of range"),
    ({"seeds": [0, "one"]}, "must be N >= 1 or a list of integers >= 0"),
    ({"settings": {"seed": 3}}, "settings: 'seed' is set by the sweep; use seeds:"),
    ({"settings": {"lrr": 1}}, "mappo on didactic/climbing: unknown key 'lrr'; did you mean 'lr'?"),
    ({"grid": {"lr": [0.001, -1]}}, "mappo on didactic/climbing lr=-1: lr=-1.0 is out of "
                                    "range; must be > 0.0"),
    ({"grid": {"lr": 0.001}}, "grid: lr=0.001 must be a non-empty list of values"),
    ({"grid": {"total_steps": [100]}}, "grid key 'total_steps' is also a setting"),
    ({"settings": {**FAST, "minibatches": 3}}, "minibatches=3 must divide"),
    ({"report": {"metrc": "x"}}, "unknown report key 'metrc'; valid keys: metric, resamples, "
                                 "seed, norm"),
    ({"report": {"norm": "missing.yaml"}}, "report: norm='missing.yaml' does not exist"),
])
def test_bad_sweep_file_is_one_line_exit_2_and_writes_nothing(tmp_path, fields, needle):
    file = write_sweep(tmp_path / "s.yaml", tmp_path / "out", **fields)
    code, stdout, stderr = run_main(["sweep", str(file)])
    assert code == 2
    assert stderr.startswith("teamrl: error: ") and len(stderr.strip().splitlines()) == 1
    assert needle in stderr, stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,argv,needle", [
    ("algos: [mappo\n", [], "not valid YAML at line 2"),
    ("- a list\n", [], "expected a mapping with keys out, algos"),
    ("algos: [mappo]\nenvs: [didactic/climbing]\nseeds: 1\n", [], "out is required"),
    ("out: x\nalgos: [mappo]\nenvs: [didactic/climbing]\nseeds: 1\n", ["jobs=0"],
     "jobs=0 is out of range; must be >= 1"),
    ("out: x\nalgos: [mappo]\nenvs: [didactic/climbing]\nseeds: 1\n", ["job=2"],
     "unknown sweep key 'job'; did you mean 'jobs'?"),
    ("out: x\nalgos: [mappo]\nenvs: [didactic/climbing]\nseeds: 1\n", ["qqqq=2"],
     "unknown sweep key 'qqqq'; valid keys: address, backend, dry_run, jobs"),
])
def test_bad_sweep_text_and_options(tmp_path, monkeypatch, text, argv, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(text)
    code, _, stderr = run_main(["sweep", "s.yaml", *argv])
    assert code == 2 and needle in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "x").exists()


def test_run_names_are_readable_safe_and_independent_of_key_order():
    point = {"lr": "3e-4", "hidden_sizes": [64, 64], "env_kwargs": {"N": 3}}
    name = sweep.run_name("mappo", "pettingzoo/mpe2.simple_spread_v3", point, 2)
    assert name == ("mappo__pettingzoo-mpe2.simple_spread_v3__env_kwargs=N-3__"
                    "hidden_sizes=64-64__lr=3e-4__seed2")
    assert sweep.run_name("mappo", "mpe/simple", dict(reversed(point.items())), 2) == \
        sweep.run_name("mappo", "mpe/simple", point, 2)
    long = sweep.run_name("mappo", "mpe/simple", {"x": "y" * 300}, 0)
    assert len(long) < 140 and long.endswith("__seed0")
    assert sweep.cpu_slots(1) == [None]


# ------------------------------------------------------------------------------- on Ray
def _final_state(run_dir):
    from flax import serialization

    payload = runs.checkpoint_files(run_dir, "latest")[0].read_bytes()
    return serialization.msgpack_restore(payload)["train_state"]


def _leaves(tree):
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in _leaves(tree[k])]
    return [np.asarray(tree)]


def test_ray_backend_runs_the_same_sweep_with_the_same_results(swept, tmp_path):
    """backend=ray on a local Ray instance: the sweep's four runs as Ray tasks, the same
    folders, logs and report, and bitwise the parameters of the local backend's runs (one of
    which was interrupted and resumed there); a second call skips them all."""
    file = write_sweep(tmp_path / "sweep.yaml", tmp_path / "out")
    code, out, err = run_main(["sweep", str(file), "jobs=2", "backend=ray"])
    assert code == 0, err
    assert "sweep on Ray: 1 node(s)" in out and "(0 finished, 0 to resume, 4 to train)" in out
    for local in sweep.plan_runs(sweep.load_sweep(swept["file"])):
        on_ray = tmp_path / "out" / local.run_dir.name
        assert (on_ray / "curve.png").is_file()
        assert "teamrl train " in (tmp_path / "out" / "logs" / f"{local.name}.log").read_text()
        for a, b in zip(_leaves(_final_state(local.run_dir)), _leaves(_final_state(on_ray))):
            np.testing.assert_array_equal(a, b)
    assert (tmp_path / "out" / "report" / "summary.md").is_file()
    code, out, _ = run_main(["sweep", str(file), "backend=ray"])
    assert code == 0 and "(4 finished, 0 to resume, 0 to train)" in out


def test_ray_backend_settings_are_checked(tmp_path):
    file = write_sweep(tmp_path / "sweep.yaml", tmp_path / "out")
    for argv, needle in ((["backend=slurm"], "backend='slurm' is not valid; valid choices: "
                                             "local, ray"),
                         (["address=1.2.3.4:6379"], "address='1.2.3.4:6379' needs backend=ray")):
        code, _, err = run_main(["sweep", str(file), *argv])
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_folder_written_before_teamrl_gained_a_setting_resumes(tmp_path):
    """A config.yaml without a key teamrl added since (here agent_id) is the same run when
    the sweep leaves that key at its default, and another run when the sweep sets it."""
    out = tmp_path / "out"
    for settings, state in (({}, "resume"), ({"agent_id": "true"}, "conflict")):
        file = write_sweep(tmp_path / "s.yaml", out, algos=["mappo"], seeds=[0],
                           settings={**FAST, **settings})
        (plan,) = sweep.plan_runs(sweep.load_sweep(file))
        if not plan.run_dir.exists():
            plan.run_dir.mkdir(parents=True)
            config = plan.config.to_dict()
            del config["run"]["agent_id"]  # as written before the key existed
            runs.write_config(plan.run_dir, config)
            runs.save_checkpoint(plan.run_dir, "latest", {"w": np.zeros(2)}, {"updates": 1})
        sweep.inspect_run(plan)
        assert plan.state == state, plan.detail
