"""Shared pieces of the on-policy actor-critic algorithms: config, train state, optimisers,
value targets, losses and minibatching. Algorithms compose these; nothing here is specific to
one algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from teamrl.core.advantages import RunningNorm, gae
from teamrl.config import ConfigError, NetworkConfig, option
from teamrl.envs.spec import TeamObs, TeamSpec
from teamrl.core.nets import Actor, Critic, RecurrentInput, sequence_length
from teamrl.core.rollout import Batch, Memory


@dataclass
class ActorCriticConfig:
    """Settings every on-policy actor-critic shares: the critic, value targets and batching
    (the MAPPO practices, HARL defaults, each switchable)."""

    gamma: float = option(0.99, "discount", low=0.0, high=1.0)
    gae_lambda: float = option(0.95, "GAE lambda", low=0.0, high=1.0)
    critic_lr: float = option(5e-4, "critic learning rate", low=0.0, low_open=True)
    adam_eps: float = option(1e-5, "Adam epsilon", low=0.0, low_open=True)
    lr_decay: bool = option(False, "decay learning rates linearly to 0 over total_steps")
    epochs: int = option(5, "passes over each batch", low=1)
    minibatches: int = option(1, "minibatches per epoch", low=1)
    max_grad_norm: float = option(10.0, "gradient clipping by global norm (per agent)",
                                  low=0.0, low_open=True)
    value_norm: bool = option(True, "running normalisation of value targets")
    value_clip: bool = option(True, "PPO-style clipping of value updates")
    value_clip_eps: float = option(0.2, "value clip epsilon", low=0.0, low_open=True)
    huber: bool = option(True, "Huber value loss (else squared error)")
    huber_delta: float = option(10.0, "Huber delta", low=0.0, low_open=True)
    adv_norm: bool = option(True, "normalise advantages over the batch")
    share_actor: bool = option(False, "one actor shared by all agents (with agent ids)")
    critic_state: str = option("world", "input of a centralised critic: the env's world state, "
                               "or MAPPO's agent-specific state (world state + the agent's "
                               "observation + id, death-masked)", choices=["world", "agent"])


@dataclass
class PPOConfig(ActorCriticConfig):
    """Actors trained by Adam on a clipped surrogate."""

    lr: float = option(5e-4, "actor learning rate", low=0.0, low_open=True)
    clip_eps: float = option(0.2, "PPO ratio clip epsilon", low=0.0, low_open=True)
    ent_coef: float = option(0.01, "entropy bonus coefficient", low=0.0)


@flax.struct.dataclass
class TrainState:
    """Everything an on-policy algorithm learns or carries between updates."""

    actor_params: Any
    critic_params: Any
    actor_opt: Any
    critic_opt: Any
    value_norm: RunningNorm
    algo_state: Any = ()  # anything else one algorithm adapts (e.g. DPO's coefficients)


@dataclass(frozen=True)
class AgentOptimizer:
    """An optax optimiser applied per agent (vmapped over stacked parameters) or once (shared),
    so grad-norm clipping and Adam statistics are per agent as in HARL."""

    tx: optax.GradientTransformation
    stacked: bool

    def init(self, params):
        return jax.vmap(self.tx.init)(params) if self.stacked else self.tx.init(params)

    def step(self, grads, opt_state, params):
        """Returns (new params, new opt state, grad norm ([] mean over agents))."""
        def one(g, s, p):
            updates, s = self.tx.update(g, s, p)
            return optax.apply_updates(p, updates), s, global_norm(g)

        if self.stacked:
            params, opt_state, norm = jax.vmap(one)(grads, opt_state, params)
            return params, opt_state, norm.mean()
        return one(grads, opt_state, params)


def global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def make_tx(lr: float, cfg: ActorCriticConfig, gradient_steps: int) -> optax.GradientTransformation:
    schedule = optax.linear_schedule(lr, 0.0, max(gradient_steps, 1)) if cfg.lr_decay else lr
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm),
                       optax.adam(schedule, eps=cfg.adam_eps))


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over the entries where mask is set (all axes; 0 if none)."""
    mask = mask.astype(x.dtype)
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def masked_agent_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x, mask [B, N] -> [N]: mean over samples where mask is set."""
    mask = mask.astype(x.dtype)
    return (x * mask).sum(0) / jnp.maximum(mask.sum(0), 1.0)


def clipped_surrogate(ratio, advantage, eps):
    """PPO's pessimistic surrogate min(r·A, clip(r, 1±eps)·A), elementwise."""
    return jnp.minimum(ratio * advantage, jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * advantage)


