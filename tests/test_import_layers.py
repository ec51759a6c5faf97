"""Modules split along their seams import each other in one direction only (issue 14, item 5).

The check reads the source with :mod:`ast` (nothing is imported), so it sees every import
statement, including those inside functions and ``if TYPE_CHECKING`` blocks.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _package_imports(package_dir: Path, package: str) -> dict[str, set[str]]:
    """module name -> the modules of the same package it imports (``__init__`` for the package itself)."""
    modules = {p.stem for p in package_dir.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name in modules:
        tree = ast.parse((package_dir / f"{name}.py").read_text(), filename=f"{package}/{name}.py")
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from . import x / from .x import y
                    base = [node.module] if node.module else [a.name for a in node.names]
                    targets = [b.split(".")[0] for b in base]
                elif node.module == package:
                    targets = [a.name if a.name in modules else "__init__" for a in node.names]
                elif node.module and node.module.startswith(package + "."):
                    targets = [node.module[len(package) + 1:].split(".")[0]]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == package:
                        targets.append("__init__")
                    elif a.name.startswith(package + "."):
                        targets.append(a.name[len(package) + 1:].split(".")[0])
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a path (first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_policy_modules_import_each_other_in_one_direction():
    """mailvm/policy/: no cycle, and no module imports the package itself (its __init__ imports them all)."""
    graph = _package_imports(ROOT / "mailvm" / "policy", "mailvm.policy")
    assert {"model", "load", "decide", "render"} <= set(graph), sorted(graph)
    assert _cycle(graph) == [], f"import cycle in mailvm/policy: {' -> '.join(_cycle(graph))}"
    through_init = sorted(m for m, deps in graph.items() if m != "__init__" and "__init__" in deps)
    assert through_init == [], f"these modules import mailvm.policy itself: {through_init}"
    # the model is the bottom layer: it imports no other policy module
    assert graph["model"] == set(), f"mailvm/policy/model.py imports {sorted(graph['model'])}"
    # decide() does not read files
    assert "load" not in graph["decide"]
