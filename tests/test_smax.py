"""SMAX and partial observability: env conformance, available actions, death masking,
recurrent (GRU) policies and critics, win rates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support import rollout_batch, trainer_for
from teamrl.algos.common import prepare_batch
from teamrl.config import NetworkConfig
from teamrl.envs.registry import list_env_ids, make_env
from teamrl.core.nets import GRUNet, RecurrentInput
from teamrl.core.policies import MaskedCategorical

SMAX_IDS = [e for e in list_env_ids() if e.startswith("smax/")]


# ------------------------------------------------------------------------------ the env
def test_every_jaxmarl_map_is_registered():
    maps = {e.split("/", 1)[1] for e in SMAX_IDS}
    for required in ("3m", "2s3z", "3s5z", "5m_vs_6m", "8m", "10m_vs_11m", "25m",
                     "27m_vs_30m", "3s5z_vs_3s6z", "6h_vs_8z", "3s_vs_5z"):
        assert required in maps


@pytest.mark.parametrize("env_id", ["smax/3m"])  # every map: tests/test_envs.py
def test_smax_random_episode_conformance(env_id):
    """Random available actions for a whole batch of episodes: available actions are
    respected, dead agents can only stop, alive flags follow the game's units, a won episode
    is one where every enemy died with an ally left, and the win pays the bonus."""
    team = make_env(env_id)
    spec = team.spec
    assert spec.has_wins and spec.discrete
    env = team.env
    stop = env.num_movement_actions - 1
    num_envs = 16
    keys = jax.random.split(jax.random.PRNGKey(0), num_envs)
    state, obs = jax.vmap(team.reset)(keys)
    step = jax.jit(jax.vmap(team.step))
    saw_death = saw_end = False
    for t in range(spec.max_steps):
        key = jax.random.fold_in(jax.random.PRNGKey(1), t)
        assert np.asarray(obs.avail).any(-1).all()
        action = MaskedCategorical(jnp.zeros(obs.avail.shape), obs.avail).sample(key)
        assert np.asarray(jnp.take_along_axis(obs.avail, action[..., None], -1)).all()
        unit_alive = np.asarray(state.env_state.state.unit_alive[:, : env.num_allies])
        np.testing.assert_array_equal(np.asarray(obs.alive), unit_alive)
        dead = ~np.asarray(obs.alive)
        if dead.any():
            saw_death = True
            avail = np.asarray(obs.avail)[dead]
            assert avail[:, stop].all() and avail.sum(-1).max() == 1
        state, out = step(jax.random.split(key, num_envs), state, action)
        ended = np.asarray(out.terminated | out.truncated)
        final_alive = np.asarray(out.final_obs.alive)
        won = np.asarray(out.won)
        assert not (won & ~ended).any()
        if ended.any():
            saw_end = True
        for e in np.flatnonzero(won):
            assert final_alive[e].any()
            assert float(out.reward[e]) >= env.won_battle_bonus  # damage reward + win bonus
        obs = out.next_obs
    assert saw_death and saw_end
    assert obs.state.shape == (num_envs, spec.state_dim)


def test_smax_options_reach_the_game():
    from teamrl.envs.registry import SMAXOptions

    opts = SMAXOptions(see_enemy_actions=False, walls_cause_death=False, attack_mode="random",
                       max_steps=40)
    team = make_env("smax/3m", opts)
    assert team.spec.max_steps == 40
    assert team.env.attack_mode == "random"
    assert team.env._env.walls_cause_death is False
    assert team.env._env.see_enemy_actions is False


# ------------------------------------------------------------------- available actions
def test_masked_categorical_property_over_random_masks():
    """Random masks: samples are always available; log-prob, entropy and KL are unchanged by
    what the logits say about unavailable actions."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        avail = rng.random((64, 9)) < 0.4
        avail[np.arange(64), rng.integers(0, 9, 64)] = True
        logits = jnp.asarray(rng.normal(size=(64, 9)), jnp.float32)
        other = jnp.asarray(rng.normal(size=(64, 9)), jnp.float32)
        dist = MaskedCategorical(logits, jnp.asarray(avail))
        sample = dist.sample(jax.random.PRNGKey(trial))
        assert avail[np.arange(64), np.asarray(sample)].all()
        scrambled = jnp.where(avail, logits, 1e3 * jnp.asarray(rng.normal(size=(64, 9))))
        dist2 = MaskedCategorical(scrambled, jnp.asarray(avail))
        np.testing.assert_allclose(dist.log_prob(sample), dist2.log_prob(sample), atol=1e-5)
        np.testing.assert_allclose(dist.entropy(), dist2.entropy(), atol=1e-5)
        q = MaskedCategorical(other, jnp.asarray(avail))
        q2 = MaskedCategorical(jnp.where(avail, other, -7e2), jnp.asarray(avail))
        np.testing.assert_allclose(dist.kl(q), dist2.kl(q2), atol=1e-4)
        # The KL restricted to available actions equals the dense KL of the renormalised
        # distributions.
        p_np = np.where(avail, np.exp(np.asarray(logits)), 0.0)
        p_np /= p_np.sum(-1, keepdims=True)
        q_np = np.where(avail, np.exp(np.asarray(other)), 0.0)
        q_np /= q_np.sum(-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            dense = np.where(avail, p_np * (np.log(p_np) - np.log(q_np)), 0.0).sum(-1)
        np.testing.assert_allclose(dist.kl(q), dense, atol=1e-4)


# ----------------------------------------------------------------------- death masking
def _perturb_dead(batch, key, n_id: int):
    """The batch with the dead agents' observations (all but their ``n_id`` one-hot id
    entries), actions and old log-probs replaced."""
    dead = ~batch.obs.alive                                   # [T, E, N]
    k1, k2, k3 = jax.random.split(key, 3)
    d = batch.obs.obs.shape[-1]
    observed = dead[..., None] & (jnp.arange(d) < d - n_id)
    obs = jnp.where(observed, jax.random.normal(k1, batch.obs.obs.shape) * 5, batch.obs.obs)
    action = jnp.where(dead, jax.random.randint(k2, batch.action.shape, 0, 3), batch.action)
    log_prob = jnp.where(dead, jax.random.normal(k3, batch.log_prob.shape) - 3, batch.log_prob)
    return batch._replace(obs=batch.obs._replace(obs=obs), action=action, log_prob=log_prob)


@pytest.mark.parametrize("algo,extra", [
    ("mappo", {}), ("mappo", {"critic_state": "agent"}), ("ippo", {}), ("happo", {}),
    ("hatrpo", {}), ("a2po", {}), ("coppo", {}), ("dpo", {}),
    ("happo", {"recurrent": "true", "chunk_length": 8}),
])
def test_dead_agents_samples_do_not_change_the_update(algo, extra):
    """Whatever a dead agent observed, did and its old policy said, the update (policy loss,
    gradients, critic, order statistics) is exactly the same."""
    # Small feed-forward networks unless the case asks otherwise (the SMAX presets' GRUs and
    # wide layers would only add compile time; the masking is the same).
    small = {"recurrent": "false", "hidden_sizes": "[32]", "layer_norm": "false",
             "input_norm": "false", "gru_size": 16}
    trainer = trainer_for(algo, "smax/3m", num_envs=8, rollout_length=64, epochs=2,
                          minibatches=2, value_norm="false", **{**small, **extra})
    ts, batch = rollout_batch(trainer)
    assert (~batch.obs.alive).any(), "the rollout must contain dead agents"
    update = jax.jit(trainer.algo.update)
    key = jax.random.PRNGKey(7)
    ts_a, _ = update(ts, batch, key)
    n_id = trainer.spec.n_agents if trainer.spec.agent_id else 0
    ts_b, _ = update(ts, _perturb_dead(batch, jax.random.PRNGKey(3), n_id), key)
    for a, b in zip(jax.tree.leaves((ts_a.actor_params, ts_a.critic_params)),
                    jax.tree.leaves((ts_b.actor_params, ts_b.critic_params))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo,extra", [
    ("mappo", {"critic_state": "agent"}), ("ippo", {}), ("happo", {"critic_state": "agent"}),
    ("happo", {"recurrent": "true", "chunk_length": 8}),
])
def test_dead_agents_values_are_trained(algo, extra):
    """A per-agent critic learns the value of a dead agent's (death-masked) input: it is the
    GAE bootstrap of the step on which the agent died, and the team's reward goes on. With
    old values = predictions and targets off by 1 on the dead samples only, the critic loss
    is 0.5 · (fraction of dead samples) per agent, not 0 (masking them out left that value
    untrained and made HAPPO lose every 2s3z battle)."""
    small = {"recurrent": "false", "hidden_sizes": "[32]", "layer_norm": "false",
             "input_norm": "false", "gru_size": 16, "huber": "false", "value_clip": "false"}
    trainer = trainer_for(algo, "smax/3m", num_envs=8, rollout_length=64,
                          **{**small, **extra})
    algo_ = trainer.algo
    ts, batch = rollout_batch(trainer)
    _, data = prepare_batch(algo_, ts, batch)
    dead = ~data["obs"].alive                                          # [B, N]
    assert dead.any(), "the rollout must contain dead agents"
    pred = algo_.critic_values(ts.critic_params, data)
    mb = {**data, "value": pred, "target": pred + dead.astype(pred.dtype)}
    per_agent = 0.5 * dead.mean(0)
    expected = per_agent.sum() if algo_.critic_tx.stacked else per_agent.mean()
    loss = algo_.critic_loss(ts.critic_params, mb)
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
    assert float(expected) > 0


