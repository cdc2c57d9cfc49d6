"""I2Q for continuous actions (Jiang & Lu 2022): the forward-model version, with a
deterministic actor per agent (DDPG-style independent actor-critic, as the authors' code).

``i2q`` on an env with continuous actions builds this learner (``I2Q.__new__``); its settings
are ``I2QConfig``'s. Source: the paper's continuous-action I2Q and the authors' code,
github.com/jiechuanjiang/I2Q, "Differential Game/model.py" (``update_type = 1``, "I2Q 1", the
version whose Q target is the max below), with the residual forward model of
"Multi-Agent MuJoCo/model.py". REFERENCE.md §3 ("I2Q (deep, continuous)").

Each agent i learns, from its own observations o and actions a = a_i only, four networks
(stacked on the agent axis and vmapped, or shared with ``share_q``):

    π_i(o)      deterministic actor, tanh-bounded to the action range
    Q_i(o, a)   critic
    Q_ss(o, o') value of the transition o -> o' (QSS value)
    f_i(o, a)   forward model: o + MLP(o, a), the ideal next observation after (o, a)

and takes one gradient step of each per minibatch, all from the same parameters (the
authors group the four optimiser ops in one session run), target networks (ᵗ) for all four:

    Q_ss(o, o')  ← r + γ·(1 − terminated)·Q_ssᵗ(o', fᵗ(o', πᵗ(o')))           (squared error)
    f:   minimise  E[ −λ·Q_ss(o, f(o, a)) + mean_d (f(o, a) − o')²_d ],
         λ = α / E|Q_ss(o, f(o, a))|     (λ and Q_ss's parameters without gradient)
    Q_i(o, a)    ← max( Q_ssᵗ(o, fᵗ(o, a)), Q_ssᵗ(o, o') )                   (squared error)
    π:   maximise  E[ Q_i(o, π(o)) ]     (Q_i's parameters without gradient)

The forward model is pulled towards the observed o' (so it predicts a next observation the
agent can reach with a, given what partners do) and pushed up the Q_ss landscape (towards the
*best* such next observation, the one its partners' best response would produce): in a
deterministic env the ideal transition. λ normalises the Q term by the batch's mean |Q_ss|
(as TD3+BC normalises its Q term), so α sets the trade-off whatever the scale of the
returns: the authors use α 0.75 on their differential game and 0.01 (swept 0.005–0.05) on
MaMuJoCo; ``alpha`` defaults to 0.01. Q_ss already contains r, so Q_i's target has no
reward term; the max keeps the observed transition's value when the model's prediction is
worse (the model is not exact, and early on it is close to the identity). Only termination
stops bootstrapping: a time-limit truncation bootstraps Q_ss from o', the observation the
step reached before the reset.

Acting: with probability ε (IQL's schedule ``eps_start`` → ``eps_end`` over
``eps_decay_steps``) an agent takes a uniformly random action, else π(o) plus Gaussian noise
of std ``noise_std`` (in units of half the action range; the authors: 0.1 on [−1, 1]),
clipped to the range. Deterministic evaluation plays π(o); stochastic evaluation adds the
noise with ε = ``eps_end``. The authors explore uniformly for the first 10k steps
(MaMuJoCo) or every fourth episode (differential game); a linear ε schedule covers both.

Targets follow IQL's ``target_update_every`` / ``tau`` (the authors: Polyak averaging every
gradient step with τ = 0.005, i.e. ``target_update_every=1 tau=0.005``). Actions enter the
networks in [−1, 1] units (scaled from the env's [low, high]; padded action dimensions of
narrower agents are zero), the prediction error is averaged over the agent's real
observation entries (padding excluded), and the critics, Q_ss and the model read ``lr``; all
networks use the ``hidden_sizes`` / ``activation`` of the network section. Departures from
the authors' code: one learning rate for all four networks (theirs: 1e-3 each), gradient
clipping (``max_grad_norm``), a small constant (1e-6) in λ's denominator, and the replay
and update schedule of IQL (``updates_per_rollout`` steps after each rollout rather than
their 10 or 50 steps every 50 env steps).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from teamrl.algos.common import masked_mean
from teamrl.algos.iql import IQL, QTrainState
from teamrl.config import ConfigError
from teamrl.envs.spec import TeamObs
from teamrl.core.nets import MLP, AgentStack
from teamrl.core.rollout import Batch


class ResidualModel(nn.Module):
    """Forward model f(o, a) = o + MLP([o, a]): [..., D + A] -> [..., D]."""

    hidden_sizes: tuple
    obs_dim: int
    activation: str = "relu"
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        delta = MLP(self.hidden_sizes, self.obs_dim, self.activation, self.layer_norm,
                    out_gain=0.01)(x)
        return x[..., : self.obs_dim] + delta


def lambda_weight(q_pred: jax.Array, alive: jax.Array, alpha: float) -> jax.Array:
    """λ = α / mean|Q_ss(o, f(o, a))| over the agent's alive samples, without gradient."""
    return jax.lax.stop_gradient(alpha / (masked_mean(jnp.abs(q_pred), alive) + 1e-6))


