"""The SMAX presets (teamrl/configs/smax/): every algorithm's preset resolves, validates and
builds a trainer on a representative set of maps and on every map with a map-level preset;
key values are those of the preset's source (HARL's tuned SMAC configs, the MAPPO authors'
scripts, the A2PO, CoPPO and DPO authors' code). (The presets train in tests/test_smax.py:
the win-rate run uses MAPPO's.)"""

from __future__ import annotations

import pytest

from teamrl.train.presets import base_config
from teamrl.config import list_presets, preset_paths
from teamrl.envs.registry import list_env_ids
from teamrl.train import make_trainer

ALGOS = ("mappo", "ippo", "happo", "hatrpo", "a2po", "coppo", "dpo")
REPRESENTATIVE = ("3m", "2s3z", "3s5z", "5m_vs_6m")
SMAX_MAPS = {e.split("/", 1)[1] for e in list_env_ids() if e.startswith("smax/")}
# smax/<map>/<algo> for every shipped map-level preset
MAP_PRESETS = [p.split("/")[1:] for p in list_presets()
               if p.startswith("smax/") and p.count("/") == 2]


def _maps_for(algo: str) -> list[str]:
    with_preset = {m for m, a in MAP_PRESETS if a == algo}
    return sorted(set(REPRESENTATIVE) | with_preset)


BUILD_CASES = [(algo, m) for algo in ALGOS for m in _maps_for(algo)]


def _flat(config) -> dict:
    return {k: v for section in config.to_dict().values() for k, v in section.items()}


def test_every_algorithm_has_a_family_preset_and_map_presets_name_smax_maps():
    presets = set(list_presets())
    for algo in ALGOS:
        assert f"smax/{algo}" in presets, algo
    assert MAP_PRESETS, "no map-level SMAX presets found"
    for m, algo in MAP_PRESETS:
        assert m in SMAX_MAPS, f"smax/{m}/{algo}: {m} is not a map SMAX ships"
        assert algo in ALGOS, f"smax/{m}/{algo}"
    # Presets apply family first, then map.
    assert preset_paths("smax/5m_vs_6m", "happo") == ["smax/happo.yaml",
                                                      "smax/5m_vs_6m/happo.yaml"]
    assert preset_paths("smax/3m", "happo") == ["smax/happo.yaml"]


@pytest.mark.parametrize("algo,map_name", BUILD_CASES,
                         ids=[f"{a}-{m}" for a, m in BUILD_CASES])
def test_preset_validates_and_builds_a_trainer(algo, map_name):
    """The CLI's defaults for (algo, smax/<map>) with the presets applied, unchanged, pass
    validation (ranges, recurrent chunking, minibatch divisibility) and build a trainer."""
    config = base_config(algo, f"smax/{map_name}")
    trainer = make_trainer(config)
    assert trainer.spec.n_agents >= 2
    if config.network.recurrent:
        assert trainer.algo_recurrent
        assert config.run.rollout_length % config.network.chunk_length == 0


