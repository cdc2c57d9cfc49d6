"""Learning tests: thresholds on returns (never on time), several seeds in one program.

Thresholds and their reasons:
- didactic/split (HATRPO Prop. 1): separate actors (MAPPO, HAPPO, HATRPO) reach the
  heterogeneous optimum 1; actors shared without agent ids cannot beat 2/2^n (every agent
  plays the same distribution).
- didactic/climbing: MAPPO's agents follow independent policy gradients in a one-state game;
  from uniform policies those dynamics (and the logit-QRE path of the entropy-regularised
  game) lead to the (1,1) equilibrium worth 7, not the optimum 11, for every seed we tried.
  We assert what the algorithm provably reaches: a coordinated pure equilibrium >= 7
  (tests/test_didactic.py::test_climbing_policy_gradient_from_uniform_reaches_7_not_11 runs
  the exact expected dynamics: 64 near-uniform starts all end at 7).
- mpe/simple_spread: calibrated against our own 1M-step runs (see docs/testing.md, "MPE
  thresholds").
- smax/3m: recurrent MAPPO (the smax/mappo preset, JaxMARL's MAPPO-RNN, with the 64 envs of
  JaxMARL's final SMAX sweep) at 1.2M env steps on 16-step chunks; calibration, 3 seeds:
  deterministic win rates 0.867, 0.836, 0.859 over 128 evaluation episodes (training episodes
  0.83-0.84 at the end).
"""

import numpy as np
import pytest

from teamrl import runs
from teamrl.cli import main
from teamrl.train.evaluate import evaluate_run

pytestmark = pytest.mark.slow


def _train_and_eval(tmp_path, algo, env_id, *settings, episodes=16, name="run"):
    out = tmp_path / f"{algo}_{env_id.replace('/', '_')}_{name}"
    assert main(["train", algo, env_id, f"out={out}", "progress=none", *settings]) == 0
    result = evaluate_run(out, episodes=episodes, deterministic=True, checkpoint="latest")
    return np.array([s["return_mean"] for s in result["seeds"]]), out


def test_mappo_separate_actors_solve_split_and_shared_actors_cannot(tmp_path):
    common = ["total_steps=60000", "seeds=5", "num_envs=16", "rollout_length=32", "lr=3e-3",
              "epochs=5"]
    separate, _ = _train_and_eval(tmp_path, "mappo", "didactic/split", "share_actor=false",
                                  *common, name="separate")
    assert (separate >= 0.99).sum() >= 4, separate
    shared, out = _train_and_eval(tmp_path, "mappo", "didactic/split", "share_actor=true",
                                  "agent_id=false", *common, name="shared")
    # Without ids every agent plays the same action distribution: at most 2/2^4 in expectation
    # (deterministic evaluation plays one identical action per agent: 0).
    rows = runs.read_metrics(out)
    last = [r["return_mean"] for r in rows if r["env_steps"] == rows[-1]["env_steps"]]
    assert max(last) <= 2 / 2**4 + 0.05, last
    assert shared.max() == 0.0


@pytest.mark.parametrize("algo,settings", [("happo", ["lr=3e-3", "epochs=5"]),
                                           ("hatrpo", ["kl_threshold=0.01"])])
def test_sequential_methods_with_separate_actors_solve_split(tmp_path, algo, settings):
    """HATRPO Prop. 1, the positive half: heterogeneous sequential updates reach >= 0.95 of
    the optimum 1 on the 4-agent split game (the shared-actor half is the MAPPO test above)."""
    returns, out = _train_and_eval(tmp_path, algo, "didactic/split", "total_steps=60000",
                                   "seeds=5", "num_envs=16", "rollout_length=32", *settings)
    assert (returns >= 0.95).sum() >= 4, returns
    rows = runs.read_metrics(out)
    last = [r["return_mean"] for r in rows if r["env_steps"] == rows[-1]["env_steps"]]
    assert sum(r >= 0.9 for r in last) >= 4, last  # the stochastic policies too


def test_mappo_separate_actors_reach_a_coordinated_equilibrium_on_climbing(tmp_path):
    returns, _ = _train_and_eval(tmp_path, "mappo", "didactic/climbing", "share_actor=false",
                                 "total_steps=100000", "seeds=5")
    assert (returns >= 7.0).sum() >= 4, returns


# Mean team reward (mean over the 3 agents) summed over 25-step episodes; x3 for the HARL /
# JaxMARL "sum over agents" convention. Uniform-random start: about -25 (-75 summed).
# Calibration (docs/testing.md, "MPE thresholds"): at 300k steps seeds 0 and 1 reached -20.8
# and -19.6 (MAPPO), -20.5 and -20.3 (IPPO) with jax 0.6.2; with jax 0.9.2 (other float
# reduction orders, so other trajectories) IPPO's seed 1 settled at -23.4 (its last six rows
# -22.4 to -23.9), a worse local optimum, while seed 0 reached -20.5. So one seed must clearly
# learn and none may stay near the uniform policy's -25.
SPREAD_THRESHOLD = -22.0
SPREAD_FLOOR = -24.0


@pytest.mark.parametrize("algo", ["mappo", "ippo"])
def test_simple_spread_beats_calibrated_threshold(tmp_path, algo):
    out = tmp_path / algo
    assert main(["train", algo, "mpe/simple_spread", f"out={out}", "total_steps=300000",
                 "seeds=2", "progress=none"]) == 0
    rows = runs.read_metrics(out)
    final = [r["return_mean"] for r in rows if r["env_steps"] == rows[-1]["env_steps"]]
    assert max(final) >= SPREAD_THRESHOLD and min(final) >= SPREAD_FLOOR, final


@pytest.mark.long
def test_recurrent_mappo_wins_smax_3m(tmp_path):
    """Issue threshold: MAPPO with GRU policies and critic reaches >= 80 % deterministic
    evaluation win rate on smax/3m against the heuristic enemy (budget calibrated: 1.2M steps
    with 16-step training chunks; docs/testing.md, "SMAX threshold")."""
    out = tmp_path / "mappo_smax_3m"
    assert main(["train", "mappo", "smax/3m", f"out={out}", "progress=none", "num_envs=64",
                 "total_steps=1200000", "chunk_length=16", "eval_every=0"]) == 0
    result = evaluate_run(out, episodes=128, deterministic=True, checkpoint="latest")
    assert result["seeds"][0]["win_rate"] >= 0.8, result["seeds"]
    rows = runs.read_metrics(out)
    assert rows[-1]["win_rate"] >= 0.75, rows[-1]  # the stochastic training policy too
