"""teamrl: compiled cooperative multi-agent reinforcement learning in JAX.

A team of N agents is an array with a leading agent axis (see ``teamrl.envs.spec``); every
algorithm is a pair of pure functions ``init`` / ``update`` compiled end to end with the rollout.
"""

__version__ = "0.1.0"
