"""Plugins: env ids and algorithms added by installed packages through the entry-point groups
``teamrl.envs`` / ``teamrl.algos`` (a tiny package with a dist-info folder on sys.path, no
network), seen by `teamrl list` and `teamrl train` in a subprocess; a broken plugin is one
line on stderr and the rest works; ``register_env`` / ``register_algorithm`` refuse bad input
in one line; ``import teamrl`` stays free of JAX."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

import teamrl
from teamrl.config import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A toy teamrl plugin: env id toy/beacon and algorithm toyppo."""
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jaxmarl.environments.multi_agent_env import MultiAgentEnv
from jaxmarl.environments.spaces import Box, Discrete

import teamrl
from teamrl.algos.ippo import IPPO
from teamrl.config import option


class Beacon(MultiAgentEnv):
    def __init__(self, positions=3, max_steps=5):
        super().__init__(2)
        self.k, self.max_steps = positions, max_steps
        self.observation_spaces = {a: Box(0.0, 1.0, (positions,)) for a in self.agents}
        self.action_spaces = {a: Discrete(positions) for a in self.agents}

    def reset(self, key):
        state = {"beacon": jax.random.randint(key, (), 0, self.k), "t": jnp.int32(0)}
        return self.get_obs(state), state

    def get_obs(self, state):
        return {a: jax.nn.one_hot(state["beacon"], self.k) for a in self.agents}

    def step_env(self, key, state, actions):
        reward = jnp.stack([actions[a] == state["beacon"] for a in self.agents]).mean(
            dtype=jnp.float32)
        state = {"beacon": jax.random.randint(key, (), 0, self.k), "t": state["t"] + 1}
        done = state["t"] >= self.max_steps
        dones = {a: done for a in self.agents} | {"__all__": done}
        return self.get_obs(state), state, {a: reward for a in self.agents}, dones, {}


@dataclass
class BeaconOptions:
    positions: int = option(3, "beacon positions (actions)", low=2)


def register():
    teamrl.register_env("toy/beacon", lambda opts: Beacon(opts.positions),
                        options=BeaconOptions, description="toy plugin: point at the beacon")


class ToyPPO(IPPO):
    """toy plugin: IPPO under another name"""
