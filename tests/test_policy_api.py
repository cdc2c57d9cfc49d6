"""The policy API (teamrl.load_policy, teamrl export, teamrl.load_exported) on tiny trained
runs: the loaded policy acts exactly as the trainer's own ``policy_action`` /
``recurrent_policy_action`` on the same observations and keys, is a pure function of its
parameters under jit and vmap, its NumPy backend agrees with JAX, and an exported artefact
reproduces the actions in a fresh process without the run folder or teamrl's env code."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import teamrl
from teamrl.envs.spec import TeamObs
from teamrl.exported import PolicyInputError
from teamrl.train.policy import PolicyError

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {"total_steps": 256, "num_envs": 4, "rollout_length": 32, "log_every": 1,
        "eval_every": 0, "progress": "none"}
RUNS = {  # name: (algo, env, settings); a few updates each, compiled without optimisations
    "mappo": ("mappo", "didactic/climbing", {"seeds": 2}),  # shared actor, agent ids
    "ippo-obsnorm": ("ippo", "didactic/product", {"obs_norm": True}),  # Gaussian, stacked
    "gru": ("mappo", "didactic/climbing", {"recurrent": True, "chunk_length": 8}),
    "iql": ("iql", "didactic/climbing", {"learning_starts": 0, "batch_size": 32}),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from teamrl.config import apply_overrides
    from teamrl.train import base_config, train

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    folder = tmp_path_factory.mktemp("runs")
    try:
        for name, (algo, env_id, settings) in RUNS.items():
            config = base_config(algo, env_id)
            apply_overrides(config, {**TINY, **settings, "out": str(folder / name)})
            train(config, log=lambda *a: None)
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
    return {name: folder / name for name in RUNS}


def reference(run_dir, seed_index=0):
    """The trainer's algorithm and one seed's whole train state, as `teamrl eval` loads it."""
    from teamrl.scale.distributed import ONE_DEVICE
    from teamrl.train import config_from_run_dir, make_trainer
    from teamrl.train.evaluate import load_for_eval

    trainer = make_trainer(config_from_run_dir(run_dir, dict(ONE_DEVICE)))
    _, runner, _ = load_for_eval(run_dir, "best", trainer)
    return trainer.algo, jax.tree.map(lambda x: x[seed_index], runner.train_state)


def team_obs(spec, batch, seed=0):
    """Random observations [B, N, D] and availability masks (some actions taken away)."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(batch, spec.n_agents, spec.obs_dim)).astype(np.float32)
    avail = np.broadcast_to(spec.action_mask, (batch,) + spec.action_mask.shape).copy()
    if spec.discrete:
        avail &= rng.random(avail.shape) < 0.7
        avail[..., 0] = True  # at least one action each
    return TeamObs(obs, np.zeros((batch, spec.state_dim), np.float32), avail,
                   np.ones((batch, spec.n_agents), bool))


@pytest.mark.parametrize("name", ["mappo", "ippo-obsnorm", "iql"])
def test_actions_are_the_trainers_own(runs, name):
    policy = teamrl.load_policy(runs[name])
    algo, ts = reference(runs[name])
    obs = team_obs(policy.spec, 6)
    for deterministic in (True, False):
        for k in range(3):
            key = jax.random.PRNGKey(k)
            want = algo.policy_action(ts, obs, key, deterministic)
            got = policy.act(obs, deterministic=deterministic, key=key)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
            same = policy.act(obs.obs, deterministic=deterministic, key=key, avail=obs.avail)
            np.testing.assert_array_equal(np.asarray(same), np.asarray(got))
    if policy.spec.discrete:  # masked actions are never taken
        taken = np.asarray(policy.act(obs, deterministic=False, key=jax.random.PRNGKey(9)))
        assert np.take_along_axis(obs.avail, taken[..., None], -1).all()
    # Only what acting reads is carried: no critic, optimiser state or replay buffer.
    sizes = lambda tree: sum(np.size(x) for x in jax.tree.leaves(tree))  # noqa: E731
    assert sizes(policy.params) < sizes(ts) / 2


