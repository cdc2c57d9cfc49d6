"""teamrl: compiled cooperative multi-agent reinforcement learning in JAX.

A team of N agents is an array with a leading agent axis (see ``teamrl.envs.spec``); every
algorithm is a pair of pure functions ``init`` / ``update`` compiled end to end with the rollout.

The public API below is re-exported lazily (module ``__getattr__``, imports inside
functions): ``import teamrl`` imports neither JAX nor an environment, so ``teamrl --version``
and a sweep's bookkeeping start fast.

- ``load_policy(run_dir, checkpoint="best", seed=None, backend="jax")``: a trained policy
  (``teamrl.train.policy``);
- ``load_exported(path)``: a policy written by ``teamrl export`` (``teamrl.exported``);
- ``register_env(env_id, factory, options=None, description="", host=False)``
  (``teamrl.envs.registry``) and ``register_algorithm(name, cls, description="")``
  (``teamrl.algos``): add env ids and algorithms from your own package.
"""

__version__ = "0.1.0"

_NAMES = ("load_policy", "Policy", "export_policy", "load_exported", "PolicyState",
          "register_env", "register_algorithm")


def __getattr__(name: str):
    # Imports inside the function only: tests/test_architecture.py holds this module to it.
    if name in ("load_policy", "Policy", "export_policy"):
        from teamrl.train import policy as module
    elif name in ("load_exported", "PolicyState"):
        from teamrl import exported as module
    elif name == "register_env":
        from teamrl.envs import registry as module
    elif name == "register_algorithm":
        import teamrl.algos as module
    else:  # AttributeError lets `from teamrl import runs` import the submodule
        raise AttributeError(f"module 'teamrl' has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES})
