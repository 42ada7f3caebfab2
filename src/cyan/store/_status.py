"""Where a database's schema stands, and bringing it to head on request (`cyan db status|upgrade`)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cyan.cloud.ports import StoreUnavailableError

from ._migrate import alembic_config
from ._open import open_store
from ._postgres import PostgresStore
from ._sqlite import SqliteStore

__all__ = ["SchemaStatus", "schema_status", "upgrade_schema"]


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """A database's schema against the migrations of this version of cyan."""

    #: The database, as messages name it (never with its password).
    database: str
    #: The revisions it is at; none for a database without cyan's schema yet.
    current: frozenset[str]
    #: The newest revision this version of cyan knows.
    head: str
    #: False when there is no database at all yet (a SQLite file that was never created).
    exists: bool = True
    #: Every revision this version of cyan knows.
    known: frozenset[str] = frozenset()

    @property
    def newer(self) -> frozenset[str]:
        """Revisions unknown here: a newer cyan migrated the database."""
        return self.current - self.known

    @property
    def upgrade_due(self) -> bool:
        return self.current != {self.head} and not self.newer


def _scripts() -> tuple[str, frozenset[str]]:
    from alembic.script import ScriptDirectory  # noqa: PLC0415 - Alembic only when migrating

    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None
    return head, frozenset(revision.revision for revision in script.walk_revisions())


async def schema_status(location: str | os.PathLike[str]) -> SchemaStatus:
    """The schema of the database at `location` (a SQLite path or a database URL), read without changing
    anything: a SQLite file that does not exist is not created."""
    head, known = _scripts()
    store = open_store(location)
    if isinstance(store, PostgresStore):
        return SchemaStatus(store.description, await store.schema_revisions(), head, True, known)
    assert isinstance(store, SqliteStore)
    described = f"SQLite database {store.path}"
    if not store.path.exists():
        return SchemaStatus(described, frozenset(), head, False, known)
    return SchemaStatus(described, _sqlite_revisions(store.path), head, True, known)


def _sqlite_revisions(path: Path) -> frozenset[str]:
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone() is None:
                return frozenset()
            return frozenset(row[0] for row in conn.execute("SELECT version_num FROM alembic_version"))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreUnavailableError(f"cannot read the schema: SQLite database {path}: {exc}") from exc


async def upgrade_schema(location: str | os.PathLike[str]) -> tuple[SchemaStatus, SchemaStatus]:
    """Bring the database at `location` to head, as a store does when it opens (creating a SQLite file that
    does not exist); where it was, and where it is now. Raises `StoreUnavailableError` for a database a newer
    cyan migrated, or one that cannot be reached."""
    head, known = _scripts()
    store = open_store(location)
    existed = not isinstance(store, SqliteStore) or store.path.exists()
    await store.open()
    try:
        assert isinstance(store, SqliteStore | PostgresStore)
        found = store.schema_found
        assert found is not None
    finally:
        await store.close()
    after = await schema_status(location)
    return SchemaStatus(after.database, found, head, existed, known), after