def test_recurrent_state_is_carried(runs):
    policy = teamrl.load_policy(runs["gru"])
    algo, ts = reference(runs["gru"])
    spec, B = policy.spec, 5
    memory = algo.init_memory(B)
    state = policy.init_state(B)
    assert state.hidden.shape == (B, spec.n_agents, policy.meta["hidden_size"])
    for t in range(4):
        obs, key = team_obs(spec, B, seed=t), jax.random.PRNGKey(t)
        want, memory = algo.recurrent_policy_action(ts, obs, key, t % 2 == 0, memory)
        memory = memory._replace(start=jnp.zeros(B, bool))  # no episode ends
        got, state = policy.act(obs, state, deterministic=t % 2 == 0, key=key)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        np.testing.assert_allclose(state.hidden, memory.actor, rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(state.hidden)).max() > 0
    # A reset where an episode ended acts as a fresh state there; the other envs carry on.
    obs = team_obs(spec, B, seed=9)
    done = np.array([True, False, False, False, True])
    _, after = policy.act(obs, state.reset(done))
    _, fresh = policy.act(obs, policy.init_state(B))
    _, carried = policy.act(obs, state)
    np.testing.assert_allclose(np.asarray(after.hidden)[done], np.asarray(fresh.hidden)[done])
    np.testing.assert_allclose(np.asarray(after.hidden)[~done],
                               np.asarray(carried.hidden)[~done])
    with pytest.raises(PolicyInputError, match="init_state"):
        policy.act(obs)


def test_apply_is_a_pure_function_of_params(runs):
    """jit of ``apply`` with the parameters as an argument, vmap over observations and over
    the parameters of two seeds."""
    run = runs["mappo"]
    seeds = [teamrl.load_policy(run, seed=s) for s in (0, 1)]
    policy = seeds[0]
    obs = team_obs(policy.spec, 4)
    apply = jax.jit(policy.apply, static_argnames="deterministic")
    np.testing.assert_array_equal(apply(policy.params, obs.obs, avail=obs.avail),
                                  policy.act(obs))
    one = jax.vmap(lambda o, a: policy.apply(policy.params, o, avail=a))(obs.obs, obs.avail)
    np.testing.assert_array_equal(one, policy.act(obs))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *(p.params for p in seeds))
    both = jax.jit(jax.vmap(lambda p: policy.apply(p, obs.obs, avail=obs.avail)))(stacked)
    for s, p in enumerate(seeds):
        np.testing.assert_array_equal(both[s], p.act(obs))
    # The seed's own parameters: seed 1's policy is the trainer's seed 1.
    algo, ts = reference(run, seed_index=1)
    np.testing.assert_array_equal(seeds[1].act(obs),
                                  algo.policy_action(ts, obs, jax.random.PRNGKey(0), True))


@pytest.mark.parametrize("name", ["mappo", "ippo-obsnorm"])
def test_numpy_backend_agrees_with_jax(runs, name):
    jax_policy = teamrl.load_policy(runs[name])
    np_policy = teamrl.load_policy(runs[name], backend="numpy")
    obs = team_obs(jax_policy.spec, 8)
    got = np_policy.act(obs)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, np.asarray(jax_policy.act(obs)), rtol=1e-5, atol=1e-5)
    sampled = np_policy.act(obs, deterministic=False, key=np.random.default_rng(0))
    assert sampled.shape == got.shape and sampled.dtype == got.dtype
    if jax_policy.spec.discrete:
        assert np.take_along_axis(obs.avail, sampled[..., None], -1).all()
    else:
        assert not np.allclose(sampled, got)


