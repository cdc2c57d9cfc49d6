"""MAPPO, IPPO, CoPPO, HAPPO, HATRPO and A2PO on MPE at the shipped presets, equal budgets.

For each env in --envs and algorithm in --algos, train --seeds seeds vectorised in one run for
--steps env steps per seed with the shipped `mpe` preset unchanged (no per-algorithm tuning),
then evaluate the final (``latest``) checkpoint deterministically. Records the wall time of
every run (all seeds, compilation included) and its steady-state env-steps/s.

Writes docs/results/mpe_comparison.md (with its docs/RESULTS.md row, see
experiments/make_results.py) and docs/results/mpe_comparison.png (learning curves, one panel
per env). Run folders go under --runs (default /tmp/teamrl_experiments/mpe); a run whose
folder already finished with the same settings is not trained again, so an interrupted script
can simply be re-run. A run that fails is reported and the others go on. ``--report-only``
trains nothing: it rebuilds the page from the saved runs (alone, with the arguments and
--note of the invocation that saved them).

    python experiments/mpe_comparison.py --steps 1000000 --seeds 3
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from experiment_runs import (Run, add_budget_flags, budget_settings, by_name, command_block,
                             curve_line, curve_record, echoed_output, experiment_parser,
                             import_teamrl, load_cell, mean_sd, new_figure, output_block,
                             page_folder, paragraph, parse_flags, run_folder, run_grid, save_figure,
                             save_results, seed_bands, table_rows, with_minus)
from make_results import results_row

ALGOS = ["mappo", "ippo", "coppo", "happo", "hatrpo", "a2po"]
ENVS = ["mpe/simple_spread", "mpe/simple_speaker_listener"]
NAMES = {"mappo": "MAPPO", "ippo": "IPPO", "coppo": "CoPPO", "happo": "HAPPO",
         "hatrpo": "HATRPO", "a2po": "A2PO"}
COLORS = {"mappo": "tab:blue", "ippo": "tab:orange", "coppo": "tab:purple",
          "happo": "tab:green", "hatrpo": "tab:red", "a2po": "tab:brown"}


# ------------------------------------------------------------------------------ figure
def figure(path: Path, envs, algos, results):
    """Training return per env (one panel each), mean and min–max band over seeds."""
    fig, axes = new_figure(1, len(envs), figsize=(6.2 * len(envs), 4.3))
    for ax, env in zip(axes[0], envs):
        seed_bands(ax, {a: results.get((env, a)) for a in algos}, COLORS, NAMES, digits=1)
        ax.set_title(env, fontsize=10)
        ax.set_ylabel("training return (team reward = mean over agents)")
    save_figure(fig, path, "MPE, shipped presets (16 envs × 128 steps per update): mean over "
                "seeds, band = min–max over seeds")


# ------------------------------------------------------------------------------ main
def main(argv=None):
    parser = experiment_parser(__doc__, runs="/tmp/teamrl_experiments/mpe")
    add_budget_flags(parser, steps=1_000_000, algos=ALGOS, episodes=32,
                     episodes_help="deterministic evaluation episodes per seed")
    parser.add_argument("--envs", nargs="+", default=ENVS, choices=ENVS)
    args, argv = parse_flags(parser, argv)
    out = page_folder(args)
    code = import_teamrl()
    from teamrl.train.presets import config_from_run_dir

    def read(run: Run, info: dict) -> dict:
        cfg = config_from_run_dir(run.run_dir, {})
        r = curve_record(run.run_dir, info, args.episodes,
                         share_actor=getattr(cfg.algo, "share_actor", None))
        print(curve_line(run.label, r, args.seeds))
        return r

    start = time.time()
    grid = [Run((env, algo), f"{env} {NAMES[algo]:7s}", algo, env,
                budget_settings(args.steps, args.seeds),
                run_folder(args.runs, env.split("/")[1], algo, args.steps, args.seeds))
            for env in args.envs for algo in args.algos]
    with echoed_output() as log:
        results = run_grid(grid, code, read, report_only=args.report_only,
                           retrain_unloadable=True)
        figure(out / "mpe_comparison.png", args.envs, args.algos, results)
        print(f"total wall time of this invocation {time.time() - start:.0f} s")
    save_results(args, argv, by_name(results, drop=("curve",)))
    write_markdown(out / "mpe_comparison.md", args, results, log.getvalue())


def notes(args, results) -> list[str]:
    """Observations computed from the results (rankings, spreads, plateaus)."""
    out = ["**Observations.**", ""]
    for env in args.envs:
        done = {a: results[(env, a)] for a in args.algos
                if (env, a) in results and "curve" in results[(env, a)]}
        if len(done) < 2:
            continue
        order = sorted(done, key=lambda a: -np.mean(done[a]["final_train"]))
        best, worst = order[0], order[-1]
        gap = np.mean(done[best]["final_train"]) - np.mean(done[worst]["final_train"])
        spread = max(np.std(r["final_train"]) for r in done.values())
        still = [a for a in done
                 if np.mean(done[a]["curve"][1][:, -1]) - np.mean(done[a]["curve"][1][:, -10])
                 > 0.5]
        text = (f"*{env}*: by mean final training return the order is "
                + " > ".join(f"{NAMES[a]} ({np.mean(done[a]['final_train']):.2f})" for a in order)
                + f". The whole range is {gap:.1f}, against per-algorithm seed standard "
                f"deviations of up to {spread:.1f} with {args.seeds} seeds, so ")
        # Which algorithms are separated from the best by more than both seed spreads?
        sep = [a for a in order[1:]
               if np.max(done[a]["final_train"]) < np.min(done[best]["final_train"])]
        if sep:
            text += ("only " + ", ".join(NAMES[a] for a in sep) + f" finished below every "
                     f"seed of {NAMES[best]}; the other differences are within seed noise. ")
        else:
            text += ("no algorithm's seeds all finished below every seed of the best one: the "
                     "ranking is not resolved at this number of seeds. ")
        if still:
            text += ("Curves still rising at the end (mean gain > 0.5 over the last 9 log "
                     "points): " + ", ".join(NAMES[a] for a in still) + "; the budget is short "
                     "of convergence for these, so this compares learning speed at 1M steps "
                     "rather than final performance. ")
        if env == "mpe/simple_spread" and all(a in done for a in ("mappo", "ippo")):
            text += (f"For reference, MAPPO's {np.mean(done['mappo']['final_train']):.2f} and "
                     f"IPPO's {np.mean(done['ippo']['final_train']):.2f} compare with the "
                     "calibration sweep in docs/testing.md (-15.7 and -15.6 at 1M steps, 3 "
                     "seeds, run with older code and different random streams) and the "
                     "README's single-seed MAPPO quick start (-17.5 with the current code). ")
        out += paragraph(text)
    env = "mpe/simple_speaker_listener"
    if env in args.envs and "ippo" in args.algos and (env, "ippo") in results \
            and "curve" in results[(env, "ippo")]:
        x, y = results[(env, "ippo")]["curve"]
        plateau = float(np.mean(y[:, (x >= 150_000) & (x <= 350_000)]))
        others = [a for a in args.algos if a != "ippo" and "curve" in results.get((env, a), {})]
        finals = [v for a in others for v in results[(env, a)]["final_train"]]
        lo, hi = (min(finals), max(finals)) if finals else (math.nan, math.nan)
        escaped = [a for a in others
                   if np.mean(results[(env, a)]["final_train"]) > plateau + 2.0]
        out += paragraph(
            f"*simple_speaker_listener plateau*: every algorithm first rises quickly to about "
            f"{plateau:.1f} (IPPO's mean between 150k and 350k steps) and stays there until "
            "roughly 400k steps. A plausible reading, not checked here with rollouts, is that "
            "this is the listener moving to a spot between the landmarks while ignoring the "
            "speaker's message, and the later rise is the pair starting to use the message. "
            + (", ".join(NAMES[a] for a in escaped) + " left the plateau (final mean more than "
               "2 above it); " if escaped else "")
            + f"IPPO ends at {np.mean(results[(env, 'ippo')]['final_train']):.2f}, "
            + ("still on it. With local critics V_i(o_i) the speaker, which sees only the "
               "goal colour, cannot predict the reward it shares with the listener and so "
               "gets little signal for what to say; the centralised-critic methods do not "
               "have this problem (a hypothesis, not tested here). The other algorithms' "
               f"per-seed finals range from {lo:.1f} to {hi:.1f}, depending on whether and "
               "when a seed left the plateau, which is why a few seeds cannot order them."
               if np.mean(results[(env, "ippo")]["final_train"])
               < plateau + 2.0 else "having left it as well."))
    out += paragraph(
        "The presets were calibrated for MAPPO/IPPO on simple_spread and are used unchanged for "
        "every algorithm and both tasks (HATRPO: kl_threshold 0.005); none of the algorithms "
        "was tuned here, so these numbers say how each behaves at these shared settings, not "
        "how well it can do.")
    return out


# HARL's MAPPO and HAPPO at 10M steps on PettingZoo's discrete simple_spread, summed over the 3
# agents (REFERENCE.md §5); divided by 3 they are in this page's convention.
PUBLISHED = {"mpe/simple_spread": "HARL on PettingZoo's simple_spread at 10M steps, sum over "
                                  "the 3 agents: MAPPO ≈ −58, HAPPO ≈ −62 (≈ −19.3, −20.7 as "
                                  "a mean over agents)"}


def results_rows(args, results) -> list[str]:
    """This experiment's row of docs/RESULTS.md (experiments/make_results.py): per env the
    algorithms by mean final training return, and which of them finished below every seed
    of the best (the rest are within seed noise). Needs only ``final_train``."""
    parts, published = [], []
    for env in args.envs:
        done = {a: results[(env, a)] for a in args.algos
                if "final_train" in results.get((env, a), {})}
        if not done:
            continue
        order = sorted(done, key=lambda a: -np.mean(done[a]["final_train"]))
        best = order[0]
        below = [a for a in order[1:]
                 if np.max(done[a]["final_train"]) < np.min(done[best]["final_train"])]
        separation = ("within seed noise" if not below else
                      " and ".join(NAMES[a] for a in below) + f" finished below every seed of "
                      f"{NAMES[best]}, the rest within seed noise")
        failed = [NAMES[a] for a in args.algos if a not in done]
        parts.append(f"{env.split('/')[1]}: "
                     + ", ".join(f"{NAMES[a]} {with_minus(np.mean(done[a]['final_train']))}"
                                 for a in order)
                     + f" ({separation}" + (f"; failed: {', '.join(failed)}" if failed else "")
                     + ")")
        if env in PUBLISHED:
            published.append(PUBLISHED[env])
    return [results_row(
        claim="MPE: " + ", ".join(NAMES[a] for a in args.algos) + " at an equal budget, the "
              "shipped presets untuned",
        ours="; ".join(parts) + "; final training return, mean over seeds of the agents' mean "
             "reward summed over a 25-step episode",
        published="; ".join(published) or "–",
        budget=f"{args.steps:,} env steps per seed", seeds=str(args.seeds),
        metric="final training return (last log chunk): the agents' mean reward summed over "
               "a 25-step episode, mean over seeds",
        published_metric="HARL's return curves on PettingZoo's simple_spread, summed over the "
                         "3 agents",
        differs="HARL sums over agents (its mean over agents is in brackets) and trains on "
                "PettingZoo's simple_spread for 10M steps; ours is JaxMARL's port at the "
                "presets' budget")]


def write_markdown(path: Path, args, results, output: str):
    ok = [r for r in results.values() if "curve" in r]
    x = ok[0]["curve"][0] if ok else np.zeros(2)
    chunk = int(x[1] - x[0]) if len(x) > 1 else int(x[0])
    lines = [
        "## MPE comparison: six cooperative algorithms at the shipped presets",
        "",
        "**Setup.** " + ", ".join(NAMES[a] for a in args.algos) + " on "
        + " and ".join(f"`{e}`" for e in args.envs)
        + f" (discrete actions, the default), {args.seeds} seeds each trained together in one",
        f"run (`seeds={args.seeds}`), {args.steps:,} env steps per seed for every algorithm",
        f"(the preset budget; rounded down to whole updates of 2,048 steps: "
        f"{args.steps // 2048 * 2048:,}).",
        "The shipped `teamrl/configs/mpe/<algo>.yaml` presets are used **as they are, with no",
        "per-algorithm tuning**: 16 envs × 128 steps per update, 64-64 tanh networks, critic lr",
        "7e-4 with 10 epochs × 2 minibatches; the PPO-style methods (MAPPO, IPPO, CoPPO, HAPPO,",
        "A2PO) update their actors with the same 10 epochs × 2 minibatches at lr 7e-4, clip 0.2,",
        "entropy 0.005; HATRPO takes one trust-region step per agent per update with HARL's MPE",
        "kl_threshold 0.005 (no entropy bonus). MAPPO shares one actor across agents (with agent",
        "ids) and IPPO, CoPPO, HAPPO, HATRPO and A2PO use separate actors (their defaults); all",
        "but IPPO (local critics V_i(o_i)) use a centralised critic V(s).",
        "",
        "**Returns** are the team reward, the *mean* of the agents' rewards, summed over the",
        "25-step episode (undiscounted). HARL, PettingZoo and JaxMARL's logs report the *sum*",
        "over agents: multiply by 3 on simple_spread (3 agents) and by 2 on",
        "simple_speaker_listener (2 agents, which share one reward) to compare. *Final",
        "training* is the last logged training `return_mean` of each seed (episodes that",
        f"finished during the last log chunk of {chunk:,} env steps); *first log point* is",
        "the same for the first chunk (near the initial, almost uniform policy), mean over",
        "seeds; *deterministic eval* runs",
        f"{args.episodes} greedy episodes per seed with the final (`latest`) checkpoint",
        "(`evaluate_run`, as `teamrl eval RUN_DIR checkpoint=latest`). ± is the standard",
        "deviation over seeds. *Wall* is the whole run (all seeds, compilation, logging and",
        "checkpoints); *env-steps/s* is the median over log chunks after the first (all seeds",
        "together; compilation excluded). The machine is the 2-core CPU box, shared with other",
        "engineers' jobs during these runs; *load* is its 1-minute load average before and after",
        "the run (2 cores: above ~2 means this run got well under both cores), so timings are",
        "only comparable between rows at similar load.",
        "",
        "Trained with teamrl at commit "
        + ", ".join(sorted({r.get("code", "unknown") for r in results.values() if "code" in r}))
        + " (`+dirty`: the working tree had uncommitted edits by other engineers).",
        "",
    ]
    for env in args.envs:
        lines += [
            f"**{env}**",
            "",
            "| algorithm | first log point | final training return | deterministic eval "
            "| per-seed final training | per-seed eval | wall (s) | env-steps/s "
            "| load before→after |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += table_rows(
            [((env, a), [NAMES[a]]) for a in args.algos], results, 9,
            lambda key, r: [f"{np.mean(r['curve'][1][:, 0]):.2f}", mean_sd(r["final_train"]),
                            mean_sd(r["eval_det"]),
                            ", ".join(f"{v:.2f}" for v in r["final_train"]),
                            ", ".join(f"{v:.2f}" for v in r["eval_det"]), f"{r['wall_s']:.0f}",
                            f"{r['steps_per_s']:,.0f}", load_cell(r)],
            absent="failed: not run") + [""]
    lines += [
        "![learning curves](mpe_comparison.png)",
        "",
        "*Training return vs env steps per seed; line = mean over seeds, band = min–max over",
        "seeds; the legend gives the final mean.*",
        "",
    ]
    lines += notes(args, results)
    if args.note:
        lines += paragraph("**About this run.** " + args.note)
    lines += command_block([
        f"python experiments/mpe_comparison.py --steps {args.steps} --seeds {args.seeds} "
        f"--algos {' '.join(args.algos)} --envs {' '.join(args.envs)}"])
    lines += output_block(output, python_version=True)
    lines += results_rows(args, results) + [""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
