"""The layering rule that import-linter cannot see: no import of the package inside a function.

import-linter (``make lint``, pyproject.toml) checks that imports point down the floors;
an import hidden in a function body is how a circle was closed before, so none is allowed
(optional third-party packages may still be imported lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "orchestration"


def _own_imports_in_functions(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        for node in ast.walk(function):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith(".") or name.split(".")[0] == "orchestration":
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {name}")
    return found


def test_no_module_imports_its_own_package_inside_a_function() -> None:
    offenders = sorted({hit for path in PACKAGE.rglob("*.py")
                        for hit in _own_imports_in_functions(path)})
    assert offenders == [], "imports of orchestration inside functions:\n" + "\n".join(offenders)


def test_the_check_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("def f():\n    from orchestration.app import Orchestrator\n"
                      "    import json\n    return Orchestrator, json\n")
    assert [hit.split(": ")[1] for hit in _own_imports_in_functions(module, tmp_path)] == [
        "orchestration.app"]

