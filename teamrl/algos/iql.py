"""IQL (Tan 1993; deep form as in PyMARL): every agent Q-learns Q_i(o_i, a_i) as if alone.

Deep practice (REFERENCE.md §3): double DQN targets, target networks, ε-greedy exploration
decaying linearly 1 → 0.05, experience replay. For agent i and a transition
(o, a, r, o', terminated) of the team,

    y_i = r + γ·(1 − terminated)·Q_i^target(o'_i, argmax_{a' available} Q_i(o'_i, a'))
    loss_i = E[(Q_i(o_i, a_i) − y_i)²]        (over all samples, dead agents' too)

(``double_q=false``: max_{a'} Q_i^target(o'_i, a')). Only termination stops bootstrapping: a
time-limit truncation bootstraps from o', the observation the step reached before the reset
(``Batch.next_obs``, the adapter's final_obs). Separate Q-networks (parameters stacked on a
leading agent axis, applied with vmap) by default; ``share_q=true`` uses one network for all
agents, who then see their one-hot id (``agent_id=auto``).

How it plugs into the on-policy Trainer (rollout -> update, one compiled scan):

* ``act`` is ε-greedy with ε = eps_end + (eps_start − eps_end)·max(0, 1 − t / eps_decay_steps),
  t = env steps collected so far (all envs summed; constant within one rollout). ``log_prob``
  and ``values`` are zeros: nothing here uses them.
* ``update(ts, batch, key)`` inserts the rollout's T·E transitions into the replay buffer
  (which lives in the train state, so checkpoints carry it), then, once ``learning_starts``
  env steps have been collected, takes ``updates_per_rollout`` gradient steps on uniform
  minibatches of ``batch_size`` transitions (one transition = all agents of one env step).
* Targets: every ``target_update_every`` gradient steps, target ← τ·online + (1 − τ)·target
  (τ = 1: a hard copy, DQN; τ < 1 with target_update_every=1: Polyak averaging).
* ``policy_action``: greedy over available actions (deterministic evaluation), or ε-greedy
  with ε = eps_end (stochastic evaluation: the behaviour at the end of the schedule).

Recurrent agents (``recurrent=true``; PyMARL's RNN agents on SMAC): Q_i is
hidden_sizes Dense -> GRU(gru_size) -> Dense(A), and the replay stores whole episodes
(``replay.EpisodeBuffer``: ``buffer_episodes`` episodes padded to the env's step limit L,
with a ``filled`` mask). Each gradient step samples ``batch_episodes`` episodes uniformly,
unrolls the online and the target network over all L + 1 slots from a zero hidden state at
the episode start (no stored hidden states, no burn-in: as PyMARL), and takes the double DQN
targets above from the two unrolls one slot on, so the target network's hidden state at o'
has seen the same history as the online one at o. The loss is the masked mean of the squared
TD errors over the filled slots (padding contributes nothing). Acting carries each env's
hidden state through the rollout (``Memory.actor``), zeroed where an episode starts; the
same holds in evaluation. ``chunk_length`` does not apply.

MA2QL (``ma2ql.py``) and I2Q (``i2q.py``) reuse all of this and change one piece each: which
agent learns, and the regression target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from teamrl.core import replay
from teamrl.algos.common import AgentOptimizer, OnPolicyActorCritic
from teamrl.config import ConfigError, NetworkConfig, option
from teamrl.envs.spec import TeamObs, TeamSpec
from teamrl.core.nets import MLP, AgentStack, GRUNet, RecurrentInput
from teamrl.core.policies import MaskedCategorical
from teamrl.core.rollout import Batch, Memory


@dataclass
class IQLConfig:
    """Independent double DQN with replay, target networks and ε-greedy exploration."""

    gamma: float = option(0.99, "discount", low=0.0, high=1.0)
    lr: float = option(5e-4, "Adam learning rate", low=0.0, low_open=True)
    adam_eps: float = option(1e-5, "Adam epsilon", low=0.0, low_open=True)
    max_grad_norm: float = option(10.0, "gradient clipping by global norm (per agent)",
                                  low=0.0, low_open=True)
    buffer_size: int = option(50_000, "replay capacity in transitions (one env step of one "
                              "env, all agents)", low=1)
    batch_size: int = option(128, "transitions per gradient step", low=1)
    learning_starts: int = option(1_000, "env steps collected before the first gradient "
                                  "step", low=0)
    updates_per_rollout: int = option(4, "gradient steps per Trainer update (after each "
                                      "rollout of num_envs*rollout_length steps)", low=1)
    target_update_every: int = option(200, "gradient steps between target-network updates",
                                      low=1)
    tau: float = option(1.0, "target <- tau*online + (1-tau)*target at each target update "
                        "(1: hard copy)", low=0.0, high=1.0, low_open=True)
    double_q: bool = option(True, "double DQN target: online argmax, target value")
    eps_start: float = option(1.0, "initial exploration epsilon", low=0.0, high=1.0)
    eps_end: float = option(0.05, "final exploration epsilon (also stochastic evaluation)",
                            low=0.0, high=1.0)
    eps_decay_steps: int = option(50_000, "env steps (all envs summed) of the linear epsilon "
                                  "decay", low=0)
    share_q: bool = option(False, "one Q-network shared by all agents (with agent ids)")
    buffer_episodes: int = option(5000, "recurrent=true: replay capacity in whole episodes "
                                  "(each padded to the env's step limit)", low=1)
    batch_episodes: int = option(32, "recurrent=true: episodes per gradient step", low=1)

    @property
    def share_actor(self) -> bool:
        """The Trainer's ``agent_id=auto`` appends ids when the policy is shared."""
        return self.share_q

    def check(self):
        if self.batch_size > self.buffer_size:
            raise ConfigError(f"batch_size={self.batch_size} must be <= buffer_size="
                              f"{self.buffer_size}")
        if self.batch_episodes > self.buffer_episodes:
            raise ConfigError(f"batch_episodes={self.batch_episodes} must be <= "
                              f"buffer_episodes={self.buffer_episodes}")
        if self.eps_end > self.eps_start:  # a schedule that explores more later: swapped
            raise ConfigError(f"eps_end={self.eps_end!r} must be <= eps_start="
                              f"{self.eps_start!r}")


