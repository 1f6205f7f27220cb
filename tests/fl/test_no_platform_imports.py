"""training/fl and training/agent run on phones and in plain Python: they must never import Django or the
platform's Django apps (DESIGN.md: dependencies point one way)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"django", "rest_framework", "channels", "celery", "adb_shell", "devices", "config", "accounts"}
PLATFORM_TRAINING = ("training.models", "training.engine", "training.tasks", "training.views")

SOURCES = sorted(p for pkg in ("training/fl", "training/agent") for p in (ROOT / pkg).rglob("*.py"))


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_django_or_platform_imports(path):
    bad = [
        name
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN or name.startswith(PLATFORM_TRAINING) or name == "training"
    ]
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"