def test_local_critic_input_is_death_masked():
    trainer = trainer_for("ippo", "smax/3m", num_envs=4, rollout_length=64,
                          recurrent="false", hidden_sizes="[16]")
    _, batch = rollout_batch(trainer)
    n = trainer.spec.n_agents
    noisy = batch.obs._replace(obs=batch.obs.obs + 1.0)
    f = np.asarray(trainer.algo.critic.features(noisy))               # [T, E, N, D]
    dead = ~np.asarray(batch.obs.alive)
    assert dead.any()
    assert (f[dead][:, :-n] == 0).all()                               # only the id is kept
    np.testing.assert_array_equal(f[dead][:, -n:], np.asarray(noisy.obs)[dead][:, -n:])
    np.testing.assert_array_equal(f[~dead], np.asarray(noisy.obs)[~dead])


def test_agent_specific_state_is_death_masked():
    trainer = trainer_for("mappo", "smax/3m", critic_state="agent", num_envs=4,
                          rollout_length=64, recurrent="false", hidden_sizes="[16]")
    _, batch = rollout_batch(trainer)
    features = trainer.algo.critic.features(batch.obs)       # [T, E, N, F]
    n = trainer.spec.n_agents
    assert features.shape[-1] == trainer.algo.critic.in_dim
    dead = ~np.asarray(batch.obs.alive)
    assert dead.any()
    f = np.asarray(features)
    assert (f[dead][:, :-n] == 0).all()
    np.testing.assert_array_equal(f[..., -n:], np.broadcast_to(np.eye(n), f.shape[:-1] + (n,)))
    alive = ~dead
    state = np.asarray(batch.obs.state)
    np.testing.assert_allclose(f[alive][:, : state.shape[-1]],
                               np.broadcast_to(state[:, :, None], f.shape[:-1]
                                               + state.shape[-1:])[alive])


