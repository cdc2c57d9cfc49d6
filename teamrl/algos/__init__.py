"""Algorithm registry: name -> class. Each class has ``config_class``, ``check``, ``init``,
``act``, ``values``, ``policy_action`` and ``update`` (on-policy actor-critics and the
value-based learners IQL, MA2QL, I2Q alike)."""

from teamrl.algos.a2po import A2PO
from teamrl.algos.coppo import CoPPO
from teamrl.algos.dpo import DPO
from teamrl.algos.happo import HAPPO
from teamrl.algos.hatrpo import HATRPO
from teamrl.algos.i2q import I2Q
from teamrl.algos.iql import IQL
from teamrl.algos.ippo import IPPO
from teamrl.algos.ma2ql import MA2QL
from teamrl.algos.mdpo import MDPO
from teamrl.algos.mappo import MAPPO
from teamrl.algos.single import PPO, TNPG, TRPO

ALGORITHMS = {"ippo": IPPO, "mappo": MAPPO, "coppo": CoPPO, "happo": HAPPO, "hatrpo": HATRPO,
              "a2po": A2PO, "dpo": DPO, "mdpo": MDPO, "ppo": PPO, "trpo": TRPO, "tnpg": TNPG,
              "iql": IQL, "ma2ql": MA2QL, "i2q": I2Q}

DESCRIPTIONS = {
    "ippo": "independent PPO, local critics V_i(o_i)",
    "mappo": "multi-agent PPO, centralised critic V(s)",
    "coppo": "coordinated PPO: double-clipped joint ratio, simultaneous",
    "happo": "heterogeneous-agent PPO: sequential updates in a random order",
    "hatrpo": "heterogeneous-agent TRPO: sequential trust-region steps",
    "a2po": "agent-by-agent PO: semi-greedy order, off-policy corrected advantages",
    "dpo": "decentralised policy optimisation: KL-penalised, adaptive coefficients, local critics",
    "mdpo": "model-based DPO: per-agent models with forecast latents, IPPO/DPO on imagined data",
    "ppo": "PPO for one-agent environments (HAPPO with n = 1)",
    "trpo": "TRPO for one-agent environments (HATRPO with n = 1)",
    "tnpg": "truncated natural policy gradient, one agent (fixed KL-sized step)",
    "iql": "independent double DQN per agent: replay, target networks, epsilon-greedy",
    "ma2ql": "alternate Q-learning: IQL with agents learning in turns, round robin",
    "i2q": "ideal independent Q-learning: IQL target mixed with an expectile transition value",
}
