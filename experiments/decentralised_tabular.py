"""Tabular decentralised value-based learners (IQL, MA2QL, I2Q) on two didactic games.

The claims (REFERENCE.md §3-4; Jiang & Lu 2022, *I2Q: a fully decentralized Q-learning
algorithm*; Su et al. 2022, *MA2QL*):

1. ``didactic/overgeneralisation`` [[8, −12, −12], [−12, 6, 0], [−12, 0, 6]]: independent
   Q-learners that average over an exploring partner settle on a 6-equilibrium (relative
   overgeneralisation); I2Q, which values its own action by the best *observed* transition
   (the ideal transition), reaches the optimum 8.
2. ``didactic/tree`` (the I2Q paper's 9-ary tree, --stages stages, node rewards U[−1, 1]
   seeded by the ``game`` option): over --games random games, I2Q's greedy joint return is
   (close to) the optimum, better than IQL; MA2QL (agents take turns to learn) is claimed to
   improve on IQL.

Both studies use ``teamrl.algos.tabular.qlearning`` (one online update per step, ε-greedy with
a fixed ε, the I2Q paper's α 0.1, γ 1, ε 0.5 unless changed). Every (game, seed) is one compiled
program, vmapped over seeds and, on the tree, over games (their node rewards are an input of
the program, so one compilation serves all games). The training run is the same computation
as ``qlearning.train`` for the same key (checked on the matrix game), cut into --checkpoints
blocks after each of which the greedy joint policy is rolled out (the learning curves).

Writes docs/results/decentralised_tabular.md (settings, per-seed and per-game numbers, this
run's printed output, its two docs/RESULTS.md rows: see experiments/make_results.py) and
docs/results/decentralised_tabular.png, and saves the results to --json. ``--report-only``
computes nothing: it rebuilds the page and figure from --json with the arguments saved there.

    python experiments/decentralised_tabular.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from experiment_runs import (code_version, command_block, echoed_output, experiment_parser,
                             new_figure, output_block, page_folder, paragraph, parse_flags,
                             save_figure)
from make_results import EXIT_NO_SAVED_RUNS, results_row

LEARNERS = {"IQL": "iql", "MA2QL": "ma2ql", "I2Q": "i2q"}
COLORS = {"IQL": "tab:red", "MA2QL": "tab:orange", "I2Q": "tab:blue"}
AT_OPTIMUM = 1e-5  # a greedy return within this relative distance of the optimum "is" optimal
CODE_AT_IMPORT = "unknown"  # set in main() just before teamrl is imported


# ------------------------------------------------------------------------------ learning
def make_runner(base_game, method: str, cfg, episodes: int, checkpoints: int, reward_fn):
    """A compiled function (params [G, ...], keys [G, K, 2], path_nodes [G, P],
    path_actions [G, P, N]) -> dict of per-(game, seed) results:

    returns [G, K, C] and actions [G, K, C, H, N]: the greedy joint policy's return and joint
    actions after each of the C = ``checkpoints`` equal blocks of training; for I2Q also
    path_seen [G, K, N, P]: whether agent i observed the transition of the given (optimal)
    path's step p after its own action there (the ``seen`` table at the end).

    ``reward_fn(params)`` builds the game's reward table [S, J]; everything else of
    ``base_game`` (successors, terminal states, horizon) is shared by the games.
    The key handling is that of ``qlearning.train``, so the final block's result equals
    ``train(method, game, keys, episodes, cfg)`` for the same keys.
    """
    import jax
    import jax.numpy as jnp

    from teamrl.algos.tabular import qlearning as ql

    if episodes % checkpoints:
        raise SystemExit(f"episodes ({episodes}) must be a multiple of checkpoints "
                         f"({checkpoints})")
    every = episodes // checkpoints

    def one(params, key, path_nodes, path_actions):
        game = dataclasses.replace(base_game, reward=reward_fn(params))
        init_key, run_key = jax.random.split(key)
        tables = ql._init_tables(game, method, init_key, cfg)
        inputs = (jnp.arange(episodes).reshape(checkpoints, every),
                  jax.random.split(run_key, episodes).reshape(checkpoints, every, -1))

        def block(tables, chunk):
            tables, _ = jax.lax.scan(partial(ql._episode, game, method, cfg), tables, chunk)
            return tables, ql.greedy_rollout(game, tables.q)

        tables, (returns, actions) = jax.lax.scan(block, tables, inputs)
        out = {"returns": returns, "actions": actions}
        if method == "i2q":
            n = game.n_agents
            joint = game.joint_index(path_actions)                                   # [P]
            out["path_seen"] = tables.seen[jnp.arange(n)[:, None], path_nodes[None, :],
                                           path_actions.T, joint[None, :]]           # [N, P]
            # Along the final greedy path: is the executed joint action every agent's ideal
            # transition for its own greedy action (argmax of its Q_ss over what it saw)?
            final = actions[-1]                                                       # [H, N]
            executed = game.joint_index(final)                                        # [H]
            next_state = jnp.asarray(game.next_state)
            _, nodes = jax.lax.scan(lambda s, j: (next_state[s, j], s), jnp.int32(0),
                                    executed)                                         # [H]
            mask = tables.seen[jnp.arange(n)[:, None], nodes[None, :], final.T]      # [N, H, J]
            intended = jnp.argmax(jnp.where(mask, tables.qss[:, nodes], -jnp.inf), -1)
            out["coordinated"] = jnp.all(intended == executed[None, :], axis=0)      # [H]
        return out

    per_game = jax.vmap(one, in_axes=(None, 0, None, None))   # seeds
    return jax.jit(jax.vmap(per_game))                          # games


def run_learner(runner, params, keys, path_nodes, path_actions, chunk: int):
    """Compile once, run the games in chunks of ``chunk`` (the last one padded):
    -> (results as numpy with the game axis first, compile seconds, run seconds)."""
    import jax

    games = params.shape[0]
    chunk = min(chunk, games)
    pad = -games % chunk
    padded = [np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x
              for x in (params, keys, path_nodes, path_actions)]
    start = time.perf_counter()
    compiled = runner.lower(*(x[:chunk] for x in padded)).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    parts = []
    for first in range(0, games + pad, chunk):
        out = compiled(*(x[first:first + chunk] for x in padded))
        parts.append(jax.tree.map(np.asarray, out))
    result = {k: np.concatenate([p[k] for p in parts])[:games] for k in parts[0]}
    return result, compile_s, time.perf_counter() - start


def stable_since(actions: np.ndarray, every: int) -> int:
    """Episodes after which the greedy joint actions [C, H, N] no longer change."""
    final = actions[-1]
    same = np.all(actions == final, axis=(1, 2))
    changed = np.flatnonzero(~same)
    return int(every * (changed[-1] + 2)) if changed.size else int(every)


def bootstrap_ci(values: np.ndarray, rng, resamples: int = 10_000):
    """95 % percentile bootstrap interval of the mean of ``values`` [n]."""
    idx = rng.integers(0, len(values), (resamples, len(values)))
    means = values[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


# ------------------------------------------------------------------------------ studies
def overgeneralisation_study(args, cfg):
    import jax
    import jax.numpy as jnp

    from teamrl.algos.tabular.qlearning import matrix_game, train
    from teamrl.envs.didactic import overgeneralisation

    payoff = overgeneralisation().payoff_np
    game = matrix_game(payoff)
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(args.seed), args.matrix_seeds))
    empty_nodes = np.zeros((1, 0), np.int32)
    empty_actions = np.zeros((1, 0, game.n_agents), np.int32)
    every = args.matrix_episodes // args.matrix_checkpoints
    print(f"== didactic/overgeneralisation: {args.matrix_seeds} seeds, "
          f"{args.matrix_episodes:,} episodes, greedy joint policy every {every:,} episodes")
    results = {}
    for label, method in LEARNERS.items():
        runner = make_runner(game, method, cfg, args.matrix_episodes, args.matrix_checkpoints,
                             lambda table: table)
        out, compile_s, run_s = run_learner(
            runner, game.reward[None], keys[None], empty_nodes, empty_actions, 1)
        returns, actions = out["returns"][0], out["actions"][0]          # [K, C], [K, C, 1, N]
        # The blocks are qlearning.train cut into pieces: the final policies must agree.
        reference = train(method, game, jnp.asarray(keys), args.matrix_episodes, cfg)
        np.testing.assert_array_equal(reference.greedy_actions, actions[:, -1])
        np.testing.assert_array_equal(reference.greedy_return, returns[:, -1])
        joint = [tuple(int(a) for a in actions[k, -1, 0]) for k in range(len(keys))]
        since = [stable_since(actions[k], every) for k in range(len(keys))]
        results[label] = {"joint": joint, "return": returns[:, -1].tolist(), "since": since,
                          "curve": returns.tolist(), "compile_s": compile_s, "run_s": run_s}
        counts = {j: joint.count(j) for j in sorted(set(joint))}
        print(f"{label:6s} compile {compile_s:5.1f} s run {run_s:5.1f} s | greedy return per "
              f"seed {[round(float(r), 3) for r in returns[:, -1]]} | joint actions "
              + ", ".join(f"{j}: {c}" for j, c in counts.items()))
    return {"payoff": payoff.tolist(), "every": every, "results": results}


def tree_study(args, cfg):
    import jax
    import jax.numpy as jnp

    from teamrl.algos.tabular.qlearning import tree_game
    from teamrl.envs.didactic import TreeGame

    base = tree_game(args.stages, args.first_game)
    internal = int((~base.terminal).sum())
    states, joint = base.next_state.shape

    def reward_fn(node_rewards):  # as tree_game: every joint action at node s pays R(s)
        return jnp.zeros((states, joint), jnp.float32).at[:internal].set(node_rewards[:, None])

    games = list(range(args.first_game, args.first_game + args.games))
    envs = [TreeGame(args.stages, g) for g in games]
    params = np.stack([env.rewards_np for env in envs]).astype(np.float32)   # [G, internal]
    oracles = [env.oracle() for env in envs]
    optimum = np.array([o["optimum"] for o in oracles])
    random_return = np.array([o["random"] for o in oracles])
    # The optimal path's first stages-1 steps (the last step's action does not matter).
    path_actions = np.array([env.optimal_actions()[:-1] for env in envs], np.int32)  # [G, P, 2]
    path_nodes = np.zeros(path_actions.shape[:2], np.int32)
    for d in range(1, path_actions.shape[1]):
        a = path_actions[:, d - 1]
        path_nodes[:, d] = 9 * path_nodes[:, d - 1] + 3 * a[:, 0] + a[:, 1] + 1
    base_key = jax.random.PRNGKey(args.seed)
    keys = np.stack([np.asarray(jax.random.split(jax.random.fold_in(base_key, g),
                                                 args.tree_seeds)) for g in games])
    every = args.tree_episodes // args.tree_checkpoints
    print(f"== didactic/tree: stages {args.stages}, games {games[0]}..{games[-1]}, "
          f"{args.tree_seeds} seed(s) per game, {args.tree_episodes:,} episodes, greedy joint "
          f"policy every {every:,} episodes; optimum {optimum.mean():.3f} on average "
          f"(uniform random policy {random_return.mean():.3f})")
    rng = np.random.default_rng(args.seed)
    results = {}
    for label, method in LEARNERS.items():
        runner = make_runner(base, method, cfg, args.tree_episodes, args.tree_checkpoints,
                             reward_fn)
        out, compile_s, run_s = run_learner(runner, params, keys, path_nodes, path_actions,
                                            args.game_chunk)
        ratio_curve = out["returns"] / optimum[:, None, None]                 # [G, K, C]
        per_game = ratio_curve[:, :, -1].mean(1)                              # [G]
        greedy = out["actions"][:, :, -1, :-1]                                # [G, K, P, N]
        off = np.any(greedy != path_actions[:, None], axis=-1)               # [G, K, P]
        deviation = np.where(off.any(-1), off.argmax(-1), -1)                 # [G, K], -1: none
        entry = {
            "ratio": per_game.tolist(),
            "ratio_per_seed": ratio_curve[:, :, -1].tolist(),
            "curve": ratio_curve.mean(1).tolist(),                            # [G, C]
            "ci": bootstrap_ci(per_game, rng),
            "at_optimum": int((ratio_curve[:, :, -1] >= 1 - AT_OPTIMUM).sum()),
            "deviation": deviation.tolist(),
            "compile_s": compile_s, "run_s": run_s,
        }
        if "path_seen" in out:
            seen = out["path_seen"].all(axis=(-2, -1))                           # [G, K]
            step = np.maximum(deviation, 0)[..., None]
            agreed = np.take_along_axis(out["coordinated"], step, -1)[..., 0]    # [G, K]
            short = ratio_curve[:, :, -1] < 1 - AT_OPTIMUM
            entry["path_seen"] = seen.tolist()
            # Why a suboptimal run left the optimal path (at its first step off it).
            entry["failure"] = np.where(
                ~short, "", np.where(~seen, "unobserved",
                                     np.where(agreed, "values", "miscoordinated"))).tolist()
        results[label] = entry
        print(f"{label:6s} compile {compile_s:5.1f} s run {run_s:6.1f} s | return/optimum "
              f"mean {per_game.mean():.4f} [95% CI {entry['ci'][0]:.4f}, {entry['ci'][1]:.4f}]"
              f" median {np.median(per_game):.4f} min {per_game.min():.4f} | at optimum "
              f"{entry['at_optimum']}/{per_game.size * args.tree_seeds}")
    paired = {}
    for a, b in (("I2Q", "IQL"), ("MA2QL", "IQL"), ("I2Q", "MA2QL")):
        diff = np.array(results[a]["ratio"]) - np.array(results[b]["ratio"])
        paired[f"{a} - {b}"] = {"mean": float(diff.mean()), "ci": bootstrap_ci(diff, rng),
                                "wins": int((diff > 1e-6).sum()),
                                "losses": int((diff < -1e-6).sum())}
        print(f"paired {a} - {b}: mean {diff.mean():+.4f} [95% CI "
              f"{paired[f'{a} - {b}']['ci'][0]:+.4f}, {paired[f'{a} - {b}']['ci'][1]:+.4f}], "
              f"better in {paired[f'{a} - {b}']['wins']} games, worse in "
              f"{paired[f'{a} - {b}']['losses']}")
    return {"games": games, "optimum": optimum.tolist(), "random": random_return.tolist(),
            "random_ratio": (random_return / optimum).tolist(), "every": every,
            "results": results, "paired": paired}


# ------------------------------------------------------------------------------ figure
def figure(path: Path, matrix, tree, args):
    fig, axes = new_figure(2, 2, figsize=(13, 9))
    labels = list(LEARNERS)

    # (a) converged greedy joint actions on the overgeneralisation game
    ax = axes[0, 0]
    payoff = np.array(matrix["payoff"])
    seen = sorted({j for r in matrix["results"].values() for j in r["joint"]},
                  key=lambda j: (-payoff[j], j))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        joint = matrix["results"][label]["joint"]
        ax.bar(np.arange(len(seen)) + (i - 1) * width, [joint.count(j) for j in seen], width,
               color=COLORS[label], label=label)
    ax.set_xticks(np.arange(len(seen)), [f"{j}\nr = {payoff[j]:g}" for j in seen])
    ax.set_ylabel(f"seeds (of {args.matrix_seeds})")
    ax.set_title(f"overgeneralisation: greedy joint action after "
                 f"{args.matrix_episodes:,} episodes", fontsize=9)
    ax.legend(fontsize=8)

    # (b) fraction of seeds whose greedy joint action is optimal, over training
    ax = axes[0, 1]
    x = matrix["every"] * np.arange(1, args.matrix_checkpoints + 1)
    for label in labels:
        curve = np.array(matrix["results"][label]["curve"])                  # [K, C]
        ax.plot(x, (curve >= payoff.max() - 1e-6).mean(0), color=COLORS[label],
                label=f"{label}: return 8")
        ax.plot(x, (np.abs(curve - 6) < 1e-6).mean(0), ":", color=COLORS[label],
                label=f"{label}: return 6")
    ax.set_xlabel("training episodes")
    ax.set_ylabel("fraction of seeds")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title("overgeneralisation: greedy return over training", fontsize=9)
    ax.legend(fontsize=7, ncol=3)

    # (c) return / optimum per tree game
    ax = axes[1, 0]
    rng = np.random.default_rng(0)
    for i, label in enumerate(labels):
        ratio = np.array(tree["results"][label]["ratio"])
        ax.scatter(i + rng.uniform(-0.25, 0.25, ratio.size), ratio, s=8, alpha=0.5,
                   color=COLORS[label])
        lo, hi = tree["results"][label]["ci"]
        ax.errorbar(i + 0.35, ratio.mean(), yerr=[[ratio.mean() - lo], [hi - ratio.mean()]],
                    fmt="o", color="k", capsize=4)
    ax.axhline(1.0, color="k", lw=1)
    ax.axhline(np.mean(tree["random_ratio"]), color="grey", ls="--", lw=1,
               label="uniform random policy (mean)")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("greedy return / optimum")
    ax.set_title(f"tree, {args.stages} stages, {len(tree['games'])} games, "
                 f"{args.tree_episodes:,} episodes (dots: games; black: mean, 95% CI)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")

    # (d) tree learning curves
    ax = axes[1, 1]
    x = tree["every"] * np.arange(1, args.tree_checkpoints + 1)
    for label in labels:
        curve = np.array(tree["results"][label]["curve"])                   # [G, C]
        mean, se = curve.mean(0), curve.std(0, ddof=1) / np.sqrt(curve.shape[0])
        ax.plot(x, mean, color=COLORS[label], label=label)
        ax.fill_between(x, mean - 1.96 * se, mean + 1.96 * se, color=COLORS[label], alpha=0.2)
    ax.axhline(1.0, color="k", lw=1)
    if args.stages == 5:
        ax.axvline(20_000, color="grey", ls=":", lw=1, label="I2Q code's budget (100k steps)")
    ax.set_xscale("log")
    ax.set_xlabel("training episodes (5 steps each)" if args.stages == 5
                  else "training episodes")
    ax.set_ylabel("greedy return / optimum (mean over games, ±1.96 SE)")
    ax.set_title("tree: learning curves", fontsize=9)
    ax.legend(fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    save_figure(fig, path)


# ------------------------------------------------------------------------------ page
def command_args(argv: list[str]) -> list[str]:
    """The command-line arguments without the texts (--note is on the page already,
    --tree-row-note in docs/RESULTS.md) and without --report-only."""
    texts = ("--note", "--tree-row-note")
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in texts:
            skip = True
        elif not item.startswith(tuple(f"{t}=" for t in texts)) and item != "--report-only":
            kept.append(item)
    return kept


def write_markdown(path: Path, args, cfg, matrix, tree, output: str, wall_s: float):
    m, t = matrix["results"], tree["results"]
    n_seeds = args.matrix_seeds
    lines = [
        "## Decentralised tabular learners: relative overgeneralisation and the I2Q tree",
        "",
        "Claims (REFERENCE.md §3-4). Independent Q-learners (IQL) that treat an exploring",
        "partner as part of the environment average over its actions, so in the relative",
        "overgeneralisation game [[8, −12, −12], [−12, 6, 0], [−12, 0, 6]] action 0 looks worst",
        "and they settle on a 6-equilibrium. I2Q (Jiang & Lu 2022) learns Q_ss(s, s') over",
        "next states and updates Q_i(s, a_i) along the best next state *observed* after",
        "(s, a_i), the ideal transition; in a deterministic game this is the transition of",
        "the best partner action, so it should reach the optimum 8, and the optimum of the",
        "9-ary tree game. MA2QL (Su et al. 2022) lets the agents learn in turns, each one",
        "facing a stationary partner, which guarantees a Nash equilibrium but not the optimum.",
        "",
        f"**Setup.** `teamrl.algos.tabular.qlearning` with α {cfg.alpha}, γ {cfg.gamma}, fixed",
        f"ε {cfg.epsilon} (the I2Q paper's matrix-game settings), tables initialised",
        f"U(±{cfg.init_scale}), one online update per step, MA2QL turns of {cfg.turn_length}",
        "episodes (only the agent whose turn it is updates; both act ε-greedily). The",
        "greedy joint policy (argmax of each agent's Q_i, no exploration) is rolled out after",
        "each of the equal blocks of training; its return at the end is the result.",
        "",
        f"- `didactic/overgeneralisation`: {n_seeds} seeds (`jax.random.split(PRNGKey("
        f"{args.seed}), {n_seeds})`), {args.matrix_episodes:,} one-step episodes, greedy",
        f"  policy every {matrix['every']:,} episodes. The final policies were checked to equal",
        "  `qlearning.train` for the same keys.",
        f"- `didactic/tree`, {args.stages} stages (episode of {args.stages} steps collecting",
        f"  R of the nodes of depths 0..{args.stages - 1}, R ~ U[−1, 1] from",
        f"  `default_rng(game)`), games {tree['games'][0]}..{tree['games'][-1]},",
        f"  {args.tree_seeds} learning seed(s) per game (`split(fold_in(PRNGKey({args.seed}),"
        f" game), {args.tree_seeds})`), {args.tree_episodes:,} episodes",
        f"  ({args.tree_episodes * args.stages:,} env steps; the I2Q authors' code uses 100,000",
        "  env steps = 20,000 episodes, but with 10 replayed mini-batches of 100 every 50",
        "  steps, i.e. about 18 times more updates than env steps), greedy policy every",
        f"  {tree['every']:,} episodes. Metric: greedy return / optimum (dynamic programming,",
        "  `TreeGame.oracle()`), averaged over the seeds of a game, then mean and 95 %",
        "  percentile bootstrap interval (10,000 resamples) over the games.",
        "",
        f"Code: teamrl at commit {CODE_AT_IMPORT}"
        + (" (`+dirty`: the working tree had uncommitted edits under teamrl/)"
           if CODE_AT_IMPORT.endswith("+dirty") else "")
        + f". Wall time of the whole script {wall_s:.0f} s on the 2-core CPU",
        "machine, shared with other jobs (per learner below, compilation separate).",
        "",
        f"### Overgeneralisation: greedy joint action per seed after "
        f"{args.matrix_episodes:,} episodes",
        "",
        "Each cell: greedy joint action (a0, a1), its return, and the episode from which the",
        "greedy joint action stayed the same until the end.",
        "",
        "| seed | " + " | ".join(LEARNERS) + " |",
        "| --- | " + " | ".join("---" for _ in LEARNERS) + " |",
    ]
    for k in range(n_seeds):
        cells = [f"({m[l]['joint'][k][0]}, {m[l]['joint'][k][1]}): {m[l]['return'][k]:g} "
                 f"(from {m[l]['since'][k]:,})" for l in LEARNERS]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    summary = []
    for label in LEARNERS:
        ret = np.array(m[label]["return"])
        summary.append(f"{int((ret == 8).sum())} × 8, {int((ret == 6).sum())} × 6"
                       + (f", {int(((ret != 8) & (ret != 6)).sum())} other"
                          if ((ret != 8) & (ret != 6)).any() else ""))
    lines.append("| **count** | " + " | ".join(summary) + " |")
    lines.append("| wall s (compile + run) | " + " | ".join(
        f"{m[l]['compile_s']:.1f} + {m[l]['run_s']:.1f}" for l in LEARNERS) + " |")
    half = args.matrix_checkpoints // 2
    lines += [
        "",
        f"Over training (greedy joint policy every {matrix['every']:,} episodes; the last half"
        f" is {half} checkpoints × {n_seeds} seeds):",
        "",
        "| learner | seeds at 8 after the first block | seeds ever at 8 | seeds at 8 at the end"
        " | last half: share of checkpoints with return 8 / 6 / other | seeds whose greedy "
        "joint action changed in the last half |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label in LEARNERS:
        o = over_training(matrix, label, half)
        lines.append(f"| {label} | {o['first']} | {o['ever']} | {o['end']} | "
                     f"{o['share8']:.2f} / {o['share6']:.2f} / {o['share_other']:.2f} | "
                     f"{o['changed']} |")

    def fmt_ci(entry):
        return f"{np.mean(entry['ratio']):.4f} [{entry['ci'][0]:.4f}, {entry['ci'][1]:.4f}]"

    at_budget = int(round(20_000 / tree["every"])) - 1
    has_budget = 0 <= at_budget < args.tree_checkpoints - 1 and \
        (at_budget + 1) * tree["every"] == 20_000
    lines += [
        "",
        f"### Tree, {args.stages} stages: greedy return / optimum over {len(tree['games'])} games",
        "",
        f"Optimum {np.mean(tree['optimum']):.3f} on average (min {np.min(tree['optimum']):.3f},"
        f" max {np.max(tree['optimum']):.3f}); the uniform random policy earns "
        f"{np.mean(tree['random_ratio']):+.3f} of it on average (E[R] = 0).",
        "",
        "| learner | mean [95 % CI] | median | min | games at the optimum | "
        + ("mean at 20,000 episodes | " if has_budget else "")
        + "first deviation from the optimal path (step "
        + "/".join(map(str, range(args.stages - 1))) + ") | wall s (compile + run) |",
        "| --- | --- | --- | --- | --- | " + ("--- | " if has_budget else "") + "--- | --- |",
    ]
    for label in LEARNERS:
        e = t[label]
        ratio = np.array(e["ratio"])
        dev = np.array(e["deviation"]).reshape(-1)
        devs = "/".join(str(int((dev == d).sum())) for d in range(args.stages - 1))
        total = ratio.size * args.tree_seeds
        lines.append(
            f"| {label} | {fmt_ci(e)} | {np.median(ratio):.4f} | {ratio.min():.4f} | "
            f"{e['at_optimum']}/{total} | "
            + (f"{np.array(e['curve'])[:, at_budget].mean():.4f} | " if has_budget else "")
            + f"{devs} | {e['compile_s']:.1f} + {e['run_s']:.1f} |")
    lines += ["", "Paired over games (difference of return / optimum):", "",
              "| comparison | mean difference [95 % CI] | better in | worse in |",
              "| --- | --- | --- | --- |"]
    for name, p in tree["paired"].items():
        lines.append(f"| {name} | {p['mean']:+.4f} [{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}] | "
                     f"{p['wins']} | {p['losses']} |")
    lines += [
        "",
        "![decentralised tabular learners](decentralised_tabular.png)",
        "",
        "*Top left: greedy joint action of each seed at the end on the overgeneralisation game.",
        "Top right: fraction of seeds whose greedy joint policy returns 8 (solid) or 6",
        "(dotted) over training. Bottom left: greedy return / optimum per tree game (dots,",
        "jittered) with the mean and its 95 % bootstrap interval; dashed: the uniform random",
        "policy. Bottom right: mean over games of greedy return / optimum over training",
        "(log scale; the dotted line marks the I2Q authors' env-step budget).*",
        "",
    ]
    for text in reading(args, cfg, matrix, tree):
        lines += paragraph(text)
    if args.note:
        lines += paragraph("**About this run.** " + args.note)

    lines += ["<details><summary>Per-game return / optimum on the tree (mean over the seeds of"
              " the game)</summary>", "",
              "| game | optimum | " + " | ".join(LEARNERS) + " | why I2Q falls short |",
              "| --- | --- | " + " | ".join("---" for _ in LEARNERS) + " | --- |"]
    for g, game in enumerate(tree["games"]):
        why = ", ".join(k for k in t["I2Q"]["failure"][g] if k)
        lines.append(f"| {game} | {tree['optimum'][g]:.3f} | "
                     + " | ".join(f"{t[l]['ratio'][g]:.4f}" for l in LEARNERS)
                     + f" | {why} |")
    lines += ["", "</details>", ""]
    lines += command_block(
        [" ".join(["python experiments/decentralised_tabular.py", *command_args(args.argv)])],
        heading="**Reproduce** (deterministic on CPU"
        + ("; *About this run* was given with `--note`" if args.note else "") + "):")
    lines += output_block(output)
    lines += results_rows(args, cfg, matrix, tree) + [""]
    path.write_text("\n".join(lines))


def _minus(text: str) -> str:
    return text.replace("-", "−")


def results_rows(args, cfg, matrix, tree) -> list[str]:
    """The two rows of docs/RESULTS.md (experiments/make_results.py): the overgeneralisation
    game and the tree, worded from the results; ``--tree-row-note`` is appended to the tree's
    (e.g. the numbers of a longer run given in --note)."""
    m, t, n = matrix["results"], tree["results"], args.matrix_seeds
    payoff = np.array(matrix["payoff"])
    best = payoff.max()
    optimum = tuple(int(i) for i in np.unravel_index(payoff.argmax(), payoff.shape))
    half = args.matrix_checkpoints // 2
    o = {label: over_training(matrix, label, half) for label in LEARNERS}
    order = [label for label in ("I2Q", "IQL", "MA2QL") if label in LEARNERS]

    def outcome(label):
        ret, parts = np.array(m[label]["return"]), []
        if o[label]["end"] == n:
            since = [m[label]["since"][k] for k in range(n) if ret[k] == best]
            parts.append(f"from {min(since):,}" + (f"–{max(since):,}" if max(since) > min(since)
                                                   else "") + " episodes on")
        elif o[label]["first"] != o[label]["end"]:
            parts.append(f"{o[label]['first']}/{n} after {matrix['every']:,} episodes")
        parts += [", ".join(f"{int((ret == v).sum())} × {v:g}"
                            for v in sorted(set(ret[ret != best].tolist()), reverse=True))]
        text = ", ".join(p for p in parts if p)
        if o[label]["ever"] == 0:
            text += f"; never at {optimum}"
        return f"{label} {o[label]['end']}/{n} ({text})"

    switching = [label for label in order if o[label]["end"] < n and o[label]["changed"] > n / 2]
    matrix_ours = (f"greedy joint action {optimum} → {best:g} for "
                   + "; ".join(outcome(label) for label in order))
    if switching:
        matrix_ours += (". " + " and ".join(f"{label}'s" for label in switching)
                        + " greedy joint action keeps switching ("
                        + " and ".join(f"{o[label]['changed']}/{n}" for label in switching)
                        + " seeds changed it in the last half of training)")
    game = "[" + ",".join("[" + ",".join(_minus(f"{v:g}") for v in row) + "]"
                          for row in payoff) + "]"

    games, paired = len(tree["games"]), tree["paired"]

    def ratio(label):
        e = t[label]
        return (f"{label} {np.mean(e['ratio']):.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}] "
                f"(optimal in {e['at_optimum']}/{np.size(e['ratio']) * args.tree_seeds})")

    def difference(name):
        p = paired[name]
        return _minus(f"{name} {p['mean']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]")

    ma2ql = paired["MA2QL - IQL"]["ci"]
    verdict = ("MA2QL beats IQL" if ma2ql[0] > 0 else "MA2QL does not beat IQL"
               if ma2ql[1] > 0 else "MA2QL is worse than IQL")
    tree_ours = ("greedy return / optimum, mean [95 % bootstrap CI] over games: "
                 + ", ".join(ratio(label) for label in order)
                 + f"; {difference('I2Q - IQL')}, {difference('MA2QL - IQL')} ({verdict})"
                 + (f". {args.tree_row_note}" if args.tree_row_note else ""))
    env_steps = args.tree_episodes * args.stages
    return [
        results_row(
            claim=f"Relative overgeneralisation {game}: independent Q-learners settle on a "
                  f"6-equilibrium, I2Q reaches the optimum {best:g} (I2Q, Jiang & Lu 2022)",
            ours=matrix_ours,
            budget=f"tabular, α {cfg.alpha:g}, fixed ε {cfg.epsilon:g}, "
                   f"{args.matrix_episodes:,} episodes",
            seeds=str(n), metric="the greedy joint action after training and its payoff"),
        results_row(
            claim=f"9-ary tree game, {args.stages} stages, {games} random games: I2Q's greedy "
                  "return approaches the optimum, above IQL; MA2QL (turn-taking) vs IQL (I2Q "
                  "and MA2QL papers)",
            ours=tree_ours,
            budget=f"tabular, {args.tree_episodes:,} episodes = {env_steps:,} env steps per "
                   "game" + (" (the I2Q code's budget)" if env_steps == 100_000 else ""),
            seeds=f"{args.tree_seeds} per game, {games} games",
            metric="greedy return / optimum per game, mean [95 % bootstrap CI] over games")]


def over_training(matrix, label: str, half: int) -> dict:
    """Counts over the greedy policies at the checkpoints of the matrix game."""
    curve = np.array(matrix["results"][label]["curve"])                     # [K, C]
    best = max(max(row) for row in matrix["payoff"])
    last = curve[:, -half:]
    since = np.array(matrix["results"][label]["since"])
    every, checkpoints = matrix["every"], curve.shape[1]
    return {"first": int((curve[:, 0] == best).sum()), "ever": int((curve == best).any(1).sum()),
            "end": int((curve[:, -1] == best).sum()), "share8": float((last == best).mean()),
            "share6": float((last == 6).mean()),
            "share_other": float(((last != best) & (last != 6)).mean()),
            "changed": int((since > every * (checkpoints - half)).sum())}


def epsilon_greedy_values(payoff: np.ndarray, epsilon: float, alpha: float):
    """For agent 0 against a partner that plays greedy action g with probability
    1 − ε + ε/A (others ε/A): mean [g, a] and the stationary standard deviation of an
    α-running average of agent 0's reward for its action a."""
    A = payoff.shape[0]
    mean, sd = np.zeros((A, A)), np.zeros((A, A))
    for g in range(A):
        p = np.full(A, epsilon / A)
        p[g] += 1 - epsilon
        mean[g] = payoff @ p
        var = (payoff**2) @ p - mean[g] ** 2
        sd[g] = np.sqrt(var * alpha / (2 - alpha))
    return mean, sd