'''

ENTRY_POINTS = {
    "teamrl_toy_plugin": ("[teamrl.envs]\ntoy = teamrl_toy_plugin:register\n\n"
                          "[teamrl.algos]\ntoyppo = teamrl_toy_plugin:ToyPPO\n"),
    # Broken: a module that does not exist, an attribute that does not exist.
    "teamrl_broken_plugin": ("[teamrl.envs]\nbroken = teamrl_no_such_module:register\n\n"
                             "[teamrl.algos]\nbadalgo = teamrl_toy_plugin:NoSuchClass\n"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    """A folder for sys.path holding the toy plugin and two installed distributions."""
    folder = tmp_path_factory.mktemp("site")
    (folder / "teamrl_toy_plugin.py").write_text(PLUGIN)
    for dist, entry_points in ENTRY_POINTS.items():
        info = folder / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(entry_points)
    return folder


def teamrl_cli(site, *args, cwd=None, env=None, code=None):
    """``python -m teamrl ARGS`` (or ``python -c CODE``) with the plugin folder on sys.path."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), **(env or {})}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "teamrl", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd or site, env=environ,
                          timeout=300)


def test_list_shows_plugins_and_a_broken_plugin_is_one_line(site):
    done = teamrl_cli(site, "list")
    assert done.returncode == 0, done.stderr
    assert "toy/beacon" in done.stdout and "toy plugin: point at the beacon" in done.stdout
    assert "toyppo" in done.stdout and "toy plugin: IPPO under another name" in done.stdout
    assert "mpe/simple_spread" in done.stdout and "mappo" in done.stdout  # the rest works
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert len(lines) == 2, done.stderr
    envs = next(line for line in lines if "entry point teamrl.envs:" in line)
    algos = next(line for line in lines if "entry point teamrl.algos:" in line)
    assert "plugin 'teamrl_broken_plugin'" in envs and "teamrl.envs: broken = " \
        "teamrl_no_such_module:register" in envs and "ModuleNotFoundError" in envs
    assert "teamrl.algos: badalgo = teamrl_toy_plugin:NoSuchClass" in algos


def test_no_plugins_setting_and_entry_point_kinds(site, monkeypatch, capsys):
    """A fresh registry over the plugin folder, in this process: TEAMRL_NO_PLUGINS=1 loads
    nothing; otherwise a class or a registering function loads, a broken one is reported."""
    from teamrl.algos import _add_algo_plugin
    from teamrl.envs.registry import PluginRegistry

    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TEAMRL_NO_PLUGINS", "1")
    off = PluginRegistry("teamrl.algos", _add_algo_plugin, {"x": object})
    assert list(off) == ["x"] and capsys.readouterr().err == ""
    monkeypatch.delenv("TEAMRL_NO_PLUGINS")
    added = []
    on = PluginRegistry("teamrl.algos", lambda point, loaded: added.append(point.name))
    assert len(on) == 0 and added == ["toyppo"]  # badalgo failed before it was added
    assert list(on.failures) == ["badalgo"]
    assert capsys.readouterr().err.count("\n") == 1


def test_train_a_plugin_env_and_algorithm_through_the_cli(site, tmp_path):
    out = tmp_path / "run"
    fast = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # a few updates: compile quickly
    done = teamrl_cli(site, "train", "toyppo", "toy/beacon", "positions=4", "total_steps=256",
                      "num_envs=4", "rollout_length=32", "eval_every=0", "progress=none",
                      f"out={out}", cwd=tmp_path, env=fast)
    assert done.returncode == 0, done.stderr
    assert (out / "checkpoints").is_dir() and "run folder" in done.stdout
    from teamrl import runs

    assert runs.read_config(out)["env"]["positions"] == 4

    # The broken plugin's id: the usual one-line error, naming the plugin that failed.
    bad = teamrl_cli(site, "train", "mappo", "broken/x", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("teamrl: error: unknown env id")
    assert "plugins that failed to load: broken" in bad.stderr


def test_plugins_load_lazily_and_import_teamrl_needs_no_jax(site):
    code = textwrap.dedent("""
        import sys
        import teamrl
        assert teamrl.__version__ and "jax" not in sys.modules, "import teamrl imported jax"
        from teamrl.envs import registry
        assert "teamrl_toy_plugin" not in sys.modules  # not before the registry is read
        assert "toy/beacon" in registry.REGISTRY and "teamrl_toy_plugin" in sys.modules
        from teamrl.algos import ALGORITHMS
        assert ALGORITHMS["toyppo"].__name__ == "ToyPPO"
        print("ok")
    """)
    done = teamrl_cli(site, code=code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.fixture
def scratch_registries():
    from teamrl.algos import ALGORITHMS, DESCRIPTIONS
    from teamrl.envs.registry import REGISTRY

    saved = [(r, dict(r)) for r in (REGISTRY, ALGORITHMS, DESCRIPTIONS)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)


def test_register_env_and_algorithm_in_process(scratch_registries):
    from teamrl.algos import ALGORITHMS
    from teamrl.algos.ippo import IPPO
    from teamrl.envs.registry import NoOptions, get_entry, make_env
    from teamrl.envs.didactic import DIDACTIC_GAMES

    entry = teamrl.register_env("mine/climbing", lambda opts: DIDACTIC_GAMES["climbing"]())
    assert get_entry("mine/climbing") is entry and entry.options is NoOptions
    assert make_env("mine/climbing").spec.n_agents == 2
    for args, message in [(("climbing", print), "'family/task'"),
                          (("mine/x", 3), "not callable"),
                          (("mine/x", print, dict), "not a dataclass"),
                          (("mpe/simple", print), "already registered"),
                          (("pettingzoo/x", print), "need no registration")]:
        with pytest.raises(ConfigError, match=message):
            teamrl.register_env(*args)
    teamrl.register_env("mine/climbing", print, overwrite=True)

    class Mine(IPPO):
        """my ippo"""

    teamrl.register_algorithm("mine", Mine)
    assert ALGORITHMS["mine"] is Mine
    with pytest.raises(ConfigError, match="missing config_class"):
        teamrl.register_algorithm("other", type("NotAnAlgorithm", (), {}))
    with pytest.raises(ConfigError, match="already registered"):
        teamrl.register_algorithm("ippo", Mine)
    with pytest.raises(ConfigError, match="not valid"):
        teamrl.register_algorithm("my algo", Mine)
