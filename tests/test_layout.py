"""The package's layout holds: stages import only from the stages below them, no module imports
another's private names, and no function grows past 60 lines."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "captioner"
# A stage may import from its own level and below (the order of captioner/__init__.py's docstring).
LEVEL = {"errors": 0, "config": 0, "util": 0, "version": 0, "data": 1, "pages": 1, "model": 2, "features": 3,
         "evaluation": 4, "training": 5, "compare": 6, "serve": 6,
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
