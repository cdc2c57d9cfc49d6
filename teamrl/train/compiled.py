"""Training on compiled (JAX) environments: rollout and update of every seed in one XLA
program per chunk of updates (vmap over seeds, scan over updates); Python only logs and
checkpoints between chunks."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from teamrl.config import Config
from teamrl.core.rollout import collect, collect_recurrent, episode_returns, reset_envs
from teamrl.train.trainer import Runner, Trainer, all_finite


class CompiledTrainer(Trainer):
    """Compiled training of ``config.run.seeds`` seeds of one (algorithm, env): a chunk of K
    updates (rollout and update) for every seed is one XLA program."""

    def __init__(self, config: Config):
        super().__init__(config)
        self._chunk = jax.jit(jax.vmap(self._run_chunk, in_axes=(0, None)), static_argnums=1)
        self._sharded_chunks = {}
        self._evaluate = None

    # ------------------------------------------------------------------------ init
    def _init_one(self, key) -> Runner:
        init_key, env_key, key = jax.random.split(key, 3)
        train_state = self.algo.init(init_key)
        num_envs = self.config.run.num_envs
        memory = self.algo.init_memory(num_envs) if self.algo_recurrent else ()
        rollout = reset_envs(self.team_env, env_key, num_envs, memory)
        return Runner(train_state, rollout, key, jnp.int32(0))

    @property
    def algo_recurrent(self) -> bool:
        return bool(getattr(self.algo, "recurrent", False))

    # ----------------------------------------------------------------------- update
    def collect(self, ts, rollout, key):
        """One rollout of ``rollout_length`` steps with the current policy: -> (rollout carry,
        Batch [T, E, ...], EpisodeStats)."""
        length = self.config.run.rollout_length
        if self.algo_recurrent:
            return collect_recurrent(
                self.team_env, partial(self.algo.recurrent_act, ts),
                partial(self.algo.recurrent_value, ts), rollout, key, length)

        def act(obs, key):
            # Values are left to ``collect``, which evaluates the critic once, batched
            # over the whole rollout, after the scan (XLA drops the in-loop critic call).
            action, log_prob, _ = self.algo.act(ts, obs, key)
            return action, log_prob, None

        return collect(self.team_env, act, partial(self.algo.values, ts), rollout, key, length)

    def _update(self, runner: Runner, _):
        key, rollout_key, update_key = jax.random.split(runner.key, 3)
        ts = runner.train_state
        rollout, batch, stats = self.collect(ts, runner.rollout, rollout_key)
        ts, metrics = self.algo.update(ts, batch, update_key)
        finite = all_finite(ts)
        metrics = {**metrics, "params_finite": finite, "episodes": stats.count,
                   "return_sum": stats.return_sum, "return_min": stats.return_min,
                   "return_max": stats.return_max,
                   "reward_mean": batch.reward.mean()}
        if self.spec.has_wins:
            metrics["win_sum"] = stats.win_count
        return Runner(ts, rollout, key, runner.updates + 1), metrics

    def _run_chunk(self, runner: Runner, num_updates: int):
        return jax.lax.scan(self._update, runner, None, length=num_updates)

    def _sharded_chunk(self, num_updates: int):
        """The chunk of K updates compiled for the device mesh (runner shardings in and out,
        replicated metrics)."""
        if num_updates not in self._sharded_chunks:
            chunk = jax.vmap(self._run_chunk, in_axes=(0, None))
            self._sharded_chunks[num_updates] = self.placement.jit(
                lambda runner: chunk(runner, num_updates), self.runner_shape, extra_out=True)
        return self._sharded_chunks[num_updates]

    def compile_chunk(self, runner: Runner, num_updates: int):
        """Ahead-of-time compile K updates for all seeds (so compile time is measured apart);
        returns a callable runner -> (runner, metrics)."""
        if self.placement.mesh is not None:
            return self._sharded_chunk(num_updates).lower(runner).compile()
        return self._chunk.lower(runner, num_updates).compile()

    def run_chunk(self, runner: Runner, num_updates: int):
        """K updates for all seeds: -> (runner, metrics dict of [S, K] arrays)."""
        if self.placement.mesh is not None:
            return self._sharded_chunk(num_updates)(runner)
        return self._chunk(runner, num_updates)

    def evaluation_returns(self, train_state, keys, episodes: int, deterministic: bool):
        """(returns, won) [S, episodes] of the first episode of ``episodes`` envs per seed."""
        return jax.jit(jax.vmap(lambda ts, key: episode_returns(
            self.team_env, self.algo, ts, key, episodes, deterministic)))(train_state, keys)

    def evaluate(self, runner: Runner, episodes: int) -> dict:
        """Evaluation episodes of every seed's current policy, apart from training: ->
        {"eval_return_det": [S], "eval_return_stoch": [S]} (means over ``episodes``), plus
        ``eval_win_rate_det`` / ``eval_win_rate_stoch`` for envs with wins.

        The keys are folded from each seed's key, never split off it, so evaluating does
        not change the training random stream (resumed runs stay bitwise identical).
        """
        if self._evaluate is None:
            def both(ts, key):
                det_key, stoch_key = jax.random.split(jax.random.fold_in(key, 0x5EED))
                run = partial(episode_returns, self.team_env, self.algo, ts, episodes=episodes)
                (det, det_won), (stoch, stoch_won) = (run(key=det_key, deterministic=True),
                                                      run(key=stoch_key, deterministic=False))
                return {"eval_return_det": jnp.nanmean(det),
                        "eval_return_stoch": jnp.nanmean(stoch),
                        "eval_win_rate_det": jnp.nanmean(det_won),
                        "eval_win_rate_stoch": jnp.nanmean(stoch_won)}

            replicated = ({} if self.placement.mesh is None
                          else {"out_shardings": self.placement.replicated})
            self._evaluate = jax.jit(jax.vmap(both), **replicated)
        result = self._evaluate(runner.train_state, runner.key)
        if not self.spec.has_wins:
            result = {k: v for k, v in result.items() if "win" not in k}
        return result
