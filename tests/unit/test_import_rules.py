"""The import rule of ``flowertune/``: no import cycle, and imports go from a higher level to a lower one.

Every ``import flowertune...`` counts, at module level and inside functions (only ``if TYPE_CHECKING:``
blocks are left out: they never run). Levels, low to high:

0. core: the config and its validation, its layering, the registry type and the catalog of pluggable names,
   presets, recipes, wire codecs, logs, memory figures, the home directory
1. domain: ``prompts``, ``data/``, ``models/``, ``train/``, ``eval/`` (and among them: ``models/`` never imports
   ``train/``, ``data/`` never imports ``eval/``)
2. federation and tools over the domain: ``federation/``, ``preflight``, ``report/``, ``sweep``,
   ``trainsets`` (training sets built from the evaluation data with every evaluation item held out)
3. apps: the ServerApp, the ClientApp, ``commands/``, the CLI

``ALLOWED`` lists edges that may break the rule: empty, and it stays so (an edge listed there that no longer
exists fails the test). A lazy ``"module:attr"`` catalog entry (``flowertune/catalog.py``) is no import.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "flowertune"

LEVELS = [  # (module prefix, level); the longest matching prefix wins
    ("flowertune.config", 0), ("flowertune.layering", 0), ("flowertune.template", 0), ("flowertune.registry", 0), ("flowertune.catalog", 0),
    ("flowertune.presets", 0), ("flowertune.recipes", 0), ("flowertune.wire", 0), ("flowertune.logs", 0),
    ("flowertune.memory", 0), ("flowertune.home", 0), ("flowertune.durable", 0),
    ("flowertune.prompts", 1), ("flowertune.data", 1), ("flowertune.models", 1), ("flowertune.train", 1),
    ("flowertune.eval", 1),
    ("flowertune.federation", 2), ("flowertune.launch", 2), ("flowertune.preflight", 2), ("flowertune.report", 2), ("flowertune.sweep", 2),
    ("flowertune.trainsets", 2),
    ("flowertune.server_app", 3), ("flowertune.client_app", 3), ("flowertune.commands", 3), ("flowertune.cli", 3),
]
FORBIDDEN = [("flowertune.models", "flowertune.train"), ("flowertune.data", "flowertune.eval")]

# (importer, imported) edges exempt from the rule; issue 18 emptied it
ALLOWED: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The flowertune modules ``path`` imports anywhere (``from pkg import mod`` counts as ``pkg.mod``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("flowertune"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("flowertune"):
                for alias in node.names:
                    full = f"{mod}.{alias.name}"
                    found.add(full if full in modules else mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def level(module: str) -> int:
    _, lvl = max(((p, lv) for p, lv in LEVELS if module == p or module.startswith(p + ".")),
                      key=lambda pl: len(pl[0]), default=("", None))
    assert lvl is not None, f"{module} has no level: add it to LEVELS"
    return lvl


def violations(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    def under(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    bad = set()
    for a, targets in graph.items():
        for b in targets:
            if level(b) > level(a) or any(under(a, x) and under(b, y) for x, y in FORBIDDEN):
                bad.add((a, b))
    return bad


def cycles(graph: dict[str, set[str]], ignore: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), after dropping ``ignore`` edges."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if (v, w) in ignore:
                continue
            if w not in index:
                strongconnect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_every_module_has_a_level():
    for module in import_graph():
        level(module)


def test_imports_go_down_the_levels_except_the_allowed_edges():
    bad = violations(import_graph())
    assert bad - ALLOWED == set(), sorted(bad - ALLOWED)


def test_the_allow_list_only_holds_edges_that_still_exist():
    graph = import_graph()
    stale = {(a, b) for a, b in ALLOWED if b not in graph.get(a, set())}
    assert stale == set(), f"fixed: remove {sorted(stale)} from ALLOWED"


def test_no_import_cycle_once_the_allowed_edges_are_gone():
    assert cycles(import_graph(), ALLOWED) == []


def test_the_checker_finds_a_cycle_and_an_upward_import():
    graph = {"flowertune.wire": {"flowertune.config"}, "flowertune.config": {"flowertune.wire"},
             "flowertune.models.load": {"flowertune.federation.rundir"}, "flowertune.federation.rundir": set()}
    assert cycles(graph, set()) == [["flowertune.config", "flowertune.wire"]]
    assert violations(graph) == {("flowertune.models.load", "flowertune.federation.rundir")}
