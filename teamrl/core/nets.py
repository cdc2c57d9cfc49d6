"""Actor and critic networks, with per-agent parameters stacked on a leading agent axis
(heterogeneous agents) or one shared set applied to every agent (who then see an agent id).

Recurrent networks (``recurrent=true``) take a :class:`RecurrentInput` instead of an array and
return ``(output, last hidden state)``; everything else about them is as for the MLPs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from teamrl.config import NetworkConfig
from teamrl.envs.spec import TeamObs, TeamSpec
from teamrl.core.policies import DiagGaussian, MaskedCategorical, soft_clip, soft_clip_inverse

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}


def _hidden_layers(x, sizes, activation: str, layer_norm: bool):
    """Orthogonally initialised Dense + activation (+ LayerNorm after it, as HARL's layers),
    created in the calling module: [B, in] -> [B, sizes[-1]]."""
    act = _ACTIVATIONS[activation]
    for width in sizes:
        x = nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2)),
                     bias_init=nn.initializers.zeros)(x)
        x = act(x)
        if layer_norm:
            x = nn.LayerNorm()(x)
    return x


class MLP(nn.Module):
    """Orthogonally initialised MLP: [..., in] -> [..., out_dim]."""

    hidden_sizes: Sequence[int]
    out_dim: int
    activation: str = "tanh"
    layer_norm: bool = False
    out_gain: float = 1.0
    input_norm: bool = False

    @nn.compact
    def __call__(self, x):
        # Flatten leading axes: XLA:CPU runs a dot over [B, N, in] with two contracting
        # dims in the backward pass about 2x slower than the same GEMM on [B*N, in].
        lead = x.shape[:-1]
        x = x.reshape((-1, x.shape[-1]))
        if self.input_norm:  # HARL's feature normalisation: unscaled MuJoCo states vary widely
            x = nn.LayerNorm()(x)
        x = _hidden_layers(x, self.hidden_sizes, self.activation, self.layer_norm)
        out = nn.Dense(self.out_dim, kernel_init=nn.initializers.orthogonal(self.out_gain),
                       bias_init=nn.initializers.zeros)(x)
        return out.reshape(lead + (self.out_dim,))


class GaussianHead(nn.Module):
    """MLP mean plus a state-independent log std parameter: [..., in] -> ([..., D], [D])."""

    hidden_sizes: Sequence[int]
    action_dim: int
    activation: str
    layer_norm: bool
    log_std_init: float
    input_norm: bool = False

    @nn.compact
    def __call__(self, x):
        mean = MLP(self.hidden_sizes, self.action_dim, self.activation, self.layer_norm,
                   out_gain=0.01, input_norm=self.input_norm)(x)
        log_std = self.param("log_std", nn.initializers.constant(self.log_std_init),
                             (self.action_dim,))
        return mean, log_std


@flax.struct.dataclass
class RecurrentInput:
    """Input of a recurrent network. B = S·L samples laid out sequence-major (S sequences of
    L consecutive steps of one env); any batch axes (e.g. agents) sit between B and features.

    x:     [B, ..., F] inputs.
    h:     [B, ..., H] hidden state entering the sample's sequence, repeated over its L samples
           (only a sequence's first is read) so every leaf shuffles and slices alike.
    start: [B, ..., 1] 1.0 where an episode starts: the hidden state is zeroed before the step.
    seq_len: L (static). Acting is the case L = 1, B = envs.
    """

    x: jax.Array
    h: jax.Array
    start: jax.Array
    seq_len: int = flax.struct.field(pytree_node=False, default=1)


def sequence_length(tree) -> int:
    """L of the first RecurrentInput in ``tree``; 1 (independent samples) if there is none."""
    for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, RecurrentInput)):
        if isinstance(leaf, RecurrentInput):
            return leaf.seq_len
    return 1


class _ResetGRU(nn.Module):
    """One GRU step that first zeroes the hidden state where an episode starts; scanned over
    time with shared parameters."""

    size: int

    @functools.partial(nn.scan, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=0, out_axes=0)
    @nn.compact
    def __call__(self, h, inputs):
        x, start = inputs
        h = jnp.where(start > 0, 0.0, h)
        h, y = nn.GRUCell(self.size)(h, x)
        return h, y


class GRUNet(nn.Module):
    """hidden_sizes Dense layers -> GRU(gru_size) -> Dense(out_dim), over sequences.

    ``__call__(RecurrentInput) -> (out [B, ..., out_dim], h_last [S, ..., H])``; with
    ``gaussian`` the output is ``(mean, log_std [out_dim])`` as :class:`GaussianHead`'s.
    """

    hidden_sizes: Sequence[int]
    gru_size: int
    out_dim: int
    activation: str = "tanh"
    layer_norm: bool = False
    out_gain: float = 1.0
    input_norm: bool = False
    gaussian: bool = False
    log_std_init: float = 0.0

    @nn.compact
    def __call__(self, inp: RecurrentInput):
        lead = inp.x.shape[:-1]
        L = inp.seq_len
        S = lead[0] // L
        x = inp.x.reshape((-1, inp.x.shape[-1]))
        if self.input_norm:
            x = nn.LayerNorm()(x)
        x = _hidden_layers(x, self.hidden_sizes, self.activation, self.layer_norm)
        # [B, ..., F] -> time-major sequences [L, S·..., F] for the scan: the batch axes
        # (agents) fold into the sequences, so every GRU step is one plain [rows, F] matmul.
        # With the agent axis kept apart, XLA's backward pass transposes around it (SMAX
        # 2s3z actor gradient per minibatch: 546 ms that way, 321 ms folded).
        inner = lead[1:]
        to_seq = lambda a: jnp.swapaxes(a.reshape((S, L) + a.shape[1:]), 0, 1).reshape(
            (L, -1, a.shape[-1]))
        x = x.reshape(lead + (x.shape[-1],))
        h0 = inp.h.reshape((S, L) + inp.h.shape[1:])[:, 0]
        h_last, ys = _ResetGRU(self.gru_size)(h0.reshape((-1, h0.shape[-1])),
                                              (to_seq(x), to_seq(inp.start)))
        h_last = h_last.reshape((S,) + inner + (self.gru_size,))
        ys = jnp.swapaxes(ys.reshape((L, S) + inner + (self.gru_size,)), 0, 1).reshape(
            (-1, self.gru_size))
        # The per-step hidden states [B, ..., H], read only by callers that ask for them
        # (apply(..., mutable=["intermediates"]): recurrent I2Q's Q_ss and V); free otherwise.
        self.sow("intermediates", "hidden", ys.reshape(lead + (self.gru_size,)))
        out = nn.Dense(self.out_dim, kernel_init=nn.initializers.orthogonal(self.out_gain),
                       bias_init=nn.initializers.zeros)(ys).reshape(lead + (self.out_dim,))
        if self.gaussian:
            log_std = self.param("log_std", nn.initializers.constant(self.log_std_init),
                                 (self.out_dim,))
            return (out, log_std), h_last
        return out, h_last


@dataclass(frozen=True)
class AgentStack:
    """Applies one flax module to every agent, with stacked [N, ...] or shared parameters.

    ``apply(params, x)`` maps x [..., N, in] -> outputs [..., N, ...]; x may be a
    :class:`RecurrentInput` whose leaves all have the agent axis second to last.
    """

    module: nn.Module
    n_agents: int
    shared: bool

    def init(self, key: jax.Array, in_dim: int):
        sample = jnp.zeros((1, in_dim), jnp.float32)
        if isinstance(self.module, GRUNet):
            sample = RecurrentInput(sample, jnp.zeros((1, self.module.gru_size)),
                                    jnp.zeros((1, 1)))
        if self.shared:
            return self.module.init(key, sample)
        keys = jax.random.split(key, self.n_agents)
        return jax.vmap(lambda k: self.module.init(k, sample))(keys)

    def apply(self, params, x):
        if self.shared:
            return self.module.apply(params, x)
        x_agent_first = jax.tree.map(lambda a: jnp.moveaxis(a, -2, 0), x)
        out = jax.vmap(self.module.apply)(params, x_agent_first)
        return jax.tree.map(lambda o: jnp.moveaxis(o, 0, -2) if o.ndim >= 2 else o, out)

    def apply_agent(self, params, agent: int | jax.Array, x: jax.Array):
        """Agent ``agent`` only: x [..., in] -> its output (params sliced if stacked)."""
        if not self.shared:
            params = jax.tree.map(lambda p: p[agent], params)
        return self.module.apply(params, x)


@dataclass(frozen=True)
class Actor:
    """The team's policy: observations [..., N, D] -> a distribution over [..., N] actions."""

    spec: TeamSpec
    net: NetworkConfig
    shared: bool

    @property
    def recurrent(self) -> bool:
        return self.net.recurrent

    @property
    def stack(self) -> AgentStack:
        cfg = self.net
        # The raw parameter whose soft-clipped value (see ``wrap``) is exactly log_std_init.
        log_std_init = soft_clip_inverse(cfg.log_std_init, cfg.log_std_min, cfg.log_std_max)
        if cfg.recurrent:
            module = GRUNet(tuple(cfg.hidden_sizes), cfg.gru_size, self.spec.action_dim,
                            cfg.activation, cfg.layer_norm, out_gain=0.01,
                            input_norm=cfg.input_norm, gaussian=not self.spec.discrete,
                            log_std_init=log_std_init)
        elif self.spec.discrete:
            module = MLP(tuple(cfg.hidden_sizes), self.spec.action_dim, cfg.activation,
                         cfg.layer_norm, out_gain=0.01, input_norm=cfg.input_norm)
        else:
            module = GaussianHead(tuple(cfg.hidden_sizes), self.spec.action_dim, cfg.activation,
                                  cfg.layer_norm, log_std_init, cfg.input_norm)
        return AgentStack(module, self.spec.n_agents, self.shared)

    def init(self, key):
        return self.stack.init(key, self.spec.obs_dim)

    def distribution(self, params, obs, avail: jax.Array):
        """obs [..., N, D] (or a RecurrentInput), avail [..., N, A] -> MaskedCategorical /
        DiagGaussian over [..., N]."""
        return self.step(params, obs, avail)[0]

    def step(self, params, obs, avail: jax.Array):
        """-> (distribution over [..., N], last hidden state [S, N, H] or None)."""
        out = self.stack.apply(params, obs)
        out, hidden = out if self.recurrent else (out, None)
        return self.wrap(out, avail), hidden

    def module_outputs(self, params_one, obs):
        """Unstacked parameters (one agent's slice, or the shared set) applied to every row:
        obs [..., D] -> raw outputs (logits or (mean, log std)), hidden state dropped."""
        out = self.stack.module.apply(params_one, obs)
        return out[0] if self.recurrent else out

    def distribution_of(self, params_one, obs, avail: jax.Array):
        """Unstacked parameters applied to every row: obs [..., D], avail [..., A] ->
        distribution over [...]."""
        return self.wrap(self.module_outputs(params_one, obs), avail)

    def wrap(self, out, avail):
        """Raw network outputs -> the distribution (log std smoothly bounded)."""
        if self.spec.discrete:
            return MaskedCategorical(logits=out, avail=avail)
        mean, log_std = out
        log_std = soft_clip(log_std, self.net.log_std_min, self.net.log_std_max)
        return DiagGaussian(mean=mean, log_std=jnp.broadcast_to(log_std, mean.shape),
                            dim_mask=avail)


def death_mask(x: jax.Array, alive: jax.Array, n_id: int) -> jax.Array:
    """x [..., N, F], alive [..., N] -> x with a dead agent's row zeroed except its last
    ``n_id`` entries (its one-hot id): MAPPO's death masking of critic inputs."""
    keep = alive[..., None] | (jnp.arange(x.shape[-1]) >= x.shape[-1] - n_id)
    return jnp.where(keep, x, 0.0)


@dataclass(frozen=True)
class Critic:
    """Value function returning one value per agent: [..., N].

    ``central=True``: V(s) from the env's world state [..., S], one network broadcast to the
    agents; with ``agent_state`` MAPPO's agent-specific state instead: per agent the world
    state, its own observation and its one-hot id, one shared network, death-masked (a dead
    agent's input is zeros but its id).
    ``central=False``: V_i(o_i) from each agent's observation [..., N, D] (stacked or shared),
    death-masked the same way.

    Per-agent critics are trained on dead agents' samples too (``critic_loss``): the value of
    the death-masked input is the bootstrap of the step on which the agent dies.
    """

    spec: TeamSpec
    net: NetworkConfig
    central: bool
    shared: bool = False
    agent_state: bool = False

    @property
    def recurrent(self) -> bool:
        return self.net.recurrent

    @property
    def per_agent_input(self) -> bool:
        """Whether inputs carry an agent axis ([..., N, F]) rather than one state [..., S]."""
        return not self.central or self.agent_state

    @property
    def in_dim(self) -> int:
        spec = self.spec
        if not self.central:
            return spec.obs_dim
        if not self.agent_state:
            return spec.state_dim
        own = spec.obs_dim - (spec.n_agents if spec.agent_id else 0)
        return spec.state_dim + own + spec.n_agents

    @property
    def stack(self) -> AgentStack:
        cfg = self.net
        if cfg.recurrent:
            module = GRUNet(tuple(cfg.hidden_sizes), cfg.gru_size, 1, cfg.activation,
                            cfg.layer_norm, out_gain=1.0, input_norm=cfg.input_norm)
        else:
            module = MLP(tuple(cfg.hidden_sizes), 1, cfg.activation, cfg.layer_norm,
                         out_gain=1.0, input_norm=cfg.input_norm)
        return AgentStack(module, self.spec.n_agents,
                          shared=self.central or self.shared)

    def init(self, key):
        return self.stack.init(key, self.in_dim)

    def features(self, obs: TeamObs) -> jax.Array:
        """The critic's input: obs.obs [..., N, D], obs.state [..., S], or the agent-specific
        state [..., N, S + D_own + N] (ids last; dead agents keep only their id)."""
        if not self.central:
            # Local critics see the death-masked observation: a dead agent keeps only its id
            # (all zeros without ids), so its value is one learned number, V_i(dead).
            n_id = self.spec.n_agents if self.spec.agent_id else 0
            return death_mask(obs.obs, obs.alive, n_id)
        if not self.agent_state:
            return obs.state
        spec, n = self.spec, self.spec.n_agents
        own = obs.obs[..., : spec.obs_dim - n] if spec.agent_id else obs.obs
        lead = own.shape[:-1]
        state = jnp.broadcast_to(obs.state[..., None, :], lead + obs.state.shape[-1:])
        ids = jnp.broadcast_to(jnp.eye(n, dtype=own.dtype), lead + (n,))
        return death_mask(jnp.concatenate([state, own, ids], axis=-1), obs.alive, n)

    def apply(self, params, x):
        """Features (or a RecurrentInput of them) -> (values [..., N], hidden or None)."""
        out = self.stack.apply(params, x)
        out, hidden = out if self.recurrent else (out, None)
        value = out[..., 0]
        if not self.per_agent_input:
            value = jnp.broadcast_to(value[..., None], value.shape + (self.spec.n_agents,))
        return value, hidden

    def values(self, params, obs: TeamObs) -> jax.Array:
        """Feed-forward critics: TeamObs [...] -> [..., N] (normalised-space values)."""
        return self.apply(params, self.features(obs))[0]