def value_loss(pred, old_pred, target, cfg: ActorCriticConfig) -> jax.Array:
    """Elementwise value loss in normalised space, with optional clipping and Huber."""
    def err(e):
        return optax.huber_loss(e, delta=cfg.huber_delta) if cfg.huber else 0.5 * e**2

    loss = err(pred - target)
    if cfg.value_clip:
        clipped = old_pred + jnp.clip(pred - old_pred, -cfg.value_clip_eps, cfg.value_clip_eps)
        loss = jnp.maximum(loss, err(clipped - target))
    return loss


def normalise_advantages(adv: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(adv.dtype)
    count = jnp.maximum(m.sum(), 1.0)
    mean = (adv * m).sum() / count
    std = jnp.sqrt(((adv - mean) ** 2 * m).sum() / count)
    return (adv - mean) / (std + 1e-8)


def flatten_time(batch_tree, length: int):
    """[T, E, ...] -> [T*E, ...] for every leaf."""
    return jax.tree.map(lambda x: x.reshape((length,) + x.shape[2:]), batch_tree)


def random_permutation(key, n: int) -> jax.Array:
    """A uniformly random permutation of ``arange(n)``, as ``jax.random.permutation``.

    Same algorithm (repeated sorts by random keys, enough rounds that key ties don't bias
    the result), but each round sorts ONE packed uint32 array: random bits in the high bits,
    the values being permuted in the low ``ceil(log2 n)`` bits. XLA:CPU sorts one operand
    about 2.5x faster than the (keys, values) pair jax sorts, and this runs every epoch.
    """
    index_bits = max(int(n - 1).bit_length(), 1)
    random_bits = 32 - index_bits
    if random_bits < 16:  # too few random bits left per round; use jax's own shuffle
        return jax.random.permutation(key, n)
    # jax.random's rule for the number of rounds, with random_bits-bit sort keys.
    rounds = int(np.ceil(3 * np.log(max(n, 2)) / np.log(2.0**random_bits)))
    values = jnp.arange(n, dtype=jnp.uint32)
    for round_key in jax.random.split(key, rounds):
        high = jax.random.bits(round_key, (n,), jnp.uint32) >> index_bits << index_bits
        values = jnp.sort(high | values) & ((1 << index_bits) - 1)
    return values.astype(jnp.int32)


def shuffled_minibatches(key, data, minibatches: int):
    """Shuffle [B, ...] leaves once and split them into [minibatches, B // minibatches, ...]
    (one gather per epoch; the minibatch scan then slices contiguously). Recurrent data
    (a RecurrentInput inside) is shuffled by whole sequences."""
    num_samples = jax.tree.leaves(data)[0].shape[0]
    seq_len = sequence_length(data)
    if seq_len == 1:
        perm = random_permutation(key, num_samples)
    else:  # recurrent data: shuffle whole sequences of seq_len consecutive samples
        perm = random_permutation(key, num_samples // seq_len)
        perm = (perm[:, None] * seq_len + jnp.arange(seq_len)).reshape(-1)
    return jax.tree.map(
        lambda x: x[perm].reshape((minibatches, num_samples // minibatches) + x.shape[1:]), data)


def run_epochs(step, carry, data, key, epochs: int, minibatches: int):
    """Scan ``step(carry, minibatch) -> (carry, metrics)`` over shuffled minibatches for
    ``epochs`` passes; returns (carry, metrics averaged over all steps)."""
    def epoch(carry, epoch_key):
        return jax.lax.scan(step, carry, shuffled_minibatches(epoch_key, data, minibatches))

    carry, metrics = jax.lax.scan(epoch, carry, jax.random.split(key, epochs))
    return carry, jax.tree.map(jnp.mean, metrics)


class OnPolicyActorCritic:
    """Actor, critic, optimisers and value targets of an on-policy algorithm.

    Subclasses choose the critic (``central_critic``) and implement ``update``.
    """

    config_class = PPOConfig
    central_critic = True
    action_kinds = ("discrete", "continuous")
    supports_recurrent = True

    def __init__(self, spec: TeamSpec, cfg: PPOConfig, net: NetworkConfig, total_updates: int):
        self.spec, self.cfg, self.net = spec, cfg, net
        self.recurrent = net.recurrent
        self.actor = Actor(spec, net, shared=cfg.share_actor)
        self.critic = Critic(spec, net, central=self.central_critic, shared=cfg.share_actor,
                             agent_state=self.central_critic and cfg.critic_state == "agent")
        steps = total_updates * cfg.epochs * cfg.minibatches
        # Trust-region actors (no ``lr``) take natural-gradient steps without an optimiser.
        self.actor_tx = (AgentOptimizer(make_tx(cfg.lr, cfg, steps), stacked=not cfg.share_actor)
                         if hasattr(cfg, "lr") else None)
        critic_stacked = not (self.central_critic or cfg.share_actor)
        # optax schedules count optimiser steps: a critic making several passes per update
        # (A2PO's refit) needs a horizon that many times longer to decay over the whole run.
        self.critic_tx = AgentOptimizer(make_tx(cfg.critic_lr, cfg, steps * self.critic_passes()),
                                        stacked=critic_stacked)

    def critic_passes(self) -> int:
        """Critic passes (of ``epochs`` × ``minibatches`` steps each) per update."""
        return 1

    @classmethod
    def check(cls, spec: TeamSpec, cfg, run) -> None:
        """Reject incompatible settings before anything is compiled."""
        if spec.action_kind not in cls.action_kinds:
            raise ConfigError(f"algorithm {run.algo!r} needs {' or '.join(cls.action_kinds)} "
                              f"actions but {spec.env_id!r} has {spec.action_kind} actions")
        samples = run.num_envs * run.rollout_length
        if samples % cfg.minibatches:
            raise ConfigError(f"minibatches={cfg.minibatches} must divide num_envs*rollout_length"
                              f"={samples}")

    # ------------------------------------------------------------------------- state
    def init(self, key: jax.Array) -> TrainState:
        actor_key, critic_key = jax.random.split(key)
        actor_params = self.actor.init(actor_key)
        critic_params = self.critic.init(critic_key)
        actor_opt = self.actor_tx.init(actor_params) if self.actor_tx else ()
        return TrainState(actor_params, critic_params, actor_opt,
                          self.critic_tx.init(critic_params), RunningNorm.create(),
                          self.init_algo_state())

    def init_algo_state(self):
        """Extra adaptive state of an algorithm, kept in TrainState.algo_state (checkpointed)."""
        return ()

    # ----------------------------------------------------------------------- acting
    def values(self, ts: TrainState, obs: TeamObs) -> jax.Array:
        """[..., N] critic outputs (normalised space) of a feed-forward critic."""
        return self.critic.values(ts.critic_params, obs)

    # ----------------------------------------------------------- recurrent acting
    def init_memory(self, num_envs: int) -> Memory:
        """Zero hidden states for ``num_envs`` envs whose next observation starts an episode."""
        n, h = self.spec.n_agents, self.net.gru_size
        critic_shape = (num_envs, n, h) if self.critic.per_agent_input else (num_envs, h)
        return Memory(jnp.zeros((num_envs, n, h)), jnp.zeros(critic_shape),
                      jnp.ones((num_envs,), bool))

    @staticmethod
    def step_input(x: jax.Array, hidden: jax.Array, start: jax.Array) -> RecurrentInput:
        """One step of E envs: x [E, ..., F], hidden [E, ..., H], start [E] -> RecurrentInput."""
        flags = start.astype(x.dtype).reshape(start.shape + (1,) * (x.ndim - 1))
        return RecurrentInput(x, hidden, jnp.broadcast_to(flags, x.shape[:-1] + (1,)))

    def recurrent_act(self, ts: TrainState, obs: TeamObs, key: jax.Array, memory: Memory):
        """Sample actions with recurrent networks: -> (action, log_prob [E, N], value [E, N],
        memory after this step)."""
        dist, actor_h = self.actor.step(ts.actor_params,
                                        self.step_input(obs.obs, memory.actor, memory.start),
                                        obs.avail)
        action = dist.sample(key)
        value, critic_h = self.critic.apply(ts.critic_params, self.step_input(
            self.critic.features(obs), memory.critic, memory.start))
        return action, dist.log_prob(action), value, Memory(actor_h, critic_h, memory.start)

    def recurrent_value(self, ts: TrainState, obs: TeamObs, memory: Memory) -> jax.Array:
        """[E, N] values of the observations a step reached, continuing the critic's hidden
        state (no reset: the bootstrap belongs to the episode that was running)."""
        no_start = jnp.zeros_like(memory.start)
        return self.critic.apply(ts.critic_params, self.step_input(
            self.critic.features(obs), memory.critic, no_start))[0]

    def recurrent_policy_action(self, ts: TrainState, obs: TeamObs, key: jax.Array,
                                deterministic: bool, memory: Memory):
        """-> (action, memory after this step) for evaluation."""
        dist, actor_h = self.actor.step(ts.actor_params,
                                        self.step_input(obs.obs, memory.actor, memory.start),
                                        obs.avail)
        action = dist.mode() if deterministic else dist.sample(key)
        return action, memory._replace(actor=actor_h)

    def act(self, ts: TrainState, obs: TeamObs, key: jax.Array):
        """Sample actions for a batch of envs: -> (action, log_prob [E, N], value [E, N])."""
        dist = self.actor.distribution(ts.actor_params, obs.obs, obs.avail)
        action = dist.sample(key)
        return action, dist.log_prob(action), self.values(ts, obs)

    def policy_action(self, ts: TrainState, obs: TeamObs, key: jax.Array, deterministic: bool):
        dist = self.actor.distribution(ts.actor_params, obs.obs, obs.avail)
        return dist.mode() if deterministic else dist.sample(key)

    # ---------------------------------------------------------------- value targets
    def advantages_and_targets(self, ts: TrainState, batch: Batch):
        """GAE on de-normalised values; returns (advantages [T,E,N], value targets in
        normalised space [T,E,N], updated value normaliser)."""
        norm = ts.value_norm
        value = norm.denormalise(batch.value)
        next_value = norm.denormalise(batch.next_value)
        adv, returns = gae(batch.reward, value, next_value, batch.terminated, batch.truncated,
                           self.cfg.gamma, self.cfg.gae_lambda)
        if self.cfg.value_norm:
            norm = norm.update(returns.reshape(-1))
        return adv, norm.normalise(returns), norm

    def agent_reduce(self, per_agent: jax.Array, shared: bool) -> jax.Array:
        """Stacked parameters: each agent's loss drives only its own slice, so sum;
        shared parameters: average over agents (MAPPO's flattened batch)."""
        return per_agent.mean() if shared else per_agent.sum()

    # ------------------------------------------------------------------- critic loss
    def critic_values(self, critic_params, data: dict) -> jax.Array:
        """[B, N] values of prepared data: its ``critic_in`` (recurrent critics, whose hidden
        states it holds) or the features of its ``obs``."""
        features = data["critic_in"] if "critic_in" in data else self.critic.features(data["obs"])
        return self.critic.apply(critic_params, features)[0]

    def critic_loss(self, critic_params, mb: dict) -> jax.Array:
        """The critic's loss on a minibatch dict with obs, value, target (and critic_in for
        recurrent critics), agents reduced.

        Every sample counts, dead agents' included (as in HARL's critics). A dead agent's
        value is the GAE bootstrap of the step on which it died, and the team's reward goes
        on after its death, so that value must be learned: masking it out of the loss left it
        at whatever the network output, and gave dying an arbitrary advantage (SMAX 2s3z with
        ``critic_state=agent``: 0 % wins, against 40-78 % at 600k steps once trained)."""
        pred = self.critic_values(critic_params, mb)
        per_agent = value_loss(pred, mb["value"], mb["target"], self.cfg).mean(0)
        return self.agent_reduce(per_agent, shared=not self.critic_tx.stacked)


def prepare_batch(algo: OnPolicyActorCritic, ts: TrainState, batch: Batch):
    """Advantages and value targets of a rollout, flattened over time and envs.

    Returns (train state with the updated value normaliser, data dict of [B = T·E, ...]
    leaves: obs (TeamObs), action, log_prob, value, adv (normalised if ``adv_norm``), target).
    Recurrent algorithms get the samples sequence-major (see :func:`recurrent_data`).
    """
    adv, target, value_norm = algo.advantages_and_targets(ts, batch)
    ts = ts.replace(value_norm=value_norm)
    if algo.cfg.adv_norm:
        adv = normalise_advantages(adv, batch.obs.alive)
    data = {"obs": batch.obs, "action": batch.action, "log_prob": batch.log_prob,
            "value": batch.value, "adv": adv, "target": target}
    if algo.recurrent:
        return ts, recurrent_data(algo, batch, data)
    steps, envs = batch.reward.shape[:2]
    return ts, flatten_time(data, steps * envs)


def to_sequences(x: jax.Array, seq_len: int) -> jax.Array:
    """[T, E, ...] -> [T·E, ...] sequence-major: chunk c of env e is the seq_len consecutive
    samples starting at (c·E + e)·seq_len."""
    steps, envs = x.shape[:2]
    x = x.reshape((steps // seq_len, seq_len, envs) + x.shape[2:])
    return jnp.swapaxes(x, 1, 2).reshape((steps * envs,) + x.shape[3:])


def from_sequences(x: jax.Array, steps: int, seq_len: int) -> jax.Array:
    """Inverse of :func:`to_sequences`: [T·E, ...] -> [T, E, ...]."""
    envs = x.shape[0] // steps
    x = x.reshape((steps // seq_len, envs, seq_len) + x.shape[1:])
    return jnp.swapaxes(x, 1, 2).reshape((steps, envs) + x.shape[3:])


def recurrent_data(algo: OnPolicyActorCritic, batch: Batch, data: dict) -> dict:
    """Time-major [T, E, ...] data -> sequence-major [T·E, ...] chunks of ``chunk_length``
    steps, with the actor's input (``data["obs"].obs``) and the critic's (``data["critic_in"]``)
    as RecurrentInputs holding the hidden states stored at each chunk's first step."""
    seq_len = algo.net.chunk_length
    steps = batch.reward.shape[0]
    memory = batch.memory

    def chunk_start(h):  # [T, E, ...]: every step holds the hidden of its chunk's first step
        first = h.reshape((steps // seq_len, seq_len) + h.shape[1:])[:, :1]
        return jnp.broadcast_to(first, (steps // seq_len, seq_len) + h.shape[1:]).reshape(h.shape)

    def recurrent_input(x, hidden):
        flags = memory.start.astype(x.dtype).reshape(memory.start.shape + (1,) * (x.ndim - 2))
        start = jnp.broadcast_to(flags, x.shape[:-1] + (1,))
        return RecurrentInput(to_sequences(x, seq_len), to_sequences(chunk_start(hidden), seq_len),
                              to_sequences(start, seq_len), seq_len)

    obs = batch.obs
    out = jax.tree.map(lambda x: to_sequences(x, seq_len), {k: v for k, v in data.items()})
    out["obs"] = out["obs"]._replace(obs=recurrent_input(obs.obs, memory.actor))
    out["critic_in"] = recurrent_input(algo.critic.features(obs), memory.critic)
    return out


def critic_update(algo: OnPolicyActorCritic, ts: TrainState, data: dict, key: jax.Array):
    """The critic's own epochs over ``data`` (obs, value, target); for algorithms whose actors
    are updated separately. Returns (train state, metrics)."""
    def step(ts: TrainState, mb):
        loss, grads = jax.value_and_grad(algo.critic_loss)(ts.critic_params, mb)
        params, opt, norm = algo.critic_tx.step(grads, ts.critic_opt, ts.critic_params)
        return ts.replace(critic_params=params, critic_opt=opt), {"value_loss": loss,
                                                                 "critic_grad_norm": norm}

    critic_data = {k: data[k] for k in ("obs", "value", "target", "critic_in") if k in data}
    return run_epochs(step, ts, critic_data, key, algo.cfg.epochs, algo.cfg.minibatches)


def actor_critic_step(algo: OnPolicyActorCritic, actor_loss_fn):
    """A minibatch step that updates actor and critic together, for ``run_epochs``.

    ``actor_loss_fn(actor_params, mb) -> (loss [], aux dict of [] metrics)``; the critic loss
    is ``algo.critic_loss``. Returns ``step(ts, mb) -> (ts, metrics)``.
    """
    def loss_fn(params, mb):
        # Actor and critic differentiated in one pass: the critic loss does not depend on the
        # actor parameters (nor the actor loss on the critic's), so the gradients are those of
        # separate passes, but XLA sees one program instead of two (fewer, larger fusions).
        actor_params, critic_params = params
        actor_loss, aux = actor_loss_fn(actor_params, mb)
        critic_loss = algo.critic_loss(critic_params, mb)
        return actor_loss + critic_loss, (actor_loss, critic_loss, aux)

    def minibatch_step(ts: TrainState, mb):
        (_, (loss, critic_loss, aux)), (actor_grads, critic_grads) = jax.value_and_grad(
            loss_fn, has_aux=True)((ts.actor_params, ts.critic_params), mb)
        actor_params, actor_opt, actor_norm = algo.actor_tx.step(
            actor_grads, ts.actor_opt, ts.actor_params)
        critic_params, critic_opt, critic_norm = algo.critic_tx.step(
            critic_grads, ts.critic_opt, ts.critic_params)
        ts = ts.replace(actor_params=actor_params, actor_opt=actor_opt,
                        critic_params=critic_params, critic_opt=critic_opt)
        metrics = {"actor_loss": loss, "value_loss": critic_loss, "actor_grad_norm": actor_norm,
                   "critic_grad_norm": critic_norm, **aux}
        return ts, metrics

    return minibatch_step


def ppo_update(algo: OnPolicyActorCritic, ts: TrainState, batch: Batch, key: jax.Array,
               surrogate=None):
    """Simultaneous update of all agents (IPPO, MAPPO, CoPPO); returns (train state, metrics).

    ``surrogate(log_ratio [B, N], adv [B, N], alive [B, N]) -> [B, N]`` is the per-sample
    objective each agent maximises; the default is PPO's min(r_i·Â, clip(r_i, 1±ε)·Â).
    """
    cfg = algo.cfg
    if surrogate is None:
        surrogate = lambda log_ratio, adv, alive: clipped_surrogate(jnp.exp(log_ratio), adv,
                                                                    cfg.clip_eps)
    ts, data = prepare_batch(algo, ts, batch)

    def actor_loss_fn(params, mb):
        dist = algo.actor.distribution(params, mb["obs"].obs, mb["obs"].avail)
        log_prob = dist.log_prob(mb["action"])
        alive = mb["obs"].alive
        log_ratio = jnp.where(alive, log_prob - mb["log_prob"], 0.0)
        ratio = jnp.exp(log_ratio)
        objective = masked_agent_mean(surrogate(log_ratio, mb["adv"], alive), alive)
        entropy = masked_agent_mean(dist.entropy(), alive)
        loss = algo.agent_reduce(-objective - cfg.ent_coef * entropy, shared=cfg.share_actor)
        aux = {"entropy": entropy.mean(),
               "approx_kl": masked_agent_mean((ratio - 1) - log_ratio, alive).mean(),
               "clip_frac": masked_agent_mean(jnp.abs(ratio - 1) > cfg.clip_eps, alive).mean()}
        return loss, aux

    return run_epochs(actor_critic_step(algo, actor_loss_fn), ts, data, key, cfg.epochs,
                      cfg.minibatches)