@flax.struct.dataclass
class QTrainState:
    """Everything a value-based learner carries between updates (checkpointed whole).

    params, target_params: {network name: parameters}, each stacked [N, ...] or shared.
    opt_state: {network name: optimiser state} (per agent when stacked).
    buffer: replay buffer of transitions (see ``IQL.example_transition``), or with
        recurrent=true a ``replay.EpisodeBuffer`` of whole episodes (``IQL.example_step``).
    env_steps: [] int32 env steps collected (all envs summed); drives ε and learning_starts.
    grad_steps: [] int32 gradient steps taken; drives target updates.
    algo_state: anything one algorithm adds (MA2QL's turn counter).
    """

    params: Any
    target_params: Any
    opt_state: Any
    buffer: replay.ReplayBuffer | replay.EpisodeBuffer
    env_steps: jax.Array
    grad_steps: jax.Array
    algo_state: Any = ()


# ----------------------------------------------------------------------------- pieces
def linear_epsilon(env_steps, start: float, end: float, decay_steps: int) -> jax.Array:
    """ε after ``env_steps`` steps: linear from start to end over decay_steps, then end."""
    if decay_steps == 0:
        return jnp.float32(end)
    frac = jnp.clip(jnp.asarray(env_steps, jnp.float32) / decay_steps, 0.0, 1.0)
    return jnp.float32(start) + frac * jnp.float32(end - start)


def masked_argmax(q: jax.Array, avail: jax.Array) -> jax.Array:
    """[..., A] -> [...] int32 argmax over the available actions."""
    return jnp.argmax(jnp.where(avail, q, -jnp.inf), axis=-1).astype(jnp.int32)


def take_action(q: jax.Array, action: jax.Array) -> jax.Array:
    """q [..., A], action [...] -> q[..., action] (one-hot select: its gradient fuses)."""
    one_hot = action[..., None] == jnp.arange(q.shape[-1])
    return jnp.sum(jnp.where(one_hot, q, 0.0), axis=-1)


def epsilon_greedy(q: jax.Array, avail: jax.Array, key: jax.Array, epsilon) -> jax.Array:
    """q, avail [..., A] -> [...] int32: each entry independently explores (uniform over its
    available actions) with probability ε, else acts greedily."""
    explore_key, uniform_key = jax.random.split(key)
    greedy = masked_argmax(q, avail)
    uniform = MaskedCategorical(jnp.zeros(q.shape, jnp.float32), avail).sample(uniform_key)
    explore = jax.random.uniform(explore_key, greedy.shape) < epsilon
    return jnp.where(explore, uniform, greedy)


