"""I2Q (Jiang & Lu 2022, ideal independent Q-learning), the practical deep version for
discrete actions (REFERENCE.md §3; the authors' SMAC learner).

Idea: in a deterministic environment agent i could learn as if its partners always played
their best response, by learning the value of *state transitions*. Each agent learns, from
its own observations only,

    Q_ss(o, o')  ← r + γ·(1 − terminated)·V^target(o')             (squared error)
    V(o)         ← expectile_τ of Q_ss^target(o, o') over the o' seen after o
                   loss |τ − 1[Q_ss^target(o, o') < V(o)]|·(Q_ss^target(o, o') − V(o))²

With τ slightly above 1/2 (0.52 by default, the authors' SMAC setting) V(o) leans towards
the best transitions observed from o, i.e. towards the value the ideal (best-responding)
partners would reach, without the max over o' that the tabular version takes. The agent's
Q-network then regresses on a mix of that "ideal" target and IQL's own (double DQN) target:

    y_i = λ·(r + γ·(1 − terminated)·V^target(o'_i)) + (1 − λ)·y_i^IQL,    λ = ``lamb``

λ = 0.2 is the authors' default (their sweep: 0.1, 0.2, 0.3). All three networks are per
agent (stacked on the agent axis, or shared with ``share_q``), each with its own Adam and
gradient clipping, and their targets are updated together on IQL's schedule. With
feed-forward agents Q_ss and V read the agent's observations o, o'. With recurrent agents
(``recurrent=true``, the authors' SMAC setting; whole episodes replayed as in ``iql.py``) they
read, as the authors' SMAC learner does, the hidden states h_t, h_{t+1} of the agent's
*target* Q-network unrolled over the episode (no gradient through them): Q_ss(h_t, h_{t+1}),
V(h_t), every loss a masked mean over the episode's filled slots. Departures from the
authors' SMAC code: Q_ss and V are MLPs of the network section's ``hidden_sizes`` (theirs:
256, 256), Adam instead of RMSprop, and the V loss is a plain masked mean (theirs divides by
the sum of the expectile weights, a per-batch rescaling).

On λ: the normalisation λ = α / mean|Q_ss| belongs to the continuous-action variant, where
it weighs Q_ss against a squared error in the forward model's loss; in the discrete mixed
target above λ is a convex weight of two targets of the same scale and is kept fixed, as in
the authors' code.

Continuous actions: ``i2q`` on an env with continuous actions builds the forward-model
version instead (``i2q_continuous.ContinuousI2Q``: a deterministic actor, a critic Q_i(o, a),
Q_ss(o, o') and a forward model f_i(o, a_i), with ``alpha`` and ``noise_std``), as the
on-policy algorithms pick a categorical or Gaussian policy from the env. The keys ``lamb``,
``expectile`` and ``double_q`` apply to discrete actions only, ``alpha`` and ``noise_std``
to continuous ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from teamrl.algos.iql import IQL, IQLConfig, masked_mean, take_action
from teamrl.config import option
from teamrl.core.nets import AgentStack


@dataclass
class I2QConfig(IQLConfig):
    """IQL's settings plus the transition-value learner."""

    lamb: float = option(0.2, "discrete actions: weight of the ideal target r + gamma*V(o') "
                         "in the Q target (0: plain IQL)", low=0.0, high=1.0)
    expectile: float = option(0.52, "discrete actions: expectile tau of the V(o) regression "
                              "on Q_ss(o, o') (0.5: mean, -> 1: max)", low=0.0, high=1.0,
                              low_open=True, high_open=True)
    alpha: float = option(0.01, "continuous actions: weight of the Q_ss term against "
                          "the prediction error in the forward model's loss, "
                          "lambda = alpha / mean|Q_ss(o, f(o, a))|", low=0.0)
    noise_std: float = option(0.1, "continuous actions: std of the Gaussian exploration noise "
                              "added to the actor's action, in units of half the action "
                              "range", low=0.0)


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    """Elementwise |τ − 1[diff < 0]|·diff² with diff = target − prediction."""
    weight = jnp.where(diff > 0, expectile, 1.0 - expectile)
    return weight * diff**2


