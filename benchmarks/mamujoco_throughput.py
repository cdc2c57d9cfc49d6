"""MaMuJoCo through the host runner: env-only stepping rate vs HAPPO training rate.

Both are measured in the same invocation on mamujoco/HalfCheetah-2x3 (obs=global) with
20 envs x 200 steps per update (HARL's setting):

- env only: random actions written straight into the runner's shared action buffer, the
  workers stepping the envs exactly as in training;
- training: HAPPO (HARL's HalfCheetah network and epochs unless overridden) after
  compilation, including the jitted action call per step and the compiled update.

The issue's target is training >= 75 % of env-only stepping on a 2-core machine. The
breakdown shows where training time goes (env stepping and waiting, the action call, the
update).

    python benchmarks/mamujoco_throughput.py
    python benchmarks/mamujoco_throughput.py --updates 10 --workers 0 1 2 --json
    python benchmarks/mamujoco_throughput.py --set epochs=5 hidden_sizes=[64,64]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from teamrl.cli_config import base_config
from teamrl.config import apply_overrides
from teamrl.config import parse_key_values
from teamrl.train import HostTrainer

ENV_ID = "mamujoco/HalfCheetah-2x3"


def env_only(team_env, num_envs: int, workers: int, steps: int, seed: int = 0) -> float:
    """Env-steps/s of ``steps`` random-action steps of ``num_envs`` envs through the runner."""
    rng = np.random.default_rng(seed)
    with team_env.vector(num_envs, workers) as vec:
        vec.reset(range(num_envs))
        actions = rng.uniform(-1, 1, (steps,) + vec.buffers.action.shape).astype(np.float32)
        vec.step(actions[0])  # warm up
        start = time.perf_counter()
        for t in range(steps):
            vec.step(actions[t])
        elapsed = time.perf_counter() - start
    return steps * num_envs / elapsed


def training(workers: int, updates: int, overrides: dict) -> dict:
    config = base_config("happo", ENV_ID)
    settings = {"num_envs": 20, "rollout_length": 200, "progress": "none", "eval_every": 0,
                "workers": workers, "total_steps": 10**9, **overrides}
    apply_overrides(config, {k: str(v) for k, v in settings.items()})
    trainer = HostTrainer(config)
    try:
        runner = trainer.init()
        chunk = trainer.compile_chunk(runner, 1)
        runner, _ = chunk(runner)  # first update: jit of the action call
        timings = trainer.collector.timings
        for k in timings:
            timings[k] = 0.0
        start = time.perf_counter()
        for _ in range(updates):
            runner, metrics = chunk(runner)
        elapsed = time.perf_counter() - start
        steps = updates * config.run.num_envs * config.run.rollout_length
        team_env = trainer.team_env
        env_sps = env_only(team_env, config.run.num_envs, trainer.collector.vec.workers,
                           steps // config.run.num_envs)
        return {"workers": trainer.collector.vec.workers, "train_sps": steps / elapsed,
                "env_only_sps": env_sps, "ratio": steps / elapsed / env_sps,
                "rollout_s": timings["rollout"] / updates, "act_s": timings["act"] / updates,
                "update_s": timings.get("update", 0.0) / updates,
                "return": float(np.nanmean(metrics["return_sum"]
                                           / np.maximum(metrics["episodes"], 1)))}
    finally:
        trainer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[-1])
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value",
                        help="overrides of the HAPPO config")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [training(w, args.updates, parse_key_values(args.set)) for w in args.workers]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{ENV_ID}, 20 envs x 200 steps per update, HAPPO, {args.updates} updates")
    print("workers  env-only sps  training sps  training/env-only  per update: rollout "
          "(of which act)  update")
    for r in rows:
        print(f"{r['workers']:7d}  {r['env_only_sps']:12,.0f}  {r['train_sps']:12,.0f}  "
              f"{r['ratio']:17.2f}  {r['rollout_s']:8.2f} s ({r['act_s']:.2f} s)  "
              f"{r['update_s']:6.2f} s")


if __name__ == "__main__":
    main()
