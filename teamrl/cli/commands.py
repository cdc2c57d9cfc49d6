"""`teamrl` command line: argument parsing only; the work is done by train/evaluate/runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from teamrl.config import ConfigError, check_output_path, parse_key_values, suggest

EXIT_BAD_INPUT = 2

TRAIN_HELP = """Train ALGO on ENV. Settings are key=value pairs (e.g. total_steps=200000 seeds=4
lr=3e-4 hidden_sizes=[128,128] action=continuous); `teamrl list --keys ALGO ENV` shows every
key with its default. Presets shipped for (env, algo) are applied first."""

PLOT_HELP = """Plot learning curves of one or many run folders: one panel per env, one line per
algorithm (runs of the same algo and env pool their seeds), the mean over seeds with a
percentile-bootstrap confidence band. Settings: out=FILE (.png or .svg, required),
x=env_steps|wall_time, y=any metrics.csv column (default return_mean), ci=0.95,
resamples=2000, seed=0 (of the bootstrap). An argument NAME=VALUE whose NAME is an identifier
is a setting; write ./NAME=VALUE for a folder of that name."""

REPORT_HELP = """Aggregate the final scores of run folders across envs and seeds (the rliable /
marl-eval protocol): per env mean and bootstrap CI per algorithm, IQM and mean of min-max normalised
scores with stratified-bootstrap CIs, probability of improvement between algorithms,
performance profiles. Writes scores.csv, summary.md, summary.csv, aggregate.png, profiles.png
and marl_eval.json into out=DIR (required). A seed's final score is the mean of its last 10%
of metric values. Settings: metric=eval_return_det (any metrics.csv column), resamples=2000,
seed=0 (of the bootstrap), norm=FILE.yaml (per env [low, high]; default: min and max over
the env's runs)."""

SWEEP_HELP = """Train every (algorithm, env, grid point, seed) of FILE.yaml (keys out, algos, envs,
seeds, settings, grid, report; see teamrl/cli/sweep.py) as separate processes, at most jobs=N at a
time, into OUT/<algo>__<env>[__<key>=<value>]__seed<s>, with logs in OUT/logs. Finished runs are
skipped, interrupted ones resumed; a folder whose config differs from the request stops the
sweep before anything runs. Ends with `teamrl report` in OUT/report. dry_run=true lists the
runs and their state. backend=ray runs them as Ray tasks (pip install "teamrl[ray]") on the
cluster at address=HOST:PORT, or on a local Ray instance without address."""

EXPORT_HELP = """Write one seed's trained policy from RUN_DIR's best (else latest) checkpoint to a
self-contained file that teamrl.load_exported(FILE) reads without the run folder:
out=FILE.jaxexport (jax.export serialisations of the deterministic and the sampling action
function, parameters included, any batch size; every algorithm; needs the flatbuffers
package) or out=FILE.npz (the NumPy weights the host runner acts with; feed-forward
actor-critic actors). Settings: out=FILE (required), checkpoint=best|latest, seed=N (a seed of
the run; default its first), overwrite=false."""

INSTALL_HELP = """Install an optional environment that pip alone cannot. football: Google Research
Football (gfootball 2.10.2, compiled from source, about 3 minutes on 2 cores): installs the
Debian packages it needs with apt-get when run as root (otherwise names them), then gym 0.25.2
and gfootball with pip, pinning every other installed package so nothing is downgraded.
Idempotent: does nothing when gfootball already works; pip reuses the wheel it built."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="teamrl", description="Compiled cooperative multi-agent RL.")
    p.add_argument("--version", action="version", version=f"teamrl {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train an algorithm on an environment", description=TRAIN_HELP)
    t.add_argument("algo", nargs="?", help="algorithm, e.g. mappo (see `teamrl list`)")
    t.add_argument("env", nargs="?", help="environment id, e.g. mpe/simple_spread")
    t.add_argument("settings", nargs="*", metavar="key=value")
    t.add_argument("--config", help="a config.yaml (e.g. RUN_DIR/config.yaml) to re-run")

    r = sub.add_parser("resume", help="continue a run from its latest checkpoint",
                       description="Continue RUN_DIR from its latest checkpoint; metrics append. "
                                   "Optionally raise total_steps=N.")
    r.add_argument("run_dir")
    r.add_argument("settings", nargs="*", metavar="key=value")

    e = sub.add_parser("eval", help="evaluate a run's policy",
                       description="Run evaluation episodes with RUN_DIR's best (else latest) "
                                   "checkpoint; writes eval_*.json in the run folder. With "
                                   "render=FILE.gif|FILE.mp4, renders episodes (default 1) of "
                                   "seed 0 instead (MaMuJoCo offscreen via EGL, football "
                                   "through gfootball's offscreen renderer, PettingZoo "
                                   "rgb_array, MPE); .mp4 needs pip install 'teamrl[render]'.")
    e.add_argument("run_dir")
    e.add_argument("settings", nargs="*", metavar="key=value",
                   help="episodes=N deterministic=true|false checkpoint=best|latest "
                        "render=FILE.gif|.mp4 fps=N")

    x = sub.add_parser("export", help="write a run's policy to a self-contained file "
                       "(.jaxexport or .npz)", description=EXPORT_HELP)
    x.add_argument("run_dir")
    x.add_argument("settings", nargs="*", metavar="key=value",
                   help="out=FILE.jaxexport|FILE.npz checkpoint=best|latest seed=N "
                        "overwrite=false")

    pl = sub.add_parser("plot", help="learning curves of run folders, mean and bootstrap CI",
                        description=PLOT_HELP)
    pl.add_argument("items", nargs="*", metavar="RUN_DIR | key=value",
                    help="run folders, then out=FILE.png|FILE.svg x=env_steps|wall_time "
                         "y=COLUMN ci=0.95 resamples=2000 seed=0")

    rp = sub.add_parser("report", help="statistics of run folders across envs and seeds: IQM, "
                        "probability of improvement, profiles", description=REPORT_HELP)
    rp.add_argument("items", nargs="*", metavar="RUN_DIR | key=value",
                    help="run folders, then out=DIR metric=COLUMN resamples=2000 seed=0 "
                         "norm=FILE.yaml")

    sw = sub.add_parser("sweep", help="a grid of runs (algos x envs x seeds x overrides) from a "
                        "YAML file, as parallel processes; resumable; ends with a report",
                        description=SWEEP_HELP)
    sw.add_argument("file", metavar="FILE.yaml")
    sw.add_argument("settings", nargs="*", metavar="key=value", help="jobs=1 dry_run=false")

    ins = sub.add_parser("install", help="build an optional environment into this Python "
                         "environment (football: Google Research Football)",
                         description=INSTALL_HELP)
    ins.add_argument("target", help="what to install; valid: football")
    ins.add_argument("--force", action="store_true", help="reinstall even if it works")
    ins.add_argument("--no-system", action="store_true",
                     help="never run apt-get; only report missing Debian packages")

    ls = sub.add_parser("list", help="list algorithms, env ids and presets")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--keys", nargs=2, metavar=("ALGO", "ENV"),
                    help="list every config key of ALGO on ENV with its default and help")
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("teamrl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"teamrl: error: {message}", file=sys.stderr)
    return code


def _default_out(algo: str, env_id: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{env_id.replace('/', '_')}_{algo}_{stamp}")


def cmd_train(args) -> int:
    from teamrl.scale import distributed

    overrides = parse_key_values(args.settings)
    distributed.initialize_from_settings(overrides, args.config)  # before any env import
    from teamrl.train.presets import base_config, config_from_file
    from teamrl.config import apply_overrides

    if args.config:
        positional = [a for a in (args.algo, args.env) if a]
        overrides = {**parse_key_values(positional), **overrides}
        config = config_from_file(args.config, overrides)
    else:
        if not args.algo or not args.env:
            raise ConfigError("train needs ALGO and ENV (or --config FILE); see `teamrl list`")
        if "=" in args.algo or "=" in args.env:
            raise ConfigError("train needs ALGO and ENV before key=value settings")
        config = base_config(args.algo, args.env)
        apply_overrides(config, overrides)
    if not config.run.out:
        config.run.out = _default_out(config.run.algo, config.run.env_id)
    return _run_training(config, resume_dir=None)


def cmd_resume(args) -> int:
    from teamrl.scale import distributed

    overrides = parse_key_values(args.settings)
    distributed.initialize_from_settings(overrides, args.run_dir)  # before any env import
    from teamrl import runs
    from teamrl.train.presets import config_from_run_dir

    from teamrl.config import PLACEMENT_KEYS

    allowed = {"total_steps", "progress", "log_every", "checkpoint_every", *PLACEMENT_KEYS}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ConfigError(f"resume cannot change {bad[0]!r}; valid keys: {', '.join(sorted(allowed))}")
    config = config_from_run_dir(args.run_dir, overrides)
    if not any(runs.checkpoint_exists(args.run_dir, n) for n in ("latest", "best")):
        config_file = os.path.join(args.run_dir, runs.CONFIG_FILE)
        raise ConfigError(f"{args.run_dir!r} has no checkpoint to resume from; start it again "
                          f"with `teamrl train --config {config_file} overwrite=true`")
    return _run_training(config, resume_dir=args.run_dir)


def _run_training(config, resume_dir) -> int:
    from teamrl.runs import RunExistsError
    from teamrl.train import TrainingStopped, train

    try:
        summary = train(config, resume_dir=resume_dir)
    except RunExistsError as err:
        return _fail(str(err))
    except TrainingStopped as err:
        print(f"teamrl: {err}", file=sys.stderr)
        return 1
    print(f"[teamrl] done: {summary.get('env_steps', 0):,} env steps "
          f"per seed, return {summary.get('return_mean', float('nan')):.3f}; run folder "
          f"{summary['run_dir']}")
    return 0


def cmd_eval(args) -> int:
    from teamrl.train.evaluate import evaluate_run

    settings = parse_key_values(args.settings)
    allowed = {"episodes", "deterministic", "checkpoint", "render", "fps"}
    bad = sorted(set(settings) - allowed)
    if bad:
        raise ConfigError(f"unknown eval key {bad[0]!r}; valid keys: {', '.join(sorted(allowed))}")
    from teamrl.config import coerce

    episodes = coerce("episodes", settings["episodes"], int) if "episodes" in settings else None
    if episodes is not None and episodes < 1:
        raise ConfigError(f"episodes={episodes} is out of range; must be >= 1")
    deterministic = coerce("deterministic", settings.get("deterministic", "true"), bool)
    checkpoint = settings.get("checkpoint", "best")
    if checkpoint not in ("best", "latest"):
        raise ConfigError(f"checkpoint={checkpoint!r} is not valid; valid choices: best, latest")
    if not os.path.isfile(os.path.join(args.run_dir, "config.yaml")):
        raise ConfigError(f"{args.run_dir!r} is not a run folder (no config.yaml)")
    if settings.get("render"):
        from teamrl.train.evaluate import render_run

        fps = coerce("fps", settings.get("fps", "0"), int)
        if fps < 0:
            raise ConfigError(f"fps={fps} is out of range; must be >= 0 (0: the env's rate)")
        result = render_run(args.run_dir, settings["render"], episodes or 1, deterministic,
                            checkpoint, fps)
        returns = ", ".join(f"{r:.3f}" for r in result["returns"])
        print(f"[teamrl] rendered {len(result['returns'])} episode(s) of seed 0 "
              f"({result['checkpoint']} checkpoint at {result['env_steps']} env steps; "
              f"return {returns}): {result['frames']} frames written to {result['file']}")
        return 0
    result = evaluate_run(args.run_dir, episodes, deterministic, checkpoint)
    mode = "deterministic" if deterministic else "stochastic"
    for row in result["seeds"]:
        wins = f", win rate {row['win_rate']:.3f}" if "win_rate" in row else ""
        print(f"seed {row['seed']}: return {row['return_mean']:.3f} ± {row['return_std']:.3f} "
              f"(min {row['return_min']:.3f}, max {row['return_max']:.3f}){wins} over "
              f"{result['episodes']} {mode} episodes")
    wins = f", win rate {result['win_rate']:.3f}" if "win_rate" in result else ""
    print(f"[teamrl] mean return {result['return_mean']:.3f}{wins} ({result['checkpoint']} "
          f"checkpoint at {result['env_steps']} env steps); written to {result['file']}")
    return 0


def cmd_export(args) -> int:
    from teamrl.config import coerce

    settings = parse_key_values(args.settings)
    allowed = {"out", "checkpoint", "seed", "overwrite"}
    bad = sorted(set(settings) - allowed)
    if bad:
        raise ConfigError(f"unknown export key {bad[0]!r}" + suggest(bad[0], allowed,
                                                                      "valid keys"))
    if not settings.get("out"):
        raise ConfigError("export needs out=FILE ending in .jaxexport or .npz")
    checkpoint = settings.get("checkpoint", "best")
    if checkpoint not in ("best", "latest"):
        raise ConfigError(f"checkpoint={checkpoint!r} is not valid; valid choices: best, latest")
    seed = coerce("seed", settings["seed"], int) if "seed" in settings else None
    overwrite = coerce("overwrite", settings.get("overwrite", "false"), bool)
    check_output_path(settings["out"], folder=False)
    from teamrl.train.policy import export_policy

    result = export_policy(args.run_dir, settings["out"], checkpoint, seed, overwrite)
    print(f"[teamrl] exported {result['algo']} on {result['env_id']} (seed {result['seed']}, "
          f"{result['checkpoint']} checkpoint at {result['env_steps']} env steps) to "
          f"{result['file']} ({result['bytes']:,} bytes); load it with "
          f"teamrl.load_exported({result['file']!r})")
    return 0


def cmd_plot(args) -> int:
    import re

    from teamrl.config import coerce
    from teamrl.analysis.plots import plot_runs

    setting = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
    run_dirs = [a for a in args.items if not setting.match(a)]
    settings = parse_key_values([a for a in args.items if setting.match(a)])
    allowed = {"out", "x", "y", "ci", "resamples", "seed"}
    bad = sorted(set(settings) - allowed)
    if bad:
        raise ConfigError(f"unknown plot key {bad[0]!r}" + suggest(bad[0], allowed, "valid keys"))
    if not run_dirs:
        raise ConfigError("plot needs at least one RUN_DIR")
    if not settings.get("out"):
        raise ConfigError("plot needs out=FILE ending in .png or .svg")
    check_output_path(settings["out"], folder=False)
    out, groups, notes = plot_runs(
        run_dirs, settings["out"], x=settings.get("x", "env_steps"),
        y=settings.get("y", "return_mean"), ci=coerce("ci", settings.get("ci", "0.95"), float),
        resamples=coerce("resamples", settings.get("resamples", "2000"), int),
        seed=coerce("seed", settings.get("seed", "0"), int))
    for note in notes:
        print(f"teamrl: note: {note}", file=sys.stderr)
    y = settings.get("y", "return_mean")
    for (algo, env_id), g in groups.items():
        if g["grid"] is not None:
            print(f"[teamrl] {env_id}: {algo}, {g['n_seeds']} seed(s) from {len(g['runs'])} "
                  f"run(s), final mean {y} {g['mean'][-1]:.3f} "
                  f"[{g['low'][-1]:.3f}, {g['high'][-1]:.3f}] at {g['grid'][-1]:g}")
    print(f"[teamrl] plot written to {out}")
    return 0


def cmd_report(args) -> int:
    import re

    from teamrl.config import coerce
    from teamrl.analysis.report import DEFAULT_METRIC, write_report

    setting = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
    run_dirs = [a for a in args.items if not setting.match(a)]
    settings = parse_key_values([a for a in args.items if setting.match(a)])
    allowed = {"out", "metric", "resamples", "seed", "norm"}
    bad = sorted(set(settings) - allowed)
    if bad:
        raise ConfigError(f"unknown report key {bad[0]!r}"
                          + suggest(bad[0], allowed, "valid keys"))
    if not run_dirs:
        raise ConfigError("report needs at least one RUN_DIR")
    if not settings.get("out"):
        raise ConfigError("report needs out=DIR")
    check_output_path(settings["out"], folder=True)
    out, result, notes = write_report(
        run_dirs, settings["out"], metric=settings.get("metric") or DEFAULT_METRIC,
        resamples=coerce("resamples", settings.get("resamples", "2000"), int),
        seed=coerce("seed", settings.get("seed", "0"), int), norm=settings.get("norm") or None)
    for note in notes:
        print(f"teamrl: note: {note}", file=sys.stderr)
    for algo, agg in result["aggregate"].items():
        print(f"[teamrl] {algo}: IQM {agg['iqm'][0]:.3f} [{agg['iqm'][1]:.3f}, "
              f"{agg['iqm'][2]:.3f}], mean {agg['mean'][0]:.3f} [{agg['mean'][1]:.3f}, "
              f"{agg['mean'][2]:.3f}] (normalised, {agg['runs']} runs on {agg['envs']} envs)")
    print(f"[teamrl] report written to {out} (summary.md, summary.csv, scores.csv, "
          f"aggregate.png, profiles.png, marl_eval.json)")
    return 0


def cmd_sweep(args) -> int:
    from teamrl.config import coerce
    from teamrl.cli.sweep import run_sweep

    settings = parse_key_values(args.settings)
    bad = sorted(set(settings) - {"jobs", "dry_run", "backend", "address"})
    if bad:
        raise ConfigError(f"unknown sweep key {bad[0]!r}" + suggest(
            bad[0], {"jobs", "dry_run", "backend", "address"}, "valid keys"))
    jobs = coerce("jobs", settings.get("jobs", "1"), int)
    if jobs < 1:
        raise ConfigError(f"jobs={jobs} is out of range; must be >= 1")
    return run_sweep(args.file, jobs=jobs,
                     dry_run=coerce("dry_run", settings.get("dry_run", "false"), bool),
                     backend=settings.get("backend", "local"),
                     address=settings.get("address", ""))


def cmd_list(args) -> int:
    import dataclasses

    from teamrl.algos import ALGORITHMS, DESCRIPTIONS
    from teamrl.config import list_presets
    from teamrl.envs.registry import REGISTRY

    if args.keys:
        from teamrl.train.presets import base_config

        config = base_config(*args.keys)
        rows = []
        for sec_name, sec in config.sections().items():
            for f in dataclasses.fields(sec):
                rows.append({"section": sec_name, "key": f.name, "default": getattr(sec, f.name),
                             "help": f.metadata.get("help", ""),
                             "choices": f.metadata.get("choices")})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                choices = f" [{'|'.join(map(str, r['choices']))}]" if r["choices"] else ""
                print(f"{r['section']:8s} {r['key']}={r['default']!s:<12} {r['help']}{choices}")
        return 0
    info = {
        "algorithms": [{"name": n, "description": DESCRIPTIONS.get(n, ""),
                        "action_kinds": list(ALGORITHMS[n].action_kinds)}
                       for n in sorted(ALGORITHMS)],
        "envs": [{"id": e.env_id, "description": e.description,
                  "options": [f.name for f in dataclasses.fields(e.options)]}
                 for e in REGISTRY.values()]
        + [{"id": "pettingzoo/<module>", "description": "any PettingZoo ParallelEnv: "
            "<module>.parallel_env(**env_kwargs), e.g. pettingzoo/mpe2.simple_spread_v3 (host)",
            "options": ["workers", "env_kwargs", "max_steps"]}],
        "presets": list_presets(),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("algorithms:")
    for a in info["algorithms"]:
        print(f"  {a['name']:12s} {a['description']}")
    print("environments:")
    for e in info["envs"]:
        opts = f"  (options: {', '.join(e['options'])})" if e["options"] else ""
        print(f"  {e['id']:32s} {e['description']}{opts}")
    print("presets (configs/<family>/[<task>/]<algo>):")
    for p in info["presets"]:
        print(f"  {p}")
    return 0


def cmd_install(args) -> int:
    from teamrl.cli.install import TARGETS, InstallError

    if args.target not in TARGETS:
        return _fail(f"install target {args.target!r} is not known; valid: "
                     f"{', '.join(sorted(TARGETS))}")
    try:
        TARGETS[args.target](force=args.force, system=not args.no_system)
    except InstallError as err:
        print(f"teamrl: error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"train": cmd_train, "resume": cmd_resume, "eval": cmd_eval,
                "export": cmd_export, "plot": cmd_plot,
                "report": cmd_report, "sweep": cmd_sweep, "list": cmd_list,
                "install": cmd_install}
    from teamrl.runs import CheckpointError

    try:
        code = handlers[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not in the exit's flush
        return code
    except (ConfigError, CheckpointError) as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print("teamrl: interrupted; the latest checkpoint is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `teamrl list | head -1`: the reader has what it wanted. Stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a descriptor
            pass
        return 1
    except OSError as err:  # disk full, read-only or vanished output: one line, not a trace
        return _fail(_os_error(err), code=1)


def _os_error(err: OSError) -> str:
    """``cannot write PATH: [Errno 28] No space left on device``. A failed write() on an open
    file carries no file name: the innermost file object in the traceback names it."""
    import errno
    import io

    path, frames, tb = err.filename, [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        if path is not None:
            break
        path = next((v.name for v in frame.f_locals.values()
                     if isinstance(v, io.IOBase) and isinstance(getattr(v, "name", None), str)),
                    None)
    verb = "write" if err.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG,
                                    errno.EACCES, errno.EPERM) else "access"
    where = f" {path}" if path is not None else ""
    return f"cannot {verb}{where}: [Errno {err.errno}] {err.strerror or err}"


if __name__ == "__main__":
    sys.exit(main())
