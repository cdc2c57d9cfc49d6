"""Actor and critic networks, with per-agent parameters stacked on a leading agent axis
(heterogeneous agents) or one shared set applied to every agent (who then see an agent id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from teamrl.config import NetworkConfig
from teamrl.envs.spec import TeamSpec
from teamrl.policies import DiagGaussian, MaskedCategorical

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu}


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
        act = _ACTIVATIONS[self.activation]
        for width in self.hidden_sizes:
            x = nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2)),
                         bias_init=nn.initializers.zeros)(x)
            x = act(x)
            if self.layer_norm:  # after the activation, as HARL's MLP layers
                x = nn.LayerNorm()(x)
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


@dataclass(frozen=True)
class AgentStack:
    """Applies one flax module to every agent, with stacked [N, ...] or shared parameters.

    ``apply(params, x)`` maps x [..., N, in] -> outputs [..., N, ...].
    """

    module: nn.Module
    n_agents: int
    shared: bool

    def init(self, key: jax.Array, in_dim: int):
        sample = jnp.zeros((1, in_dim), jnp.float32)
        if self.shared:
            return self.module.init(key, sample)
        keys = jax.random.split(key, self.n_agents)
        return jax.vmap(lambda k: self.module.init(k, sample))(keys)

    def apply(self, params, x: jax.Array):
        if self.shared:
            return self.module.apply(params, x)
        x_agent_first = jnp.moveaxis(x, -2, 0)
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
    def stack(self) -> AgentStack:
        cfg = self.net
        if self.spec.discrete:
            module = MLP(tuple(cfg.hidden_sizes), self.spec.action_dim, cfg.activation,
                         cfg.layer_norm, out_gain=0.01, input_norm=cfg.input_norm)
        else:
            module = GaussianHead(tuple(cfg.hidden_sizes), self.spec.action_dim, cfg.activation,
                                  cfg.layer_norm, cfg.log_std_init, cfg.input_norm)
        return AgentStack(module, self.spec.n_agents, self.shared)

    def init(self, key):
        return self.stack.init(key, self.spec.obs_dim)

    def distribution(self, params, obs: jax.Array, avail: jax.Array):
        """obs [..., N, D], avail [..., N, A] -> MaskedCategorical / DiagGaussian over [..., N]."""
        out = self.stack.apply(params, obs)
        return self.wrap(out, avail)

    def distribution_of(self, params_one, obs: jax.Array, avail: jax.Array):
        """Unstacked parameters (one agent's slice, or the shared set) applied to every row:
        obs [..., D], avail [..., A] -> distribution over [...]."""
        return self.wrap(self.stack.module.apply(params_one, obs), avail)

    def wrap(self, out, avail):
        """Raw network outputs -> the distribution (log std clipped)."""
        if self.spec.discrete:
            return MaskedCategorical(logits=out, avail=avail)
        mean, log_std = out
        log_std = jnp.clip(log_std, self.net.log_std_min, self.net.log_std_max)
        return DiagGaussian(mean=mean, log_std=jnp.broadcast_to(log_std, mean.shape),
                            dim_mask=avail)


@dataclass(frozen=True)
class Critic:
    """Value function returning one value per agent: [..., N].

    ``central=True``: V(s) from the global state [..., S], one network, broadcast to agents.
    ``central=False``: V_i(o_i) from each agent's observation [..., N, D] (stacked or shared).
    """

    spec: TeamSpec
    net: NetworkConfig
    central: bool
    shared: bool = False

    @property
    def stack(self) -> AgentStack:
        cfg = self.net
        module = MLP(tuple(cfg.hidden_sizes), 1, cfg.activation, cfg.layer_norm, out_gain=1.0,
                     input_norm=cfg.input_norm)
        return AgentStack(module, self.spec.n_agents, shared=self.central or self.shared)

    def init(self, key):
        in_dim = self.spec.state_dim if self.central else self.spec.obs_dim
        return self.stack.init(key, in_dim)

    def values(self, params, obs: jax.Array, state: jax.Array) -> jax.Array:
        """obs [..., N, D], state [..., S] -> [..., N] (normalised-space values)."""
        if self.central:
            value = self.stack.apply(params, state)[..., 0]
            return jnp.broadcast_to(value[..., None], obs.shape[:-1])
        return self.stack.apply(params, obs)[..., 0]
