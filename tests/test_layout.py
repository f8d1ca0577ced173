"""The source's layout: one capability per folder, imports running one way (down the layers), no import cycle.

Every import counts, function-local ones too: a cycle hidden inside a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# A module may import from its own layer and the layers before it, never from a later one.
LAYERS: list[tuple[str, ...]] = [
    ("kdnas.config", "kdnas.errors"),
    ("kdnas.study",),  # the study and its typed records: every other part may read them
    ("kdnas.outputs", "kdnas.devices", "kdnas.progress", "kdnas.ray_session", "kdnas.resources"),
    ("kdnas.data",),
    ("kdnas.latency",),
    ("kdnas.distill",),
    ("kdnas.student",),
    ("kdnas.teachers",),
    ("kdnas.tune",),
    ("kdnas.readers",),
    ("kdnas.cli", "kdnas"),
]


def layer_of(module: str) -> int:
    """The index of the layer ``module`` belongs to (its longest listed prefix)."""
    best, rank = "", None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, rank = name, index
    if rank is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return rank


def module_sources(root: Path = SRC) -> dict[str, str]:
    """Every kdnas module's dotted name and source."""
    sources = {}
    for path in sorted((root / "kdnas").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        sources[name] = path.read_text()
    return sources


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """Which kdnas modules each module imports, anywhere in its body (``from pkg import mod`` names ``pkg.mod``)."""
    graph: dict[str, set[str]] = {name: set() for name in sources}
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kdnas":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    graph[name].add(full if full in sources else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.split(".")[0] == "kdnas")
    for name in graph:
        graph[name].discard(name)
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for each import of a module from a later layer."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph`` (one per strongly connected component of more than one module), by Tarjan's method.

    A package's ``__init__`` importing its own submodules is how packages work, not a cycle, so edges from a package
    into itself are left out."""
    edges = {a: {b for b in bs if b in graph and not b.startswith(a + ".")} for a, bs in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def test_imports_run_one_way_down_the_layers():
    assert upward_imports(import_graph(module_sources())) == []


def test_no_module_imports_itself_back_through_others():
    assert import_cycles(import_graph(module_sources())) == []


def test_every_folder_is_a_layer():
    folders = {p.name for p in (SRC / "kdnas").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    listed = {name.split(".")[1] for names in LAYERS for name in names if name.count(".") == 1}
    assert folders <= listed, f"folders in no layer: {sorted(folders - listed)}"


def test_the_checks_catch_an_upward_import_and_a_hidden_cycle():
    sources = {
        "kdnas.study.records": "from kdnas.tune.trial import x\n",  # a record reaching up into the search
        "kdnas.tune.trial": "def f():\n    from kdnas.tune.inputs import y\n",
        "kdnas.tune.inputs": "from kdnas.tune import trial\n",
        "kdnas.tune": "",
    }
    graph = import_graph(sources)
    assert upward_imports(graph) == ["kdnas.study.records -> kdnas.tune.trial"]
    assert import_cycles(graph) == [["kdnas.tune.inputs", "kdnas.tune.trial"]]
