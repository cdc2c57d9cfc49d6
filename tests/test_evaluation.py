"""Evaluation during training: deterministic and stochastic episodes apart from training,
recorded in metrics.csv every ``eval_every`` log rows and at the end."""

import math

import numpy as np

from teamrl import runs
from teamrl.cli import main
from teamrl.envs.didactic import climbing


def test_training_records_evaluations_at_fixed_intervals(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "mappo", "didactic/climbing", f"out={out}", "progress=none",
                 "total_steps=7168", "num_envs=16", "rollout_length=64", "log_every=1",
                 "eval_every=3", "eval_episodes=8", "share_actor=false"]) == 0
    rows = runs.read_metrics(out)
    payoff = climbing().payoff_np
    evaluated = [i for i, r in enumerate(rows) if math.isfinite(r["eval_return_det"])]
    assert evaluated == [2, 5, 6]  # every 3rd row and the last one (7 rows)
    for i in evaluated:
        det, stoch = rows[i]["eval_return_det"], rows[i]["eval_return_stoch"]
        # A one-step matrix game: the greedy joint action earns exactly one payoff entry.
        assert det in set(payoff.ravel().tolist())
        assert payoff.min() <= stoch <= payoff.max()
    assert all(math.isnan(r["eval_return_stoch"]) for i, r in enumerate(rows)
               if i not in evaluated)
    # The same deterministic number as `teamrl eval` of the final checkpoint.
    from teamrl.evaluate import evaluate_run
    final = evaluate_run(out, episodes=8, deterministic=True, checkpoint="latest")
    assert np.isclose(final["return_mean"], rows[-1]["eval_return_det"])