def q_learning_target(next_q_online, next_q_target, next_avail, reward, terminated,
                      gamma: float, double: bool) -> jax.Array:
    """The (double) DQN target [B] of one agent.

    Args:
        next_q_online, next_q_target: [B, A] Q(o', ·) of the online and target networks.
        next_avail: [B, A] bool actions available at o' (no bootstrap if none is).
        reward: [B]; terminated: [B] bool (only termination stops bootstrapping).
    Returns:
        r + γ·(1 − terminated)·Q^target(o', argmax_a' Q^online(o', a')) (double), or
        r + γ·(1 − terminated)·max_a' Q^target(o', a'), without gradient.
    """
    if double:
        next_value = take_action(next_q_target, masked_argmax(next_q_online, next_avail))
    else:
        next_value = jnp.max(jnp.where(next_avail, next_q_target, -jnp.inf), axis=-1)
    next_value = jnp.where(next_avail.any(-1), next_value, 0.0)
    target = reward + gamma * (1.0 - terminated.astype(jnp.float32)) * next_value
    return jax.lax.stop_gradient(target)


def agent_major(sample: dict, n_agents: int) -> dict:
    """Replay sample leaves [B, N, ...] (or team-level [B]) -> [N, B, ...] for a vmap over
    agents; team-level reward and terminated are broadcast to every agent."""
    def move(x):
        if x.ndim == 1:
            return jnp.broadcast_to(x, (n_agents,) + x.shape)
        return jnp.moveaxis(x, 1, 0)

    return jax.tree.map(move, sample)


def episode_agent_major(episodes: dict, n_agents: int) -> dict:
    """Episode sample leaves [B, L+1, N, ...] (or team-level [B, L+1]) -> [N, B, L+1, ...]."""
    def move(x):
        if x.ndim == 2:
            return jnp.broadcast_to(x, (n_agents,) + x.shape)
        return jnp.moveaxis(x, 2, 0)

    return jax.tree.map(move, episodes)


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over the entries where mask is true (0 when there are none)."""
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def take_agent(stacked, agent):
    """Leaves [N, ...] -> agent ``agent``'s slice [...] (``agent`` may be traced)."""
    return jax.tree.map(lambda x: x[agent], stacked)


def put_agent(stacked, agent, value):
    """Write ``value`` (leaves [...]) into slice ``agent`` of stacked leaves [N, ...]."""
    return jax.tree.map(lambda x, v: x.at[agent].set(v), stacked, value)


