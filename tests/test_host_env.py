"""Host environments: the MaMuJoCo and PettingZoo adapters against the envs themselves, the
worker runner (same results with any number of workers, clear errors when a worker fails),
and training through it."""

from __future__ import annotations

import os
import signal

import jax
import numpy as np
import pytest

from teamrl.envs.host_env import HostEnvError
from teamrl.envs.registry import default_env_options, make_env

MAMUJOCO_SPLITS = ["HalfCheetah-2x3", "HalfCheetah-3x2", "HalfCheetah-6x1", "Ant-2x4",
                   "Ant-4x2", "Ant-8x1", "Walker2d-2x3", "Walker2d-3x2", "Walker2d-6x1",
                   "Hopper-3x1", "Humanoid-9|8", "Humanoid-17x1", "Swimmer-2x1",
                   "ManySegmentSwimmer-10x2"]


def _host_env(env_id, agent_id=False, team_reward="mean", **options):
    opts = default_env_options(env_id)
    opts.workers = 0
    for k, v in options.items():
        setattr(opts, k, v)
    return make_env(env_id, opts, agent_id=agent_id, team_reward=team_reward)


def _reference(split, **kwargs):
    """The gymnasium-robotics env itself (shipped splits) for comparison."""
    from gymnasium_robotics import mamujoco_v1

    scenario, conf = split.split("-")
    return mamujoco_v1.parallel_env(scenario, conf, **kwargs)


# ------------------------------------------------------------------------------ MaMuJoCo
@pytest.mark.parametrize("split", MAMUJOCO_SPLITS)
def test_mamujoco_spec_matches_gymnasium_robotics(split):
    from teamrl.envs.mamujoco import ADDED_SPLITS, make_parallel_env

    scenario, conf = split.split("-")
    local = _host_env(f"mamujoco/{split}", obs="local")
    glob = _host_env(f"mamujoco/{split}", agent_id=True, obs="global")
    ours = make_parallel_env(scenario, conf, obs="local")
    ours.reset(seed=0)
    state_dim = np.asarray(ours.state()).size
    names = ours.possible_agents
    if (scenario, conf) not in ADDED_SPLITS:
        ref = _reference(split)
        ref.reset(seed=0)
        assert names == ref.possible_agents
        assert local.spec.obs_dims == tuple(ref.observation_space(a).shape[0] for a in names)
        assert local.spec.action_dims == tuple(ref.action_space(a).shape[0] for a in names)
        assert state_dim == np.asarray(ref.state()).size
    # Added splits regroup the actuators: every actuator belongs to exactly one agent.
    act_ids = sorted(node.act_ids for part in ours.unwrapped.agent_action_partitions
                     for node in part)
    n_actuators = ours.unwrapped.single_agent_env.action_space.shape[0]
    assert act_ids == list(range(n_actuators))
    assert sum(local.spec.action_dims) == n_actuators
    assert glob.spec.action_dims == local.spec.action_dims
    assert local.spec.state_dim == glob.spec.state_dim == state_dim
    # obs=global: the full state plus the one-hot agent id, for every agent.
    n = len(names)
    assert glob.spec.obs_dims == (state_dim,) * n and glob.spec.obs_dim == state_dim + n
    mask = glob.spec.action_mask
    assert (mask.sum(axis=1) == np.asarray(glob.spec.action_dims)).all()
    if split == "Humanoid-9|8":
        assert mask.shape == (2, 9) and mask[0].all() and mask[1].sum() == 8


def test_mamujoco_team_matches_env_over_an_episode():
    """Observations, state and reward of the team equal the env's own over random steps."""
    split = "HalfCheetah-2x3"
    team = _host_env(f"mamujoco/{split}", obs="local", max_steps=40)
    ref = _reference(split, max_episode_steps=40)
    ref_obs, _ = ref.reset(seed=7)
    rng = np.random.default_rng(0)
    with team.vector(1) as vec:
        vec.reset([7])
        b = vec.buffers
        for t in range(40):
            names = ref.possible_agents
            for i, a in enumerate(names):
                np.testing.assert_allclose(b.obs[0, i, :len(ref_obs[a])], ref_obs[a], rtol=1e-6,
                                           atol=1e-6)
            np.testing.assert_allclose(b.state[0], ref.state(), rtol=1e-6, atol=1e-6)
            action = rng.uniform(-1, 1, (1, 2, 3)).astype(np.float32)
            vec.step(action)
            ref_obs, rewards, terms, truncs, _ = ref.step(
                {a: action[0, i] for i, a in enumerate(names)})
            assert b.reward[0] == pytest.approx(np.mean(list(rewards.values())), rel=1e-5)
            assert b.terminated[0] == any(terms.values())
            assert b.truncated[0] == (t == 39)
            assert not any(terms.values())
    assert any(truncs.values())


