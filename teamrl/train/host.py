"""Training on host environments (MaMuJoCo, Gymnasium, PettingZoo, Football): each update is a
Python loop of T steps, the envs stepped by worker processes, then the same compiled update as
for compiled envs, vmapped over seeds."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from teamrl.config import Config
from teamrl.core.rollout import Batch, HostCollector
from teamrl.envs.spec import TeamObs
from teamrl.train.host_policy import numpy_policy
from teamrl.train.trainer import EPISODE_COUNT, EPISODE_SUM, Runner, Trainer, all_finite


class HostTrainer(Trainer):
    """Training on host environments: each update is a Python loop of T steps (one jitted
    action call per step, the envs stepped by worker processes) followed by the same
    compiled ``algo.update`` as for compiled envs, vmapped over seeds.

    The environments live outside the checkpoint: a resumed run restarts their episodes.
    """

    host_env = True

    def __init__(self, config: Config):
        super().__init__(config)

        def act(ts, obs, key):
            action, log_prob, _ = self.algo.act(ts, obs, key)
            return action, log_prob

        self._act = act
        self._collector = None
        self._split = jax.jit(jax.vmap(lambda k: jax.random.split(k, 3)))
        self._update_seeds = jax.jit(jax.vmap(self._host_update, in_axes=(0, 1, 0)))
        self._compiled_update = None
        self._evaluate = None
        self._eval_env = None

    @property
    def collector(self) -> HostCollector:
        """The training envs and their workers, started on first use (evaluation and
        rendering of a saved run need none)."""
        if self._collector is None:
            run = self.config.run
            policy = numpy_policy(self.algo) if run.host_act == "numpy" else None
            self._collector = HostCollector(self.team_env, self._act, run.seeds, run.num_envs,
                                            run.rollout_length, run.seed, numpy_policy=policy)
            self._collector.reset()
        return self._collector

    def _init_one(self, key) -> Runner:
        init_key, _, key = jax.random.split(key, 3)  # same key use as compiled envs
        return Runner(self.algo.init(init_key), None, key, jnp.int32(0))

    def host_batch(self, ts, arrays) -> Batch:
        """One seed's Batch from its rollout arrays ([T, E, ...] each, as collected): the
        critic is evaluated once over the observations and the final observations."""
        obs, final_obs, action, log_prob, reward, terminated, truncated = arrays
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), obs, final_obs)
        value, next_value = jnp.split(self.algo.values(ts, both), 2)
        return Batch(obs=obs, action=action, log_prob=log_prob, value=value,
                     next_value=next_value, reward=reward, terminated=terminated,
                     truncated=truncated, next_obs=final_obs)

    def _host_update(self, ts, arrays, update_key):
        """One seed's update from its rollout arrays ([T, E, ...] each)."""
        reward = arrays[4]
        ts, metrics = self.algo.update(ts, self.host_batch(ts, arrays), update_key)
        finite = all_finite(ts)
        return ts, {**metrics, "params_finite": finite, "reward_mean": reward.mean()}

    def _seed_major(self, arrays):
        """[T, S·E, ...] -> [T, S, E, ...] views, the layout ``_update_seeds`` maps over."""
        S, E = self.config.run.seeds, self.config.run.num_envs
        return jax.tree.map(lambda x: x.reshape(x.shape[:1] + (S, E) + x.shape[2:]), arrays)

    def _one_update(self, runner: Runner):
        import time

        import numpy as np

        keys = self._split(runner.key)
        next_key, rollout_key, update_key = keys[:, 0], keys[:, 1], keys[:, 2]
        arrays, stats = self.collector.collect(runner.train_state, rollout_key)
        t0 = time.perf_counter()
        update = self._compiled_update or self._update_seeds
        ts, metrics = update(runner.train_state, self._seed_major(arrays), update_key)
        metrics = jax.tree.map(np.asarray, metrics)
        self.collector.timings["update"] = (self.collector.timings.get("update", 0.0)
                                            + time.perf_counter() - t0)
        metrics.update(episodes=stats.count, return_sum=stats.return_sum,
                       return_min=stats.return_min, return_max=stats.return_max)
        if self.spec.has_wins:
            metrics["win_sum"] = stats.win_count
        for k, name in enumerate(self.spec.episode_metrics):
            metrics[EPISODE_SUM + name] = stats.metric_sum[:, k]
            metrics[EPISODE_COUNT + name] = stats.metric_count[:, k]
        return Runner(ts, None, next_key, runner.updates + 1), metrics

    def compile_chunk(self, runner: Runner, num_updates: int):
        """Compile the update ahead of time (the action function compiles on its first call);
        returns runner -> (runner, metrics dict of [S, K] arrays)."""
        if self._compiled_update is None:
            c = self.collector
            arrays = (c.obs, c.final_obs, c.action, c.log_prob, c.reward, c.terminated,
                      c.truncated)
            keys = self._split(runner.key)[:, 2]
            self._compiled_update = self._update_seeds.lower(
                runner.train_state, self._seed_major(arrays), keys).compile()
        return lambda r: self.run_chunk(r, num_updates)

    def run_chunk(self, runner: Runner, num_updates: int):
        import numpy as np

        rows = []
        for _ in range(num_updates):
            runner, metrics = self._one_update(runner)
            rows.append(metrics)
        stacked = {name: np.stack([m[name] for m in rows], axis=1) for name in rows[0]}
        return runner, stacked

    def evaluation_returns(self, train_state, keys, episodes: int, deterministic: bool):
        """(returns, won) [S, episodes] of the first episode of ``episodes`` fresh host envs
        per seed (fixed start seeds, apart from the training envs). ``won`` is the env's
        "won" metric (0 for envs without one). The first episodes' other metrics are left in
        ``self.last_eval_metrics`` ({name: [S, episodes]})."""
        import numpy as np

        S = self.config.run.seeds
        if self._eval_env is None or self._eval_env.num_envs != S * episodes:
            if self._eval_env is not None:
                self._eval_env.close()
            self._eval_env = self.team_env.vector(S * episodes)
        if self._evaluate is None:
            # The step's key is folded in inside the compiled call (no per-step tracing).
            self._evaluate = jax.jit(jax.vmap(
                lambda ts, obs, key, t, det: self.algo.policy_action(
                    ts, obs, jax.random.fold_in(key, t), det),
                in_axes=(0, 0, 0, None, None)), static_argnums=4)
        vec = self._eval_env
        vec.reset([2**30 + (self.config.run.seed + s) * 100_003 + e
                   for s in range(S) for e in range(episodes)])
        names = vec.layout.metric_names
        running = np.zeros(S * episodes)
        final = np.full(S * episodes, np.nan)
        metrics = np.full((S * episodes, max(len(names), 1)), np.nan)
        limit = self.spec.max_steps or 100_000
        for t in range(limit):
            obs = vec.observation()
            obs = TeamObs(*(x.reshape((S, episodes) + x.shape[1:]) for x in obs))
            action = np.asarray(self._evaluate(train_state, obs, keys, np.int32(t),
                                               deterministic))
            vec.step(action.reshape((S * episodes,) + action.shape[2:]))
            b = vec.buffers
            running += b.reward
            done = (b.terminated | b.truncated) & np.isnan(final)
            final[done] = running[done]
            metrics[done] = b.episode_metrics[done]
            if not np.isnan(final).any():
                break
        self.last_eval_metrics = {n: metrics[:, k].reshape(S, episodes)
                                  for k, n in enumerate(names)}
        won = (self.last_eval_metrics.pop("won") if "won" in names
               else np.where(np.isnan(final), np.nan, 0.0).reshape(S, episodes))
        return final.reshape(S, episodes), won

    def evaluate(self, runner: Runner, episodes: int) -> dict:
        import numpy as np

        keys = jax.vmap(lambda k: jax.random.fold_in(k, 0x5EED))(runner.key)
        det_keys, stoch_keys = (jax.vmap(lambda k: jax.random.split(k)[i])(keys)
                                for i in (0, 1))
        result = {}
        for suffix, keys, deterministic in (("det", det_keys, True),
                                            ("stoch", stoch_keys, False)):
            returns, won = self.evaluation_returns(runner.train_state, keys, episodes,
                                                   deterministic)
            result[f"eval_return_{suffix}"] = np.nanmean(returns, axis=1)
            if self.spec.has_wins:
                result[f"eval_win_rate_{suffix}"] = np.nanmean(won, axis=1)
            for name, values in self.last_eval_metrics.items():
                result[f"eval_{name}_{suffix}"] = _nanmean_rows(values)
        return result

    def close(self) -> None:
        if self._collector is not None:
            self._collector.close()
        if self._eval_env is not None:
            self._eval_env.close()


def _nanmean_rows(values):
    """Row means ignoring NaN ([S, episodes] -> [S]; NaN for rows with no defined value)."""
    import numpy as np

    defined = ~np.isnan(values)
    counts = defined.sum(axis=1)
    return np.where(counts > 0, np.where(defined, values, 0.0).sum(axis=1)
                    / np.maximum(counts, 1), np.nan)
