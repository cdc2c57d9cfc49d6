"""The command line end to end: train, eval, resume, list, and the bad-input contract."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from teamrl import runs
from teamrl.cli import main

FAST = ["total_steps=2048", "num_envs=8", "rollout_length=64", "log_every=2", "progress=lines"]


def test_train_eval_resume_round_trip(tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["train", "mappo", "mpe/simple_spread", f"out={out}", *FAST]) == 0
    for name in ("config.yaml", "metrics.csv", "curve.png", "checkpoints/latest.json"):
        assert (out / name).is_file(), name
    assert all(runs.checkpoint_exists(out, name) for name in ("latest", "best"))
    assert list((out / "tb").glob("seed_0/events.*"))
    rows = runs.read_metrics(out)
    assert [r["env_steps"] for r in rows] == [1024, 2048]
    for col in ("seed", "env_steps", "wall_time", "steps_per_s", "return_mean", "return_min",
                "return_max", "actor_loss", "value_loss", "entropy", "approx_kl",
                "actor_grad_norm"):
        assert col in rows[0], col
    assert "steps 2,048/2,048" in capfd.readouterr().out

    assert main(["eval", str(out), "episodes=4", "deterministic=true"]) == 0
    result = json.loads((out / "eval_best_det.json").read_text())
    assert len(result["seeds"]) == 1 and np.isfinite(result["return_mean"])

    assert main(["resume", str(out), "total_steps=4096"]) == 0
    rows = runs.read_metrics(out)
    assert [r["env_steps"] for r in rows] == [1024, 2048, 3072, 4096]
    assert rows[-1]["wall_time"] >= rows[1]["wall_time"]
    assert (out / "metrics.csv").read_text().count("seed,") == 1


def test_seeds_are_logged_separately(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "ippo", "didactic/climbing", f"out={out}", "seeds=3", "seed=5",
                 *FAST]) == 0
    rows = runs.read_metrics(out)
    assert sorted({int(r["seed"]) for r in rows}) == [5, 6, 7]
    returns = {int(r["seed"]): r["return_mean"] for r in rows if r["env_steps"] == 2048}
    assert len(set(returns.values())) == 3  # different seeds, different data


def test_rerun_from_saved_config(tmp_path):
    first = tmp_path / "a"
    assert main(["train", "ippo", "didactic/penalty", f"out={first}", "k=-20", "lr=1e-3",
                 *FAST]) == 0
    second = tmp_path / "b"
    assert main(["train", "--config", str(first / "config.yaml"), f"out={second}"]) == 0
    a, b = runs.read_config(first), runs.read_config(second)
    assert a["env"] == b["env"] == {"k": -20.0}
    assert a["algo"] == b["algo"]
    ra, rb = runs.read_metrics(first), runs.read_metrics(second)
    assert [r["return_mean"] for r in ra] == [r["return_mean"] for r in rb]


def _final_params(run_dir, config_overrides=()):
    from teamrl.train.presets import config_from_run_dir
    from teamrl.train import CompiledTrainer

    config = config_from_run_dir(run_dir, {})
    trainer = CompiledTrainer(config)
    runner, meta = runs.load_checkpoint(run_dir, "latest", trainer.init())
    return runner, meta


def test_exact_resume_matches_uninterrupted_run(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = ["num_envs=8", "rollout_length=64", "log_every=2", "progress=none"]
    assert main(["train", "mappo", "mpe/simple_spread", f"out={whole}", "total_steps=4096",
                 *common]) == 0
    assert main(["train", "mappo", "mpe/simple_spread", f"out={parts}", "total_steps=2048",
                 *common]) == 0
    assert main(["resume", str(parts), "total_steps=4096"]) == 0
    a, meta_a = _final_params(whole)
    b, meta_b = _final_params(parts)
    assert meta_a["updates"] == meta_b["updates"] == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("argv,needle", [
    (["train", "nosuchalgo", "mpe/simple_spread"], "unknown algorithm 'nosuchalgo'; valid algorithms: a2po, coppo, dpo, happo, hatrpo"),
    (["train", "mappo", "mpe/nope"], "unknown env id 'mpe/nope'; did you mean 'mpe/simple'?"),
    (["train", "mappo", "mpe/simple_spread", "lrr=1"], "unknown key 'lrr'; did you mean 'lr'?"),
    (["train", "mappo", "mpe/simple_spread", "seeds=two"], "seeds='two' has the wrong type; expected a int"),
    (["train", "mappo", "mpe/simple_spread", "lr=-1"], "lr=-1.0 is out of range; must be > 0.0"),
    (["train", "mappo", "mpe/simple_spread", "action=jumpy"], "action='jumpy' is not valid; valid choices: discrete, continuous"),
    (["train", "mappo", "mpe/simple_spread", "minibatches=3"], "minibatches=3 must divide num_envs*rollout_length=2048"),
    (["train", "mappo", "didactic/split", "n_agents=3"], "n_agents=3 must be even"),
    (["train", "mappo", "mpe/simple_spread", "share_actor=maybe"], "share_actor='maybe' has the wrong type; expected true or false"),
    (["eval", "/nonexistent/run"], "is not a run folder"),
    (["resume", "/nonexistent/run"], "is not a run folder"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capfd, argv, needle):
    out = tmp_path / "run"
    argv = argv + ([f"out={out}"] if argv[0] == "train" else [])
    assert main(argv) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("teamrl: error: ") and "\n" not in err and needle in err, err
    assert not out.exists()


def test_incompatible_action_kind_is_rejected(tmp_path, capfd, monkeypatch):
    from teamrl import algos
    from teamrl.algos.mappo import MAPPO

    class DiscreteOnly(MAPPO):
        action_kinds = ("discrete",)

    monkeypatch.setitem(algos.ALGORITHMS, "discrete_only", DiscreteOnly)
    assert main(["train", "discrete_only", "didactic/product", f"out={tmp_path / 'r'}"]) == 2
    err = capfd.readouterr().err
    assert "needs discrete actions but 'didactic/product' has continuous actions" in err


def test_existing_run_folder_is_never_overwritten(tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["train", "ippo", "didactic/climbing", f"out={out}", *FAST]) == 0
    before = (out / "metrics.csv").read_bytes()
    assert main(["train", "ippo", "didactic/climbing", f"out={out}", *FAST]) == 2
    assert "already exists; pass overwrite=true" in capfd.readouterr().err
    assert (out / "metrics.csv").read_bytes() == before
    assert main(["train", "ippo", "didactic/climbing", f"out={out}", "overwrite=true",
                 "seed=1", *FAST]) == 0
    assert (out / "metrics.csv").read_bytes() != before


def test_nonfinite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, capfd,
                                                                          monkeypatch):
    import jax.numpy as jnp

    from teamrl import algos
    from teamrl.algos.mappo import MAPPO

    class Exploding(MAPPO):
        def update(self, ts, batch, key):
            ts, metrics = super().update(ts, batch, key)
            # value_norm.count grows by T*E*N = 2*T*E per update: NaN from the third update on
            third = ts.value_norm.count > 5 * batch.reward.size
            return ts, {**metrics, "value_loss": jnp.where(third, jnp.nan, metrics["value_loss"])}

    monkeypatch.setitem(algos.ALGORITHMS, "exploding", Exploding)
    out = tmp_path / "run"
    code = main(["train", "exploding", "didactic/climbing", f"out={out}", "total_steps=4096",
                 "num_envs=8", "rollout_length=64", "log_every=1", "progress=none"])
    assert code == 1
    err = capfd.readouterr().err
    assert "non-finite value_loss at update 3 (seed 0)" in err
    runner, meta = _final_params(out)
    assert meta["updates"] == 2


def test_list_json_and_console_entry_point():
    proc = subprocess.run([sys.executable, "-m", "teamrl.cli", "list", "--json"],
                          capture_output=True, text=True, check=True)
    info = json.loads(proc.stdout)
    assert {a["name"] for a in info["algorithms"]} >= {"ippo", "mappo"}
    ids = {e["id"] for e in info["envs"]}
    assert {"mpe/simple", "mpe/simple_spread", "mpe/simple_reference",
            "mpe/simple_speaker_listener", "didactic/climbing", "didactic/tree",
            "didactic/dpo-random-game"} <= ids
    bad = subprocess.run([sys.executable, "-m", "teamrl.cli", "train", "mappo", "mpe/x"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
