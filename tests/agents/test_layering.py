"""Import rules of the agent package that import-linter cannot express on its own."""

import ast
from pathlib import Path

import pytest

AGENTS = Path(__file__).resolve().parents[2] / "agents"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted(AGENTS.glob("*.py")), ids=lambda p: p.name)
def test_only_nvml_module_imports_pynvml_and_nothing_imports_broker(path):
    mods = imported_modules(path)
    assert "broker" not in mods
    assert ("pynvml" in mods) == (path.name == "nvml.py")


def test_schema_depends_on_pydantic_and_stdlib_only():
    assert imported_modules(AGENTS / "schema.py") <= {"__future__", "typing", "pydantic"}
