"""The layering of docs/architecture.md, checked on every import (relative ones too).

- The protocol cores (`protocol`, `dtls`) and the keys package stay sans-IO and import nothing of ours above
  them.
- The domain (`cloud`) knows no use case, adapter or storage engine.
- The use cases (`app`) reach storage and the bus through the ports, never an adapter.
- The API and the command line call the use cases: they import no store and no bus.
- The adapters (`store`, `bus`, `server`, `sim`) and `diagnose` import no use case and no entry point.
Only the composition root (`cyan.service`, and `cyan.data` for the commands that do not serve) and the command
line's entry points put adapters together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "cyan"

#: Anything that does I/O, reads a clock, or belongs to an outer layer.
IO_MODULES = {
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
    "psycopg",
    "sqlalchemy",
    "alembic",
    "redis",
    "starlette",
    "fastapi",
    "uvicorn",
    "httpx",
    "requests",
    "typer",
    "rich",
}
STORAGE_ENGINES = {"sqlite3", "aiosqlite", "asyncpg", "psycopg", "sqlalchemy", "alembic", "redis"}
ENTRY_POINTS = {"api", "cli", "service", "data"}
ADAPTERS = {"store", "bus", "server", "sim", "dfu"}

#: For each package of ours: the packages of ours it must not import, and the outside modules it must not.
RULES: dict[str, tuple[set[str], set[str]]] = {
    "protocol": ({"cloud", "app", "diagnose", "config", "limits", "testing"} | ADAPTERS | ENTRY_POINTS, IO_MODULES),
    "keys": ({"cloud", "app", "diagnose", "config", "limits", "testing"} | ADAPTERS | ENTRY_POINTS, IO_MODULES),
    # The DTLS 1.2 core of the UDP devices: sans-IO like the TCP protocol core.
    "dtls": ({"cloud", "app", "diagnose", "config", "limits", "testing"} | ADAPTERS | ENTRY_POINTS, IO_MODULES),
    "cloud": ({"app", "diagnose"} | ADAPTERS | ENTRY_POINTS, STORAGE_ENGINES | {"fastapi", "starlette", "typer"}),
    "app": (ADAPTERS | ENTRY_POINTS, STORAGE_ENGINES | {"fastapi", "starlette", "uvicorn", "typer", "rich"}),
    "api": ({"store", "bus", "cli", "server", "sim", "service", "data"}, STORAGE_ENGINES),
    "cli": ({"store", "bus", "api", "server"}, STORAGE_ENGINES),
    "store": ({"app", "bus", "server", "sim", "diagnose"} | ENTRY_POINTS, set()),
    "bus": ({"app", "store", "server", "sim", "diagnose"} | ENTRY_POINTS, STORAGE_ENGINES - {"redis"}),
    "server": ({"app", "store", "bus", "sim", "diagnose"} | ENTRY_POINTS, STORAGE_ENGINES),
    "sim": ({"app", "store", "bus", "server", "diagnose"} | ENTRY_POINTS, STORAGE_ENGINES),
    "diagnose": ({"app"} | ADAPTERS | ENTRY_POINTS, STORAGE_ENGINES),
    # dfu-util as a subprocess: an adapter of the keys package for USB.
    "dfu": ({"cloud", "app", "diagnose"} | ADAPTERS | ENTRY_POINTS, STORAGE_ENGINES),
}


def _module_of(path: Path) -> list[str]:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, package: list[str]) -> list[tuple[int, str]]:
    """Every module the file imports, as an absolute name: relative imports are resolved from `package`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if node.module is None and node.level:
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def _package_of(path: Path) -> list[str]:
    module = _module_of(path)
    return module if path.name == "__init__.py" else module[:-1]


def _violations(path: Path, layer: str, package: list[str] | None = None) -> list[str]:
    ours, outside = RULES[layer]
    problems = []
    for line, module in _imports(path, package or _package_of(path)):
        parts = module.split(".")
        if parts[0] == "cyan" and len(parts) > 1 and parts[1] in ours and parts[1] != layer:
            problems.append(f"line {line} imports {module} ({layer} must not import cyan.{parts[1]})")
        elif parts[0] in outside:
            problems.append(f"line {line} imports {module} ({layer} must not import {parts[0]})")
    return problems


@pytest.mark.parametrize("layer", sorted(RULES))
def test_each_layer_imports_only_what_it_may(layer: str) -> None:
    files = sorted((SRC / layer).rglob("*.py"))
    assert files, f"no sources found for cyan.{layer}"
    problems = [f"{path.relative_to(SRC)}: {problem}" for path in files for problem in _violations(path, layer)]
    assert problems == []


def test_every_package_has_rules() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages - set(RULES) == set()


def test_the_check_catches_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import asyncio\nfrom time import monotonic\nfrom cyan.cloud import x\nimport os\n"
        "from ..store import SqliteStore\nfrom .. import app\nfrom . import coap\n"
    )
    assert _violations(sample, "protocol", ["cyan", "protocol"]) == [
        "line 1 imports asyncio (protocol must not import asyncio)",
        "line 2 imports time (protocol must not import time)",
        "line 3 imports cyan.cloud (protocol must not import cyan.cloud)",
        "line 5 imports cyan.store (protocol must not import cyan.store)",
        "line 6 imports cyan.app (protocol must not import cyan.app)",
    ]


def test_the_api_and_the_command_line_are_caught_reaching_a_store(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from cyan.store import SqliteStore\nfrom ..bus import InProcessBus\nimport sqlalchemy\n")
    assert _violations(sample, "api", ["cyan", "api"]) == [
        "line 1 imports cyan.store (api must not import cyan.store)",
        "line 2 imports cyan.bus (api must not import cyan.bus)",
        "line 3 imports sqlalchemy (api must not import sqlalchemy)",
    ]
    assert _violations(sample, "cli", ["cyan", "cli"]) == [
        "line 1 imports cyan.store (cli must not import cyan.store)",
        "line 2 imports cyan.bus (cli must not import cyan.bus)",
        "line 3 imports sqlalchemy (cli must not import sqlalchemy)",
    ]


def test_commands_that_do_not_serve_start_without_the_server_stack() -> None:
    """`cyan users add`, `cyan devices list`, ... import neither the API, the device servers, the bus nor
    Alembic (a store at head opens without it): each would add a second to every command an operator types."""
    probe = (
        "import sys, cyan.cli, cyan.data\n"
        "heavy = {'fastapi', 'uvicorn', 'starlette', 'alembic', 'redis', 'cyan.api', 'cyan.server', 'cyan.service'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
