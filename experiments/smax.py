"""MAPPO, HAPPO, HATRPO and A2PO on SMAX (compiled SMAC) against the heuristic enemy.

For each map in --maps and algorithm in --algos, train --seeds seeds vectorised in one
compiled program for --steps env steps per seed with the shipped `smax` presets (JaxMARL's
MAPPO-RNN settings for MAPPO, HARL's SMAC settings for HAPPO/HATRPO, the A2PO code's for
A2PO; per-map files where the sources tune them, which also decide whether the networks are
GRUs or MLPs: the page states each run's), then evaluate the final (``latest``) checkpoint
deterministically.

SMAX is jaxmarl's re-implementation of SMAC's micromanagement with a heuristic enemy instead
of StarCraft II's built-in AI; the published SMAC win rates (HARL at 10M-20M steps; REFERENCE.md
§5) are beside ours for orientation, not as a like-for-like comparison.

Writes docs/results/smax.md (with its docs/RESULTS.md rows, one per map: see
experiments/make_results.py) and docs/results/smax.png (win-rate curves with 95 % bootstrap
bands over seeds). Run folders go under --runs (default experiments/saved/smax, kept by git
without checkpoints: experiment_runs.py); a finished run with the same settings is not trained
again and an interrupted one continues from its latest checkpoint (kept on the machine that
ran it), so the grid can be spread over sessions. ``--report-only`` rebuilds the page from the
saved runs (pairs not finished yet read "not run yet").

    python experiments/smax.py --steps 2000000 --seeds 3
    python experiments/smax.py --maps 3m --algos mappo happo --steps 500000
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
from make_results import (EXIT_NO_SAVED_RUNS, results_row, reuse_saved_argv, save_argv,
                          saved_run_finished)

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ["mappo", "happo", "hatrpo", "a2po"]
MAPS = ["3m", "2s3z", "5m_vs_6m"]
NAMES = {"mappo": "MAPPO", "happo": "HAPPO", "hatrpo": "HATRPO", "a2po": "A2PO"}
# SMAC (StarCraft II) evaluation win rates, HARL at 10M steps (REFERENCE.md §5).
PUBLISHED = {("5m_vs_6m", "happo"): "77.5 %", ("5m_vs_6m", "mappo"): "75.0 %"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2_000_000, help="env steps per seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--maps", nargs="+", default=MAPS)
    parser.add_argument("--episodes", type=int, default=32,
                        help="deterministic evaluation episodes per seed of the final policy")
    parser.add_argument("--eval-protocol", default="custom", choices=["custom", "smac"],
                        help="smac: evaluate 32 episodes every 25 updates during training "
                        "(the SMAC papers' curves); custom: the presets' cadence")
    parser.add_argument("--runs", default=str(SAVED / "smax"))
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

    results, run_dirs = {}, []
    start = time.time()
    for map_name in args.maps:
        for algo in args.algos:
            env_id = f"smax/{map_name}"
            settings = {"seeds": str(args.seeds), "total_steps": str(args.steps)}
            if args.eval_protocol != "custom":
                # Logged every 5 updates, evaluated every 5 rows: the protocol's 25 updates.
                settings.update(eval_protocol=args.eval_protocol, log_every="5", eval_every="5")
            run_dir = Path(args.runs) / f"{map_name}_{algo}_steps{args.steps}_seeds{args.seeds}"
            if args.report_only and not saved_run_finished(run_dir, algo, env_id, settings):
                # The grid spans sessions: the page shows the pairs finished so far.
                results[(map_name, algo)] = {"not_run": True}
                print(f"{map_name} {NAMES[algo]}: no finished run in {run_dir}; not run yet",
                      flush=True)
                continue
            try:
                info = train_or_skip(run_dir, algo, env_id, settings, code)
                det = evaluate_or_reuse(run_dir, args.episodes, True, checkpoint="latest")
            except Exception as err:  # report and go on with the other runs
                results[(map_name, algo)] = {"error": f"{type(err).__name__}: {err}"}
                print(f"{map_name} {NAMES[algo]} FAILED: {type(err).__name__}: {err}",
                      flush=True)
                traceback.print_exc(file=sys.stderr)
                continue
            run_dirs.append(run_dir)
            results[(map_name, algo)] = {
                "train_win_rate": final_column(run_dir, "win_rate"),
                "eval_win_rate": [s["win_rate"] for s in det["seeds"]],
                "wall_s": info["wall_s"], "steps_per_s": info.get("steps_per_s"),
                "load": info.get("load"), "code": info.get("code"), "run_dir": str(run_dir),
                "network": network_of(run_dir)}
            r = results[(map_name, algo)]
            print(f"{map_name} {NAMES[algo]}: training win rate "
                  f"{np.mean(r['train_win_rate']):.3f} "
                  f"{[round(v, 3) for v in r['train_win_rate']]}, det eval "
                  f"{np.mean(r['eval_win_rate']):.3f}, wall {r['wall_s'] / 60:.0f} min",
                  flush=True)
    if args.report_only and not run_dirs:
        raise SystemExit(EXIT_NO_SAVED_RUNS)
    if run_dirs:
        plot_runs(run_dirs, out / "smax.png", y="win_rate")
    (Path(args.runs) / "results.json").write_text(json.dumps(
        {f"{m} {a}": r for (m, a), r in results.items()}, indent=2))
    if not args.report_only:
        save_argv(Path(args.runs) / "argv.json", argv)
    write_markdown(out / "smax.md", args, results, code, time.time() - start)


def network_of(run_dir: Path) -> str:
    """'GRU 64 after [64, 64, 64]' or 'MLP [64, 64]', from the run's config.yaml."""
    from teamrl.runs import read_config

    net = read_config(run_dir).get("network", {})
    hidden = list(net.get("hidden_sizes", []))
    if net.get("recurrent"):
        return f"GRU {net.get('gru_size')} after {hidden}, {net.get('chunk_length')}-step chunks"
    return f"MLP {hidden}"


