"""DPO (Su & Lu 2022, decentralised policy optimisation): simultaneous, fully decentralised
updates. Agent i minimises, with a local critic V_i(o_i) providing Â_i and no clipping,

    −E[r_i·Â_i] / (N if divide_by_n) + β_sqrt·E[√KL_i] + β_kl·E[KL_i] − c_ent·E[H(π_i)]

where KL_i = KL(π_i^old(·|o_i) ‖ π_i(·|o_i)) per sample, computed exactly from the two
distributions (not estimated from the ratio), and √KL_i = √(max(KL_i, 0) + 1e-8) per sample
(the epsilon keeps the gradient finite where the policy has not moved yet). Expectations are
over the agent's alive samples. The old distribution is evaluated once per update, at the
rollout parameters, and carried with the minibatches.

The 1/N factor. In the paper's decentralised surrogate agent i maximises
(1/N)·L_i(π_i) − M̂·√D_KL(π_i^old‖π_i) − Ĉ·D_KL(π_i^old‖π_i): the 1/N sits on the
policy-improvement term L_i = E[r_i·Â_i] (the authors' code switch ``dpo_policy_div_agent_num``
divides exactly that term by N), i.e. relative to the advantage the KL penalties are N times
stronger than without it. ``divide_by_n=true`` reproduces it (same minimiser as multiplying
β_sqrt, β_kl and the entropy coefficient by N). Off by default, as in the authors' code: the
adaptive rule rescales the β by 2x per update anyway, so a constant factor is absorbed within
about log2(N) updates unless a bound is hit, and the [1e-3, 1e3] bounds are the code's, set
without the factor.

Adaptive coefficients (the authors' rule). After each update (all epochs) the measured terms
are the mean KL and mean √KL over the batch's alive samples between the rollout policy and the
updated one; with target d (``kl_target``) for KL and √d for √KL, a β is halved when its term is
below target/1.5, doubled when above 1.5·target, kept otherwise (thresholds included), then
clipped to [beta_min, beta_max]. ``coef_per_agent=false`` (the authors' default) measures the
mean over agents of the per-agent terms and moves every agent's β together; ``true`` adapts each
agent's β on its own terms. The coefficients live in ``TrainState.algo_state`` ([N] each, equal
entries when shared), so checkpoints carry and resume them.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from teamrl.algos.common import (ActorCriticConfig, OnPolicyActorCritic, actor_critic_step,
                                 masked_agent_mean, prepare_batch, run_epochs)
from teamrl.config import ConfigError, option

SQRT_EPS = 1e-8


@dataclass
class DPOConfig(ActorCriticConfig):
    """DPO's actors: Adam on the KL-penalised surrogate, adaptive penalty coefficients."""

    epochs: int = option(15, "passes over each batch", low=1)
    lr: float = option(5e-4, "actor learning rate", low=0.0, low_open=True)
    ent_coef: float = option(0.01, "entropy bonus coefficient", low=0.0)
    share_actor: bool = option(False, "one actor (and local critic) shared by all agents")
    central_critic: bool = option(False, "centralised critic V(s) instead of DPO's local "
                                  "critics V_i(o_i)")
    kl_target: float = option(0.01, "target d of the mean KL per update (sqrt(d) for the mean "
                              "sqrt KL)", low=0.0, low_open=True)
    beta_kl_init: float = option(1.0, "initial KL coefficient beta_kl", low=0.0, low_open=True)
    beta_sqrt_init: float = option(1.0, "initial sqrt-KL coefficient beta_sqrt", low=0.0,
                                   low_open=True)
    adaptive: bool = option(True, "adapt beta_kl and beta_sqrt after each update (else fixed)")
    adapt_tolerance: float = option(1.5, "adapt when a measured term leaves "
                                    "[target/tol, target*tol]", low=1.0)
    adapt_factor: float = option(2.0, "a beta is multiplied or divided by this factor", low=1.0)
    beta_min: float = option(1e-3, "lower bound of both coefficients", low=0.0, low_open=True)
    beta_max: float = option(1e3, "upper bound of both coefficients", low=0.0, low_open=True)
    coef_per_agent: bool = option(False, "one pair of coefficients per agent, adapted on its "
                                  "own KL (else one shared pair, on the mean over agents)")
    divide_by_n: bool = option(False, "divide the policy term E[r_i*A_i] by N, the paper's 1/N "
                               "(= betas and ent_coef times N)")

    def check(self):
        if self.beta_min > self.beta_max:
            raise ConfigError(f"beta_min={self.beta_min!r} must be <= beta_max={self.beta_max!r}")
        for name in ("beta_kl_init", "beta_sqrt_init"):  # adapted within the bounds only
            if not self.beta_min <= getattr(self, name) <= self.beta_max:
                raise ConfigError(f"{name}={getattr(self, name)!r} must lie in [beta_min, "
                                  f"beta_max] = [{self.beta_min!r}, {self.beta_max!r}]")


def sqrt_kl(kl: jax.Array) -> jax.Array:
    """Per-sample √KL with a small epsilon inside (finite gradient at KL = 0)."""
    return jnp.sqrt(jnp.maximum(kl, 0.0) + SQRT_EPS)


