"""Agent-by-agent actor updates of the heterogeneous-agent family (HAPPO, HATRPO, A2PO).

The agents are updated one after another in a given order. The loop is a ``jax.lax.scan`` over
the order that reads one agent's slice of the stacked actor parameters (and optimiser state),
updates it, writes it back, and multiplies the carried factor by that agent's new/old ratio
π_new(a_i|o_i) / π_old(a_i|o_i), so the m-th agent sees the product over the agents before it.

A shared actor cannot be updated agent by agent (updating one agent moves them all), so, as in
HARL, it gets one update on every agent's data with a factor of 1.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from teamrl.algos.common import global_norm, masked_mean, run_epochs


def take_agent(stacked, agent):
    """Leaves [N, ...] -> agent ``agent``'s slice [...]."""
    return jax.tree.map(lambda x: x[agent], stacked)


def put_agent(stacked, agent, value):
    """Write ``value`` (leaves [...]) into slice ``agent`` of stacked leaves [N, ...]."""
    return jax.tree.map(lambda x, v: x.at[agent].set(v), stacked, value)


def agent_columns(data: dict, agent) -> dict:
    """Leaves [B, N, ...] -> [B, 1, ...]: one agent's samples, keeping a length-1 agent axis so
    per-agent and shared (all N agents) updates share their code."""
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, agent, 1, axis=1), data)


def actor_data(data: dict) -> dict:
    """The per-agent arrays an actor update needs, from ``prepare_batch``'s data: obs, avail,
    alive, action, log_prob, adv, each [B, N, ...]."""
    obs = data["obs"]
    return {"obs": obs.obs, "avail": obs.avail, "alive": obs.alive, "action": data["action"],
            "log_prob": data["log_prob"], "adv": data["adv"]}


def log_ratio(actor, params_one, d: dict) -> jax.Array:
    """[B, K] log π_params(a|o) − log π_old(a|o) of unstacked parameters; 0 for dead agents."""
    log_prob = actor.distribution_of(params_one, d["obs"], d["avail"]).log_prob(d["action"])
    return jnp.where(d["alive"], log_prob - d["log_prob"], 0.0)


AgentStep = Callable  # (params, opt, data [B,K,...], factor [B,1], position, key, extra)
#                       -> (params, opt, metrics, extra)


def sequential_actor_update(actor, shared: bool, params, opt_state, data: dict,
                            order: jax.Array, key: jax.Array, agent_step: AgentStep,
                            extra=None, pass_factor: bool = True):
    """Update the agents one after another in ``order``.

    Args:
        actor: the ``nets.Actor``; params / opt_state: stacked [N, ...] (or shared).
        data: leaves [B, N, ...] with at least obs, avail, alive, action, log_prob.
        order: [N] int32 agent indices in update order.
        agent_step: updates one agent given its columns [B, 1, ...], the factor [B, 1]
            (product of the earlier agents' new/old ratios) and its position in the order.
        extra: any state the agent steps thread through (A2PO's critic refit), else None.
        pass_factor: False gives the simultaneous ablation: every agent sees a factor of 1,
            i.e. steps against the old policies of the others, yet the updates are the same
            sizes and are all applied.
    Returns:
        (params, opt_state, metrics with a leading [N] axis in update order (or [1] when
        shared), factors [N, B, 1]: the factor each position received, extra).
    """
    num_samples, n_agents = data["log_prob"].shape
    ones = jnp.ones((num_samples, 1), jnp.float32)
    if shared:
        params, opt_state, metrics, extra = agent_step(params, opt_state, data, ones,
                                                       jnp.int32(0), key, extra)
        return params, opt_state, jax.tree.map(lambda m: m[None], metrics), ones[None], extra

    def body(carry, xs):
        params, opt_state, factor, extra = carry
        position, agent, agent_key = xs
        d = agent_columns(data, agent)
        new, opt, metrics, extra = agent_step(take_agent(params, agent),
                                              take_agent(opt_state, agent), d, factor, position,
                                              agent_key, extra)
        # The factor passed on is detached: later agents treat earlier updates as fixed.
        next_factor = (factor * jnp.exp(jax.lax.stop_gradient(log_ratio(actor, new, d)))
                       if pass_factor else factor)
        carry = (put_agent(params, agent, new), put_agent(opt_state, agent, opt), next_factor,
                 extra)
        return carry, (metrics, factor)

    xs = (jnp.arange(n_agents, dtype=jnp.int32), order, jax.random.split(key, n_agents))
    (params, opt_state, _, extra), (metrics, factors) = jax.lax.scan(
        body, (params, opt_state, ones, extra), xs)
    return params, opt_state, metrics, factors, extra


def ppo_agent_step(actor, tx, cfg, surrogate: Callable) -> AgentStep:
    """An ``AgentStep`` running ``cfg.epochs`` × ``cfg.minibatches`` Adam steps of a clipped
    objective on one agent's (or the shared actor's) columns.

    ``surrogate(ratio [b,K], factor [b,1], adv [b,K], position) -> [b,K]`` is the per-sample
    objective to maximise (HAPPO's or A2PO's); an entropy bonus ``cfg.ent_coef`` is added.
    """
    def step(params, opt_state, data, factor, position, key, extra=None):
        data = {**data, "factor": jnp.broadcast_to(factor, data["log_prob"].shape[:1] + (1,))}

        def loss_fn(p, mb):
            dist = actor.distribution_of(p, mb["obs"], mb["avail"])
            alive = mb["alive"]
            lr = jnp.where(alive, dist.log_prob(mb["action"]) - mb["log_prob"], 0.0)
            ratio = jnp.exp(lr)
            objective = masked_mean(surrogate(ratio, mb["factor"], mb["adv"], position), alive)
            entropy = masked_mean(dist.entropy(), alive)
            aux = {"entropy": entropy, "approx_kl": masked_mean((ratio - 1) - lr, alive),
                   "clip_frac": masked_mean(jnp.abs(ratio - 1) > cfg.clip_eps, alive)}
            return -objective - cfg.ent_coef * entropy, aux

        def minibatch_step(carry, mb):
            p, o = carry
            (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, mb)
            updates, o = tx.update(grads, o, p)
            p = jax.tree.map(lambda a, u: a + u, p, updates)
            return (p, o), {"actor_loss": loss, "actor_grad_norm": global_norm(grads), **aux}

        (params, opt_state), metrics = run_epochs(minibatch_step, (params, opt_state), data, key,
                                                  cfg.epochs, cfg.minibatches)
        return params, opt_state, metrics, extra

    return step
