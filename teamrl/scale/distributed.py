"""Data parallelism over several devices and processes, with JAX's own machinery.

One run's environments are split over a one-dimensional device mesh (axis ``env``): every
array of the rollout carry, [S, E, ...] (seeds, environments), is sharded along E, and
everything else (parameters, optimiser and normaliser states, keys, counters) is replicated.
The chunk of updates is the same program as on one device, compiled with these shardings;
XLA's SPMD partitioner splits the environment steps and the acting over the devices and
inserts the collectives the update needs (the batch statistics and the gradient sums of the
update are reduced across devices, so the gradient every replica applies is the average over
the whole batch). The result is the one-device run with the same total batch and seed, up to
the order of floating-point sums, and the parameters stay identical on every device.

Several processes (hosts) join through ``jax.distributed.initialize``
(``coordinator=HOST:PORT num_processes=P process_id=I``); the mesh then spans every process's
devices and each process steps the environments of its own devices. Only process 0 writes
the run folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from teamrl.config import PLACEMENT_KEYS, ConfigError

ENV_AXIS = "env"


def initialize(run) -> None:
    """Join the multi-process run described by ``run`` (``coordinator``, ``num_processes``,
    ``process_id``, ``distributed_timeout``); nothing happens for a one-process run.

    Must run before JAX touches a device. Raises ConfigError with one line for bad settings
    and for a coordinator that cannot be reached in time."""
    if run.num_processes == 1 and not run.coordinator:
        return
    if not run.coordinator:
        raise ConfigError(f"num_processes={run.num_processes} needs coordinator=HOST:PORT "
                          "(the address of process 0)")
    host, sep, port = run.coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"coordinator={run.coordinator!r} is not of the form HOST:PORT")
    if run.process_id >= run.num_processes:
        raise ConfigError(f"process_id={run.process_id} is out of range; valid: 0.."
                          f"{run.num_processes - 1} (num_processes={run.num_processes})")
    if jax.distributed.is_initialized():
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise ConfigError("a multi-process run must join before JAX starts its backend: call "
                          "teamrl.scale.distributed.initialize(run) before building environments "
                          "(jaxmarl computes arrays on import); the teamrl CLI does this")
    _lobby(run, host, int(port))
    # CPU devices of different processes talk through gloo (XLA's default CPU client has no
    # cross-process collectives); accelerators use their own transport.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(run.coordinator, num_processes=run.num_processes,
                               process_id=run.process_id,
                               initialization_timeout=run.distributed_timeout)


def _lobby(run, host: str, port: int) -> None:
    """Gather every process on the coordinator's port before JAX's own rendezvous.

    XLA's distributed client aborts the whole process (SIGABRT, no Python exception) when the
    coordinator is unreachable or a process never joins, so teamrl first meets on the same
    port with plain sockets, where those cases are one-line errors: process 0 listens until
    processes 1..P-1 have announced themselves, then releases the port to JAX's service;
    the others connect (retrying until ``distributed_timeout``) and wait for the go."""
    import socket
    import time

    deadline = time.monotonic() + run.distributed_timeout
    where = f"coordinator={run.coordinator}"
    if run.process_id == 0:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind(("", port))
        except OSError as err:
            server.close()
            raise ConfigError(f"{where}: process 0 cannot listen on port {port} ({err.strerror}); "
                              "choose a free port") from None
        server.listen(run.num_processes)
        peers: dict[int, socket.socket] = {}
        try:
            while len(peers) < run.num_processes - 1:
                server.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    conn, _ = server.accept()
                except (socket.timeout, TimeoutError):
                    missing = sorted(set(range(1, run.num_processes)) - set(peers))
                    raise ConfigError(
                        f"{where}: process 0 waited distributed_timeout="
                        f"{run.distributed_timeout} s and process(es) {missing} of "
                        f"num_processes={run.num_processes} did not join; start each with "
                        f"coordinator={run.coordinator} num_processes={run.num_processes} "
                        "process_id=I") from None
                conn.settimeout(10)
                try:
                    words = conn.recv(64).decode(errors="replace").split()
                except OSError:
                    conn.close()
                    continue
                peer = int(words[1]) if len(words) == 3 and words[0] == "teamrl" \
                    and words[1].isdigit() else -1
                if words[2:] != [str(run.num_processes)] or not 0 < peer < run.num_processes \
                        or peer in peers:
                    reason = (f"process_id={peer} is taken or out of range, or num_processes "
                              f"differs from process 0's {run.num_processes}")
                    conn.sendall(f"no {reason}\n".encode())
                    conn.close()
                    continue
                peers[peer] = conn
            for conn in peers.values():
                conn.sendall(b"go\n")
        finally:
            for conn in peers.values():
                conn.close()
            server.close()
        return
    last = "connection refused"
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=2)
            break
        except OSError as err:
            last = err.strerror or str(err)
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"{where} could not be reached within distributed_timeout="
                    f"{run.distributed_timeout} s from process {run.process_id} ({last}); "
                    "start process 0 on that host and port first, or check the address") \
                    from None
            time.sleep(0.5)
    with conn:
        conn.sendall(f"teamrl {run.process_id} {run.num_processes}\n".encode())
        conn.settimeout(max(deadline - time.monotonic(), 1.0))
        try:
            answer = conn.recv(256).decode(errors="replace").strip()
        except OSError:
            answer = ""
    if answer != "go":
        detail = answer[3:] if answer.startswith("no ") else "no answer before the timeout"
        raise ConfigError(f"{where}: process 0 did not admit process {run.process_id} "
                          f"({detail})")


def is_writer() -> bool:
    """Whether this process writes the run folder (process 0)."""
    return jax.process_index() == 0


DISTRIBUTED_KEYS = PLACEMENT_KEYS[1:]  # all but ``devices``
# Settings that place a saved run on one device of one process, whatever it trained on
# (evaluation and rendering read checkpoints, which do not depend on the topology).
ONE_DEVICE = {"devices": "1", "coordinator": "", "num_processes": "1", "process_id": "0"}


def initialize_from_settings(settings: dict, config_file=None) -> None:
    """Join a multi-process run from ``key=value`` settings (over the ``run`` section of a
    saved config file or run folder), before anything imports an environment: jaxmarl
    computes arrays on import, which starts JAX's backend, after which no process can join."""
    import pathlib

    from teamrl.config import RunConfig, coerce, field_types, read_yaml, validate_section

    values = {}
    path = pathlib.Path(config_file) if config_file else None
    if path is not None and path.is_dir():
        path = path / "config.yaml"
    if path is not None and path.is_file():
        data = read_yaml(path) or {}  # one-line errors for a broken file
        saved = data.get("run") if isinstance(data, dict) else None
        values = {k: saved[k] for k in DISTRIBUTED_KEYS if isinstance(saved, dict) and k in saved}
    values.update({k: settings[k] for k in DISTRIBUTED_KEYS if k in settings})
    run = RunConfig()
    types = field_types(run)
    for key, raw in values.items():
        setattr(run, key, coerce(key, raw, types[key]))
    validate_section(run)
    initialize(run)


