"""The package's layout holds: stages import only from the stages below them, no module imports
another's private names, and no function grows past 60 lines."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "captioner"
# A stage may import from its own level and below: the rows of captioner/__init__.py's map.
LEVEL = {"errors": 0, "config": 0, "util": 0, "version": 0, "data": 1, "pages": 1, "model": 2,
         "features": 3, "serve": 3, "evaluation": 4, "training": 5, "compare": 6,
         "api": 7, "cli": 7, "__init__": 7, "__main__": 7}
MAX_LINES = 60


@functools.cache
def _modules() -> list[tuple[Path, str, ast.Module]]:
    """(file, its stage, its syntax tree) for every module of the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found.append((path, parts[0], ast.parse(path.read_text(encoding="utf-8"))))
    return found


def _imports(tree: ast.Module) -> list[ast.ImportFrom]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module and node.module.split(".")[0] == "captioner"]


def test_every_module_belongs_to_a_stage() -> None:
    assert {stage for _, stage, _ in _modules()} <= set(LEVEL)


def test_stages_import_only_from_below() -> None:
    upward = []
    for path, stage, tree in _modules():
        for node in _imports(tree):
            target = node.module.split(".")[1] if "." in node.module else "__init__"
            if LEVEL[target] > LEVEL[stage]:
                upward.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {node.module}")
    assert upward == []


def test_no_module_imports_another_modules_private_names() -> None:
    private = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.module}.{alias.name}"
               for path, _, tree in _modules() for node in _imports(tree) for alias in node.names
               if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert private == []


def test_functions_stay_short() -> None:
    long = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"
            for path, _, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert long == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Which package modules each module imports, wherever the import stands: at the top, under
    `if TYPE_CHECKING:` or inside a function. `from captioner.model import search` names the
    module captioner.model.search; `from captioner import __version__` names captioner."""
    names = {_module_name(path) for path, _, _ in _modules()}
    graph: dict[str, set[str]] = {}
    for path, _, tree in _modules():
        targets = graph.setdefault(_module_name(path), set())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in names)
            elif isinstance(node, ast.ImportFrom) and node.module in names:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & names
                targets.update(submodules or {node.module})
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest import path from `start` back to itself, or None (breadth first)."""
    paths = {target: [start, target] for target in graph[start]}
    queue = list(paths)
    while queue:
        module = queue.pop(0)
        if module == start:
            return paths[module]
        for target in sorted(graph.get(module, ())):
            if target not in paths:
                paths[target] = [*paths[module], target]
                queue.append(target)
    return None


def test_no_import_cycles() -> None:
    """A module never imports, however indirectly or lazily, a module that imports it: a circle
    hidden behind TYPE_CHECKING or a function-level import is still two modules that cannot be
    understood, tested or moved apart."""
    graph = _import_graph()
    cycles = {" -> ".join(cycle) for start in sorted(graph)
              if (cycle := _cycle_through(graph, start)) is not None and start == min(cycle)}
    assert sorted(cycles) == []
