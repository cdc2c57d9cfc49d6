"""Run folder, metrics, checkpoints, plots and progress reporting."""

import io
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teamrl import runs
from teamrl.analysis.plots import plot_learning_curve
from teamrl.train.progress import ProgressReporter

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- run folder

def test_prepare_run_dir_creates_and_refuses_nonempty(tmp_path):
    run_dir = runs.prepare_run_dir(tmp_path / "a" / "run", overwrite=False)
    assert run_dir.is_dir()
    # An existing but empty folder is fine.
    assert runs.prepare_run_dir(run_dir, overwrite=False) == run_dir

    (run_dir / "metrics.csv").write_text("old")
    with pytest.raises(runs.RunExistsError) as err:
        runs.prepare_run_dir(run_dir, overwrite=False)
    assert str(err.value) == (
        f"run folder '{run_dir}' already exists; pass overwrite=true to replace it or choose another out=")
    assert (run_dir / "metrics.csv").read_text() == "old"  # untouched

    runs.prepare_run_dir(run_dir, overwrite=True)
    assert run_dir.is_dir() and not any(run_dir.iterdir())


def test_config_roundtrip_keeps_order(tmp_path):
    cfg = {"env": "mpe", "algo": {"name": "happo", "lr": 3e-4}, "seeds": [0, 1], "a_first": True}
    runs.write_config(tmp_path, cfg)
    assert runs.read_config(tmp_path) == cfg
    text = (tmp_path / "config.yaml").read_text()
    assert text.index("env") < text.index("algo") < text.index("a_first")
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


# ------------------------------------------------------------------- metrics

def test_metrics_resume_keeps_header_and_appends(tmp_path):
    w = runs.MetricsWriter(tmp_path, resume=False)
    w.write([{"seed": 0, "env_steps": 100, "return_mean": np.float32(-1.5), "loss": jnp.float32(0.25)},
             {"seed": 1, "env_steps": 100, "return_mean": float("nan"), "loss": np.float64("inf")}])
    w.close()

    w = runs.MetricsWriter(tmp_path, resume=True)
    # Different key order, a missing key and an extra key.
    w.write([{"env_steps": jnp.int32(200), "seed": np.int64(0), "return_mean": np.float64(2.5), "extra": 9.0}])
    w.close()

    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "seed,env_steps,return_mean,loss"
    assert sum(line.startswith("seed") for line in lines) == 1
    assert lines[1:] == ["0,100,-1.5,0.25", "1,100,nan,inf", "0,200,2.5,"]

    rows = runs.read_metrics(tmp_path)
    assert len(rows) == 3
    assert rows[0] == {"seed": 0.0, "env_steps": 100.0, "return_mean": -1.5, "loss": 0.25}
    assert math.isnan(rows[1]["return_mean"]) and rows[1]["loss"] == math.inf
    assert math.isnan(rows[2]["loss"])


def test_metrics_resume_drops_torn_last_line(tmp_path):
    (tmp_path / "metrics.csv").write_text("seed,env_steps,return_mean\n0,100,1.0\n0,20")
    with runs.MetricsWriter(tmp_path, resume=True) as w:
        w.write([{"seed": 0, "env_steps": 200, "return_mean": 2.0}])
    assert (tmp_path / "metrics.csv").read_text() == "seed,env_steps,return_mean\n0,100,1.0\n0,200,2.0\n"


def test_tensorboard_event_files_per_seed(tmp_path):
    with runs.MetricsWriter(tmp_path, resume=False) as w:
        w.write([{"seed": s, "env_steps": 10, "return_mean": 1.0, "algo": "happo"} for s in (0, 1)])
    for s in (0, 1):
        events = list((tmp_path / "tb" / f"seed_{s}").glob("events.out.tfevents.*"))
        assert events and events[0].stat().st_size > 0


# --------------------------------------------------------------- checkpoints

class TrainState(NamedTuple):
    params: dict
    step: int
    key: jax.Array


