"""Training throughput on mpe/simple_spread at JaxMARL's published IPPO settings (16 envs x
128 steps, 4 epochs x 4 minibatches, 64-64 tanh, lr 2.5e-4 annealed to 0), for IPPO, MAPPO and the
trust-region family (HAPPO, HATRPO, A2PO, CoPPO with their default separate actors; HATRPO has
no learning rate or clip: its actors take trust-region steps, its critic the same epochs).

Prints env-steps/s (all seeds together; compile time separately) and the final return for
1 seed and for several seeds vectorised in one program. The reference figure for JaxMARL's
own IPPO on this machine kind (~61,000 env-steps/s, 1 seed) is in ../shared/REFERENCE.md §6.

    python benchmarks/throughput.py                       # ippo+mappo, 2M steps, seeds 1 and 8
    python benchmarks/throughput.py --algos ippo --steps 500000 --seeds 1 8 --json
    python benchmarks/throughput.py --algos ippo happo hatrpo hatrpo:fisher_subsample=4 \
        a2po coppo --steps 300000 --seeds 1 8
    python benchmarks/throughput.py --env smax/2s3z --algos mappo --steps 1000000 --seeds 1

The "x IPPO" column divides by IPPO's env-steps/s with the same number of seeds, measured in
the same invocation (so list ippo among the algorithms).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import numpy as np

from teamrl.train.presets import base_config
from teamrl.config import apply_overrides
from teamrl.train import CompiledTrainer, total_updates

JAXMARL_IPPO_SETTINGS = {
    "num_envs": 16, "rollout_length": 128, "epochs": 4, "minibatches": 4,
    "hidden_sizes": "[64,64]", "activation": "tanh", "lr": 2.5e-4, "critic_lr": 2.5e-4,
    "clip_eps": 0.2, "ent_coef": 0.01, "max_grad_norm": 0.5, "gamma": 0.99, "gae_lambda": 0.95,
    "agent_id": "false", "progress": "none",
    # JaxMARL anneals the lr linearly to 0 (ANNEAL_LR: True). Without it, at constant lr, 2 of
    # 3 seeds collapsed at 1M steps (return -31, entropy 0.9, the critic unable to follow its
    # targets under the raw-unit value clip); with it all 3 reach -19.
    "lr_decay": "true",
    # JaxMARL's IPPO has no value normalisation and a plain squared-error value loss (clipped).
    "value_norm": "false", "huber": "false", "value_clip": "true",
}


# SMAX (--env smax/<map>): JaxMARL's MAPPO-RNN settings (128 envs x 128 steps, 4 epochs x 4
# minibatches, FC 128 -> GRU 128, lr 2e-3) are the shipped smax/mappo preset; JaxMARL trains
# on the whole 128-step rollout, so the chunk covers it. The reference for JaxMARL's own
# MAPPO-RNN on smax/2s3z is ~3,200 env-steps/s on this machine kind (REFERENCE.md §6).
SMAX_JAXMARL_MAPPO_RNN = {"chunk_length": 128, "progress": "none"}

# JaxMARL's IPPO shares one actor; the sequential methods need one actor per agent.
FOUNDATION_SHARED = {"ippo", "mappo"}


def parse_algo(spec: str) -> tuple[str, dict]:
    """'hatrpo:fisher_subsample=4,cg_iters=5' -> ('hatrpo', {...}): per-algorithm overrides."""
    name, _, rest = spec.partition(":")
    return name, dict(item.split("=", 1) for item in rest.split(",") if item)


def benchmark_settings(algo: str, env_id: str, config) -> dict:
    """The settings this benchmark trains ``algo`` with on ``env_id`` (JaxMARL's, above),
    restricted to the keys ``config`` has (HATRPO's actors, for instance, have no ``lr``)."""
    if env_id.startswith("smax/"):
        return dict(SMAX_JAXMARL_MAPPO_RNN)
    known = {f.name for section in config.sections().values()
             for f in dataclasses.fields(section)}
    settings = {k: v for k, v in JAXMARL_IPPO_SETTINGS.items() if k in known}
    if algo in FOUNDATION_SHARED:
        settings["share_actor"] = "true"
    return settings


def measure(spec: str, env_id: str, steps: int, seeds: int) -> dict:
    algo, extra = parse_algo(spec)
    config = base_config(algo, env_id)
    settings = benchmark_settings(algo, env_id, config)
    apply_overrides(config, {**settings, **extra, "total_steps": steps, "seeds": seeds})
    trainer = CompiledTrainer(config)
    runner = trainer.init()
    updates = total_updates(config.run)
    start = time.perf_counter()
    compiled = trainer.compile_chunk(runner, updates)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    runner, metrics = compiled(runner)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - start
    env_steps = updates * config.run.num_envs * config.run.rollout_length
    tail = slice(-max(updates // 20, 1), None)  # the last 5 % of updates
    episodes = max(np.sum(metrics["episodes"][:, tail]), 1)
    final = float(np.sum(metrics["return_sum"][:, tail]) / episodes)
    row = {"algo": spec, "env": env_id, "seeds": seeds, "env_steps": env_steps,
           "env_steps_per_s": round(env_steps * seeds / elapsed, 1),
           "compile_s": round(compile_s, 2), "final_return": round(final, 3),
           "share_actor": bool(config.algo.share_actor)}
    if "win_sum" in metrics:
        row["final_win_rate"] = round(float(np.sum(metrics["win_sum"][:, tail]) / episodes), 3)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=["ippo", "mappo"])
    parser.add_argument("--env", default="mpe/simple_spread")
    parser.add_argument("--steps", type=int, default=2_000_000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args()
    rows = []
    for algo in args.algos:
        for seeds in args.seeds:
            row = measure(algo, args.env, args.steps, seeds)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    if not args.json:
        base = {r["algo"]: r["env_steps_per_s"] for r in rows if r["seeds"] == 1}
        ippo = {r["seeds"]: r["env_steps_per_s"] for r in rows if r["algo"] == "ippo"}
        print(f"{'algo':26s} {'seeds':>5s} {'env steps':>10s} {'env-steps/s':>12s} "
              f"{'x 1 seed':>8s} {'x IPPO':>7s} {'compile s':>9s} {'final return':>12s}")
        for r in rows:
            ratio = r["env_steps_per_s"] / base[r["algo"]] if r["algo"] in base else float("nan")
            vs_ippo = (r["env_steps_per_s"] / ippo[r["seeds"]] if r["seeds"] in ippo
                       else float("nan"))
            win = f"  win rate {r['final_win_rate']:.2f}" if "final_win_rate" in r else ""
            print(f"{r['algo']:26s} {r['seeds']:5d} {r['env_steps']:10,d} "
                  f"{r['env_steps_per_s']:12,.0f} {ratio:8.2f} {vs_ippo:7.2f} "
                  f"{r['compile_s']:9.1f} {r['final_return']:12.2f}{win}")
        print("final return: mean over the last 5% of updates' finished episodes, team reward "
              "= mean of the agents' rewards, 25-step episodes (x3 for JaxMARL's logged convention)")


if __name__ == "__main__":
    main()
