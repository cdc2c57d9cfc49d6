"""`teamrl install football`: build Google Research Football (gfootball 2.10.2) into the
running Python environment, idempotently.

gfootball ships no wheel: its C++ engine compiles from the sdist (about 3 minutes on 2 cores)
against SDL2, Boost.Python and OpenGL, and it needs the old ``gym`` API (0.25.2; from 0.26 on
``reset()`` breaks). The recipe, verified on Debian 12 / Python 3.11:

1. the Debian packages of :data:`FOOTBALL_DEBIAN_PACKAGES` (installed with apt-get when we
   are root, otherwise named in the error with the command that installs them);
2. ``pip install -U pip setuptools wheel psutil six gym==0.25.2``;
3. ``pip install --no-build-isolation gfootball==2.10.2`` (its build script imports psutil,
   which an isolated build environment lacks; ``six`` is imported but not declared).

Nothing else may change: both pip calls run under a constraints file that pins every other
installed distribution at its installed version, so gfootball's dependencies can never
downgrade (or upgrade) a package teamrl uses; if they would have to, pip fails and we say so.
``gym`` is a separate distribution from ``gymnasium``, which teamrl uses everywhere else.
pip caches the wheel it built, so a second environment on the same machine (CI's fresh
virtual environments, for example) installs in seconds.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

FOOTBALL_VERSION = "2.10.2"
FOOTBALL_DEBIAN_PACKAGES = (
    "libgl1-mesa-dev", "libegl1-mesa-dev", "libsdl2-dev", "libsdl2-image-dev",
    "libsdl2-ttf-dev", "libsdl2-gfx-dev", "libboost-python-dev", "libboost-thread-dev",
    "libboost-system-dev", "libboost-filesystem-dev")
# What the recipe itself installs or upgrades; every other installed distribution is pinned.
RECIPE_PACKAGES = ("pip", "setuptools", "wheel", "psutil", "six", "gym", "gfootball")
PIP_STEPS = (
    ["install", "-U", "pip", "setuptools", "wheel", "psutil", "six", "gym==0.25.2"],
    ["install", "--no-build-isolation", f"gfootball=={FOOTBALL_VERSION}"],
)
# Run in a fresh interpreter: builds a small scenario and plays one step.
SMOKE_TEST = ("import gfootball.env as e; env = e.create_environment("
              "'academy_empty_goal_close', representation='simple115v2'); env.reset(); "
              "env.step(0); env.close(); print('ok')")


class InstallError(RuntimeError):
    """The install cannot go on; the message says why and what to do."""


def _normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def football_works(python: str = sys.executable) -> bool:
    """Whether gfootball imports and steps a scenario in ``python`` (a fresh process, so a
    broken half-install cannot crash the caller)."""
    try:
        done = subprocess.run([python, "-c", SMOKE_TEST], capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip().endswith("ok")


def missing_debian_packages(packages=FOOTBALL_DEBIAN_PACKAGES, query=None) -> list[str] | None:
    """The packages of ``packages`` that dpkg does not list as installed (None when this is
    not a dpkg system). ``query(name) -> bool`` replaces dpkg in tests."""
    if query is None:
        if shutil.which("dpkg-query") is None:
            return None

        def query(name):
            done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name],
                                  capture_output=True, text=True)
            return done.returncode == 0 and "install ok installed" in done.stdout

    return [p for p in packages if not query(p)]


def install_debian_packages(packages: list[str], log) -> None:
    """apt-get install ``packages`` (as root; after ``apt-get update`` if the first try
    cannot find them). Raises InstallError naming the packages and the command otherwise."""
    command = "apt-get install -y " + " ".join(packages)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise InstallError(
            f"Google Research Football needs the Debian packages {', '.join(packages)}, "
            f"which are not installed, and teamrl cannot install them (not root); run "
            f"`sudo {command}`, then `teamrl install football` again")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in ("install", "update+install"):
        if attempt == "update+install":
            log("teamrl install: apt-get update")
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        log(f"teamrl install: {command}")
        done = subprocess.run(command.split(), env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return
    tail = "\n".join(done.stderr.strip().splitlines()[-5:])
    raise InstallError(f"`{command}` failed (exit {done.returncode}): {tail}; install those "
                       "Debian packages, then run `teamrl install football` again")


def constraints_text() -> str:
    """Pins (name==version) of every installed distribution outside RECIPE_PACKAGES."""
    dists = [(d, _normalise(d.metadata["Name"] or "")) for d in
             importlib.metadata.distributions()]
    # Editable or local installs (teamrl itself) are not on an index: never pinned.
    keep = {_normalise(p) for p in RECIPE_PACKAGES} | {
        name for d, name in dists if d.read_text("direct_url.json")} | {"teamrl", ""}
    pins = {f"{name}=={d.version}" for d, name in dists if name not in keep}
    return "".join(f"{pin}\n" for pin in sorted(pins))


def _run_pip(args: list[str], constraints: pathlib.Path, log_file, log) -> None:
    command = [sys.executable, "-m", "pip", *args, "-c", str(constraints)]
    log(f"teamrl install: pip {' '.join(args)}")
    log_file.write(f"$ {' '.join(command)}\n")
    log_file.flush()
    done = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        log_file.flush()
        lines = pathlib.Path(log_file.name).read_text(errors="replace").splitlines()
        conflict = any("ResolutionImpossible" in line or "conflict" in line.lower()
                       for line in lines)
        why = ("it would have to change a package that is already installed (every other "
               "package is pinned so nothing is downgraded)" if conflict else "see the log")
        raise InstallError(f"`pip {' '.join(args)}` failed (exit {done.returncode}): {why}; "
                           f"full log: {log_file.name}; last lines: "
                           + " | ".join(line.strip() for line in lines[-4:]))


def install_football(force: bool = False, system: bool = True, log=print) -> str:
    """Install gfootball into this environment; returns "present" or "installed".

    Args:
        force: rebuild even when gfootball already works.
        system: install missing Debian packages with apt-get (as root); with False only
            check them.
    """
    if not force and football_works():
        log(f"teamrl install: gfootball {importlib.metadata.version('gfootball')} is "
            "installed and runs; nothing to do")
        return "present"
    missing = missing_debian_packages()
    if missing is None:
        log("teamrl install: not a dpkg system; make sure the equivalents of the Debian "
            f"packages {', '.join(FOOTBALL_DEBIAN_PACKAGES)} are installed")
    elif missing:
        if not system:
            raise InstallError(f"missing Debian packages {', '.join(missing)}; run `sudo "
                               f"apt-get install -y {' '.join(missing)}`")
        install_debian_packages(missing, log)
    with tempfile.TemporaryDirectory(prefix="teamrl-install-") as tmp:
        constraints = pathlib.Path(tmp) / "constraints.txt"
        constraints.write_text(constraints_text())
        log_path = pathlib.Path(tempfile.gettempdir()) / "teamrl-install-football.log"
        with open(log_path, "w") as log_file:
            for step in PIP_STEPS:
                _run_pip(step, constraints, log_file, log)
    if not football_works():
        raise InstallError(f"gfootball {FOOTBALL_VERSION} was installed but cannot build and "
                           f"step a scenario; run `python -c \"{SMOKE_TEST}\"` to see why")
    log(f"teamrl install: gfootball {FOOTBALL_VERSION} installed and runs (log: {log_path})")
    return "installed"


TARGETS = {"football": install_football}