def _state(seed):
    key = jax.random.PRNGKey(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "actor": {"w": jax.random.normal(k1, (4, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)},
        "critic": {"w": np.asarray(jax.random.normal(k2, (5,), jnp.float32))},
    }
    return TrainState(params=params, step=seed * 10 + 7, key=k3)


def test_checkpoint_roundtrip_is_bitwise(tmp_path):
    state = _state(1)
    meta = {"env_steps": np.int64(12800), "updates": 3, "best_return": -4.5}
    runs.save_checkpoint(tmp_path, "latest", state, meta)
    assert runs.checkpoint_exists(tmp_path, "latest")
    assert not runs.checkpoint_exists(tmp_path, "best")

    loaded, loaded_meta = runs.load_checkpoint(tmp_path, "latest", _state(2))
    assert isinstance(loaded, TrainState)
    assert loaded_meta == {"env_steps": 12800, "updates": 3, "best_return": -4.5}
    assert loaded.step == state.step
    key = np.asarray(loaded.key)
    assert key.dtype == np.uint32 and np.array_equal(key, np.asarray(state.key))
    for path in (("actor", "w"), ("actor", "b"), ("critic", "w")):
        a = np.asarray(state.params[path[0]][path[1]])
        b = np.asarray(loaded.params[path[0]][path[1]])
        assert b.dtype == np.float32 and a.tobytes() == b.tobytes()
    # The restored key must still work as a key.
    assert np.array_equal(jax.random.split(jnp.asarray(key)), jax.random.split(state.key))


def test_checkpoint_leaves_no_temp_files(tmp_path):
    for i in range(3):
        runs.save_checkpoint(tmp_path, "latest", _state(i), {"i": i})
    runs.save_checkpoint(tmp_path, "best", _state(0), {"i": 0})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [runs.checkpoint_files(tmp_path, "best")[0].name, "best.json",
                     runs.checkpoint_files(tmp_path, "latest")[0].name, "latest.json"]
    assert names[0].startswith("best-") and names[2].startswith("latest-")
    assert runs.load_checkpoint(tmp_path, "latest", _state(0))[1] == {"i": 2}


def test_checkpoint_corruption_and_mismatch_detected(tmp_path):
    ckpt = tmp_path / "checkpoints"
    runs.save_checkpoint(tmp_path, "latest", _state(1), {"step": 1})
    latest = runs.checkpoint_files(tmp_path, "latest")[0]
    data = bytearray(latest.read_bytes())
    data[-1] ^= 0xFF
    latest.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt or mismatched"):
        runs.load_checkpoint(tmp_path, "latest", _state(0))

    # A msgpack from another save paired with a stale json.
    runs.save_checkpoint(tmp_path, "latest", _state(1), {"step": 1})
    runs.save_checkpoint(tmp_path, "best", _state(2), {"step": 2})
    runs.checkpoint_files(tmp_path, "latest")[0].write_bytes(
        runs.checkpoint_files(tmp_path, "best")[0].read_bytes())
    with pytest.raises(ValueError, match="corrupt or mismatched"):
        runs.load_checkpoint(tmp_path, "latest", _state(0))

    (ckpt / "best.json").write_text('{"meta": {}}')
    with pytest.raises(ValueError, match="msgpack_sha256"):
        runs.load_checkpoint(tmp_path, "best", _state(0))


# --------------------------------------------------------------------- plots

def _write_curve(run_dir, seeds, n):
    with runs.MetricsWriter(run_dir, resume=False) as w:
        for i in range(n):
            w.write([{"seed": s, "env_steps": (i + 1) * 100, "return_mean": np.float64(-10.0 + i + s),
                      "steps_per_s": 1000.0} for s in seeds])


@pytest.mark.parametrize("seeds,n", [((0,), 1), ((0, 1, 2), 4)])
def test_plot_learning_curve_writes_png(tmp_path, seeds, n):
    _write_curve(tmp_path, seeds, n)
    assert all(isinstance(r["return_mean"], float) for r in runs.read_metrics(tmp_path))
    out = plot_learning_curve(tmp_path / "metrics.csv", tmp_path / "curve.png")
    assert out == tmp_path / "curve.png"
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_skips_empty_and_nan(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "seed,env_steps,return_mean\n0,100,\n0,200,nan\n0,300,1.5\n1,300,2.5\n")
    out = plot_learning_curve(tmp_path / "metrics.csv", tmp_path / "c.png", title="t")
    assert out.read_bytes()[:8] == PNG_MAGIC


# ------------------------------------------------------------------ progress

def test_progress_plain_lines(capsys):
    with ProgressReporter(total_steps=100_000, start_steps=0) as p:
        p.update(12_800, {"return_mean": -95.314, "steps_per_s": 45_120.0})
        p.log("saved checkpoint")
    out = capsys.readouterr().out.splitlines()
    assert out == ["[teamrl] steps 12,800/100,000 (12.8%)  sps 45,120  return -95.31  eta 0:00:02",
                   "saved checkpoint"]


def test_progress_disabled_is_silent(capsys):
    with ProgressReporter(total_steps=10, enabled=False) as p:
        p.update(5, {"return_mean": 1.0, "steps_per_s": 1.0})
    assert capsys.readouterr().out == ""


def test_progress_rich_bar_on_terminal():
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with ProgressReporter(total_steps=1000, start_steps=100, console=console) as p:
        p.update(500, {"return_mean": 3.14159, "steps_per_s": 250.0})
        p.log("[teamrl] hello")
    text = buf.getvalue()
    assert "return 3.14" in text and "eta 0:00:02" in text and "[teamrl] hello" in text


# ------------------------------------------------- resume safety (issue 28, items 1-7)

def test_metrics_resume_drops_rows_past_the_checkpoint(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "seed,updates,return_mean\n0,1,1.0\n1,1,1.5\n0,2,2.0\n1,2,2.5\n0,3,3.0\n1,3,3.5\n")
    with runs.MetricsWriter(tmp_path, resume=True, keep_updates=2, keep_steps=256) as w:
        w.write([{"seed": 0, "updates": 3, "return_mean": 9.0}])
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1:] == [
        "0,1,1.0", "1,1,1.5", "0,2,2.0", "1,2,2.5", "0,3,9.0"]


