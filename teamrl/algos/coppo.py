"""CoPPO (Wu et al. 2021, coordinated PPO): simultaneous updates on the joint ratio with double
clipping. For agent i: surr1 = (Π_j r_j)·Â, surr2 = clip(r_i·clip(Π_{j≠i} r_j, 1±ε_in),
1±ε_out)·Â, maximise min(surr1, surr2); the other agents' ratios are constants in agent i's
gradient (each agent improves its own policy given the others' current update)."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from teamrl.algos.common import OnPolicyActorCritic, PPOConfig, ppo_update
from teamrl.config import option


@dataclass
class CoPPOConfig(PPOConfig):
    share_actor: bool = option(False, "one actor shared by all agents (with agent ids)")
    clip_eps: float = option(0.2, "outer clip eps_out of agent i's joint ratio", low=0.0,
                             low_open=True)
    clip_inner: float = option(0.1, "inner clip eps_in of the other agents' ratio product",
                               low=0.0, low_open=True)


def coppo_surrogate(log_ratio, adv, alive, eps_in: float, eps_out: float):
    """[B, N] CoPPO objective per agent from log ratios [B, N] (0 for dead agents)."""
    del alive  # dead agents have log ratio 0: they contribute a factor of 1
    total = log_ratio.sum(-1, keepdims=True)
    others = jax.lax.stop_gradient(total - log_ratio)  # log Π_{j≠i} r_j, constant for agent i
    joint = jnp.exp(log_ratio + others)
    inner = jnp.exp(log_ratio) * jnp.clip(jnp.exp(others), 1.0 - eps_in, 1.0 + eps_in)
    return jnp.minimum(joint * adv, jnp.clip(inner, 1.0 - eps_out, 1.0 + eps_out) * adv)


class CoPPO(OnPolicyActorCritic):
    config_class = CoPPOConfig
    central_critic = True

    def update(self, ts, batch, key):
        cfg = self.cfg
        surrogate = lambda log_ratio, adv, alive: coppo_surrogate(
            log_ratio, adv, alive, cfg.clip_inner, cfg.clip_eps)
        return ppo_update(self, ts, batch, key, surrogate=surrogate)