# ------------------------------------------------------------------------- algorithm
class IQL:
    """Independent double DQN. The interface the Trainer and evaluation use: ``config_class``,
    ``check``, ``init``, ``act``, ``values``, ``policy_action``, ``update``."""

    config_class = IQLConfig
    action_kinds = ("discrete",)
    supports_recurrent = True
    # recurrent=true replays whole episodes: the builder passes num_envs (for the envs'
    # running episodes) and chunk_length does not apply.
    episode_replay = True

    def __init__(self, spec: TeamSpec, cfg: IQLConfig, net: NetworkConfig, total_updates: int,
                 num_envs: int = 1):
        self.spec, self.cfg, self.net = spec, cfg, net
        self.shared = cfg.share_q
        self.recurrent = net.recurrent
        self.num_envs = num_envs
        if self.recurrent and not spec.discrete:
            raise ConfigError(f"recurrent=true needs discrete actions for the value-based "
                              f"learners; {spec.env_id!r} has continuous actions")
        if self.recurrent and not spec.max_steps:
            raise ConfigError(f"recurrent=true stores whole episodes and needs the env's step "
                              f"limit; {spec.env_id!r} declares none")
        # Per-network optax chains: clipping per agent (vmapped) and per network, as PyMARL.
        tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm),
                         optax.adam(cfg.lr, eps=cfg.adam_eps))
        self.tx = AgentOptimizer(tx, stacked=not self.shared)
        self.agent_tx = AgentOptimizer(tx, stacked=False)  # one agent's slice (MA2QL)

    # ----------------------------------------------------------------- networks
    def mlp(self, out_dim: int) -> MLP:
        n = self.net
        return MLP(tuple(n.hidden_sizes), out_dim, n.activation, n.layer_norm, out_gain=1.0)

    def q_module(self):
        """Q_i(o_i) -> [A]: an MLP, or (recurrent) Dense layers -> GRU -> Dense."""
        n, a = self.net, self.spec.action_dim
        if self.recurrent:
            return GRUNet(tuple(n.hidden_sizes), n.gru_size, a, n.activation, n.layer_norm,
                          out_gain=1.0)
        return self.mlp(a)

    def networks(self) -> dict[str, tuple[AgentStack, int]]:
        """{name: (per-agent network, input width)}; IQL learns only Q_i(o_i) -> [A]."""
        return {"q": (AgentStack(self.q_module(), self.spec.n_agents, self.shared),
                      self.spec.obs_dim)}

    def q_values(self, params: dict, obs: jax.Array) -> jax.Array:
        """obs [..., N, D] -> Q-values [..., N, A] of every agent (feed-forward)."""
        stack, _ = self.networks()["q"]
        return stack.apply(params["q"], obs)

    def unroll(self, q_params, obs: jax.Array, hidden: bool = False):
        """One agent's Q over whole episodes from a zero hidden state at each one's first
        slot: obs [B, L+1, D] -> Q [B, L+1, A]; with ``hidden`` also the GRU's outputs
        (its hidden states after each slot) [B, L+1, H]."""
        b, slots = obs.shape[:2]
        module = self.q_module()
        start = jnp.broadcast_to(jnp.arange(slots) == 0, (b, slots)).astype(jnp.float32)
        inp = RecurrentInput(obs.reshape((b * slots, -1)),
                             jnp.zeros((b * slots, module.gru_size)),
                             start.reshape((b * slots, 1)), seq_len=slots)
        if not hidden:
            return module.apply(q_params, inp)[0].reshape((b, slots, -1))
        (q, _), state = module.apply(q_params, inp, mutable=["intermediates"])
        h = state["intermediates"]["hidden"][0]
        return q.reshape((b, slots, -1)), h.reshape((b, slots, -1))

    @classmethod
    def check(cls, spec: TeamSpec, cfg: IQLConfig, run) -> None:
        """Reject incompatible settings before anything is compiled."""
        if spec.action_kind not in cls.action_kinds:
            raise ConfigError(f"algorithm {run.algo!r} needs discrete actions but "
                              f"{spec.env_id!r} has {spec.action_kind} actions")

    # --------------------------------------------------------------------- state
    def example_transition(self) -> dict:
        """One replay item: obs, next_obs [N, D]; action [N] int32; alive [N] (at obs);
        next_avail [N, A] (for the masked max at o'); team reward [] and terminated []."""
        n, d, a = self.spec.n_agents, self.spec.obs_dim, self.spec.action_dim
        return {"obs": jnp.zeros((n, d), jnp.float32), "action": jnp.zeros((n,), jnp.int32),
                "alive": jnp.zeros((n,), bool), "reward": jnp.zeros((), jnp.float32),
                "next_obs": jnp.zeros((n, d), jnp.float32),
                "next_avail": jnp.zeros((n, a), bool), "terminated": jnp.zeros((), bool)}

    def example_step(self) -> dict:
        """One step of a stored episode (recurrent=true): obs [N, D] and avail [N, A] (at slot
        t the step's, at slot ``length`` the last step's next observation), action [N] int32,
        team reward [] and terminated []; ``replay.init_episodes`` adds ``filled``."""
        n, d, a = self.spec.n_agents, self.spec.obs_dim, self.spec.action_dim
        return {"obs": jnp.zeros((n, d), jnp.float32), "avail": jnp.zeros((n, a), bool),
                "action": jnp.zeros((n,), jnp.int32), "reward": jnp.zeros((), jnp.float32),
                "terminated": jnp.zeros((), bool)}

    def init(self, key: jax.Array) -> QTrainState:
        networks = self.networks()
        keys = dict(zip(networks, jax.random.split(key, len(networks))))
        params = {name: stack.init(keys[name], in_dim)
                  for name, (stack, in_dim) in networks.items()}
        opt_state = {name: self.tx.init(p) for name, p in params.items()}
        if self.recurrent:
            buffer = replay.init_episodes(self.example_step(), self.cfg.buffer_episodes,
                                          self.spec.max_steps, self.num_envs)
        else:
            buffer = replay.init(self.example_transition(), self.cfg.buffer_size)
        return QTrainState(params, params, opt_state, buffer, jnp.int32(0), jnp.int32(0),
                           self.init_algo_state())

    def init_algo_state(self):
        return ()

    # -------------------------------------------------------------------- acting
    def epsilon(self, env_steps) -> jax.Array:
        cfg = self.cfg
        return linear_epsilon(env_steps, cfg.eps_start, cfg.eps_end, cfg.eps_decay_steps)

    def act(self, ts: QTrainState, obs: TeamObs, key: jax.Array):
        """ε-greedy actions for a batch of envs: -> (action [E, N], zeros [E, N], zeros)."""
        q = self.q_values(ts.params, obs.obs)
        action = epsilon_greedy(q, obs.avail, key, self.epsilon(ts.env_steps))
        zeros = jnp.zeros(action.shape, jnp.float32)
        return action, zeros, zeros

    def values(self, ts: QTrainState, obs: TeamObs) -> jax.Array:
        """[..., N] zeros: value-based learners have no critic for the rollout to evaluate."""
        return jnp.zeros(obs.obs.shape[:-1], jnp.float32)

    def policy_action(self, ts: QTrainState, obs: TeamObs, key: jax.Array,
                      deterministic: bool):
        """Greedy over available actions, or ε-greedy with ε = eps_end."""
        q = self.q_values(ts.params, obs.obs)
        if deterministic:
            return masked_argmax(q, obs.avail)
        return epsilon_greedy(q, obs.avail, key, self.cfg.eps_end)

    # ---------------------------------------------------------- recurrent acting
    def init_memory(self, num_envs: int) -> Memory:
        """Zero GRU states [E, N, H] for envs whose next observation starts an episode (no
        critic: ``Memory.critic`` is an empty [E, 0])."""
        n, h = self.spec.n_agents, self.net.gru_size
        return Memory(jnp.zeros((num_envs, n, h)), jnp.zeros((num_envs, 0)),
                      jnp.ones((num_envs,), bool))

    def recurrent_q(self, ts: QTrainState, obs: TeamObs, memory: Memory):
        """One step of E envs: -> (Q [E, N, A], GRU states after the step [E, N, H])."""
        stack, _ = self.networks()["q"]
        return stack.apply(ts.params["q"], OnPolicyActorCritic.step_input(
            obs.obs, memory.actor, memory.start))

    def recurrent_act(self, ts: QTrainState, obs: TeamObs, key: jax.Array, memory: Memory):
        """ε-greedy with hidden states: -> (action [E, N], zeros, zeros, memory after)."""
        q, h = self.recurrent_q(ts, obs, memory)
        action = epsilon_greedy(q, obs.avail, key, self.epsilon(ts.env_steps))
        zeros = jnp.zeros(action.shape, jnp.float32)
        return action, zeros, zeros, memory._replace(actor=h)

    def recurrent_value(self, ts: QTrainState, obs: TeamObs, memory: Memory) -> jax.Array:
        """[E, N] zeros (no critic)."""
        return jnp.zeros(obs.obs.shape[:-1], jnp.float32)

    def recurrent_policy_action(self, ts: QTrainState, obs: TeamObs, key: jax.Array,
                                deterministic: bool, memory: Memory):
        """Greedy, or ε-greedy with ε = eps_end, with hidden states: -> (action, memory)."""
        q, h = self.recurrent_q(ts, obs, memory)
        if deterministic:
            action = masked_argmax(q, obs.avail)
        else:
            action = epsilon_greedy(q, obs.avail, key, self.cfg.eps_end)
        return action, memory._replace(actor=h)

    # ------------------------------------------------------------------- learning
    def transitions(self, batch: Batch) -> dict:
        """A rollout [T, E, ...] -> T·E replay items (see ``example_transition``)."""
        if batch.next_obs is None:
            raise ValueError("off-policy learners need Batch.next_obs (rollout.collect fills it)")
        steps, envs = batch.reward.shape
        flat = lambda x: x.reshape((steps * envs,) + x.shape[2:])
        return {"obs": flat(batch.obs.obs), "action": flat(batch.action).astype(jnp.int32),
                "alive": flat(batch.obs.alive), "reward": flat(batch.reward),
                "next_obs": flat(batch.next_obs.obs), "next_avail": flat(batch.next_obs.avail),
                "terminated": flat(batch.terminated)}

    def insert(self, buffer, batch: Batch):
        """The rollout [T, E, ...] into the replay: T·E transitions, or (recurrent) its steps
        appended to the envs' running episodes, the finished ones committed."""
        if batch.next_obs is None:
            raise ValueError("off-policy learners need Batch.next_obs (rollout.collect fills it)")
        if not self.recurrent:
            return replay.add(buffer, self.transitions(batch))
        current = {"obs": batch.obs.obs, "avail": batch.obs.avail,
                   "action": batch.action.astype(jnp.int32), "reward": batch.reward,
                   "terminated": batch.terminated}
        following = {"obs": batch.next_obs.obs, "avail": batch.next_obs.avail}
        return replay.add_steps(buffer, current, following, batch.terminated | batch.truncated)

    def sample(self, buffer, key: jax.Array) -> dict:
        """A minibatch: ``batch_size`` transitions (leaves [B, N, ...] / [B]), or (recurrent)
        ``batch_episodes`` episodes (leaves [B, L+1, N, ...] / [B, L+1])."""
        if self.recurrent:
            return replay.sample(buffer.episodes, key, self.cfg.batch_episodes)
        return replay.sample(buffer, key, self.cfg.batch_size)

    def columns(self, sample: dict) -> dict:
        """A minibatch with the agent axis first (leaves [N, B, ...]) for a vmap over agents."""
        if self.recurrent:
            return episode_agent_major(sample, self.spec.n_agents)
        return agent_major(sample, self.spec.n_agents)

    def regression_target(self, params_one: dict, target_one: dict, d: dict) -> jax.Array:
        """[B] target of one agent's Q(o, a) (IQL: the double DQN target)."""
        stack, _ = self.networks()["q"]
        next_online = stack.module.apply(params_one["q"], d["next_obs"])
        next_target = stack.module.apply(target_one["q"], d["next_obs"])
        return q_learning_target(next_online, next_target, d["next_avail"], d["reward"],
                                 d["terminated"], self.cfg.gamma, self.cfg.double_q)

    def sequence_td(self, params_one: dict, target_one: dict, d: dict, q_target=None):
        """Recurrent: one agent's double DQN targets on whole episodes d (leaves [B, L+1, ...]),
        both networks unrolled over the same slots: -> (Q(o_t, a_t) [B, L], targets [B, L]
        (no gradient), filled mask [B, L]). Slot L's action and reward are padding.
        ``q_target``: the target network's unroll [B, L+1, A] if the caller has it."""
        q = self.unroll(params_one["q"], d["obs"])
        if q_target is None:
            q_target = self.unroll(target_one["q"], d["obs"])
        target = q_learning_target(q[:, 1:], q_target[:, 1:], d["avail"][:, 1:],
                                   d["reward"][:, :-1], d["terminated"][:, :-1],
                                   self.cfg.gamma, self.cfg.double_q)
        return take_action(q[:, :-1], d["action"][:, :-1]), target, d["filled"][:, :-1]

    def agent_loss(self, params_one: dict, target_one: dict, d: dict):
        """One agent's loss on its replay columns d (leaves [B, ...]; recurrent: whole episodes
        [B, L+1, ...], the loss a masked mean over their filled slots): -> (loss, metrics)."""
        if self.recurrent:
            q_taken, target, mask = self.sequence_td(params_one, target_one, d)
            td_error = q_taken - target
            loss = masked_mean(td_error**2, mask)
            return loss, {"q_loss": loss, "q_taken": masked_mean(q_taken, mask),
                          "td_abs": masked_mean(jnp.abs(td_error), mask)}
        stack, _ = self.networks()["q"]
        q_taken = take_action(stack.module.apply(params_one["q"], d["obs"]), d["action"])
        td_error = q_taken - self.regression_target(params_one, target_one, d)
        # Every sample, dead agents' included: Q_i of a dead agent's input is the bootstrap of
        # the step on which it died, so it must be learned (see ``common.critic_loss``).
        loss = jnp.mean(td_error**2)
        return loss, {"q_loss": loss, "q_taken": q_taken.mean(),
                      "td_abs": jnp.abs(td_error).mean()}

    def agent_constants(self) -> dict:
        """Fixed per-agent arrays [N, ...] added to every agent's replay columns in
        ``team_loss`` (continuous I2Q: its padding masks); none here."""
        return {}

    def team_loss(self, params: dict, target_params: dict, sample: dict):
        """All agents at once (vmap over the agent axis): -> (loss [], metrics averaged over
        agents). ``sample`` is a replay minibatch (leaves [B, N, ...] / [B]).

        Stacked parameters: each agent's loss drives only its own slice, so sum; shared
        parameters: mean over agents."""
        axis = None if self.shared else 0
        columns = {**self.columns(sample), **self.agent_constants()}
        loss, metrics = jax.vmap(self.agent_loss, in_axes=(axis, axis, 0))(
            params, target_params, columns)
        return (loss.mean() if self.shared else loss.sum()), jax.tree.map(jnp.mean, metrics)

    def update_target(self, target, params, grad_steps):
        """target ← τ·params + (1 − τ)·target when grad_steps is a multiple of
        target_update_every (τ = 1 copies exactly)."""
        cfg = self.cfg
        due = grad_steps % cfg.target_update_every == 0
        if cfg.tau == 1.0:
            mix = lambda t, p: p
        else:
            mix = lambda t, p: cfg.tau * p + (1.0 - cfg.tau) * t
        return jax.tree.map(lambda t, p: jnp.where(due, mix(t, p), t), target, params)

    def optimiser_step(self, tx: AgentOptimizer, grads: dict, opt_state: dict, params: dict):
        """One Adam step of every network (each clipped on its own): -> (params, opt, norm)."""
        new_params, new_opt, norms = {}, {}, []
        for name in params:  # the networks of one learner (q, qss, v): a static handful
            new_params[name], new_opt[name], norm = tx.step(grads[name], opt_state[name],
                                                            params[name])
            norms.append(norm)
        return new_params, new_opt, sum(norms) / len(norms)

    def gradient_step(self, ts: QTrainState, key: jax.Array):
        """One minibatch step of every agent (``lax.scan`` body): -> (ts, metrics)."""
        sample = self.sample(ts.buffer, key)
        grads, metrics = jax.grad(self.team_loss, has_aux=True)(ts.params, ts.target_params,
                                                                 sample)
        params, opt_state, norm = self.optimiser_step(self.tx, grads, ts.opt_state, ts.params)
        grad_steps = ts.grad_steps + 1
        target = self.update_target(ts.target_params, params, grad_steps)
        ts = ts.replace(params=params, target_params=target, opt_state=opt_state,
                        grad_steps=grad_steps)
        return ts, {**metrics, "grad_norm": norm}

    def stored(self, buffer) -> jax.Array:
        """[] int32 transitions (recurrent: episodes) in the replay."""
        return buffer.episodes.size if self.recurrent else buffer.size

    def before_insert(self, ts: QTrainState, learning: jax.Array) -> QTrainState:
        """Hook before the rollout enters the buffer (MA2QL starts turns here)."""
        return ts

    def after_learning(self, ts: QTrainState, learning: jax.Array):
        """Hook after the gradient steps: -> (ts, extra metrics)."""
        return ts, {}

    def update(self, ts: QTrainState, batch: Batch, key: jax.Array):
        """Store the rollout, then ``updates_per_rollout`` gradient steps once
        ``learning_starts`` env steps have been collected: -> (ts, metrics)."""
        cfg = self.cfg
        epsilon = self.epsilon(ts.env_steps)  # the one the rollout was collected with
        env_steps = ts.env_steps + batch.reward.size
        learning = env_steps >= cfg.learning_starts
        if self.recurrent:  # and some episode is stored once this rollout is in
            learning &= (ts.buffer.episodes.size > 0) | (batch.terminated
                                                         | batch.truncated).any()
        ts = self.before_insert(ts, learning)
        ts = ts.replace(buffer=self.insert(ts.buffer, batch), env_steps=env_steps)

        def learn(ts):
            ts, metrics = jax.lax.scan(self.gradient_step, ts,
                                       jax.random.split(key, cfg.updates_per_rollout))
            return ts, jax.tree.map(jnp.mean, metrics)

        def wait(ts):
            shapes = jax.eval_shape(learn, ts)[1]
            return ts, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        ts, metrics = jax.lax.cond(learning, learn, wait, ts)
        ts, extra = self.after_learning(ts, learning)
        return ts, {**metrics, **extra, "epsilon": epsilon,
                    "buffer_size": self.stored(ts.buffer).astype(jnp.float32),
                    "learning": learning.astype(jnp.float32)}
