"""Observation normalisation for any algorithm (``obs_norm=true``).

:class:`ObsNormalised` wraps an algorithm: observations ([..., N, D], per agent and entry)
and global states ([..., S]) are standardised by running mean/std statistics and clipped to
±``clip`` before the algorithm sees them, in acting, evaluation and updates alike. The
statistics live in the train state (so they are checkpointed and restored with it) and are
folded in after each update from the rollout's raw observations: the update itself uses the
statistics the rollout was collected with, so the policy that computed the stored log-probs
is exactly the one the update starts from. Padding and agent-id entries are left as they are.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax.numpy as jnp
import numpy as np

from teamrl.core.advantages import RunningNorm
from teamrl.envs.spec import TeamObs, TeamSpec


@flax.struct.dataclass
class ObsNormState:
    """The wrapped algorithm's train state plus observation ([N, D]) and state ([S])
    statistics."""

    inner: Any
    obs: RunningNorm
    state: RunningNorm


class ObsNormalised:
    """An algorithm whose inputs are normalised by running statistics (see module doc)."""

    def __init__(self, algo, spec: TeamSpec, clip: float = 10.0):
        self.algo, self.spec, self.clip = algo, spec, clip
        # Only the env's own observation entries are normalised (not padding or agent ids).
        self.raw_mask = jnp.asarray(np.arange(spec.obs_dim)[None, :]
                                    < np.asarray(spec.obs_dims)[:, None])

    def __getattr__(self, name):  # everything else is the wrapped algorithm's
        return getattr(self.algo, name)

    def init(self, key) -> ObsNormState:
        spec = self.spec
        return ObsNormState(self.algo.init(key), RunningNorm.create((spec.n_agents,
                                                                     spec.obs_dim)),
                            RunningNorm.create((spec.state_dim,)))

    def normalise(self, st: ObsNormState, obs: TeamObs) -> TeamObs:
        """TeamObs with obs [..., N, D] and state [..., S] standardised and clipped."""
        scaled = jnp.clip(st.obs.normalise(obs.obs), -self.clip, self.clip)
        return obs._replace(obs=jnp.where(self.raw_mask, scaled, obs.obs),
                            state=jnp.clip(st.state.normalise(obs.state), -self.clip,
                                           self.clip))

    def act(self, st: ObsNormState, obs: TeamObs, key):
        return self.algo.act(st.inner, self.normalise(st, obs), key)

    def values(self, st: ObsNormState, obs: TeamObs):
        return self.algo.values(st.inner, self.normalise(st, obs))

    def policy_action(self, st: ObsNormState, obs: TeamObs, key, deterministic: bool):
        return self.algo.policy_action(st.inner, self.normalise(st, obs), key, deterministic)

    def recurrent_act(self, st: ObsNormState, obs: TeamObs, key, memory):
        return self.algo.recurrent_act(st.inner, self.normalise(st, obs), key, memory)

    def recurrent_value(self, st: ObsNormState, obs: TeamObs, memory):
        return self.algo.recurrent_value(st.inner, self.normalise(st, obs), memory)

    def recurrent_policy_action(self, st: ObsNormState, obs: TeamObs, key, deterministic: bool,
                                memory):
        return self.algo.recurrent_policy_action(st.inner, self.normalise(st, obs), key,
                                                 deterministic, memory)

    def update(self, st: ObsNormState, batch, key):
        normalised = {"obs": self.normalise(st, batch.obs)}
        if getattr(batch, "next_obs", None) is not None:
            normalised["next_obs"] = self.normalise(st, batch.next_obs)
        inner, metrics = self.algo.update(st.inner, batch._replace(**normalised), key)
        lead = tuple(range(batch.obs.obs.ndim - 2))
        return ObsNormState(inner, st.obs.update(batch.obs.obs, lead),
                            st.state.update(batch.obs.state, lead)), metrics
