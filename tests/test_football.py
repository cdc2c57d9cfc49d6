"""Google Research Football: the install command, the episode tracker (goals, passes,
assists), the host runner's episode metrics, and, with gfootball installed, the adapter
(conformance for 3 and 4 players, seeding, truncation) and a training run with football
metrics. CI builds gfootball first (`.ci/run`) and sets TEAMRL_REQUIRE_FOOTBALL=1, so the
gfootball tests fail there instead of skipping."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os

import numpy as np
import pytest

from teamrl.cli import install
from teamrl.cli import main
from teamrl.envs.football import EPISODE_METRICS, EpisodeTracker
from teamrl.envs.registry import default_env_options, make_env

HAVE_FOOTBALL = importlib.util.find_spec("gfootball") is not None
if not HAVE_FOOTBALL and os.environ.get("TEAMRL_REQUIRE_FOOTBALL") == "1":
    raise RuntimeError("TEAMRL_REQUIRE_FOOTBALL=1 but gfootball is not installed; run "
                       "`teamrl install football`")
needs_football = pytest.mark.skipif(not HAVE_FOOTBALL, reason="gfootball is not installed "
                                    "(`teamrl install football`)")
SCENARIO = "football/academy_3_vs_1_with_keeper"


# ------------------------------------------------------------------------------- install
def test_constraints_pin_everything_but_the_recipe():
    pins = dict(line.split("==") for line in install.constraints_text().split())
    assert pins["numpy"] == np.__version__
    assert "jax" in pins and "gymnasium" in pins
    for name in ("pip", "setuptools", "wheel", "gym", "gfootball", "teamrl"):
        assert name not in pins


def test_missing_debian_packages_are_named_with_the_command(monkeypatch):
    installed = {"libsdl2-dev"}
    missing = install.missing_debian_packages(query=lambda name: name in installed)
    assert "libsdl2-dev" not in missing and "libboost-python-dev" in missing
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(install.InstallError) as info:
        install.install_debian_packages(missing, log=lambda m: None)
    message = str(info.value)
    assert "libboost-python-dev" in message and "sudo apt-get install -y" in message


def test_unknown_install_target_is_refused(capsys):
    assert main(["install", "hockey"]) == 2
    assert "valid: football" in capsys.readouterr().err


@needs_football
def test_install_is_idempotent(capsys):
    assert main(["install", "football"]) == 0
    assert "nothing to do" in capsys.readouterr().out


# ------------------------------------------------------------------------- the tracker
def _raw(team, player, active=1, score=(0, 0)):
    return {"ball_owned_team": team, "ball_owned_player": player, "active": active,
            "score": list(score)}


def test_tracker_counts_passes_assists_and_lost_balls():
    tracker = EpisodeTracker(pass_action_ids=[9, 10, 11])
    tracker.reset(_raw(0, 1))
    # Player 1 (controlled, owns the ball) passes; the ball flies; player 2 receives.
    tracker.before_step([_raw(0, 1, active=1), _raw(0, 1, active=2)], [11, 0])
    tracker.before_step([_raw(0, 1, active=1), _raw(0, 1, active=2)], [11, 0])  # same pass
    tracker.after_step(_raw(-1, -1))
    tracker.after_step(_raw(0, 2))
    # Player 2 scores: the pass was an assist.
    tracker.after_step(_raw(-1, -1, score=(1, 0)))
    m = tracker.metrics()
    assert (m["passes"], m["pass_attempts"], m["assists"], m["goals_for"]) == (1, 1, 1, 1)
    assert m["pass_rate"] == 1.0 and m["won"] == 1.0 and m["score_rate"] == 1.0
    # Next: player 2 passes, the opponents intercept (a failed pass and a lost ball), then
    # they score.
    tracker.before_step([_raw(0, 2, active=2)], [9])
    tracker.after_step(_raw(1, 0))
    tracker.after_step(_raw(-1, -1, score=(1, 1)))
    m = tracker.metrics()
    assert (m["passes"], m["pass_attempts"], m["possession_lost"]) == (1, 2, 1)
    assert m["pass_rate"] == 0.5 and m["goals_against"] == 1 and m["won"] == 0.0
    # A pass action by a player without the ball is no attempt; no attempt: rate undefined.
    tracker.reset(_raw(0, 1))
    tracker.before_step([_raw(0, 1, active=2)], [11])
    assert tracker.metrics()["pass_attempts"] == 0 and math.isnan(tracker.metrics()["pass_rate"])


def test_goal_without_a_pass_is_no_assist():
    tracker = EpisodeTracker(pass_action_ids=[11])
    tracker.reset(_raw(0, 1))
    tracker.after_step(_raw(0, 1))
    tracker.after_step(_raw(-1, -1, score=(1, 0)))
    m = tracker.metrics()
    assert m["goals_for"] == 1 and m["assists"] == 0 and m["passes"] == 0


# ---------------------------------------------------- episode metrics through the runner
def test_host_episode_metrics_reach_metrics_csv_and_eval(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "ippo", "pettingzoo/metric_fixtures", f"out={out}", "num_envs=2",
                 "rollout_length=6", "total_steps=24", "log_every=1", "eval_every=1",
                 "eval_episodes=2", "hidden_sizes=[8]", "workers=0"]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2
    for row in rows:  # per update: 2 episodes per env, one even and one odd
        assert float(row["win_rate"]) == 0.5
        assert float(row["hits"]) == 3.0
        assert float(row["rate"]) == 0.5  # the even episodes' NaN is not averaged in
        # Evaluation: the first episode of fresh envs (even: lost, rate undefined).
        assert float(row["eval_win_rate_det"]) == 0.0 and float(row["eval_hits_stoch"]) == 3.0
        assert row["eval_rate_det"] in ("", "nan")
    assert main(["eval", str(out), "episodes=2"]) == 0
    result = json.loads(next(out.glob("eval_*.json")).read_text())
    assert result["hits"] == 3.0 and result["rate"] is None and result["win_rate"] == 0.0


# ------------------------------------------------------------------- gfootball itself
def _team(players, **options):
    opts = default_env_options(SCENARIO)
    opts.workers, opts.players = 0, players
    for k, v in options.items():
        setattr(opts, k, v)
    return make_env(SCENARIO, opts, agent_id=True)


@needs_football
@pytest.mark.parametrize("players", [3, 4])
def test_football_conformance(players):
    from teamrl.envs.football import make_parallel_env

    team = _team(players)
    spec = team.spec
    assert spec.n_agents == players and spec.action_kind == "discrete"
    assert spec.action_dims == (19,) * players
    assert spec.obs_dims == (115,) * players and spec.obs_dim == 115 + players
    assert spec.state_dim == 115 and spec.has_wins and spec.max_steps == 401
    assert spec.episode_metrics == tuple(m for m in EPISODE_METRICS if m != "won")
    reference = make_parallel_env("academy_3_vs_1_with_keeper", players)
    rng = np.random.default_rng(0)
    with team.vector(1) as vec:
        vec.reset([7])
        raw, _ = reference.reset(seed=7)
        for t in range(30):
            obs = vec.observation()
            expected = np.stack([raw[a] for a in reference.possible_agents])
            np.testing.assert_allclose(obs.obs[0, :, :115], expected, atol=1e-6)
            np.testing.assert_array_equal(obs.obs[0, :, 115:], np.eye(players))
            # The state: the shared features, every controlled player marked active.
            np.testing.assert_allclose(obs.state[0, :97], expected[0, :97], atol=1e-6)
            assert obs.state[0, 97:108].sum() == expected[:, 97:108].max(axis=0).sum()
            assert obs.avail.all() and obs.alive.all()
            action = rng.integers(0, 19, size=(1, players))
            vec.step(action)
            raw, reward, term, trunc, _ = reference.step(
                {a: int(action[0, i]) for i, a in enumerate(reference.possible_agents)})
            assert vec.buffers.reward[0] == pytest.approx(np.mean(list(reward.values())))
            if not reference.agents:
                assert vec.buffers.terminated[0] or vec.buffers.truncated[0]
                break
            raw = raw if reference.agents else reference.reset()[0]
    reference.close()


@needs_football
def test_football_timeout_is_truncation():
    """Idle players: the defender wins the ball (a termination) or the 3-vs-1 attack runs
    into the scenario's clock (game_duration 400 frames: 401 steps), which is a truncation
    (bootstrapped); seeded episodes of both kinds are looked for."""
    kinds = set()
    with _team(3).vector(1) as vec:
        for seed in range(8):
            vec.reset([seed])
            for t in range(1, 402):
                vec.step(np.zeros((1, 3), np.int32))
                b = vec.buffers
                if b.terminated[0] or b.truncated[0]:
                    break
            assert b.terminated[0] != b.truncated[0]
            assert b.truncated[0] == (t == 401)
            assert b.episode_metrics[0, EPISODE_METRICS.index("goals_for")] == 0
            kinds.add(bool(b.truncated[0]))
            if kinds == {True, False}:
                break
    assert kinds == {True, False}


@needs_football
def test_football_training_writes_football_metrics(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "mappo", SCENARIO, f"out={out}", "num_envs=2", "rollout_length=50",
                 "total_steps=400", "log_every=2", "eval_every=1", "eval_episodes=2",
                 "hidden_sizes=[32]", "rewards=scoring,checkpoints"]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows and int(rows[-1]["env_steps"]) == 400
    for column in ("win_rate", "score_rate", "goals_for", "goals_against", "passes",
                   "pass_rate", "assists", "eval_score_rate_det", "eval_goals_for_stoch",
                   "eval_passes_det", "eval_win_rate_det"):
        assert column in rows[-1]
    assert 0.0 <= float(rows[-1]["eval_score_rate_det"]) <= 1.0
    assert (out / "curve.png").exists() and list((out / "checkpoints").iterdir())
