"""Generate the parts of the documentation that are read off the code.

* ``docs/cli.md``: every ``teamrl`` command's help (from ``teamrl.cli``'s argparse parser),
  the run and network settings, every algorithm's settings with their library defaults
  (the dataclass each algorithm registers as ``config_class``, the same fields
  ``teamrl list --keys ALGO ENV`` prints), the options of every environment family and what
  each shipped preset sets.
* Blocks between ``<!-- BEGIN GENERATED kind:arg -->`` and ``<!-- END GENERATED -->`` in the
  other pages (``algo-defaults:<algo>``, ``algo-presets:<algo>``, ``env-options``,
  ``env-ids``), so the defaults tables of the algorithm pages are the code's.

Usage::

    python docs/gen_cli_reference.py           # rewrite docs/cli.md and the generated blocks
    python docs/gen_cli_reference.py --check   # exit 1 (naming the files) if any is stale

``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import re
import sys
import typing

DOCS = pathlib.Path(__file__).resolve().parent
WIDTH = 100  # argparse help width, fixed so the output does not depend on the terminal

BLOCK = re.compile(r"(<!-- BEGIN GENERATED (?P<kind>[\w-]+)(?::(?P<arg>[\w/-]+))? -->\n)"
                   r"(?P<body>.*?)(<!-- END GENERATED -->)", re.S)


# ------------------------------------------------------------------------------ formatting
def fmt_value(value) -> str:
    """A default as a user would type it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list):
        return "[" + ",".join(fmt_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def fmt_range(meta: dict) -> str:
    if meta.get("choices"):
        return " \\| ".join(f"`{c}`" for c in meta["choices"])
    low, high = meta.get("low"), meta.get("high")
    if low is not None and high is not None:
        left = "(" if meta.get("low_open") else "["
        right = ")" if meta.get("high_open") else "]"
        return f"{left}{fmt_value(low)}, {fmt_value(high)}{right}"
    if low is not None:
        return f"{'>' if meta.get('low_open') else '≥'} {fmt_value(low)}"
    if high is not None:
        return f"{'<' if meta.get('high_open') else '≤'} {fmt_value(high)}"
    return ""


def type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    return getattr(tp, "__name__", str(tp))


def escape(text: str) -> str:
    return text.replace("|", "\\|")


def settings_table(section, values=None) -> str:
    """Markdown table of a config dataclass (class or instance): key, type, default, valid
    values, meaning. ``values``: an instance whose values to show (default: the class's)."""
    cls = section if isinstance(section, type) else type(section)
    instance = values if values is not None else cls()
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | valid | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        meta = f.metadata
        rows.append(f"| `{f.name}` | {type_name(hints[f.name])} | "
                    f"`{escape(fmt_value(getattr(instance, f.name)))}` | {fmt_range(meta)} | "
                    f"{escape(meta.get('help', ''))} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------ the code
def algorithms():
    from teamrl.algos import ALGORITHMS, DESCRIPTIONS

    return ALGORITHMS, DESCRIPTIONS


def sorted_presets() -> list[str]:
    """Shipped presets, each family's general files before its per-task ones."""
    from teamrl.config import list_presets

    return sorted(list_presets(), key=lambda p: (p.split("/")[0], p.count("/"), p))


def presets_for(algo: str) -> list[str]:
    return [p for p in sorted_presets() if p.rsplit("/", 1)[-1] == algo]


def preset_settings(preset: str) -> str:
    """``key=value`` pairs a preset sets, in file order, across its sections."""
    from teamrl.config import load_preset

    data = load_preset(preset + ".yaml")
    pairs = [f"{k}={fmt_value(v)}" for values in data.values() for k, v in (values or {}).items()]
    return " ".join(pairs)


def presets_table(algo: str) -> str:
    presets = presets_for(algo)
    if not presets:
        return "No preset ships for this algorithm: the defaults above apply everywhere."
    rows = ["| preset (applies to) | sets |", "| --- | --- |"]
    for p in presets:
        family_task = p.rsplit("/", 1)[0]
        scope = (f"`{family_task}/*`" if "/" not in family_task else f"`{family_task}`")
        rows.append(f"| `teamrl/configs/{p}.yaml` ({scope}) | `{escape(preset_settings(p))}` |")
    return "\n".join(rows)


def env_families() -> list[tuple[str, list[str], type]]:
    """(label, env ids, options class) per options class, in registry order, plus the
    pattern ids ``pettingzoo/<module>`` and ``gymnasium/<id>``."""
    from teamrl.envs.registry import REGISTRY, GymnasiumOptions, PettingZooOptions

    groups: dict[type, list[str]] = {}
    for env_id, entry in REGISTRY.items():
        groups.setdefault(entry.options, []).append(env_id)
    out = []
    for options, ids in groups.items():
        if options is GymnasiumOptions:
            ids = ids + ["gymnasium/<id>"]
        out.append((options.__name__, ids, options))
    out.append((PettingZooOptions.__name__, ["pettingzoo/<module>"], PettingZooOptions))
    return out


def compress_ids(ids: list[str]) -> str:
    if len(ids) > 6:
        family = ids[0].split("/")[0]
        return f"`{family}/...` ({len(ids)} ids, see `teamrl list`)"
    return ", ".join(f"`{i}`" for i in ids)


def env_options_tables(level: str = "###") -> str:
    parts = []
    for label, ids, options in env_families():
        parts.append(f"{level} {label}\n\n{compress_ids(ids)}\n")
        if dataclasses.fields(options):
            parts.append(settings_table(options) + "\n")
        else:
            parts.append("No options.\n")
    return "\n".join(parts).rstrip()


def env_ids_table() -> str:
    from teamrl.envs.registry import REGISTRY

    rows = ["| env id | description | options |", "| --- | --- | --- |"]
    for env_id, entry in REGISTRY.items():
        opts = ", ".join(f"`{f.name}`" for f in dataclasses.fields(entry.options)) or "none"
        rows.append(f"| `{escape(env_id)}` | {escape(entry.description)} | {opts} |")
    rows.append("| `pettingzoo/<module>` | any PettingZoo ParallelEnv "
                "`<module>.parallel_env(**env_kwargs)` (host) | `workers`, `env_kwargs`, "
                "`max_steps` |")
    rows.append("| `gymnasium/<id>` | any registered Gymnasium env with a Box observation, "
                "one agent (host) | `workers`, `env_kwargs`, `max_steps` |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------ cli.md
def command_helps() -> list[tuple[str, str]]:
    """(command line, help text) of ``teamrl`` and each subcommand."""
    from teamrl.cli import _parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        parser = _parser()
        helps = [("teamrl --help", parser.format_help())]
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, subparser in sub.choices.items():
            helps.append((f"teamrl {name} --help", subparser.format_help()))
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return helps


def render_cli() -> str:
    from teamrl.config import NetworkConfig, RunConfig

    ALGORITHMS, DESCRIPTIONS = algorithms()
    out = ["# CLI reference",
           "",
           "<!-- Generated by docs/gen_cli_reference.py from teamrl's code; do not edit. "
           "Regenerate with `python docs/gen_cli_reference.py`. -->",
           "",
           "Settings are flat `key=value` pairs after `teamrl train ALGO ENV`; each key belongs to "
           "one section of the resolved config (`run`, `network`, `algo`, `env`), written to "
           "`RUN_DIR/config.yaml`. Values are parsed as YAML (`lr=3e-4`, "
           "`hidden_sizes=[128,128]`, `share_actor=false`, `\"env_kwargs={N: 3}\"`). The defaults "
           "below are the library's; the presets shipped for an (env, algo) pair are applied "
           "on top of them before your settings (last section of this page). "
           "`teamrl list --keys ALGO ENV` prints the resolved values for one pair.",
           "",
           "## Commands", ""]
    for command, text in command_helps():
        out += [f"### `{command}`", "", "```text", text.rstrip(), "```", ""]
    out += ["## Run settings (`run` section, every algorithm)", "", settings_table(RunConfig), "",
            "## Network settings (`network` section, every algorithm)", "",
            settings_table(NetworkConfig), "",
            "## Algorithm settings (`algo` section)", "",
            "Library defaults of each algorithm's config dataclass, before presets.", ""]
    for name in sorted(ALGORITHMS):
        cls = ALGORITHMS[name]
        kinds = ", ".join(cls.action_kinds)
        out += [f"### `{name}`", "",
                f"{DESCRIPTIONS.get(name, '')}. Actions: {kinds}. "
                f"Config class `{cls.config_class.__module__}.{cls.config_class.__name__}`; "
                f"page: [algorithms/{name}.md](algorithms/{name}.md).", "",
                settings_table(cls.config_class), ""]
    out += ["## Environment options (`env` section)", "", env_options_tables(), "",
            "## Presets", "",
            "Applied in this order before the command line's settings: "
            "`teamrl/configs/<family>/<algo>.yaml`, then `teamrl/configs/<family>/<task>/"
            "<algo>.yaml` (family and task are the two halves of the env id).", "",
            "| preset | sets |", "| --- | --- |"]
    for p in sorted_presets():
        out.append(f"| `{p}` | `{escape(preset_settings(p))}` |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ blocks
def render_block(kind: str, arg: str | None) -> str:
    ALGORITHMS, _ = algorithms()
    if kind == "algo-defaults":
        return settings_table(ALGORITHMS[arg].config_class)
    if kind == "algo-presets":
        return presets_table(arg)
    if kind == "env-options":
        return env_options_tables(level="###")
    if kind == "env-ids":
        return env_ids_table()
    raise ValueError(f"unknown generated block kind {kind!r}")


def fill_blocks(text: str) -> str:
    def replace(match):
        body = render_block(match["kind"], match["arg"])
        return f"{match.group(1)}{body}\n{match.group(5)}"

    return BLOCK.sub(replace, text)


def pages() -> list[pathlib.Path]:
    return sorted(p for p in DOCS.rglob("*.md") if p.name != "cli.md")


def expected_files() -> dict[pathlib.Path, str]:
    """Every generated file's expected content (cli.md, and pages with generated blocks)."""
    files = {DOCS / "cli.md": render_cli()}
    for page in pages():
        text = page.read_text()
        if BLOCK.search(text):
            files[page] = fill_blocks(text)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only check that the generated files are up to date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected_files().items():
        current = path.read_text() if path.exists() else None
        if current != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    for path in stale:
        verb = "stale" if args.check else "written"
        print(f"{verb}: {path.relative_to(DOCS.parent)}")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    # The docs describe teamrl itself, not the plugins installed beside it (entry points).
    os.environ.setdefault("TEAMRL_NO_PLUGINS", "1")
    sys.exit(main())