def test_mamujoco_truncation_and_termination_kept_apart():
    with _host_env("mamujoco/HalfCheetah-2x3", max_steps=5).vector(1) as vec:
        vec.reset([0])
        for t in range(5):
            vec.step(np.zeros((1, 2, 3), np.float32))
        b = vec.buffers
        assert b.truncated[0] and not b.terminated[0]
        # The final observation is the state reached, the next one a fresh episode.
        assert not np.allclose(b.final_state[0], b.state[0])
    with _host_env("mamujoco/Hopper-3x1").vector(1) as vec:
        vec.reset([0])
        for t in range(1000):  # full torques topple the hopper long before the time limit
            vec.step(np.ones((1, 3, 1), np.float32))
            if vec.buffers.terminated[0] or vec.buffers.truncated[0]:
                break
        assert vec.buffers.terminated[0] and not vec.buffers.truncated[0] and t < 999


# ------------------------------------------------------------------------------ PettingZoo
def test_pettingzoo_agents_leaving_are_masked_and_zeroed():
    team = _host_env("pettingzoo/host_fixtures", agent_id=True, team_reward="sum")
    spec = team.spec
    assert spec.obs_dims == (2, 3, 4) and spec.obs_dim == 4 + 3 and spec.state_dim == 2
    with team.vector(1) as vec:
        vec.reset([3])
        b = vec.buffers
        history = []
        for t in range(6):
            history.append((b.alive[0].copy(), b.obs[0].copy(), b.avail[0].copy()))
            vec.step(np.ones((1, 3), np.int32))
            # Agents that acted count in the final observation; a2 leaves after step 3.
            assert b.final_alive[0].tolist() == [True, True, t < 3]
            assert b.reward[0] == (3 if t < 3 else 2) * (1 + t + 1)
            assert b.truncated[0] == (t == 5) and not b.terminated[0]
        alive, obs, avail = zip(*history)
        assert [a.tolist() for a in alive] == [[True, True, t < 3] for t in range(6)]
        for t in range(6):
            assert (obs[t][2, :4] == 0).all() == (t >= 3)
            np.testing.assert_array_equal(obs[t][:, -3:], np.eye(3))  # agent ids stay
            # action 2 unavailable on odd env steps (the env's action_mask)
            assert avail[t][0].tolist() == [True, True, t % 2 == 0]
        # After the truncation the env was reset: everyone is back.
        assert b.alive[0].all()


def test_pettingzoo_bad_module_is_a_clear_error():
    from teamrl.config import ConfigError

    with pytest.raises(ConfigError, match="cannot import module 'no_such_module_xyz'"):
        _host_env("pettingzoo/no_such_module_xyz")
    with pytest.raises(ConfigError, match="has no parallel_env"):
        _host_env("pettingzoo/json")


# --------------------------------------------------------------------------------- runner
def _trajectory(team, workers, num_envs=4, steps=25):
    rng = np.random.default_rng(1)
    out = []
    with team.vector(num_envs, workers) as vec:
        vec.reset(range(10, 10 + num_envs))
        for _ in range(steps):
            vec.step(rng.uniform(-1, 1, vec.buffers.action.shape).astype(np.float32))
            b = vec.buffers
            out.append(np.concatenate([b.obs.ravel(), b.final_state.ravel(), b.reward,
                                       b.terminated, b.truncated]))
    return np.stack(out)


def test_runner_same_results_with_0_1_2_workers():
    team = _host_env("mamujoco/HalfCheetah-2x3", max_steps=10)
    reference = _trajectory(team, 0)
    for workers in (1, 2):
        np.testing.assert_array_equal(_trajectory(team, workers), reference)


