"""The process a sweep starts for each of its runs (see :data:`teamrl.cli.sweep.LAUNCHER`)."""

import os
import signal
import sys


def launch(argv: list[str]) -> int:
    """``python -m teamrl.cli.launch [--cpus 0,1] COMMAND ...``: pin this process to the CPUs
    (before JAX starts its thread pools, which size themselves by them), then run `teamrl
    COMMAND`.
    On Linux the run also gets SIGINT if the sweep dies without stopping it (killed with
    SIGKILL), so no run trains on unattended after its sweep is gone."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGINT))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if argv[:1] == ["--cpus"]:
        os.sched_setaffinity(0, {int(c) for c in argv[1].split(",")})
        argv = argv[2:]
    from teamrl.cli.commands import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1:]))