# (algo, map, expected values): what each preset's source says for that map.
SOURCE_VALUES = [
    # HARL tuned_configs/smac/5m_vs_6m/happo/config.json
    ("happo", "5m_vs_6m", dict(clip_eps=0.05, value_clip_eps=0.05, gamma=0.95,
                               critic_state="agent", recurrent=True, epochs=5, minibatches=1,
                               num_envs=20, rollout_length=160, hidden_sizes=[64, 64, 64],
                               gru_size=64, chunk_length=10, total_steps=20_000_000,
                               share_actor=False, eval_episodes=40)),
    # HARL 3s5z (state_type EP), 6h_vs_8z (10 epochs, 2 mini-batches, MLP, 40M steps)
    ("happo", "3s5z", dict(clip_eps=0.2, gamma=0.99, critic_state="world", recurrent=True)),
    ("happo", "6h_vs_8z", dict(epochs=10, minibatches=2, recurrent=False,
                               total_steps=40_000_000, clip_eps=0.05)),
    ("happo", "3s5z_vs_3s6z", dict(clip_eps=0.1, minibatches=2, gamma=0.95)),
    # no HARL tuned config for 3m: HARL's generic defaults plus what all tuned maps share
    ("happo", "3m", dict(clip_eps=0.2, gamma=0.99, critic_state="agent", recurrent=False,
                         total_steps=10_000_000, lr=5e-4, ent_coef=0.01, layer_norm=True,
                         input_norm=True, activation="relu")),
    # HARL tuned_configs/smac/<map>/hatrpo/config.json
    ("hatrpo", "6h_vs_8z", dict(kl_threshold=0.001, backtrack_coef=0.8, critic_lr=1e-3,
                                total_steps=40_000_000, recurrent=False)),
    ("hatrpo", "3s5z", dict(kl_threshold=0.01, backtrack_coef=0.5, gamma=0.95,
                            critic_state="world")),
    ("hatrpo", "10m_vs_11m", dict(kl_threshold=0.005, gamma=0.95, critic_state="agent")),
    ("hatrpo", "2s3z", dict(kl_threshold=0.01, backtrack_coef=0.8, accept_ratio=0.5,
                            line_search_steps=10, cg_iters=10)),
    # marlbenchmark/on-policy train_smac_<map>.sh (IPPO = rMAPPO with a local critic)
    ("ippo", "3m", dict(num_envs=8, rollout_length=400, epochs=15, minibatches=1, lr=5e-4,
                        clip_eps=0.2, ent_coef=0.01, recurrent=True, gru_size=64,
                        hidden_sizes=[64, 64], value_norm=True, input_norm=True,
                        share_actor=True)),
    ("ippo", "3s5z", dict(epochs=5)),
    ("ippo", "5m_vs_6m", dict(epochs=10, clip_eps=0.05)),
    ("ippo", "6h_vs_8z", dict(epochs=5, recurrent=False)),
    # CoPPO: double clip 0.2 / 0.1 (CoPPO authors' code), on-policy settings otherwise
    ("coppo", "2s3z", dict(clip_eps=0.2, clip_inner=0.1, critic_state="agent", epochs=15,
                           num_envs=8, rollout_length=400, share_actor=True)),
    ("coppo", "5m_vs_6m", dict(clip_eps=0.05, clip_inner=0.025, epochs=10)),
    # A2PO authors' code: onpolicy/config/smac.yaml and run_scripts/SMAC/<map>.sh
    ("a2po", "3s5z", dict(epochs=8, gae_lambda=0.95, critic_refit=True, clip_others=0.1,
                          num_envs=10, rollout_length=320, order="semi_greedy",
                          adaptive_clip=True, correction=True)),
    ("a2po", "5m_vs_6m", dict(num_envs=16, rollout_length=200, epochs=10, gae_lambda=0.93,
                              clip_eps=0.05, clip_others=0.025)),
    ("a2po", "6h_vs_8z", dict(recurrent=False, epochs=8, gae_lambda=0.99,
                              critic_refit=False, total_steps=15_000_000)),
    ("a2po", "3m", dict(total_steps=5_000_000, epochs=5, gae_lambda=0.95)),
    # DPO authors' code (PKU-RL/DPO): 15 epochs, lr 5e-4, local critics, README's dtar_kl 0.02
    ("dpo", "2s3z", dict(epochs=15, lr=5e-4, central_critic=False, kl_target=0.02,
                         hidden_sizes=[128, 128], num_envs=1, total_steps=2_000_000,
                         value_norm=False, huber=False, share_actor=False)),
    # JaxMARL's MAPPO-RNN (the untouched smax/mappo.yaml)
    ("mappo", "3m", dict(num_envs=128, rollout_length=128, lr=2e-3, lr_decay=True,
                         max_grad_norm=0.25, epochs=4, minibatches=4,
                         gru_size=128, chunk_length=32, recurrent=True, share_actor=True)),
]


@pytest.mark.parametrize("algo,map_name,expected", SOURCE_VALUES,
                         ids=[f"{a}-{m}" for a, m, _ in SOURCE_VALUES])
def test_preset_values_are_the_sources(algo, map_name, expected):
    values = _flat(base_config(algo, f"smax/{map_name}"))
    for key, want in expected.items():
        got = values[key]
        if isinstance(want, float):
            assert got == pytest.approx(want), (key, got, want)
        else:
            assert got == want, (key, got, want)
