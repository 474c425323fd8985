"""The package's data flows one way: a module imports only from its own stage or earlier ones.

    topology (spec) -> command line (qemu) -> kernel -> image -> guest
    -> verdicts -> coverage -> workloads | results -> run -> commands, cli, pytest plugin

``errors``, ``paths``, ``util`` and ``machines`` (the machine profiles: pure data) are the
foundation every stage may use; the guest tool
(``testbed/guest_tool``) runs inside the guest and imports nothing from the rest of the
testbed, nor anything outside the standard library.  Imports inside functions are allowed
only with a one-line reason on the same line (they exist to keep a command's start-up
fast), never to dodge an import cycle; and no module imports one that imports it back
(test_no_import_cycle, TYPE_CHECKING imports included).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "testbed"
STAGES = [("errors", "paths"), ("util",), ("machines",), ("spec",), ("qemu",), ("kernel",), ("image",),
          ("guest",), ("verdicts",), ("coverage",), ("workloads", "results"), ("run",),
          ("commands", "pytest_plugin", "__init__"), ("cli",), ("__main__",)]
RANK = {name: i for i, names in enumerate(STAGES) for name in names}
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def stage_of(module: str) -> str:
    """``testbed.guest.boot`` -> ``guest``."""
    return module.split(".")[1] if "." in module else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, absolute module imported, inside a function) for every import."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                      ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                # each imported name may be a module of that package: keep it
                out.extend((child.lineno, f"{target}.{a.name}", in_function)
                           for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path):
    me = module_name(path)
    if stage_of(me) == "guest_tool":
        return  # checked below
    mine = RANK[stage_of(me)]
    for line, target, _ in imports(path):
        if not target.startswith("testbed"):
            continue
        theirs = stage_of(target)
        assert theirs != "guest_tool" or target.startswith("testbed.guest_tool.schema"), (
            f"{me}:{line} imports {target}: only the guest tool's schema is shared")
        if theirs == "guest_tool" or theirs == stage_of(me):
            continue
        assert RANK[theirs] < mine, (
            f"{me}:{line} imports {target}: stage {stage_of(me)!r} may not use the later "
            f"(or parallel) stage {theirs!r}")


@pytest.mark.parametrize("path", sorted((PACKAGE / "guest_tool").glob("*.py")),
                         ids=lambda p: p.name)
def test_the_guest_tool_stands_alone(path):
    for line, target, _ in imports(path):
        if target.startswith("testbed.guest_tool"):
            continue
        root = target.split(".")[0]
        assert root in sys.stdlib_module_names, (
            f"{path.name}:{line} imports {target}: the guest has only the standard library")
        assert root != "testbed", f"{path.name}:{line} imports the host-side testbed"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_inside_functions_say_why(path):
    lines = path.read_text().splitlines()
    for line, target, in_function in imports(path):
        if in_function:
            assert "#" in lines[line - 1], (
                f"{module_name(path)}:{line} imports {target} inside a function without a "
                "one-line reason (allowed only to keep a command's start-up fast)")


def test_the_stages_cover_every_package():
    stages = {stage_of(module_name(p)) for p in MODULES} - {"guest_tool"}
    assert stages <= set(RANK), stages - set(RANK)


def module_graph() -> dict[str, set[str]]:
    """testbed module -> the testbed modules it imports at module level (TYPE_CHECKING
    blocks included: a cycle there is a cycle of ideas, the one issue 19 removed)."""
    mods = {module_name(p): p for p in MODULES}

    def resolve(target: str) -> str:  # a name imported from a module -> that module
        while target and target not in mods:
            target = target.rsplit(".", 1)[0] if "." in target else ""
        return target

    return {m: {r for _, t, inside in imports(p)
                if not inside and t.startswith("testbed") and (r := resolve(t)) and r != m}
            for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    out.append(sorted(group))
    return out


def test_no_import_cycle():
    assert not cycles(module_graph()), cycles(module_graph())


def test_a_cycle_is_caught():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
