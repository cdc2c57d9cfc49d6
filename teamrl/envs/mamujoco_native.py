"""Native batched Multi-Agent MuJoCo: K environments stepped through MuJoCo's own API.

The same task as gymnasium-robotics' ``mamujoco_v1`` (the reference,
:func:`teamrl.envs.mamujoco.make_parallel_env` with ``backend="gymnasium_robotics"``), without
its per-env Python layers (PettingZoo dicts, gymnasium wrappers, per-agent observation
builders): one ``MjModel`` and K ``MjData`` stepped in a loop, then the global state, the
rewards and the terminations of all K envs from stacked simulator arrays with vectorised
NumPy. What is taken from the installed packages rather than restated here:

- the model file, frame skip and every reward weight, range and noise scale: the defaults of
  the gymnasium ``<Scenario>-v5`` env class (read from its signature), ManySegment models from
  gymnasium-robotics' own generator;
- the agent partitions, joint graphs and local observation categories: gymnasium-robotics'
  ``get_parts_and_edges`` / ``get_joints_at_kdist`` / categories; local observations
  (``obs=local``) run its own ``build_obs`` once per step for all K envs, on a view of the
  stacked arrays with the env axis last (``_StackedData``), so every node's index, clip and
  extra observation is the reference's by construction.

The formulas restated here (global state, reward terms, health checks, reset noise) follow the
v5 classes line by line, in the same operation order, and draw reset noise from a per-env
``np.random.Generator`` seeded as gymnasium seeds its envs, in the same order: with the same
seed the native and reference envs start from the same qpos/qvel and, given the same actions,
step through bit-identical physics (tests/test_mamujoco_native.py checks whole episodes).

Imported by worker processes: NumPy, MuJoCo, gymnasium and gymnasium-robotics only, no JAX.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

from teamrl.envs.mamujoco import _factorization, _quiet_construction, import_mujoco

# The gymnasium-v5 env class (and model) behind each scenario, and the scenarios supported
# natively: every one teamrl lists (CoupledHalfCheetah is not listed, see mamujoco.py).
_GYM_ENV = {"HalfCheetah": "HalfCheetah", "Ant": "Ant", "Hopper": "Hopper",
            "Walker2d": "Walker2d", "Humanoid": "Humanoid", "HumanoidStandup": "HumanoidStandup",
            "Swimmer": "Swimmer", "Reacher": "Reacher", "Pusher": "Pusher",
            "ManySegmentSwimmer": "Swimmer", "ManySegmentAnt": "Ant"}
NATIVE_SCENARIOS = frozenset(_GYM_ENV)

# Stacked simulator arrays a task may read, with their per-env shape.
_FIELDS = ("qpos", "qvel", "xpos", "xipos", "cinert", "cvel", "qfrc_actuator", "cfrc_ext")


def _gym_defaults(gym_name: str) -> tuple[type, dict]:
    """The gymnasium ``<gym_name>-v5`` env class and its constructor defaults (file, frame
    skip, weights, ranges, noise) merged with the registration's kwargs."""
    import importlib

    import gymnasium

    spec = gymnasium.registry[f"{gym_name}-v5"]
    module, _, name = spec.entry_point.partition(":")
    cls = getattr(importlib.import_module(module), name)
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return cls, {**defaults, **spec.kwargs}


# ================================================================================= tasks
class _Task:
    """One gymnasium v5 task over K stacked envs (subclasses: one per env class).

    ``fields``: the stacked arrays the state and reward read (qpos/qvel always)."""

    fields: tuple = ()

    def __init__(self, p: dict, model):
        self.p, self.model = p, model
        self.dt = model.opt.timestep * p["frame_skip"]
        for key in ("exclude_current_positions_from_observation",
                    "include_cfrc_ext_in_observation", "include_cinert_in_observation",
                    "include_cvel_in_observation", "include_qfrc_actuator_in_observation"):
            if key in p and not p[key]:
                raise NotImplementedError(f"native MaMuJoCo assumes the v5 default {key}=True")

    def before(self, b) -> np.ndarray | None:
        """What the reward needs from the state before a step ([K, ...] copy)."""
        return None

    def state(self, b) -> np.ndarray:
        """The global state [K, S] (the v5 env's ``_get_obs``)."""
        raise NotImplementedError

    def reward(self, b, action: np.ndarray, before) -> tuple[np.ndarray, np.ndarray]:
        """Reward [K] float64 and termination [K] bool after a step with ``action`` [K, nu]."""
        raise NotImplementedError

    def reset_state(self, rng, init_qpos: np.ndarray, init_qvel: np.ndarray):
        """qpos [nq], qvel [nv] of a new episode (the v5 ``reset_model``'s draws, in order)."""
        s = self.p["reset_noise_scale"]
        qpos = init_qpos + rng.uniform(low=-s, high=s, size=self.model.nq)
        qvel = init_qvel + rng.uniform(low=-s, high=s, size=self.model.nv)
        return qpos, qvel

    def _control_cost(self, action):
        return self.p["ctrl_cost_weight"] * np.sum(np.square(action), axis=1)


