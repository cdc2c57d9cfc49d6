"""The host runner's NumPy action call (teamrl.train.host_policy) against the jitted one it
replaces: the same actions and log-probabilities from the same keys, for every network option
it mirrors (shared and stacked actors, activations, LayerNorm, input norm, observation
normalisation, discrete and continuous actions), and training through it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from teamrl.train.presets import base_config
from teamrl.config import apply_overrides
from teamrl.envs.spec import TeamObs
from teamrl.train.host_policy import numpy_policy
from teamrl.train import build

CASES = {
    # HARL's MaMuJoCo preset: stacked actors, ReLU, LayerNorm after every layer, input norm
    "gaussian-stacked-relu-layernorm": ("happo", "mamujoco/HalfCheetah-2x3", {}),
    "gaussian-shared-tanh-obsnorm": ("mappo", "mamujoco/Humanoid-9|8",
                                     {"share_actor": "true", "activation": "tanh",
                                      "layer_norm": "false", "input_norm": "false",
                                      "obs_norm": "true"}),
    "categorical-shared-tanh": ("mappo", "mpe/simple_spread", {}),
    "categorical-stacked-gelu-layernorm": ("happo", "mpe/simple_spread",
                                           {"activation": "gelu", "layer_norm": "true"}),
    "categorical-stacked-silu-obsnorm": ("ippo", "mpe/simple_speaker_listener",
                                         {"activation": "silu", "share_actor": "false",
                                          "obs_norm": "true"}),
}


def _perturbed(tree, key, scale):
    """Every leaf plus N(0, scale²) noise: initial output layers (gain 0.01) would make every
    policy nearly uniform and hide mistakes."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype)
                              for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("case", list(CASES))
def test_numpy_policy_matches_the_jitted_action_call(case):
    algo_name, env_id, overrides = CASES[case]
    config = base_config(algo_name, env_id)
    apply_overrides(config, overrides)
    team_env, algo = build(config)
    spec = team_env.spec
    policy = numpy_policy(algo)
    assert policy is not None
    S, E, T = 2, 5, 3
    key = jax.random.PRNGKey(0)
    ts = jax.vmap(algo.init)(jax.random.split(key, S))
    if config.network.obs_norm:  # statistics far from the initial (0, 1)
        stats = ts.obs
        ts = ts.replace(obs=stats.replace(
            mean=stats.mean + jax.random.normal(jax.random.PRNGKey(1), stats.mean.shape),
            var=stats.var * jnp.exp(jax.random.normal(jax.random.PRNGKey(2),
                                                      stats.var.shape))))
        ts = ts.replace(inner=ts.inner.replace(actor_params=_perturbed(
            ts.inner.actor_params, jax.random.PRNGKey(3), 0.3)))
    else:
        ts = ts.replace(actor_params=_perturbed(ts.actor_params, jax.random.PRNGKey(3), 0.3))
    keys = jax.random.split(jax.random.PRNGKey(4), S)

    def act_all(ts, obs, keys, t):  # exactly HostCollector's jitted call
        return jax.vmap(lambda ts, o, k: algo.act(ts, o, jax.random.fold_in(k, t))[:2])(
            ts, obs, keys)

    jitted = jax.jit(act_all)
    rng = np.random.default_rng(0)
    N, D, A = spec.n_agents, spec.obs_dim, spec.action_dim
    params = policy.host_params(ts)
    noise = policy.noise(keys, T, E)
    assert noise.shape == (T, S, E, N, A)
    for t in range(T):
        obs = (2.0 * rng.standard_normal((S, E, N, D))).astype(np.float32)
        if spec.discrete:  # a random non-empty set of available actions per agent
            avail = rng.random((S, E, N, A)) < 0.6
            avail[..., rng.integers(A)] = True
        else:
            avail = np.broadcast_to(np.arange(A) < np.asarray(spec.action_dims)[:, None],
                                    (S, E, N, A)).copy()
        team_obs = TeamObs(obs, np.zeros((S, E, spec.state_dim), np.float32), avail,
                           np.ones((S, E, N), bool))
        want_action, want_log_prob = jax.device_get(jitted(ts, team_obs, keys, np.int32(t)))
        action, log_prob = policy.act(params, obs, avail, noise[t])
        assert action.shape == want_action.shape and action.dtype == want_action.dtype
        if spec.discrete:
            np.testing.assert_array_equal(action, want_action)
            assert avail[np.arange(S)[:, None, None], np.arange(E)[None, :, None],
                         np.arange(N), action].all()
        else:
            np.testing.assert_allclose(action, want_action, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(log_prob, want_log_prob, rtol=1e-4, atol=1e-4)
    # not all actions alike: the comparison saw a policy that depends on its inputs
    assert np.unique(np.asarray(want_action).round(3)).size > 3


def test_q_learners_keep_the_jitted_call():
    config = base_config("iql", "mpe/simple_spread")
    _, algo = build(config)
    assert numpy_policy(algo) is None


def test_training_through_numpy_and_jax_action_calls_agrees(tmp_path):
    """HAPPO on a host env for two updates with host_act=numpy and host_act=jax: the rollouts
    take the same actions (the draws are shared), so the parameters agree to float rounding."""
    from teamrl.train import train

    params = []
    for mode in ("numpy", "jax"):
        config = base_config("happo", "mamujoco/HalfCheetah-2x3")
        apply_overrides(config, {"num_envs": "4", "rollout_length": "20", "total_steps": "40",
                                 "eval_every": "0", "progress": "none", "log_every": "1",
                                 "hidden_sizes": "[16,16]", "workers": "1",
                                 "host_act": mode, "out": str(tmp_path / mode)})
        summary = train(config)
        params.append(jax.tree.leaves(summary["runner"].train_state.actor_params))
    for a, b in zip(*params):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-4)
