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
    """Training on host environments: each update is a Python loop of T steps (one action
    call per step, the envs stepped by worker processes) followed by the same compiled
    ``algo.update`` as for compiled envs.

    Each seed has its own envs and workers, and its update is its own compiled call, so a
    seed's results do not depend on how many seeds share the run. With ``host_overlap`` on
    (the default with 2 or more seeds) the updates are dispatched without waiting: while one
    seed's update computes, the next seed's envs step, so the env workers and XLA keep both
    cores busy. Every seed still acts with its own newest parameters, so the results are
    identical to ``host_overlap=false``, which waits for each update before going on.

    The environments live outside the checkpoint: a resumed run restarts their episodes.
    """

    host_env = True

    def __init__(self, config: Config):
        super().__init__(config)

        def act(ts, obs, key):
            action, log_prob, _ = self.algo.act(ts, obs, key)
            return action, log_prob

        self._act = act
        self._collectors = None
        self._split = jax.jit(jax.vmap(lambda k: jax.random.split(k, 3)))
        # One seed's update, with a seed axis of 1 (the layout of a one-seed run).
        self._update_seed = jax.jit(jax.vmap(self._host_update, in_axes=(0, 1, 0)))
        self._compiled_update = None
        self._evaluate = None
        self._eval_env = None
        self._update_time = 0.0
        run = config.run
        self.overlap = run.host_overlap == "true" or (run.host_overlap == "auto"
                                                      and run.seeds > 1)

    @property
    def collectors(self) -> list[HostCollector]:
        """Each seed's training envs and their workers, started on first use (evaluation and
        rendering of a saved run need none)."""
        if self._collectors is None:
            run = self.config.run
            policy = numpy_policy(self.algo) if run.host_act == "numpy" else None
            self._collectors = []
            for s in range(run.seeds):
                collector = HostCollector(self.team_env, self._act, 1, run.num_envs,
                                          run.rollout_length, run.seed + s,
                                          numpy_policy=policy)
                self._collectors.append(collector)
                collector.reset()
        return self._collectors

    @property
    def timings(self) -> dict:
        """Seconds spent so far: ``rollout`` (stepping the envs, actions included), ``act``
        (the action calls) and ``update`` (the compiled updates, or with ``host_overlap`` the
        time spent waiting for them)."""
        totals = {"rollout": 0.0, "act": 0.0}
        for collector in self._collectors or ():
            for name in totals:
                totals[name] += collector.timings[name]
        return {**totals, "update": self._update_time}

    def reset_timings(self) -> None:
        for collector in self._collectors or ():
            for name in collector.timings:
                collector.timings[name] = 0.0
        self._update_time = 0.0

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

    @staticmethod
    def _seed_major(arrays):
        """One seed's [T, E, ...] rollout arrays -> [T, 1, E, ...] views (its seed axis)."""
        return jax.tree.map(lambda x: x.reshape(x.shape[:1] + (1,) + x.shape[1:]), arrays)

    def compile_chunk(self, runner: Runner, num_updates: int):
        """Compile the update ahead of time (the action function compiles on its first call);
        returns runner -> (runner, metrics dict of [S, K] arrays)."""
        if self._compiled_update is None:
            c = self.collectors[0]
            arrays = (c.obs, c.final_obs, c.action, c.log_prob, c.reward, c.terminated,
                      c.truncated)
            keys = self._split(runner.key)[:1, 2]
            one_seed = jax.tree.map(lambda x: x[:1], runner.train_state)
            self._compiled_update = self._update_seed.lower(
                one_seed, self._seed_major(arrays), keys).compile()
        return lambda r: self.run_chunk(r, num_updates)

    def run_chunk(self, runner: Runner, num_updates: int):
        """K updates of every seed: -> (runner, metrics dict of [S, K] arrays). Seed s's
        rollout waits for seed s's previous update only (with ``host_overlap``)."""
        import time

        import numpy as np

        S = self.config.run.seeds
        update = self._compiled_update or self._update_seed
        states = [jax.tree.map(lambda x: x[s:s + 1], runner.train_state) for s in range(S)]
        key = runner.key
        pending = []  # per update: [(metrics of seed s, its episode stats)], not yet fetched
        for _ in range(num_updates):
            keys = np.asarray(self._split(key))  # [S, 3, 2]: next, rollout, update
            key = keys[:, 0]
            seeds = []
            for s, collector in enumerate(self.collectors):
                t0 = time.perf_counter()
                # Its last update done (it read the buffers this rollout will overwrite).
                jax.block_until_ready(states[s])
                self._update_time += time.perf_counter() - t0
                arrays, stats = collector.collect(states[s], keys[s:s + 1, 1])
                t0 = time.perf_counter()
                states[s], metrics = update(states[s], self._seed_major(arrays),
                                            keys[s:s + 1, 2])
                if not self.overlap:
                    jax.block_until_ready(states[s])
                self._update_time += time.perf_counter() - t0
                seeds.append((metrics, stats))
            pending.append(seeds)
        t0 = time.perf_counter()
        rows = [self._metrics_row(seeds) for seeds in pending]
        train_state = jax.tree.map(lambda *xs: jnp.concatenate(xs), *states)
        self._update_time += time.perf_counter() - t0
        stacked = {name: np.stack([row[name] for row in rows], axis=1) for name in rows[0]}
        return Runner(train_state, None, key, runner.updates + num_updates), stacked

    def _metrics_row(self, seeds) -> dict:
        """One update's metrics of every seed ({name: [S]}) from each seed's update metrics
        and episode stats."""
        import numpy as np

        metrics = {name: np.concatenate([np.asarray(m[name]) for m, _ in seeds])
                   for name in seeds[0][0]}
        stat = lambda name: np.concatenate([getattr(st, name) for _, st in seeds])
        metrics.update(episodes=stat("count"), return_sum=stat("return_sum"),
                       return_min=stat("return_min"), return_max=stat("return_max"))
        if self.spec.has_wins:
            metrics["win_sum"] = stat("win_count")
        metric_sum, metric_count = stat("metric_sum"), stat("metric_count")
        for k, name in enumerate(self.spec.episode_metrics):
            metrics[EPISODE_SUM + name] = metric_sum[:, k]
            metrics[EPISODE_COUNT + name] = metric_count[:, k]
        return metrics

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
        for collector in self._collectors or ():
            collector.close()
        if self._eval_env is not None:
            self._eval_env.close()


def _nanmean_rows(values):
    """Row means ignoring NaN ([S, episodes] -> [S]; NaN for rows with no defined value)."""
    import numpy as np

    defined = ~np.isnan(values)
    counts = defined.sum(axis=1)
    return np.where(counts > 0, np.where(defined, values, 0.0).sum(axis=1)
                    / np.maximum(counts, 1), np.nan)