def test_killed_worker_is_reported():
    team = _host_env("mamujoco/HalfCheetah-2x3")
    vec = team.vector(4, workers=2)
    vec.reset(range(4))
    vec.step(np.zeros(vec.buffers.action.shape, np.float32))
    os.kill(vec.pids[1], signal.SIGKILL)
    with pytest.raises(HostEnvError, match=r"env worker 1 \(pid \d+\) died with exit code -9"):
        vec.step(np.zeros(vec.buffers.action.shape, np.float32))
    assert vec.closed


def test_failing_env_reports_the_workers_traceback():
    team = _host_env("pettingzoo/host_fixtures", env_kwargs={"crash_at": 3})
    for workers in (0, 1):
        vec = team.vector(2, workers)
        vec.reset([0, 1])
        with pytest.raises(HostEnvError, match="relay env exploded on purpose") as info:
            for _ in range(3):
                vec.step(np.zeros((2, 3), np.int32))
        if workers:
            assert "Traceback" in str(info.value) and "host_fixtures.py" in str(info.value)
        vec.close()


def test_failing_env_on_a_ray_actor_names_the_actor_and_its_traceback():
    team = _host_env("pettingzoo/host_fixtures", env_kwargs={"crash_at": 3},
                     worker_backend="ray")
    vec = team.vector(2, 2)
    vec.reset([0, 1])
    with pytest.raises(HostEnvError, match="env actor 0 \\(envs 0...0\\) failed(.|\n)*"
                                           "relay env exploded on purpose") as info:
        for _ in range(3):
            vec.step(np.zeros((2, 3), np.int32))
    assert "host_fixtures.py" in str(info.value)
    assert vec.closed


# ------------------------------------------------------------------------------- training
def _host_config(tmp_path, algo="happo", env_id="mamujoco/HalfCheetah-2x3", **overrides):
    from teamrl.train.presets import base_config
    from teamrl.config import apply_overrides

    config = base_config(algo, env_id)
    settings = {"num_envs": 4, "rollout_length": 20, "total_steps": 160, "eval_every": 0,
                "progress": "none", "out": str(tmp_path / "run"), "log_every": 1,
                "hidden_sizes": "[16,16]", **overrides}
    apply_overrides(config, {k: str(v) for k, v in settings.items()})
    return config


def test_training_identical_with_1_and_2_workers_and_ray_actors(tmp_path):
    """Environment e is seeded the same whatever steps it: 1 or 2 worker processes and 2 Ray
    actors (worker_backend=ray on a local Ray instance) train bitwise the same parameters."""
    from teamrl.train import train

    params = []
    for name, settings in (("1", {"workers": 1}), ("2", {"workers": 2}),
                           ("ray", {"workers": 2, "worker_backend": "ray"})):
        config = _host_config(tmp_path / name, total_steps=160, **settings)
        summary = train(config)
        params.append(jax.tree.leaves(summary["runner"].train_state.actor_params))
    for other in params[1:]:
        for a, b in zip(params[0], other):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_killed_worker_stops_training_with_intact_checkpoint(tmp_path, monkeypatch):
    from teamrl import runs
    from teamrl.core.rollout import HostCollector
    from teamrl.train import TrainingStopped, make_trainer, train

    calls = {"n": 0}
    original = HostCollector.collect

    def collect_then_kill(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # after two logged (and checkpointed) updates
            os.kill(self.vec.pids[0], signal.SIGKILL)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HostCollector, "collect", collect_then_kill)
    config = _host_config(tmp_path, algo="mappo", env_id="pettingzoo/host_fixtures",
                          workers=1, total_steps=400)
    with pytest.raises(TrainingStopped, match=r"died with exit code -9(.|\n)*last good "
                                              r"checkpoint(.|\n)*\(update 2\)"):
        train(config)
    monkeypatch.setattr(HostCollector, "collect", original)
    trainer = make_trainer(config)
    try:
        runner, meta = runs.load_checkpoint(tmp_path / "run", "latest", trainer.init())
    finally:
        trainer.close()
    assert meta["updates"] == 2


