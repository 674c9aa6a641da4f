"""proxyd's modules import one another one way only: no import cycle among them, counting the
imports under `if TYPE_CHECKING:` and those inside functions. Where a lower module needs
something of its caller, it declares it as a small typing.Protocol (as
proxyd.relay.http.upstream.UpstreamHandler does) instead of importing the caller."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

PROXYD = Path(__file__).resolve().parents[2] / "proxyd"


def module_name(path: Path, root: Path = PROXYD) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PROXYD) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imported(tree: ast.AST, name: str, is_package: bool, known: Mapping[str, Path]) -> set[str]:
    """The proxyd modules that `tree` (module `name`) imports, anywhere in it. `from P import
    N` counts as importing P.N when that is a module, else P."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import proxyd.a.b` names a module; an attribute path falls back to its module.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PROXYD) -> dict[str, set[str]]:
    known = modules(root)
    return {
        name: imported(ast.parse(path.read_text(), str(path)), name, path.stem == "__init__", known)
        for name, path in known.items()
    }


def tangles(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm): each
    module of a group imports, directly or not, every other one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its start) through each tangled group, so that a failure
    names modules that really import one another."""
    return [_cycle_in(graph, group) for group in tangles(graph)]


def _cycle_in(graph: Mapping[str, set[str]], group: set[str]) -> list[str]:
    start = min(group)
    path = [start]
    seen = {start}

    def walk(node: str) -> Iterator[list[str]]:
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                yield [*path, start]
            elif nxt not in seen:
                seen.add(nxt)
                path.append(nxt)
                yield from walk(nxt)
                path.pop()

    return next(walk(start))


def test_no_import_cycle_among_proxyd_modules() -> None:
    graph = import_graph()
    found = [
        " -> ".join(_cycle_in(graph, group)) + f" (the whole knot: {', '.join(sorted(group))})"
        for group in tangles(graph)
    ]
    assert not found, "import cycles among proxyd's modules:\n" + "\n".join(found)


def test_the_scan_sees_type_checking_and_relative_imports(tmp_path: Path) -> None:
    package = tmp_path / "proxyd"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from proxyd.sub.b import B\n"
    )
    (package / "sub" / "b.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("def f():\n    import proxyd.sub.a\n")
    (package / "d.py").write_text("from proxyd.sub import a\n")
    assert cycles(import_graph(package)) == [
        ["proxyd.sub.a", "proxyd.sub.b", "proxyd.sub.c", "proxyd.sub.a"]
    ]
