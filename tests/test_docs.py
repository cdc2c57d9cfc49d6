"""The documentation against the code: the 'add an environment' page's examples run and
train, docs/cli.md and the generated tables are what docs/gen_cli_reference.py makes of the
current code, every algorithm has a page, links resolve, and the docs' `teamrl train`
commands use valid settings."""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import re
import runpy
import shlex
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```(?P<lang>\w+)(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.S | re.M)
# Appended to the page's `train` commands: a few hundred steps instead of the defaults.
SHORT_RUN = ["total_steps=512", "num_envs=4", "rollout_length=32", "log_every=2",
             "eval_every=0", "progress=none"]


def code_blocks(page: pathlib.Path):
    """(language, info words, body) of every fenced code block of a page."""
    for m in FENCE.finditer(page.read_text()):
        yield m["lang"], m["info"].split(), m["body"]


def generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference",
                                                  DOCS / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exec_block(body: str, page: pathlib.Path, monkeypatch) -> None:
    """Execute a code block as the body of a throwaway module (dataclasses and pickling
    look classes up in sys.modules)."""
    import types

    module = types.ModuleType("docs_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(body, str(page), "exec"), module.__dict__)


def shell_commands(body: str) -> list[str]:
    """Command lines of a shell block (continuations joined, comments dropped)."""
    lines = body.replace("\\\n", " ").splitlines()
    return [line.split("  #")[0].strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#")]


def run_command(line: str, monkeypatch) -> None:
    """Run a documented command in this process: ``[VAR=value ...] teamrl ARGS`` through
    ``teamrl.cli.main``, ``python SCRIPT ARGS`` through runpy (as ``__main__``); ``train``
    commands get SHORT_RUN appended (later settings win)."""
    from teamrl.cli import main

    words = shlex.split(line)
    while re.match(r"^[A-Z_]+=", words[0]):
        name, value = words.pop(0).split("=", 1)
        monkeypatch.setenv(name, value)
        if name == "PYTHONPATH":
            for entry in value.split(os.pathsep):
                monkeypatch.syspath_prepend(str(pathlib.Path(entry).resolve()))
    if words[0] == "python":
        script, args = words[1], words[2:]
    else:
        assert words[0] == "teamrl", line
        script, args = None, words[1:]
    if args[0] == "train":
        # Host envs step in this process here (workers=0): spawning workers is tested in
        # test_host_env.py and costs seconds the docs test does not need to spend.
        host = any(a.startswith("pettingzoo/") for a in args)
        args = args + SHORT_RUN + (["workers=0"] if host else [])
    if script is None:
        code = main(args)
    else:
        monkeypatch.setattr(sys, "argv", [script, *args])
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(script, run_name="__main__")
        code = exit_info.value.code
    assert code == 0, f"{line!r} exited with {code}"


def assert_trained(run_dir: pathlib.Path) -> None:
    """The run folder holds a finished run: metrics up to its total steps, a checkpoint."""
    from teamrl import runs

    run = runs.read_config(run_dir)["run"]
    per_update = run["num_envs"] * run["rollout_length"]
    rows = runs.read_metrics(run_dir)
    assert rows and rows[-1]["env_steps"] == run["total_steps"] // per_update * per_update
    assert any(math.isfinite(r["return_mean"]) for r in rows)
    assert all(math.isfinite(r["actor_loss"]) for r in rows)
    assert runs.checkpoint_exists(run_dir, "latest")


@pytest.fixture
def fast_compile():
    """XLA without most optimisations: the examples' few hundred steps compile about 3x
    faster (what is checked is that they run and log, not how fast)."""
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def scratch_registry():
    """Leave the env registry and the imported example modules as they were."""
    from teamrl.envs.registry import REGISTRY

    before = dict(REGISTRY)
    modules = set(sys.modules)
    yield
    REGISTRY.clear()
    REGISTRY.update(before)
    for name in set(sys.modules) - modules:
        if name in ("beacon", "line_walk", "teamrl_mine"):
            del sys.modules[name]


def test_adding_an_environment_examples_run_and_train(tmp_path, monkeypatch, capsys,
                                                      scratch_registry, fast_compile):
    page = DOCS / "adding_an_environment.md"
    blocks = list(code_blocks(page))
    files: dict[str, str] = {}
    for lang, info, body in blocks:
        for word in info:
            if word.startswith("file="):
                name = word.split("=", 1)[1]
                files[name] = files.get(name, "") + ("\n\n" if name in files else "") + body
    assert {"beacon.py", "teamrl_mine.py", "line_walk.py"} <= set(files)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    python_tests = [body for lang, info, body in blocks if lang == "python" and "test" in info]
    shell_tests = [body for lang, info, body in blocks if lang == "bash" and "test" in info]
    assert len(python_tests) == 1 and len(shell_tests) == 2
    # The Python API example, exactly as written (20k steps of MAPPO on mine/beacon).
    exec_block(python_tests[0], page, monkeypatch)
    assert_trained(tmp_path / "runs" / "beacon")

    capsys.readouterr()
    for body in shell_tests:
        for line in shell_commands(body):
            run_command(line, monkeypatch)
    assert "positions=4" in capsys.readouterr().out  # the launcher's CLI knows mine/beacon
    assert_trained(tmp_path / "runs" / "walk")
    from teamrl import runs

    assert runs.read_config(tmp_path / "runs" / "walk")["env"]["env_kwargs"] == {"n": 4,
                                                                                 "size": 8}


def test_adding_an_algorithm_example_traces(monkeypatch):
    """The page's example algorithm registers, validates, and one rollout + update of it
    traces on a didactic game (shapes only: jax.eval_shape, nothing is compiled)."""
    import jax

    from teamrl.algos import ALGORITHMS, DESCRIPTIONS
    from teamrl.train.presets import base_config
    from teamrl.train import CompiledTrainer

    page = DOCS / "adding_an_algorithm.md"
    blocks = [body for lang, info, body in code_blocks(page) if "test-algo" in info]
    assert len(blocks) == 1
    saved = dict(ALGORITHMS), dict(DESCRIPTIONS)
    try:
        exec_block(blocks[0], page, monkeypatch)
        assert "ia2c" in ALGORITHMS and "ia2c" in DESCRIPTIONS
        trainer = CompiledTrainer(base_config("ia2c", "didactic/climbing"))
        runner = jax.eval_shape(trainer._init_one, jax.random.PRNGKey(0))
        _, metrics = jax.eval_shape(lambda r: trainer._update(r, None), runner)
        assert {"actor_loss", "value_loss", "entropy"} <= set(metrics)
    finally:
        for registry, before in zip((ALGORITHMS, DESCRIPTIONS), saved):
            registry.clear()
            registry.update(before)


def test_quickstart_policy_example_runs(tmp_path, monkeypatch, fast_compile):
    """quickstart.md's "Use a trained policy": train (a few hundred steps), export to both
    formats, then the Python block as written."""
    page = DOCS / "quickstart.md"
    blocks = [(lang, body) for lang, info, body in code_blocks(page) if "test-policy" in info]
    assert [lang for lang, _ in blocks] == ["bash", "python"]
    monkeypatch.chdir(tmp_path)
    for line in shell_commands(blocks[0][1]):
        run_command(line, monkeypatch)
    assert (tmp_path / "spread.jaxexport").is_file() and (tmp_path / "spread.npz").is_file()
    exec_block(blocks[1][1], page, monkeypatch)


def test_generated_docs_are_up_to_date():
    gen = generator()
    stale = [str(path.relative_to(DOCS.parent)) for path, text in gen.expected_files().items()
             if not path.exists() or path.read_text() != text]
    assert not stale, (f"out of date: {', '.join(stale)}; run python docs/gen_cli_reference.py")


def test_every_algorithm_has_a_page_with_its_generated_defaults():
    from teamrl.algos import ALGORITHMS

    index = (DOCS / "index.md").read_text()
    for name in ALGORITHMS:
        page = DOCS / "algorithms" / f"{name}.md"
        assert page.is_file(), f"no page for algorithm {name!r}"
        text = page.read_text()
        assert f"<!-- BEGIN GENERATED algo-defaults:{name} -->" in text, name
        assert f"<!-- BEGIN GENERATED algo-presets:{name} -->" in text, name
        assert f"algorithms/{name}.md" in index, f"index.md does not link {name}"
    pages = {p.stem for p in (DOCS / "algorithms").glob("*.md")}
    assert pages <= set(ALGORITHMS), f"pages of unknown algorithms: {pages - set(ALGORITHMS)}"


def test_relative_links_resolve():
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    for page in DOCS.rglob("*.md"):
        for target in link.findall(page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_documented_train_commands_use_valid_settings():
    """Every `teamrl train ALGO ENV key=value ...` in a docs shell block resolves to a valid
    config (unknown keys, wrong types and out-of-range values fail here), without training."""
    from teamrl.train.presets import base_config
    from teamrl.config import apply_overrides, parse_key_values, validate_section

    checked = 0
    for page in DOCS.rglob("*.md"):
        for lang, info, body in code_blocks(page):
            if lang not in ("bash", "sh", "console"):
                continue
            for line in shell_commands(body):
                words = shlex.split(line)
                while words and re.match(r"^[A-Z_]+=", words[0]):
                    words.pop(0)
                if words[:2] != ["teamrl", "train"] or "--config" in words:
                    continue
                algo, env_id, *settings = words[2:]
                if env_id.startswith("pettingzoo/"):
                    continue  # the module may not be installed here
                config = base_config(algo, env_id)
                apply_overrides(config, parse_key_values(settings))
                for section in config.sections().values():
                    validate_section(section)
                checked += 1
    assert checked >= 10


def test_license_and_citation_match_the_package():
    """LICENSE is the Apache-2.0 that pyproject declares; CITATION.cff carries the package's
    version and licence."""
    import tomllib

    import yaml

    root = DOCS.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "Apache-2.0"
    assert "Apache License\n                           Version 2.0" in (root / "LICENSE").read_text()
    citation = yaml.safe_load((root / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == project["version"]
    assert citation["license"] == project["license"]["text"]


def test_readme_is_short_starts_with_the_two_commands_and_names_existing_paths():
    """README.md is the front page: at most 160 lines, the title and then the two set-up
    commands (install and train; install the test extras and run the tests, as CI does), and
    every relative link and every backticked repository path (`docs/...`, `experiments/...`,
    ...) it names exists."""
    root = DOCS.parent
    text = (root / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines (at most 160)"
    assert lines[0].startswith("# ")
    first = next(FENCE.finditer(text))
    assert text[:first.start()].strip() == lines[0], "README.md must open with the commands"
    assert first["lang"] == "bash"
    assert first["body"].splitlines() == [
        "pip install -e . && teamrl train mappo mpe/simple_spread",
        'pip install -e ".[test]" && python -m pytest -q -n 2 --dist worksteal',
    ]
    named = set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text))
    named = {t for t in named if "://" not in t and not t.startswith("mailto:")}
    paths = re.findall(r"`((?:docs|experiments|benchmarks|tests|teamrl|\.ci)/[^`\s]*)`", text)
    named |= {p for p in paths if not re.search(r"[<>*\[\]{}|]", p)}
    assert named, "README.md names no paths"
    missing = sorted(t for t in named if not (root / t).exists())
    assert not missing, f"README.md names paths that do not exist: {', '.join(missing)}"