# ------------------------------------------------------------------------------- the GRU
def test_gru_hidden_state_resets_exactly_at_episode_starts():
    net = GRUNet((8,), gru_size=6, out_dim=3)
    L = 12
    x = jax.random.normal(jax.random.PRNGKey(0), (L, 5))
    start = np.zeros((L, 1), np.float32)
    start[5] = 1.0
    h0 = jnp.ones((L, 6)) * 0.3
    params = net.init(jax.random.PRNGKey(1), RecurrentInput(x[:1], h0[:1], start[:1]))
    out, h_last = net.apply(params, RecurrentInput(x, h0, jnp.asarray(start), L))
    # From the start on, the outputs are those of a fresh sequence from a zero state ...
    tail, tail_h = net.apply(params, RecurrentInput(x[5:], jnp.zeros((L - 5, 6)),
                                                    jnp.zeros((L - 5, 1)), L - 5))
    np.testing.assert_allclose(out[5:], tail, atol=1e-6)
    np.testing.assert_allclose(h_last, tail_h, atol=1e-6)
    # ... and before it they depend on the initial state (no reset there).
    head0, _ = net.apply(params, RecurrentInput(x[:5], jnp.zeros((5, 6)), jnp.zeros((5, 1)), 5))
    assert not np.allclose(out[:5], head0)


