"""Run folders that survive kills, bad checkpoints and each other (issue 28, items 1-7): a
process killed inside each step of a checkpoint write (``TEAMRL_FAULT``) or after a metrics row
resumes to the files of an uninterrupted run; broken checkpoints fall back or fail in one line;
a live run's folder is locked; overwrite=true removes only run folders."""

import os
import shutil
import subprocess
import sys

import pytest

from teamrl import runs
from teamrl.cli import main

# 6 updates of 128 steps, a row per update, `latest` every second row.
RUN = ["ippo", "didactic/climbing", "total_steps=768", "num_envs=8", "rollout_length=16",
       "log_every=1", "checkpoint_every=2", "progress=none"]
TIMING = ("wall_time", "steps_per_s")


def _rows(run_dir):
    """metrics.csv but its timing columns, NaN as None (NaN != NaN)."""
    return [{k: None if v != v else v for k, v in r.items() if k not in TIMING}
            for r in runs.read_metrics(run_dir)]


def _cli(*args, fault=None):
    env = {k: v for k, v in os.environ.items() if k != "TEAMRL_FAULT"}
    if fault:
        env["TEAMRL_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "teamrl.cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def _one_line_error(capfd):
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("teamrl: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *RUN, f"out={out}"]) == 0
    return out


@pytest.fixture
def finished(reference, tmp_path):
    """A copy of the uninterrupted run to damage."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    return out


# Each step of a checkpoint write (the 2nd and 3rd writes: best and latest both count), and a
# kill after a row logged past the last `latest` (row 3; latest was saved at row 2).
@pytest.mark.parametrize("fault", ["checkpoint:msgpack@2", "checkpoint:data@3",
                                   "checkpoint:sidecar@2", "checkpoint:commit@3",
                                   "metrics:row@3"])
def test_killed_run_resumes_to_the_uninterrupted_files(reference, tmp_path, fault):
    out = tmp_path / "run"
    killed = _cli("train", *RUN, f"out={out}", fault=fault)
    assert killed.returncode == 9, killed.stderr
    # Whatever instant it died at, a sound checkpoint pair is there.
    assert any(runs.checkpoint_exists(out, n) for n in ("latest", "best"))
    for name in ("latest", "best"):
        if (out / "checkpoints" / f"{name}.json").exists():
            runs.read_checkpoint(out, name)
    assert main(["resume", str(out)]) == 0
    assert _rows(out) == _rows(reference)
    assert (out / "metrics.csv").read_text().count("seed,") == 1
    # Leftovers of the killed write are gone: one msgpack per sidecar, no temp files.
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == sorted([runs.checkpoint_files(out, "latest")[0].name, "latest.json",
                            runs.checkpoint_files(out, "best")[0].name, "best.json"])
    assert not list(out.glob(".*.tmp"))
    for name in ("latest", "best"):
        assert runs.read_checkpoint(out, name)[1] == runs.read_checkpoint(reference, name)[1] \
            | {"wall_time": runs.read_checkpoint(out, name)[1]["wall_time"]}


def test_old_layout_checkpoint_still_loads(finished):
    """A run saved before versioned msgpack names (checkpoints/latest.msgpack) resumes."""
    import json

    folder = finished / "checkpoints"
    for name in ("latest", "best"):
        data, sidecar_path = runs.checkpoint_files(finished, name)
        data.rename(folder / f"{name}.msgpack")
        sidecar = json.loads(sidecar_path.read_text())
        sidecar["msgpack_file"] = f"{name}.msgpack"
        sidecar_path.write_text(json.dumps(sidecar))
    assert runs.read_checkpoint(finished, "latest")[1]["updates"] == 6
    runs.save_checkpoint(finished, "latest", {"w": 1}, {"updates": 0})
    assert not (folder / "latest.msgpack").exists()  # superseded, removed


# ------------------------------------------------------------------------- fallback
def test_resume_falls_back_to_best_and_eval_to_latest(finished, capfd):
    latest, _ = runs.checkpoint_files(finished, "latest")
    latest.write_bytes(latest.read_bytes()[:-3])  # torn: sha256 mismatch
    best_updates = runs.read_checkpoint(finished, "best")[1]["updates"]
    assert main(["resume", str(finished), "total_steps=1024"]) == 0
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'latest' is unusable" in err[0]
    assert f"using 'best' (update {best_updates})" in err[0]
    assert [r["updates"] for r in runs.read_metrics(finished)] == list(range(1, 9))

    best, _ = runs.checkpoint_files(finished, "best")
    best.unlink()
    assert main(["eval", str(finished), "episodes=2"]) == 0
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'best' is unusable" in err[0] and "using 'latest'" in err[0]


def test_no_usable_checkpoint_is_one_line_saying_what_to_do(finished, capfd):
    for name in ("latest", "best"):
        runs.checkpoint_files(finished, name)[0].write_bytes(b"junk")
    config = (finished / "config.yaml").read_bytes()
    assert main(["resume", str(finished)]) == 2
    line = _one_line_error(capfd)
    assert "no usable checkpoint" in line and "teamrl train --config" in line
    assert (finished / "config.yaml").read_bytes() == config
    assert main(["eval", str(finished)]) == 2
    assert "no usable checkpoint" in _one_line_error(capfd)
    shutil.rmtree(finished / "checkpoints")
    assert main(["resume", str(finished)]) == 2
    assert "has no checkpoint" in _one_line_error(capfd)


def test_divergence_before_any_checkpoint_names_none(tmp_path, capfd, monkeypatch):
    import jax.numpy as jnp

    from teamrl import algos
    from teamrl.algos.ippo import IPPO

    class Exploding(IPPO):
        def update(self, ts, batch, key):
            ts, metrics = super().update(ts, batch, key)
            return ts, {**metrics, "actor_loss": jnp.nan * metrics["actor_loss"]}

    monkeypatch.setitem(algos.ALGORITHMS, "exploding", Exploding)
    out = tmp_path / "run"
    assert main(["train", "exploding", *RUN[1:], f"out={out}"]) == 1
    err = capfd.readouterr().err
    assert "non-finite actor_loss at update 1" in err
    assert "No checkpoint was written" in err and "last good checkpoint" not in err
    assert not any(runs.checkpoint_exists(out, n) for n in ("latest", "best"))


# ----------------------------------------------------------------------- validation
@pytest.mark.parametrize("key,old,new,named", [
    ("algo", "ippo", "mappo", "run.algo"),
    ("env_id", "didactic/climbing", "didactic/penalty", "run.env_id"),  # equal shapes
    ("hidden_sizes", None, "[8]", "network.hidden_sizes")])
def test_checkpoint_of_another_config_is_refused_in_one_line(finished, capfd, key, old, new,
                                                             named):
    import yaml

    config = yaml.safe_load((finished / "config.yaml").read_text())
    section = next(s for s, values in config.items() if key in values)
    config[section][key] = yaml.safe_load(new)
    (finished / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = (finished / "config.yaml").read_bytes()
    assert main(["resume", str(finished), "total_steps=1536"]) == 2
    line = _one_line_error(capfd)
    assert "another configuration" in line and named in line, line
    assert (finished / "config.yaml").read_bytes() == before


@pytest.mark.parametrize("edit,message", [({"updates": 99, "env_steps": 99 * 128},
                                           "above its run's 6 updates"),
                                          ({"updates": "6"}, "is not a whole number"),
                                          ({"env_steps": 5}, "env_steps=5")])
def test_edited_counters_are_refused_in_one_line(finished, capfd, edit, message):
    import json

    for name in ("latest", "best"):
        path = runs.checkpoint_files(finished, name)[1]
        sidecar = json.loads(path.read_text())
        sidecar["meta"].update(edit)
        path.write_text(json.dumps(sidecar))
    assert main(["resume", str(finished), "total_steps=1536"]) == 2
    line = _one_line_error(capfd)
    assert "inconsistent counters" in line and message in line, line


# ---------------------------------------------------------------- extending a run
def test_resume_not_beyond_the_steps_done_is_refused(finished, capfd):
    before = (finished / "config.yaml").read_bytes()
    for total in ("768", "512"):
        assert main(["resume", str(finished), f"total_steps={total}"]) == 2
        line = _one_line_error(capfd)
        assert "is not above the 6 updates (768 env steps)" in line
        assert "total_steps=896 or more" in line
    assert main(["resume", str(finished)]) == 2
    _one_line_error(capfd)
    assert (finished / "config.yaml").read_bytes() == before


def test_extending_keeps_schedules_over_the_original_horizon(finished):
    from teamrl.train.presets import config_from_run_dir
    from teamrl.train import make_trainer, total_updates, with_schedule_horizon

    longer = config_from_run_dir(finished, {"total_steps": "1536"})
    built = with_schedule_horizon(longer, finished)
    assert total_updates(built.run) == 6 and total_updates(longer.run) == 12
    assert runs.read_checkpoint(finished, "latest")[1]["schedule_updates"] == 6
    assert with_schedule_horizon(config_from_run_dir(finished, {}), finished).run.total_steps \
        == 768
    assert make_trainer(built).algo is not None  # algorithms take the horizon of `built`


def test_extended_run_logs_rows_after_the_original_ones(finished):
    assert main(["resume", str(finished), "total_steps=1024"]) == 0
    assert [r["updates"] for r in runs.read_metrics(finished)] == list(range(1, 9))
    meta = runs.read_checkpoint(finished, "latest")[1]
    assert meta["updates"] == 8 and meta["schedule_updates"] == 6 and meta["total_updates"] == 8


# --------------------------------------------------------------------------- locking
def test_live_run_folder_is_locked_against_resume_overwrite_and_sweep(finished, capfd,
                                                                      tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from teamrl import runs; "
         f"runs.RunLock({str(finished)!r}).acquire(); print('held', flush=True); "
         "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert runs.lock_holder(finished) == holder.pid
        assert main(["resume", str(finished), "total_steps=1024"]) == 2
        assert f"in use by process {holder.pid}" in _one_line_error(capfd)
        assert main(["train", *RUN, f"out={finished}", "overwrite=true"]) == 2
        assert f"in use by process {holder.pid}" in _one_line_error(capfd)
        assert (finished / "metrics.csv").is_file()

        from teamrl.cli import sweep

        plan = sweep.RunPlan(**{**_a_plan(tmp_path).__dict__, "run_dir": finished})
        sweep.inspect_run(plan)
        assert plan.state == "conflict" and f"process {holder.pid}" in plan.detail
    finally:
        holder.kill()  # kill -9: the OS drops the lock with the process
        holder.wait()
    assert runs.lock_holder(finished) is None
    assert main(["resume", str(finished), "total_steps=1024"]) == 0


def _a_plan(tmp_path):
    from teamrl.cli import sweep

    file = tmp_path / "s.yaml"
    file.write_text(f"out: {tmp_path / 'sw'}\nalgos: [ippo]\nenvs: [didactic/climbing]\n"
                    "seeds: 1\nsettings: {total_steps: 768}\n")
    return sweep.plan_runs(sweep.load_sweep(file))[0]


# ------------------------------------------------------------------------ overwrite
def test_overwrite_removes_only_run_folders(tmp_path, capfd):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    (folder / "metrics.csv").write_text("mine")
    assert main(["train", *RUN, f"out={folder}", "overwrite=true"]) == 2
    assert "not a teamrl run folder" in _one_line_error(capfd)
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.csv", "thesis.tex"]

    file = tmp_path / "notes.txt"
    file.write_text("keep")
    assert main(["train", *RUN, f"out={file}", "overwrite=true"]) == 2
    assert str(file) in _one_line_error(capfd)
    assert file.read_text() == "keep"


def test_overwrite_replaces_a_run_folder(finished):
    (finished / "eval_best_det.json").write_text("{}")
    assert runs.is_run_folder(finished)
    runs.prepare_run_dir(finished, overwrite=True)
    assert [p.name for p in finished.iterdir()] == [runs.LOCK_FILE]
