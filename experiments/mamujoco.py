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

from pathlib import Path

import numpy as np

from experiment_runs import (SAVED, Run, add_budget_flags, add_protocol_flag, budget_settings,
                             evaluate_or_reuse, experiment_parser, final_column, grid_main,
                             missing_note, run_facts, run_folder, table_rows, trained_code_and_wall)
from make_results import results_row

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


def main(argv=None):
    parser = experiment_parser(__doc__, runs=SAVED / "mamujoco", note=False)
    add_budget_flags(parser, steps=1_000_000, algos=ALGOS, episodes=10,
                     episodes_help="deterministic evaluation episodes per seed (1000 steps "
                                   "each)")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    add_protocol_flag(parser, "harl", help="harl: evaluate 40 deterministic episodes every 25 "
                      "updates during training, as HARL's published curves; custom: the "
                      "presets' cadence")
    grid_main(parser, argv, "mamujoco", grid, read, write_markdown)


def grid(args) -> list[Run]:
    settings = budget_settings(args.steps, args.seeds, args.eval_protocol)
    return [Run((task, algo), f"{task} {NAMES[algo]}", algo, f"mamujoco/{task}", settings,
                run_folder(args.runs, task.replace("|", "_"), algo, args.steps, args.seeds))
            for task in args.tasks for algo in args.algos]


def read(args, run: Run, info: dict) -> dict:
    """Final training return (last 10 % of log rows) and deterministic evaluation of the
    final policy, per seed."""
    det = evaluate_or_reuse(run.run_dir, args.episodes, True, checkpoint="latest")
    r = {"final_train": final_column(run.run_dir, "return_mean"),
         "eval_det": [s["return_mean"] for s in det["seeds"]], **run_facts(info, run.run_dir)}
    print(f"{run.label}: final train {np.mean(r['final_train']):.0f} "
          f"{[round(v) for v in r['final_train']]}, det eval "
          f"{np.mean(r['eval_det']):.0f}, wall {r['wall_s']:.0f} s", flush=True)
    return r


def results_rows(args, results) -> list[str]:
    """Rows of docs/RESULTS.md (experiments/make_results.py), one per task: each algorithm's
    final training return beside the published numbers at 10M steps."""
    rows = []
    for task in args.tasks:
        cells = {NAMES[a]: results.get((task, a)) for a in args.algos}
        done = {name: r for name, r in cells.items() if r and "final_train" in r}
        if not done:
            continue
        ours = ", ".join(f"{name} {np.mean(r['final_train']):.0f}" for name, r in done.items())
        published = "; ".join(f"{NAMES[a]} {PUBLISHED[(task, a)]}" for a in args.algos
                              if (task, a) in PUBLISHED)
        rows.append(results_row(
            claim=f"Multi-Agent MuJoCo {task} (obs=global): " + ", ".join(
                NAMES[a] for a in args.algos) + " at the shipped (HARL-tuned) presets",
            ours=ours + missing_note(cells)
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
    lines += table_rows(
        [((t, a), [t, NAMES[a]]) for t in args.tasks for a in args.algos], results, 6,
        lambda key, r: [f"{np.mean(r['final_train']):.0f} ± {np.std(r['final_train']):.0f}",
                        f"{np.mean(r['eval_det']):.0f}", PUBLISHED.get(key, "–"),
                        f"{r['wall_s'] / 60:.0f} min"])
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