def results_rows(args, results) -> list[str]:
    """Rows of docs/RESULTS.md, one per map: each algorithm's deterministic evaluation win
    rate of the final policy."""
    rows = []
    for map_name in args.maps:
        done = [a for a in args.algos if "eval_win_rate" in results.get((map_name, a), {})]
        if not done:
            continue
        ours = ", ".join(f"{NAMES[a]} {100 * np.mean(results[(map_name, a)]['eval_win_rate']):.1f} %"
                         for a in done)
        failed = [NAMES[a] for a in args.algos if "error" in results.get((map_name, a), {})]
        not_run = [NAMES[a] for a in args.algos if "not_run" in results.get((map_name, a), {})]
        published = "; ".join(f"{NAMES[a]} {PUBLISHED[(map_name, a)]}" for a in args.algos
                              if (map_name, a) in PUBLISHED)
        rows.append(results_row(
            claim=f"SMAX {map_name} vs the heuristic enemy: " + ", ".join(
                NAMES[a] for a in args.algos) + " (shipped presets) win battles",
            ours=ours + (f" (failed: {', '.join(failed)})" if failed else "")
            + (f" (not run yet: {', '.join(not_run)})" if not_run else "")
            + f"; deterministic evaluation win rate, {args.episodes} episodes per seed, "
              "mean over seeds",
            published=(published + " on SMAC (StarCraft II) at 10M steps (HARL)")
            if published else "–",
            budget=f"{args.steps:,} env steps per seed", seeds=str(args.seeds),
            metric=f"deterministic evaluation win rate of the final policy, {args.episodes} "
                   "episodes per seed",
            published_metric="SMAC evaluation win rate (HARL), StarCraft II against its "
                             "built-in AI",
            differs="SMAX is another simulator, with a heuristic enemy; HARL's number is at "
                    "10M steps"))
    return rows


def write_markdown(path: Path, args, results, code: str, wall: float):
    code, wall = trained_code_and_wall(results, code, wall)
    lines = [
        "# SMAX: " + ", ".join(NAMES[a] for a in args.algos), "",
        f"`python experiments/smax.py --steps {args.steps} --seeds {args.seeds} --maps "
        f"{' '.join(args.maps)}` (code {code}); shipped `smax` presets (the network column "
        f"says which runs are recurrent), {args.seeds} seeds in one compiled program per run on "
        "this 2-core "
        f"machine ({wall / 3600:.1f} h of training in all). SMAX is jaxmarl's compiled "
        "SMAC with a heuristic enemy, so SMAC's published win rates (StarCraft II's AI) are "
        "for orientation only.", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["| map | algorithm | training win rate (last 10 % of rows) | deterministic eval "
              "win rate | SMAC, published | networks | wall time (all seeds) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for map_name in args.maps:
        for algo in args.algos:
            r = results.get((map_name, algo))
            if r is None:
                continue
            if "not_run" in r:
                lines.append(f"| {map_name} | {NAMES[algo]} | not run yet | | | | |")
                continue
            if "error" in r:
                lines.append(f"| {map_name} | {NAMES[algo]} | failed: {r['error']} | | | | |")
                continue
            lines.append(
                f"| {map_name} | {NAMES[algo]} | {100 * np.mean(r['train_win_rate']):.1f} % ± "
                f"{100 * np.std(r['train_win_rate']):.1f} | "
                f"{100 * np.mean(r['eval_win_rate']):.1f} % | "
                f"{PUBLISHED.get((map_name, algo), '–')} | {r.get('network', '–')} | "
                f"{r['wall_s'] / 60:.0f} min |")
    lines += ["", "Training win rate: the fraction of finished training episodes that were won, "
              "mean of the last 10 % of log rows per seed (± sd over seeds). Deterministic "
              f"eval: {args.episodes} episodes per seed of the final policy's greedy actions.",
              "", "![win rate](smax.png)", ""]
    lines += results_rows(args, results) + [""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