@pytest.mark.parametrize("algo,chunk", [("mappo", 32), ("hatrpo", 16), ("ippo", 4)])
def test_chunked_training_reproduces_the_rollout_forward_pass(algo, chunk):
    """The rollout computes each step's log-prob and value from the hidden state carried
    through the episode; training recomputes them from chunks that start at the stored
    hidden state. With unchanged parameters both must agree, for a chunk covering the whole
    rollout and for shorter chunks."""
    trainer = trainer_for(algo, "smax/3m", recurrent="true", chunk_length=chunk, num_envs=4,
                          rollout_length=32, hidden_sizes="[32]", gru_size=16)
    algo_ = trainer.algo
    ts, batch = rollout_batch(trainer)
    assert np.asarray(batch.memory.start)[1:].any(), "the rollout must cross an episode start"
    _, data = prepare_batch(algo_, ts, batch)
    dist = algo_.actor.distribution(ts.actor_params, data["obs"].obs, data["obs"].avail)
    from teamrl.algos.common import to_sequences

    np.testing.assert_allclose(dist.log_prob(data["action"]),
                               to_sequences(batch.log_prob, chunk), atol=2e-5)
    np.testing.assert_allclose(algo_.critic_values(ts.critic_params, data),
                               to_sequences(batch.value, chunk), atol=2e-5)


def test_recurrent_config_errors_are_one_line():
    from teamrl.config import ConfigError

    with pytest.raises(ConfigError, match="chunk_length=7 must divide rollout_length=32"):
        trainer_for("mappo", "smax/3m", recurrent="true", chunk_length=7, rollout_length=32)
    with pytest.raises(ConfigError, match="recurrent=true is not available for 'mdpo'"):
        trainer_for("mdpo", "smax/3m", recurrent="true")


def test_network_config_defaults_are_feed_forward():
    assert NetworkConfig().recurrent is False


# -------------------------------------------------------------------------------- win rate
def test_win_rate_in_metrics_and_evaluation(tmp_path, capsys):
    from teamrl.cli import main
    from teamrl.train.presets import base_config
    from teamrl.config import apply_overrides
    from teamrl.train import train

    config = base_config("mappo", "smax/3m")
    # A small feed-forward network: the win-rate bookkeeping does not depend on it, and the
    # preset's 128-wide GRU would spend a minute compiling on 2 cores.
    apply_overrides(config, {"total_steps": "4096", "num_envs": "16", "rollout_length": "64",
                             "recurrent": "false", "hidden_sizes": "[16]", "log_every": "2",
                             "eval_every": "1",
                             "eval_episodes": "4", "progress": "none",
                             "out": str(tmp_path / "run")})
    train(config)
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    for name in ("win_rate", "eval_win_rate_det", "eval_win_rate_stoch"):
        values = [float(r[name]) for r in rows]
        assert all(0.0 <= v <= 1.0 for v in values if not np.isnan(v)), name
    assert any(not np.isnan(float(r["win_rate"])) for r in rows)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "episodes=4"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("win rate") == 2, printed  # seed 0's line and the summary



@pytest.mark.parametrize("enemies_dead, allies_dead, expect", [
    (True, False, "terminated"),    # won on the time-limit step
    (False, True, "terminated"),    # lost on the time-limit step
    (False, False, "truncated"),    # still fighting when time ran out
])
def test_a_battle_decided_on_the_time_limit_step_terminates(enemies_dead, allies_dead, expect):
    """Termination wins over truncation: a battle decided on the last allowed step is not
    bootstrapped from its terminal state."""
    team = make_env("smax/3m")
    env = team.env
    state, _ = team.reset(jax.random.PRNGKey(0))
    alive = np.ones(env.num_allies + env.num_enemies, bool)
    if enemies_dead:
        alive[env.num_allies:] = False
    if allies_dead:
        alive[: env.num_allies] = False
    last = team.spec.max_steps - 1
    health = jnp.where(jnp.asarray(alive), state.env_state.state.unit_health, 0.0)
    game = state.env_state.state.replace(unit_alive=jnp.asarray(alive), unit_health=health,
                                         step=jnp.asarray(last, state.env_state.state.step.dtype))
    state = state._replace(env_state=state.env_state.replace(state=game),
                           episode_step=jnp.int32(last))
    _, out = team.step(jax.random.PRNGKey(1), state, jnp.full((env.num_allies,), 4, jnp.int32))
    assert bool(out.terminated) == (expect == "terminated")
    assert bool(out.truncated) == (expect == "truncated")
    assert bool(out.won) == (enemies_dead and not allies_dead)
