"""The import graph of the tokenwatch package: no cycle, and no layer importing one above it.

Two views of the same graph. Statically, every import statement of every module (also those inside functions,
which run later) gives an edge. Dynamically, each module is imported on its own in a fresh interpreter state
while a hook on ``__import__`` records which module imported which.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "tokenwatch"
# What each lower layer may import from tokenwatch (itself always). The rest (steps, pipeline, tasks, ...)
# sits above them.
BASE = {"tokenwatch.clock", "tokenwatch.errors", "tokenwatch.outcome"}
LAYERS = {
    "tokenwatch.domain": BASE,
    "tokenwatch.fetch": BASE,
    "tokenwatch.db": BASE | {"tokenwatch.domain"},
    "tokenwatch.cache": BASE | {"tokenwatch.domain"},
}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (the linked folders included, as they are installed)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def static_edges(found: Mapping[str, Path]) -> dict[str, set[str]]:
    """importer -> imported, from every import statement of every module."""
    edges: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges[name].update(alias.name for alias in node.names if alias.name in found)
            elif isinstance(node, ast.ImportFrom) and node.module in found and not node.level:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    edges[name].add(submodule if submodule in found else node.module)
            elif isinstance(node, ast.ImportFrom):
                assert not node.level, f"{name} uses a relative import"
    return edges


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or of a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
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
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_cycles_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_statement_closes_a_cycle() -> None:
    assert cycles(static_edges(modules())) == []


def test_no_layer_imports_one_above_it() -> None:
    edges = static_edges(modules())
    upward = []
    for importer, imported in edges.items():
        for layer, allowed in LAYERS.items():
            if importer == layer or importer.startswith(layer + "."):
                upward += [(importer, target) for target in imported
                           if not any(target == ok or target.startswith(ok + ".") for ok in {*allowed, layer})]
    assert upward == []


_RECORD = """
import builtins, importlib, json, sys
modules = json.loads(sys.argv[1])
real_import = builtins.__import__
edges = {}

def recording(name, globals=None, locals=None, fromlist=(), level=0):
    module = real_import(name, globals, locals, fromlist, level)
    importer = (globals or {}).get("__name__", "")
    if importer in modules_set:
        targets = [name] + [f"{name}.{item}" for item in fromlist or ()]
        edges.setdefault(importer, set()).update(t for t in targets if t in modules_set and t != importer)
    return module

modules_set = set(modules)
builtins.__import__ = recording
for name in modules:
    metrics = sys.modules.get("tokenwatch.metrics")
    if metrics is not None:  # its counters live in prometheus_client's global registry: let them be made again
        from prometheus_client import REGISTRY, metrics as kinds
        for value in list(vars(metrics).values()):
            if isinstance(value, kinds.MetricWrapperBase):
                REGISTRY.unregister(value)
    for loaded in [m for m in sys.modules if m == "tokenwatch" or m.startswith("tokenwatch.")]:
        del sys.modules[loaded]
    importlib.import_module(name)
print(json.dumps({k: sorted(v) for k, v in edges.items()}))
"""


def test_every_module_imports_on_its_own_and_the_recorded_graph_has_no_cycle() -> None:
    names = sorted(modules())
    result = subprocess.run([sys.executable, "-c", _RECORD, json.dumps(names)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = {k: set(v) for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    assert recorded, "the hook recorded no import at all"
    assert cycles(recorded) == []
