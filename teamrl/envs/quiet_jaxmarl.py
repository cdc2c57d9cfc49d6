"""Import jaxmarl once, quietly: it prints a notice about optional submodules on import (past
sys.stdout redirection), so file descriptor 1 is silenced meanwhile and `teamrl list --json`
stays clean. Import this module before any ``jaxmarl`` import."""

import os
import sys


def _import_jaxmarl_quietly():
    sys.stdout.flush()
    saved = os.dup(1)
    # One of jaxmarl's env modules rebinds sys.stdout to the process's real stdout on import,
    # which would silently undo a caller's redirection (contextlib.redirect_stdout, captured
    # output in tests): keep the streams the caller had.
    streams = sys.stdout, sys.stderr
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            import jaxmarl  # noqa: F401
            sys.stdout.flush()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        sys.stdout, sys.stderr = streams


_import_jaxmarl_quietly()
