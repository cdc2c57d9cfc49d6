"""Where the training time goes: milliseconds per update for the rollout alone, the PPO update
alone and the whole compiled update (rollout + update), for S seeds vectorised, at the
settings of ``throughput.py`` (JaxMARL's IPPO settings on MPE; its MAPPO-RNN settings on
SMAX).

    python benchmarks/profile_parts.py --algo ippo --seeds 1 8
    python benchmarks/profile_parts.py --env smax/2s3z --algo mappo --seeds 1 --updates 3
    python benchmarks/profile_parts.py --algo ippo --seeds 1 8 --floor

``--floor`` also times a lower bound for the update on MPE: the same epochs x minibatches of
bare PPO gradient steps (the two 64-64 tanh MLPs on the same rows, log-softmax, clipped
surrogate, squared value error, entropy; plain SGD: no Adam, grad clipping, shuffling,
normalisers or metrics), and the env-steps/s that the measured rollout plus that floor would
allow: how far an XLA-compiled implementation of these settings can go on this machine.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from teamrl.train.presets import base_config
from teamrl.config import apply_overrides
from teamrl.train import CompiledTrainer

try:
    from throughput import benchmark_settings
except ImportError:  # run from the repository root
    from benchmarks.throughput import benchmark_settings


def timed(fn, *args, repeats: int = 3) -> float:
    """Best wall time of ``fn(*args)`` over ``repeats`` runs (after one warm-up run)."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def bare_ppo_update_ms(rows: int, obs_dim: int, n_actions: int, hidden: int, steps: int,
                       repeats: int = 5) -> float:
    """Milliseconds for ``steps`` bare PPO minibatch gradient steps on ``rows`` samples each
    (actor and critic: obs_dim -> hidden -> hidden tanh MLPs), scanned in one jitted call."""
    def mlp(key, sizes):
        keys = jax.random.split(key, len(sizes) - 1)
        return [(jax.random.normal(k, (a, b)) / jnp.sqrt(a), jnp.zeros(b))
                for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def forward(layers, x):
        for i, (w, b) in enumerate(layers):
            x = x @ w + b
            x = jnp.tanh(x) if i < len(layers) - 1 else x
        return x

    def loss(params, x, action, adv, target):
        log_probs = jax.nn.log_softmax(forward(params[0], x))
        log_prob = jnp.take_along_axis(log_probs, action[:, None], 1)[:, 0]
        ratio = jnp.exp(log_prob - jax.lax.stop_gradient(log_prob))
        surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 0.8, 1.2) * adv)
        entropy = -(jnp.exp(log_probs) * log_probs).sum(-1)
        value = forward(params[1], x)[:, 0]
        return (-surrogate + 0.5 * (value - target) ** 2 - 0.01 * entropy).mean()

    def run(params, data):
        def step(params, minibatch):
            grads = jax.grad(loss)(params, *minibatch)
            return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads), None
        return jax.lax.scan(step, params, data)[0]

    key = jax.random.PRNGKey(0)
    params = (mlp(key, [obs_dim, hidden, hidden, n_actions]), mlp(key, [obs_dim, hidden, hidden, 1]))
    data = (jax.random.normal(key, (steps, rows, obs_dim)),
            jax.random.randint(key, (steps, rows), 0, n_actions),
            jax.random.normal(key, (steps, rows)), jax.random.normal(key, (steps, rows)))
    return timed(jax.jit(run), params, data, repeats=repeats) * 1000


def profile(algo: str, env_id: str, seeds: int, updates: int, overrides: dict,
            floor: bool = False) -> dict:
    config = base_config(algo, env_id)
    settings = benchmark_settings(algo, env_id, config)
    apply_overrides(config, {**settings, "seeds": seeds, **overrides})
    trainer = CompiledTrainer(config)
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
            return ts, jax.tree.leaves(metrics)[0]  # any output keeps the update live
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
    if floor:
        spec, cfg = trainer.spec, config.algo
        rows = seeds * config.run.num_envs * length * spec.n_agents // cfg.minibatches
        out["floor_update_ms"] = round(bare_ppo_update_ms(
            rows, batch.obs.obs.shape[-1], spec.action_dim, config.network.hidden_sizes[0],
            cfg.epochs * cfg.minibatches), 2)
        out["floor_env_steps_per_s"] = round(seeds * config.run.num_envs * length / (
            out["rollout_ms"] + out["floor_update_ms"]) * 1000)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="ippo")
    parser.add_argument("--env", default="mpe/simple_spread")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--floor", action="store_true",
                        help="also time bare PPO steps on the same rows (MPE; see above)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.overrides)
    for seeds in args.seeds:
        print(profile(args.algo, args.env, seeds, args.updates, overrides, args.floor),
              flush=True)


if __name__ == "__main__":
    main()
