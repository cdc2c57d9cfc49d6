"""SMAX, JaxMARL's compiled re-implementation of StarCraft micromanagement (SMAC), against its
heuristic enemy, with the protocol hooks the team adapter reads.

``TeamSMAX`` adds to jaxmarl's ``HeuristicEnemySMAX``:

* ``world_state(state)``: the env's global state (every unit's health, position, cooldown and
  type, zeroed for dead units, plus teams and types) for centralised critics;
* ``agents_alive(state)``: [N] bool, which allied units are alive (dead agents are masked out
  of policy losses and death-masked for critics; their only available action is ``stop``);
* ``won(state)``: the battle is won, i.e. every enemy is dead and at least one ally is alive
  (jaxmarl pays its win bonus under the same condition);
* ``decided(state)``: the battle is over because one side is dead, so an episode that ends on
  the time-limit step with a decided battle is a termination, not a truncation (jaxmarl's
  ``done`` does not say which of the two ended it).

The maps are jaxmarl's own scenarios (``jaxmarl.environments.smax.smax_env``); SMAC maps with
units SMAX does not simulate (medivacs in MMM/MMM2, the spine crawler of 2s_vs_1sc) are not
available.
"""

from __future__ import annotations

import jax.numpy as jnp

import teamrl.envs.quiet_jaxmarl  # noqa: F401  (before any jaxmarl import)
from jaxmarl.environments.smax import HeuristicEnemySMAX  # noqa: E402
from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO  # noqa: E402


def smax_maps() -> list[str]:
    """The map names jaxmarl ships, in its own order."""
    return list(MAP_NAME_TO_SCENARIO)


class TeamSMAX(HeuristicEnemySMAX):
    """HeuristicEnemySMAX plus ``world_state``, ``agents_alive`` and ``won`` (see module doc).

    The state is jaxmarl's wrapper state; ``state.state`` is the SMAX game state.
    """

    def world_state(self, state):
        return self.get_world_state(state)

    def agents_alive(self, state):
        return state.state.unit_alive[: self.num_allies]

    def won(self, state):
        alive = state.state.unit_alive
        return jnp.all(~alive[self.num_allies:]) & jnp.any(alive[: self.num_allies])

    def decided(self, state):
        alive = state.state.unit_alive
        return jnp.all(~alive[self.num_allies:]) | jnp.all(~alive[: self.num_allies])


def make_smax(map_name: str, see_enemy_actions: bool, walls_cause_death: bool,
              attack_mode: str, max_steps: int, won_battle_bonus: float) -> TeamSMAX:
    """The SMAX battle ``map_name`` against the heuristic enemy."""
    return TeamSMAX(scenario=MAP_NAME_TO_SCENARIO[map_name], attack_mode=attack_mode,
                    see_enemy_actions=see_enemy_actions, walls_cause_death=walls_cause_death,
                    max_steps=max_steps, won_battle_bonus=won_battle_bonus)
