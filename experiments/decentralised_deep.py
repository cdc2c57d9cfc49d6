"""Deep fully decentralised learners: DPO against independent learners, IQL vs MA2QL vs I2Q, MDPO.

The claims (REFERENCE.md §2-4):

1. ``didactic/dpo-random-game`` (the DPO authors' random cooperative stochastic game: 30
   states, 3 agents × 5 actions, 30 steps, one-hot state observation; Su & Lu 2022, *DPO*):
   DPO improves on independent learners (IPPO). MAPPO and HAPPO are trained beside them as
   centralised-training references. Returns are normalised, 0 = the uniform random policy,
   1 = the optimal 30-step return (both by dynamic programming on the known model).
2. ``mpe/simple_spread``: DPO vs IPPO at an equal budget, and IQL vs MA2QL (Su et al. 2022:
   agents taking turns improve on IQL) vs I2Q (Jiang & Lu 2022: ideal independent Q-learning
   improves on IQL) at an equal budget of their own.
3. MDPO (model-based decentralised policy optimisation with a latent-variable model of the
   other agents) is not implemented; the page says why.

For each study and algorithm, --seeds seeds train vectorised in one run (``seeds=S``) with the
shipped preset unchanged (`didactic` presets on the random game, `mpe` presets on MPE; no
per-algorithm tuning), then the final (``latest``) checkpoint is evaluated deterministically.
The run folder, its reuse and --report-only are those of every grid (experiments/
experiment_runs.py): a folder that already finished with the same settings is not trained
again; ``--report-only`` trains nothing and rebuilds the page from the saved runs (with the
arguments and --note of the invocation that saved them).

Writes docs/results/decentralised_deep.md (with its docs/RESULTS.md rows, see
experiments/make_results.py) and docs/results/decentralised_deep.png; runs go under --runs
(default runs/decentralised_deep, not in git).

    python experiments/decentralised_deep.py
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np

from experiment_runs import (ROOT, Run, budget_settings, by_name, command_block, curve_line,
                             curve_record, echoed_output, experiment_parser, import_teamrl,
                             load_cell, mean_sd, new_figure, output_block, page_folder, paragraph,
                             parse_flags, run_folder, run_grid, save_figure, save_results,
                             seed_bands, table_rows, with_minus)
from make_results import results_row

RANDOM_GAME = "didactic/dpo-random-game"
SPREAD = "mpe/simple_spread"
# study -> (env, algorithms, the arguments holding its seeds and steps, its title)
STUDIES = {
    "random": (RANDOM_GAME, ["ippo", "dpo", "mappo", "happo"], "random_seeds", "random_steps",
               "DPO random stochastic game: DPO vs IPPO (MAPPO, HAPPO for reference)"),
    "spread_pg": (SPREAD, ["ippo", "dpo"], "mpe_seeds", "pg_steps",
                  "MPE simple_spread: DPO vs IPPO"),
    "spread_q": (SPREAD, ["iql", "ma2ql", "i2q"], "mpe_seeds", "q_steps",
                 "MPE simple_spread: IQL vs MA2QL vs I2Q"),
}
NAMES = {"ippo": "IPPO", "dpo": "DPO", "mappo": "MAPPO", "happo": "HAPPO", "iql": "IQL",
         "ma2ql": "MA2QL", "i2q": "I2Q"}
COLORS = {"ippo": "tab:orange", "dpo": "tab:cyan", "mappo": "tab:blue", "happo": "tab:green",
          "iql": "tab:red", "ma2ql": "tab:olive", "i2q": "tab:purple"}
MDPO_TEXT = (
    "MDPO (model-based decentralised policy optimisation: each agent learns a dynamics "
    "and reward model with a latent variable for what it cannot see, forecasts that "
    "latent one iteration ahead and optimises its policy with IPPO or DPO on branched "
    "rollouts of its model) is implemented as `teamrl train mdpo` from the specification "
    "in docs/algorithms/mdpo.md, whose choices are our own where the paper's text was not"
    " available; no code of the authors exists to check it against. Its claims (a "
    "steadier state visitation and a smaller model error with prediction than without, "
    "returns above IPPO) have not been measured on this page yet.")


# ------------------------------------------------------------------------------ helpers
def oracle() -> dict:
    """The random game's optimal and uniform-random 30-step returns (exact DP on the model)."""
    from teamrl.envs.didactic import DPORandomGame

    return DPORandomGame().oracle()


