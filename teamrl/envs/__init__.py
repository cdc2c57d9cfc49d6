"""The environment edge: adapters that turn environments into stacked team arrays.

Attributes are imported lazily so that host-env worker processes, which import
``teamrl.envs.host_worker`` only, do not pay for JAX and jaxmarl.
"""

import importlib

_EXPORTS = {"TeamSpec": "spec", "TeamObs": "spec", "TeamStep": "spec", "make_env": "registry",
            "list_env_ids": "registry", "EnvIdError": "registry"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"teamrl.envs.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'teamrl.envs' has no attribute {name!r}")
