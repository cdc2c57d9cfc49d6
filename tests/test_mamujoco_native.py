"""The native MaMuJoCo backend (teamrl.envs.mamujoco_native) against gymnasium-robotics'
mamujoco_v1, the reference: the same observations, states, rewards, terminations and
truncations over whole episodes (fixed seeds, fixed random actions) on every listed scenario
and split, obs=global and obs=local with several obsk; the same team arrays through the host
runner (batched per worker vs one ParallelEnv at a time); training through `teamrl train`.

Tolerance: 1e-9 relative (and absolute) on float64. The physics is the reference's bit for bit
(same model, same reset draws, same controls); only NumPy's vectorised reductions (norms,
sums over [K, ...] rows) may differ from the per-env ones in the last bits, and those never
feed back into the simulation. In practice every value compared here is equal exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from teamrl.envs import mamujoco_native
from teamrl.envs.mamujoco import all_splits, make_parallel_env
from teamrl.envs.mamujoco_native import NativeBatch, canonical_order
from teamrl.envs.registry import default_env_options, make_env

TOL = {"rtol": 1e-9, "atol": 1e-9}
SPLITS = [f"{s}-{c}" for s, c in all_splits()]
TERMINATING = ("Hopper", "Walker2d", "Ant", "Humanoid", "ManySegmentAnt")


def _reference(scenario, conf, obs, obsk, max_steps):
    env = make_parallel_env(scenario, conf, obs, obsk, max_steps)
    if obs == "local":
        # gymnasium-robotics orders equally labelled nodes by object address (Pusher's
        # shoulder pan and lift are both "r_wrist_roll_joint"): give this instance the
        # native backend's deterministic order, which is one of its possible orders.
        env.k_dicts = [canonical_order(k, env.agent_action_partitions) for k in env.k_dicts]
    return env


def run_both(split, obs="global", obsk=1, max_steps=25, steps=60, num_envs=2, seed=11):
    """Step ``num_envs`` native envs (one batch) and as many reference envs with the same
    seeds and random actions for ``steps`` steps, resetting an env whose episode ended
    (continuing its random stream) in both; assert equality at every step. Returns the
    number of episode ends seen, (terminations, truncations)."""
    scenario, conf = split.split("-")
    native = NativeBatch(scenario, conf, num_envs, obs, obsk, max_steps)
    refs = [_reference(scenario, conf, obs, obsk, max_steps) for _ in range(num_envs)]
    names = refs[0].possible_agents
    assert len(names) == native.n_agents
    widths = [len(index) for index in native.act_index]
    assert widths == [refs[0].action_space(a).shape[0] for a in names]
    rng = np.random.default_rng(seed)
    ref_obs = [None] * num_envs
    for e, ref in enumerate(refs):
        ref_obs[e], _ = ref.reset(seed=seed + e)
        native.reset(e, seed + e)

    def check(where):
        observations, state = native.observe()
        for e, ref in enumerate(refs):
            for i, a in enumerate(names):
                np.testing.assert_allclose(observations[i][e], ref_obs[e][a], **TOL,
                                           err_msg=f"{where}: env {e} {a} observation")
            np.testing.assert_allclose(state[e], ref.state(), **TOL,
                                       err_msg=f"{where}: env {e} state")

    check("reset")
    ends = [0, 0]
    for t in range(steps):
        actions = np.zeros((num_envs, len(names), max(widths)), np.float32)
        for i, w in enumerate(widths):
            actions[:, i, :w] = rng.uniform(-1, 1, (num_envs, w))
        reward, terminated, truncated = native.step(actions)
        for e, ref in enumerate(refs):
            ref_obs[e], rewards, terms, truncs, _ = ref.step(
                {a: actions[e, i, :widths[i]] for i, a in enumerate(names)})
            np.testing.assert_allclose(reward[e], rewards[names[0]], **TOL,
                                       err_msg=f"step {t}: env {e} reward")
            assert bool(terminated[e]) == bool(terms[names[0]]), f"step {t}: env {e}"
            assert bool(truncated[e]) == bool(truncs[names[0]]), f"step {t}: env {e}"
        check(f"step {t}")
        for e, ref in enumerate(refs):
            if terminated[e] or truncated[e]:
                ends[0 if terminated[e] and not truncated[e] else 1] += 1
                ref_obs[e], _ = ref.reset(seed=None)
                native.reset(e, None)
                check(f"step {t}: env {e} reset")
    native.close()
    return ends


@pytest.mark.parametrize("obs", ["global", "local"])
@pytest.mark.parametrize("split", SPLITS)
def test_native_equals_reference(split, obs):
    """Every listed split: 60 steps of 2 envs, episodes truncated at 25 steps (or earlier
    terminated) and restarted from the continued random streams."""
    terminations, truncations = run_both(split, obs)
    assert truncations + terminations >= 2


@pytest.mark.parametrize("obsk", [0, 2])
@pytest.mark.parametrize("split", ["HalfCheetah-6x1", "Ant-2x4d", "Hopper-3x1", "Walker2d-6x1",
                                   "Humanoid-9|8", "Reacher-2x1", "Pusher-3p",
                                   "ManySegmentAnt-2x3", "ManySegmentSwimmer-4x2"])
def test_native_equals_reference_other_obsk(split, obsk):
    run_both(split, "local", obsk, max_steps=20, steps=30)


def test_full_length_halfcheetah_episode():
    """A whole 1000-step episode, truncated by the time limit at its end."""
    assert run_both("HalfCheetah-2x3", "global", max_steps=1000, steps=1000,
                    num_envs=1) == [0, 1]


@pytest.mark.parametrize("split,obs", [("Hopper-3x1", "local"), ("Walker2d-2x3", "global"),
                                       ("Ant-4x2", "local"), ("Humanoid-9|8", "global")])
def test_full_episodes_end_by_termination(split, obs):
    """Episodes of the default limit run until the robot falls (random actions)."""
    terminations, truncations = run_both(split, obs, max_steps=1000, steps=300, num_envs=2)
    assert terminations >= 2 and truncations == 0


# ------------------------------------------------------------------ through the host runner
def _team(env_id, backend, workers, **options):
    opts = default_env_options(env_id)
    opts.backend, opts.workers = backend, workers
    for key, value in options.items():
        setattr(opts, key, value)
    return make_env(env_id, opts, agent_id=True)


FIELDS = ("obs", "state", "avail", "alive", "final_obs", "final_state", "final_avail",
          "final_alive", "reward", "terminated", "truncated")


@pytest.mark.parametrize("env_id,options", [("mamujoco/HalfCheetah-2x3", {"max_steps": 15}),
                                            ("mamujoco/Walker2d-3x2", {"obs": "local",
                                                                       "max_steps": 30})])
def test_team_arrays_equal_across_backends(env_id, options):
    """The native backend batched in worker processes (1 and 2 workers) and in-process fills
    the team buffers exactly as the reference ParallelEnvs one by one: observations with agent
    ids, states, rewards, terminations, truncations, final observations, auto-resets."""
    num_envs, steps = 5, 40
    reference = _team(env_id, "gymnasium_robotics", 0, **options)
    native = _team(env_id, "native", 0, **options)
    assert native.spec == reference.spec
    rng = np.random.default_rng(0)
    vectors = [reference.vector(num_envs, 0), native.vector(num_envs, 0),
               native.vector(num_envs, 1), native.vector(num_envs, 2)]
    try:
        for vec in vectors:
            vec.reset(range(100, 100 + num_envs))
        ends = 0
        for t in range(steps):
            action = rng.uniform(-1.5, 1.5, vectors[0].buffers.action.shape).astype(np.float32)
            for vec in vectors:
                vec.step(action)
            ref = vectors[0].buffers
            for vec in vectors[1:]:
                for name in FIELDS:
                    np.testing.assert_allclose(getattr(vec.buffers, name), getattr(ref, name),
                                               rtol=1e-6, atol=1e-6,
                                               err_msg=f"step {t}: {name}")
            ends += int(np.sum(ref.terminated | ref.truncated))
        assert ends >= num_envs
    finally:
        for vec in vectors:
            vec.close()


def test_native_parallel_env_equals_reference():
    """The single-env ParallelEnv of the native backend (probes, Ray actors, rendering)."""
    native = mamujoco_native.make_parallel_env("Ant", "2x4", "local", 1, 20)
    ref = _reference("Ant", "2x4", "local", 1, 20)
    assert native.possible_agents == ref.possible_agents
    for a in ref.possible_agents:
        assert native.action_space(a) == ref.action_space(a)
        assert native.observation_space(a).shape == ref.observation_space(a).shape
    obs_n, _ = native.reset(seed=5)
    obs_r, _ = ref.reset(seed=5)
    rng = np.random.default_rng(1)
    for t in range(20):
        for a in ref.possible_agents:
            np.testing.assert_allclose(obs_n[a], obs_r[a], **TOL)
        np.testing.assert_allclose(native.state(), ref.state(), **TOL)
        actions = {a: rng.uniform(-1, 1, 4).astype(np.float32) for a in ref.possible_agents}
        obs_n, rew_n, term_n, trunc_n, _ = native.step(actions)
        obs_r, rew_r, term_r, trunc_r, _ = ref.step(actions)
        assert rew_n == pytest.approx(rew_r, rel=1e-9)
        assert term_n == term_r and trunc_n == trunc_r
        if not ref.agents:
            assert not native.agents
            break
    native.close()


def test_teamrl_train_with_native_backend(tmp_path):
    """A tiny `teamrl train happo mamujoco/HalfCheetah-2x3` on the (default) native backend."""
    import csv

    import yaml

    from teamrl.cli import main

    out = tmp_path / "run"
    assert main(["train", "happo", "mamujoco/HalfCheetah-2x3", f"out={out}", "backend=native",
                 "workers=1", "num_envs=4", "rollout_length=25", "total_steps=200",
                 "max_steps=20", "eval_every=1", "eval_episodes=2", "log_every=1",
                 "hidden_sizes=[16,16]", "progress=none"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["env"]["backend"] == "native"
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and int(rows[-1]["env_steps"]) == 200
    assert any(np.isfinite(float(r["return_mean"])) for r in rows)
    assert default_env_options("mamujoco/HalfCheetah-2x3").backend == "native"
