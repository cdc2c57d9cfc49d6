"""The environment edge: adapters that turn environments into stacked team arrays."""

from teamrl.envs.spec import TeamSpec, TeamObs, TeamStep
from teamrl.envs.registry import make_env, list_env_ids, EnvIdError

__all__ = ["TeamSpec", "TeamObs", "TeamStep", "make_env", "list_env_ids", "EnvIdError"]