def model_loss(pred, next_obs, q_pred, alive, obs_mask, alpha: float):
    """The forward model's loss E[−λ·Q_ss(o, f) + mean_d (f − o')²] and its parts.

    Args:
        pred: [B, D] f(o, a); next_obs: [B, D] o'; q_pred: [B] Q_ss(o, f(o, a)) (its
            gradient reaches ``pred`` only); alive: [B]; obs_mask: [D] real entries.
    Returns:
        (loss [], λ [], mean squared prediction error [])
    """
    lam = lambda_weight(q_pred, alive, alpha)
    error = ((pred - next_obs) ** 2 * obs_mask).sum(-1) / jnp.maximum(obs_mask.sum(), 1.0)
    loss = masked_mean(-lam * q_pred + error, alive)
    return loss, lam, masked_mean(error, alive)


class ContinuousI2Q(IQL):
    """Continuous-action I2Q (module doc). Built by ``I2Q`` for continuous envs; it shares
    IQL's replay, update schedule, target updates, checkpointing and resume."""

    def __init__(self, spec, cfg, net, total_updates: int, num_envs: int = 1):
        super().__init__(spec, cfg, net, total_updates, num_envs)
        low = np.asarray(spec.action_low, np.float32)
        high = np.asarray(spec.action_high, np.float32)
        self.action_mask = spec.action_mask                        # [N, A] bool
        self.low = np.where(self.action_mask, low, -1.0)
        self.half_range = np.where(self.action_mask & (high > low), (high - low) / 2, 1.0)

    @classmethod
    def check(cls, spec, cfg, run) -> None:
        if spec.discrete:
            raise ConfigError(f"the continuous I2Q learner needs continuous actions but "
                              f"{spec.env_id!r} has discrete actions")
        if not spec.action_low or not spec.action_high:
            raise ConfigError(f"algorithm {run.algo!r} needs bounded continuous actions but "
                              f"{spec.env_id!r} gives no action bounds")

    # ----------------------------------------------------------------- networks
    def networks(self):
        """actor π(o) -> [A] (tanh outside), q Q(o, a) -> [1], qss Q_ss(o, o') -> [1],
        model f(o, a) -> [D]."""
        n, d, a, net = self.spec.n_agents, self.spec.obs_dim, self.spec.action_dim, self.net
        hidden = tuple(net.hidden_sizes)
        stack = lambda module: AgentStack(module, n, self.shared)
        actor = MLP(hidden, a, net.activation, net.layer_norm, out_gain=0.01)
        model = ResidualModel(hidden, d, net.activation, net.layer_norm)
        return {"actor": (stack(actor), d), "q": (stack(self.mlp(1)), d + a),
                "qss": (stack(self.mlp(1)), 2 * d), "model": (stack(model), d + a)}

    def agent_constants(self) -> dict:
        """obs_mask [N, D] and action_mask [N, A] (float) for the vmapped per-agent loss."""
        return {"obs_mask": jnp.asarray(self.spec.obs_mask, jnp.float32),
                "action_mask": jnp.asarray(self.action_mask, jnp.float32)}

    def unit_actions(self, params: dict, obs: jax.Array) -> jax.Array:
        """The team's deterministic actions in [−1, 1] units: obs [..., N, D] -> [..., N, A]
        (padded dimensions 0)."""
        stack, _ = self.networks()["actor"]
        return jnp.tanh(stack.apply(params["actor"], obs)) * self.action_mask

    def to_env(self, unit: jax.Array) -> jax.Array:
        """[−1, 1] units -> the env's [low, high] (per agent and dimension)."""
        return self.low + (unit + 1.0) * self.half_range

    def to_unit(self, action: jax.Array) -> jax.Array:
        """The env's [low, high] -> [−1, 1] units, padded dimensions 0."""
        unit = (action - self.low) / self.half_range - 1.0
        return jnp.where(self.action_mask, jnp.clip(unit, -1.0, 1.0), 0.0)

    # -------------------------------------------------------------------- acting
    def explore(self, unit: jax.Array, key: jax.Array, epsilon) -> jax.Array:
        """π(o) + N(0, noise_std²) clipped to [−1, 1]; each agent independently takes a
        uniform action with probability ε. unit [..., N, A] -> [..., N, A]."""
        noise_key, explore_key, uniform_key = jax.random.split(key, 3)
        noisy = unit + self.cfg.noise_std * jax.random.normal(noise_key, unit.shape)
        uniform = jax.random.uniform(uniform_key, unit.shape, minval=-1.0, maxval=1.0)
        explore = jax.random.uniform(explore_key, unit.shape[:-1] + (1,)) < epsilon
        return jnp.clip(jnp.where(explore, uniform, noisy), -1.0, 1.0) * self.action_mask

    def act(self, ts: QTrainState, obs: TeamObs, key: jax.Array):
        """Exploring actions for a batch of envs: -> (action [E, N, A] in the env's range,
        zeros [E, N], zeros [E, N])."""
        unit = self.explore(self.unit_actions(ts.params, obs.obs), key,
                            self.epsilon(ts.env_steps))
        zeros = jnp.zeros(unit.shape[:-1], jnp.float32)
        return self.to_env(unit), zeros, zeros

    def policy_action(self, ts: QTrainState, obs: TeamObs, key: jax.Array,
                      deterministic: bool):
        """π(o), or π(o) + noise with ε = eps_end, in the env's range."""
        unit = self.unit_actions(ts.params, obs.obs)
        if not deterministic:
            unit = self.explore(unit, key, self.cfg.eps_end)
        return self.to_env(unit)

    # ------------------------------------------------------------------- learning
    def example_transition(self) -> dict:
        """One replay item: obs, next_obs [N, D]; action [N, A] in [−1, 1] units; alive [N];
        team reward [] and terminated []."""
        n, d, a = self.spec.n_agents, self.spec.obs_dim, self.spec.action_dim
        return {"obs": jnp.zeros((n, d), jnp.float32), "action": jnp.zeros((n, a), jnp.float32),
                "alive": jnp.zeros((n,), bool), "reward": jnp.zeros((), jnp.float32),
                "next_obs": jnp.zeros((n, d), jnp.float32), "terminated": jnp.zeros((), bool)}

    def transitions(self, batch: Batch) -> dict:
        """A rollout [T, E, ...] -> T·E replay items (see ``example_transition``)."""
        if batch.next_obs is None:
            raise ValueError("off-policy learners need Batch.next_obs (rollout.collect fills it)")
        steps, envs = batch.reward.shape
        flat = lambda x: x.reshape((steps * envs,) + x.shape[2:])
        return {"obs": flat(batch.obs.obs), "action": flat(self.to_unit(batch.action)),
                "alive": flat(batch.obs.alive), "reward": flat(batch.reward),
                "next_obs": flat(batch.next_obs.obs), "terminated": flat(batch.terminated)}

    def agent_loss(self, params_one: dict, target_one: dict, d: dict):
        """One agent's four losses on its replay columns d (leaves [B, ...], masks [D] /
        [A]). Each loss reaches only its own network (stop-gradients below), so one gradient
        of the sum is the four separate gradients. The values (Q_ss, Q) learn from every
        sample, dead agents' too; the model and the actor only from alive agents'."""
        cfg = self.cfg
        modules = {name: stack.module for name, (stack, _) in self.networks().items()}
        apply = lambda name, p, *xs: modules[name].apply(p[name], jnp.concatenate(xs, -1))
        frozen = jax.lax.stop_gradient
        alive, obs, nxt, act = d["alive"], d["obs"], d["next_obs"], d["action"]
        not_done = 1.0 - d["terminated"].astype(jnp.float32)
        actor = lambda p, o: jnp.tanh(modules["actor"].apply(p["actor"], o)) * d["action_mask"]

        # Target networks, each called once on its inputs stacked along the batch axis (on
        # CPU a few larger calls cost less than many small ones): f^t at (o', π^t(o')) and
        # (o, a); Q_ss^t at (o', f^t(o', π^t(o'))), (o, f^t(o, a)) and (o, o').
        ideal_next, model_next = jnp.split(apply(
            "model", target_one, jnp.concatenate([nxt, obs]),
            jnp.concatenate([actor(target_one, nxt), act])), 2)
        qss_next, q_model, q_seen = jnp.split(apply(
            "qss", target_one, jnp.concatenate([nxt, obs, obs]),
            jnp.concatenate([ideal_next, model_next, nxt]))[:, 0], 3)

        # Q_ss(o, o') <- r + γ(1 − d)·Q_ss^t(o', f^t(o', π^t(o')))
        qss_target = frozen(d["reward"] + cfg.gamma * not_done * qss_next)
        qss = apply("qss", params_one, obs, nxt)[:, 0]
        qss_loss = jnp.mean((qss - qss_target) ** 2)

        # f: −λ·Q_ss(o, f(o, a)) + prediction error (Q_ss's parameters frozen)
        pred = apply("model", params_one, obs, act)
        q_pred = apply("qss", frozen(params_one), obs, pred)[:, 0]
        f_loss, lam, error = model_loss(pred, nxt, q_pred, alive, d["obs_mask"], cfg.alpha)

        # Q_i(o, a) <- max(Q_ss^t(o, f^t(o, a)), Q_ss^t(o, o'))
        q_target = frozen(jnp.maximum(q_model, q_seen))
        q_taken = apply("q", params_one, obs, act)[:, 0]
        td_error = q_taken - q_target
        q_loss = jnp.mean(td_error**2)

        # π: maximise Q_i(o, π(o)) (the critic's parameters frozen)
        actor_loss = -masked_mean(apply("q", frozen(params_one), obs,
                                        actor(params_one, obs))[:, 0], alive)

        metrics = {"q_loss": q_loss, "qss_loss": qss_loss, "model_loss": f_loss,
                   "actor_loss": actor_loss, "lambda": lam, "model_error": error,
                   "q_taken": q_taken.mean(),
                   "td_abs": jnp.abs(td_error).mean(),
                   "model_gain": masked_mean(q_model - q_seen, alive)}
        return q_loss + qss_loss + f_loss + actor_loss, metrics
