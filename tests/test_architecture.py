"""The layering of design.md §1: the protocol core and the keys package stay sans-IO."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "cyan"
CORE_PACKAGES = ["protocol", "keys", "dtls"]
#: Anything that does I/O, reads a clock, or belongs to an outer layer.
FORBIDDEN = {
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "time",
    "threading",
    "subprocess",
    "sqlite3",
    "aiosqlite",
    "asyncpg",
    "sqlalchemy",
    "redis",
    "starlette",
    "fastapi",
    "uvicorn",
    "httpx",
    "requests",
    "typer",
    "rich",
}
#: Cyan packages that are adapters or domain layers above the core.
OUTER_LAYERS = {"cloud", "server", "store", "bus", "api", "diagnose", "sim", "cli"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _violations(path: Path) -> list[str]:
    problems = []
    for line, module in _imports(path):
        parts = module.split(".")
        if parts[0] in FORBIDDEN:
            problems.append(f"line {line} imports {module}")
        elif parts[0] == "cyan" and len(parts) > 1 and parts[1] in OUTER_LAYERS:
            problems.append(f"line {line} imports the outer layer {module}")
    return problems


@pytest.mark.parametrize("package", CORE_PACKAGES)
def test_core_package_imports_no_io(package: str) -> None:
    files = sorted((SRC / package).rglob("*.py"))
    assert files, f"no sources found for cyan.{package}"
    problems = [f"{path.relative_to(SRC)}: {problem}" for path in files for problem in _violations(path)]
    assert problems == []


def test_the_check_catches_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import asyncio\nfrom time import monotonic\nfrom cyan.cloud import x\nimport os\n")
    assert _violations(sample) == [
        "line 1 imports asyncio",
        "line 2 imports time",
        "line 3 imports the outer layer cyan.cloud",
    ]
