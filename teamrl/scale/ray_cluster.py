"""Ray, the optional cluster backend (``pip install "teamrl[ray]"``): connecting to a cluster,
and a sweep's runs as Ray tasks.

``teamrl sweep FILE backend=ray [address=HOST:PORT]`` plans the runs exactly as the local
backend (same folders, same skip / resume / train decisions) and runs each one as a Ray task
that starts the same `teamrl train` / `teamrl resume` command in a process on whichever node
Ray picks, in the sweep's working directory (so the run folders must be on a file system the
nodes share; on one machine they are). Without ``address`` a local Ray instance is started
for the sweep.

The host-environment workers on Ray actors are in :mod:`teamrl.envs.host_ray`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from teamrl.config import ConfigError

RUN_CPUS = 1  # Ray CPUs each run reserves; its XLA threads are not limited by Ray


def require_ray():
    """The ``ray`` module, or a one-line ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray backend needs Ray: pip install \"teamrl[ray]\"") from None
    return ray


def connect(address: str | None):
    """Join the Ray cluster at ``address`` (HOST:PORT of its head, or "auto"), or start a local
    instance when ``address`` is empty; returns the ray module. Unreachable addresses are a
    one-line ConfigError."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A local instance's workers see the modules this process sees (a PettingZoo env
            # module next to the user's script, say); on a cluster, install them there. The
            # workers inherit the environment Ray's daemons start with (a runtime_env would
            # make Ray build a per-job environment, minutes on a small machine).
            saved = os.environ.get("PYTHONPATH")
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
            try:
                ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
            finally:
                if saved is None:
                    del os.environ["PYTHONPATH"]
                else:
                    os.environ["PYTHONPATH"] = saved
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"address={address!r}: cannot join the Ray cluster ({first[:200]}); "
                          "give the head node's HOST:PORT (`ray start --head` prints it)") \
            from None
    return ray


def _run_command(args: list, cwd: str, env: dict, log_path: str, grace_s: float) -> int:
    """Body of a run's Ray task: `teamrl ARGS` in a process of its own on this node (through
    the sweep's launcher, which ties the run's life to this task's), output appended to the
    run's log. A cancelled task (Ctrl-C of the sweep) stops the run as Ctrl-C stops
    `teamrl train`, keeping its latest checkpoint."""
    import signal

    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "teamrl.cli.launch", *args], cwd=cwd,
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            try:
                return proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()


class RayRun:
    """A run started as a Ray task, with the part of ``subprocess.Popen``'s interface the sweep
    uses (``poll``, ``returncode``, ``send_signal``, ``kill``, ``wait``)."""

    def __init__(self, args: list, env: dict, log_path, grace_s: float):
        ray = require_ray()
        task = ray.remote(num_cpus=RUN_CPUS, max_retries=0)(_run_command)
        self._ray = ray
        self.ref = task.remote(list(args), os.getcwd(), dict(env), str(log_path), grace_s)
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            ready, _ = self._ray.wait([self.ref], timeout=0)
            if ready:
                try:
                    self.returncode = int(self._ray.get(self.ref))
                except self._ray.exceptions.TaskCancelledError:
                    self.returncode = 130
                except self._ray.exceptions.RayError as err:  # the task's node or worker died
                    self.returncode = 1
                    self.error = str(err).strip().splitlines()[0]
        return self.returncode

    def send_signal(self, _signal) -> None:
        """Ctrl-C: cancel the task, which passes SIGINT on to its run."""
        self._ray.cancel(self.ref, force=False)

    def kill(self) -> None:
        self._ray.cancel(self.ref, force=True)

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.1)
        return self.returncode
