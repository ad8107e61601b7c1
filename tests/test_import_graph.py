"""The package import graph, read from the source: no cycles, and no arrow against the documented layering.

Layers, bottom to top (docs/architecture.md, "Layers"): a module imports only packages of its own
rank or below, lazy imports inside functions included. ``testing`` is a toolbox for tests and
benchmarks, so it sits on top; ``serve`` and ``cli`` never import each other or ``testing``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "slmops"

#: rank of each package; top-level modules (errors, settings, _optional, progress, …) are "core".
RANK = {
    "core": 0,
    "store": 1,
    "stage": 2, "client": 2,
    "data": 3,
    "models": 4,
    "runtimes": 5,
    "bench": 6,
    "evaluate": 7,
    "export": 8, "finetune": 8, "distill": 8, "report": 8, "deploy": 8, "monitor": 8,
    "pipeline": 9,
    "serve": 10, "cli": 10, "testing": 10,
}
#: arrows between top-layer packages that are not allowed although the ranks are equal.
FORBIDDEN = {("serve", "cli"), ("serve", "testing"), ("cli", "testing"), ("pipeline", "serve")}


def _package(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 else "core"


def _imports(path: Path, rel: Path) -> list[tuple[str, int]]:
    module = ["slmops", *rel.with_suffix("").parts]
    if module[-1] == "__init__":
        module = module[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module[: len(module) - node.level + (1 if rel.name == "__init__.py" else 0)]
                found.append((".".join(base + ([node.module] if node.module else [])), node.lineno))
            else:
                found.append((node.module or "", node.lineno))
    return found


def package_edges() -> dict[str, dict[str, list[str]]]:
    """``{package: {imported package: ["file:line", ...]}}`` for every import between two of our packages."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel == Path("__main__.py"):  # `python -m slmops`: the entry point calls the CLI by design
            continue
        source = _package(rel)
        for name, line in _imports(path, rel):
            parts = name.split(".")
            if parts[0] != "slmops" or len(parts) < 2:
                continue
            target = parts[1] if (SRC / parts[1]).is_dir() else "core"
            if target != source:
                edges[source][target].append(f"{rel}:{line}")
    return edges


def _cycles(edges: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages | {"core"} == set(RANK), "add the new package to RANK here and to the layer table in docs/architecture.md"


def test_no_import_goes_up_the_layers() -> None:
    edges = package_edges()
    wrong = [f"{s} -> {t}: {', '.join(where)}" for s, targets in sorted(edges.items()) for t, where in sorted(targets.items())
             if RANK[t] > RANK[s] or (s, t) in FORBIDDEN]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_package_cycles() -> None:
    edges = package_edges()
    cycles = _cycles(edges)
    detail = [f"{c}: " + "; ".join(f"{a}->{b} {edges[a][b][0]}" for a in c for b in c if b in edges.get(a, {})) for c in cycles]
    assert not cycles, "package import cycles:\n" + "\n".join(detail)


@pytest.mark.parametrize(("source", "target"), [("stage", "pipeline"), ("store", "stage"), ("runtimes", "serve")])
def test_the_graph_reader_sees_imports(source: str, target: str, tmp_path: Path) -> None:
    """The reader itself: a lazy, relative import inside a function is an edge it reports."""
    rel = Path(source) / "probe.py"
    probe = tmp_path / "probe.py"
    probe.write_text(f"def f():\n    from ..{target} import x\n    import slmops.{target}.y\n")
    assert _imports(probe, rel) == [(f"slmops.{target}", 2), (f"slmops.{target}.y", 3)]
