"""Algorithm registry: name -> class. Each class has ``config_class``, ``check``, ``init``,
``act``, ``values``, ``policy_action`` and ``update`` (on-policy actor-critics and the
value-based learners IQL, MA2QL, I2Q alike). Installed packages add algorithms through the
entry-point group ``teamrl.algos`` (loaded on the registry's first read) or
:func:`register_algorithm`."""

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
from teamrl.config import ConfigError
from teamrl.envs.registry import PluginRegistry

ALGO_PLUGIN_GROUP = "teamrl.algos"
# What the trainers, the evaluation and `teamrl list` call on an algorithm class.
INTERFACE = ("config_class", "action_kinds", "check", "init", "act", "values", "policy_action",
             "update")


def register_algorithm(name: str, cls: type, description: str = "",
                       overwrite: bool = False) -> type:
    """Add algorithm ``name`` (what ``teamrl train NAME ENV`` and ``teamrl list`` see): a class
    with the members of docs/adding_an_algorithm.md. Raises ConfigError (one line) for a bad
    name, a class missing members, or a name already registered without ``overwrite``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"algorithm name {name!r} is not valid; valid: an identifier such "
                          "as 'ia2c'")
    missing = [m for m in INTERFACE if not hasattr(cls, m)]
    if not isinstance(cls, type) or missing:
        raise ConfigError(f"register_algorithm({name!r}): {cls!r} is not an algorithm class"
                          + (f" (missing {', '.join(missing)})" if missing else "")
                          + "; see docs/adding_an_algorithm.md")
    if name in ALGORITHMS and not overwrite:
        known = ALGORITHMS[name].__name__
        raise ConfigError(f"algorithm {name!r} is already registered ({known}); pass "
                          "overwrite=True to replace it")
    ALGORITHMS[name] = cls
    DESCRIPTIONS[name] = description or (cls.__doc__ or name).strip().splitlines()[0]
    return cls


def _add_algo_plugin(point, loaded) -> None:
    """An entry point of group ``teamrl.algos`` names an algorithm class (registered under the
    entry point's name) or a function of no arguments that calls register_algorithm."""
    if isinstance(loaded, type):
        register_algorithm(point.name, loaded)
    elif callable(loaded):
        loaded()
    else:
        raise ConfigError(f"{point.value} is a {type(loaded).__name__}; valid: an algorithm "
                          "class or a function that calls teamrl.register_algorithm")


ALGORITHMS: dict[str, type] = PluginRegistry(ALGO_PLUGIN_GROUP, _add_algo_plugin, {
    "ippo": IPPO, "mappo": MAPPO, "coppo": CoPPO, "happo": HAPPO, "hatrpo": HATRPO,
    "a2po": A2PO, "dpo": DPO, "mdpo": MDPO, "ppo": PPO, "trpo": TRPO, "tnpg": TNPG,
    "iql": IQL, "ma2ql": MA2QL, "i2q": I2Q})

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
