"""Evaluation episodes with a trained policy (deterministic or stochastic), compiled."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from teamrl.rollout import reset_envs


def episode_returns(team_env, algo, train_state, key, episodes: int, deterministic: bool):
    """Returns [episodes] of the first episode in each of ``episodes`` parallel envs.

    Runs exactly ``max_steps`` steps, which every episode's time limit guarantees to finish.
    """
    carry = reset_envs(team_env, key, episodes)
    env_step = jax.vmap(team_env.step)

    def step(state, step_key):
        env_state, obs, running, final, finished = state
        act_key, env_key = jax.random.split(step_key)
        action = algo.policy_action(train_state, obs, act_key, deterministic)
        env_state, out = env_step(jax.random.split(env_key, episodes), env_state, action)
        running = running + out.reward
        done = (out.terminated | out.truncated) & ~finished
        final = jnp.where(done, running, final)
        return (env_state, out.next_obs, running, final, finished | done), None

    init = (carry.env_state, carry.obs, jnp.zeros(episodes), jnp.zeros(episodes),
            jnp.zeros(episodes, bool))
    keys = jax.random.split(key, team_env.spec.max_steps)
    (_, _, _, final, finished), _ = jax.lax.scan(step, init, keys)
    return jnp.where(finished, final, jnp.nan)


def evaluate_run(run_dir, episodes: int | None, deterministic: bool, checkpoint: str = "best",
                 overrides: dict | None = None) -> dict:
    """Evaluate every seed of a run folder's checkpoint (``best`` falls back to ``latest``);
    ``episodes`` defaults to the run's ``eval_episodes``. Writes ``eval_<ckpt>_<mode>.json``."""
    from teamrl import runs
    from teamrl.cli_config import config_from_run_dir
    from teamrl.train import make_trainer

    run_dir = pathlib.Path(run_dir)
    config = config_from_run_dir(run_dir, overrides or {})
    if not runs.checkpoint_exists(run_dir, checkpoint):
        checkpoint = "latest"
    episodes = episodes or config.run.eval_episodes
    trainer = make_trainer(config)
    try:
        runner, meta = runs.load_checkpoint(run_dir, checkpoint, trainer.init())
        keys = jax.vmap(lambda k: jax.random.fold_in(k, 2**31 - 1))(trainer.seed_keys())
        returns = np.asarray(trainer.evaluation_returns(runner.train_state, keys, episodes,
                                                        deterministic))
    finally:
        trainer.close()
    result = {"checkpoint": checkpoint, "env_steps": meta.get("env_steps"),
              "deterministic": deterministic, "episodes": episodes, "seeds": []}
    for s in range(returns.shape[0]):
        r = returns[s]
        result["seeds"].append({"seed": config.run.seed + s, "return_mean": float(np.mean(r)),
                                "return_std": float(np.std(r)), "return_min": float(np.min(r)),
                                "return_max": float(np.max(r))})
    result["return_mean"] = float(np.mean(returns))
    name = f"eval_{checkpoint}_{'det' if deterministic else 'stoch'}.json"
    (run_dir / name).write_text(json.dumps(result, indent=2))
    result["file"] = str(run_dir / name)
    return result
