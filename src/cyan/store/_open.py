"""The store for a database location: a SQLite path, or a SQLite or PostgreSQL URL."""

from __future__ import annotations

import os

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cyan.cloud.ports import Store

from ._postgres import POSTGRES_SCHEMES, PostgresStore
from ._sqlite import SqliteStore

__all__ = ["open_store"]

_SQLITE_DRIVERS = {"sqlite", "sqlite+aiosqlite"}


def open_store(url_or_path: str | os.PathLike[str]) -> Store:
    """The store for a database URL (``sqlite+aiosqlite:///relative.db``, ``sqlite:////abs/cyan.db``,
    ``postgresql://user:password@host/cyan``, ``postgresql+asyncpg://...``) or a path to a SQLite file. The
    store is not opened yet: call ``await store.open()``.

    Raises ValueError for an empty location, a URL of another database, or a URL without a file or database.
    """
    if isinstance(url_or_path, os.PathLike):
        return SqliteStore(url_or_path)
    if not url_or_path.strip():
        raise ValueError("no database given: pass a SQLite file path or a sqlite+aiosqlite:/// URL")
    if "://" not in url_or_path:
        return SqliteStore(url_or_path)
    try:
        url = make_url(url_or_path)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {url_or_path!r}") from exc
    if url.drivername in POSTGRES_SCHEMES:
        return PostgresStore(url)
    if url.drivername not in _SQLITE_DRIVERS:
        # Only the scheme is echoed: the rest of a URL may hold a password.
        raise ValueError(
            f"unsupported database URL scheme {url.drivername!r}: cyan stores its data in SQLite, given as a "
            "file path or a sqlite+aiosqlite:///path/to/cyan.db URL, or in PostgreSQL, given as a "
            "postgresql://user:password@host/database URL"
        )
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise ValueError(f"{url_or_path!r} names no database file: use sqlite+aiosqlite:///path/to/cyan.db")
    if url.query or url.host:
        raise ValueError(f"{url_or_path!r}: SQLite URLs take a file path only, without host or options")
    return SqliteStore(url.database)
