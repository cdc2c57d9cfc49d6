"""Algorithm registry: name -> class. Each class has ``config_class``, ``check``, ``init``,
``act``, ``values``, ``policy_action`` and ``update``."""

from teamrl.algos.a2po import A2PO
from teamrl.algos.coppo import CoPPO
from teamrl.algos.dpo import DPO
from teamrl.algos.happo import HAPPO
from teamrl.algos.hatrpo import HATRPO
from teamrl.algos.ippo import IPPO
from teamrl.algos.mappo import MAPPO
from teamrl.algos.single import PPO, TNPG, TRPO

ALGORITHMS = {"ippo": IPPO, "mappo": MAPPO, "coppo": CoPPO, "happo": HAPPO, "hatrpo": HATRPO,
              "a2po": A2PO, "dpo": DPO, "ppo": PPO, "trpo": TRPO, "tnpg": TNPG}

DESCRIPTIONS = {
    "ippo": "independent PPO, local critics V_i(o_i)",
    "mappo": "multi-agent PPO, centralised critic V(s)",
    "coppo": "coordinated PPO: double-clipped joint ratio, simultaneous",
    "happo": "heterogeneous-agent PPO: sequential updates in a random order",
    "hatrpo": "heterogeneous-agent TRPO: sequential trust-region steps",
    "a2po": "agent-by-agent PO: semi-greedy order, off-policy corrected advantages",
    "dpo": "decentralised policy optimisation: KL-penalised, adaptive coefficients, local critics",
    "ppo": "PPO for one-agent environments (HAPPO with n = 1)",
    "trpo": "TRPO for one-agent environments (HATRPO with n = 1)",
    "tnpg": "truncated natural policy gradient, one agent (fixed KL-sized step)",
}
