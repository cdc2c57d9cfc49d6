"""MaMuJoCo through the host runner: env-only stepping rate vs HAPPO training rate, for the
native backend and the gymnasium-robotics one.

All is measured in one invocation on mamujoco/HalfCheetah-2x3 (obs=global) with 20 envs x 200
steps per update (HARL's setting):

- env only, backends back to back: both backends' vectors (20 envs, one worker each) open
  side by side and stepped in turn (``--reps`` times ``--steps`` random-action steps), so each
  repetition's native/gymnasium-robotics ratio sees the same machine load; with each figure
  the load average (``os.getloadavg``) and the worker's CPU time per env step (from /proc: it
  counts the worker's own work only, so it varies less than wall time on a shared machine).
  Run it with nice off: a niced benchmark measures the other jobs' priority;
- env only inside training: random actions written straight into the runner's shared action
  buffer, the workers stepping the envs exactly as in training;
- training: HAPPO (HARL's HalfCheetah network and epochs unless overridden) after
  compilation, including the action call per step (``host_act``: NumPy by default, or the
  jitted call) and the compiled update.

The last two alternate (``--rounds``), each round stepping as many env steps as its training
updates take, so a drift of the machine's speed (shared cores) affects both alike.

The issue's targets: training >= 75 % of env-only stepping on a 2-core machine, and native
env-only stepping >= 3x gymnasium-robotics' with one worker. The breakdown shows where training
time goes (env stepping and waiting, the action call, the update).

    python benchmarks/mamujoco_throughput.py
    python benchmarks/mamujoco_throughput.py --reps 7 --rounds 5 --workers 0 1 2 --json
    python benchmarks/mamujoco_throughput.py --backends native --set epochs=5
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from teamrl.config import apply_overrides, parse_key_values
from teamrl.train import HostTrainer
from teamrl.train.presets import base_config

ENV_ID = "mamujoco/HalfCheetah-2x3"
BACKENDS = ("native", "gymnasium_robotics")


def env_only_stepper(team_env, num_envs: int, workers: int, seed: int = 0):
    """An open vector of ``num_envs`` envs and ``run(steps) -> seconds`` of random-action
    steps through it (the caller closes the vector)."""
    rng = np.random.default_rng(seed)
    vec = team_env.vector(num_envs, workers)
    vec.reset(range(num_envs))
    vec.step(rng.uniform(-1, 1, vec.buffers.action.shape).astype(np.float32))  # warm up

    def run(steps: int) -> float:
        actions = rng.uniform(-1, 1, (steps,) + vec.buffers.action.shape).astype(np.float32)
        start = time.perf_counter()
        for t in range(steps):
            vec.step(actions[t])
        return time.perf_counter() - start

    return vec, run


def env_only(team_env, num_envs: int, workers: int, steps: int, seed: int = 0) -> float:
    """Env-steps/s of ``steps`` random-action steps of ``num_envs`` envs through the runner."""
    vec, run = env_only_stepper(team_env, num_envs, workers, seed)
    try:
        return steps * num_envs / run(steps)
    finally:
        vec.close()


def cpu_seconds(vec) -> float:
    """CPU time (user + system) the vector's worker processes have used, or this process's
    for in-process envs (workers=0)."""
    if not vec.pids:
        return time.process_time()
    total = 0
    for pid in vec.pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def env_only_backends(backends, num_envs: int, workers: int, steps: int, reps: int) -> dict:
    """Env-only rates of ``backends`` measured back to back: their vectors open side by side,
    each stepped ``steps`` random-action steps in turn, ``reps`` times. Per backend: sps,
    load average and worker CPU microseconds per env step of every repetition."""
    from teamrl.envs.registry import default_env_options, make_env

    stepper, out = {}, {}
    try:
        for backend in backends:
            opts = default_env_options(ENV_ID)
            opts.backend, opts.workers = backend, workers
            team_env = make_env(ENV_ID, opts, agent_id=True)
            stepper[backend] = env_only_stepper(team_env, num_envs, workers)
            out[backend] = {"sps": [], "load": [], "cpu_us": []}
        for _ in range(reps):
            for backend in backends:
                vec, run = stepper[backend]
                load = os.getloadavg()[0]
                cpu = cpu_seconds(vec)
                seconds = run(steps)
                cpu = cpu_seconds(vec) - cpu
                out[backend]["sps"].append(steps * num_envs / seconds)
                out[backend]["load"].append(load)
                out[backend]["cpu_us"].append(1e6 * cpu / (steps * num_envs))
    finally:
        for vec, _ in stepper.values():
            vec.close()
    if set(BACKENDS) <= set(backends):
        out["ratio"] = [n / g for n, g in zip(out["native"]["sps"],
                                              out["gymnasium_robotics"]["sps"])]
        out["cpu_ratio"] = [g / n for n, g in zip(out["native"]["cpu_us"],
                                                  out["gymnasium_robotics"]["cpu_us"])]
    return out


def training(workers: int, updates: int, rounds: int, overrides: dict) -> dict:
    """``rounds`` alternations of env-only stepping and ``updates`` training updates (the same
    number of env steps each), so both rates see the same drift of a shared machine."""
    config = base_config("happo", ENV_ID)
    settings = {"num_envs": 20, "rollout_length": 200, "progress": "none", "eval_every": 0,
                "workers": workers, "total_steps": 10**9, **overrides}
    apply_overrides(config, {k: str(v) for k, v in settings.items()})
    trainer = HostTrainer(config)
    vec = None
    try:
        runner = trainer.init()
        chunk = trainer.compile_chunk(runner, 1)
        runner, _ = chunk(runner)  # first update: jit of the action call
        trainer.reset_timings()
        vec, env_only = env_only_stepper(trainer.team_env, config.run.num_envs,
                                         trainer.collectors[0].vec.workers)
        train_s = env_s = 0.0
        per_round = []
        for _ in range(rounds):
            env_round = env_only(updates * config.run.rollout_length * config.run.seeds)
            start = time.perf_counter()
            for _ in range(updates):
                runner, metrics = chunk(runner)
            train_round = time.perf_counter() - start
            per_round.append(env_round / train_round)
            env_s, train_s = env_s + env_round, train_s + train_round
        # Every seed's env steps (env-only rounds step as many, on one vector of num_envs).
        steps = (rounds * updates * config.run.num_envs * config.run.rollout_length
                 * config.run.seeds)
        n = rounds * updates * config.run.seeds  # per-seed updates
        timings = trainer.timings
        return {"workers": trainer.collectors[0].vec.workers, "train_sps": steps / train_s,
                "load": os.getloadavg()[0],
                "env_only_sps": steps / env_s, "ratio": env_s / train_s,
                "ratio_per_round": per_round,
                "rollout_s": timings["rollout"] / n, "act_s": timings["act"] / n,
                "update_s": timings.get("update", 0.0) / n,
                "return": float(np.nanmean(metrics["return_sum"]
                                           / np.maximum(metrics["episodes"], 1)))}
    finally:
        if vec is not None:
            vec.close()
        trainer.close()


def _stats(values) -> str:
    return f"min {min(values):,.2f}  median {float(np.median(values)):,.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--reps", type=int, default=5,
                        help="back-to-back env-only repetitions per backend")
    parser.add_argument("--steps", type=int, default=500,
                        help="steps of 20 envs per env-only repetition")
    parser.add_argument("--env-only-workers", type=int, default=1,
                        help="workers of the back-to-back env-only comparison")
    parser.add_argument("--updates", type=int, default=4, help="updates per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of env-only stepping and training")
    parser.add_argument("--workers", type=int, nargs="+", default=[-1])
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value",
                        help="overrides of the HAPPO config")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    niceness = os.nice(0)
    compare = env_only_backends(args.backends, 20, args.env_only_workers, args.steps,
                                args.reps)
    rows = [{"backend": b, **training(w, args.updates, args.rounds,
                                      {**parse_key_values(args.set), "backend": b})}
            for w in args.workers for b in args.backends]
    if args.json:
        print(json.dumps({"niceness": niceness, "env_only": compare, "training": rows},
                         indent=2))
        return
    print(f"{ENV_ID}, env only, 20 envs on {args.env_only_workers} worker(s), backends back "
          f"to back: {args.reps} reps x {args.steps} steps; niceness {niceness}"
          + ("  (NICED: figures measure the scheduler, rerun with nice off)" if niceness else ""))
    print("rep  " + "".join(f"{b:>20s} sps  cpu us/step  load " for b in args.backends)
          + ("  ratio  cpu ratio" if "ratio" in compare else ""))
    for r in range(args.reps):
        line = f"{r:3d}  " + "".join(
            f"{compare[b]['sps'][r]:24,.0f}  {compare[b]['cpu_us'][r]:11.1f}  "
            f"{compare[b]['load'][r]:4.2f} " for b in args.backends)
        if "ratio" in compare:
            line += f"  {compare['ratio'][r]:5.2f}  {compare['cpu_ratio'][r]:9.2f}"
        print(line)
    for b in args.backends:
        print(f"  {b}: sps {_stats(compare[b]['sps'])}; cpu us/step "
              f"{_stats(compare[b]['cpu_us'])}")
    if "ratio" in compare:
        print(f"  native / gymnasium_robotics env-only: {_stats(compare['ratio'])} "
              f"(cpu time per step: {_stats(compare['cpu_ratio'])})")
    print(f"\n{ENV_ID}, 20 envs x 200 steps per update, HAPPO, {args.rounds} rounds of "
          f"{args.updates} updates")
    print("backend             workers  env-only sps  training sps  training/env-only  per "
          "update: rollout (of which act)  update")
    for r in rows:
        print(f"{r['backend']:18s}  {r['workers']:7d}  {r['env_only_sps']:12,.0f}  "
              f"{r['train_sps']:12,.0f}  {r['ratio']:17.2f}  {r['rollout_s']:8.2f} s "
              f"({r['act_s']:.2f} s)  {r['update_s']:6.2f} s   load {r['load']:.2f}   rounds: "
              + " ".join(f"{x:.2f}" for x in r["ratio_per_round"]))


if __name__ == "__main__":
    main()
