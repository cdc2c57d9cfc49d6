"""The Google Research Football presets (teamrl/configs/football/): every algorithm's preset,
family and per-scenario, resolves, validates and builds its algorithm; key values are those of
the preset's source (HARL's tuned GRF configs, the A2PO authors' grf.yaml and 5_vs_5.sh).

Config resolution only: gfootball is neither needed nor imported (it is blocked below). The
football env is host-stepped and building it would start gfootball, so instead of
``make_trainer`` (as tests/test_smax_presets.py does for SMAX) the algorithm is built on the
TeamSpec the football env declares: 115 simple115 features per player and as the state, 19
discrete actions, the scenario's default or configured number of players."""

from __future__ import annotations

import sys

import jax
import pytest

from teamrl.algos import ALGORITHMS
from teamrl.train.presets import base_config
from teamrl.config import list_presets, preset_paths, validate_section
from teamrl.envs.football import EPISODE_METRICS, SCENARIOS, game_duration
from teamrl.envs.registry import list_env_ids
from teamrl.envs.spec import TeamSpec
from teamrl.train import check_recurrent, resolve_agent_id, total_updates

ALGOS = ("mappo", "happo", "a2po")
# HARL's five tuned GRF scenarios and the A2PO paper's 5-vs-5.
REPRESENTATIVE = ("academy_3_vs_1_with_keeper", "academy_pass_and_shoot_with_keeper",
                  "academy_run_pass_and_shoot_with_keeper", "academy_counterattack_easy",
                  "academy_counterattack_hard", "5_vs_5")
FOOTBALL_SCENARIOS = {e.split("/", 1)[1] for e in list_env_ids() if e.startswith("football/")}
# football/<scenario>/<algo> for every shipped scenario-level preset
SCENARIO_PRESETS = [p.split("/")[1:] for p in list_presets()
                    if p.startswith("football/") and p.count("/") == 2]
OBS_DIM = 115        # simple115v2 / simple115, per player; the football state is as wide
N_ACTIONS = 19       # gfootball's default action set