@pytest.mark.slow
def test_happo_learns_halfcheetah(tmp_path):
    """HAPPO on mamujoco/HalfCheetah-2x3 (obs=global) within 100k steps. Calibrated: the
    first episodes (a near-random policy) return about -125, the policy reaches +130..190 by
    100k steps (seed 0); we require the last 20k steps to beat the first episodes by 150."""
    import csv

    from teamrl.train import train

    config = _host_config(tmp_path, num_envs=10, rollout_length=200, total_steps=100_000,
                          log_every=5, hidden_sizes="[64,64]", epochs=5, minibatches=1,
                          clip_eps=0.2, lr=5e-4, ent_coef=0.0)
    train(config)
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))
            if r["return_mean"] != "nan"]
    first, last = float(rows[0]["return_mean"]), [float(r["return_mean"]) for r in rows
                                                  if int(r["env_steps"]) > 80_000]
    assert first < 0
    assert np.mean(last) > first + 150, (first, last)


# ------------------------------------------------------------------------------ rendering
def _cli(*args, env=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "teamrl.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


def test_render_mamujoco_gif_and_missing_gl_backend(tmp_path):
    """Offscreen MuJoCo frames through EGL; a missing OpenGL backend is one clear line."""
    import imageio.v2 as imageio

    from teamrl.train import train

    run_dir = tmp_path / "run"
    train(_host_config(tmp_path, total_steps=80, max_steps=20, workers=0))
    gif = tmp_path / "cheetah.gif"
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.pop("MUJOCO_GL", None)
    done = _cli("eval", str(run_dir), f"render={gif}", env={"MUJOCO_GL": "egl"})
    assert done.returncode == 0, done.stderr
    frames = imageio.mimread(gif)
    assert len(frames) == 21  # the reset frame and one per step of the 20-step episode
    assert frames[0].ndim == 3 and frames[0].std() > 0
    assert not np.array_equal(frames[0], frames[-1])  # the cheetah moved
    bad = _cli("eval", str(run_dir), f"render={tmp_path / 'x.gif'}",
               env={"MUJOCO_GL": "osmesa"})
    assert bad.returncode == 2
    assert "OpenGL backend MUJOCO_GL=osmesa" in bad.stderr and "libegl1" in bad.stderr
    assert bad.stderr.count("\n") == 1 and not (tmp_path / "x.gif").exists()


def test_render_mpe_gif_and_bad_requests(tmp_path):
    import imageio.v2 as imageio

    from teamrl.train.presets import base_config
    from teamrl.config import ConfigError, apply_overrides
    from teamrl.train.evaluate import render_run
    from teamrl.train import train

    config = base_config("mappo", "mpe/simple_spread")
    apply_overrides(config, {"total_steps": "4096", "progress": "none", "eval_every": "0",
                             "out": str(tmp_path / "mpe")})
    train(config)
    result = render_run(tmp_path / "mpe", tmp_path / "spread.gif", episodes=2)
    assert len(result["returns"]) == 2 and result["frames"] == 2 * 26
    # (the GIF writer merges consecutive identical frames, so the file may hold fewer)
    assert 26 < len(imageio.mimread(tmp_path / "spread.gif")) <= 52
    with pytest.raises(ConfigError, match=r"must end in one of \.gif, \.mp4"):
        render_run(tmp_path / "mpe", tmp_path / "spread.avi")
    with pytest.raises(ConfigError, match="does not exist"):
        render_run(tmp_path / "mpe", tmp_path / "nowhere" / "spread.gif")


# ---------------------------------------------- every ParallelEnv PettingZoo ships (conformance)
# (module, env_kwargs, what it needs). Classic's other games and the rlcard ones are AEC-only.
PETTINGZOO_PARALLEL = [
    ("pettingzoo.sisl.multiwalker_v9", {}, "pettingzoo[sisl]: box2d, pygame"),
    ("pettingzoo.sisl.multiwalker_v9", {"terminate_on_fall": False},
     "pettingzoo[sisl]: box2d, pygame"),
    ("pettingzoo.sisl.pursuit_v5", {}, "pettingzoo[sisl]: pygame"),
    ("pettingzoo.butterfly.cooperative_pong_v6", {}, "pettingzoo[butterfly]: pygame, pymunk"),
    ("pettingzoo.butterfly.knights_archers_zombies_v11", {},
     "pettingzoo[butterfly]: pygame, pymunk"),
    ("pettingzoo.butterfly.pistonball_v6", {}, "pettingzoo[butterfly]: pygame, pymunk"),
    ("pettingzoo.classic.rps_v2", {}, "pettingzoo"),
] + [(f"mpe2.{name}", {}, "mpe2 (teamrl[pettingzoo])") for name in (
    "simple_v3", "simple_adversary_v3", "simple_crypto_v3", "simple_push_v3",
    "simple_reference_v3", "simple_speaker_listener_v4", "simple_spread_v3", "simple_tag_v3",
    "simple_world_comm_v3", "collect_treasure_v1", "simple_formation_v1", "simple_line_v1")] + [
    (f"pettingzoo.atari.{name}", {}, "multi-agent-ale-py and the Atari ROMs (AutoROM)")
    for name in ("pong_v3", "boxing_v2", "space_invaders_v2", "entombed_cooperative_v3")]


@pytest.mark.parametrize("module,kwargs,needs", PETTINGZOO_PARALLEL,
                         ids=[f"{m.rsplit('.', 1)[-1]}{'-' + '-'.join(k) if k else ''}"
                              for m, k, _ in PETTINGZOO_PARALLEL])
def test_pettingzoo_parallel_env_conformance(module, kwargs, needs):
    """The adapter over each ParallelEnv: reset, 200 random (available) steps, team arrays of
    the spec's shapes, finite rewards, episodes ending, removed agents masked and zeroed, and
    a usable global state (multiwalker's state() fails once walkers fall: concatenated
    observations instead)."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as err:
        pytest.skip(f"{module} needs {needs} ({err})")
    team = _host_env(f"pettingzoo/{module}", agent_id=True, env_kwargs=kwargs)
    spec, lay = team.spec, team.layout
    N, E = len(spec.agent_names), 2
    if module.endswith("multiwalker_v9"):
        assert lay.state_source == "concat"
    rng = np.random.default_rng(0)
    ended = 0
    with team.vector(E) as vec:
        vec.reset([0, 1])
        b = vec.buffers
        for _ in range(200):
            assert b.obs.shape == (E, N, spec.obs_dim) and b.state.shape == (E, spec.state_dim)
            assert b.alive.any(axis=1).all() and b.avail.any(axis=2).all()
            if spec.action_kind == "discrete":
                action = np.array([[rng.choice(np.flatnonzero(b.avail[e, i])) for i in range(N)]
                                   for e in range(E)], np.int32)
            else:
                action = rng.uniform(-1, 1, b.action.shape).astype(np.float32)
            vec.step(action)
            assert np.isfinite(b.reward).all() and np.isfinite(b.final_state).all()
            assert not (b.terminated & b.truncated).any()
            # Removed agents: zero observation (agent id kept); a concatenated state agrees.
            gone = ~b.alive
            assert (b.obs[gone][:, :-N] == 0).all()
            np.testing.assert_array_equal(b.obs[:, :, -N:], np.broadcast_to(np.eye(N),
                                                                            (E, N, N)))
            if lay.state_source == "concat":
                np.testing.assert_array_equal(b.state, np.concatenate(
                    [b.obs[:, i, :d] for i, d in enumerate(spec.obs_dims)], axis=1))
            ended += int((b.terminated | b.truncated).sum())
    if not module.endswith(("pursuit_v5", "cooperative_pong_v6", "pistonball_v6")):
        assert ended > 0  # (those three run 500+ steps per episode)


def test_multiwalker_trains_with_walkers_removed(tmp_path):
    """multiwalker_v9 with its defaults (remove_on_fall) crashed at the first fall: its
    state() needs every walker. It now trains (MAPPO, a few updates)."""
    pytest.importorskip("Box2D", reason="pettingzoo[sisl] needs box2d")
    from teamrl.train import train

    config = _host_config(tmp_path, algo="mappo", env_id="pettingzoo/pettingzoo.sisl."
                          "multiwalker_v9", workers=1, total_steps=400)
    summary = train(config)
    assert summary["updates"] == 5 and np.isfinite(summary["return_mean"])
