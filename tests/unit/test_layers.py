"""The package's layers, as docs/architecture.md draws them: every import points down, none comes back.

Read from the source (every import statement, those inside functions too), so a shortcut taken in a hurry
fails here instead of tangling the programs that the images keep apart.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "tandem"

LEAVES = {"config", "errors", "quantity", "storage", "cgroup"}
MAY_IMPORT: dict[str, set[str]] = {
    "api": set(),
    "decide": {"api"},
    "render": {"api", "decide"},
    "status": {"api", "decide", "render"},
    "controller": {"api", "decide", "render", "status"},
    "trainer": {"api", "datasets"},
    "server": {"api"},
    "profiling": {"api", "server"},
    "datasets": set(),
}
"""Each part of the package and the parts below it that it may import (besides the shared leaves)."""


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Module -> the tandem modules it imports (`from tandem.api import docgen` imports tandem.api.docgen)."""
    modules = {module_of(path) for path in PACKAGE.rglob("*.py")}
    found: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tandem"):
                base = node.module or ""
                named = {f"{base}.{alias.name}" for alias in node.names}
                found[module_of(path)] |= named & modules or {base}
            elif isinstance(node, ast.Import):
                found[module_of(path)] |= {alias.name for alias in node.names if alias.name.startswith("tandem")}
    return found


def imports_against(rule: Mapping[str, set[str]]) -> set[tuple[str, str]]:
    """(module, target) for each import by a part that `rule` names of a part it does not allow: every offence
    at once, so that one failure shows the whole tangle. A part may always import from itself."""
    return {
        (module, target)
        for module, targets in imports().items()
        if part_of(module) in rule
        for target in targets
        if part_of(target) not in rule[part_of(module)] | {part_of(module)}
    }


def test_every_part_imports_only_the_parts_below_it_and_the_shared_leaves() -> None:
    assert imports_against({part: below | LEAVES for part, below in MAY_IMPORT.items()}) == set()


def test_the_shared_leaves_import_nothing_of_tandem_but_each_other() -> None:
    assert imports_against(dict.fromkeys(LEAVES, LEAVES)) == set()


def test_no_module_imports_one_that_imports_it_back() -> None:
    edges = imports()
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(edges.get(module, ())):
            if target in path:
                cycles.append([*path[path.index(target):], target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(edges):
        visit(module, [module])
    assert cycles == []