def dpo_agent_losses(new_dist, old_dist, log_ratio, adv, alive, beta_kl, beta_sqrt,
                     ent_coef: float, n_divisor: float = 1.0):
    """Per-agent DPO loss [N] and its terms ([N] each) on samples [B, N].

    ``log_ratio`` is 0 for dead agents; ``beta_*`` are [N] (or scalars), treated as constants.
    """
    kl = old_dist.kl(new_dist)
    terms = {"policy": masked_agent_mean(jnp.exp(log_ratio) * adv, alive),
             "kl": masked_agent_mean(kl, alive),
             "sqrt_kl": masked_agent_mean(sqrt_kl(kl), alive),
             "entropy": masked_agent_mean(new_dist.entropy(), alive)}
    beta_kl, beta_sqrt = jax.lax.stop_gradient((beta_kl, beta_sqrt))
    loss = (-terms["policy"] / n_divisor + beta_sqrt * terms["sqrt_kl"] + beta_kl * terms["kl"]
            - ent_coef * terms["entropy"])
    return loss, terms


def adapt_coefficient(beta, measured, target: float, tolerance: float, factor: float,
                      low: float, high: float):
    """The authors' rule: halve (÷factor) below target/tolerance, double (×factor) above
    target·tolerance, keep otherwise (the thresholds themselves keep); clip to [low, high]."""
    beta = jnp.where(measured < target / tolerance, beta / factor,
                     jnp.where(measured > target * tolerance, beta * factor, beta))
    return jnp.clip(beta, low, high)


class DPO(OnPolicyActorCritic):
    config_class = DPOConfig
    central_critic = False

    def __init__(self, spec, cfg: DPOConfig, net, total_updates: int):
        self.central_critic = cfg.central_critic
        super().__init__(spec, cfg, net, total_updates)

    def init_algo_state(self):
        n, cfg = self.spec.n_agents, self.cfg
        return {"beta_kl": jnp.full((n,), cfg.beta_kl_init, jnp.float32),
                "beta_sqrt": jnp.full((n,), cfg.beta_sqrt_init, jnp.float32)}

    def measured_terms(self, old_dist, new_dist, alive) -> tuple[jax.Array, jax.Array]:
        """The adaptive rule's inputs: mean KL(old ‖ new) and mean √KL [N] over the alive
        samples [B, N], per agent, or their mean over agents (broadcast to [N]) when the
        coefficients are shared."""
        kl = old_dist.kl(new_dist)
        kl_term = masked_agent_mean(kl, alive)
        sqrt_term = masked_agent_mean(sqrt_kl(kl), alive)
        if not self.cfg.coef_per_agent:
            kl_term = jnp.broadcast_to(kl_term.mean(), kl_term.shape)
            sqrt_term = jnp.broadcast_to(sqrt_term.mean(), sqrt_term.shape)
        return kl_term, sqrt_term

    def adapt(self, betas: dict, kl_term: jax.Array, sqrt_term: jax.Array) -> dict:
        cfg = self.cfg
        if not cfg.adaptive:
            return betas
        rule = dict(tolerance=cfg.adapt_tolerance, factor=cfg.adapt_factor, low=cfg.beta_min,
                    high=cfg.beta_max)
        return {"beta_kl": adapt_coefficient(betas["beta_kl"], kl_term, cfg.kl_target, **rule),
                "beta_sqrt": adapt_coefficient(betas["beta_sqrt"], sqrt_term,
                                               cfg.kl_target ** 0.5, **rule)}

    def update(self, ts, batch, key):
        cfg = self.cfg
        ts, data = prepare_batch(self, ts, batch)
        obs = data["obs"]
        data["old_dist"] = jax.lax.stop_gradient(
            self.actor.distribution(ts.actor_params, obs.obs, obs.avail))
        betas = ts.algo_state
        n_divisor = float(self.spec.n_agents) if cfg.divide_by_n else 1.0

        def actor_loss_fn(params, mb):
            dist = self.actor.distribution(params, mb["obs"].obs, mb["obs"].avail)
            alive = mb["obs"].alive
            log_ratio = jnp.where(alive, dist.log_prob(mb["action"]) - mb["log_prob"], 0.0)
            per_agent, terms = dpo_agent_losses(dist, mb["old_dist"], log_ratio, mb["adv"],
                                                alive, betas["beta_kl"], betas["beta_sqrt"],
                                                cfg.ent_coef, n_divisor)
            return self.agent_reduce(per_agent, shared=cfg.share_actor), {
                "entropy": terms["entropy"].mean()}

        ts, metrics = run_epochs(actor_critic_step(self, actor_loss_fn), ts, data, key,
                                 cfg.epochs, cfg.minibatches)
        new_dist = self.actor.distribution(ts.actor_params, obs.obs, obs.avail)
        kl_term, sqrt_term = self.measured_terms(data["old_dist"], new_dist, obs.alive)
        betas = self.adapt(betas, kl_term, sqrt_term)
        metrics = {**metrics, "kl": kl_term.mean(), "sqrt_kl": sqrt_term.mean(),
                   "beta_kl": betas["beta_kl"].mean(), "beta_sqrt": betas["beta_sqrt"].mean()}
        return ts.replace(algo_state=betas), metrics
