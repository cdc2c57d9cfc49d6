"""HAPPO (Kuba et al. 2022): PPO agents updated one after another in a random order; each
maximises min(r_i·M, clip(r_i, 1±ε)·M) with M = (Π_{earlier j} r_j^new)·Â, a centralised
critic V(s) providing Â."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from teamrl.algos.common import (OnPolicyActorCritic, PPOConfig, clipped_surrogate,
                                 critic_update, prepare_batch, random_permutation)
from teamrl.algos.sequential import actor_data, ppo_agent_step, sequential_actor_update
from teamrl.config import option


@dataclass
class HAPPOConfig(PPOConfig):
    share_actor: bool = option(False, "one actor shared by all agents (then updated once on "
                               "all agents' data, as HARL does)")
    factor_clip: str = option("outside", "where the earlier agents' ratio product M enters: "
                              "outside the clip (HARL) or inside, clipping r_i*M (A2PO code)",
                              choices=["outside", "inside"])
    sequential: bool = option(True, "pass the earlier agents' ratio product on (false: the "
                              "simultaneous ablation, every agent against the old others)")


class HAPPO(OnPolicyActorCritic):
    config_class = HAPPOConfig
    central_critic = True

    def surrogate(self, ratio, factor, adv, position):
        eps = self.cfg.clip_eps
        if self.cfg.factor_clip == "outside":
            return clipped_surrogate(ratio, factor * adv, eps)
        joint = ratio * factor
        return jnp.minimum(joint * adv, jnp.clip(joint, 1.0 - eps, 1.0 + eps) * adv)

    def agent_order(self, key, data) -> jax.Array:
        """[N] a uniformly random permutation, drawn afresh every update."""
        return random_permutation(key, self.spec.n_agents)

    def update(self, ts, batch, key):
        order_key, actor_key, critic_key = jax.random.split(key, 3)
        ts, data = prepare_batch(self, ts, batch)
        step = ppo_agent_step(self.actor, self.actor_tx.tx, self.cfg, self.surrogate)
        params, opt, metrics, _, _ = sequential_actor_update(
            self.actor, self.cfg.share_actor, ts.actor_params, ts.actor_opt, actor_data(data),
            self.agent_order(order_key, data), actor_key, step,
            pass_factor=self.cfg.sequential)
        ts = ts.replace(actor_params=params, actor_opt=opt)
        ts, critic_metrics = critic_update(self, ts, data, critic_key)
        return ts, {**jax.tree.map(jnp.mean, metrics), **critic_metrics}