class I2Q(IQL):
    """Discrete I2Q; constructing it for an env with continuous actions returns the
    forward-model learner ``ContinuousI2Q`` (same config, same name)."""

    config_class = I2QConfig
    action_kinds = ("discrete", "continuous")

    def __new__(cls, spec, *args, **kwargs):
        if cls is I2Q and not spec.discrete:
            from teamrl.algos.i2q_continuous import ContinuousI2Q

            return ContinuousI2Q(spec, *args, **kwargs)
        return super().__new__(cls)

    @classmethod
    def check(cls, spec, cfg, run) -> None:
        super().check(spec, cfg, run)
        if not spec.discrete:
            from teamrl.algos.i2q_continuous import ContinuousI2Q

            ContinuousI2Q.check(spec, cfg, run)

    def networks(self):
        """Q_i(o) -> [A], Q_ss,i(o, o') -> [1] on the concatenation [2D], V_i(o) -> [1]
        (recurrent: Q_ss,i(h, h') on [2H] and V_i(h), h the GRU's hidden state)."""
        n = self.spec.n_agents
        d = self.net.gru_size if self.recurrent else self.spec.obs_dim
        return {**super().networks(),
                "qss": (AgentStack(self.mlp(1), n, self.shared), 2 * d),
                "v": (AgentStack(self.mlp(1), n, self.shared), d)}

    def recurrent_agent_loss(self, params_one: dict, target_one: dict, d: dict):
        """One agent's Q, Q_ss and V losses on whole episodes d (leaves [B, L+1, ...]), each a
        masked mean over the filled slots. Q_ss and V read the target Q-network's hidden
        states h [B, L+1, H] from the same unroll that gives the Q targets."""
        cfg = self.cfg
        nets = self.networks()
        apply = lambda name, p, x: nets[name][0].module.apply(p[name], x)[..., 0]
        q_target, h = self.unroll(target_one["q"], d["obs"], hidden=True)
        h = jax.lax.stop_gradient(h)
        here, after = h[:, :-1], h[:, 1:]                                  # [B, L, H]
        not_done = 1.0 - d["terminated"][:, :-1].astype(jnp.float32)
        ideal_target = jax.lax.stop_gradient(
            d["reward"][:, :-1] + cfg.gamma * not_done * apply("v", target_one, after))
        transition = jnp.concatenate([here, after], axis=-1)               # [B, L, 2H]
        q_taken, iql_target, mask = self.sequence_td(params_one, target_one, d, q_target)
        qss_loss = masked_mean((apply("qss", params_one, transition) - ideal_target) ** 2,
                               mask)
        qss_target = jax.lax.stop_gradient(apply("qss", target_one, transition))
        value = apply("v", params_one, here)
        v_loss = masked_mean(expectile_loss(qss_target - value, cfg.expectile), mask)
        td_error = q_taken - (cfg.lamb * ideal_target + (1.0 - cfg.lamb) * iql_target)
        q_loss = masked_mean(td_error**2, mask)
        metrics = {"q_loss": q_loss, "qss_loss": qss_loss, "v_loss": v_loss,
                   "q_taken": masked_mean(q_taken, mask), "v_mean": masked_mean(value, mask),
                   "td_abs": masked_mean(jnp.abs(td_error), mask)}
        return q_loss + qss_loss + v_loss, metrics

    def agent_loss(self, params_one: dict, target_one: dict, d: dict):
        """One agent's Q, Q_ss and V losses on its replay columns (leaves [B, ...]).

        The three losses share no parameters and each uses only target networks for its
        regression target, so one gradient of their sum is the three separate gradients.
        All three are values, trained on every sample, dead agents' too (see IQL's loss)."""
        if self.recurrent:
            return self.recurrent_agent_loss(params_one, target_one, d)
        cfg = self.cfg
        nets = self.networks()
        apply = lambda name, p, x: nets[name][0].module.apply(p[name], x)
        transition = jnp.concatenate([d["obs"], d["next_obs"]], axis=-1)  # [B, 2D]
        not_done = 1.0 - d["terminated"].astype(jnp.float32)

        ideal_target = jax.lax.stop_gradient(
            d["reward"] + cfg.gamma * not_done * apply("v", target_one, d["next_obs"])[:, 0])
        qss = apply("qss", params_one, transition)[:, 0]
        qss_loss = jnp.mean((qss - ideal_target) ** 2)

        qss_target = jax.lax.stop_gradient(apply("qss", target_one, transition)[:, 0])
        value = apply("v", params_one, d["obs"])[:, 0]
        v_loss = jnp.mean(expectile_loss(qss_target - value, cfg.expectile))

        target = cfg.lamb * ideal_target + (1.0 - cfg.lamb) * self.regression_target(
            params_one, target_one, d)
        q_taken = take_action(apply("q", params_one, d["obs"]), d["action"])
        td_error = q_taken - target
        q_loss = jnp.mean(td_error**2)
        metrics = {"q_loss": q_loss, "qss_loss": qss_loss, "v_loss": v_loss,
                   "q_taken": q_taken.mean(), "v_mean": value.mean(),
                   "td_abs": jnp.abs(td_error).mean()}
        return q_loss + qss_loss + v_loss, metrics
