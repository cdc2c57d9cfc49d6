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

from pathlib import Path

import numpy as np

from experiment_runs import (SAVED, Run, add_budget_flags, budget_settings, evaluate_or_reuse,
                             experiment_parser, final_column, grid_main, missing_note, run_facts,
                             run_folder, table_rows, trained_code_and_wall)
from make_results import results_row

ALGOS = ["mappo", "happo", "a2po"]
NAMES = {"mappo": "MAPPO", "happo": "HAPPO", "a2po": "A2PO"}
SCENARIO = "academy_3_vs_1_with_keeper"
# Evaluation score rate at 25M env steps (HARL, REFERENCE.md §5); A2PO reports none here.
PUBLISHED = {"happo": "94.7 %", "mappo": "88.0 %"}
# What each stochastic evaluation episode counts (teamrl/envs/football.py), kept per seed.
EVAL_COUNTS = ["score_rate", "goals_for", "passes", "pass_rate", "assists"]


def main(argv=None):
    parser = experiment_parser(__doc__, runs=SAVED / "football")
    add_budget_flags(parser, steps=200_000, algos=ALGOS, episodes=20,
                     episodes_help="evaluation episodes per seed of the final policy")
    parser.add_argument("--workers", type=int, default=2, help="env worker processes")
    grid_main(parser, argv, "football", grid, read, write_markdown, y="score_rate")


def grid(args) -> list[Run]:
    # Evaluation during training: 10 episodes per seed every 10 log rows (the presets'
    # 100 episodes per evaluation would cost more env steps than the training budget).
    settings = {**budget_settings(args.steps, args.seeds), "workers": str(args.workers),
                "eval_episodes": "10", "eval_every": "10"}
    return [Run(algo, NAMES[algo], algo, f"football/{SCENARIO}", settings,
                run_folder(args.runs, SCENARIO, algo, args.steps, args.seeds))
            for algo in args.algos]


def read(args, run: Run, info: dict) -> dict:
    """Training score rate (last 10 % of log rows) and what the stochastic evaluation of the
    final policy counts, per seed."""
    stoch = evaluate_or_reuse(run.run_dir, args.episodes, False, checkpoint="latest")
    r = {"train_score_rate": final_column(run.run_dir, "score_rate"),
         **{f"eval_{count}": [s[count] for s in stoch["seeds"]] for count in EVAL_COUNTS},
         **run_facts(info, run.run_dir)}
    print(f"{run.label}: training score rate {np.mean(r['train_score_rate']):.3f} "
          f"{[round(v, 3) for v in r['train_score_rate']]}, eval "
          f"{np.mean(r['eval_score_rate']):.3f}, wall {r['wall_s'] / 60:.0f} min", flush=True)
    return r


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def results_rows(args, results) -> list[str]:
    """The docs/RESULTS.md row: each algorithm's score rate beside HARL's at 25M steps."""
    cells = {NAMES[a]: results.get(a) for a in args.algos}
    done = {name: r for name, r in cells.items() if r and "eval_score_rate" in r}
    if not done:
        return []
    ours = ", ".join(f"{name} {100 * _mean(r['eval_score_rate']):.1f} %"
                     for name, r in done.items())
    return [results_row(
        claim=f"Google Research Football {SCENARIO}: HAPPO ≥ MAPPO in score rate (HARL); "
              "A2PO alongside, shipped presets",
        ours=ours + missing_note(cells) + "; stochastic evaluation score rate, "
        f"{args.episodes} episodes per seed, mean over seeds",
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
    lines += table_rows(
        [(a, [NAMES[a]]) for a in args.algos], results, 9,
        lambda algo, r: [f"{100 * _mean(r['train_score_rate']):.1f} %",
                         f"{100 * _mean(r['eval_score_rate']):.1f} %",
                         f"{_mean(r['eval_goals_for']):.2f}", f"{_mean(r['eval_passes']):.2f}",
                         f"{100 * _mean(r['eval_pass_rate']):.0f} %",
                         f"{_mean(r['eval_assists']):.2f}", PUBLISHED.get(algo, "–"),
                         f"{r['wall_s'] / 60:.0f} min"])
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
