"""Algorithm registry: name -> class. Each class has ``config_class``, ``check``, ``init``,
``act``, ``values``, ``policy_action`` and ``update``."""

from teamrl.algos.ippo import IPPO
from teamrl.algos.mappo import MAPPO

ALGORITHMS = {"ippo": IPPO, "mappo": MAPPO}

DESCRIPTIONS = {
    "ippo": "independent PPO, local critics V_i(o_i)",
    "mappo": "multi-agent PPO, centralised critic V(s)",
}
