"""Faults of host-stepped environments: a hung worker is detected (``step_timeout``) and stops
training cleanly with its checkpoint kept, Ctrl-C ends a run waiting on a hung worker, workers
die with their learner, and an env failing during in-training evaluation stops training as
one failing in training does. Waits are bounded; nothing asserts how fast anything is."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_host_env import _host_config, _host_env

from teamrl.envs.host_env import HostEnvError

TESTS = pathlib.Path(__file__).parent
ROOT = TESTS.parent


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie awaiting its reaper counts as ended)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" in status


def _poll(condition, polls: int = 600, every: float = 0.5) -> bool:
    """``condition()`` became true within ``polls`` polls (a bound, not a speed)."""
    for _ in range(polls):
        if condition():
            return True
        time.sleep(every)
    return condition()


def _hang_pid(path: pathlib.Path) -> int | None:
    return int(path.read_text()) if path.exists() else None


def _env_subprocess():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")])}


# ------------------------------------------------------------------------- hung workers
def test_hung_worker_is_reported_and_killed(tmp_path):
    """The fixture's hung step also ignores SIGTERM: the workers are SIGKILLed."""
    # Timeouts well above a step's time on a loaded machine: only a real hang may trip them.
    team = _host_env("pettingzoo/host_fixtures", step_timeout=20.0,
                     env_kwargs={"hang_at": 3, "hang_file": str(tmp_path / "hung")})
    vec = team.vector(2, 2)
    vec.reset([0, 1])
    pids = vec.pids
    with pytest.raises(HostEnvError, match=r"env worker \d \(pid \d+, envs (\d)...\1\) did "
                                           r"not answer within 20 s \(step_timeout=20\)"):
        for _ in range(3):
            vec.step(np.zeros((2, 3), np.int32))
    assert vec.closed and _hang_pid(tmp_path / "hung") in pids
    assert all(_gone(pid) for pid in pids)


def test_hung_worker_stops_training_with_intact_checkpoint(tmp_path, monkeypatch):
    from teamrl import runs
    from teamrl.core.rollout import HostCollector
    from teamrl.train import TrainingStopped, make_trainer, train

    pids = []
    original = HostCollector.collect

    def collect(self, *args, **kwargs):
        pids.extend(p for p in self.vec.pids if p not in pids)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HostCollector, "collect", collect)
    # Each env steps 20 times per update: the 45th step hangs in update 3.
    config = _host_config(tmp_path, algo="mappo", env_id="pettingzoo/host_fixtures",
                          workers=1, total_steps=400, step_timeout=20,
                          env_kwargs={"hang_at": 45, "hang_file": str(tmp_path / "hung")})
    with pytest.raises(TrainingStopped, match=r"did not answer within 20 s(.|\n)*training "
                                              r"stopped at update 2(.|\n)*\(update 2\)"):
        train(config)
    assert _hang_pid(tmp_path / "hung") in pids and all(_gone(p) for p in pids)
    config.env.env_kwargs = {}
    trainer = make_trainer(config)
    try:
        _, meta = runs.load_checkpoint(tmp_path / "run", "latest", trainer.init())
    finally:
        trainer.close()
    assert meta["updates"] == 2


def _start_hung_run(tmp_path, *cli_settings):
    """``teamrl train`` in its own session (as a shell starts it), hanging in update 2."""
    hang_file = tmp_path / "hung"
    command = [sys.executable, "-m", "teamrl.cli", "train", "mappo", "pettingzoo/host_fixtures",
               "num_envs=2", "rollout_length=10", "total_steps=200", "eval_every=0",
               "progress=none", "hidden_sizes=[8]", "workers=1", "step_timeout=3600",
               f"out={tmp_path / 'run'}", f"env_kwargs={{hang_at: 15, hang_file: {hang_file}}}",
               *cli_settings]
    proc = subprocess.Popen(command, env=_env_subprocess(), cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    if not _poll(lambda: hang_file.exists() or proc.poll() is not None):
        pytest.fail("the run never reached its hang")
    assert proc.poll() is None, proc.communicate()
    return proc, _hang_pid(hang_file)


def test_ctrl_c_ends_a_run_waiting_on_a_hung_worker(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while the learner waits on
    a worker that hangs and ignores SIGTERM: the process exits 130, and so does the worker."""
    proc, worker = _start_hung_run(tmp_path)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)  # generous: only "it ends" is asserted
        assert proc.returncode == 130, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
        assert _poll(lambda: _gone(worker), polls=100)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def test_workers_die_with_their_learner(tmp_path):
    """A learner killed outright (SIGKILL: no cleanup) takes its hung worker with it."""
    proc, worker = _start_hung_run(tmp_path)
    try:
        proc.kill()
        proc.communicate(timeout=120)
        assert _poll(lambda: _gone(worker), polls=100)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        if not _gone(worker):
            os.kill(worker, signal.SIGKILL)


# ------------------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("workers", [0, 1])
def test_eval_env_error_stops_training_cleanly(tmp_path, workers):
    """The env raises only in the evaluation envs (from the 3rd step): training stops with
    TrainingStopped at the first evaluation (update 2), naming the checkpoint of update 1."""
    from teamrl.train import TrainingStopped, train

    config = _host_config(tmp_path, algo="mappo", env_id="pettingzoo/host_fixtures",
                          workers=workers, total_steps=400, eval_every=2, eval_episodes=2,
                          env_kwargs={"eval_crash_at": 3})
    with pytest.raises(TrainingStopped, match=r"relay eval env exploded on purpose(.|\n)*"
                                              r"training stopped at update 2, in its "
                                              r"evaluation(.|\n)*'latest' in .*\(update 1\)"):
        train(config)


def test_eval_env_error_from_the_cli_is_a_clean_stop(tmp_path):
    command = [sys.executable, "-m", "teamrl.cli", "train", "mappo", "pettingzoo/host_fixtures",
               "num_envs=2", "rollout_length=10", "total_steps=100", "eval_every=1",
               "eval_episodes=1", "progress=none", "hidden_sizes=[8]", "workers=1",
               f"out={tmp_path / 'run'}", "env_kwargs={eval_crash_at: 2}"]
    done = subprocess.run(command, env=_env_subprocess(), cwd=tmp_path, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 1, done.stderr
    assert "relay eval env exploded on purpose" in done.stderr
    assert "training stopped at update 1, in its evaluation. No checkpoint was written" \
        in done.stderr
