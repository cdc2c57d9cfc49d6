"""TNPG, TRPO and PPO on single-agent Gymnasium MuJoCo tasks (teams of one), shipped presets.

For each task in --tasks and algorithm in --algos, train --seeds seeds vectorised in one run
for --steps env steps per seed with the shipped `gymnasium` presets (TRPO and TNPG: Duan et
al. 2016's rllab settings, 50,000 steps per update; PPO: the PPO paper's MuJoCo settings,
2,048 steps per update), then report each seed's final training return and the deterministic
evaluation of the final policy that training records at its end. Published numbers are put
beside ours with what differs: Duan et al.'s Table 1 is on rllab's versions of the tasks
(other rewards, observations and a 500-step horizon) and averages the return over all 500
iterations (25M steps); the PPO paper's Figure 3 is on Gymnasium's predecessors (`-v1`) at
1M steps and can only be read off a plot.

Writes docs/results/single_agent.md (with a machine-readable `<!-- results-row {json} -->` line
at the top, see :func:`results_row`) and docs/results/single_agent.png (learning curves with
95 % bootstrap bands over seeds, `teamrl plot`'s code). Run folders go under --runs (default
experiments/saved/single_agent, kept by git without checkpoints: experiment_runs.py); a run
whose folder already finished with the same request is not trained again, so an interrupted
invocation can simply be re-run, and runs can be spread over sessions. `--report-only` trains
nothing and writes the page from the finished runs it finds.

    python experiments/single_agent.py --steps 1000000 --seeds 3
    python experiments/single_agent.py --tasks Hopper-v5 --seeds 1 --steps 20000 \\
        --set trpo:num_envs=10 tnpg:num_envs=10 --runs /tmp/sa_smoke --out /tmp/sa_smoke
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from experiment_runs import (SAVED, Run, add_budget_flags, by_name, code_version, command_block,
                             experiment_parser, finished, page_folder, parse_flags, run_folder,
                             run_grid, save_results, steady_rate, table_rows)

ALGOS = ["tnpg", "trpo", "ppo"]
TASKS = ["Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Swimmer-v5"]
NAMES = {"tnpg": "TNPG", "trpo": "TRPO", "ppo": "PPO"}

# Duan et al. 2016, Table 1: rllab's Swimmer, Hopper, Walker and Half-Cheetah (500-step
# horizon, rllab's own rewards and observations), performance = mean undiscounted return over
# all trajectories of all 500 training iterations of 50,000 steps (25M steps), best of the two
# best hyperparameter settings of a grid search.
DUAN_TABLE1 = {
    "trpo": {"Hopper-v5": 1183, "Walker2d-v5": 1354, "HalfCheetah-v5": 1914, "Swimmer-v5": 96},
    "tnpg": {"Hopper-v5": 1155, "Walker2d-v5": 1383, "HalfCheetah-v5": 1730, "Swimmer-v5": 96},
}
# The PPO paper (Schulman et al. 2017), Figure 3, PPO (clip 0.2) at 1M steps on the `-v1`
# tasks: approximate readings of the plot, as given by sony/nnabla-rl's PPO reproduction
# (reproductions/.../ppo README: "rough estimate from the Figure 3"). Not read off the figure
# in this repository; treat them as +-10 % at best.
PPO_FIG3 = {"Hopper-v5": 2200, "Walker2d-v5": 3400, "HalfCheetah-v5": 1800, "Swimmer-v5": 110}
BATCH = {"tnpg": "50 envs × 1,000 steps", "trpo": "50 envs × 1,000 steps",
         "ppo": "8 envs × 256 steps"}
# --small-batch: TRPO also with 2/25 of Duan et al.'s batch (4 envs x 1,000 steps, 250 updates
# in 1M steps; 4,000 keeps the preset's 16 critic minibatches whole), to show what the same
# trust-region step reaches when 1M steps buy it more updates
SMALL_BATCH_ENVS = 4
SMALL_BATCH_ALGOS = ("trpo",)
SMALL = "-batch4000"  # label suffix and run-folder tag of those runs


def name_of(label: str) -> str:
    """'trpo' -> 'TRPO', 'trpo-batch4000' -> 'TRPO (4k batch)'."""
    algo, small, _ = label.partition(SMALL)
    return NAMES[algo] + (" (4k batch)" if small else "")


def small_labels(algos) -> list[str]:
    return [a + SMALL for a in algos if a in SMALL_BATCH_ALGOS]


def labels_of(task: str, args) -> list[str]:
    """The rows of ``task``: every --algos entry, then its small-batch variants."""
    return list(args.algos) + (small_labels(args.algos) if task in args.small_batch else [])


# ------------------------------------------------------------------------------ runs
def settings_of(label: str, args) -> dict:
    """The request of one run (``label``: an algorithm, or one with the small-batch suffix): the
    budget, evaluation size, the small batch and any --set overrides."""
    algo, small, _ = label.partition(SMALL)
    settings = {"seeds": str(args.seeds), "total_steps": str(args.steps),
                "eval_episodes": str(args.episodes)}
    if small:
        settings["num_envs"] = str(SMALL_BATCH_ENVS)
    for item in args.set:
        head, sep, rest = item.partition(":")
        scope, assignment = (head, rest) if sep and head in ALGOS else ("", item)
        if scope and scope != algo:
            continue
        key, eq, value = assignment.partition("=")
        if not eq or not key:
            raise SystemExit(f"--set {item!r} is not of the form [ALGO:]KEY=VALUE")
        settings[key.strip()] = value
    return settings


def read_run(run_dir: Path) -> dict:
    """Per-seed numbers of a finished run folder, read from its metrics.csv."""
    from teamrl.runs import read_config, read_metrics

    run = read_config(run_dir)["run"]
    batch = int(run["num_envs"]) * int(run["rollout_length"])
    per_seed: dict = {}
    for row in read_metrics(run_dir):
        per_seed.setdefault(int(row["seed"]), []).append(row)
    final_train, lifetime, final_eval, curves = [], [], [], []
    sps = {}
    for _, rows in sorted(per_seed.items()):
        rows = sorted(rows, key=lambda r: r["env_steps"])
        returns = [r["return_mean"] for r in rows if math.isfinite(r["return_mean"])]
        # the mean of the last 10 % (at least one) of the logged training returns
        final_train.append(float(np.mean(returns[-max(1, len(returns) // 10):]))
                           if returns else math.nan)
        # Duan et al.'s metric: mean return over every training episode of the run
        weighted = [(r["return_mean"], r["episodes"]) for r in rows
                    if math.isfinite(r["return_mean"]) and r.get("episodes", 0) > 0]
        lifetime.append(float(sum(v * n for v, n in weighted) / sum(n for _, n in weighted))
                        if weighted else math.nan)
        evals = [r.get("eval_return_det", math.nan) for r in rows]
        evals = [v for v in evals if isinstance(v, float) and math.isfinite(v)]
        final_eval.append(evals[-1] if evals else math.nan)
        curves.append(([r["env_steps"] for r in rows], [r["return_mean"] for r in rows]))
        for r in rows:
            sps[r["env_steps"]] = r["steps_per_s"]
    steps = sorted(sps)
    rates = [sps[s] for s in steps]
    return {"final_train": final_train, "lifetime": lifetime, "eval_det": final_eval,
            "env_steps": int(steps[-1]) if steps else 0, "batch": batch,
            "updates": int(steps[-1]) // batch if steps else 0,
            "steps_per_s": steady_rate(rates) if rates else math.nan}


def interval(values) -> tuple[float, float, float]:
    """Mean over seeds and its 95 % percentile-bootstrap interval (teamrl.analysis.stats)."""
    from teamrl.analysis.stats import mean_interval

    values = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    point, low, high = mean_interval([values], ci=0.95, resamples=2000, seed=0)
    return float(point), float(low), float(high)


# ------------------------------------------------------------------------------ report
def _ci(values, digits: int = 0) -> str:
    point, low, high = interval(values)
    if not math.isfinite(point):
        return "–"
    if len([v for v in values if math.isfinite(v)]) == 1:
        return f"{point:.{digits}f} (1 seed)"
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _updates_text(results: dict, tasks, labels) -> str:
    """'TNPG 20 updates of 50,000 steps, ...' from the runs that finished (first task's)."""
    parts = []
    for label in labels:
        done = [results[(t, label)] for t in tasks
                if (t, label) in results and "batch" in results[(t, label)]]
        if done:
            r = done[0]
            parts.append(f"{name_of(label)} {r['updates']} "
                         f"update{'s' if r['updates'] != 1 else ''} of {r['batch']:,} steps")
    return ", ".join(parts) or "no finished runs"


def results_row(results: dict, tasks, algos, steps: int, seeds: int,
                small_batch=()) -> dict:
    """The section's row for docs/RESULTS.md (collected by experiments/make_results.py):
    dict(claim, where, ours, published, budget, seeds), all strings but ``seeds``.
    The small-batch variants (tasks in ``small_batch``) follow the preset rows."""
    ours = []
    labels = list(algos) + (small_labels(algos) if small_batch else [])
    for label in labels:
        cells = []
        for task in tasks if SMALL not in label else [t for t in tasks if t in small_batch]:
            r = results.get((task, label))
            if r is None or "error" in r:
                cells.append(f"{task.split('-')[0]} {'failed' if r else 'not run'}")
                continue
            cells.append(f"{task.split('-')[0]} {_ci(r['final_train'])}")
        ours.append(f"{name_of(label)}: " + ", ".join(cells))
    published = []
    for algo in algos:
        if algo in DUAN_TABLE1:
            published.append(f"{NAMES[algo]} (Duan et al. 2016 Table 1, rllab tasks, mean over "
                             "25M steps of training): " + ", ".join(
                                 f"{t.split('-')[0]} {DUAN_TABLE1[algo][t]}" for t in tasks))
    if "ppo" in algos:
        published.append("PPO (PPO paper Fig. 3, -v1 tasks at 1M steps, approximate readings): "
                         + ", ".join(f"{t.split('-')[0]} ≈{PPO_FIG3[t]}" for t in tasks))
    return {
        "claim": "One agent as a team of one: TNPG, TRPO (Duan et al. 2016 settings) and PPO "
                 "(PPO paper settings) learn Gymnasium MuJoCo locomotion",
        # "where" is filled in by make_results.py (a link here would break inside this page)
        "ours": "final training return, mean [95 % bootstrap CI over seeds]: "
                + "; ".join(ours),
        "published": "; ".join(published),
        "budget": f"{steps:,} env steps per seed (" + _updates_text(results, tasks, labels)
                  + ")",
        "seeds": str(seeds),
        "metric": "final training return (last 10 % of log rows), mean [95 % bootstrap CI "
                  "over seeds]",
        "published_metric": "Duan et al. Table 1: the return averaged over all training "
                            "iterations; PPO paper Fig. 3: training return at 1M steps, read "
                            "from the figure",
        "differs": "Duan et al. average over the whole run, so their numbers sit below a "
                   "final return, and rllab's tasks are not Gymnasium's -v4/-v5",
    }


def write_markdown(path: Path, args, results: dict, code: str, wall: float, log: list[str]):
    row = results_row(results, args.tasks, args.algos, args.steps, args.seeds,
                      args.small_batch)
    all_labels = list(dict.fromkeys(label for task in args.tasks
                                    for label in labels_of(task, args)))
    lines = [
        f"<!-- results-row {json.dumps(row, ensure_ascii=False)} -->",
        "## One agent as a team of one: TNPG, TRPO and PPO on Gymnasium MuJoCo",
        "",
        "**Setup.** " + ", ".join(NAMES[a] for a in args.algos) + " on "
        + ", ".join(f"`gymnasium/{t}`" for t in args.tasks)
        + f", {args.seeds} seed(s) trained together in one run, {args.steps:,} env steps per "
        "seed, the shipped presets as they are"
        + (" plus `" + " ".join(args.set) + "`" if args.set else "") + ". "
        "TNPG and TRPO use `teamrl/configs/gymnasium/{tnpg,trpo}.yaml`: Duan et al. (2016)'s "
        "rllab settings (δ 0.01, 50,000 steps per update, 100-50-25 tanh policy, γ 0.99, "
        "GAE λ 1, CG 10 iterations with damping 1e-5; TRPO backtracks 0.8 × up to 15 times) "
        "with a learned value network instead of rllab's linear baseline (the YAML files say "
        "where each number comes from and what could not be verified). PPO uses "
        "`teamrl/configs/gymnasium/ppo.yaml`: the PPO paper's MuJoCo settings (2,048 steps "
        "per update, 10 epochs of 64-sample minibatches, lr 3e-4, clip 0.2, λ 0.95, 64-64 "
        "tanh, observation normalisation as in openai/baselines). Episodes end at Gymnasium's "
        "1,000-step limit (a truncation, bootstrapped) or when the robot falls.",
        "",
        f"**Budget.** {args.steps:,} env steps per seed: "
        + _updates_text(results, args.tasks, all_labels) + ". Duan et al. ran 500 updates "
        "of 50,000 steps (25M); at 1M steps the presets give TNPG and TRPO 20 updates against "
        "PPO's 488, so this compares sample efficiency at Duan et al.'s batch size, not what "
        "TNPG and TRPO reach at their own budget."
        + (" The *4k batch* rows (" + ", ".join(args.small_batch) + ") run the TRPO preset "
           f"with `num_envs={SMALL_BATCH_ENVS}`: 4,000 steps per update, so 12.5 times the "
           "updates in the same steps, everything else (δ, networks, CG, critic fitting) "
           "unchanged; they have no published counterpart." if args.small_batch else ""),
        "",
        "**Columns.** *Final training*: per seed, the mean of the last 10 % of the logged "
        "training `return_mean` values (undiscounted episode returns of the episodes that "
        "ended in those log chunks); *deterministic eval*: the evaluation training runs at its "
        f"end ({args.episodes} episodes per seed, mean action); *all training*: per seed, "
        "the mean return over every training episode of the run, the form of Duan et al.'s "
        "metric (on their 25M-step budget, not ours). Each cell is the mean over seeds with "
        "a 95 % percentile-bootstrap interval over seeds "
        "(`teamrl.analysis.stats.mean_interval`, 2,000 "
        f"resamples; with {args.seeds} seed(s) it cannot reach beyond the seeds' own range, so "
        "read it as the spread of the seeds). *Env-steps/s*: median over log chunks after the "
        "first, all seeds together, on the 2-core CPU machine shared with other jobs.",
        "",
        "**Published numbers, and why they are not the same quantity.** *Duan et al. 2016, "
        "Table 1* (TNPG, TRPO): rllab's Swimmer, Hopper, Walker and Half-Cheetah, which are "
        "not Gymnasium's `-v5` tasks (other reward terms and observations, a 500-step "
        "horizon), and the number is the mean return over all trajectories of all 500 "
        "iterations × 50,000 steps (25M steps), after a per-category hyperparameter search. "
        "*PPO paper, Figure 3* (PPO, clip 0.2): the `-v1` tasks of gym/mujoco-py at 1M steps; "
        "the values are approximate readings of the plot (sony/nnabla-rl's PPO reproduction "
        "README, \"rough estimate from the Figure 3\"; ±10 % at best), not numbers the paper "
        "prints.",
        "",
        "**Swimmer.** With the discount of every preset here (γ 0.99), Gymnasium's Swimmer "
        "is known to be hard: the gait that swims fast pays off over longer horizons than "
        "γ 0.99 weighs (Franceschetti et al. 2022, \"Making Reinforcement "
        "Learning Work on Swimmer\", arXiv:2208.07587); RL Zoo's tuned PPO for it uses "
        "γ 0.9999. The presets keep the papers' γ, so Swimmer rows test the papers' settings, "
        "not what the algorithms can reach on it." if "Swimmer-v5" in args.tasks else "",
        "",
        "| task | algorithm | final training | deterministic eval | all training | per-seed "
        "final training | published | env-steps/s | wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def numbers(key, r) -> list[str]:
        task, label = key
        if SMALL in label:
            published = "–"
        elif label in DUAN_TABLE1:
            published = f"{DUAN_TABLE1[label][task]} (Duan et al., rllab, 25M-step mean)"
        else:
            published = f"≈{PPO_FIG3[task]} (PPO paper Fig. 3, -v1, 1M)"
        return [_ci(r["final_train"]), _ci(r["eval_det"]), _ci(r["lifetime"]),
                ", ".join(f"{v:.0f}" for v in r["final_train"]), published,
                f"{r['steps_per_s']:,.0f}",
                f"{r['wall_s'] / 60:.1f} min" if r.get("wall_s") else "–"]

    lines += table_rows([((task, label), [task, name_of(label)]) for task in args.tasks
                         for label in labels_of(task, args)], results, 9, numbers,
                        absent="not run")
    lines += [
        "",
        "![learning curves](single_agent.png)",
        "",
        "*Training return (`return_mean`) against env steps per seed: mean over seeds, band = "
        "95 % bootstrap interval over seeds (`teamrl.analysis.plots.plot_runs`).*",
        "",
    ]
    lines += command_block(
        [f"python experiments/single_agent.py --steps {args.steps} --seeds {args.seeds} "
         f"--tasks {' '.join(args.tasks)} --algos {' '.join(args.algos)}"
         + (f" --small-batch {' '.join(args.small_batch)}" if args.small_batch else "")
         + (f" --set {' '.join(args.set)}" if args.set else "")],
        heading="**Reproduce** (finished run folders with the same request are reused; "
                "`--report-only` rewrites this page from them):")
    lines += [
        f"teamrl at commit {code} (`+dirty`: uncommitted edits in the working tree); "
        + ("this page was rewritten from finished runs (`--report-only`)." if args.report_only
           else f"this invocation took {wall / 60:.1f} min."),
        "",
    ]
    if log:
        lines += ["Output of the run that produced this page:", "", "```text", *log, "```", ""]
    path.write_text("\n".join(lines))


# ------------------------------------------------------------------------------ main
def main(argv=None):
    parser = experiment_parser(__doc__, runs=SAVED / "single_agent", note=False,
                               report_only="train nothing; report the finished runs found "
                                           "under --runs")
    add_budget_flags(parser, steps=1_000_000, algos=ALGOS, episodes=10,
                     episodes_help="deterministic evaluation episodes per seed at the end")
    parser.add_argument("--tasks", nargs="+", default=TASKS,
                        help="Gymnasium ids (the published columns cover the default four)")
    parser.add_argument("--small-batch", nargs="*", default=[], metavar="TASK",
                        help="on these tasks also run TRPO with 4 envs (4,000 steps per update "
                             "instead of 50,000)")
    parser.add_argument("--set", nargs="*", default=[], metavar="[ALGO:]KEY=VALUE",
                        help="extra settings for every run, or only ALGO's (e.g. "
                             "trpo:num_envs=10); part of the request a finished run must match")
    # No argv.json: --report-only reports whatever finished runs match the arguments given.
    args, _ = parse_flags(parser, argv, reuse_saved=False)
    unknown = [t for t in args.tasks + args.small_batch if t not in PPO_FIG3]
    if unknown:
        parser.error(f"--tasks {' '.join(unknown)}: no published numbers for these; valid: "
                     + ", ".join(TASKS))
    unlisted = [t for t in args.small_batch if t not in args.tasks]
    if unlisted:
        parser.error(f"--small-batch {' '.join(unlisted)}: not among --tasks "
                     + " ".join(args.tasks))
    for algo in args.algos:
        settings_of(algo, args)  # a malformed --set stops here, before anything is written
    out = page_folder(args)
    code = code_version()  # before teamrl is imported: the code these runs train with
    from teamrl.analysis.plots import plot_runs

    start = time.time()
    log = []

    def say(text: str):
        print(text, flush=True)
        log.append(text)

    def read(run: Run, info: dict) -> dict:
        r = read_run(run.run_dir)
        r.update(wall_s=info.get("wall_s"), code=info.get("code", "unknown"),
                 load=info.get("load"), run_dir=str(run.run_dir))
        task, label = run.key
        # a --report-only rebuild trains nothing, so no run is "earlier" than another
        earlier = info["skipped"] and not args.report_only
        load = f", load {r['load'][0]:.1f}->{r['load'][1]:.1f}" if r.get("load") else ""
        say(f"{task} {name_of(label):4s} {r['env_steps']:,} steps x {args.seeds} seed(s) | "
            f"final train {_ci(r['final_train'])} | det eval {_ci(r['eval_det'])} | "
            f"{r['steps_per_s']:,.0f} env-steps/s (all seeds) | wall "
            f"{(r['wall_s'] or 0):.0f} s{' (earlier run)' if earlier else ''}{load}")
        return r

    grid = [Run((task, label), f"{task} {name_of(label)}", label.partition(SMALL)[0],
                f"gymnasium/{task}", settings_of(label, args),
                run_folder(args.runs, task, label, args.steps, args.seeds))
            for task in args.tasks for label in labels_of(task, args)]
    results = run_grid(grid, code, read, report_only=args.report_only, unfinished="left out",
                       say=say)
    done = finished(results)
    if done:
        plot_runs([Path(r["run_dir"]) for r in done.values()], out / "single_agent.png",
                  labels=[name_of(label) for _, label in done])
    save_results(args, None, by_name(results))
    codes = sorted({r.get("code", "unknown") for r in results.values() if "code" in r})
    write_markdown(out / "single_agent.md", args, results,
                   ", ".join(codes) or code, time.time() - start, log)
    print(f"wrote {out / 'single_agent.md'} and {out / 'single_agent.png'}")


if __name__ == "__main__":
    main()
