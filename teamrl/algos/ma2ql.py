"""MA2QL (Su, Zhou & Lu 2022, multi-agent alternate Q-learning): IQL where agents take turns.

Agents learn round robin: turn k (k = 0, 1, 2, ...) belongs to agent k mod N and lasts
``turn_length`` learning updates (a Trainer update = one rollout plus ``updates_per_rollout``
gradient steps; updates before ``learning_starts`` do not count). During agent k's turn only
Q_k, its target network and its Adam state change; every agent keeps acting ε-greedily with
its current Q (the others' Q are frozen, so, up to exploration noise, agent k faces a
stationary MDP). The paper's argument: if each turn brings Q_k ε-close to the optimal
response to the others' (fixed) greedy policies, the joint greedy policy improves turn by
turn and converges to a Nash equilibrium, which IQL (everyone chasing moving targets) does
not guarantee. Learning targets are IQL's double DQN targets (``iql.py``).

The paper leaves turn length and buffer handling open (REFERENCE.md §3); our choices:

* ``turn_length`` = 100 updates (400 gradient steps at the default updates_per_rollout=4;
  the shipped presets give about 4 target syncs per turn: didactic 50 updates x 4 steps,
  MPE 100 updates x 8 steps, targets every 50 / 200 steps). A turn must be long enough for
  Q_k to approach its best response to the frozen partners (the convergence argument rests
  on it) yet short enough that every agent gets several turns in a run: 1M MPE steps are
  25 turns, about 8 per agent. Very short turns make MA2QL an IQL with a slower clock; very
  long ones leave the last agents little training.
* ``sync_target_on_turn=true``: at the start of its turn agent k's target network is set to
  its online network. Q_k has not moved since its last turn but its target may lag by up to
  ``target_update_every`` steps; a fresh copy starts the turn's Q-iteration from the agent's
  current estimate rather than a stale one (no cost, no effect on other agents).
* ``clear_buffer_on_turn=false``: the buffer is kept across turns. Clearing would make the
  turn's data come only from the current (fixed) partners, matching the stationarity
  argument, but it throws away most of the experience and restarts each turn from one
  rollout of data; keeping it, transitions generated under the partners' previous policies
  fade out as the circular buffer is overwritten (size ``buffer_size`` against the turn's
  ``turn_length * num_envs * rollout_length`` new transitions), which is the usual
  trade-off in deep MA2QL. Set it to true for the strict version.

A shared Q-network cannot take turns (updating it moves every agent), so ``share_q=true`` is
rejected.

Recurrent agents (``recurrent=true``): as IQL's (``iql.py``), whole episodes replayed and the
turn's agent's GRU unrolled from the episode start; the turn clock and the buffer handling
are the same (``clear_buffer_on_turn`` forgets the stored episodes, not the envs' running
ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from teamrl.core import replay
from teamrl.algos.iql import IQL, IQLConfig, QTrainState, put_agent, take_agent
from teamrl.config import ConfigError, option


@dataclass
class MA2QLConfig(IQLConfig):
    """IQL's settings plus the turn schedule."""

    turn_length: int = option(100, "learning updates (rollout + updates_per_rollout gradient "
                              "steps) per agent turn", low=1)
    sync_target_on_turn: bool = option(True, "copy the learning agent's Q-network into its "
                                       "target at the start of its turn")
    clear_buffer_on_turn: bool = option(False, "empty the replay buffer at the start of each "
                                        "turn (else keep experience across turns)")


class MA2QL(IQL):
    config_class = MA2QLConfig

    @classmethod
    def check(cls, spec, cfg: MA2QLConfig, run) -> None:
        super().check(spec, cfg, run)
        if cfg.share_q:
            raise ConfigError("ma2ql updates one agent's Q-network per turn, so it needs "
                              "separate networks: share_q=true is not supported")

    def init_algo_state(self):
        """learn_updates: [] int32 Trainer updates that took gradient steps (turn clock)."""
        return {"learn_updates": jnp.int32(0)}

    def turn_agent(self, ts: QTrainState) -> jax.Array:
        """[] int32 the agent whose turn it is."""
        turn = ts.algo_state["learn_updates"] // self.cfg.turn_length
        return (turn % self.spec.n_agents).astype(jnp.int32)

    def before_insert(self, ts: QTrainState, learning: jax.Array) -> QTrainState:
        """At the first learning update of a turn: optionally sync the new agent's target
        and clear the buffer (before the rollout, collected with exactly the partners'
        policies of this turn, is inserted)."""
        cfg = self.cfg
        starts = learning & (ts.algo_state["learn_updates"] % cfg.turn_length == 0)
        if cfg.sync_target_on_turn:
            agent = self.turn_agent(ts)
            synced = put_agent(ts.target_params, agent, take_agent(ts.params, agent))
            ts = ts.replace(target_params=jax.tree.map(
                lambda new, old: jnp.where(starts, new, old), synced, ts.target_params))
        if cfg.clear_buffer_on_turn:
            cleared = replay.clear(ts.buffer)
            ts = ts.replace(buffer=jax.tree.map(lambda new, old: jnp.where(starts, new, old),
                                                cleared, ts.buffer))
        return ts

    def gradient_step(self, ts: QTrainState, key: jax.Array):
        """One minibatch step of the turn's agent only: its slice of the stacked parameters,
        target and optimiser state is read, updated and written back."""
        agent = self.turn_agent(ts)
        columns = take_agent(self.columns(self.sample(ts.buffer, key)), agent)
        params, target, opt_state = (take_agent(x, agent) for x in
                                     (ts.params, ts.target_params, ts.opt_state))
        grads, metrics = jax.grad(self.agent_loss, has_aux=True)(params, target, columns)
        params, opt_state, norm = self.optimiser_step(self.agent_tx, grads, opt_state, params)
        grad_steps = ts.grad_steps + 1
        target = self.update_target(target, params, grad_steps)
        ts = ts.replace(params=put_agent(ts.params, agent, params),
                        target_params=put_agent(ts.target_params, agent, target),
                        opt_state=put_agent(ts.opt_state, agent, opt_state),
                        grad_steps=grad_steps)
        return ts, {**metrics, "grad_norm": norm}

    def after_learning(self, ts: QTrainState, learning: jax.Array):
        agent = self.turn_agent(ts)
        clock = ts.algo_state["learn_updates"] + learning.astype(jnp.int32)
        return (ts.replace(algo_state={"learn_updates": clock}),
                {"turn_agent": agent.astype(jnp.float32)})
