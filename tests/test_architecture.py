"""Architecture rules of the package, checked on the source (no import needed).

(a) No import cycles between the modules of ``tangentlab/``: every ``import`` and
    ``from ... import`` is counted, at module level or inside functions, relative imports
    resolved, with the ``__init__`` of the packages the import enters (imports under
    ``if TYPE_CHECKING:`` never run and are skipped).
(b) No module over :data:`MAX_LINES` lines.
(c) The README's "Package layout" block names exactly the top-level modules and packages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tangentlab"
MAX_LINES = 600



def modules() -> dict[str, Path]:
    """``{dotted name: path}`` of every module of the package (``__init__`` = the package)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node):
            children = list(node.orelse)
        stack.extend(children)


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` imports."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    out.add(alias.name)
            continue
        if node.level:
            parts = name.split(".") if is_pkg else name.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            if f"{base}.{alias.name}" in known:
                out.add(f"{base}.{alias.name}")
            elif base in known:
                out.add(base)
    # importing ``a.b.c`` first runs the ``__init__`` of ``a.b``: an edge too, unless the
    # importer lives inside that package (it is then initialized already) or it is the root
    for target in list(out):
        parts = target.split(".")
        for i in range(2, len(parts)):
            parent = ".".join(parts[:i])
            if parent in known and not (name == parent or name.startswith(parent + ".")):
                out.add(parent)
    out.discard(name)  # `from . import x` inside a package's own __init__
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def describe(comp: list[str], graph: dict[str, set[str]]) -> str:
    edges = [f"  {a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp]
    return "cycle among " + ", ".join(comp) + ":\n" + "\n".join(edges)


def test_import_graph_is_built():
    graph = import_graph()
    assert "tangentlab.pmat.registry" in graph["tangentlab.pmat.base"]
    assert "tangentlab.layers.unfold" in graph["tangentlab.layers.patch"]


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(c, graph) for c in found)


def _long_modules() -> dict[str, int]:
    out = {}
    for name, path in modules().items():
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            out[name] = n
    return out


def test_no_module_over_max_lines():
    long = _long_modules()
    assert not long, f"modules over {MAX_LINES} lines: " + ", ".join(f"{m} ({n})" for m, n in sorted(long.items()))


def test_readme_package_layout_is_complete():
    """Every top-level module and package of ``tangentlab/`` is named in the README's layout
    block, and nothing else is."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Package layout", 1)[1].split("```", 2)[1]
    inside = block.split("\ntangentlab/\n", 1)[1]
    # entries open with two spaces (continuation lines are indented further; benchmarks/ and tests/ with none)
    lines = [ln for ln in inside.splitlines() if ln.startswith("  ") and not ln.startswith("   ")]
    named = set()
    for ln in lines:
        # names open a line or follow ";  " / ", " (descriptions may mention other paths)
        named.update(re.findall(r"(?:^  |;  |, )([a-z_][a-z0-9_]*(?:\.py|/))", ln))
    present = {p.name + "/" for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    present |= {p.name for p in PKG.glob("*.py") if not p.name.startswith("__")}
    assert sorted(present - named) == [], "README's package layout misses these"
    assert sorted(named - present) == [], "README's package layout names modules that do not exist"
