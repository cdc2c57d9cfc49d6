"""Regenerate docs/RESULTS.md, the table of every claim checked, from the result sections.

    python experiments/make_results.py              # assemble docs/RESULTS.md
    python experiments/make_results.py --refresh    # first rebuild sections from saved runs
    python experiments/make_results.py --check      # exit 1 if docs/RESULTS.md is stale

**The protocol** (for whoever writes an experiment script):

1. The script ``experiments/<name>.py`` writes its section ``docs/results/<name>.md`` (setup,
   per-seed numbers, the command, its output) and its figures ``docs/results/<name>*.png``,
   embedded in the section as ``![alt](<file>.png)``; RESULTS.md shows them all under
   *Figures*.
2. The same code that writes the section writes its RESULTS.md rows into it, one HTML comment
   per claim (invisible when rendered), computed from the same results so the two never
   disagree::

       from make_results import results_row     # experiments/ is on sys.path for scripts
       lines.append(results_row(claim="...", ours="...", published="...", budget="...",
                                seeds="...", metric="...", published_metric="same"))

   ``ours`` is our measured number(s) with just enough context to read them; ``published``
   the paper's number where one exists (``–`` otherwise, or ``a theorem``); ``budget`` the
   env steps / episodes / iterations behind ``ours``; ``seeds`` how many. ``where`` defaults
   to a link to the section and the script. ``metric`` says what ``ours`` measures and under
   which protocol (training return, deterministic evaluation every 25 updates, ...); a row
   with a published number also says what that number measures (``published_metric``,
   ``"same"`` when it is ours), and where the two differ, how (``differs``): rows comparing
   different metrics without saying so are refused, by results_row and again when
   assembling.
3. Rows appear in the order of ORDER below (sections and STATIC rows by name); sections not
   listed there follow alphabetically, so a new section shows up without editing this file.
4. Optional, for ``--refresh``: if the section can be rebuilt from saved runs without
   training, the script takes ``--report-only`` (train nothing; every run it needs must have
   been saved with the same settings, else exit EXIT_NO_SAVED_RUNS naming the missing one)
   and its name goes into REPORT_ONLY below. ``--refresh`` runs each of them, skipping those
   whose saved runs are absent, then assembles. The harness, experiments/experiment_runs.py,
   does this for a grid of runs: ``parse_flags`` (a rebuilt section keeps the arguments and
   ``--note`` of the invocation that trained), ``run_grid(..., report_only=...)`` (trains
   nothing then) and ``save_results`` (records those arguments after training).
   Grids too long for one sitting keep their runs under ``experiment_runs.SAVED``
   (experiments/saved/<name>/, in git without checkpoints) and evaluate through
   ``evaluate_or_reuse``, so their sections rebuild on any checkout.
5. After a section changes, run this script and commit both: tests/test_make_results.py
   fails while docs/RESULTS.md differs from what the sections give.

Rows backed by tests rather than experiment scripts live in STATIC here. Assembling reads
only the sections, so regenerating is deterministic: the same sections give the same
RESULTS.md byte for byte.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("claim", "where", "ours", "published", "metric", "budget", "seeds")
# Fields of a results-row that make up its *metric* column (see metric_problem).
METRIC_FIELDS = ("metric", "published_metric", "differs")
NO_NUMBER = "–"
EXIT_NO_SAVED_RUNS = 3
ORDER = ["proposition1", "monotonic_improvement", "advantage_decomposition", "product_game",
         "mpe_comparison", "mpe_decentralised", "mamujoco", "smax", "football", "single_agent",
         "decentralised_tabular"]
REPORT_ONLY = ["proposition1", "mpe_comparison", "mamujoco", "smax", "football",
               "decentralised_tabular", "decentralised_deep"]
STATIC = {
    "advantage_decomposition": [{
        "claim": "Multi-agent advantage decomposition lemma (Kuba et al. 2022)",
        "where": "`tests/test_tabular_exact.py`",
        "ours": "exact to 1e-10 for every permutation on a random 3-agent game",
        "published": "an identity", "budget": "exact (known model)", "seeds": "1 game",
        "metric": "largest absolute difference of the two sides, exact advantages",
        "published_metric": "same"}],
    "product_game": [{
        "claim": "Product game: from means (−0.25, 0.25), δ = 0.5, one sequential HATRPO "
                 "iteration raises E[r], a simultaneous trust-region step lowers it",
        "where": "`tests/test_trust_region.py::test_product_game_sequential_step_improves_and_"
                 "simultaneous_does_not`",
        "ours": "holds for 3 of 3 seeds with the compiled sample-based HATRPO",
        "published": "–", "budget": "one iteration", "seeds": "3",
        "metric": "exact expected reward E[r] before and after the iteration"}],
}
HEADER = """# Results