def writer_value(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (a collective with several processes), so that
    a decision of the writer (e.g. refusing an existing run folder) stops every process."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def device_count(run, host_env: bool) -> int:
    """Devices of this process that the run uses (validated). ``devices=0``: every local
    device in a multi-process run, else as many local devices as divide ``num_envs``; host
    environments train on one device in one process."""
    local = jax.local_device_count()
    kind = jax.local_devices()[0].platform
    processes = jax.process_count()
    if host_env:
        if run.devices > 1 or processes > 1:
            raise ConfigError(f"devices={run.devices} num_processes={processes}: {run.env_id!r} "
                              "is stepped on the host, which trains on one device in one "
                              "process; valid: devices=1 num_processes=1 (several devices need "
                              "a compiled env: mpe/*, smax/*, didactic/*, gymnax/*)")
        return 1
    if run.devices > local:
        raise ConfigError(f"devices={run.devices} but this process has {local} {kind} "
                          f"device(s); valid: 1..{local} (0: all that divide num_envs)")
    if processes > 1:
        if run.devices not in (0, local):
            raise ConfigError(f"devices={run.devices}: a multi-process run uses every local "
                              f"device ({local} here); valid: 0 or {local}")
        return local
    if run.devices == 0:
        return max(d for d in range(1, local + 1) if run.num_envs % d == 0)
    return run.devices


@dataclass
class Placement:
    """Where a run's arrays live: ``mesh`` None for the ordinary one-device run."""

    mesh: Mesh | None

    @property
    def size(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def runner_shardings(self, runner_shape):
        """Shardings for a Runner pytree of [S, ...] leaves: the rollout carry split along
        its environment axis (axis 1), everything else replicated."""
        env_split = NamedSharding(self.mesh, PartitionSpec(None, ENV_AXIS))
        rollout = jax.tree.map(lambda _: env_split, runner_shape.rollout)
        rest = jax.tree.map(lambda _: self.replicated, runner_shape.replace(rollout=()))
        return rest.replace(rollout=rollout)

    def jit(self, fn, runner_shape, extra_out: bool):
        """``jax.jit(fn)`` for fn(runner) -> runner (or (runner, extras)), with the runner's
        shardings on input and output and replicated extras."""
        if self.mesh is None:
            return jax.jit(fn)
        shardings = self.runner_shardings(runner_shape)
        out = (shardings, self.replicated) if extra_out else shardings
        return jax.jit(fn, in_shardings=(shardings,), out_shardings=out)

    def place(self, runner, runner_shape):
        """Put a host (numpy) runner onto the mesh with the runner's shardings (each process
        keeps only the pieces of its own devices)."""
        if self.mesh is None:
            return runner
        shardings = self.runner_shardings(runner_shape)

        def put(x, sharding):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree.map(put, runner, shardings)

    def host_copy(self, tree):
        """The whole of ``tree`` as numpy arrays on every process (a collective with several
        processes: every process must call it)."""
        if self.mesh is None or jax.process_count() == 1:
            return jax.tree.map(np.asarray, tree)
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))

    def check_replicas(self, tree) -> str:
        """Verify that every device of every process holds the same replicated ``tree``;
        returns a one-line confirmation, raises RuntimeError naming the first difference."""
        if self.mesh is None:
            return ""
        digest = hashlib.sha256()
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            shards = [np.asarray(s.data) for s in leaf.addressable_shards]
            for s in shards[1:]:
                if not np.array_equal(s, shards[0], equal_nan=True):
                    raise RuntimeError("replicas differ between local devices at "
                                       + jax.tree_util.keystr(path))
            digest.update(np.ascontiguousarray(shards[0]).tobytes())
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            mine = np.frombuffer(digest.digest(), np.uint32)
            every = np.asarray(multihost_utils.process_allgather(mine))
            if not (every == every[0]).all():
                raise RuntimeError("parameters differ between processes "
                                   f"{np.flatnonzero((every != every[0]).any(1)).tolist()} "
                                   "and 0")
        return (f"parameters identical on all {self.size} devices of "
                f"{jax.process_count()} process(es)")


def placement(run, host_env: bool = False) -> Placement:
    """The Placement of a run (validates ``devices`` against the machine and ``num_envs``)."""
    local = device_count(run, host_env)
    total = local * jax.process_count()
    if total == 1:
        return Placement(None)
    if run.num_envs % total:
        raise ConfigError(f"num_envs={run.num_envs} cannot be split over {total} devices "
                          f"({local} per process x {jax.process_count()} process(es)); "
                          f"valid: a multiple of {total}")
    devices = (jax.devices() if jax.process_count() > 1 else jax.local_devices()[:local])
    return Placement(Mesh(np.asarray(devices), (ENV_AXIS,)))