def test_npz_forward_pass_mirrors_host_policy_for_every_network_option(tmp_path):
    """The standalone .npz loader against the NumPy backend and JAX on untrained (perturbed)
    actors with the options training runs above do not use: stacked GELU layers with
    LayerNorm and input norm, a shared SiLU actor."""
    from teamrl.config import apply_overrides
    from teamrl.exported import NumpyExportedPolicy
    from teamrl.train import base_config, build
    from teamrl.train.policy import Policy, policy_meta

    for overrides in ({"activation": "gelu", "layer_norm": True, "input_norm": True,
                       "share_actor": False},
                      {"activation": "silu", "share_actor": True, "action": "continuous"}):
        config = base_config("happo", "mpe/simple_spread")
        apply_overrides(config, overrides)
        team_env, algo = build(config)
        ts = algo.init(jax.random.PRNGKey(0))
        leaves, treedef = jax.tree.flatten(ts.actor_params)
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        ts = ts.replace(actor_params=treedef.unflatten(  # away from the near-uniform init
            [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]))
        meta = policy_meta(config, team_env.spec, algo, "none", 0, 0)
        jax_policy = Policy(algo, team_env.spec, ts, meta)
        np_policy = Policy(algo, team_env.spec, ts, meta, backend="numpy")
        np.savez(tmp_path / "p.npz", **np_policy.numpy_weights())
        exported = NumpyExportedPolicy.load(tmp_path / "p.npz")
        obs = team_obs(team_env.spec, 7)
        want = np.asarray(jax_policy.act(obs))
        np.testing.assert_allclose(np_policy.act(obs), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(exported.act(obs), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, network", [("gru", "GRU actor"), ("iql", "Q-networks")])
def test_numpy_backend_names_the_networks_it_does_not_cover(runs, name, network):
    with pytest.raises(PolicyError, match=network) as err:
        teamrl.load_policy(runs[name], backend="numpy")
    assert "\n" not in str(err.value) and "backend='jax'" in str(err.value)


def test_observation_layout_and_bad_input(runs):
    policy = teamrl.load_policy(runs["mappo"])  # shared actor: one-hot agent ids last
    spec = policy.spec
    assert spec.agent_id
    obs = team_obs(spec, 3)
    without_ids = obs.obs[..., : spec.obs_dim - spec.n_agents]
    ids = np.broadcast_to(np.eye(spec.n_agents, dtype=np.float32), (3, spec.n_agents,
                                                                     spec.n_agents))
    np.testing.assert_array_equal(policy.act(without_ids),
                                  policy.act(np.concatenate([without_ids, ids], -1)))
    assert np.asarray(policy.act(obs.obs[0])).shape == (spec.n_agents,)  # one env, unbatched
    with pytest.raises(PolicyInputError, match=rf"expected \[\.\.\., {spec.n_agents}, D\]"):
        policy.act(np.zeros((3, spec.n_agents, spec.obs_dim + 1), np.float32))
    with pytest.raises(PolicyInputError, match="avail has shape"):
        policy.act(obs.obs, avail=np.ones((3, spec.n_agents, 1), bool))
    with pytest.raises(PolicyInputError, match="needs key"):
        policy.act(obs, deterministic=False)
    with pytest.raises(PolicyInputError, match="takes no state"):
        policy.act(obs, teamrl.PolicyState(np.zeros((3, spec.n_agents, 8)), np.ones(3, bool)))


def test_load_policy_errors_name_the_bad_value(runs, tmp_path):
    cases = [({"run_dir": tmp_path / "missing"}, "does not exist"),
             ({"run_dir": tmp_path}, "is not a run folder"),
             ({"run_dir": runs["mappo"], "checkpoint": "worst"}, "valid: best, latest"),
             ({"run_dir": runs["mappo"], "seed": 7}, "valid: 0, 1"),
             ({"run_dir": runs["mappo"], "backend": "torch"}, "valid: jax, numpy")]
    for kwargs, message in cases:
        with pytest.raises(PolicyError, match=message) as err:
            teamrl.load_policy(**kwargs)
        assert "\n" not in str(err.value)


LOADER = """
import json, sys
import numpy as np
import teamrl
obs, avail = np.load(sys.argv[2]), np.load(sys.argv[3])
policy = teamrl.load_exported(sys.argv[1])
out = {}
if policy.recurrent:
    state, out["det"] = policy.init_state(obs.shape[0]), []
    for t in range(3):
        action, state = policy.act(obs, state, avail=avail)
        out["det"].append(np.asarray(action).tolist())
else:
    out["det"] = np.asarray(policy.act(obs, avail=avail)).tolist()
if sys.argv[1].endswith(".jaxexport") and not policy.recurrent:
    import jax
    out["stoch"] = np.asarray(policy.act(obs, avail=avail, deterministic=False,
                                         key=jax.random.PRNGKey(int(sys.argv[4])))).tolist()
out["modules"] = sorted(m for m in ("teamrl.envs", "teamrl.algos", "teamrl.train", "flax",
                                    "jaxmarl") if m in sys.modules)
print(json.dumps(out))
"""


@pytest.mark.parametrize("name, suffix", [("mappo", ".jaxexport"), ("ippo-obsnorm", ".npz"),
                                          ("gru", ".jaxexport"), ("iql", ".jaxexport")])
def test_export_reproduces_the_actions_without_the_run_folder(runs, tmp_path, name, suffix):
    from teamrl.cli import main

    policy = teamrl.load_policy(runs[name])
    obs = team_obs(policy.spec, 5)
    out = tmp_path / f"policy{suffix}"
    assert main(["export", str(runs[name]), f"out={out}"]) == 0
    np.save(tmp_path / "obs.npy", obs.obs)
    np.save(tmp_path / "avail.npy", obs.avail)
    moved = runs[name].rename(runs[name].with_name(name + "-away"))  # not needed any more
    try:
        done = subprocess.run([sys.executable, "-c", LOADER, str(out), str(tmp_path / "obs.npy"),
                               str(tmp_path / "avail.npy"), "4"], capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)
    finally:
        moved.rename(runs[name])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["modules"] == []  # neither teamrl's env code nor flax was imported
    if policy.recurrent:
        state = policy.init_state(5)
        for t in range(3):
            action, state = policy.act(obs, state)
            np.testing.assert_array_equal(result["det"][t], action)
        return
    np.testing.assert_allclose(result["det"], policy.act(obs), rtol=1e-5, atol=1e-6)
    if suffix == ".jaxexport":
        want = policy.act(obs, deterministic=False, key=jax.random.PRNGKey(4))
        np.testing.assert_allclose(result["stoch"], want, rtol=1e-5, atol=1e-6)


def test_export_bad_input_one_line_and_nothing_overwritten(runs, tmp_path, capsys):
    from teamrl.cli import main

    run = str(runs["mappo"])
    existing = tmp_path / "policy.npz"
    existing.write_bytes(b"keep me")
    cases = [([str(tmp_path / "missing"), f"out={tmp_path / 'p.npz'}"], "does not exist"),
             ([run, f"out={tmp_path / 'p.npz'}", "checkpoint=worst"], "valid choices: best"),
             ([run, f"out={tmp_path / 'p.onnx'}"], "valid: .jaxexport, .npz"),
             ([run, f"out={existing}"], "overwrite=true"),
             ([run], "export needs out="),
             ([run, f"out={tmp_path / 'p.npz'}", "seeds=1"], "did you mean 'seed'"),
             ([str(runs["iql"]), f"out={tmp_path / 'q.npz'}"], "Q-networks")]
    for args, message in cases:
        assert main(["export", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.npz"]  # no leftovers
    assert main(["export", run, f"out={existing}", "overwrite=true"]) == 0
    spec = teamrl.load_policy(run).spec
    assert teamrl.load_exported(existing).act(team_obs(spec, 2)).shape == (2, spec.n_agents)
    with pytest.raises(ValueError, match="valid: .jaxexport, .npz"):
        teamrl.load_exported(tmp_path / "policy.pt")
