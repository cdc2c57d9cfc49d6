"""Bad input and bad output locations from the command line (issue 28 items 10, 12-16): one
line on stderr, no traceback, a non-zero exit (2 for bad input), and nothing written."""

import shlex
import subprocess
import sys

import pytest
import yaml

from teamrl import runs
from teamrl.cli import main

# 2 updates of 128 steps of the smallest program (as tests/test_sweep.py)
FAST = {"total_steps": 256, "num_envs": 4, "rollout_length": 32, "log_every": 1,
        "eval_every": 0, "epochs": 1, "minibatches": 1, "hidden_sizes": [8]}
FAST_ARGS = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
             for k, v in FAST.items()]


def files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_line_error(capfd, code, expected=2):
    """stderr of a finished main(): one line, the given exit code; returns the line."""
    err = capfd.readouterr().err.strip()
    assert code == expected, err
    assert err.startswith("teamrl: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def refused(tmp_path, capfd, argv, needle, expected=2):
    """Run ``teamrl ARGV`` in tmp_path (as cwd) and check it fails with one line naming
    ``needle`` and leaves tmp_path as it was."""
    before = files(tmp_path)
    err = one_line_error(capfd, main(argv), expected)
    assert needle in err, err
    assert files(tmp_path) == before
    return err


# ------------------------------------------------------------------ 12: config files
CONFIG_FILES = {
    "yaml syntax": (b"run: {algo: mappo\n", "not valid YAML at line"),
    "not utf-8": (b"run:\n  algo: mappo\n  env_id: mpe/simple_spread\n  out: \xff\xfe\n",
                  "not UTF-8 text"),
    "python tag": (b"run: !!python/object/apply:os.system ['touch PWNED']\n",
                   "not valid YAML"),
    "top level list": (b"- run\n- algo\n", "expected a mapping of sections"),
    "run is a list": (b"run: [mappo, mpe/simple_spread]\n", "section run must be a mapping"),
    "section scalar": (b"run: {algo: mappo, env_id: mpe/simple_spread}\nnetwork: 3\n",
                       "section network must be a mapping"),
    "section list": (b"run: {algo: mappo, env_id: mpe/simple_spread}\nalgo: [1, 2]\n",
                     "section algo must be a mapping"),
    "unhashable algo": (b"run: {algo: [mappo], env_id: mpe/simple_spread}\n",
                        "run.algo and run.env_id must be names"),
    "unhashable key": (b"run: {algo: mappo, env_id: mpe/simple_spread, [a]: 1}\n",
                       "not valid YAML"),
    "non-string key": (b"run: {algo: mappo, env_id: mpe/simple_spread}\nalgo: {1: 2}\n",
                       "key 1 is not a name"),
    "mapping value": (b"run: {algo: mappo, env_id: mpe/simple_spread}\nalgo: {lr: {a: 1}}\n",
                      "lr={'a': 1} has the wrong type"),
}


@pytest.mark.parametrize("command", ["train", "resume", "eval"])
@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_config_file_errors(tmp_path, capfd, monkeypatch, command, case):
    content, needle = CONFIG_FILES[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_bytes(content)
    argv = {"train": ["train", "--config", "run/config.yaml", "out=new"],
            "resume": ["resume", "run"], "eval": ["eval", "run"]}[command]
    refused(tmp_path, capfd, argv, needle)
    assert not (tmp_path / "PWNED").exists()


# ------------------------------------------------------------ 10: output locations
@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("where,needle", [("under_file", "[Errno 20] Not a directory"),
                                          ("proc", "[Errno 2] No such file or directory"),
                                          ("is_file", "[Errno 20] Not a directory")])
@pytest.mark.parametrize("command", ["train", "plot", "report", "sweep"])
def test_unwritable_output_locations(tmp_path, capfd, monkeypatch, a_file, command, where,
                                     needle):
    monkeypatch.chdir(tmp_path)
    out = {"under_file": f"{a_file}/x", "proc": "/proc/teamrl/x", "is_file": str(a_file)}[where]
    if command == "plot":
        out += ".png" if where != "is_file" else ""
        argv = ["plot", "no_such_run", f"out={out}"]
        if where == "is_file":
            pytest.skip("a plot's out= is a file: an existing one is replaced")
    elif command == "report":
        argv = ["report", "no_such_run", f"out={out}"]
    elif command == "sweep":
        (tmp_path / "s.yaml").write_text(yaml.safe_dump(
            {"out": out, "algos": ["ippo"], "envs": ["didactic/climbing"], "seeds": 1}))
        argv = ["sweep", "s.yaml"]
    else:
        argv = ["train", "ippo", "didactic/climbing", f"out={out}"]
    err = refused(tmp_path, capfd, argv, needle)
    assert out in err


def _mount_tmpfs(path, options):
    path.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a tmpfs here (needs root and mount privileges)")


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs: config.yaml fits, the first checkpoint and plots do not."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=512k")
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


def test_disk_full_is_one_line_naming_path_and_errno(tmp_path, capfd, small_disk):
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # leave about 64 KiB: the run starts, then fills the disk
        f.write(b"\0" * (448 * 1024))
    code = main(["train", "ippo", "didactic/climbing", f"out={small_disk / 'run'}",
                 "progress=none", *FAST_ARGS])
    err = one_line_error(capfd, code, expected=1)
    assert "[Errno 28] No space left on device" in err and str(small_disk) in err, err


def test_read_only_location_is_refused_before_any_work(tmp_path, capfd):
    disk = tmp_path / "ro"
    _mount_tmpfs(disk, "size=64k,ro")
    try:
        refused(tmp_path, capfd, ["train", "ippo", "didactic/climbing", f"out={disk / 'run'}"],
                "[Errno 30] Read-only file system")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ---------------------------------------------------------------------- 13: sizes
@pytest.mark.parametrize("algo,settings,needle", [
    ("ippo", ["num_envs=1000000000"], "the rollout buffer"),
    ("ippo", ["rollout_length=10000000000"], "the rollout buffer"),
    ("ippo", ["seeds=1000000000"], "the rollout buffer"),
    ("ippo", ["eval_episodes=1000000000000"], "evaluation"),
    ("ippo", ["hidden_sizes=[10000000,10000000]"], "the networks"),
    ("iql", ["buffer_size=1000000000000"], "the replay buffer"),
    # fits one-wide observations, not mpe's real widths: refused once the env is known
    ("mappo", ["num_envs=1048576", "rollout_length=1024"], "the rollout buffer"),
    ("ippo", ["total_steps=10000000000000"], "total_steps=10000000000000 is out of range"),
    ("ippo", ["total_steps=1000.5"], "total_steps=1000.5 is not a whole number"),
    ("ippo", ["total_steps=1e400"], "has the wrong type"),
])
def test_sizes_beyond_the_machine_are_refused(tmp_path, capfd, monkeypatch, algo, settings,
                                              needle):
    monkeypatch.chdir(tmp_path)
    env = "mpe/simple_spread" if algo == "mappo" else "didactic/climbing"
    err = refused(tmp_path, capfd, ["train", algo, env, "out=run", *settings], needle)
    if "rollout" in needle or "GiB" in err:
        assert "GiB" in err and "of this machine's" in err


# ------------------------------------------------------------------ 14: cross-field
@pytest.mark.parametrize("algo,settings,needle", [
    ("ippo", ["log_std_min=1", "log_std_max=0"],
     "log_std_min=1.0 must be < log_std_max=0.0"),
    ("ippo", ["log_std_init=5"], "log_std_init=5.0 must lie in [log_std_min, log_std_max]"),
    ("iql", ["eps_start=0.1", "eps_end=0.5"], "eps_end=0.5 must be <= eps_start=0.1"),
    ("dpo", ["beta_min=1", "beta_max=0.5"], "beta_min=1.0 must be <= beta_max=0.5"),
    ("dpo", ["beta_kl_init=1e4"], "beta_kl_init=10000.0 must lie in [beta_min, beta_max]"),
    ("ippo", ["process_id=1"], "process_id=1 is out of range; valid: 0..0"),
    ("ippo", ["lr=1e-3", "lr=1e-4"], "lr is given twice (lr=1e-3 and lr=1e-4)"),
])
def test_cross_field_checks(tmp_path, capfd, monkeypatch, algo, settings, needle):
    monkeypatch.chdir(tmp_path)
    refused(tmp_path, capfd, ["train", algo, "didactic/climbing", "out=run", *settings], needle)


def test_total_steps_is_rounded_to_whole_updates_with_a_notice(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(
        {"out": "sw", "algos": ["ippo"], "envs": ["didactic/climbing"], "seeds": 1,
         "settings": {**FAST, "total_steps": 300}}))
    assert main(["sweep", "s.yaml", "dry_run=true"]) == 0
    err = capfd.readouterr().err
    assert ("teamrl: note: total_steps=300 is not a whole number of updates of "
            "num_envs*rollout_length=128 steps; rounded to 256 (2 updates)") in err


# ------------------------------------------------------- 15: pipes, imports, typos
def _teamrl(*args):
    return [sys.executable, "-c", "import sys; from teamrl.cli import main; "
            "sys.exit(main())", *args]


@pytest.mark.parametrize("args", [["list"], ["list", "--json"],
                                  ["list", "--keys", "mappo", "mpe/simple_spread"],
                                  ["--help"], ["train", "--help"], ["--version"]])
def test_closed_pipe_exits_quietly(args):
    """`teamrl ... | head -1`: the reader closes the pipe before teamrl has written."""
    proc = subprocess.Popen(_teamrl(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() in (0, 1)
    assert err == "", err


def test_head_of_list():
    proc = subprocess.run(f"{shlex.join(_teamrl('list'))} | head -1", shell=True,
                          capture_output=True, text=True)
    assert proc.stdout == "algorithms:\n" and proc.stderr == "", proc.stderr


def test_training_goes_on_when_its_reader_goes_away(tmp_path):
    """`teamrl train ... | head -1`: the progress lines stop, the run finishes its folder."""
    out = tmp_path / "run"
    proc = subprocess.run(
        f"{shlex.join(_teamrl('train', 'ippo', 'didactic/climbing', f'out={out}', 'seed=0', 'progress=lines', 'total_steps=4096', 'num_envs=16', 'rollout_length=32', 'log_every=1', 'eval_every=0'))} | head -1",
        shell=True, capture_output=True, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert [int(r["updates"]) for r in runs.read_metrics(out)] == list(range(1, 9))
    assert (out / "curve.png").is_file()


@pytest.mark.parametrize("body,needle", [
    ("raise RuntimeError('no display\\nsecond line')", "(RuntimeError: no display)"),
    ("import sys; sys.exit(3)", "(SystemExit: 3)"),
    ("1/0", "(ZeroDivisionError: division by zero)"),
    ("import no_such_dependency_xyz", "install the package that provides it"),
])
def test_pettingzoo_module_whose_import_fails(tmp_path, capfd, monkeypatch, body, needle):
    (tmp_path / "broken_pz_env.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("broken_pz_env", None)
    refused(tmp_path, capfd, ["train", "ippo", "pettingzoo/broken_pz_env", "out=run"],
            f"pettingzoo/broken_pz_env: ")
    # the message names the cause
    main(["train", "ippo", "pettingzoo/broken_pz_env", "out=run"])
    assert needle in capfd.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["train", "mapo", "mpe/simple_spread"], "unknown algorithm 'mapo'; did you mean 'mappo'"),
    (["train", "mappo", "mpe/simple_sprad"], "did you mean 'mpe/simple_spread'"),
    (["train", "mappo", "mpe/simple_spread", "lrr=1"], "unknown key 'lrr'; did you mean 'lr'"),
    (["train", "mappo", "mpe/simple_spread", "qqqqqqqq=1"], "more; see `teamrl list`)"),
    (["train", "mappo", "zzz/qqq"], "valid families: didactic,"),
])
def test_did_you_mean(tmp_path, capfd, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    err = refused(tmp_path, capfd, argv, needle)
    assert len(err) < 400, err


def test_version():
    from importlib.metadata import version

    proc = subprocess.run(_teamrl("--version"), capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == f"teamrl {version('teamrl')}"


# ------------------------------------------------------------- 16: sweep processes
def test_sweep_runs_do_not_import_modules_from_the_working_directory(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    (tmp_path / "yaml.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                      "raise SystemExit('the cwd yaml.py was imported')\n")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(
        {"out": "sw", "algos": ["ippo"], "envs": ["didactic/climbing"], "seeds": 1,
         "settings": FAST, "report": {"metric": "return_mean"}}))
    monkeypatch.chdir(tmp_path)
    code = main(["sweep", "s.yaml"])
    log = next((tmp_path / "sw" / "logs").glob("*.log")).read_text()
    assert not marker.exists(), log
    assert code == 0, log
