"""Where the training time goes: milliseconds per update for the rollout alone, the PPO update
alone and the whole compiled update (rollout + update), for S seeds vectorised, at the
settings of ``throughput.py`` (JaxMARL's IPPO settings on MPE; its MAPPO-RNN settings on
SMAX).

    python benchmarks/profile_parts.py --algo ippo --seeds 1 8
    python benchmarks/profile_parts.py --env smax/2s3z --algo mappo --seeds 1 --updates 3
"""

from __future__ import annotations

import argparse
import time

import jax

from teamrl.cli_config import base_config
from teamrl.config import apply_overrides
from teamrl.train import Trainer

try:
    from throughput import JAXMARL_IPPO_SETTINGS, SMAX_JAXMARL_MAPPO_RNN
except ImportError:  # run from the repository root
    from benchmarks.throughput import JAXMARL_IPPO_SETTINGS, SMAX_JAXMARL_MAPPO_RNN


def timed(fn, *args, repeats: int = 3) -> float:
    """Best wall time of ``fn(*args)`` over ``repeats`` runs (after one warm-up run)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def profile(algo: str, env_id: str, seeds: int, updates: int, overrides: dict) -> dict:
    config = base_config(algo, env_id)
    settings = (SMAX_JAXMARL_MAPPO_RNN if env_id.startswith("smax/")
                else JAXMARL_IPPO_SETTINGS)
    apply_overrides(config, {**settings, "seeds": seeds, **overrides})
    trainer = Trainer(config)
    runner = trainer.init()
    length = config.run.rollout_length

    def rollout_only(runner):
        def body(carry, key):
            carry, batch, _ = trainer.collect(runner.train_state, carry, key)
            return carry, batch.reward.sum() + batch.next_value.sum() + batch.value.sum()
        return jax.lax.scan(body, runner.rollout, jax.random.split(runner.key, updates))

    one_batch = jax.jit(jax.vmap(
        lambda r: trainer.collect(r.train_state, r.rollout, r.key)[1]))
    batch = one_batch(runner)

    def update_only(ts, batch, key):
        def body(ts, k):
            ts, metrics = trainer.algo.update(ts, batch, k)
            return ts, metrics["actor_loss"]
        return jax.lax.scan(body, ts, jax.random.split(key, updates))

    rollout_fn = jax.jit(jax.vmap(rollout_only))
    update_fn = jax.jit(jax.vmap(update_only))
    keys = jax.vmap(jax.random.fold_in, (0, None))(runner.key, 1)
    full = trainer.compile_chunk(runner, updates)
    ms = lambda seconds: round(seconds / updates * 1000, 2)
    out = {"algo": algo, "env": env_id, "seeds": seeds,
           "rollout_ms": ms(timed(rollout_fn, runner)),
           "update_ms": ms(timed(update_fn, runner.train_state, batch, keys)),
           "full_ms": ms(timed(full, runner))}
    out["env_steps_per_s"] = round(seeds * config.run.num_envs * length / out["full_ms"] * 1000)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="ippo")
    parser.add_argument("--env", default="mpe/simple_spread")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.overrides)
    for seeds in args.seeds:
        print(profile(args.algo, args.env, seeds, args.updates, overrides), flush=True)


if __name__ == "__main__":
    main()
