"""Multi-Agent MuJoCo (gymnasium-robotics ``mamujoco_v1``) as PettingZoo ParallelEnvs.

Imported by worker processes: NumPy, gymnasium and MuJoCo only, no JAX.

Backends (env option ``backend``): ``gymnasium_robotics``, the reference ``mamujoco_v1``
ParallelEnvs of this module, stepped one by one, or ``native``
(:mod:`teamrl.envs.mamujoco_native`: K envs per worker stepped through MuJoCo's API with
vectorised observations and rewards). Both give the same task: tests/test_mamujoco_native.py
checks equal observations, states, rewards and episode ends over whole episodes of every split.

Observation protocols:

- ``obs=global``: every agent observes the env's global state (``env.state()``, the single-
  agent MuJoCo observation); the adapter appends the one-hot agent id. This is the protocol
  of every published HAPPO / HATRPO / A2PO MaMuJoCo number.
- ``obs=local``: gymnasium-robotics' own per-agent observations of the joints within
  ``obsk`` hops of the agent's joints (plus its globals).

Agent splits: every ``agent_conf`` that gymnasium-robotics ships, plus those of the original
MaMuJoCo that it dropped (HalfCheetah 3x2, Ant 8x1, Walker2d 3x2 and 6x1, Humanoid 17x1),
rebuilt from gymnasium-robotics' own joint nodes with the original grouping.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import numpy as np

# Splits gymnasium-robotics ships (scenario -> agent_confs), and the original-MaMuJoCo ones we
# add: joint labels per agent, in the original order, and the shipped split holding the nodes.
SHIPPED_SPLITS = {
    "HalfCheetah": ["2x3", "6x1"],
    "Ant": ["2x4", "2x4d", "4x2"],
    "Hopper": ["3x1"],
    "Walker2d": ["2x3"],
    "Humanoid": ["9|8"],
    "HumanoidStandup": ["9|8"],
    "Swimmer": ["2x1"],
    "Reacher": ["2x1"],
    "Pusher": ["3p"],
    # CoupledHalfCheetah 1p1 is left out: gymnasium-robotics 1.4 indexes MuJoCo's tendon
    # Jacobian with the pre-4.0 dense layout and fails on construction with mujoco 4.
    "ManySegmentSwimmer": ["2x3", "4x2", "10x2"],
    "ManySegmentAnt": ["2x3", "3x2"],
}

_HUMANOID_17 = ["left_shoulder1", "left_shoulder2", "abdomen_x", "abdomen_y", "abdomen_z",
                "right_shoulder1", "right_shoulder2", "right_elbow", "left_elbow", "left_hip_x",
                "left_hip_y", "left_hip_z", "right_hip_x", "right_hip_y", "right_hip_z",
                "right_knee", "left_knee"]
ADDED_SPLITS = {
    ("HalfCheetah", "3x2"): ("6x1", [["bfoot", "bshin"], ["bthigh", "ffoot"],
                                     ["fshin", "fthigh"]]),
    ("Ant", "8x1"): ("4x2", [[j] for j in ["hip1", "ankle1", "hip2", "ankle2", "hip3",
                                           "ankle3", "hip4", "ankle4"]]),
    ("Walker2d", "6x1"): ("2x3", [[j] for j in ["foot_joint", "leg_joint", "thigh_joint",
                                                "foot_left_joint", "leg_left_joint",
                                                "thigh_left_joint"]]),
    ("Walker2d", "3x2"): ("2x3", [["foot_joint", "leg_joint"],
                                  ["thigh_joint", "foot_left_joint"],
                                  ["leg_left_joint", "thigh_left_joint"]]),
    ("Humanoid", "17x1"): ("9|8", [[j] for j in _HUMANOID_17]),
    ("HumanoidStandup", "17x1"): ("9|8", [[j] for j in _HUMANOID_17]),
}


def all_splits() -> list[tuple[str, str]]:
    """Every (scenario, agent_conf) we register, shipped and added."""
    pairs = [(s, c) for s, confs in SHIPPED_SPLITS.items() for c in confs]
    return sorted(set(pairs) | set(ADDED_SPLITS))


GL_HELP = ("install the Debian package libegl1 and set MUJOCO_GL=egl (offscreen), or "
           "libosmesa6 and MUJOCO_GL=osmesa, or unset MUJOCO_GL when a display is available")


def import_mujoco():
    """``import mujoco``, which loads the OpenGL backend named by MUJOCO_GL; a missing
    backend becomes one clear error instead of PyOpenGL's traceback."""
    try:
        import mujoco
    except (ImportError, AttributeError, OSError) as err:
        raise RuntimeError(f"MuJoCo could not load its OpenGL backend MUJOCO_GL="
                           f"{os.environ.get('MUJOCO_GL', '(unset)')} ({type(err).__name__}: "
                           f"{err}); {GL_HELP}") from None
    return mujoco


