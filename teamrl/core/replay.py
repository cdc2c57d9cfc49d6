"""Fixed-capacity circular replay buffers compiled in JAX: of single items (transitions), and
of whole episodes for recurrent learners.

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
    add_where(buffer, items, keep) -> ReplayBuffer    # only the items with keep [B] true

Whole episodes (PyMARL's episode buffer, for recurrent value learners): an
:class:`EpisodeBuffer` holds C episodes padded to L + 1 slots (L = the env's step limit) in a
ReplayBuffer whose items are [L + 1, ...], with a ``filled`` [L + 1] bool leaf marking the
episode's transitions, plus the episode each of E envs is in the middle of. Slot t of an
episode holds the observation the agents acted on at step t and what the step produced;
slot ``length`` holds the observation the last step reached (before any reset), so an
unroll over all L + 1 slots gives every transition's next observation.

    init_episodes(example_step, capacity, max_steps, num_envs) -> EpisodeBuffer
    add_steps(buffer, current, following, done) -> EpisodeBuffer   # leaves [T, E, ...]
    sample(buffer.episodes, key, batch_size) -> episodes            # leaves [B, L + 1, ...]

Not flashbax: its buffers add a statically shaped batch with every row written (its
trajectory buffer's ``add`` sets ``experience[:, indices] = batch`` for all add_batch_size
rows), while here a data-dependent number of episodes (0..E per step) finishes and must be
committed, and its trajectory buffer samples fixed-length windows at multiples of a period
along each env's time axis, not aligned to episode starts.
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


def clear(buffer):
    """An empty buffer of the same capacity (old data stays in memory but is never sampled).
    For an EpisodeBuffer: no stored episodes; the envs' running episodes are kept."""
    if isinstance(buffer, EpisodeBuffer):
        return buffer.replace(episodes=clear(buffer.episodes))
    return buffer.replace(position=jnp.int32(0), size=jnp.int32(0))


def add_where(buffer: ReplayBuffer, items, keep: jax.Array) -> ReplayBuffer:
    """Append the items b with keep[b] (items: leaves [B, ...]; keep: [B] bool), in order, at
    ``position``, wrapping around; the others are not written. The count is data-dependent,
    so the write is a scatter whose unkept rows point past the end and are dropped. When more
    than C are kept, only the last C are written (as ``add``)."""
    capacity = buffer.capacity
    keep = keep.astype(bool)
    rank = jnp.cumsum(keep) - 1  # [B] order among the kept items
    count = keep.sum().astype(jnp.int32)
    keep = keep & (rank >= count - capacity)
    index = jnp.where(keep, (buffer.position + rank) % capacity, capacity)
    data = jax.tree.map(lambda d, x: d.at[index].set(x.astype(d.dtype), mode="drop"),
                        buffer.data, items)
    return ReplayBuffer(data, ((buffer.position + count) % capacity).astype(jnp.int32),
                        jnp.minimum(buffer.size + count, capacity).astype(jnp.int32))


# ------------------------------------------------------------------------------ episodes
@flax.struct.dataclass
class EpisodeBuffer:
    """episodes: ReplayBuffer of whole episodes, leaves [C, L + 1, ...] including ``filled``
    [C, L + 1] bool (slot t holds a transition); running: the episode each env is in, leaves
    [E, L + 1, ...] (same layout); step: [E] int32 steps of it collected so far."""

    episodes: ReplayBuffer
    running: Any
    step: jax.Array

    @property
    def max_steps(self) -> int:
        """L (static)."""
        return self.running["filled"].shape[1] - 1


def init_episodes(example_step: dict, capacity: int, max_steps: int,
                  num_envs: int) -> EpisodeBuffer:
    """An empty episode buffer; ``example_step``: {name: array [...]} of one step's data (the
    ``filled`` flag is added)."""
    if max_steps < 1:
        raise ValueError(f"episode replay needs the env's step limit, got {max_steps}")
    step = {**example_step, "filled": jnp.zeros((), bool)}
    episode = jax.tree.map(lambda x: jnp.zeros((max_steps + 1,) + jnp.shape(x),
                                               jnp.asarray(x).dtype), step)
    running = jax.tree.map(lambda x: jnp.zeros((num_envs,) + x.shape, x.dtype), episode)
    return EpisodeBuffer(init(episode, capacity), running, jnp.zeros((num_envs,), jnp.int32))


def add_steps(buffer: EpisodeBuffer, current: dict, following: dict,
              done: jax.Array) -> EpisodeBuffer:
    """Append T steps of E envs to their running episodes; every episode that ends is
    committed whole (padding zeroed) and its env starts a new one.

    Args:
        current: {name: [T, E, ...]} each step's data, written at slot ``step`` of the env's
            episode (all of ``example_step``'s names except those only in ``following``).
        following: {name: [T, E, ...]} written at slot ``step + 1``: the observation the step
            reached (before any reset), overwritten by the next step's ``current`` unless the
            episode ends here.
        done: [T, E] bool, the step ended the episode (terminated or truncated).

    An episode reaching L steps without ``done`` (longer than the env's declared limit) is
    committed as it is and the env's next steps start a new stored episode.
    """
    num_envs = buffer.step.shape[0]
    limit = buffer.max_steps
    envs = jnp.arange(num_envs)

    def write(buf: EpisodeBuffer, xs):
        cur, nxt, end = xs
        t = buf.step
        running = dict(buf.running)
        for name, x in cur.items():  # a handful of named fields, not time steps or agents
            running[name] = running[name].at[envs, t].set(x.astype(running[name].dtype))
        for name, x in nxt.items():
            running[name] = running[name].at[envs, t + 1].set(x.astype(running[name].dtype))
        running["filled"] = running["filled"].at[envs, t].set(True)
        end = end | (t + 1 >= limit)
        episodes = add_where(buf.episodes, running, end)
        blank = lambda x: jnp.where(end.reshape((-1,) + (1,) * (x.ndim - 1)),
                                    jnp.zeros((), x.dtype), x)
        running = jax.tree.map(blank, running)
        return EpisodeBuffer(episodes, running, jnp.where(end, 0, t + 1).astype(jnp.int32)), None

    buffer, _ = jax.lax.scan(write, buffer, (current, following, done))
    return buffer
