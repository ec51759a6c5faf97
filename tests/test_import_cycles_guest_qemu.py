"""Import cycles the guest and the qemu backend must not have (issue 14, "split along the seams").

The source is parsed with :mod:`ast` (nothing is imported), and every import
counts: at module level, inside functions and under ``TYPE_CHECKING``; an
import hidden in a function is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "mailvm"


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in (root / "mailvm").rglob("*.py")}


def imports_of(path: Path, known: dict[str, Path], root: Path = ROOT) -> set[str]:
    """The mailvm modules ``path`` imports.

    ``from pkg import sub`` counts as importing ``pkg.sub`` only: that a submodule's package
    ``__init__`` runs first is how every package works (the backend registry in
    ``vmpool/backends/__init__.py`` imports its backends), not a dependency between modules.
    """
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{alias.name}" for alias in node.names if f"{mod}.{alias.name}" in known]
            out.update(subs)
            if len(subs) < len(node.names):  # names defined in ``mod`` itself, not only its submodules
                out.add(mod)
    return {m for m in out if m in known and m != me}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = all_modules(root)
    return {name: imports_of(path, known, root) for name, path in known.items()}


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A path of imports from ``start`` to ``goal``, or None."""
    seen = {start}
    stack = [[start]]
    while stack:
        path = stack.pop()
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == goal:
                return path + [nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append(path + [nxt])
    return None


def cycle_through(graph: dict[str, set[str]], a: str, b: str) -> str | None:
    there, back = reaches(graph, a, b), reaches(graph, b, a)
    if there and back:
        return " -> ".join(there) + " -> " + " -> ".join(back[1:])
    return None


def test_the_ast_walk_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The checker itself: an import inside a function, a relative import and ``from pkg import sub`` count."""
    pkg = tmp_path / "mailvm" / "x"
    pkg.mkdir(parents=True)
    (tmp_path / "mailvm" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from mailvm.x import b\n    return b\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("from .a import f\n")
    graph = import_graph(tmp_path)
    assert graph["mailvm.x.a"] == {"mailvm.x.b"}
    assert graph["mailvm.x.b"] == {"mailvm.x.c"}
    assert graph["mailvm.x.c"] == {"mailvm.x.a"}
    assert cycle_through(graph, "mailvm.x.a", "mailvm.x.c") is not None
    assert cycle_through(graph, "mailvm.x.b", "mailvm.x") is None  # the package's __init__ imports nothing


def test_detonate_and_winewarm_do_not_import_each_other() -> None:
    graph = import_graph()
    a, b = "mailvm.guest.detonate", "mailvm.guest.winewarm"
    assert a in graph and b in graph
    cycle = cycle_through(graph, a, b)
    assert cycle is None, f"import cycle between the detonation and the warm Wine daemon: {cycle}"


QEMU_MODULES = sorted(module_name(p) for p in (PKG / "vmpool" / "backends").glob("qemu*.py"))


@pytest.mark.parametrize("a", QEMU_MODULES)
def test_qemu_backend_modules_have_no_import_cycle(a: str) -> None:
    graph = import_graph()
    assert len(QEMU_MODULES) >= 2
    for b in QEMU_MODULES:
        if b != a:
            cycle = cycle_through(graph, a, b)
            assert cycle is None, f"import cycle between qemu backend modules: {cycle}"