Each claim of the papers teamrl implements, checked by a script in `experiments/` (or a test
in `tests/`) on this repository's code. The sections under `docs/results/` are written by the
scripts themselves, with the exact commands, settings, per-seed numbers and figures; re-run a
script to regenerate its section. All numbers were measured on a 2-core CPU machine.

This page is generated from the sections by `python experiments/make_results.py` (do not edit
it by hand; the protocol is in that script's docstring). *ours* is our measured number,
*published* the papers' where one exists, *metric* what each side measures and under which
protocol (and how they differ, where they do), *budget* what it was measured at and *seeds*
how many seeds.
"""
_ROW = re.compile(r"^<!-- results-row (\{.*\}) -->$")
_FIGURE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def metric_problem(row: dict) -> str | None:
    """Why a row's metrics cannot stand as they are, or None: every row names its metric, a
    row with a published number names that number's too, and different ones say how."""
    metric, published_metric = row.get("metric", ""), row.get("published_metric", "")
    if not str(metric).strip():
        return "no metric: say what 'ours' measures and under which protocol"
    if str(row.get("published", NO_NUMBER)).strip() in ("", NO_NUMBER):
        return None
    if not str(published_metric).strip():
        return ("a published number without published_metric: say what it measures "
                "('same' when it is ours)")
    if published_metric not in ("same", metric) and not str(row.get("differs", "")).strip():
        return (f"compares different metrics without saying so: ours is {metric!r}, the "
                f"published number {published_metric!r}; say how they differ (differs=)")
    return None


def metric_cell(row: dict) -> str:
    """The *metric* column: ours, and the published number's where there is one."""
    text = f"ours: {row['metric']}"
    if str(row.get("published", NO_NUMBER)).strip() in ("", NO_NUMBER):
        return text
    if row["published_metric"] in ("same", row["metric"]):
        return text + "; published: the same"
    return text + f"; published: {row['published_metric']} (differs: {row['differs']})"


def results_row(claim: str, ours: str, published: str = "–", budget: str = "",
                seeds: str = "", where: str | None = None, metric: str = "",
                published_metric: str = "", differs: str = "") -> str:
    """One row of RESULTS.md as the HTML comment a section carries (protocol, step 2)."""
    row = {"claim": claim, "ours": ours, "published": published, "budget": budget,
           "seeds": seeds, "metric": metric}
    if published_metric:
        row["published_metric"] = published_metric
    if differs:
        row["differs"] = differs
    if where is not None:
        row["where"] = where
    for key, value in row.items():
        if not isinstance(value, str) or "\n" in value:
            raise ValueError(f"results_row: {key} must be one line of text, got {value!r}")
    problem = metric_problem(row)
    if problem:
        raise ValueError(f"results_row {claim[:60]!r}: {problem}")
    # "--" may not appear inside an HTML comment; \u002d is the same character to JSON.
    text = json.dumps(row, ensure_ascii=False).replace("--", "-\\u002d")
    return f"<!-- results-row {text} -->"


# ---------------------------------------------------------------------------- assembling
def section_rows(path: Path) -> list[dict]:
    """The rows a section carries, with ``where`` filled in (link to it and its script)."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = _ROW.match(line.strip())
        if not match:
            continue
        try:
            row = json.loads(match.group(1))
        except json.JSONDecodeError as err:
            raise SystemExit(f"{path}:{number}: results-row is not valid JSON: {err}") from None
        missing = [c for c in COLUMNS if c != "where" and c not in row]
        if missing:
            raise SystemExit(f"{path}:{number}: results-row lacks {', '.join(missing)}")
        problem = metric_problem(row)
        if problem:
            raise SystemExit(f"{path}:{number}: results-row {problem}")
        row["metric"] = metric_cell(row)
        if "where" not in row:
            script = path.parents[2] / "experiments" / f"{path.stem}.py"
            row["where"] = f"[{path.name}](results/{path.name})" + (
                f", `experiments/{script.name}`" if script.is_file() else "")
        rows.append(row)
    return rows


def section_figures(path: Path) -> list[tuple[str, str]]:
    """``(alt text, file)`` of the local images a section embeds, in order."""
    return [(alt, target) for alt, target in _FIGURE.findall(path.read_text(encoding="utf-8"))
            if "://" not in target]


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return path.stem


def _cell(value) -> str:
    """A table cell from a results-row value (a string, or a number such as a seed count)."""
    return re.sub(r"(?<!\\)\|", r"\\|", str(value).strip()) or "–"


def assemble(root: Path = ROOT) -> tuple[str, list[str]]:
    """(RESULTS.md text, notes) from ``root/docs/results/*.md`` and STATIC."""
    results = root / "docs" / "results"
    sections = {p.stem: p for p in sorted(results.glob("*.md"))}
    names = [n for n in ORDER if n in sections or n in STATIC]
    names += sorted(n for n in sections if n not in ORDER)
    notes, lines = [], [HEADER, "| " + " | ".join(COLUMNS) + " |",
                        "|" + " --- |" * len(COLUMNS)]
    figures = []
    for name in names:
        if name in sections:
            rows = section_rows(sections[name])
            if not rows:
                notes.append(f"{sections[name]} has no results-row; it is left out of the "
                             "table (see the protocol in experiments/make_results.py)")
            shown = section_figures(sections[name])
            if shown:
                figures.append((name, sections[name], shown))
        else:
            rows = [dict(row, metric=metric_cell(row)) for row in STATIC[name]]
        for row in rows:
            lines.append("| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |")
    if figures:
        lines += ["", "## Figures", ""]
        for name, path, shown in figures:
            lines += [f"### {_title(path)}", "", f"From [{path.name}](results/{path.name}).", ""]
            for alt, target in shown:
                lines += [f"![{alt}](results/{target})", ""]
    return "\n".join(lines).rstrip("\n") + "\n", notes


def refresh(root: Path = ROOT, names=None) -> list[str]:
    """Run ``--report-only`` of the REPORT_ONLY scripts; returns failures (skipping a script
    without saved runs is not one)."""
    failures = []
    for name in names or REPORT_ONLY:
        script = root / "experiments" / f"{name}.py"
        if not script.is_file():
            continue
        print(f"[make_results] {script.name} --report-only", flush=True)
        proc = subprocess.run([sys.executable, str(script), "--report-only"], cwd=root)
        if proc.returncode == EXIT_NO_SAVED_RUNS:
            print(f"[make_results] {name}: no saved runs here; its section is kept as it is")
        elif proc.returncode != 0:
            failures.append(f"{script.name} --report-only failed (exit {proc.returncode})")
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--refresh", action="store_true",
                        help="rebuild the sections of REPORT_ONLY scripts from their saved runs "
                             "first (no training)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if docs/RESULTS.md differs from what "
                             "would be generated")
    parser.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)
    root = Path(args.root)
    failures = refresh(root) if args.refresh else []
    text, notes = assemble(root)
    for note in notes:
        print(f"[make_results] note: {note}", file=sys.stderr)
    target = root / "docs" / "RESULTS.md"
    if args.check:
        current = target.read_text(encoding="utf-8") if target.is_file() else ""
        if current != text:
            print(f"[make_results] {target} is out of date; run python experiments/"
                  "make_results.py", file=sys.stderr)
            return 1
        print(f"[make_results] {target} is up to date")
        return 0
    target.write_text(text, encoding="utf-8")
    rows = sum(line.startswith("| ") for line in text.splitlines()) - 2  # header, rule
    print(f"[make_results] wrote {target} ({rows} rows)")
    for failure in failures:
        print(f"[make_results] error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