def normalise(values, ref: dict):
    """0 = the uniform random policy, 1 = the optimum."""
    return (np.asarray(values, float) - ref["random"]) / (ref["optimum"] - ref["random"])


def permutation_p(a, b) -> float:
    """Exact two-sided permutation p-value of the difference of means of two seed samples
    (every split of the pooled seeds; with 3 + 3 seeds the smallest possible is 0.1)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    pooled, n = np.concatenate([a, b]), len(a)
    observed = abs(a.mean() - b.mean())
    diffs = [abs(pooled[list(c)].mean() - np.delete(pooled, list(c)).mean())
             for c in itertools.combinations(range(len(pooled)), n)]
    return float(np.mean(np.array(diffs) >= observed - 1e-12))


def verdict(results, study, first: str, second: str, scale=lambda v: np.asarray(v)) -> dict:
    """Does ``first`` beat ``second`` on its final training returns (``scale``d)?"""
    a = scale(results[(study, first)]["final_train"])
    b = scale(results[(study, second)]["final_train"])
    diff = float(a.mean() - b.mean())
    p = permutation_p(a, b)
    if a.min() > b.max():
        answer = "yes"
        how = f"every {NAMES[first]} seed above every {NAMES[second]} seed"
    elif a.max() < b.min():
        answer = "no"
        how = f"every {NAMES[first]} seed below every {NAMES[second]} seed"
    else:
        answer = "not resolved"
        how = "the seeds overlap"
    return {"answer": answer, "how": how, "diff": diff, "p": p}


def rising(results, study, threshold: float, scale=np.asarray) -> list[str]:
    """Algorithms whose mean curve gained more than ``threshold`` over the last 9 log points."""
    out = []
    for algo in done(results, study):
        y = scale(results[(study, algo)]["curve"][1])
        if len(y[0]) >= 10 and np.mean(y[:, -1]) - np.mean(y[:, -10]) > threshold:
            out.append(NAMES[algo])
    return out


def at_steps(results, study, algo, steps: float) -> float:
    """Mean over seeds of the training return at the last log point at or before ``steps``."""
    x, y = results[(study, algo)]["curve"]
    return float(np.mean(y[:, max(0, int(np.searchsorted(x, steps, side="right")) - 1)]))


def budget(results, study, steps: int) -> str:
    """The requested env steps per seed, and the whole updates actually run when fewer."""
    actual = {results[(study, a)]["env_steps"] for a in done(results, study)}
    return f"{steps:,} env steps per seed" + (
        f" ({actual.pop():,} in whole updates)" if len(actual) == 1 and steps not in actual
        else "")


def done(results, study):
    env, algos = STUDIES[study][:2]
    return [a for a in algos if "final_train" in results.get((study, a), {})]


# ------------------------------------------------------------------------------ figure
def figure(path: Path, studies, results, ref):
    """Training return per study (one panel each; the random game's normalised), mean and
    min–max band over seeds."""
    from matplotlib.ticker import FuncFormatter

    steps_fmt = FuncFormatter(lambda v, _: f"{v / 1e6:g}M" if v >= 1e6 else
                              f"{v / 1e3:g}k" if v else "0")

    fig, axes = new_figure(1, len(studies), figsize=(5.6 * len(studies), 4.4))
    for ax, study in zip(axes[0], studies):
        env, algos, *_, title = STUDIES[study]
        scale = (lambda v: normalise(v, ref)) if study == "random" else None
        seed_bands(ax, {a: results.get((study, a)) for a in algos}, COLORS, NAMES, digits=2,
                   scale=scale)
        if study == "random":
            ax.axhline(1.0, color="k", lw=0.8)
            ax.axhline(0.0, color="grey", ls="--", lw=0.8)
            ax.set_ylabel("normalised training return (0 random, 1 optimum)")
        else:
            ax.set_ylabel("training return (mean over agents, 25 steps)")
        ax.set_title(title, fontsize=9)
        ax.xaxis.set_major_formatter(steps_fmt)
    save_figure(fig, path, "Decentralised learners at the shipped presets: mean over seeds, "
                "band = min–max over seeds")


# ------------------------------------------------------------------------------ main
def main(argv=None):
    parser = experiment_parser(__doc__, runs=ROOT / "runs" / "decentralised_deep")
    parser.add_argument("--studies", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    parser.add_argument("--random-steps", type=int, default=200_000,
                        help="env steps per seed on the random game (every algorithm)")
    parser.add_argument("--random-seeds", type=int, default=5)
    parser.add_argument("--pg-steps", type=int, default=1_000_000,
                        help="env steps per seed for DPO and IPPO on MPE")
    parser.add_argument("--q-steps", type=int, default=500_000,
                        help="env steps per seed for IQL, MA2QL and I2Q on MPE")
    parser.add_argument("--mpe-seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=64,
                        help="deterministic evaluation episodes per seed")
    args, argv = parse_flags(parser, argv)
    args.studies = [s for s in STUDIES if s in args.studies]  # page order
    out = page_folder(args)
    code = import_teamrl()
    from teamrl.train.presets import config_from_run_dir

    ref = oracle()

    def read(run: Run, info: dict) -> dict:
        seeds = int(run.settings["seeds"])
        cfg = config_from_run_dir(run.run_dir, {})
        r = curve_record(run.run_dir, info, args.episodes, seeds=seeds,
                         steps_per_update=cfg.run.num_envs * cfg.run.rollout_length)
        normalised = (f" = normalised {mean_sd(normalise(r['final_train'], ref), 3)}"
                      if run.key[0] == "random" else "")
        print(curve_line(run.label, r, seeds, normalised))
        return r

    grid = []
    for study in args.studies:
        env, algos = STUDIES[study][:2]
        seeds, steps = _study_args(args, study)
        grid += [Run((study, algo), f"{env} {NAMES[algo]:6s}", algo, env,
                     budget_settings(steps, seeds),
                     run_folder(args.runs, env.split("/")[1], algo, steps, seeds))
                 for algo in algos]
    start = time.time()
    with echoed_output() as log:
        print(f"random game oracle: optimum {ref['optimum']:.3f}, uniform random "
              f"{ref['random']:.3f}")
        results = run_grid(grid, code, read, report_only=args.report_only)
        figure(out / "decentralised_deep.png", args.studies, results, ref)
        print(f"total wall time of this invocation {time.time() - start:.0f} s")
    save_results(args, argv, by_name(results, drop=("curve",)))
    write_markdown(out / "decentralised_deep.md", args, results, ref, log.getvalue())


# ------------------------------------------------------------------------------ page
def _study_args(args, study):
    _, _, seeds_arg, steps_arg, _ = STUDIES[study]
    return getattr(args, seeds_arg), getattr(args, steps_arg)


def table(study, results, scale=None) -> list[str]:
    env, algos = STUDIES[study][:2]
    normalised = scale is not None
    head = ("| algorithm | first log point | final training return "
            + ("| normalised final | per-seed normalised final " if normalised else "")
            + "| per-seed final training | deterministic eval | per-seed eval | wall (s) "
            "| env-steps/s | load before→after |")
    cols = head.count("|") - 1

    def numbers(key, r) -> list[str]:
        cells = [f"{np.mean(r['curve'][1][:, 0]):.2f}", mean_sd(r["final_train"])]
        if normalised:
            cells += [mean_sd(scale(r["final_train"]), 3),
                      ", ".join(f"{v:.3f}" for v in scale(r["final_train"]))]
        return cells + [", ".join(f"{v:.2f}" for v in r["final_train"]), mean_sd(r["eval_det"]),
                        ", ".join(f"{v:.2f}" for v in r["eval_det"]), f"{r['wall_s']:.0f}",
                        f"{r['steps_per_s']:,.0f}", load_cell(r)]

    return [head, "|" + " --- |" * cols, *table_rows(
        [((study, a), [NAMES[a]]) for a in algos], results, cols, numbers,
        absent="failed: not run"), ""]


def _verdict_text(v, first="DPO", second="IPPO", digits=2) -> str:
    head = {"yes": f"yes, {first} beats {second}", "no": f"no, {first} is below {second}",
            "not resolved": (f"not shown: {first}'s mean is higher, within seed noise"
                             if v["diff"] > 0 else
                             f"no: {first}'s mean is lower, within seed noise")}[v["answer"]]
    diff = f"{v['diff']:+.{digits}f}".replace("-", "−")
    return (f"{head} (mean difference {diff}, {v['how']}; exact permutation "
            f"p = {v['p']:.2f})")


def observations(args, results, ref) -> list[str]:
    out = ["**Observations.**", ""]
    norm = lambda v: normalise(v, ref)  # noqa: E731
    if "random" in args.studies and {"dpo", "ippo"} <= set(done(results, "random")):
        v = verdict(results, "random", "dpo", "ippo", norm)
        order = sorted(done(results, "random"),
                       key=lambda a: -np.mean(norm(results[("random", a)]["final_train"])))
        text = ("*Random game*: by mean normalised final training return the order is "
                + " > ".join(f"{NAMES[a]} "
                             f"({np.mean(norm(results[('random', a)]['final_train'])):.3f})"
                             for a in order)
                + f". Does DPO beat IPPO here? {_verdict_text(v, digits=3)}. ")
        still = rising(results, "random", 0.02, norm)
        text += ("Still rising at the end (normalised gain > 0.02 over the last 9 log "
                 "points): " + ", ".join(still) + ". " if still else
                 "No curve gained more than 0.02 (normalised) over the last 9 log points. ")
        text += ("The observation is the one-hot state for every agent, so IPPO's local "
                 "critics V_i(o_i) see the same input as a centralised V(s): IPPO and DPO "
                 "differ here in their policy objective (clipped ratio vs adaptive KL and "
                 "√KL penalties) and in their presets (IPPO lr 3e-3, 5 epochs; DPO lr 5e-4, "
                 "15 epochs, the actor lr chosen in the DPO preset from 3e-3 / 1e-3 / 5e-4 on "
                 "this game at 100k steps), not in what their critics see.")
        out += _wrap(text)
    if "spread_pg" in args.studies and {"dpo", "ippo"} <= set(done(results, "spread_pg")):
        v = verdict(results, "spread_pg", "dpo", "ippo")
        r = {a: results[("spread_pg", a)] for a in ("dpo", "ippo")}
        out += _wrap(
            f"*simple_spread, DPO vs IPPO*: final training return DPO "
            f"{np.mean(r['dpo']['final_train']):.2f}, IPPO {np.mean(r['ippo']['final_train']):.2f}"
            f" (×3: {3 * np.mean(r['dpo']['final_train']):.1f}, "
            f"{3 * np.mean(r['ippo']['final_train']):.1f}); deterministic eval "
            f"{np.mean(r['dpo']['eval_det']):.2f} and {np.mean(r['ippo']['eval_det']):.2f}. Does "
            f"DPO beat IPPO? {_verdict_text(v)}; with {args.mpe_seeds} seeds per method an exact "
            "permutation test cannot go below p = "
            f"{permutation_p(range(args.mpe_seeds), range(args.mpe_seeds, 2 * args.mpe_seeds)):.2f}"
            "."
            " Both use the same rollout and epoch settings (the DPO preset copies IPPO's "
            "calibrated MPE settings), so the difference is the objective. "
            + ("Still rising at the end (mean gain > 0.5 over the last 9 log points): "
               + ", ".join(rising(results, "spread_pg", 0.5))
               + f"; {_study_args(args, 'spread_pg')[1]:,} steps compare learning speed "
               "rather than final performance." if rising(results, "spread_pg", 0.5) else ""))
    if "spread_q" in args.studies and len(done(results, "spread_q")) >= 2:
        got = done(results, "spread_q")
        order = sorted(got, key=lambda a: -np.mean(results[("spread_q", a)]["final_train"]))
        text = ("*simple_spread, IQL vs MA2QL vs I2Q*: by mean final training return "
                + " > ".join(f"{NAMES[a]} ({np.mean(results[('spread_q', a)]['final_train']):.2f})"
                             for a in order)
                + "; by deterministic (greedy) eval "
                + ", ".join(f"{NAMES[a]} {np.mean(results[('spread_q', a)]['eval_det']):.2f}"
                            for a in got) + ". ")
        for other in ("ma2ql", "i2q"):
            if other in got and "iql" in got:
                v = verdict(results, "spread_q", other, "iql")
                text += f"{NAMES[other]} vs IQL: {_verdict_text(v, NAMES[other], 'IQL')}. "
        if {"iql", "ma2ql"} <= set(got):
            early = _study_args(args, "spread_q")[1] / 5
            text += (f"After {early:,.0f} env steps IQL is at "
                     f"{at_steps(results, 'spread_q', 'iql', early):.2f} and MA2QL at "
                     f"{at_steps(results, 'spread_q', 'ma2ql', early):.2f}: only one MA2QL "
                     "agent learns at a time (turns of 40k env steps), while the others act "
                     "with their frozen greedy policies plus exploration. ")
        still = rising(results, "spread_q", 0.5)
        if still:
            text += ("Still rising at the end (mean gain > 0.5 over the last 9 log points): "
                     + ", ".join(still) + ". ")
        text += ("Training returns of the value-based learners include ε-greedy exploration "
                 "(ε 0.05 after the first 100k env steps), which the greedy evaluation does "
                 "not.")
        out += _wrap(text)
    if {"spread_pg", "spread_q"} <= set(args.studies) and done(results, "spread_pg") \
            and done(results, "spread_q"):
        pg = max(np.mean(results[("spread_pg", a)]["final_train"])
                 for a in done(results, "spread_pg"))
        q = max(np.mean(results[("spread_q", a)]["final_train"])
                for a in done(results, "spread_q"))
        out += _wrap(
            f"Across the two families (best policy-gradient mean {pg:.2f} at "
            f"{_study_args(args, 'spread_pg')[1]:,} steps, best value-based {q:.2f} at "
            f"{_study_args(args, 'spread_q')[1]:,}) the comparison is only indicative: each "
            "family's presets were set on their own, and the value-based learners' update "
            "work per env step (8 gradient steps of 128 transitions per 400 env steps) and "
            "exploration differ from PPO's.")
    out += _wrap("None of the algorithms was tuned for this page: the shipped presets are used "
                 "as they are, so the numbers say how each behaves at those settings, not how "
                 "well it can do.")
    return out


def results_rows(args, results, ref) -> list[str]:
    """This page's rows of docs/RESULTS.md: one per study and one for MDPO."""
    rows = []
    norm = lambda v: normalise(v, ref)  # noqa: E731
    if "random" in args.studies and done(results, "random"):
        seeds, steps = _study_args(args, "random")
        got = done(results, "random")
        parts = [f"{NAMES[a]} {np.mean(norm(results[('random', a)]['final_train'])):.3f} ("
                 + ", ".join(f"{v:.2f}" for v in norm(results[("random", a)]["final_train"]))
                 + ")" for a in got]
        answer = ""
        if {"dpo", "ippo"} <= set(got):
            answer = "; DPO beats IPPO? " + _verdict_text(
                verdict(results, "random", "dpo", "ippo", norm), digits=3)
        failed = [NAMES[a] for a in STUDIES["random"][1] if a not in got]
        rows.append(results_row(
            claim="DPO random stochastic game (30 states, 3 agents × 5 actions, 30 steps): DPO "
                  "improves on independent learners (IPPO) (Su & Lu 2022); MAPPO, HAPPO as "
                  "references",
            ours="normalised final training return (0 = uniform random −1.76, 1 = optimum "
                 f"{ref['optimum']:.2f}), mean (per seed): " + ", ".join(parts) + answer
                 + (f"; failed: {', '.join(failed)}" if failed else "")
                 + "; shipped didactic presets, untuned",
            published="DPO above the independent learners (no number in REFERENCE.md)",
            budget=budget(results, "random", steps), seeds=str(seeds),
            metric="final training return normalised to 0 = uniform random, 1 = optimum",
            published_metric="the paper's training-return curves (an ordering of the methods)",
            differs="the paper states an ordering, not a number; ours normalises the return"))
    if "spread_pg" in args.studies and done(results, "spread_pg"):
        seeds, steps = _study_args(args, "spread_pg")
        got = done(results, "spread_pg")
        parts = [f"{NAMES[a]} {with_minus(np.mean(results[('spread_pg', a)]['final_train']))} ("
                 + ", ".join(with_minus(v) for v in results[("spread_pg", a)]["final_train"]) + ")"
                 for a in got]
        answer = ""
        if {"dpo", "ippo"} <= set(got):
            answer = "; DPO beats IPPO? " + _verdict_text(
                verdict(results, "spread_pg", "dpo", "ippo"))
        rows.append(results_row(
            claim="MPE simple_spread: DPO vs IPPO at an equal budget, shipped mpe presets "
                  "untuned (DPO paper: DPO improves on independent learners)",
            ours="final training return, mean (per seed): " + ", ".join(parts) + answer
                 + "; the agents' mean reward summed over a 25-step episode (×3 for the "
                   "sum over agents)",
            published="–", budget=budget(results, "spread_pg", steps), seeds=str(seeds),
            metric="final training return (last log chunk), mean over seeds"))
    if "spread_q" in args.studies and done(results, "spread_q"):
        seeds, steps = _study_args(args, "spread_q")
        got = done(results, "spread_q")
        parts = [f"{NAMES[a]} {with_minus(np.mean(results[('spread_q', a)]['final_train']))} ("
                 + ", ".join(with_minus(v) for v in results[("spread_q", a)]["final_train"])
                 + f"; greedy eval {with_minus(np.mean(results[('spread_q', a)]['eval_det']))})"
                 for a in got]
        answers = [f"{NAMES[o]} beats IQL? "
                   + _verdict_text(verdict(results, "spread_q", o, "iql"), NAMES[o], "IQL")
                   for o in ("ma2ql", "i2q") if o in got and "iql" in got]
        rows.append(results_row(
            claim="MPE simple_spread: MA2QL (turn-taking) and I2Q (ideal transitions) improve "
                  "on IQL (MA2QL and I2Q papers), equal budget, shipped mpe presets untuned",
            ours="final training return (ε-greedy), mean (per seed): " + ", ".join(parts)
                 + ("; " + "; ".join(answers) if answers else "")
                 + "; the agents' mean reward summed over a 25-step episode (×3 for the sum "
                   "over agents)",
            published="–", budget=budget(results, "spread_q", steps)
            + (" (below the presets' 1,000,000, for machine time)" if steps < 1_000_000
               else ""), seeds=str(seeds),
            metric="final training return of the ε-greedy policies, mean over seeds (greedy "
                   "evaluation in brackets)"))
    rows.append(results_row(
        claim="MDPO: model-based decentralised policy optimisation with a latent-variable "
              "model of the other agents",
        ours="implemented (`teamrl train mdpo`, inner IPPO or DPO, with the ablation "
             "prediction=false) from our specification (docs/algorithms/mdpo.md); its claims "
             "are not measured yet",
        published="–", budget="–", seeds="–", metric="–"))
    return rows


def write_markdown(path: Path, args, results, ref, output: str):
    lines = [
        "## Deep decentralised learners: DPO vs independent learners, IQL vs MA2QL vs I2Q, "
        "MDPO",
        "",
        "**Setup.** Every algorithm is trained with the shipped preset of its family **as it "
        "is, with no",
        "per-algorithm tuning**, several seeds vectorised in one run (`seeds=S`), all algorithms",
        "of a study at the same env-step budget per seed, then the final (`latest`) checkpoint",
        f"is evaluated with {args.episodes} greedy episodes per seed (`evaluate_run`, as "
        "`teamrl eval RUN_DIR checkpoint=latest`).",
        "*Final training return* is the last logged training `return_mean` of each seed",
        "(the episodes that finished in the last log chunk, about 1/40 of the run, with the",
        "training policy: sampled actions, or ε-greedy for the value-based learners). ± is the",
        "standard deviation over seeds. *Wall* is the whole run (all seeds, compilation, logging,",
        "periodic evaluation and checkpoints); *env-steps/s* the median over log chunks after the",
        "first (all seeds together). The machine is the 2-core CPU box; *load* is its 1-minute",
        "load average before and after the run.",
        "*Does A beat B* compares their final training returns: *yes* / *no* when every seed of",
        "one is above every seed of the other, *within seed noise* when the seeds overlap; "
        "the exact",
        "two-sided permutation p-value of the difference of means over the pooled seeds is given",
        "with it.",
        "",
        "Trained with teamrl at commit "
        + ", ".join(sorted({r.get("code", "unknown") for r in results.values() if "code" in r})
                    or ["unknown"])
        + " (`+dirty`: the working tree had uncommitted edits).",
        "",
    ]
    if "random" in args.studies:
        seeds, steps = _study_args(args, "random")
        lines += [
            f"### {STUDIES['random'][4]}",
            "",
            _wrap_join(
                f"`{RANDOM_GAME}`: the DPO authors' random cooperative stochastic game "
                "(`data/dpo_random_game_3.npz`): 30 states, 3 agents × 5 actions, shared "
                "reward[s, a1, a2, a3], stochastic transitions, start state 0, exactly 30 "
                "steps, every agent observes the one-hot state. By dynamic programming on the "
                f"model the optimal 30-step return is {ref['optimum']:.3f} and the uniform "
                f"random policy's {ref['random']:.3f}; returns are normalised to 0 = uniform "
                f"random, 1 = optimum. {seeds} seeds per algorithm, {steps:,} env steps per "
                f"seed (16 envs × 64 steps = 1,024 env steps per update, rounded down to "
                f"{steps // 1024:,} updates = {steps // 1024 * 1024:,} steps), the `didactic` "
                "presets: IPPO, MAPPO and HAPPO lr "
                "and critic lr 3e-3, 5 epochs × 1 minibatch, clip 0.2, entropy 0.01; DPO its "
                "own defaults (lr 5e-4 for actor and critic, 15 epochs, adaptive β_kl and "
                "β_sqrt, targets 0.01 / 0.1, entropy 0.01). IPPO and DPO are fully "
                "decentralised (separate actors, local critics V_i(o_i)); MAPPO (one shared "
                "actor with agent ids, centralised V(s)) and HAPPO (separate actors, sequential "
                "updates, V(s)) are centralised-training references. The presets' own budget is "
                "100k steps; tests/test_dpo.py checks that DPO learns the game (≥ 35 at "
                "40,960 steps)."),
        ]
        lines += table("random", results, lambda v: normalise(v, ref))
    if "spread_pg" in args.studies or "spread_q" in args.studies:
        lines += [
            "### MPE simple_spread",
            "",
            _wrap_join(
                "**Returns** are the team reward, the *mean* of the 3 agents' rewards, summed "
                "over the 25-step episode (undiscounted), teamrl's convention "
                "(docs/concepts.md); HARL, PettingZoo and JaxMARL's logs report the *sum* "
                "over agents: multiply by 3 to compare. "
                "Discrete actions (the default)."),
        ]
    if "spread_pg" in args.studies:
        seeds, steps = _study_args(args, "spread_pg")
        lines += [
            f"**{STUDIES['spread_pg'][4]}.** " + _wrap_join(
                f"{seeds} seeds each, {steps:,} env steps per seed (rounded down to whole "
                f"updates of 2,048: {steps // 2048 * 2048:,}), the `mpe` presets: 16 envs × "
                "128 steps per update, 64-64 tanh, lr and critic lr 7e-4, 10 epochs × 2 "
                "minibatches, entropy 0.005, separate actors and local critics V_i(o_i) for "
                "both; IPPO clips the ratio at 0.2, DPO uses its adaptive KL and √KL "
                "penalties (DPO's own defaults otherwise)."),
        ]
        lines += table("spread_pg", results)
    if "spread_q" in args.studies:
        seeds, steps = _study_args(args, "spread_q")
        lines += [
            f"**{STUDIES['spread_q'][4]}.** " + _wrap_join(
                f"{seeds} seeds each, {steps:,} env steps per seed (whole updates of 400), "
                "the `mpe` presets: 16 envs × 25 steps per update (one episode per env), 8 "
                "gradient steps of 128 transitions per update, 50k-transition replay, 64-64 "
                "ReLU, lr 5e-4, double DQN with a hard target copy every 200 gradient steps, "
                "ε 1 → 0.05 over the first 100k env steps, separate Q-networks; MA2QL: turns of "
                "100 updates (40k env steps) per agent, round robin, replay kept across turns, "
                "learner's target synced at its turn start; I2Q: Q_ss(o, o') with expectile "
                "V (τ 0.52) and λ 0.2."
                + (" This is the same per-seed budget as DPO/IPPO." if
                   "spread_pg" in args.studies and steps == _study_args(args, "spread_pg")[1]
                   else f" This is below the 1M env steps of the presets (and of DPO/IPPO "
                        "here) to fit the machine time available for this page; MA2QL's "
                        f"{steps // 40_000} turns are about {steps / 40_000 / 3:.1f} per "
                        "agent.")),
        ]
        lines += table("spread_q", results)
    lines += [
        "![learning curves](decentralised_deep.png)",
        "",
        "*Training return vs env steps per seed; line = mean over seeds, band = min–max over",
        "seeds; the legend gives the final mean. Left: the random game, normalised.*",
        "",
    ]
    lines += observations(args, results, ref)
    lines += ["### MDPO", ""] + _wrap(MDPO_TEXT)
    if args.note:
        lines += _wrap("**About this run.** " + args.note)
    lines += command_block([
        "python experiments/decentralised_deep.py --studies " + " ".join(args.studies)
        + f" --random-steps {args.random_steps} --random-seeds {args.random_seeds} "
        f"--pg-steps {args.pg_steps} --q-steps {args.q_steps} --mpe-seeds {args.mpe_seeds} "
        f"--episodes {args.episodes}",
        "python experiments/decentralised_deep.py --report-only   # the page from the saved runs"])
    lines += output_block(output, python_version=True)
    lines += results_rows(args, results, ref) + [""]
    path.write_text("\n".join(lines))


def _wrap(text: str) -> list[str]:
    """A paragraph not broken at hyphens (broken, "one-hot" renders as "one- hot")."""
    return paragraph(text, break_on_hyphens=False)


def _wrap_join(text: str) -> str:
    return "\n".join(_wrap(text)).rstrip("\n") + "\n"


if __name__ == "__main__":
    main()
