"""Action distributions, implemented once: masked categorical and diagonal Gaussian.

Both are pytrees (flax.struct) so they pass through vmap/scan. All per-action reductions
(log-prob, entropy, KL) return one value per agent: for continuous actions they *sum* over
the real action dimensions, so ratios are products over dimensions (never per dimension).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

_MASKED_LOGIT = -1e9


def _knee(low: float, high: float) -> float:
    """Width of the saturating band inside each bound of :func:`soft_clip`."""
    return min(1.0, (high - low) / 2)


def soft_clip(x, low: float, high: float, xp=jnp):
    """Smooth clamp of x (any shape) into [low, high], for the Gaussian log std.

    The identity on [low + w, high - w], w = min(1, (high - low) / 2); within w of a bound,
    a tanh tail (C², slope 1 at the knee) that tends to the bound. A hard clip's gradient
    is 0 beyond a bound, so one step past it froze the log std there; this one's gradient
    is positive everywhere and decays smoothly (sech² of the distance past the knee / w).
    low == high pins x to low. ``xp``: jax.numpy, or numpy for host-side acting.
    """
    w = _knee(low, high)
    if w <= 0:
        return xp.clip(x, low, high)
    lo, hi = low + w, high - w
    upper = hi + w * xp.tanh((x - hi) / w)
    lower = lo + w * xp.tanh((x - lo) / w)
    return xp.where(x > hi, upper, xp.where(x < lo, lower, x))


def soft_clip_inverse(y: float, low: float, high: float) -> float:
    """The x with soft_clip(x, low, high) == y (y inside (low, high); clamped just inside
    otherwise): the initial log-std parameter that makes the initial log std exactly y."""
    w = _knee(low, high)
    if w <= 0:
        return float(low)
    lo, hi = low + w, high - w
    y = min(max(float(y), low + 1e-6 * w), high - 1e-6 * w)
    if y > hi:
        return hi + w * math.atanh((y - hi) / w)
    if y < lo:
        return lo + w * math.atanh((y - lo) / w)
    return y


@flax.struct.dataclass
class MaskedCategorical:
    """Categorical over A actions with unavailable actions removed.

    logits: [..., A]; avail: [..., A] bool (at least one True per row).
    """

    logits: jax.Array
    avail: jax.Array

    @property
    def log_probs(self) -> jax.Array:
        """[..., A] normalised log-probabilities; unavailable entries are -1e9-ish."""
        return jax.nn.log_softmax(jnp.where(self.avail, self.logits, _MASKED_LOGIT), axis=-1)

    @property
    def probs(self) -> jax.Array:
        return jnp.where(self.avail, jnp.exp(self.log_probs), 0.0)

    def sample(self, key: jax.Array) -> jax.Array:
        """[...] int32 actions, never an unavailable one."""
        masked = jnp.where(self.avail, self.logits, -jnp.inf)
        return jax.random.categorical(key, masked, axis=-1).astype(jnp.int32)

    def mode(self) -> jax.Array:
        return jnp.argmax(jnp.where(self.avail, self.logits, -jnp.inf), axis=-1).astype(jnp.int32)

    def log_prob(self, action: jax.Array) -> jax.Array:
        """[...] log pi(action)."""
        # A one-hot select-and-sum rather than take_along_axis: the gather's gradient is a
        # scatter, which XLA:CPU does not fuse; this is an elementwise select plus a reduce.
        one_hot = action[..., None] == jnp.arange(self.logits.shape[-1])
        return jnp.sum(jnp.where(one_hot, self.log_probs, 0.0), axis=-1)

    def entropy(self) -> jax.Array:
        """[...] entropy over available actions only."""
        return -jnp.sum(jnp.where(self.avail, self.probs * self.log_probs, 0.0), axis=-1)

    def kl(self, other: "MaskedCategorical") -> jax.Array:
        """[...] KL(self || other), summed over actions available to ``self``."""
        terms = self.probs * (self.log_probs - other.log_probs)
        return jnp.sum(jnp.where(self.avail, terms, 0.0), axis=-1)


@flax.struct.dataclass
class DiagGaussian:
    """Diagonal Gaussian over D padded dims; only dims with ``dim_mask`` count.

    mean: [..., D]; log_std: [..., D] (broadcastable); dim_mask: [..., D] bool.
    """

    mean: jax.Array
    log_std: jax.Array
    dim_mask: jax.Array

    def _sum(self, per_dim: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(self.dim_mask, per_dim, 0.0), axis=-1)

    def sample(self, key: jax.Array) -> jax.Array:
        """[..., D] actions; padded dims are 0."""
        noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return jnp.where(self.dim_mask, self.mean + jnp.exp(self.log_std) * noise, 0.0)

    def mode(self) -> jax.Array:
        return jnp.where(self.dim_mask, self.mean, 0.0)

    def log_prob(self, action: jax.Array) -> jax.Array:
        z = (action - self.mean) * jnp.exp(-self.log_std)
        return self._sum(-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi))

    def entropy(self) -> jax.Array:
        return self._sum(jnp.broadcast_to(0.5 + 0.5 * math.log(2 * math.pi) + self.log_std,
                                          self.mean.shape))

    def kl(self, other: "DiagGaussian") -> jax.Array:
        """[...] KL(self || other)."""
        var_ratio = jnp.exp(2 * (self.log_std - other.log_std))
        mean_term = ((self.mean - other.mean) * jnp.exp(-other.log_std)) ** 2
        return self._sum(other.log_std - self.log_std + 0.5 * (var_ratio + mean_term) - 0.5)


Distribution = MaskedCategorical | DiagGaussian
