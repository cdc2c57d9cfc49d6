"""Collect trajectories from compiled team environments with ``lax.scan`` (auto-reset inside
the adapter). The same ``Batch`` type is produced by every rollout path.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from teamrl.envs.spec import TeamObs


class Batch(NamedTuple):
    """One update's experience, time-major: T steps × E envs (× N agents).

    obs:        TeamObs with fields [T, E, N, D] / [T, E, S] / [T, E, N, A] / [T, E, N].
    action:     [T, E, N] int32 or [T, E, N, A] float32 (as sampled, before clipping).
    log_prob:   [T, E, N] log pi_old(a_i | o_i).
    value:      [T, E, N] critic output at obs (normalised space).
    next_value: [T, E, N] critic output at the observation reached by the step, before any
                reset (normalised space); only used where the step truncated or continued.
    reward:     [T, E] team reward.  terminated, truncated: [T, E] bool.
    """

    obs: TeamObs
    action: jax.Array
    log_prob: jax.Array
    value: jax.Array
    next_value: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array


class EpisodeStats(NamedTuple):
    """Returns of the episodes that finished during one rollout ([] each)."""

    return_sum: jax.Array
    return_min: jax.Array
    return_max: jax.Array
    count: jax.Array


class RolloutCarry(NamedTuple):
    env_state: object     # AdapterState batched over [E]
    obs: TeamObs          # [E, ...]
    episode_return: jax.Array  # [E] return accumulated in the running episodes


def collect(team_env, act: Callable, value_fn: Callable, carry: RolloutCarry, key: jax.Array,
            length: int) -> tuple[RolloutCarry, Batch, EpisodeStats]:
    """Run ``length`` steps of E envs.

    Args:
        act: (obs: TeamObs [E,...], key) -> (action [E, N(, A)], log_prob [E, N], value [E, N]
            or None). With ``value=None`` the critic is evaluated after the scan instead.
        value_fn: (obs: TeamObs [...]) -> value [..., N], the critic at arbitrary observations.

    The critic does not influence the actions, so it need not run inside the sequential scan:
    ``next_value`` (and ``value`` when ``act`` leaves it out) come from one batched critic call
    over all T·E observations after the scan, which on CPU is cheaper than T small calls
    dominated by per-op overhead (MPE, 16 envs x 128 steps: rollout 15 -> 12 ms).
    """
    num_envs = carry.episode_return.shape[0]
    env_step = jax.vmap(team_env.step)

    def step(carry: RolloutCarry, step_key):
        act_key, env_key = jax.random.split(step_key)
        action, log_prob, value = act(carry.obs, act_key)
        env_state, out = env_step(jax.random.split(env_key, num_envs), carry.env_state, action)
        episode_return = carry.episode_return + out.reward
        done = out.terminated | out.truncated
        finished = jnp.where(done, episode_return, jnp.nan)
        # next_value is filled in after the scan from final_obs (the observation reached by
        # the step, before any reset, so truncated steps bootstrap from the right state).
        transition = (Batch(carry.obs, action, log_prob, value, None, out.reward,
                            out.terminated, out.truncated), out.final_obs)
        new_carry = RolloutCarry(env_state, out.next_obs, jnp.where(done, 0.0, episode_return))
        return new_carry, (transition, finished)

    carry, ((batch, final_obs), finished) = jax.lax.scan(step, carry,
                                                         jax.random.split(key, length))
    if batch.value is None:
        # One critic call over [obs; final_obs] stacked on the time axis: [2T, E, ...].
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), batch.obs, final_obs)
        value, next_value = jnp.split(value_fn(both), 2)
        batch = batch._replace(value=value, next_value=next_value)
    else:
        batch = batch._replace(next_value=value_fn(final_obs))
    done_mask = ~jnp.isnan(finished)
    stats = EpisodeStats(
        return_sum=jnp.where(done_mask, finished, 0.0).sum(),
        return_min=jnp.where(done_mask, finished, jnp.inf).min(),
        return_max=jnp.where(done_mask, finished, -jnp.inf).max(),
        count=done_mask.sum(),
    )
    return carry, batch, stats


def reset_envs(team_env, key: jax.Array, num_envs: int) -> RolloutCarry:
    env_state, obs = jax.vmap(team_env.reset)(jax.random.split(key, num_envs))
    return RolloutCarry(env_state, obs, jnp.zeros((num_envs,), jnp.float32))
