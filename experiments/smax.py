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

from pathlib import Path

import numpy as np

from experiment_runs import (SAVED, Run, add_budget_flags, add_protocol_flag, budget_settings,
                             evaluate_or_reuse, experiment_parser, final_column, grid_main,
                             missing_note, run_facts, run_folder, table_rows, trained_code_and_wall)
from make_results import results_row

ALGOS = ["mappo", "happo", "hatrpo", "a2po"]
MAPS = ["3m", "2s3z", "5m_vs_6m"]
NAMES = {"mappo": "MAPPO", "happo": "HAPPO", "hatrpo": "HATRPO", "a2po": "A2PO"}
# SMAC (StarCraft II) evaluation win rates, HARL at 10M steps (REFERENCE.md §5).
PUBLISHED = {("5m_vs_6m", "happo"): "77.5 %", ("5m_vs_6m", "mappo"): "75.0 %"}


def main(argv=None):
    parser = experiment_parser(__doc__, runs=SAVED / "smax")
    add_budget_flags(parser, steps=2_000_000, algos=ALGOS, episodes=32,
                     episodes_help="deterministic evaluation episodes per seed of the final "
                                   "policy")
    parser.add_argument("--maps", nargs="+", default=MAPS)
    add_protocol_flag(parser, "smac", help="smac: evaluate 32 episodes every 25 updates during "
                      "training (the SMAC papers' curves); custom: the presets' cadence")
    # The grid spans sessions: --report-only shows the pairs finished so far.
    grid_main(parser, argv, "smax", grid, read, write_markdown, y="win_rate",
              unfinished="not run")


def grid(args) -> list[Run]:
    settings = budget_settings(args.steps, args.seeds, args.eval_protocol)
    return [Run((map_name, algo), f"{map_name} {NAMES[algo]}", algo, f"smax/{map_name}",
                settings, run_folder(args.runs, map_name, algo, args.steps, args.seeds))
            for map_name in args.maps for algo in args.algos]


def read(args, run: Run, info: dict) -> dict:
    """Training win rate (last 10 % of log rows) and deterministic evaluation of the final
    policy, per seed."""
    det = evaluate_or_reuse(run.run_dir, args.episodes, True, checkpoint="latest")
    r = {"train_win_rate": final_column(run.run_dir, "win_rate"),
         "eval_win_rate": [s["win_rate"] for s in det["seeds"]],
         **run_facts(info, run.run_dir), "network": network_of(run.run_dir)}
    print(f"{run.label}: training win rate {np.mean(r['train_win_rate']):.3f} "
          f"{[round(v, 3) for v in r['train_win_rate']]}, det eval "
          f"{np.mean(r['eval_win_rate']):.3f}, wall {r['wall_s'] / 60:.0f} min", flush=True)
    return r


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
        cells = {NAMES[a]: results.get((map_name, a), {}) for a in args.algos}
        done = {name: r for name, r in cells.items() if "eval_win_rate" in r}
        if not done:
            continue
        ours = ", ".join(f"{name} {100 * np.mean(r['eval_win_rate']):.1f} %"
                         for name, r in done.items())
        published = "; ".join(f"{NAMES[a]} {PUBLISHED[(map_name, a)]}" for a in args.algos
                              if (map_name, a) in PUBLISHED)
        rows.append(results_row(
            claim=f"SMAX {map_name} vs the heuristic enemy: " + ", ".join(
                NAMES[a] for a in args.algos) + " (shipped presets) win battles",
            ours=ours + missing_note(cells)
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
    lines += table_rows(
        [((m, a), [m, NAMES[a]]) for m in args.maps for a in args.algos], results, 7,
        lambda key, r: [f"{100 * np.mean(r['train_win_rate']):.1f} % ± "
                        f"{100 * np.std(r['train_win_rate']):.1f}",
                        f"{100 * np.mean(r['eval_win_rate']):.1f} %", PUBLISHED.get(key, "–"),
                        r.get("network", "–"), f"{r['wall_s'] / 60:.0f} min"])
    lines += ["", "Training win rate: the fraction of finished training episodes that were won, "
              "mean of the last 10 % of log rows per seed (± sd over seeds). Deterministic "
              f"eval: {args.episodes} episodes per seed of the final policy's greedy actions.",
              "", "![win rate](smax.png)", ""]
    lines += results_rows(args, results) + [""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
