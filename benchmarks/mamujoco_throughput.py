"""MaMuJoCo through the host runner: env-only stepping rate vs HAPPO training rate.

Both are measured in the same invocation on mamujoco/HalfCheetah-2x3 (obs=global) with
20 envs x 200 steps per update (HARL's setting):

- env only: random actions written straight into the runner's shared action buffer, the
  workers stepping the envs exactly as in training;
- training: HAPPO (HARL's HalfCheetah network and epochs unless overridden) after
  compilation, including the action call per step (``host_act``: NumPy by default, or the
  jitted call) and the compiled update.

The two alternate (``--rounds``), each round stepping as many env steps as its training
updates take, so a drift of the machine's speed (shared cores) affects both alike.

The issue's target is training >= 75 % of env-only stepping on a 2-core machine. The
breakdown shows where training time goes (env stepping and waiting, the action call, the
update).

    python benchmarks/mamujoco_throughput.py
    python benchmarks/mamujoco_throughput.py --rounds 5 --workers 0 1 2 --json
    python benchmarks/mamujoco_throughput.py --set epochs=5 hidden_sizes=[64,64]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from teamrl.train.presets import base_config
from teamrl.config import apply_overrides
from teamrl.config import parse_key_values
from teamrl.train import HostTrainer

ENV_ID = "mamujoco/HalfCheetah-2x3"


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
        timings = trainer.collector.timings
        for k in timings:
            timings[k] = 0.0
        vec, env_only = env_only_stepper(trainer.team_env, config.run.num_envs,
                                         trainer.collector.vec.workers)
        train_s = env_s = 0.0
        per_round = []
        for _ in range(rounds):
            env_round = env_only(updates * config.run.rollout_length)
            start = time.perf_counter()
            for _ in range(updates):
                runner, metrics = chunk(runner)
            train_round = time.perf_counter() - start
            per_round.append(env_round / train_round)
            env_s, train_s = env_s + env_round, train_s + train_round
        steps = rounds * updates * config.run.num_envs * config.run.rollout_length
        n = rounds * updates
        return {"workers": trainer.collector.vec.workers, "train_sps": steps / train_s,
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=4, help="updates per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of env-only stepping and training")
    parser.add_argument("--workers", type=int, nargs="+", default=[-1])
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value",
                        help="overrides of the HAPPO config")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [training(w, args.updates, args.rounds, parse_key_values(args.set)) for w in args.workers]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{ENV_ID}, 20 envs x 200 steps per update, HAPPO, {args.rounds} rounds of "
          f"{args.updates} updates")
    print("workers  env-only sps  training sps  training/env-only  per update: rollout "
          "(of which act)  update")
    for r in rows:
        print(f"{r['workers']:7d}  {r['env_only_sps']:12,.0f}  {r['train_sps']:12,.0f}  "
              f"{r['ratio']:17.2f}  {r['rollout_s']:8.2f} s ({r['act_s']:.2f} s)  "
              f"{r['update_s']:6.2f} s   rounds: "
              + " ".join(f"{x:.2f}" for x in r["ratio_per_round"]))


if __name__ == "__main__":
    main()
