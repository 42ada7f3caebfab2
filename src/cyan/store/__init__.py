"""Persistent state of the cloud behind `cyan.cloud.ports.Store`.

SQLite (one file, WAL mode) is the embedded default; PostgreSQL is the store several nodes share
(`PostgresStore`). The schema is migrated by the Alembic scripts shipped in ``migrations/`` whenever a store
opens, so a newer cyan upgrades an older database in place. `MemoryStore` keeps everything in memory, for
tests and for trying things out.
"""

from __future__ import annotations

from ._files import FirmwareFiles
from ._memory import MemoryStore
from ._open import open_store
from ._postgres import PostgresOptions, PostgresStore
from ._sqlite import SqliteStore
from ._status import SchemaStatus, schema_status, upgrade_schema

__all__ = [
    "FirmwareFiles",
    "MemoryStore",
    "PostgresOptions",
    "PostgresStore",
    "SchemaStatus",
    "SqliteStore",
    "open_store",
    "schema_status",
    "upgrade_schema",
]