def _x_velocity(task, b, before):
    return (b.qpos[:, 0] - before) / task.dt


class _HalfCheetah(_Task):
    def before(self, b):
        return b.qpos[:, 0].copy()

    def state(self, b):
        return np.concatenate([b.qpos[:, 1:], b.qvel], axis=1)

    def reward(self, b, action, before):
        forward = self.p["forward_reward_weight"] * _x_velocity(self, b, before)
        return forward - self._control_cost(action), np.zeros(len(action), bool)

    def reset_state(self, rng, init_qpos, init_qvel):
        s = self.p["reset_noise_scale"]
        qpos = init_qpos + rng.uniform(low=-s, high=s, size=self.model.nq)
        qvel = init_qvel + s * rng.standard_normal(self.model.nv)
        return qpos, qvel


class _Swimmer(_HalfCheetah):
    def state(self, b):
        return np.concatenate([b.qpos[:, 2:], b.qvel], axis=1)

    reset_state = _Task.reset_state


class _Hopper(_HalfCheetah):
    def state(self, b):
        return np.concatenate([b.qpos[:, 1:], np.clip(b.qvel, -10, 10)], axis=1)

    def _healthy(self, b):
        z, angle = b.qpos[:, 1], b.qpos[:, 2]
        state = np.concatenate([b.qpos, b.qvel], axis=1)[:, 2:]
        low, high = self.p["healthy_state_range"]
        min_z, max_z = self.p["healthy_z_range"]
        min_angle, max_angle = self.p["healthy_angle_range"]
        return (np.all((low < state) & (state < high), axis=1) & (min_z < z) & (z < max_z)
                & (min_angle < angle) & (angle < max_angle))

    def reward(self, b, action, before):
        healthy = self._healthy(b)
        forward = self.p["forward_reward_weight"] * _x_velocity(self, b, before)
        rewards = forward + healthy * self.p["healthy_reward"]
        terminated = ~healthy & bool(self.p["terminate_when_unhealthy"])
        return rewards - self._control_cost(action), terminated

    reset_state = _Task.reset_state


class _Walker2d(_Hopper):
    def _healthy(self, b):
        z, angle = b.qpos[:, 1], b.qpos[:, 2]
        min_z, max_z = self.p["healthy_z_range"]
        min_angle, max_angle = self.p["healthy_angle_range"]
        return (min_z < z) & (z < max_z) & (min_angle < angle) & (angle < max_angle)


class _Ant(_HalfCheetah):
    fields = ("xpos", "cfrc_ext")

    def __init__(self, p, model):
        super().__init__(p, model)
        mujoco = import_mujoco()
        body = p["main_body"]
        self.main_body = (body if isinstance(body, (int, np.integer)) else
                          mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, body))

    def before(self, b):
        return b.xpos[:, self.main_body, 0].copy()

    def _contact_forces(self, b):
        low, high = self.p["contact_force_range"]
        return np.clip(b.cfrc_ext, low, high)

    def state(self, b):
        k = len(b.qpos)
        return np.concatenate([b.qpos[:, 2:], b.qvel,
                               self._contact_forces(b)[:, 1:].reshape(k, -1)], axis=1)

    def reward(self, b, action, before):
        k = len(action)
        x_velocity = (b.xpos[:, self.main_body, 0] - before) / self.dt
        forward = x_velocity * self.p["forward_reward_weight"]
        state = np.concatenate([b.qpos, b.qvel], axis=1)
        min_z, max_z = self.p["healthy_z_range"]
        healthy = (np.isfinite(state).all(axis=1) & (min_z <= state[:, 2])
                   & (state[:, 2] <= max_z))
        rewards = forward + healthy * self.p["healthy_reward"]
        contact = self.p["contact_cost_weight"] * np.sum(
            np.square(self._contact_forces(b)).reshape(k, -1), axis=1)
        costs = self._control_cost(action) + contact
        return rewards - costs, ~healthy & bool(self.p["terminate_when_unhealthy"])


