"""A2PO (Wang et al. 2023, agent-by-agent policy optimisation): agents updated one after
another in a semi-greedy order; the k-th agent maximises PPO's clipped objective of
r̃ = r_i·clip(Π_{earlier j} r_j, 1±ε_others) (product detached) with an adaptive clip
ε_k = ε·(0.5 + 0.5·k/n), on an advantage recomputed by preceding-agent off-policy correction:
GAE whose continuation is weighted by c_t = min(1, Π_{earlier j} r_j(t)).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from teamrl.core.advantages import corrected_gae
from teamrl.algos.common import (OnPolicyActorCritic, PPOConfig, critic_update,
                                 from_sequences, normalise_advantages, random_permutation,
                                 recurrent_data, to_sequences)
from teamrl.algos.sequential import actor_data, ppo_agent_step, sequential_actor_update
from teamrl.config import option


@dataclass
class A2POConfig(PPOConfig):
    share_actor: bool = option(False, "one actor shared by all agents (then updated once on "
                               "all agents' data)")
    clip_others: float = option(0.1, "clip of the earlier agents' ratio product (eps_others)",
                                low=0.0, low_open=True)
    adaptive_clip: bool = option(True, "clip eps_k = eps*(0.5 + 0.5*k/n) for the k-th agent")
    correction: bool = option(True, "preceding-agent off-policy correction of the advantage")
    critic_refit: bool = option(False, "two-stage: refit the critic on each agent's corrected "
                                "returns before its actor pass")
    order: str = option("semi_greedy", "agent order: semi_greedy (A2PO) or random",
                        choices=["semi_greedy", "random"])


def semi_greedy_order(scores: jax.Array, key: jax.Array) -> jax.Array:
    """[N] agent order: alternately the best-scoring remaining agent and a uniformly random
    remaining one (positions 0, 2, 4, ... greedy; 1, 3, ... random)."""
    n = scores.shape[0]

    def pick(remaining, xs):
        position, pick_key = xs
        best = jnp.argmax(jnp.where(remaining, scores, -jnp.inf))
        random = jax.random.categorical(pick_key, jnp.where(remaining, 0.0, -jnp.inf))
        agent = jnp.where(position % 2 == 0, best, random)
        return remaining.at[agent].set(False), agent.astype(jnp.int32)

    _, order = jax.lax.scan(pick, jnp.ones((n,), bool),
                            (jnp.arange(n), jax.random.split(key, n)))
    return order


def adaptive_clip(eps: float, position: jax.Array, n_agents: int) -> jax.Array:
    """ε_k = ε·(0.5 + 0.5·k/n) for the k-th updated agent, k = position + 1 (1..n)."""
    return eps * (0.5 + 0.5 * (position + 1) / n_agents)


class A2PO(OnPolicyActorCritic):
    config_class = A2POConfig
    central_critic = True

    @property
    def refits(self) -> bool:
        """Two-stage A2PO in effect: the critic is refitted before each agent's actor pass
        (and not updated after them)."""
        cfg = self.cfg
        return cfg.critic_refit and cfg.correction and not cfg.share_actor

    def critic_passes(self) -> int:
        # The refit runs the critic's epochs once per agent, N passes per update.
        return self.spec.n_agents if self.refits else 1

    def surrogate(self, ratio, factor, adv, position):
        cfg = self.cfg
        # A shared actor is updated once for all agents: no position, the plain clip.
        adaptive = cfg.adaptive_clip and not cfg.share_actor
        eps = (adaptive_clip(cfg.clip_eps, position, self.spec.n_agents) if adaptive
               else cfg.clip_eps)
        # The factor arrives detached; clipping it bounds how far earlier agents' updates can
        # reweight this agent's samples.
        joint = ratio * jnp.clip(factor, 1.0 - cfg.clip_others, 1.0 + cfg.clip_others)
        return jnp.minimum(joint * adv, jnp.clip(joint, 1.0 - eps, 1.0 + eps) * adv)

    def agent_order(self, key, adv_raw, value_raw, alive) -> jax.Array:
        """Semi-greedy (A2PO): score_i = mean_t |Â_i(t) / V_i(t)| over alive samples, or a
        random permutation. With a centralised critic the scores tie; ties break at random."""
        score_key, order_key = jax.random.split(key)
        if self.cfg.order == "random":
            return random_permutation(order_key, self.spec.n_agents)
        ratio = jnp.abs(adv_raw / jnp.where(jnp.abs(value_raw) > 1e-6, value_raw, 1e-6))
        m = alive.astype(ratio.dtype)
        scores = (ratio * m).sum((0, 1)) / jnp.maximum(m.sum((0, 1)), 1.0)
        # A relative jitter far below any real score difference breaks exact ties.
        jitter = 1e-6 * jax.random.uniform(score_key, scores.shape) * (1.0 + jnp.abs(scores))
        return semi_greedy_order(scores + jitter, order_key)

    def update(self, ts, batch, key):
        cfg = self.cfg
        order_key, actor_key, critic_key = jax.random.split(key, 3)
        steps, envs = batch.reward.shape
        # [T, E, ...] <-> [B, ...]: time-major, or sequence-major chunks for recurrent nets.
        if self.recurrent:
            flat_arr = lambda x: to_sequences(x, self.net.chunk_length)
            unflat = lambda x: from_sequences(x, steps, self.net.chunk_length)
        else:
            flat_arr = lambda x: x.reshape((steps * envs,) + x.shape[2:])
            unflat = lambda x: x.reshape((steps, envs) + x.shape[1:])
        old_norm = ts.value_norm
        value_raw = old_norm.denormalise(batch.value)            # [T, E, N]
        next_value_raw = old_norm.denormalise(batch.next_value)  # [T, E, N]
        adv_raw, target, value_norm = self.advantages_and_targets(ts, batch)
        ts = ts.replace(value_norm=value_norm)
        alive = batch.obs.alive
        adv = normalise_advantages(adv_raw, alive) if cfg.adv_norm else adv_raw
        order = self.agent_order(order_key, adv_raw, value_raw, alive)
        full = {"obs": batch.obs, "action": batch.action, "log_prob": batch.log_prob,
                "adv": adv, "value": batch.value, "target": target, "value_raw": value_raw,
                "next_value_raw": next_value_raw}
        full = (recurrent_data(self, batch, full) if self.recurrent
                else jax.tree.map(flat_arr, full))
        critic_data = {k: full[k] for k in ("obs", "value", "target", "critic_in") if k in full}
        data = {**actor_data(full), "value_raw": full["value_raw"],
                "next_value_raw": full["next_value_raw"]}
        ppo_step = ppo_agent_step(self.actor, self.actor_tx.tx, cfg, self.surrogate)

        def corrected_advantage(value, next_value, factor, alive_k):
            """[B, K] advantage of this agent with the earlier agents' truncated weights."""
            trace = jnp.minimum(1.0, unflat(factor))  # [T, E, 1]
            adv_k, returns_k = corrected_gae(batch.reward, unflat(value), unflat(next_value),
                                             batch.terminated, batch.truncated, trace,
                                             cfg.gamma, cfg.gae_lambda)
            adv_k = normalise_advantages(adv_k, unflat(alive_k)) if cfg.adv_norm else adv_k
            return flat_arr(adv_k), flat_arr(returns_k)

        def agent_step(params, opt, d, factor, position, key, ts):
            if cfg.correction and not cfg.share_actor:
                value, next_value = d["value_raw"], d["next_value_raw"]
                adv_k, returns_k = corrected_advantage(value, next_value, factor, d["alive"])
                if self.refits:
                    ts, value, next_value = self.refit_critic(
                        ts, critic_data, returns_k, order[position], key, flat_arr, unflat,
                        next_value, batch)
                    adv_k, _ = corrected_advantage(value, next_value, factor, d["alive"])
                d = {**d, "adv": adv_k}
            params, opt, metrics, _ = ppo_step(params, opt, d, factor, position, key)
            return params, opt, metrics, ts

        params, opt, metrics, _, ts = sequential_actor_update(
            self.actor, cfg.share_actor, ts.actor_params, ts.actor_opt, data, order, actor_key,
            agent_step, extra=ts)
        ts = ts.replace(actor_params=params, actor_opt=opt)
        metrics = jax.tree.map(jnp.mean, metrics)
        if not self.refits:
            ts, critic_metrics = critic_update(self, ts, critic_data, critic_key)
            metrics = {**metrics, **critic_metrics}
        return ts, metrics

    def refit_critic(self, ts, critic_data, returns_k, agent, key, flat_arr, unflat,
                     next_value, batch):
        """Two-stage A2PO: fit the (centralised) critic to this agent's corrected returns on
        this agent's samples alone (as the A2PO code's critic pass over the updated block),
        then re-evaluate the agent's values with it. Within the rollout V(s_{t+1}) is the
        refitted critic at the next step; where the episode ended or the rollout stops, the
        stored bootstrap is kept (the observation reached there is not in the batch)."""
        own = self.agent_critic_data(critic_data, agent)
        target = ts.value_norm.normalise(returns_k)                     # [B, 1]
        ts, _ = critic_update(self, ts, {**own, "target": target}, key)
        fresh = self.critic_values(ts.critic_params, own)[:, :1]
        fresh = ts.value_norm.denormalise(fresh)                        # [B, 1]
        shifted = jnp.concatenate([unflat(fresh)[1:], unflat(next_value)[-1:]])
        continues = ~(batch.terminated | batch.truncated)[..., None]
        next_fresh = flat_arr(jnp.where(continues, shifted, unflat(next_value)))
        return ts, fresh, next_fresh

    def agent_critic_data(self, critic_data: dict, agent: jax.Array) -> dict:
        """Agent ``agent``'s critic samples: {"critic_in": its input, "value": [B, 1]}. An
        agent-specific (or local) input keeps the agent's column only, so the refit costs one
        agent's forward passes, not N; the world state, shared by all agents, stays whole."""
        take = lambda x: jax.lax.dynamic_index_in_dim(x, agent, axis=1, keepdims=True)
        features = (critic_data["critic_in"] if "critic_in" in critic_data
                    else self.critic.features(critic_data["obs"]))
        if self.critic.per_agent_input:
            features = jax.tree.map(take, features)
        return {"critic_in": features, "value": take(critic_data["value"])}