def trend(curve: np.ndarray, late: int) -> str:
    change = curve[-1] - curve[late]
    return ("was still improving" if change > 0.01 else "got worse" if change < -0.02
            else "had flattened")


def reading(args, cfg, matrix, tree) -> list[str]:
    """The observations (two paragraphs), worded from the numbers."""
    m, t = matrix["results"], tree["results"]
    n = args.matrix_seeds
    payoff = np.array(matrix["payoff"])
    half = args.matrix_checkpoints // 2
    o = {label: over_training(matrix, label, half) for label in LEARNERS}
    six = {l: int((np.array(m[l]["return"]) == 6).sum()) for l in LEARNERS}
    mean, sd = epsilon_greedy_values(payoff, cfg.epsilon, cfg.alpha)
    keep = 1 - cfg.epsilon + cfg.epsilon / payoff.shape[0]
    i2q_first = o["I2Q"]["first"]
    matrix_text = (
        f"**Overgeneralisation.** I2Q's greedy joint action is the optimum (0, 0) for "
        f"{o['I2Q']['end']}/{n} seeds at the end ({i2q_first}/{n} already after the first "
        f"{matrix['every']:,} episodes; {o['I2Q']['changed']} changed in the last half). IQL "
        f"ends at (0, 0) for {o['IQL']['end']}/{n} seeds and was there for {o['IQL']['ever']}/{n}"
        f" at any checkpoint; it ends at a 6-equilibrium for {six['IQL']}/{n} and "
        f"miscoordinated for the rest. MA2QL ends at (0, 0) for {o['MA2QL']['end']}/{n} seeds "
        f"({o['MA2QL']['first']}/{n} after the first {matrix['every']:,} episodes), at 6 for "
        f"{six['MA2QL']}/{n}. Why: with ε = {cfg.epsilon:g} a partner plays its greedy action "
        f"with probability {keep:.3g}. Against a partner greedy at 0, action 0 is worth "
        f"{mean[0, 0]:.2f} and actions 1 and 2 {mean[0, 1]:.2f}, so (0, 0) is an equilibrium of "
        f"ε-greedy learners; against a partner greedy at 1, action 1 is worth {mean[1, 1]:.2f}, "
        f"action 2 {mean[1, 2]:.2f} and action 0 {mean[1, 0]:.2f}. Simultaneous learners (IQL) "
        "start against a partner whose greedy action still moves, i.e. close to uniform, where "
        f"action 0 is worth {payoff[0].mean():.2f} against {payoff[1].mean():.2f} for 1 and 2: "
        "relative overgeneralisation; once either agent's greedy action is 1 or 2, action 0 is "
        "out of reach for the other, so the block {1, 2} × {1, 2} is absorbing. MA2QL's first "
        "learner faces a partner frozen at its initial (random) greedy action, so about a "
        "third of the seeds should start at (0, 0), as observed. Inside the {1, 2} block "
        f"the gap of {mean[1, 1] - mean[1, 2]:.0f} between actions 1 and 2 is small against "
        f"the noise of the α = {cfg.alpha:g} running averages (stationary standard deviations "
        f"about {sd[1, 1]:.1f} and {sd[1, 2]:.1f}), so IQL's and MA2QL's greedy joint action "
        "never settles: it keeps switching among (1, 1), (2, 2) and the miscoordinated (1, 2) "
        f"and (2, 1) (returns 6 / other in {o['IQL']['share6']:.0%} / "
        f"{o['IQL']['share_other']:.0%} of IQL's last-half checkpoints, {o['MA2QL']['share6']:.0%}"
        f" / {o['MA2QL']['share_other']:.0%} of MA2QL's; {o['IQL']['changed']} and "
        f"{o['MA2QL']['changed']} of {n} seeds changed their greedy joint action in the last "
        "half). (0, 0) is only metastable under this noise (standard deviation about "
        f"{sd[0, 0]:.1f} on its value {mean[0, 0]:.2f}): one agent pushed off 0 loses it for "
        "good" + (f", which is how MA2QL went from {o['MA2QL']['first']} seeds at (0, 0) to "
                  f"{o['MA2QL']['end']}" if o["MA2QL"]["end"] < o["MA2QL"]["first"] else "")
        + ". I2Q instead values action 0 by its best observed outcome, 8, whatever the "
        "partner explores.")

    i2q, iql, ma2 = (np.array(t[l]["ratio"]) for l in ("I2Q", "IQL", "MA2QL"))
    curves = {l: np.array(t[l]["curve"]).mean(0) for l in LEARNERS}
    early = max(0, args.tree_checkpoints // 10 - 1)
    late = (3 * args.tree_checkpoints) // 4 - 1
    p = tree["paired"]
    games = len(tree["games"])
    seen = np.array(t["I2Q"]["path_seen"])
    total = seen.size
    i2q_short = np.array(t["I2Q"]["ratio_per_seed"]) < 1 - AT_OPTIMUM
    kinds = np.array(t["I2Q"]["failure"])
    failure = {k: int((kinds == k).sum()) for k in ("unobserved", "values", "miscoordinated")}
    dev = np.array(t["I2Q"]["deviation"])
    pm = p["MA2QL - IQL"]
    tree_text = (
        f"**Tree.** Greedy return / optimum averages {i2q.mean():.3f} for I2Q, "
        f"{iql.mean():.3f} for IQL and {ma2.mean():.3f} for MA2QL. I2Q − IQL is "
        f"{p['I2Q - IQL']['mean']:+.3f} [{p['I2Q - IQL']['ci'][0]:+.3f}, "
        f"{p['I2Q - IQL']['ci'][1]:+.3f}] (better in {p['I2Q - IQL']['wins']} of {games} "
        f"games, worse in {p['I2Q - IQL']['losses']}). MA2QL − IQL is {pm['mean']:+.3f} "
        f"[{pm['ci'][0]:+.3f}, {pm['ci'][1]:+.3f}] (better in {pm['wins']}, worse in "
        f"{pm['losses']}), "
        + ("so MA2QL does beat IQL here. " if pm["ci"][0] > 0 else
           "so MA2QL does not beat IQL here. " if pm["ci"][1] > 0 else
           "so MA2QL is worse than IQL here. ")
        + ("Only one MA2QL agent learns at a time, so each gets half of IQL's updates: its "
           f"curve lags IQL's early ({curves['MA2QL'][early]:.3f} against "
           f"{curves['IQL'][early]:.3f} after {(early + 1) * tree['every']:,} episodes). "
           if curves["MA2QL"][early] < curves["IQL"][early] - 0.02 else "")
        + f"I2Q's greedy policy is exactly optimal in {t['I2Q']['at_optimum']}/{total} runs and "
        f"falls short in {int(i2q_short.sum())} (worst {i2q.min():.3f}); "
        f"{int((dev == 0).sum())} of those already leave the optimal path at the root. Why, at "
        f"the first step off the optimal path: in {failure['unobserved']} runs some "
        "transition of the optimal path had never been observed by an agent after its own "
        "action, so it could not be that agent's ideal transition (exploration); in "
        f"{failure['values']} both agents' ideal transitions for their greedy actions agree "
        "with the executed, suboptimal joint action, i.e. their Q_ss values undervalue the "
        "optimal branch (the values have not propagated up from its rarely visited deeper "
        f"nodes: α {cfg.alpha:g}, one update per visit, and Q_i(s, a_i) bootstraps on "
        "Q_i(s'*), which is only updated when s'* itself is visited); "
        + (f"in {failure['miscoordinated']} the agents' ideal transitions differ, so their "
           "greedy actions combine into a joint action neither intended: a near-tie between "
           "two joint actions that each agent's separately learned (differently initialised, "
           "not yet converged) Q_ss breaks its own way. " if failure["miscoordinated"] else
           "in none did the agents' ideal transitions differ (a miscoordination, possible "
           "when two joint actions are near-tied and each agent's separately learned Q_ss "
           "breaks the tie its own way). ")
        + "I2Q "
        + trend(curves["I2Q"], late) + f" over the last quarter of training (mean "
        f"{curves['I2Q'][late]:.3f} after {(late + 1) * tree['every']:,} episodes, "
        f"{curves['I2Q'][-1]:.3f} at {args.tree_episodes:,}); IQL "
        + trend(curves["IQL"], late) + f" ({curves['IQL'][late]:.3f}, "
        f"{curves['IQL'][-1]:.3f}) and MA2QL " + trend(curves["MA2QL"], late)
        + f" ({curves['MA2QL'][late]:.3f}, {curves['MA2QL'][-1]:.3f}).")
    return [matrix_text, tree_text]


# ------------------------------------------------------------------------------ main
def main(argv=None):
    parser = experiment_parser(__doc__, report_only="compute nothing: rebuild the page and "
                                                    "figure from --json")
    parser.add_argument("--matrix-seeds", type=int, default=10)
    parser.add_argument("--matrix-episodes", type=int, default=20_000)
    parser.add_argument("--matrix-checkpoints", type=int, default=100)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--first-game", type=int, default=0)
    parser.add_argument("--tree-seeds", type=int, default=1, help="learning seeds per game")
    parser.add_argument("--tree-episodes", type=int, default=20_000)
    parser.add_argument("--tree-checkpoints", type=int, default=40)
    parser.add_argument("--game-chunk", type=int, default=20,
                        help="games per call of the compiled program (memory)")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--epsilon", type=float, default=None)
    parser.add_argument("--turn-length", type=int, default=None,
                        help="MA2QL turn length in episodes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="/tmp/teamrl_experiments/decentralised_tabular.json")
    parser.add_argument("--tree-row-note", default="",
                        help="a sentence appended to the tree's row of docs/RESULTS.md")
    # Its saved results are one JSON file, not run folders: --report-only reads the
    # arguments from there (report_only below).
    args, argv = parse_flags(parser, argv, reuse_saved=False)
    args.argv = argv
    out = page_folder(args)
    if args.report_only:
        return report_only(parser, args)

    # The code version is taken when teamrl is imported; import before redirecting stdout
    # (importing jaxmarl resets sys.stdout).
    global CODE_AT_IMPORT
    CODE_AT_IMPORT = code_version()
    import teamrl.envs.didactic  # noqa: F401
    from teamrl.algos.tabular.qlearning import TabularConfig

    overrides = {k: v for k, v in (("alpha", args.alpha), ("epsilon", args.epsilon),
                                   ("turn_length", args.turn_length)) if v is not None}
    cfg = TabularConfig(**overrides)

    start = time.time()
    with echoed_output() as log:
        print(f"teamrl {CODE_AT_IMPORT}; {cfg}; load average {os.getloadavg()[0]:.1f}")
        matrix = overgeneralisation_study(args, cfg)
        tree = tree_study(args, cfg)
        figure(out / "decentralised_tabular.png", matrix, tree, args)
        wall_s = time.time() - start
        print(f"total wall time {wall_s:.0f} s; load average {os.getloadavg()[0]:.1f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(
        {"code": CODE_AT_IMPORT, "config": dataclasses.asdict(cfg), "args": args.argv,
         "matrix": matrix, "tree": tree, "output": log.getvalue(), "wall_s": wall_s},
        default=str))
    write_markdown(out / "decentralised_tabular.md", args, cfg, matrix, tree, log.getvalue(),
                   wall_s)


def report_only(parser, args):
    """The page and figure from the results saved in --json, with the arguments of the run
    that saved them (arguments given now win); exit EXIT_NO_SAVED_RUNS if there are none."""
    global CODE_AT_IMPORT
    path = Path(args.json)
    if not path.is_file():
        print(f"--report-only: no saved results {path}; run the script without --report-only",
              file=sys.stderr)
        raise SystemExit(EXIT_NO_SAVED_RUNS)
    saved = json.loads(path.read_text())
    if "output" not in saved:  # saved before --report-only existed: the page would lose it
        print(f"--report-only: {path} lacks the run's output; run the script again",
              file=sys.stderr)
        raise SystemExit(EXIT_NO_SAVED_RUNS)
    given = [a for a in args.argv if a != "--report-only"]
    args = parser.parse_args(saved["args"] + given)
    args.argv = saved["args"] + given
    CODE_AT_IMPORT = saved["code"]
    from teamrl.algos.tabular.qlearning import TabularConfig

    cfg = TabularConfig(**saved["config"])
    out = Path(args.out)
    for entry in saved["matrix"]["results"].values():  # JSON made the joint actions lists
        entry["joint"] = [tuple(j) for j in entry["joint"]]
    figure(out / "decentralised_tabular.png", saved["matrix"], saved["tree"], args)
    write_markdown(out / "decentralised_tabular.md", args, cfg, saved["matrix"], saved["tree"],
                   saved["output"], saved["wall_s"])


if __name__ == "__main__":
    main()