class _Humanoid(_Task):
    fields = ("xipos", "cinert", "cvel", "qfrc_actuator", "cfrc_ext")

    def _mass_center_x(self, b):
        # humanoid_v5.mass_center: einsum("b,bj->j", body_mass, xipos) / body_mass.sum()
        num = np.einsum("b,ebj->ej", self.model.body_mass, b.xipos)
        return num[:, 0] / self.model.body_mass.sum()

    def before(self, b):
        return self._mass_center_x(b)

    def state(self, b):
        k = len(b.qpos)
        return np.concatenate([b.qpos[:, 2:], b.qvel, b.cinert[:, 1:].reshape(k, -1),
                               b.cvel[:, 1:].reshape(k, -1), b.qfrc_actuator[:, 6:],
                               b.cfrc_ext[:, 1:].reshape(k, -1)], axis=1)

    def _contact_sum(self, b):
        return np.sum(np.square(b.cfrc_ext).reshape(len(b.cfrc_ext), -1), axis=1)

    def reward(self, b, action, before):
        x_velocity = (self._mass_center_x(b) - before) / self.dt
        forward = self.p["forward_reward_weight"] * x_velocity
        min_z, max_z = self.p["healthy_z_range"]
        healthy = (min_z < b.qpos[:, 2]) & (b.qpos[:, 2] < max_z)
        rewards = forward + healthy * self.p["healthy_reward"]
        # control_cost reads data.ctrl: the action as set, float64
        contact = np.clip(self.p["contact_cost_weight"] * self._contact_sum(b),
                          *self.p["contact_cost_range"])
        costs = self._control_cost(action) + contact
        return rewards - costs, ~healthy & bool(self.p["terminate_when_unhealthy"])


class _HumanoidStandup(_Humanoid):
    fields = ("cinert", "cvel", "qfrc_actuator", "cfrc_ext")

    def before(self, b):
        return None

    def reward(self, b, action, before):
        uph = (b.qpos[:, 2] - 0) / self.model.opt.timestep
        quad_ctrl = self.p["ctrl_cost_weight"] * np.sum(np.square(action), axis=1)
        impact = np.clip(self.p["impact_cost_weight"] * self._contact_sum(b),
                         *self.p["impact_cost_range"])
        return uph - quad_ctrl - impact + 1, np.zeros(len(action), bool)


class _BodyTask(_Task):
    """Reacher and Pusher: bodies' positions in state and reward."""

    fields = ("xpos",)
    bodies: tuple = ()

    def __init__(self, p, model):
        super().__init__(p, model)
        mujoco = import_mujoco()
        self.body = {name: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
                     for name in self.bodies}

    def com(self, b, name):
        return b.xpos[:, self.body[name]]


class _Reacher(_BodyTask):
    bodies = ("fingertip", "target")

    def state(self, b):
        theta = b.qpos[:, :2]
        return np.concatenate([np.cos(theta), np.sin(theta), b.qpos[:, 2:], b.qvel[:, :2],
                               (self.com(b, "fingertip") - self.com(b, "target"))[:, :2]],
                              axis=1)

    def reward(self, b, action, before):
        vec = self.com(b, "fingertip") - self.com(b, "target")
        dist = -np.linalg.norm(vec, axis=1) * self.p["reward_dist_weight"]
        ctrl = -np.square(action).sum(axis=1) * self.p["reward_control_weight"]
        return dist + ctrl, np.zeros(len(action), bool)

    def reset_state(self, rng, init_qpos, init_qvel):
        qpos = rng.uniform(low=-0.1, high=0.1, size=self.model.nq) + init_qpos
        while True:
            goal = rng.uniform(low=-0.2, high=0.2, size=2)
            if np.linalg.norm(goal) < 0.2:
                break
        qpos[-2:] = goal
        qvel = init_qvel + rng.uniform(low=-0.005, high=0.005, size=self.model.nv)
        qvel[-2:] = 0
        return qpos, qvel


