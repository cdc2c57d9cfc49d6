"""The package layout holds: every import in ``teamrl`` (function-local ones included) goes to
the importing module's own package or to a package of a lower layer, as listed in
docs/architecture.md, and no modules import each other in a circle."""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "teamrl"


def documented_layers() -> dict[str, int]:
    """{package or top-level module: layer} from the table in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`(teamrl[\w.]*)`", text, re.M)
    assert rows, "docs/architecture.md has no layer table (| layer | `teamrl.x` | ...)"
    return {name: int(layer) for layer, name in rows}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> set[str]:
    """The teamrl modules ``path`` imports, anywhere in it (resolved to module names)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "teamrl"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "teamrl":
                continue
            found.add(target)
            for alias in node.names:  # `from teamrl.x import y` where y is a module
                if (PACKAGE.parent / (target + "." + alias.name).replace(".", "/")).with_suffix(
                        ".py").is_file() or (PACKAGE.parent / target.replace(".", "/")
                                             / alias.name / "__init__.py").is_file():
                    found.add(f"{target}.{alias.name}")
    return found - {name}


def module_level_imports(path: pathlib.Path) -> list[str]:
    """The modules ``path`` imports when it is imported: every import statement outside the
    bodies of functions (class bodies and module-level ``if``/``try`` blocks count)."""
    found, stack = [], list(ast.parse(path.read_text(encoding="utf-8")).body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append("." * node.level + (node.module or ""))
        stack.extend(ast.iter_child_nodes(node))
    return sorted(found)


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def layer_of(module: str, layers: dict[str, int]) -> tuple[str, int] | None:
    """The longest listed name that is ``module`` or a package holding it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in layers:
            return name, layers[name]
    return None


def test_every_package_and_top_level_module_has_a_layer():
    layers = documented_layers()
    rooms = {f"teamrl.{p.name}" for p in PACKAGE.iterdir()
             if p.is_dir() and (p / "__init__.py").is_file()}
    rooms |= {f"teamrl.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    rooms.add("teamrl")  # the package root: the public API
    missing = sorted(rooms - set(layers))
    assert not missing, f"not in docs/architecture.md's layer table: {missing}"
    stale = sorted(set(layers) - rooms)
    assert not stale, f"docs/architecture.md lists packages that do not exist: {stale}"


def test_imports_go_down_the_layers_only():
    layers = documented_layers()
    wrong = []
    for module, targets in graph().items():
        if module == "teamrl":
            eager = module_level_imports(PACKAGE / "__init__.py")
            assert not eager, ("teamrl/__init__.py may import inside functions only (lazy "
                               f"re-exports, fast --version); at module level: {eager}")
        room, rank = layer_of(module, layers)
        for target in targets:
            if target == "teamrl":
                continue
            found = layer_of(target, layers)
            assert found, f"{module} imports {target}, which has no layer"
            target_room, target_rank = found
            if target_room != room and target_rank >= rank:
                wrong.append(f"{module} (layer {rank}) imports {target} (layer {target_rank})")
    assert not wrong, "imports that go up or sideways:\n" + "\n".join(sorted(wrong))


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (the import circles)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return circles


def test_no_import_circles():
    edges = graph()
    # A package's __init__ re-exporting its modules is not a circle with them.
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    assert strongly_connected(edges) == []


def test_the_circle_finder_finds_circles():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", ["teamrl.train.train", "teamrl.train.base_config",
                                  "teamrl.cli_config.base_config", "teamrl.cli.main",
                                  "teamrl.config.RunConfig", "teamrl.algos.ALGORITHMS",
                                  "teamrl.envs.registry.REGISTRY"])
def test_documented_public_names_import(name):
    """The names the docs show stay importable from where the docs show them."""
    import importlib

    module, attr = name.rsplit(".", 1)
    assert hasattr(importlib.import_module(module), attr)
