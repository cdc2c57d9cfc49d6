"""HAPPO, HATRPO, MAPPO and A2PO on Multi-Agent MuJoCo (obs=global), shipped presets.

For each task in --tasks and algorithm in --algos, train --seeds seeds vectorised in one run
for --steps env steps per seed with the shipped `mamujoco` presets (HARL's tuned settings;
A2PO's from its code), then evaluate the final (``latest``) checkpoint deterministically.
The published numbers (HARL and the HATRPO paper, REFERENCE.md §5) are at 10M steps; this
script's budget is written beside every number.

Writes docs/results/mamujoco.md (with its docs/RESULTS.md rows, one per task: see
experiments/make_results.py) and docs/results/mamujoco.png (learning curves with 95 % bootstrap
bands over seeds, `teamrl plot`'s code). Run folders go under --runs (default
experiments/saved/mamujoco, kept by git without checkpoints: experiment_runs.py); a finished
run with the same settings is not trained again, so an interrupted invocation can be re-run,
and runs can be spread over sessions. ``--report-only`` trains nothing: it rebuilds the page
from the saved runs (alone, with the arguments of the invocation that saved them).

    python experiments/mamujoco.py --steps 1000000 --seeds 3
    python experiments/mamujoco.py --algos happo --tasks HalfCheetah-2x3 --steps 200000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from experiment_runs import (SAVED, code_version, evaluate_or_reuse, trained_code_and_wall,
                             train_or_skip)
from make_results import require_saved_run, results_row, reuse_saved_argv, save_argv

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ["happo", "hatrpo", "mappo", "a2po"]
TASKS = ["HalfCheetah-2x3", "Walker2d-2x3"]
NAMES = {"happo": "HAPPO", "hatrpo": "HATRPO", "mappo": "MAPPO", "a2po": "A2PO"}
# Episode return at 10M steps (REFERENCE.md §5): HARL's paper, and the HATRPO paper.
PUBLISHED = {
    ("HalfCheetah-2x3", "happo"): "≈7000 (HARL); ≈4400 (HATRPO paper)",
    ("HalfCheetah-2x3", "mappo"): "≈6900 (HARL); ≈3200 (HATRPO paper)",
    ("HalfCheetah-2x3", "hatrpo"): "≈5400 (HARL); ≈5100 (HATRPO paper)",
    ("Walker2d-2x3", "happo"): "≈5400 (HARL); ≈3000 (HATRPO paper)",
    ("Walker2d-2x3", "mappo"): "≈5000 (HARL); ≈2900 (HATRPO paper)",
    ("Walker2d-2x3", "hatrpo"): "≈3700 (HARL); ≈4500 (HATRPO paper)",
}


def final_returns(run_dir: Path) -> list[float]:
    """Per seed: mean training return over the last 10 % of log rows."""
    from teamrl.runs import read_metrics

    per_seed: dict = {}
    for row in read_metrics(run_dir):
        if np.isfinite(row["return_mean"]):
            per_seed.setdefault(int(row["seed"]), []).append(row["return_mean"])
    return [float(np.mean(v[-max(1, len(v) // 10):])) for _, v in sorted(per_seed.items())]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--episodes", type=int, default=10,
                        help="deterministic evaluation episodes per seed (1000 steps each)")
    parser.add_argument("--eval-protocol", default="custom", choices=["custom", "harl"],
                        help="harl: evaluate 40 deterministic episodes every 25 updates during "
                        "training, as HARL's published curves; custom: the presets' cadence")
    parser.add_argument("--runs", default=str(SAVED / "mamujoco"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild the page from the saved runs")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = reuse_saved_argv(parser, argv, lambda a: Path(a.runs) / "argv.json")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    code = code_version()
    from teamrl.plots import plot_runs

    results, run_dirs = {}, []
    start = time.time()
    for task in args.tasks:
        for algo in args.algos:
            env_id = f"mamujoco/{task}"
            settings = {"seeds": str(args.seeds), "total_steps": str(args.steps)}
            if args.eval_protocol != "custom":
                # Logged every 5 updates, evaluated every 5 rows: the protocol's 25 updates.
                settings.update(eval_protocol=args.eval_protocol, log_every="5", eval_every="5")
            run_dir = Path(args.runs) / f"{task.replace('|', '_')}_{algo}_steps{args.steps}" \
                                        f"_seeds{args.seeds}"
            if args.report_only:
                require_saved_run(run_dir, algo, env_id, settings)
            try:
                info = train_or_skip(run_dir, algo, env_id, settings, code)
                det = evaluate_or_reuse(run_dir, args.episodes, True, checkpoint="latest")
            except Exception as err:  # report and go on with the other runs
                results[(task, algo)] = {"error": f"{type(err).__name__}: {err}"}
                print(f"{task} {NAMES[algo]} FAILED: {type(err).__name__}: {err}", flush=True)
                traceback.print_exc(file=sys.stderr)
                continue
            run_dirs.append(run_dir)
            results[(task, algo)] = {
                "final_train": final_returns(run_dir),
                "eval_det": [s["return_mean"] for s in det["seeds"]],
                "wall_s": info["wall_s"], "steps_per_s": info.get("steps_per_s"),
                "load": info.get("load"), "code": info.get("code"), "run_dir": str(run_dir)}
            r = results[(task, algo)]
            print(f"{task} {NAMES[algo]}: final train {np.mean(r['final_train']):.0f} "
                  f"{[round(v) for v in r['final_train']]}, det eval "
                  f"{np.mean(r['eval_det']):.0f}, wall {r['wall_s']:.0f} s", flush=True)
    if run_dirs:
        plot_runs(run_dirs, out / "mamujoco.png")
    (Path(args.runs) / "results.json").write_text(json.dumps(
        {f"{t} {a}": r for (t, a), r in results.items()}, indent=2))
    if not args.report_only:
        save_argv(Path(args.runs) / "argv.json", argv)
    write_markdown(out / "mamujoco.md", args, results, code, time.time() - start)


def results_rows(args, results) -> list[str]:
    """Rows of docs/RESULTS.md (experiments/make_results.py), one per task: each algorithm's
    final training return beside the published numbers at 10M steps."""
    rows = []
    for task in args.tasks:
        done = [a for a in args.algos if "final_train" in results.get((task, a), {})]
        if not done:
            continue
        ours = ", ".join(f"{NAMES[a]} {np.mean(results[(task, a)]['final_train']):.0f}"
                         for a in done)
        failed = [NAMES[a] for a in args.algos if a not in done]
        published = "; ".join(f"{NAMES[a]} {PUBLISHED[(task, a)]}" for a in args.algos
                              if (task, a) in PUBLISHED)
        rows.append(results_row(
            claim=f"Multi-Agent MuJoCo {task} (obs=global): " + ", ".join(
                NAMES[a] for a in args.algos) + " at the shipped (HARL-tuned) presets",
            ours=ours + (f" (failed: {', '.join(failed)})" if failed else "")
            + "; final training return (last 10 % of log rows), mean over seeds",
            published=(published + " — all at 10M steps") if published else "–",
            budget=f"{args.steps:,} env steps per seed", seeds=str(args.seeds),
            metric="final training return of the stochastic policy (mean of the last 10 % of "
                   "log rows per seed)",
            published_metric="HARL: deterministic evaluation return (mean action, 40 episodes "
                             "every 25 updates); the HATRPO paper's evaluation curves",
            differs="ours are training returns of the stochastic policy at a tenth of the "
                    "budget, not the deterministic evaluation HARL plots"))
    return rows


def write_markdown(path: Path, args, results, code: str, wall: float):
    code, _ = trained_code_and_wall(results, code, wall)
    lines = [
        "# Multi-Agent MuJoCo: HAPPO, HATRPO, MAPPO, A2PO (obs=global)", "",
        f"`python experiments/mamujoco.py --steps {args.steps} --seeds {args.seeds} --tasks "
        f"{' '.join(args.tasks)}` "
        f"(code {code}); shipped `mamujoco` presets (HARL's tuned settings, A2PO's from its "
        "code), 20 envs × 200 steps per update, host runner with one worker on this 2-core "
        f"machine. Budget: **{args.steps:,} env steps per seed**, {args.seeds} seeds; the "
        "published numbers are at **10M** steps, so ours are early points of the same "
        "curves, not final performance.", "",
        "| task | algorithm | final training return (mean ± sd over seeds) | deterministic "
        "eval | published at 10M | wall time (all seeds) |",
        "| --- | --- | --- | --- | --- | --- |"]
    for task in args.tasks:
        for algo in args.algos:
            r = results.get((task, algo))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {task} | {NAMES[algo]} | failed: {r['error']} | | | |")
                continue
            lines.append(
                f"| {task} | {NAMES[algo]} | {np.mean(r['final_train']):.0f} ± "
                f"{np.std(r['final_train']):.0f} | {np.mean(r['eval_det']):.0f} | "
                f"{PUBLISHED.get((task, algo), '–')} | {r['wall_s'] / 60:.0f} min |")
    lines += ["", "Final training return: mean of the last 10 % of logged training-episode "
              "returns per seed. Deterministic eval: "
              f"{args.episodes} episodes per seed of the final policy's mean action. Wall "
              "times are as measured, with whatever else the machine ran (1-minute load "
              "average before and after each run: "
              + ", ".join(f"{NAMES[a]} {r['load'][0]:.1f}→{r['load'][1]:.1f}"
                          for (t, a), r in results.items() if r.get("load")) + ").", "",
              "![curves](mamujoco.png)", ""]
    lines += results_rows(args, results) + [""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
