"""The XLA:CPU hang of jaxlib 0.10.x on a 2-core machine (issue 29 item 4; docs/installation.md):
run a workload many times, each attempt in a fresh process under a time limit; when an attempt
runs out of time, tell a hang from a slow run (threads' CPU times, 10 s apart) and dump the
process's Python and native threads (``py-spy dump --native`` if py-spy is installed, ``gdb``
if present; faulthandler's Python stacks are in the attempt's log) before killing it.

    python benchmarks/jax_deadlock_repro.py --mode qr --attempts 5 --timeout 120   # the cause
    python benchmarks/jax_deadlock_repro.py --mode bare --attempts 20 --timeout 120
    python benchmarks/jax_deadlock_repro.py --mode compiled --attempts 10
    python benchmarks/jax_deadlock_repro.py --mode devices2 --attempts 10
    python benchmarks/jax_deadlock_repro.py --mode host --attempts 5
    python benchmarks/jax_deadlock_repro.py --mode bare --xla-flags=--xla_cpu_multi_thread_eigen=false

Workloads (``--mode``), each many short executions ended by ``block_until_ready`` (a hang
that strikes by chance gets one chance per execution):

* ``qr``: the minimal reproducer of the hang found (jaxlib 0.10.2, 2 cores): one jitted
  function with four independent batched QR factorisations (``jnp.linalg.qr`` of [16, 64, 64]
  arrays; teamrl's orthogonal initialisers, vmapped over agents and seeds, are such QRs).
  jaxlib 0.10's LAPACK kernels split a batch over XLA:CPU's intra-op thread pool and block
  until the pieces are done (``jax::ParallelBatchMap``, ``BlockingCounter::Wait``); the thunk
  executor runs independent QRs concurrently on that same pool, so once as many QRs as the pool
  has threads (one per core: 2 here) wait at once, nothing is left to run the pieces. Hung in
  4 of 4 attempts with jaxlib 0.10.2 on 2 cores, none with 0.6.2, 0.7.2, 0.9.2 or 0.11.2 (2-3
  attempts each); ``--xla-flags=--xla_cpu_multi_thread_eigen=false`` does not prevent it;
* ``bare``: the bare PPO-shaped update of ``profile_parts.py --floor`` (two 64-64 tanh MLPs,
  scanned minibatch gradient steps), jitted once and executed ``--calls`` times;
* ``compiled``: a compiled IPPO chunk on MPE simple_spread (8 seeds vectorised), one update
  per call, ``--calls`` calls;
* ``devices2``: MAPPO sharded over two simulated CPU devices
  (``--xla_force_host_platform_device_count=2``: cross-device all-reduces on 2 cores);
* ``host``: a host-stepped PettingZoo run (tests/host_fixtures.py's Relay) with two spawned
  worker processes, through the CLI.

Prints one line per attempt (``ok`` with seconds, ``HANG`` or ``ERROR``) and a summary; the
dumps of hung attempts go to ``--dump-dir``. Exit status 1 if any attempt hung.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def child(mode: str, calls: int, hang_after: float) -> None:
    """One attempt: run the workload; faulthandler dumps the Python stacks if it hangs."""
    import faulthandler

    faulthandler.dump_traceback_later(hang_after, exit=False)
    if mode == "devices2":
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_force_host_platform_device_count=2")
    import jax
    import jax.numpy as jnp

    if mode == "qr":
        xs = [jax.random.normal(jax.random.PRNGKey(i), (16, 64, 64)) for i in range(4)]
        qrs = jax.jit(lambda xs: [jnp.linalg.qr(x * (i + 1))[0] for i, x in enumerate(xs)])
        for _ in range(calls):
            jax.block_until_ready(qrs(xs))
        return
    if mode == "bare":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from profile_parts import bare_ppo_update_ms

        # MPE IPPO at throughput.py's settings, 1 seed: 16 envs x 128 steps x 3 agents / 4
        # minibatches rows, 18-dim observations, 5 actions, 4 epochs x 4 minibatches.
        bare_ppo_update_ms(16 * 128 * 3 // 4, 18, 5, 64, 16, repeats=calls)
        return
    if mode == "host":
        from teamrl.cli import main

        out = tempfile.mkdtemp(prefix="teamrl-deadlock-")
        sys.path.insert(0, str(ROOT / "tests"))
        try:
            code = main(["train", "mappo", "pettingzoo/host_fixtures", "num_envs=4",
                         "workers=2", "rollout_length=8", f"total_steps={32 * calls}",
                         "log_every=4", "eval_every=0", "progress=none", f"out={out}"])
        finally:
            shutil.rmtree(out, ignore_errors=True)
        assert code == 0, code
        return
    from teamrl.train.presets import base_config
    from teamrl.config import apply_overrides
    from teamrl.train import make_trainer

    if mode == "compiled":
        algo, settings = "ippo", {"seeds": "8", "num_envs": "16", "rollout_length": "32"}
    else:  # devices2
        assert jax.local_device_count() == 2, jax.devices()
        algo, settings = "mappo", {"devices": "2", "num_envs": "8", "rollout_length": "32"}
    config = base_config(algo, "mpe/simple_spread")
    apply_overrides(config, {"total_steps": str(10 ** 9), **settings})
    trainer = make_trainer(config)
    runner = trainer.init()
    step = trainer.compile_chunk(runner, 1)
    for _ in range(calls):
        runner, metrics = step(runner)
        jax.block_until_ready(metrics)
    jnp.zeros(()).block_until_ready()


def thread_census(pid: int) -> dict:
    """{thread id: (name, state, CPU ticks)} from /proc: a hang leaves every thread asleep
    with a constant CPU time, while a starved process (load far above the core count) has
    runnable threads whose CPU time still grows."""
    census = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            census[task.name] = ((task / "comm").read_text().strip(), fields[0],
                                 int(fields[11]) + int(fields[12]))
        except (OSError, IndexError):
            pass
    return census


def dump_hung(pid: int, path: pathlib.Path) -> str:
    """Whether the process is hung or starved (two thread censuses 10 s apart), its Python and
    native stacks (py-spy, and gdb for the XLA threads py-spy does not see)."""
    before = thread_census(pid)
    time.sleep(10)
    after = thread_census(pid)
    grew = {t: after[t][2] - before[t][2] for t in after if t in before
            and after[t][2] > before[t][2]}
    lines = [f"load {os.getloadavg()}", "thread census (name, state, CPU ticks, +ticks in 10 s):"]
    lines += [f"  {t} {name} {state} {ticks} +{grew.get(t, 0)}"
              for t, (name, state, ticks) in sorted(after.items())]
    verdict = ("HUNG: no thread used CPU in 10 s" if not grew
               else f"still running: {len(grew)} thread(s) used CPU in 10 s")
    lines.append(verdict)
    spy = shutil.which("py-spy") or str(pathlib.Path(sys.executable).with_name("py-spy"))
    if os.path.exists(spy):
        out = subprocess.run([spy, "dump", "--native", "--pid", str(pid)], capture_output=True,
                             text=True, timeout=120)
        lines += ["", "py-spy dump --native:", out.stdout + out.stderr]
    if shutil.which("gdb"):
        out = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 30"],
                             capture_output=True, text=True, timeout=300)
        lines += ["", "gdb thread apply all bt:", out.stdout + out.stderr[-2000:]]
    path.write_text("\n".join(lines))
    return f"{verdict}; stacks in {path}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["qr", "bare", "compiled", "devices2", "host"],
                        default="bare")
    parser.add_argument("--attempts", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200, help="executions per attempt")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per attempt")
    parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS")
    parser.add_argument("--dump-dir", default=tempfile.gettempdir())
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.mode, args.calls, args.timeout * 0.8)
        return 0

    import jax

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    print(f"jax {jax.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} cpus, "
          f"mode {args.mode}, {args.calls} calls x {args.attempts} attempts, "
          f"XLA_FLAGS={env['XLA_FLAGS']!r}, load {os.getloadavg()[0]:.1f}", flush=True)
    results = {"ok": 0, "HANG": 0, "ERROR": 0}
    for attempt in range(args.attempts):
        log = pathlib.Path(args.dump_dir) / f"jax_deadlock_{args.mode}_{os.getpid()}_{attempt}.log"
        start = time.perf_counter()
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, __file__, "--child", "--mode", args.mode,
                                     "--calls", str(args.calls), "--timeout",
                                     str(args.timeout)], stdout=f, stderr=subprocess.STDOUT,
                                    env=env, cwd=ROOT)
            try:
                code = proc.wait(timeout=args.timeout)
                status = "ok" if code == 0 else "ERROR"
                note = "" if code == 0 else f"exit {code}, log {log}"
            except subprocess.TimeoutExpired:
                status = "HANG"
                note = dump_hung(proc.pid, log.with_suffix(".pyspy.txt")) + f"; log {log}"
                proc.kill()
                proc.wait()
        if status == "ok":
            log.unlink()
        results[status] += 1
        print(f"attempt {attempt + 1}: {status} {time.perf_counter() - start:.1f} s "
              f"(load {os.getloadavg()[0]:.1f}) {note}", flush=True)
    print(f"summary: {results}", flush=True)
    return 1 if results["HANG"] else 0


if __name__ == "__main__":
    sys.exit(main())