@pytest.fixture(autouse=True)
def no_gfootball(monkeypatch):
    """Any import of gfootball fails: resolving a preset must not need it."""
    for name in [m for m in sys.modules if m == "gfootball" or m.startswith("gfootball.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "gfootball", None)
    monkeypatch.setitem(sys.modules, "gfootball.env", None)


def _scenarios_for(algo: str) -> list[str]:
    with_preset = {s for s, a in SCENARIO_PRESETS if a == algo}
    return sorted(set(REPRESENTATIVE) | with_preset)


BUILD_CASES = [(algo, s) for algo in ALGOS for s in _scenarios_for(algo)]


def _flat(config) -> dict:
    return {k: v for section in config.to_dict().values() for k, v in section.items()}


def _football_spec(config, scenario: str) -> TeamSpec:
    """The TeamSpec teamrl's football env declares for ``config`` (without gfootball)."""
    default, most, _ = SCENARIOS[scenario]
    n = config.env.players or default
    assert 1 <= n <= most, (scenario, n)
    agent_id = resolve_agent_id(config)
    return TeamSpec(
        env_id=config.run.env_id, agent_names=tuple(f"player_{i}" for i in range(n)),
        obs_dims=(OBS_DIM,) * n, obs_dim=OBS_DIM + (n if agent_id else 0), state_dim=OBS_DIM,
        action_kind="discrete", action_dims=(N_ACTIONS,) * n,
        max_steps=game_duration(scenario), agent_id=agent_id, has_wins=True,
        episode_metrics=tuple(m for m in EPISODE_METRICS if m != "won"))


def test_every_algorithm_has_a_family_preset_and_scenario_presets_name_football_scenarios():
    presets = set(list_presets())
    for algo in ALGOS:
        assert f"football/{algo}" in presets, algo
    assert SCENARIO_PRESETS, "no scenario-level football presets found"
    assert set(FOOTBALL_SCENARIOS) == set(SCENARIOS)
    for scenario, algo in SCENARIO_PRESETS:
        assert scenario in FOOTBALL_SCENARIOS, (
            f"football/{scenario}/{algo}: {scenario} is not a football scenario")
        assert algo in ALGOS, f"football/{scenario}/{algo}"
    # HARL tuned all five academy scenarios for HAPPO.
    for scenario in REPRESENTATIVE[:5]:
        assert [scenario, "happo"] in SCENARIO_PRESETS, scenario
    # Presets apply family first, then scenario.
    assert preset_paths("football/academy_counterattack_hard", "happo") == [
        "football/happo.yaml", "football/academy_counterattack_hard/happo.yaml"]
    assert preset_paths("football/academy_corner", "happo") == ["football/happo.yaml"]


@pytest.mark.parametrize("algo,scenario", BUILD_CASES,
                         ids=[f"{a}-{s}" for a, s in BUILD_CASES])
def test_preset_resolves_validates_and_builds_the_algorithm(algo, scenario):
    """The CLI's defaults for (algo, football/<scenario>) with the presets applied, unchanged,
    pass validation (ranges, choices, minibatch divisibility) and build the algorithm."""
    config = base_config(algo, f"football/{scenario}")
    assert config.run.algo == algo and config.run.env_id == f"football/{scenario}"
    for section in config.sections().values():
        validate_section(section)
    algo_cls = ALGORITHMS[algo]
    # Football is host-stepped: a recurrent preset would be rejected at build time.
    assert not config.network.recurrent
    spec = _football_spec(config, scenario)
    algo_cls.check(spec, config.algo, config.run)
    algorithm = algo_cls(spec, config.algo, config.network, total_updates(config.run))
    algorithm.init(jax.random.PRNGKey(0))
    assert "gfootball" not in {m.split(".")[0] for m, v in sys.modules.items() if v is not None}


def test_a_recurrent_override_is_rejected_for_football():
    config = base_config("happo", "football/academy_pass_and_shoot_with_keeper")
    config.network.recurrent = True
    with pytest.raises(Exception, match="compiled env"):
        check_recurrent(config, ALGORITHMS["happo"])


# (algo, scenario, expected values): what each preset's source says for that scenario.
SOURCE_VALUES = [
    # HARL tuned_configs/football/<scenario>/happo/config.json
    ("happo", "academy_3_vs_1_with_keeper",
     dict(num_envs=50, rollout_length=200, total_steps=25_000_000, eval_episodes=100,
          hidden_sizes=[64, 64], activation="relu", layer_norm=True, input_norm=True,
          recurrent=False, lr=5e-4, critic_lr=5e-4, adam_eps=1e-5, lr_decay=True, epochs=15,
          minibatches=2, clip_eps=0.2, value_clip_eps=0.2, ent_coef=0.01, gamma=0.99,
          gae_lambda=0.95, max_grad_norm=10.0, huber_delta=10.0, value_norm=True,
          share_actor=False, factor_clip="outside", critic_state="world", players=3,
          representation="simple115v2", rewards="scoring,checkpoints")),
    ("happo", "academy_pass_and_shoot_with_keeper", dict(players=2, lr_decay=True)),
    ("happo", "academy_run_pass_and_shoot_with_keeper", dict(players=2, lr_decay=False)),
    ("happo", "academy_counterattack_easy", dict(players=4, total_steps=25_000_000)),
    ("happo", "academy_counterattack_hard",
     dict(players=4, rollout_length=1000, total_steps=50_000_000, minibatches=2)),
    # no HARL config for 5_vs_5: the family preset alone
    ("happo", "5_vs_5", dict(num_envs=50, rollout_length=200, epochs=15, players=0)),
    # MAPPO: harl/configs/algos_cfgs/mappo.yaml (share_param) + the HAPPO GRF values
    ("mappo", "academy_3_vs_1_with_keeper",
     dict(share_actor=True, agent_id="false", epochs=15, minibatches=2, num_envs=50,
          hidden_sizes=[64, 64], critic_state="world", rewards="scoring,checkpoints")),
    ("mappo", "academy_counterattack_hard", dict(rollout_length=1000, total_steps=50_000_000)),
    ("mappo", "academy_run_pass_and_shoot_with_keeper", dict(lr_decay=False)),
    # A2PO: onpolicy/config/grf.yaml academy entries, config.py defaults, 5_vs_5.sh switches
    ("a2po", "academy_3_vs_1_with_keeper",
     dict(num_envs=32, rollout_length=200, total_steps=10_000_000, eval_episodes=20,
          hidden_sizes=[64, 64, 64, 64], epochs=15, minibatches=1, clip_eps=0.2,
          clip_others=0.1, ent_coef=0.01, gamma=0.99, gae_lambda=0.95, adaptive_clip=True,
          correction=True, critic_refit=True, order="semi_greedy", share_actor=False,
          critic_state="agent", lr_decay=False, rewards="scoring,checkpoints",
          representation="simple115v2")),
    ("a2po", "academy_counterattack_hard", dict(total_steps=10_000_000, clip_others=0.1)),
    # A2PO: run_scripts/GRF/5_vs_5.sh and grf.yaml 5_vs_5_easy
    ("a2po", "5_vs_5",
     dict(num_envs=24, rollout_length=3000, total_steps=100_000_000, eval_episodes=40,
          hidden_sizes=[128, 128, 128, 128], epochs=10, gae_lambda=0.95, clip_eps=0.25,
          value_clip_eps=0.25, clip_others=0.125, ent_coef=0.001, gamma=0.995,
          rewards="scoring", share_actor=False)),
]


@pytest.mark.parametrize("algo,scenario,expected", SOURCE_VALUES,
                         ids=[f"{a}-{s}" for a, s, _ in SOURCE_VALUES])
def test_preset_values_are_the_sources(algo, scenario, expected):
    values = _flat(base_config(algo, f"football/{scenario}"))
    for key, want in expected.items():
        got = values[key]
        if isinstance(want, float):
            assert got == pytest.approx(want), (key, got, want)
        else:
            assert got == want, (key, got, want)
