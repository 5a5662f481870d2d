"""The package's architecture is checked, not only written (docs/design.md section 5).

The stages import only downward and the shared pieces sit below them: the layers contract in
``pyproject.toml`` (import-linter), which also requires every module to be in a layer. Within
a layer the contract allows any import, so the absence of import cycles is checked here too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def test_layers_contract_holds():
    """`lint-imports` with the repository's contract: exit 0, contract kept."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    exe = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(exe), "--no-cache"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def import_cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """Every strongly connected set of two or more modules of ``package`` (Tarjan), as
    sorted lists; empty when the import graph is acyclic."""
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.find_modules_directly_imported_by(node)):
            if nxt not in modules:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in modules:
        if module not in index:
            visit(module)
    return cycles


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    sys.path.insert(0, str(SRC))
    try:
        return grimp.build_graph("cellseg", cache_dir=None)
    finally:
        sys.path.remove(str(SRC))


def test_no_import_cycle(graph):
    """No two modules of cellseg import each other, directly or through others (lazy
    imports inside functions count too)."""
    assert import_cycles(graph, "cellseg") == []


def test_cycle_finder_finds_a_planted_cycle():
    """The check above could fail: a graph with a -> b -> c -> a has one cycle."""
    g = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c", "p.d"):
        g.add_module(m)
    g.add_import(importer="p.a", imported="p.b")
    g.add_import(importer="p.b", imported="p.c")
    g.add_import(importer="p.c", imported="p.a")
    g.add_import(importer="p.d", imported="p.a")
    assert import_cycles(g, "p") == [["p.a", "p.b", "p.c"]]
