"""HATRPO (Kuba et al. 2022): agents updated one after another in a random order; each takes
a trust-region step maximising E[r_i·M] (M = (Π_{earlier j} r_j^new)·Â) subject to
mean KL(π_i^old ‖ π_i) ≤ δ, by conjugate gradient on Fisher-vector products and a
backtracking line search. A rejected step leaves the agent unchanged and is counted."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from teamrl.algos.common import (ActorCriticConfig, OnPolicyActorCritic, critic_update,
                                 prepare_batch, random_permutation)
from teamrl.algos.sequential import actor_data, masked_mean, sequential_actor_update
from teamrl.config import option
from teamrl.core.trust_region import TrustRegionConfig, trust_region_step


@dataclass
class HATRPOConfig(ActorCriticConfig, TrustRegionConfig):
    share_actor: bool = option(False, "one actor shared by all agents (then one trust-region "
                               "step on all agents' data, as HARL does)")
    sequential: bool = option(True, "pass the earlier agents' ratio product on (false: the "
                              "simultaneous ablation, every agent against the old others)")


class HATRPO(OnPolicyActorCritic):
    config_class = HATRPOConfig
    central_critic = True
    line_search = True  # TNPG: False, the full natural-gradient step is always taken

    def agent_order(self, key, data) -> jax.Array:
        return random_permutation(key, self.spec.n_agents)

    def trust_region_agent_step(self, params, opt_state, d, factor, position, key, extra=None):
        """One agent's (or the shared actor's) trust-region step on its columns [B, K, ...]."""
        actor, alive = self.actor, d["alive"]
        outputs = lambda p: actor.module_outputs(p, d["obs"])  # logits or (mean, log std)
        old = jax.lax.stop_gradient(actor.wrap(outputs(params), d["avail"]))
        weighted_adv = factor * d["adv"]

        def objective(out):
            log_prob = actor.wrap(out, d["avail"]).log_prob(d["action"])
            ratio = jnp.exp(jnp.where(alive, log_prob - d["log_prob"], 0.0))
            return masked_mean(ratio * weighted_adv, alive)

        def kl(out):
            return masked_mean(old.kl(actor.wrap(out, d["avail"])), alive)

        fisher = None
        if self.cfg.fisher_subsample > 1:
            sub = jax.tree.map(lambda x: x[::self.cfg.fisher_subsample], d)
            old_sub = jax.tree.map(lambda x: x[::self.cfg.fisher_subsample], old)
            fisher = (lambda p: actor.module_outputs(p, sub["obs"]),
                      lambda out: masked_mean(old_sub.kl(actor.wrap(out, sub["avail"])),
                                              sub["alive"]))
        params, stats = trust_region_step(outputs, objective, kl, params, self.cfg,
                                          self.line_search, fisher)
        stats["rejections"] = 1.0 - stats.pop("accepted")
        stats["entropy"] = masked_mean(old.entropy(), alive)
        return params, opt_state, stats, extra

    def update(self, ts, batch, key):
        order_key, actor_key, critic_key = jax.random.split(key, 3)
        ts, data = prepare_batch(self, ts, batch)
        params, _, metrics, _, _ = sequential_actor_update(
            self.actor, self.cfg.share_actor, ts.actor_params, ts.actor_opt, actor_data(data),
            self.agent_order(order_key, data), actor_key, self.trust_region_agent_step,
            pass_factor=self.cfg.sequential)
        ts = ts.replace(actor_params=params)
        ts, critic_metrics = critic_update(self, ts, data, critic_key)
        rejections = metrics.pop("rejections").sum()
        return ts, {**jax.tree.map(jnp.mean, metrics), "rejections": rejections,
                    **critic_metrics}