class _Pusher(_BodyTask):
    bodies = ("tips_arm", "object", "goal")

    def state(self, b):
        return np.concatenate([b.qpos[:, :7], b.qvel[:, :7], self.com(b, "tips_arm"),
                               self.com(b, "object"), self.com(b, "goal")], axis=1)

    def reward(self, b, action, before):
        vec_1 = self.com(b, "object") - self.com(b, "tips_arm")
        vec_2 = self.com(b, "object") - self.com(b, "goal")
        near = -np.linalg.norm(vec_1, axis=1) * self.p["reward_near_weight"]
        dist = -np.linalg.norm(vec_2, axis=1) * self.p["reward_dist_weight"]
        ctrl = -np.square(action).sum(axis=1) * self.p["reward_control_weight"]
        return dist + ctrl + near, np.zeros(len(action), bool)

    def reset_state(self, rng, init_qpos, init_qvel):
        # pusher_v5 writes into init_qpos itself; the entries it writes are rewritten at
        # every reset, so a copy gives the same states.
        qpos = init_qpos.copy()
        goal_pos = np.asarray([0, 0])
        while True:
            cylinder_pos = np.concatenate([rng.uniform(low=-0.3, high=0, size=1),
                                           rng.uniform(low=-0.2, high=0.2, size=1)])
            if np.linalg.norm(cylinder_pos - goal_pos) > 0.17:
                break
        qpos[-4:-2] = cylinder_pos
        qpos[-2:] = goal_pos
        qvel = init_qvel + rng.uniform(low=-0.005, high=0.005, size=self.model.nv)
        qvel[-4:] = 0
        return qpos, qvel


_TASKS = {"HalfCheetah": _HalfCheetah, "Swimmer": _Swimmer, "Hopper": _Hopper,
          "Walker2d": _Walker2d, "Ant": _Ant, "Humanoid": _Humanoid,
          "HumanoidStandup": _HumanoidStandup, "Reacher": _Reacher, "Pusher": _Pusher}


# ============================================================================ observations
class _Rows(np.ndarray):
    """A stacked array whose ``tolist()`` of a 2-D or deeper array is its list of rows (views),
    not nested Python floats: ``build_obs`` calls ``tolist()`` on every body's block
    (``cinert[body]``: [10, K]), and converting every float of K envs costs ~100x the rest."""

    def tolist(self):
        return list(self) if self.ndim > 1 else super().tolist()


class _StackedData:
    """An ``MjData`` look-alike over K stacked envs with the env axis LAST: ``qpos[j]`` is
    joint j's position in every env [K], ``cfrc_ext[body]`` is [6, K], ``body(name).xpos``
    is [3, K]. gymnasium-robotics' ``build_obs`` and its nodes' lambdas index it as they
    index one MjData and so return rows [K] instead of scalars."""

    def __init__(self, batch: NativeBatch):
        self._b = batch

    def __getattr__(self, name):
        if name in _FIELDS:
            return np.moveaxis(getattr(self._b, name), 0, -1).view(_Rows)
        raise AttributeError(name)

    def body(self, name):
        mujoco = import_mujoco()
        index = mujoco.mj_name2id(self._b.model, mujoco.mjtObj.mjOBJ_BODY, name)
        return SimpleNamespace(xpos=self._b.xpos[:, index].T.view(_Rows))


def canonical_order(k_dict: dict, parts) -> dict:
    """``k_dict`` (gymnasium-robotics' nodes within k hops, per depth, sorted by label) with
    nodes of equal labels in partition order. The reference breaks such ties by set order,
    i.e. by object address: Pusher's shoulder pan and lift nodes are both labelled
    "r_wrist_roll_joint", so its obs=local agent 0 sees them in an order that differs
    between env instances. Natively they come in joint order, always."""
    order = {node: i for i, node in enumerate(n for part in parts for n in part)}
    return {k: sorted(nodes, key=lambda n: (n.label, order.get(n, len(order))))
            for k, nodes in k_dict.items()}


