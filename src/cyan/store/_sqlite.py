"""The embedded default store: one SQLite file, through SQLAlchemy Core over aiosqlite."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import URL, Connection, event
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cyan.cloud.ports import Repositories, StoreUnavailableError

from ._migrate import upgrade_to_head
from ._sql import SqlRepositories, Statements, TransactionAccess

__all__ = ["SqliteStore"]

#: Execution option read by the ``begin`` listener: the statement that starts a connection's transactions.
_BEGIN_OPTION = "cyan_sqlite_begin"

#: Hints added to SQLite's terse messages, keyed by a fragment of them.
_HINTS = {
    "database is locked": "another process held a write lock longer than the busy timeout",
    "file is not a database": "the file is not a SQLite database, or it is corrupt",
    "database disk image is malformed": "the file is corrupt",
    "readonly database": "the file or its directory is read-only for this user",
    "unable to open database file": "check that the directory exists and is writable",
    "disk i/o error": "the disk failed, or the -wal/-shm files beside the database cannot be written",
    "database or disk is full": "free some disk space",
}


class SqliteStore(SqlRepositories):
    """`cyan.cloud.ports.Store` on a SQLite file in WAL mode.

    Readers run in parallel on pooled connections; writes are serialised by an `asyncio.Lock` so that the
    process never queues on SQLite's file lock. A write of one statement is atomic by itself in SQLite, so no
    BEGIN is sent for it (each is a round trip to the driver's thread). Writes of several statements, and
    `transaction()`, start with BEGIN IMMEDIATE: they take the write lock up front, so another process's
    writer makes them wait (up to `busy_timeout` seconds) instead of failing midway, and what a transaction
    read stays true until it commits (serializable).
    """

    __slots__ = (
        "__weakref__",
        "_engine",
        "_reader",
        "_was_opened",
        "_write_lock",
        "busy_timeout",
        "path",
        "schema_found",
    )

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        super().__init__(self)
        self.path = Path(path).expanduser().absolute()
        self.busy_timeout = busy_timeout
        self._engine: AsyncEngine | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._was_opened = False
        #: The schema revisions the file was at when the store opened, before migrating (none: a new file).
        self.schema_found: frozenset[str] | None = None

    def __repr__(self) -> str:
        state = "open" if self._engine is not None else "closed"
        return f"<SqliteStore {str(self.path)!r} {state}>"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- life cycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._engine is not None:
            return
        self._create_file()
        engine = create_async_engine(URL.create("sqlite+aiosqlite", database=str(self.path)))
        event.listen(engine.sync_engine, "connect", self._on_connect)
        event.listen(engine.sync_engine, "begin", _on_begin)
        try:
            with self._translate("open the store"):
                async with engine.connect() as conn:
                    mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                    await conn.commit()
                    if mode != "wal":
                        raise StoreUnavailableError(
                            f"cannot open the store: SQLite database {self.path}: write-ahead logging is not "
                            f"available there (journal mode {mode!r}); put the file on a local file system"
                        )
                    # IMMEDIATE: two processes opening a new file at once must not both create the tables.
                    await conn.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
                    async with conn.begin():
                        found = await conn.run_sync(upgrade_to_head, f"SQLite database {self.path}")
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self.schema_found = frozenset(found)
        with self._translate("open the store"):
            self._reader = self._open_reader()
        self._write_lock = asyncio.Lock()
        self._was_opened = True

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        engine, self._engine = self._engine, None
        if engine is not None:
            with self._translate("close the store"):
                await engine.dispose()

    def _create_file(self) -> None:
        # SQLite would create the file with the umask's mode; it will hold device keys, so create it first,
        # owner-only. SQLite gives its -wal and -shm files the mode of the database file.
        what = f"cannot create the SQLite database {self.path}"
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise StoreUnavailableError(f"{what}: {exc.filename} is not a directory") from exc
        except OSError as exc:
            raise StoreUnavailableError(f"{what}: cannot create the directory {exc.filename}: {exc.strerror}") from exc
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise StoreUnavailableError(f"{what}: {exc.strerror or exc}") from exc
        os.close(fd)

    def _open_reader(self) -> sqlite3.Connection:
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            reader.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            reader.execute("PRAGMA query_only = ON")
        except BaseException:
            reader.close()
            raise
        return reader

    def _on_connect(self, dbapi_connection: Any, connection_record: Any) -> None:
        # The driver's own BEGIN handling skips SELECT and DDL, so a migration would not be one transaction:
        # turn it off and let `_on_begin` send BEGIN where a transaction needs one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL: readers never block the writer. NORMAL skips an fsync per commit: in WAL mode a crash of
            # the process loses nothing, and a power loss can undo the last commits but not corrupt the file.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={round(self.busy_timeout * 1000)}")
        finally:
            cursor.close()

    def _require_engine(self) -> AsyncEngine:
        if self._engine is None:
            state = "closed" if self._was_opened else "not open (call open() first)"
            raise StoreUnavailableError(f"the SQLite store {self.path} is {state}")
        return self._engine

    # -- how the repositories reach the database (cyan.store._sql.Access) -----------------------

    @asynccontextmanager
    async def reading(self, action: str) -> AsyncIterator[AsyncConnection]:
        engine = self._require_engine()
        with self._translate(action):
            async with engine.connect() as conn:
                yield conn

    @asynccontextmanager
    async def writing(
        self, action: str, *, conflicts: bool = False, statements: Statements = "one"
    ) -> AsyncIterator[AsyncConnection]:
        """A write, committed when the block ends; `conflicts` lets `IntegrityError` through.

        A block that runs more than one statement must say so, or they would not form one transaction.
        """
        engine = self._require_engine()
        # Taking the lock before a pooled connection keeps a burst of writers from draining the pool.
        async with self._write_lock:
            with self._translate(action, conflicts=conflicts):
                async with engine.connect() as conn:
                    if statements == "several":
                        await conn.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
                    async with conn.begin():
                        yield conn

    def point_read(self, sql: str, params: tuple[Any, ...], action: str) -> tuple[Any, ...] | None:
        # Point reads on the handshake path go through a plain synchronous connection: a keyed SQLite read in
        # WAL mode takes ~20 µs and never waits for a writer, while the same read through the async driver's
        # thread hop costs ~0.7 ms of CPU and through SQLAlchemy Core ~0.15 ms, against 0.5 ms of RSA work
        # for the whole handshake (measured in bench/).
        self._require_engine()  # a closed store says so
        reader = self._reader
        assert reader is not None
        with self._translate(action):
            row: tuple[Any, ...] | None = reader.execute(sql, params).fetchone()
        return row

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Repositories]:
        """Every repository on one connection in BEGIN IMMEDIATE, committed when the block ends and rolled back
        when it raises. Other writers of this process wait for it (the write lock), other processes' writers
        wait on SQLite's lock."""
        engine = self._require_engine()
        async with self._write_lock:
            with self._translate("begin a transaction"):
                conn = await engine.connect()
            try:
                await conn.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
                with self._translate("begin a transaction"):
                    await conn.begin()
                yield SqlRepositories(TransactionAccess(conn, self._translate))
                with self._translate("commit a transaction"):
                    await conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()

    @contextmanager
    def _translate(self, action: str, *, conflicts: bool = False) -> Iterator[None]:
        """Turn every failure of the database into `StoreUnavailableError` naming the file and the cause."""
        try:
            yield
        except IntegrityError as exc:
            if conflicts:
                raise
            raise StoreUnavailableError(self._message(action, exc)) from exc
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(self._message(action, exc)) from exc

    def _message(self, action: str, exc: BaseException) -> str:
        cause = _cause(exc)
        hint = next((hint for fragment, hint in _HINTS.items() if fragment in cause.lower()), None)
        if hint == _HINTS["database is locked"]:
            hint += f" ({self.busy_timeout:g} s)"
        suffix = f"; {hint}" if hint else ""
        return f"cannot {action}: SQLite database {self.path}: {cause}{suffix}"


def _cause(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's statement and documentation link."""
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if isinstance(original, OSError) and original.strerror:
        return f"{original.strerror}: {original.filename}" if original.filename else original.strerror
    return str(original) or type(original).__name__


def _on_begin(conn: Connection) -> None:
    # Without the option the driver stays in autocommit: the block runs a single statement (see `writing`).
    begin = conn.get_execution_options().get(_BEGIN_OPTION)
    if begin is not None:
        conn.exec_driver_sql(begin)
