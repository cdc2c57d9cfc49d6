"""MAPPO, HAPPO and A2PO on Google Research Football academy_3_vs_1_with_keeper.

For each algorithm in --algos, train --seeds seeds vectorised in one run for --steps env steps
per seed with the shipped `football` presets (HARL's GRF settings; A2PO's from its code),
with the environments stepped by --workers worker processes, then evaluate the final
(``latest``) checkpoint. HARL's published score rates are at 25M steps; this script's budget
is written beside every number. Needs gfootball (`teamrl install football`).

Writes docs/results/football.md (with its docs/RESULTS.md rows: see
experiments/make_results.py) and docs/results/football.png (score-rate curves with 95 %
bootstrap bands over seeds). Run folders go under --runs (default experiments/saved/football,
kept by git without checkpoints: experiment_runs.py); a finished run with the same settings is
not trained again. ``--report-only`` rebuilds the page from the saved runs.

    python experiments/football.py --steps 200000 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from experiment_runs import (SAVED, code_version, evaluate_or_reuse, final_column,
                             trained_code_and_wall, train_or_skip)
from make_results import require_saved_run, results_row, reuse_saved_argv, save_argv

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ["mappo", "happo", "a2po"]
NAMES = {"mappo": "MAPPO", "happo": "HAPPO", "a2po": "A2PO"}
SCENARIO = "academy_3_vs_1_with_keeper"
# Evaluation score rate at 25M env steps (HARL, REFERENCE.md §5); A2PO reports none here.
PUBLISHED = {"happo": "94.7 %", "mappo": "88.0 %"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200_000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--workers", type=int, default=2, help="env worker processes")
    parser.add_argument("--episodes", type=int, default=20,
                        help="evaluation episodes per seed of the final policy")
    parser.add_argument("--runs", default=str(SAVED / "football"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--note", default="", help="a sentence added to the page")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild the page from the saved runs")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = reuse_saved_argv(parser, argv, lambda a: Path(a.runs) / "argv.json")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    code = code_version()
    from teamrl.plots import plot_runs

    env_id = f"football/{SCENARIO}"
    results, run_dirs = {}, []
    start = time.time()
    for algo in args.algos:
        # Evaluation during training: 10 episodes per seed every 10 log rows (the presets'
        # 100 episodes per evaluation would cost more env steps than the training budget).
        settings = {"seeds": str(args.seeds), "total_steps": str(args.steps),
                    "workers": str(args.workers), "eval_episodes": "10", "eval_every": "10"}
        run_dir = Path(args.runs) / f"{SCENARIO}_{algo}_steps{args.steps}_seeds{args.seeds}"
        if args.report_only:
            require_saved_run(run_dir, algo, env_id, settings)
        try:
            info = train_or_skip(run_dir, algo, env_id, settings, code)
            stoch = evaluate_or_reuse(run_dir, args.episodes, False, checkpoint="latest")
        except Exception as err:  # report and go on with the other algorithms
            results[algo] = {"error": f"{type(err).__name__}: {err}"}
            print(f"{NAMES[algo]} FAILED: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc(file=sys.stderr)
            continue
        run_dirs.append(run_dir)
        results[algo] = {
            "train_score_rate": final_column(run_dir, "score_rate"),
            "eval_score_rate": [s["score_rate"] for s in stoch["seeds"]],
            "eval_goals_for": [s["goals_for"] for s in stoch["seeds"]],
            "eval_passes": [s["passes"] for s in stoch["seeds"]],
            "eval_pass_rate": [s["pass_rate"] for s in stoch["seeds"]],
            "eval_assists": [s["assists"] for s in stoch["seeds"]],
            "wall_s": info["wall_s"], "steps_per_s": info.get("steps_per_s"),
            "load": info.get("load"), "code": info.get("code"), "run_dir": str(run_dir)}
        r = results[algo]
        print(f"{NAMES[algo]}: training score rate {np.mean(r['train_score_rate']):.3f} "
              f"{[round(v, 3) for v in r['train_score_rate']]}, eval "
              f"{np.mean(r['eval_score_rate']):.3f}, wall {r['wall_s'] / 60:.0f} min",
              flush=True)
    if run_dirs:
        plot_runs(run_dirs, out / "football.png", y="score_rate")
    (Path(args.runs) / "results.json").write_text(json.dumps(results, indent=2))
    if not args.report_only:
        save_argv(Path(args.runs) / "argv.json", argv)
    write_markdown(out / "football.md", args, results, code, time.time() - start)


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def results_rows(args, results) -> list[str]:
    """The docs/RESULTS.md row: each algorithm's score rate beside HARL's at 25M steps."""
    done = [a for a in args.algos if "eval_score_rate" in results.get(a, {})]
    if not done:
        return []
    ours = ", ".join(f"{NAMES[a]} {100 * _mean(results[a]['eval_score_rate']):.1f} %"
                     for a in done)
    failed = [NAMES[a] for a in args.algos if a not in done]
    return [results_row(
        claim=f"Google Research Football {SCENARIO}: HAPPO ≥ MAPPO in score rate (HARL); "
              "A2PO alongside, shipped presets",
        ours=ours + (f" (failed: {', '.join(failed)})" if failed else "")
        + f"; stochastic evaluation score rate, {args.episodes} episodes per seed, "
          "mean over seeds",
        published="HAPPO 94.7 %, MAPPO 88.0 % at 25M steps (HARL)",
        budget=f"{args.steps:,} env steps per seed", seeds=str(args.seeds),
        metric=f"stochastic evaluation score rate of the final policy, {args.episodes} "
               "episodes per seed", published_metric="same")]


def write_markdown(path: Path, args, results, code: str, wall: float):
    code, wall = trained_code_and_wall(results, code, wall)
    lines = [
        f"# Google Research Football: {', '.join(NAMES[a] for a in args.algos)} on {SCENARIO}",
        "",
        f"`python experiments/football.py --steps {args.steps} --seeds {args.seeds} "
        f"--workers {args.workers}` (code {code}); shipped `football` presets (HARL's GRF "
        "settings; A2PO's from its code), gfootball 2.10.2, simple115v2 observations, 3 "
        f"controlled players, envs stepped by {args.workers} worker processes on this 2-core "
        f"machine. Budget: **{args.steps:,} env steps per seed**, {args.seeds} seeds "
        f"({wall / 3600:.1f} h of training in all): gfootball steps a few hundred times a "
        "second per core, so this is the largest budget one session affords. HARL's numbers "
        "are at **25M** steps: ours are early points of the same curves, not final "
        "performance.", ""]
    if args.note:
        lines += [args.note, ""]
    lines += [
        "| algorithm | training score rate (last 10 % of rows) | eval score rate | goals | "
        "passes | pass rate | assists | HARL at 25M | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for algo in args.algos:
        r = results.get(algo)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {NAMES[algo]} | failed: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {NAMES[algo]} | {100 * _mean(r['train_score_rate']):.1f} % | "
            f"{100 * _mean(r['eval_score_rate']):.1f} % | {_mean(r['eval_goals_for']):.2f} | "
            f"{_mean(r['eval_passes']):.2f} | {100 * _mean(r['eval_pass_rate']):.0f} % | "
            f"{_mean(r['eval_assists']):.2f} | {PUBLISHED.get(algo, '–')} | "
            f"{r['wall_s'] / 60:.0f} min |")
    lines += ["", "Score rate: the fraction of episodes in which the team scored (an academy "
              "episode ends at the first goal). Evaluation: "
              f"{args.episodes} stochastic episodes per seed of the final policy (HARL "
              "evaluates stochastic policies too); goals, passes, pass rate and assists are "
              "per evaluation episode (definitions in teamrl/envs/football.py).", "",
              "![score rate](football.png)", ""]
    lines += results_rows(args, results) + [""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