def _local_fields(categories) -> set:
    used = {c for level in categories for c in level}
    return ({f for f in ("cinert", "cvel", "qfrc_actuator", "cfrc_ext") if f in used}
            | {"xpos"})  # xpos: extra observations of body positions (Reacher, Pusher)


# ================================================================================= batch
class NativeBatch:
    """K MaMuJoCo envs of one scenario and split stepped together.

    Arrays (float64 unless said): ``qpos`` [K, nq], ``qvel`` [K, nv] and the task's other
    fields (``cfrc_ext`` [K, nbody, 6], ``xpos`` [K, nbody, 3], ...) hold every env's state
    after its last reset or step. ``act_index[i]`` are agent i's entries of the global action.

    Args:
        scenario, agent_conf: as in gymnasium-robotics' ``mamujoco_v1.parallel_env``.
        num_envs: K.
        obs: "global" (every agent observes the state) or "local" (obsk neighbourhoods).
        obsk: obs=local: the neighbourhood depth.
        max_steps: episode limit (truncation, the reference's TimeLimit).
    """

    def __init__(self, scenario: str, agent_conf: str, num_envs: int, obs: str = "global",
                 obsk: int = 1, max_steps: int = 1000):
        if scenario not in NATIVE_SCENARIOS:
            raise NotImplementedError(f"no native MaMuJoCo backend for {scenario}; valid: "
                                      f"{', '.join(sorted(NATIVE_SCENARIOS))}")
        mujoco = self.mujoco = import_mujoco()
        with _quiet_construction():
            from gymnasium.envs.mujoco.mujoco_env import expand_model_path
            from gymnasium_robotics.envs.multiagent_mujoco import mujoco_multi
            from gymnasium_robotics.envs.multiagent_mujoco.obsk import (
                build_obs,
                get_joints_at_kdist,
                get_parts_and_edges,
            )

            _, p = _gym_defaults(_GYM_ENV[scenario])
            if scenario.startswith("ManySegment"):
                self.model = self._many_segment_model(scenario, agent_conf)
            else:
                self.model = mujoco.MjModel.from_xml_path(expand_model_path(p["xml_file"]))
        self.scenario, self.agent_conf, self.params = scenario, agent_conf, p
        self.num_envs, self.obs_mode, self.max_steps = num_envs, obs, int(max_steps)
        model = self.model
        self.task = _TASKS[_GYM_ENV[scenario]](p, model)
        self.frame_skip = int(p["frame_skip"])

        factorization = _factorization(scenario, agent_conf)
        if factorization is None:
            parts, edges, self.globals = get_parts_and_edges(scenario, agent_conf)
        else:
            parts, edges = factorization["partition"], factorization["edges"]
            self.globals = factorization["globals"]
        self.partitions = parts
        self.n_agents = len(parts)
        self.act_index = [np.array([node.act_ids for node in part], np.int64) for part in parts]
        self._build_obs = build_obs
        self.k_dicts = [canonical_order(get_joints_at_kdist(part, edges, k=obsk), parts)
                        for part in parts]
        self.local_categories = mujoco_multi.MultiAgentMujocoEnv._generate_local_categories(
            SimpleNamespace(agent_obsk=obsk), scenario)
        self.global_categories = ("qpos", "qvel")

        fields = {"qpos", "qvel", *self.task.fields}
        if obs == "local":
            fields |= _local_fields(self.local_categories)
        self.fields = tuple(f for f in _FIELDS if f in fields)
        # gymnasium calls mj_rnePostConstraint after every step; it computes cacc, cfrc_int
        # and cfrc_ext, none of which feeds the dynamics, so only tasks reading cfrc_ext
        # need it.
        self.rne = "cfrc_ext" in fields
        self.datas = [mujoco.MjData(model) for _ in range(num_envs)]
        self.init_qpos = self.datas[0].qpos.ravel().copy()
        self.init_qvel = self.datas[0].qvel.ravel().copy()
        # Cached views of every MjData's arrays (MuJoCo never reallocates them).
        self._views = {f: [getattr(d, f) for d in self.datas] for f in self.fields}
        self._ctrl = [d.ctrl for d in self.datas]
        for f in self.fields:
            setattr(self, f, np.zeros((num_envs,) + self._views[f][0].shape))
        self.action = np.zeros((num_envs, model.nu))
        self.elapsed = np.zeros(num_envs, np.int64)
        from gymnasium.utils.seeding import np_random

        self.rngs = [None] * num_envs  # one np.random.Generator per env, as gymnasium's
        self._np_random = np_random
        self._stacked = _StackedData(self)
        ctrl = model.actuator_ctrlrange.astype(np.float32)
        self.action_low, self.action_high = float(ctrl[0, 0]), float(ctrl[0, 1])

    def _many_segment_model(self, scenario, agent_conf):
        from gymnasium_robotics.envs.multiagent_mujoco import (
            many_segment_ant,
            many_segment_swimmer,
        )

        generator = many_segment_ant if scenario == "ManySegmentAnt" else many_segment_swimmer
        n_segs = int(agent_conf.split("x")[0]) * int(agent_conf.split("x")[1])
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, f"{scenario}_{n_segs}.xml")
            generator.gen_asset(n_segs=n_segs, asset_path=path)
            return self.mujoco.MjModel.from_xml_path(path)

    # -------------------------------------------------------------------------- stepping
    def _gather(self, e: int) -> None:
        for f in self.fields:
            getattr(self, f)[e] = self._views[f][e]

    def reset(self, e: int, seed: int | None) -> None:
        """Start a new episode in env ``e``; ``seed`` reseeds its generator (None: continue
        its stream), as gymnasium's ``Env.reset`` does."""
        if seed is not None or self.rngs[e] is None:
            self.rngs[e], _ = self._np_random(seed)
        mujoco, d = self.mujoco, self.datas[e]
        mujoco.mj_resetData(self.model, d)
        qpos, qvel = self.task.reset_state(self.rngs[e], self.init_qpos, self.init_qvel)
        d.qpos[:] = qpos
        d.qvel[:] = qvel
        mujoco.mj_forward(self.model, d)  # MujocoEnv.set_state
        self._gather(e)
        self.elapsed[e] = 0

    def step(self, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step all K envs with ``actions`` [K, N, A] (agent i's in its first
        ``len(act_index[i])`` columns). Returns reward [K] float64, terminated [K] and
        truncated [K] bool."""
        for i, index in enumerate(self.act_index):
            self.action[:, index] = actions[:, i, :len(index)]
        before = self.task.before(self)
        mujoco, model, n, rne = self.mujoco, self.model, self.frame_skip, self.rne
        step, post = mujoco.mj_step, mujoco.mj_rnePostConstraint
        views = [(getattr(self, f), self._views[f]) for f in self.fields]
        for e, d in enumerate(self.datas):
            self._ctrl[e][:] = self.action[e]
            step(model, d, n)
            if rne:
                post(model, d)
            for stacked, view in views:
                stacked[e] = view[e]
        reward, terminated = self.task.reward(self, self.action, before)
        self.elapsed += 1
        truncated = self.elapsed >= self.max_steps
        return reward, terminated, truncated

    # ---------------------------------------------------------------------- observations
    def state(self) -> np.ndarray:
        """The global state of every env [K, S] (the v5 env's observation)."""
        return self.task.state(self)

    def local_observations(self) -> list[np.ndarray]:
        """obs=local: each agent's observation [K, d_i] (gymnasium-robotics' ``build_obs``
        run once over all K envs)."""
        return [np.asarray(self._build_obs(self._stacked, k_dict, self.local_categories,
                                           self.globals, self.global_categories),
                           np.float64).reshape(-1, self.num_envs).T.view(np.ndarray)
                for k_dict in self.k_dicts]

    def observations(self) -> list[np.ndarray]:
        """Each agent's observation [K, d_i]: the state (obs=global) or its local one."""
        if self.obs_mode == "global":
            state = self.state()
            return [state] * self.n_agents
        return self.local_observations()

    def observe(self) -> tuple[list[np.ndarray], np.ndarray]:
        """(each agent's observation [K, d_i], the state [K, S]), the state computed once."""
        state = self.state()
        if self.obs_mode == "global":
            return [state] * self.n_agents, state
        return self.local_observations(), state

    def close(self) -> None:
        self.datas = []


# ====================================================================== one env, PettingZoo
class NativeParallelEnv:
    """One native env (a batch of one) behind the PettingZoo ParallelEnv API of the
    reference, for what works env by env: the host env's probe, Ray actors, rendering
    (``render_mode="rgb_array"``, gymnasium's MuJoCo renderer and the v5 class's camera)."""

    metadata: ClassVar[dict] = {"render_modes": ["rgb_array"], "name": "MaMuJoCo-native"}

    def __init__(self, scenario: str, agent_conf: str, obs: str = "global", obsk: int = 1,
                 max_steps: int = 1000, render_mode: str | None = None):
        import gymnasium

        self.batch = NativeBatch(scenario, agent_conf, 1, obs, obsk, max_steps)
        self.possible_agents = [f"agent_{i}" for i in range(self.batch.n_agents)]
        self.agents: list[str] = []
        self.render_mode, self._renderer = render_mode, None
        b = self.batch
        b.reset(0, 0)  # dims of the observations
        low, high = b.action_low, b.action_high
        self._width = [len(index) for index in b.act_index]
        self._action_spaces = [gymnasium.spaces.Box(low, high, (len(i),), np.float32)
                               for i in b.act_index]
        self._obs_spaces = [gymnasium.spaces.Box(-np.inf, np.inf, (o.shape[1],), np.float64)
                            for o in b.observations()]
        if obs == "local":  # the reference resets only obs=global envs when built (seed 0)
            b.rngs[0] = None

    @property
    def unwrapped(self):
        return self

    def observation_space(self, agent):
        return self._obs_spaces[self.possible_agents.index(agent)]

    def action_space(self, agent):
        return self._action_spaces[self.possible_agents.index(agent)]

    def _observations(self):
        return {a: o[0] for a, o in zip(self.possible_agents, self.batch.observations())}

    def reset(self, seed=None, options=None):
        self.batch.reset(0, seed)
        self.agents = list(self.possible_agents)
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions):
        padded = np.zeros((1, len(self._width), max(self._width)))
        for i, a in enumerate(self.possible_agents):
            padded[0, i, :self._width[i]] = actions[a]
        reward, terminated, truncated = self.batch.step(padded)
        agents = self.agents
        term, trunc = bool(terminated[0]), bool(truncated[0])
        if term or trunc:
            self.agents = []
        return (self._observations(), {a: float(reward[0]) for a in agents},
                {a: term for a in agents}, {a: trunc for a in agents}, {a: {} for a in agents})

    def state(self):
        return self.batch.state()[0]

    def render(self):
        if self.render_mode != "rgb_array":
            raise ValueError(f"render_mode={self.render_mode!r}; valid: 'rgb_array'")
        if self._renderer is None:
            from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

            p, model = self.batch.params, self.batch.model
            width, height = p.get("width", 480), p.get("height", 480)
            model.vis.global_.offwidth, model.vis.global_.offheight = width, height
            self._renderer = MujocoRenderer(model, self.batch.datas[0],
                                            p.get("default_camera_config"), width, height,
                                            p.get("max_geom", 1000), p.get("camera_id"),
                                            p.get("camera_name"), p.get("visual_options"))
        return self._renderer.render(self.render_mode)

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.batch.close()


# ========================================================================= recipe functions
def make_parallel_env(scenario: str, agent_conf: str, obs: str = "global", obsk: int = 1,
                      max_steps: int = 1000, render_mode: str | None = None):
    """One native env as a PettingZoo ParallelEnv (the recipe's ``function``)."""
    return NativeParallelEnv(scenario, agent_conf, obs, obsk, max_steps, render_mode)


def make_batch_env(num_envs: int, scenario: str, agent_conf: str, obs: str = "global",
                   obsk: int = 1, max_steps: int = 1000, render_mode: str | None = None):
    """``num_envs`` native envs as one batch env (the recipe's ``batch_function``, stepped by
    :class:`teamrl.envs.host_worker.BatchTeamAdapter`); ``render_mode`` is ignored."""
    return NativeBatch(scenario, agent_conf, num_envs, obs, obsk, max_steps)
