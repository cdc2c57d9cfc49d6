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
    from teamrl.train.evaluate import evaluate_run
    final = evaluate_run(out, episodes=8, deterministic=True, checkpoint="latest")
    assert np.isclose(final["return_mean"], rows[-1]["eval_return_det"])


def test_eval_protocol_reaches_the_run(tmp_path):
    """eval_protocol=smac: 32 deterministic+stochastic episodes every 25 updates (and at the
    end), recorded in config.yaml; a cadence re-cut as 5 rows x 5 updates keeps the points."""
    out = tmp_path / "run"
    # 1024 steps per update; 60 updates: evaluations after updates 25, 50 and the last (60).
    assert main(["train", "mappo", "didactic/climbing", f"out={out}", "progress=none",
                 "total_steps=61440", "num_envs=16", "rollout_length=64",
                 "eval_protocol=smac", "log_every=5", "eval_every=5",
                 "share_actor=false"]) == 0
    run = runs.read_config(out)["run"]
    assert (run["eval_protocol"], run["eval_episodes"]) == ("smac", 32)
    rows = runs.read_metrics(out)
    evaluated = [int(r["updates"]) for r in rows if math.isfinite(r["eval_return_det"])]
    assert evaluated == [25, 50, 60]


def test_eval_protocol_sets_its_cadence_and_refuses_a_conflict(tmp_path, capsys):
    from teamrl.train.presets import base_config
    from teamrl.config import ConfigError, apply_overrides, validate_section

    config = base_config("happo", "didactic/climbing")
    apply_overrides(config, {"eval_protocol": "harl"})
    assert (config.run.log_every, config.run.eval_every, config.run.eval_episodes) == (25, 1, 40)
    validate_section(config.run)
    apply_overrides(config, {"eval_episodes": "10"})
    try:
        validate_section(config.run)
    except ConfigError as err:
        assert "eval_protocol=harl" in str(err) and "eval_episodes=10" in str(err)
    else:
        raise AssertionError("a protocol with another episode count was accepted")
    out = tmp_path / "refused"
    assert main(["train", "happo", "didactic/climbing", f"out={out}", "progress=none",
                 "eval_protocol=harl", "eval_every=2"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()
