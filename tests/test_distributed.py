"""Data parallelism (teamrl/scale/distributed.py): two simulated CPU devices give the one-device
run's parameters (shared and sequential updates, vectorised seeds); two processes on loopback
form one jax.distributed run whose parameters stay identical on every process (checked at
the end of training), which evaluates and resumes in one process; bad settings are one-line
errors."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from teamrl.cli import main

HERE = pathlib.Path(__file__).resolve().parent
SHORT = ["mappo", "mpe/simple_spread", "total_steps=1024", "num_envs=4", "rollout_length=64",
         "log_every=2", "eval_every=2", "eval_episodes=4", "progress=lines"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_simulated_devices_give_the_one_device_parameters():
    """Same total batch and seed on one and on two devices (XLA's host device count flag, in
    a subprocess because it must be set before JAX starts): equal parameters up to the order
    of floating-point sums, for sequential HAPPO with two seeds vectorised (MAPPO's shared
    actor and a GRU MAPPO on SMAX: `python tests/distributed_cases.py`)."""
    out = subprocess.run([sys.executable, str(HERE / "distributed_cases.py"), "happo_seeds2"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["case"]: r for r in map(json.loads, out.stdout.splitlines())}
    for case in ("happo_seeds2",):
        assert rows[case]["devices"] == [1, 2]
        assert rows[case]["rel_diff"] < 1e-4, rows[case]
        assert rows[case]["note"] == "parameters identical on all 2 devices of 1 process(es)"
    assert rows["indivisible"]["error"].startswith(
        "num_envs=3 cannot be split over 2 devices"), rows["indivisible"]


def test_two_processes_on_loopback_form_one_run(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    multi = tmp_path / "multi"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "teamrl.cli", "train", *SHORT, f"out={multi}",
         f"coordinator=127.0.0.1:{port}", "num_processes=2", f"process_id={i}",
         "distributed_timeout=120"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env) for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    for log in logs:
        assert "parameters identical on all 2 devices of 2 process(es)" in log
    assert "[teamrl] steps 1,024/1,024" in logs[0] and "[teamrl] steps" not in logs[1]
    assert (multi / "metrics.csv").is_file() and (multi / "curve.png").is_file()
    # The multi-process run evaluates in one process (teamrl eval ignores the saved
    # placement), and its checkpoint resumes in one process, continuing the step count.
    from teamrl.train.evaluate import evaluate_run

    assert np.isfinite(evaluate_run(multi, episodes=2, deterministic=True)["return_mean"])
    assert main(["resume", str(multi), "total_steps=1536", "coordinator=", "num_processes=1",
                 "progress=none"]) == 0
    meta = json.loads((multi / "checkpoints" / "latest.json").read_text())["meta"]
    assert meta["env_steps"] == 1536
    # (That sharding gives the one-device parameters is the two-simulated-devices test; the
    # processes only change how the shards talk.)


@pytest.mark.parametrize("settings, message", [
    (["devices=3"], "devices=3 but this process has 1 cpu device(s); valid: 1..1"),
    (["coordinator=localhost", "num_processes=2"],
     "coordinator='localhost' is not of the form HOST:PORT"),
    (["num_processes=2"], "num_processes=2 needs coordinator=HOST:PORT"),
    (["coordinator=127.0.0.1:1234", "num_processes=2", "process_id=2"],
     "process_id=2 is out of range; valid: 0..1"),
])
def test_bad_distributed_settings_are_one_line_errors(tmp_path, capfd, settings, message):
    out = tmp_path / "run"
    assert main(["train", *SHORT, f"out={out}", *settings]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_host_envs_refuse_several_devices(tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["train", "happo", "mamujoco/HalfCheetah-2x3", "devices=2", f"out={out}"]) == 2
    err = capfd.readouterr().err.strip()
    assert "is stepped on the host, which trains on one device in one process" in err, err
    assert not out.exists()


def test_unreachable_coordinator_is_a_one_line_error(tmp_path):
    """A process whose coordinator never answers, and a process 0 whose peers never come,
    stop with one line and exit code 2 (XLA's own client would abort the process)."""
    port = free_port()
    for process_id, message in ((1, f"coordinator=127.0.0.1:{port} could not be reached "
                                    "within distributed_timeout=2 s from process 1"),
                                (0, "process 0 waited distributed_timeout=2 s and "
                                    "process(es) [1] of num_processes=2 did not join")):
        out = tmp_path / f"run{process_id}"
        proc = subprocess.run(
            [sys.executable, "-m", "teamrl.cli", "train", *SHORT, f"out={out}",
             f"coordinator=127.0.0.1:{port}", "num_processes=2", f"process_id={process_id}",
             "distributed_timeout=2"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        err = [line for line in proc.stderr.splitlines() if line.startswith("teamrl:")]
        assert len(err) == 1 and message in err[0], proc.stderr[-2000:]
        assert not out.exists()
