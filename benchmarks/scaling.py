"""Scaling: env-steps/s against device count (compiled envs) and against host-worker count
(MaMuJoCo), as efficiency relative to linear scaling, all measured in one invocation.

- Devices (weak scaling): each device keeps ``--envs-per-device`` environments, so N devices
  train N times the batch; efficiency(N) = rate(N) / (N * rate(1)). Each device count runs in
  its own subprocess because the CPU device count (XLA's ``--xla_force_host_platform_
  device_count``) is fixed when JAX starts; on a machine with accelerators pass
  ``--platform gpu`` to use the real devices instead of simulated CPU ones. Simulated CPU
  devices share the machine's cores, so on a 2-core machine the ceiling is the core count,
  not the device count.
- Host workers: env-only stepping of mamujoco/HalfCheetah-2x3 (random actions through the
  same shared-memory runner as training) with W worker processes; efficiency(W) =
  rate(W) / (W * rate(1)).

    python benchmarks/scaling.py
    python benchmarks/scaling.py --devices 1 2 4 --workers 1 2 --json
    python benchmarks/scaling.py --algo happo --steps 400000 --platform gpu --devices 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def device_rate(algo: str, env_id: str, devices: int, envs_per_device: int,
                rollout_length: int, steps: int) -> dict:
    """Env-steps/s of training on ``devices`` devices (this process's JAX must see them)."""
    from teamrl.train.presets import base_config
    from teamrl.config import apply_overrides
    from teamrl.train import make_trainer

    config = base_config(algo, env_id)
    num_envs = envs_per_device * devices
    updates = max(steps // (num_envs * rollout_length), 2)
    apply_overrides(config, {"num_envs": str(num_envs), "rollout_length": str(rollout_length),
                             "devices": str(devices), "progress": "none",
                             "total_steps": str(10**9)})
    trainer = make_trainer(config)
    runner = trainer.init()
    t0 = time.perf_counter()
    chunk = trainer.compile_chunk(runner, updates)
    compile_s = time.perf_counter() - t0
    runner, _ = chunk(runner)  # warm-up chunk
    t0 = time.perf_counter()
    runner, metrics = chunk(runner)
    float(metrics["reward_mean"].sum())  # wait for the result: the timing covers the chunk
    elapsed = time.perf_counter() - t0
    return {"kind": "devices", "algo": algo, "env": env_id, "devices": devices,
            "num_envs": num_envs, "env_steps_per_s": updates * num_envs * rollout_length / elapsed,
            "compile_s": compile_s}


def with_efficiency(rows: list[dict], key: str) -> list[dict]:
    base = next((r for r in rows if r[key] == 1), None)
    for r in rows:
        r["efficiency"] = (r["env_steps_per_s"] / (r[key] * base["env_steps_per_s"])
                           if base else float("nan"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", default="mappo")
    parser.add_argument("--env", default="mpe/simple_spread")
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--envs-per-device", type=int, default=64)
    parser.add_argument("--rollout-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200_000,
                        help="env steps per timed chunk (per device count)")
    parser.add_argument("--platform", default="cpu", choices=["cpu", "gpu", "tpu"],
                        help="cpu: simulated CPU devices; gpu/tpu: the real accelerators")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--worker-envs", type=int, default=20)
    parser.add_argument("--worker-steps", type=int, default=400)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one device count, in a fresh process
        print(json.dumps(device_rate(args.algo, args.env, args.child, args.envs_per_device,
                                     args.rollout_length, args.steps)))
        return

    device_rows = []
    for n in args.devices:
        env = dict(os.environ)
        if args.platform == "cpu":
            env["JAX_PLATFORMS"] = "cpu"
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                                + f" --xla_force_host_platform_device_count={n}")
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--algo", args.algo,
                              "--env", args.env, "--envs-per-device", str(args.envs_per_device),
                              "--rollout-length", str(args.rollout_length),
                              "--steps", str(args.steps)],
                             capture_output=True, text=True, env=env, check=True)
        device_rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    with_efficiency(device_rows, "devices")

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from mamujoco_throughput import env_only

    from teamrl.envs.registry import make_env

    worker_rows = []
    if args.workers:
        team_env = make_env("mamujoco/HalfCheetah-2x3")
        for w in args.workers:
            worker_rows.append({"kind": "workers", "env": "mamujoco/HalfCheetah-2x3",
                                "workers": w, "num_envs": args.worker_envs,
                                "env_steps_per_s": env_only(team_env, args.worker_envs, w,
                                                            args.worker_steps)})
        with_efficiency(worker_rows, "workers")

    if args.json:
        for r in device_rows + worker_rows:
            print(json.dumps(r))
        return
    print(f"{args.algo} on {args.env}, {args.envs_per_device} envs x {args.rollout_length} "
          f"steps per device ({args.platform})")
    print("| devices | envs | env-steps/s | efficiency vs linear | compile s |")
    print("| --- | --- | --- | --- | --- |")
    for r in device_rows:
        print(f"| {r['devices']} | {r['num_envs']} | {r['env_steps_per_s']:,.0f} | "
              f"{r['efficiency']:.2f} | {r['compile_s']:.1f} |")
    if worker_rows:
        print(f"\nmamujoco/HalfCheetah-2x3 env-only stepping, {args.worker_envs} envs")
        print("| workers | env-steps/s | efficiency vs linear |")
        print("| --- | --- | --- |")
        for r in worker_rows:
            print(f"| {r['workers']} | {r['env_steps_per_s']:,.0f} | {r['efficiency']:.2f} |")


if __name__ == "__main__":
    main()
