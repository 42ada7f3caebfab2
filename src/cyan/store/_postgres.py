"""The scale-out store: PostgreSQL, shared by every node of a cloud, through SQLAlchemy Core over asyncpg.

asyncpg rather than psycopg 3: it is the driver design.md names, SQLAlchemy's most used asynchronous PostgreSQL
dialect, and the fastest from Python (binary protocol, statements prepared once per connection and cached).
Its one drawback, prepared statements behind PgBouncer in transaction mode, does not apply to a direct
connection; behind such a pooler, add ``prepared_statement_cache_size=0`` to the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import asyncpg
from sqlalchemy import URL, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, DisconnectionError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from cyan.cloud.ports import Repositories, StoreUnavailableError

from ._migrate import current_revisions, upgrade_to_head
from ._sql import SqlRepositories, Statements, TransactionAccess

__all__ = ["PostgresOptions", "PostgresStore", "postgres_url"]

#: The schemes taken for PostgreSQL; each is served by asyncpg.
POSTGRES_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg"}

#: Advisory lock keys (one namespace per database; the ASCII of "cyanwrit" and "cyanmigr", so that they are
#: recognisable in pg_locks). A cloud owns its database: another application taking the same keys there would
#: serialize with it, nothing worse.
WRITE_LOCK = 0x6379616E77726974
MIGRATION_LOCK = 0x6379616E6D696772

_TAKE_EXCLUSIVE = text(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
_TAKE_SHARED = text(f"SELECT pg_advisory_xact_lock_shared({WRITE_LOCK})")
_TAKE_MIGRATION = text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """The connection pool and its timeouts. Each may also be given in the URL's query string
    (``postgresql://cyan@db/cyan?pool_size=20&statement_timeout=10``); times are in seconds."""

    #: Connections kept open, and how many more may be opened under load (closed again when returned).
    pool_size: int = 10
    max_overflow: int = 10
    #: How long a call waits for a free connection before it fails.
    pool_timeout: float = 10.0
    #: Connections older than this are replaced, so a server or proxy that drops idle ones is never met.
    pool_recycle: float = 1800.0
    #: How long opening a connection (TCP, TLS, authentication) may take.
    connect_timeout: float = 5.0
    #: The server cancels a statement that runs longer (``statement_timeout``).
    statement_timeout: float = 30.0
    #: How long a write waits for the cluster's write lock (``lock_timeout``), as SQLite's busy timeout does.
    lock_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.max_overflow < 0:
            raise ValueError(f"pool_size must be 1 or more and max_overflow 0 or more, not {self}")
        for name in ("pool_timeout", "pool_recycle", "connect_timeout", "statement_timeout", "lock_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be more than 0 seconds, not {getattr(self, name)}")


def postgres_url(url: str | URL) -> tuple[URL, PostgresOptions]:
    """The asyncpg URL and the pool options of a ``postgresql://`` (or ``postgresql+asyncpg://``) URL.

    Raises ValueError for another scheme, a URL without a database, or a bad option; messages never repeat
    the password.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError as exc:
        raise ValueError("not a database URL") from exc
    if parsed.drivername not in POSTGRES_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {parsed.drivername!r} (use postgresql:// or postgresql+asyncpg://)")
    if not parsed.database:
        raise ValueError(f"{_describe(parsed)}: the URL names no database (postgresql://user@host/DATABASE)")
    options: dict[str, Any] = {}
    query = dict(parsed.query)
    for field in PostgresOptions.__dataclass_fields__:
        if field not in query:
            continue
        raw = query.pop(field)
        value = raw[-1] if isinstance(raw, tuple) else raw
        try:
            options[field] = int(value) if field in ("pool_size", "max_overflow") else float(value)
        except ValueError:
            raise ValueError(f"{_describe(parsed)}: option {field} must be a number, not {value!r}") from None
    return parsed.set(drivername="postgresql+asyncpg", query=query), PostgresOptions(**options)


def _describe(url: URL) -> str:
    """The database as messages name it: never with the password."""
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    user = f" as {url.username}" if url.username else ""
    return f"PostgreSQL database {url.database!r} at {where}{user}"


class PostgresStore(SqlRepositories):
    """`cyan.cloud.ports.Store` on a PostgreSQL database that every node of the cloud shares.

    The schema is migrated by the same Alembic scripts as SQLite's when the store opens, under an advisory
    lock, so that nodes starting at once migrate one after another (the later ones find it done).

    Serializability. A `transaction()` block cannot be retried (it is the caller's code, already run), so
    PostgreSQL's SERIALIZABLE isolation, which aborts one of two conflicting transactions and expects the
    caller to retry it, does not fit the port. Instead, writers take one cluster-wide advisory lock, as
    SQLite's writers take its file lock:

    - `transaction()`, and any write of several statements, takes ``pg_advisory_xact_lock`` (exclusive) as its
      first statement. No other writer of any node runs until it commits or rolls back, so what it read stays
      true (the equivalent of SQLite's BEGIN IMMEDIATE).
    - A write of one statement outside a transaction (recording attempts, a batch of device states, an audit
      entry) takes the same lock *shared*: such writes run at once on every node, since a single statement is
      atomic by itself, and all of them wait for, and hold off, every exclusive holder. PostgreSQL queues a
      shared request behind a waiting exclusive one, so transactions are not starved.
    - Reads outside a transaction take no lock.

    Transactions run at READ COMMITTED on purpose: each statement sees everything committed before it, so the
    reads that follow the lock see the last holder's writes. (At REPEATABLE READ the snapshot would be taken
    by the lock statement itself, before its wait, and could miss them.) The lock lasts as long as the
    transaction; PostgreSQL releases it only after the commit is visible.

    The price is that transactions of the whole cloud run one at a time: each holds the lock for a few round
    trips, so a cloud makes at most a few thousand per second (docs/scale-out.md gives measured figures).
    Within one process, exclusive writers queue on an `asyncio.Lock` before taking a connection, and
    single-statement writers may hold at most half the pool, so that readers always find a connection.

    A connection lost mid-call (server restart, ``pg_terminate_backend``) fails that call with
    `StoreUnavailableError`; SQLAlchemy then discards every pooled connection opened before the failure, so
    the next call connects afresh. A pooled connection the server closed while it was idle is replaced when it
    is next taken, without a failure.
    """

    __slots__ = (
        "__weakref__",
        "_engine",
        "_exclusive",
        "_was_opened",
        "_writers",
        "application_name",
        "options",
        "schema_found",
        "url",
    )

    def __init__(
        self, url: str | URL, options: PostgresOptions | None = None, *, application_name: str = "cyan"
    ) -> None:
        super().__init__(self)
        self.url, from_url = postgres_url(url)
        self.options = options or from_url
        self.application_name = application_name
        self._engine: AsyncEngine | None = None
        self._exclusive = asyncio.Lock()
        self._writers = asyncio.Semaphore(max(1, self.options.pool_size // 2))
        self._was_opened = False
        #: The schema revisions the database was at when the store opened, before migrating (none: a new one).
        self.schema_found: frozenset[str] | None = None

    @property
    def description(self) -> str:
        """The database, as messages name it (no password)."""
        return _describe(self.url)

    def __repr__(self) -> str:
        state = "open" if self._engine is not None else "closed"
        return f"<PostgresStore {self.url.render_as_string(hide_password=True)!r} {state}>"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- life cycle -----------------------------------------------------------------------------

    def _create_engine(self, *, migrating: bool = False) -> AsyncEngine:
        """The pool; `migrating`: one connection without time limits, since a migration of a large database
        may take long, and nodes that start meanwhile should wait for it rather than fail."""
        options = self.options
        statement_timeout = 0 if migrating else round(options.statement_timeout * 1000)
        lock_timeout = 0 if migrating else round(options.lock_timeout * 1000)
        engine = create_async_engine(
            self.url,
            pool_size=options.pool_size,
            max_overflow=options.max_overflow,
            pool_timeout=options.pool_timeout,
            pool_recycle=int(options.pool_recycle),
            # Whatever the server's default_transaction_isolation says: see the class docstring.
            isolation_level="READ COMMITTED",
            connect_args={
                "timeout": options.connect_timeout,
                # The client's own limit, a little beyond the server's: it ends a call whose connection went
                # silent (a network partition), where the server cannot answer at all.
                "command_timeout": None if migrating else options.statement_timeout + 2.0,
                "server_settings": {
                    "application_name": self.application_name,
                    "statement_timeout": str(statement_timeout),
                    "lock_timeout": str(lock_timeout),
                },
            },
        )
        event.listen(engine.sync_engine, "checkout", _discard_if_closed)
        return engine

    async def open(self) -> None:
        if self._engine is not None:
            return
        migrating = self._create_engine(migrating=True)
        try:
            with self._translate("open the store"):
                async with migrating.connect() as conn, conn.begin():
                    # One node migrates at a time; the others wait here, then find the schema at head.
                    await conn.execute(_TAKE_MIGRATION)
                    found = await conn.run_sync(upgrade_to_head, self.description)
        finally:
            await migrating.dispose()
        self.schema_found = frozenset(found)
        self._engine = self._create_engine()
        self._exclusive = asyncio.Lock()
        self._writers = asyncio.Semaphore(max(1, self.options.pool_size // 2))
        self._was_opened = True

    async def schema_revisions(self) -> frozenset[str]:
        """The revisions the database's schema is at (none for a new one), without migrating or opening."""
        engine = self._create_engine(migrating=True)
        try:
            with self._translate("read the schema"):
                async with engine.connect() as conn:
                    return frozenset(await conn.run_sync(current_revisions))
        finally:
            await engine.dispose()

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            with self._translate("close the store"):
                await engine.dispose()

    def _require_engine(self) -> AsyncEngine:
        if self._engine is None:
            state = "closed" if self._was_opened else "not open (call open() first)"
            raise StoreUnavailableError(f"the store on the {self.description} is {state}")
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
        engine = self._require_engine()
        exclusive = statements == "several"
        async with self._exclusive if exclusive else self._writers:
            with self._translate(action, conflicts=conflicts):
                async with engine.connect() as conn, conn.begin():
                    await conn.execute(_TAKE_EXCLUSIVE if exclusive else _TAKE_SHARED)
                    yield conn

    def point_read(self, sql: str, params: tuple[Any, ...], action: str) -> Literal[False]:
        return False  # no faster path than the pool's prepared statements

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Repositories]:
        """Every repository on one connection holding the cluster's write lock, committed when the block ends
        and rolled back when it raises."""
        engine = self._require_engine()
        async with self._exclusive:
            with self._translate("begin a transaction"):
                conn = await engine.connect()
            try:
                with self._translate("begin a transaction"):
                    await conn.begin()
                    await conn.execute(_TAKE_EXCLUSIVE)
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
        """Turn every failure of the database into `StoreUnavailableError` naming the database and the cause."""
        try:
            yield
        except IntegrityError as exc:
            if conflicts:
                raise
            raise StoreUnavailableError(self._message(action, exc)) from exc
        except (SQLAlchemyError, asyncpg.PostgresError, OSError, *_CONNECTION_ERRORS) as exc:
            # OSError covers refused connections and, since Python 3.11, TimeoutError.
            raise StoreUnavailableError(self._message(action, exc)) from exc

    def _message(self, action: str, exc: BaseException) -> str:
        original = _original(exc)
        hint = _hint(original, self.options)
        return f"cannot {action}: {self.description}: {_words(original)}" + (f"; {hint}" if hint else "")


_LOST = (
    "the connection to the server was lost (a restart, the network, or pg_terminate_backend); the next call reconnects"
)


#: What a lost connection raises: its state (closed), a server that ends it, or asyncpg's protocol state broken
#: by the server's goodbye arriving where an answer was expected ("cannot switch to state ...").
_CONNECTION_ERRORS = (
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.exceptions.InternalClientError,
)


def _hint(original: BaseException, options: PostgresOptions) -> str | None:
    """What the operator can do about a failure, where the server's words do not say it."""
    if isinstance(original, _CONNECTION_ERRORS):
        return _LOST
    if isinstance(original, asyncpg.LockNotAvailableError):
        return f"other writers held the cloud's write lock longer than the lock timeout ({options.lock_timeout:g} s)"
    if isinstance(original, asyncpg.QueryCanceledError) and "statement timeout" in str(original):
        return f"it ran longer than the statement timeout ({options.statement_timeout:g} s)"
    if isinstance(original, asyncpg.InvalidCatalogNameError):
        return "create the database first (createdb), or correct the URL"
    if isinstance(original, asyncpg.InvalidAuthorizationSpecificationError):
        return "check the user and password of the URL, and the server's pg_hba.conf"
    if isinstance(original, asyncpg.CannotConnectNowError):
        return "the server is starting or shutting down: try again shortly"
    if isinstance(original, TimeoutError):
        return f"no answer within {options.connect_timeout:g} s (connecting) or {options.statement_timeout:g} s"
    if isinstance(original, OSError):
        return "check that the server runs and that this host can reach it"
    return None


def _discard_if_closed(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
    # A pooled connection the server has closed (restart, pg_terminate_backend) is known closed to asyncpg as
    # soon as the loop has read the server's goodbye: replace it at no cost, where a pre-ping would spend a
    # round trip on every call. (The pool retries the checkout with a new connection.)
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


def _original(exc: BaseException) -> BaseException:
    """The driver's own exception, without SQLAlchemy's wrapping."""
    original: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    # SQLAlchemy's asyncpg adapter raises its own exception from the driver's.
    while not isinstance(original, (asyncpg.PostgresError, OSError, *_CONNECTION_ERRORS)):
        if original.__cause__ is None:
            break
        original = original.__cause__
    return original


def _words(original: BaseException) -> str:
    if isinstance(original, TimeoutError):
        return "timed out"
    if isinstance(original, OSError) and original.strerror:
        return original.strerror
    return str(original).strip() or type(original).__name__
