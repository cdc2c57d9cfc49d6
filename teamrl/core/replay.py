"""A fixed-capacity circular replay buffer compiled in JAX.

The buffer is a pytree (``flax.struct``) of arrays, so it lives inside an algorithm's train
state: it is carried through ``jit`` / ``scan`` / ``vmap`` over seeds like any parameter and
serialised whole with the checkpoint (a resumed run samples from the same experience).

Layout: every leaf of ``data`` has shape [C, ...] (C = capacity). Items are written at
``position`` and onwards, wrapping around; the filled entries are always indices [0, size),
because writing starts at 0 and only overwrites once the buffer is full, so uniform sampling
over the filled entries is ``randint(0, size)``.

Functions (all pure, jittable):

    init(example_item, capacity) -> ReplayBuffer      # example_item: leaves [...] (one item)
    add(buffer, items) -> ReplayBuffer                # items: leaves [B, ...]
    sample(buffer, key, batch_size) -> items          # leaves [batch_size, ...]
    clear(buffer) -> ReplayBuffer                     # forget everything (data kept, unsampled)
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class ReplayBuffer:
    """data: pytree of [C, ...] arrays; position: [] int32 next write index; size: [] int32
    number of filled entries (<= C)."""

    data: Any
    position: jax.Array
    size: jax.Array

    @property
    def capacity(self) -> int:
        """C, static (from the leaves' leading dimension)."""
        return jax.tree.leaves(self.data)[0].shape[0]


def init(example_item, capacity: int) -> ReplayBuffer:
    """An empty buffer for items shaped like ``example_item`` (leaves [...], any dtypes)."""
    if capacity < 1:
        raise ValueError(f"replay capacity must be >= 1, got {capacity}")
    data = jax.tree.map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype),
                        example_item)
    return ReplayBuffer(data, jnp.int32(0), jnp.int32(0))


def add(buffer: ReplayBuffer, items) -> ReplayBuffer:
    """Append B items (leaves [B, ...]) at ``position``, wrapping around the end.

    When B > C only the last C items can survive, and they are the ones written (a scatter
    with repeated indices would leave the winner unspecified). Item b lands at index
    (position + b) mod C, so after the call ``position`` is (position + B) mod C either way.
    """
    capacity = buffer.capacity
    count = jax.tree.leaves(items)[0].shape[0]
    kept = min(count, capacity)
    items = jax.tree.map(lambda x: x[count - kept:], items)
    index = (buffer.position + (count - kept) + jnp.arange(kept)) % capacity
    data = jax.tree.map(lambda d, x: d.at[index].set(x.astype(d.dtype)), buffer.data, items)
    return ReplayBuffer(data, ((buffer.position + count) % capacity).astype(jnp.int32),
                        jnp.minimum(buffer.size + count, capacity).astype(jnp.int32))


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int):
    """``batch_size`` items drawn uniformly with replacement from the filled entries
    (leaves [batch_size, ...]). On an empty buffer it returns copies of entry 0 (zeros);
    callers gate learning on ``size`` (e.g. ``learning_starts``)."""
    index = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda d: d[index], buffer.data)


def clear(buffer: ReplayBuffer) -> ReplayBuffer:
    """An empty buffer of the same capacity (old data stays in memory but is never sampled)."""
    return buffer.replace(position=jnp.int32(0), size=jnp.int32(0))
