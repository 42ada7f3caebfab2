"""Every storage implementation is a `Store`, and every bus a `Bus` (checked by mypy); each runs the contract
suites of tests/ports."""

from __future__ import annotations

from pathlib import Path

from cyan.bus import InProcessBus, RedisBus
from cyan.cloud.ports import Bus, Store
from cyan.store import MemoryStore, PostgresStore, SqliteStore


def test_every_implementation_is_a_store(tmp_path: Path) -> None:
    stores: list[Store] = [MemoryStore(), SqliteStore(tmp_path / "x.db"), PostgresStore("postgresql://db/cyan")]
    assert [type(s).__name__ for s in stores] == ["MemoryStore", "SqliteStore", "PostgresStore"]


def test_every_implementation_is_a_bus() -> None:
    buses: list[Bus] = [InProcessBus(), RedisBus("redis://cache:6379/0", node_id="a")]
    assert [type(b).__name__ for b in buses] == ["InProcessBus", "RedisBus"]
