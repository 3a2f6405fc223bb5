"""The import graph of the tasks/ package, read from the source (nothing is imported): which module
imports which at top level, the cycles, the longest chain, and imports of our own modules made inside
functions. `python -m dev.import_graph` prints the figures; tests/unit/tables/test_imports.py holds the rules."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "tasks"


@dataclass
class ImportGraph:
    edges: dict[str, set[str]] = field(default_factory=dict)          # top-level imports only
    late: list[tuple[str, str, int]] = field(default_factory=list)      # (module, imported, line) inside a def
    outside: dict[str, set[str]] = field(default_factory=dict)        # top-level imports of other packages


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = (root.name,) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts).removesuffix(".__init__")


def _absolute(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, is_package: bool, node: ast.stmt, modules: set[str]) -> list[str]:
    """The modules an import statement names: for `from P import x`, P.x when that is a module, else P."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        target = _absolute(name, is_package, node)
        return [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
    return []


def _top_level(tree: ast.Module):
    """Statements run when the module is imported: the body, and the bodies of its top-level if/try."""
    pending = list(tree.body)
    while pending:
        node = pending.pop(0)
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            pending[:0] = node.body + node.orelse + getattr(node, "finalbody", []) + [
                s for h in getattr(node, "handlers", []) for s in h.body]


def read_graph(root: Path = PACKAGE_ROOT) -> ImportGraph:
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(paths)
    graph = ImportGraph()
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        top = {id(n) for n in _top_level(tree)}
        graph.edges[name] = set()
        graph.outside[name] = set()
        for node in ast.walk(tree):
            for target in _imports(name, is_package, node, modules):
                ours = target == root.name or target.startswith(root.name + ".")
                if id(node) in top:
                    if ours:
                        graph.edges[name].add(target)
                    else:
                        graph.outside[name].add(target.split(".")[0])
                elif ours:
                    graph.late.append((name, target, node.lineno))
        graph.edges[name].discard(name)
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(edges) + 100))
    try:
        for v in sorted(edges):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def chains(edges: dict[str, set[str]]) -> dict[str, list[str]]:
    """For each module, the longest path of imports from it (the graph must have no cycle)."""
    best: dict[str, list[str]] = {}

    def chain(v: str) -> list[str]:
        if v not in best:
            below = max((chain(w) for w in sorted(edges.get(v, ())) if w in edges), key=len, default=[])
            best[v] = [v] + below
        return best[v]

    for v in sorted(edges):
        chain(v)
    return best


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    return max(chains(edges).values(), key=len, default=[])


def level(edges: dict[str, set[str]], module: str) -> int:
    """0 for a module that imports none of ours, else one more than the highest level it imports."""
    return len(chains(edges)[module]) - 1


def main() -> None:
    graph = read_graph()
    found = cycles(graph.edges)
    chain = longest_chain(graph.edges) if not found else []
    print(f"modules: {len(graph.edges)}, imports between them: {sum(map(len, graph.edges.values()))}")
    print(f"cycles: {len(found)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    print(f"imports of our modules inside functions: {len(graph.late)}")
    if chain:
        print(f"longest chain ({len(chain)} modules): {' -> '.join(chain)}")
        tasks = sorted(v for v in graph.edges if v.count(".") == 1 and v != "tasks.core")
        print("task modules' levels: " + ", ".join(f"{v} {level(graph.edges, v)}" for v in tasks))


if __name__ == "__main__":
    main()
