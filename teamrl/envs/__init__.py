"""The environment edge: adapters that turn environments into stacked team arrays."""

import os
import sys


def _import_jaxmarl_quietly():
    """jaxmarl prints a notice about optional submodules on import (past sys.stdout
    redirection); silence file descriptor 1 meanwhile so `teamrl list --json` stays clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            import jaxmarl  # noqa: F401
            sys.stdout.flush()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_import_jaxmarl_quietly()

from teamrl.envs.spec import TeamSpec, TeamObs, TeamStep
from teamrl.envs.registry import make_env, list_env_ids, EnvIdError

__all__ = ["TeamSpec", "TeamObs", "TeamStep", "make_env", "list_env_ids", "EnvIdError"]
