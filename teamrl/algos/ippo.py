"""IPPO (de Witt et al. 2020): independent PPO, each agent with a local critic V_i(o_i)."""

from dataclasses import dataclass

from teamrl.algos.common import OnPolicyActorCritic, PPOConfig, ppo_update
from teamrl.config import option


@dataclass
class IPPOConfig(PPOConfig):
    share_actor: bool = option(False, "one actor (and local critic) shared by all agents")


class IPPO(OnPolicyActorCritic):
    config_class = IPPOConfig
    central_critic = False

    def update(self, ts, batch, key):
        return ppo_update(self, ts, batch, key)
