"""Generalised advantage estimation and running value normalisation."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


def gae(reward, value, next_value, terminated, truncated, gamma: float, lam: float):
    """Generalised advantage estimates over a rollout, time-major.

    Bootstraps through time-limit truncation (from ``next_value``, the value of the
    observation reached before the reset) but not through termination.

    Args:
        reward:     [T, E, ...] rewards r_t (broadcast against value).
        value:      [T, E, N] V(s_t) (de-normalised).
        next_value: [T, E, N] V(s_{t+1}) of the state reached by step t, before any reset.
        terminated: [T, E] bool.   truncated: [T, E] bool.
    Returns:
        advantages [T, E, N], returns (advantages + value) [T, E, N].
    """
    return corrected_gae(reward, value, next_value, terminated, truncated,
                         jnp.ones_like(value), gamma, lam)


def corrected_gae(reward, value, next_value, terminated, truncated, trace, gamma: float,
                  lam: float):
    """GAE with truncated importance weights on the continuation (A2PO's preceding-agent
    off-policy correction): Â_t = Σ_{l≥t} (γλ)^{l−t} (Π_{k=t+1}^{l} c_k) δ_l, i.e.
    Â_t = δ_t + γλ·c_{t+1}·Â_{t+1} within an episode.

    Args: as ``gae``, plus
        trace: [T, E, N] c_t = min(1, Π_{earlier agents j} π_j^new / π_j^old at step t); the
            caller truncates. All ones gives exactly ``gae``.
    Returns:
        advantages [T, E, N], returns (advantages + value) [T, E, N].
    """
    expand = lambda x: x.reshape(x.shape + (1,) * (value.ndim - x.ndim))
    reward = expand(reward)
    not_terminated = 1.0 - expand(terminated).astype(value.dtype)
    not_done = 1.0 - expand(terminated | truncated).astype(value.dtype)
    delta = reward + gamma * next_value * not_terminated - value
    # c_{t+1} weighs the continuation from step t; the last step has no continuation.
    next_trace = jnp.concatenate([trace[1:], jnp.ones_like(trace[:1])])

    def backward(carry, inputs):
        delta_t, not_done_t, trace_t = inputs
        advantage = delta_t + gamma * lam * not_done_t * trace_t * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(value[0]),
                                 (delta, not_done, next_trace), reverse=True)
    return advantages, advantages + value


@flax.struct.dataclass
class RunningNorm:
    """Running mean and variance of a stream (Chan et al.'s parallel update), shape [...]."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape=()):
        return cls(jnp.zeros(shape), jnp.ones(shape), jnp.asarray(1e-4))

    def update(self, batch: jax.Array, axes=None) -> "RunningNorm":
        """Fold in ``batch``, reducing over ``axes`` (all leading axes by default)."""
        if axes is None:
            axes = tuple(range(batch.ndim - self.mean.ndim))
        batch_mean = batch.mean(axes)
        batch_var = batch.var(axes)
        batch_count = jnp.asarray(batch.size / max(self.mean.size, 1), jnp.float32)
        total = self.count + batch_count
        delta = batch_mean - self.mean
        mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        return RunningNorm(mean, m2 / total, total)

    @property
    def std(self):
        return jnp.sqrt(jnp.maximum(self.var, 1e-8))

    def normalise(self, x):
        return (x - self.mean) / self.std

    def denormalise(self, x):
        return x * self.std + self.mean