@contextlib.contextmanager
def _quiet_construction():
    """gymnasium-robotics prints an unrelated Adroit notice on import, and MuJoCo warns about
    a deprecated attribute of some shipped models while compiling them (to stderr and to a
    MUJOCO_LOG.TXT in the working directory); keep both off the user's terminal and folder.
    MuJoCo's warning handler is restored afterwards, so simulation warnings still show."""
    mujoco = import_mujoco()

    sys.stderr.flush()
    saved = os.dup(2)
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: None)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
            sys.stderr.flush()
    finally:
        mujoco.set_mju_user_warning(previous)
        os.dup2(saved, 2)
        os.close(saved)


def _factorization(scenario: str, agent_conf: str) -> dict | None:
    """The gymnasium-robotics ``agent_factorization`` of an added split (None if shipped)."""
    if (scenario, agent_conf) not in ADDED_SPLITS:
        return None
    from gymnasium_robotics.envs.multiagent_mujoco.obsk import get_parts_and_edges

    source_conf, groups = ADDED_SPLITS[(scenario, agent_conf)]
    parts, edges, globals_ = get_parts_and_edges(scenario, source_conf)
    nodes = {node.label: node for part in parts for node in part}
    return {"partition": [tuple(nodes[label] for label in group) for group in groups],
            "edges": edges, "globals": globals_}


class GlobalObservation:
    """A MaMuJoCo ParallelEnv whose every agent observes the global state ``env.state()``.

    It steps the underlying single-agent MuJoCo env directly with the agents' actions
    scattered into the global action vector (MaMuJoCo's own ``step`` would also build every
    agent's local observation, which this protocol discards: ~40 % of the step's cost).
    Rewards, terminations and truncations are the single-agent env's, as MaMuJoCo gives them
    to every agent.
    """

    def __init__(self, env):
        import gymnasium

        self.env = env
        self.single = env.single_agent_env
        self.possible_agents = list(env.possible_agents)
        self.agents: list[str] = []
        self._act_index = [np.array([node.act_ids for node in part], np.int64)
                           for part in env.agent_action_partitions]
        self._global_action = np.zeros(self.single.action_space.shape, np.float64)
        self._state = np.asarray(env.state())
        self._space = gymnasium.spaces.Box(-np.inf, np.inf, self._state.shape, np.float64)
        self.metadata = getattr(env, "metadata", {})

    @property
    def unwrapped(self):
        return self.env

    def observation_space(self, agent):
        return self._space

    def action_space(self, agent):
        return self.env.action_space(agent)

    def reset(self, seed=None, options=None):
        self._state, info = self.single.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        return ({a: self._state for a in self.agents}, {a: info for a in self.agents})

    def step(self, actions):
        for agent, index in zip(self.possible_agents, self._act_index):
            self._global_action[index] = actions[agent]
        self._state, reward, terminated, truncated, info = self.single.step(
            self._global_action)
        agents = self.agents
        if terminated or truncated:
            self.agents = []
        return ({a: self._state for a in agents}, {a: reward for a in agents},
                {a: terminated for a in agents}, {a: truncated for a in agents},
                {a: info for a in agents})

    def state(self):
        return self._state

    def render(self):
        return self.env.render()

    def close(self):
        self.env.close()


def make_parallel_env(scenario: str, agent_conf: str, obs: str = "global", obsk: int = 1,
                      max_steps: int = 1000, render_mode: str | None = None):
    """One MaMuJoCo ParallelEnv with the given observation protocol and episode limit."""
    with _quiet_construction():
        from gymnasium_robotics import mamujoco_v1

        env = mamujoco_v1.parallel_env(
            scenario, agent_conf, agent_obsk=obsk,
            agent_factorization=_factorization(scenario, agent_conf),
            max_episode_steps=max_steps, render_mode=render_mode)
    if obs == "global":
        env.reset(seed=0)  # state() needs a simulated state to read its width
        env = GlobalObservation(env)
    return env
