"""Every storage implementation is a `Store` (checked by mypy) and runs the contract suites of tests/ports."""

from __future__ import annotations

from pathlib import Path

from cyan.cloud.ports import Store
from cyan.store import MemoryStore, SqliteStore


def test_every_implementation_is_a_store(tmp_path: Path) -> None:
    stores: list[Store] = [MemoryStore(), SqliteStore(tmp_path / "x.db")]
    assert [type(s).__name__ for s in stores] == ["MemoryStore", "SqliteStore"]