def test_fallback_notes_the_broken_checkpoint(tmp_path):
    runs.save_checkpoint(tmp_path, "latest", _state(1), {"updates": 4})
    runs.save_checkpoint(tmp_path, "best", _state(2), {"updates": 2})
    runs.checkpoint_files(tmp_path, "latest")[0].write_bytes(b"torn")
    notes = []
    name, tree, meta = runs.load_with_fallback(tmp_path, _state(0), note=notes.append)
    assert name == "best" and meta == {"updates": 2} and tree.step == _state(2).step
    assert len(notes) == 1 and "'latest' is unusable" in notes[0] and "(update 2)" in notes[0]
    runs.checkpoint_files(tmp_path, "best")[0].write_bytes(b"torn")
    with pytest.raises(runs.CheckpointError, match="no usable checkpoint.*; do this"):
        runs.load_with_fallback(tmp_path, _state(0), what_to_do="do this")


def test_clean_checkpoints_removes_leftovers_only(tmp_path):
    runs.save_checkpoint(tmp_path, "latest", _state(1), {"updates": 1})
    folder = tmp_path / "checkpoints"
    keep = runs.checkpoint_files(tmp_path, "latest")[0]
    (folder / "latest-0123456789abcdef.msgpack").write_bytes(b"superseded")
    (folder / ".latest.json.x.tmp").write_bytes(b"{")
    (tmp_path / ".metrics.csv.y.tmp").write_bytes(b"")
    runs.clean_checkpoints(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted([keep.name, "latest.json"])
    assert not list(tmp_path.glob(".*.tmp"))


def test_run_lock_is_exclusive_and_names_its_holder(tmp_path):
    import os

    first = runs.RunLock(tmp_path).acquire()
    assert runs.lock_holder(tmp_path) == os.getpid()
    with pytest.raises(runs.RunBusyError, match=f"in use by process {os.getpid()}"):
        runs.RunLock(tmp_path).acquire()
    first.release()
    assert runs.lock_holder(tmp_path) is None
    runs.RunLock(tmp_path).acquire().release()


def test_is_run_folder(tmp_path):
    assert not runs.is_run_folder(tmp_path)  # empty: nothing of a run
    (tmp_path / "config.yaml").write_text("run: {}")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "eval_best_det.json").write_text("{}")
    assert runs.is_run_folder(tmp_path)
    (tmp_path / "checkpoints" / "notes.txt").write_text("mine")
    assert not runs.is_run_folder(tmp_path)
    (tmp_path / "checkpoints" / "notes.txt").unlink()
    (tmp_path / "thesis.tex").write_text("")
    assert not runs.is_run_folder(tmp_path)
