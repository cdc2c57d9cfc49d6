"""MAPPO (Yu et al. 2022): PPO actors with a centralised critic V(s) on the global state."""

from dataclasses import dataclass

from teamrl.algos.common import OnPolicyActorCritic, PPOConfig, ppo_update
from teamrl.config import option


@dataclass
class MAPPOConfig(PPOConfig):
    share_actor: bool = option(True, "one actor shared by all agents (with agent ids)")


class MAPPO(OnPolicyActorCritic):
    config_class = MAPPOConfig
    central_critic = True

    def update(self, ts, batch, key):
        return ppo_update(self, ts, batch, key)
