"""PostgresStore beyond the port's contract (tests/ports runs that on PostgreSQL too): the schema its migrations
build, nodes starting at once, the cluster-wide write lock seen from the server, lost connections, failures
named without the password, and the URL and its options. Each test has a database of its own."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import URL, Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from cyan.cloud.models import AuditEntry, DeviceRecord, RefreshToken
from cyan.cloud.ports import StoreUnavailableError
from cyan.store import PostgresOptions, PostgresStore, open_store
from cyan.store._migrate import alembic_config, head_revision
from cyan.store._postgres import WRITE_LOCK
from cyan.store._postgres import postgres_url as parse_url
from cyan.store._schema import metadata
from servers import admin_rows, wait_until
from store_support import DEVICE_ID, OTHER_ID, T0, attempt, run


def _database(url: URL) -> str:
    assert url.database is not None
    return url.database


async def _on(url: URL, *statements: str) -> list[tuple[Any, ...]]:
    """Run statements in the test's database, in one transaction; the last one's rows."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            rows: list[tuple[Any, ...]] = []
            for statement in statements:
                result = await conn.execute(text(statement))
                rows = [tuple(row) for row in result.all()] if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


async def _waiting_for_the_write_lock(url: URL, application: str) -> bool:
    """Whether a connection of `application` waits for the cluster's write lock (as pg_locks shows it)."""
    rows = await admin_rows(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        f"WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = '{_database(url)}' "
        f"AND a.application_name = '{application}' "
        f"AND ((l.classid::bigint << 32) | l.objid::bigint) = {WRITE_LOCK}"
    )
    return bool(rows[0][0])


# -- schema -------------------------------------------------------------------------------------


def test_the_migrations_build_exactly_the_schema_the_queries_use(postgres_url: URL) -> None:
    async def scenario() -> None:
        async with PostgresStore(postgres_url):
            pass
        engine = create_async_engine(postgres_url)
        try:
            async with engine.connect() as conn:

                def differences(sync: Connection) -> list[Any]:
                    return list(compare_metadata(MigrationContext.configure(sync), metadata))

                assert await conn.run_sync(differences) == []
        finally:
            await engine.dispose()
        assert await _on(postgres_url, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
        # Every time is a timestamptz: the instant is kept whatever the zone of the session.
        kinds = await _on(
            postgres_url,
            "SELECT DISTINCT data_type FROM information_schema.columns WHERE table_schema = 'public' "
            "AND column_name IN ('created_at', 'last_heard', 'started_at', 'at', 'until', 'expires_at')",
        )
        assert kinds == [("timestamp with time zone",)]

    run(scenario())


def test_times_are_kept_as_instants_whatever_the_sessions_time_zone(postgres_url: URL) -> None:
    async def scenario() -> None:
        async with PostgresStore(postgres_url) as store:
            await store.audit.add(AuditEntry(T0, DEVICE_ID, "registered", "alice"))
        rows = await _on(postgres_url, "SET LOCAL TIME ZONE 'America/New_York'", "SELECT at::text FROM audit")
        assert rows == [("2024-05-01 08:00:00.123456-04",)]
        async with PostgresStore(postgres_url) as store:
            [entry] = await store.audit.recent()
            assert entry.at == T0
            assert entry.at.tzinfo is T0.tzinfo

    run(scenario())


def test_nodes_starting_at_once_migrate_once(postgres_url: URL, monkeypatch: pytest.MonkeyPatch) -> None:
    upgrades = 0
    upgrade = command.upgrade

    def counting(*args: Any, **kwargs: Any) -> None:
        nonlocal upgrades
        upgrades += 1
        upgrade(*args, **kwargs)

    monkeypatch.setattr(command, "upgrade", counting)

    async def scenario() -> None:
        stores = [PostgresStore(postgres_url, application_name=f"node-{n}") for n in range(4)]
        await asyncio.gather(*(store.open() for store in stores))
        try:
            await stores[0].devices.add(DeviceRecord(id=DEVICE_ID))
            for store in stores:
                assert await store.devices.get(DEVICE_ID) == DeviceRecord(id=DEVICE_ID)
        finally:
            await asyncio.gather(*(store.close() for store in stores))

    run(scenario())
    assert upgrades == 1
    assert run(_on(postgres_url, "SELECT version_num FROM alembic_version")) == [(head_revision(),)]


def test_refresh_tokens_of_0010_each_start_a_family_of_their_own_after_0011(postgres_url: URL) -> None:
    async def scenario() -> None:
        engine = create_async_engine(postgres_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0010"))
        finally:
            await engine.dispose()
        columns = "(token_hash, username, client_id, created_at, expires_at)"
        await _on(
            postgres_url,
            f"INSERT INTO refresh_tokens {columns} VALUES ('{'ab' * 32}', 'alice', 'particle', "
            "'2024-05-01 12:00:00.123456+00', '2024-05-31 12:00:00.123456+00')",
            f"INSERT INTO access_tokens {columns} VALUES ('{'cd' * 32}', 'alice', 'particle', "
            "'2024-05-01 12:00:00.123456+00', NULL)",
        )
        async with PostgresStore(postgres_url) as store:
            taken = await store.accounts.take_refresh_token("ab" * 32, T0 + timedelta(hours=1))
            assert taken == RefreshToken("ab" * 32, "alice", "particle", T0, T0 + timedelta(days=30), "ab" * 32)
            assert [t.family for t in await store.accounts.list_tokens("alice")] == [None]
            assert await store.accounts.remove_token_family("ab" * 32) == 1
        assert await _on(postgres_url, "SELECT version_num FROM alembic_version") == [(head_revision(),)]

    run(scenario())


def test_a_schema_from_a_newer_cyan_is_refused(postgres_url: URL) -> None:
    async def scenario() -> None:
        async with PostgresStore(postgres_url):
            pass
        await _on(postgres_url, "UPDATE alembic_version SET version_num = '9999'")
        with pytest.raises(StoreUnavailableError, match=r"revision '9999', which this version of cyan does not know"):
            await PostgresStore(postgres_url).open()

    run(scenario())


# -- the cluster-wide write lock ------------------------------------------------------------------


def test_a_transaction_of_another_node_waits_for_the_first_to_commit(postgres_url: URL) -> None:
    """Two engines (two nodes) on one database: the second's read-modify-write sees the first's write, because
    it cannot begin until the first has committed (the server shows it waiting for the lock)."""

    async def increment(store: PostgresStore) -> None:
        async with store.transaction() as tx:
            device = await tx.devices.get(DEVICE_ID)
            assert device is not None
            device.hello_flags = (device.hello_flags or 0) + 1
            await tx.devices.save(device)

    async def scenario() -> None:
        first = PostgresStore(postgres_url, application_name="first")
        second = PostgresStore(postgres_url, application_name="second")
        async with first, second:
            await first.devices.add(DeviceRecord(id=DEVICE_ID, hello_flags=0))
            async with first.transaction() as tx:
                device = await tx.devices.get(DEVICE_ID)
                assert device is not None
                later = asyncio.create_task(increment(second))
                await wait_until(lambda: _waiting_for_the_write_lock(postgres_url, "second"), "waiting for the lock")
                device.hello_flags = 1
                await tx.devices.save(device)
            await later
            stored = await second.devices.get(DEVICE_ID)
            assert stored is not None
            assert stored.hello_flags == 2

    run(scenario())


def test_single_writes_share_the_lock_and_transactions_exclude_them(postgres_url: URL) -> None:
    """A one-statement write runs beside another node's one-statement write (both hold the lock shared), and
    waits for another node's transaction (which holds it exclusively)."""

    async def scenario() -> None:
        engine = create_async_engine(postgres_url, connect_args={"server_settings": {"application_name": "other"}})
        async with PostgresStore(postgres_url, application_name="node") as store:
            try:
                async with engine.connect() as other:
                    # Another node in the middle of a single-statement write.
                    await other.execute(text(f"SELECT pg_advisory_xact_lock_shared({WRITE_LOCK})"))
                    await store.attempts.add([attempt()])  # does not wait
                    waiting = asyncio.create_task(store.devices.save(DeviceRecord(id=DEVICE_ID)))
                    await wait_until(lambda: _waiting_for_the_write_lock(postgres_url, "node"), "waiting for the lock")
                    await other.rollback()
                    await waiting
                    # Another node in a transaction.
                    await other.execute(text(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})"))
                    waiting = asyncio.create_task(store.attempts.add([attempt()]))
                    await wait_until(lambda: _waiting_for_the_write_lock(postgres_url, "node"), "waiting for the lock")
                    assert not waiting.done()
                    await other.rollback()
                    await waiting
            finally:
                await engine.dispose()
            assert len(await store.attempts.recent()) == 2
            assert await store.devices.get(DEVICE_ID) == DeviceRecord(id=DEVICE_ID)

    run(scenario())


def test_a_write_that_waits_longer_than_the_lock_timeout_fails_as_unavailable(postgres_url: URL) -> None:
    async def scenario() -> None:
        engine = create_async_engine(postgres_url)
        options = PostgresOptions(lock_timeout=0.2)
        async with PostgresStore(postgres_url, options) as store:
            try:
                async with engine.connect() as other:
                    await other.execute(text(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})"))
                    with pytest.raises(
                        StoreUnavailableError,
                        match=r"cannot save a device: .*lock timeout; other writers held .* lock timeout \(0.2 s\)",
                    ):
                        await store.devices.save(DeviceRecord(id=DEVICE_ID))
                    with pytest.raises(StoreUnavailableError, match=r"cannot begin a transaction: .*lock timeout"):
                        async with store.transaction():
                            pass
                    await other.rollback()
            finally:
                await engine.dispose()
            await store.devices.save(DeviceRecord(id=DEVICE_ID))  # the lock is free again

    run(scenario())


# -- lost connections ---------------------------------------------------------------------------


async def _terminate(url: URL, application: str) -> int:
    rows = await admin_rows(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{_database(url)}' AND application_name = '{application}'"
    )
    return int(rows[0][0])


async def _connections(url: URL, application: str) -> int:
    rows = await admin_rows(
        "SELECT count(*) FROM pg_stat_activity "
        f"WHERE datname = '{_database(url)}' AND application_name = '{application}'"
    )
    return int(rows[0][0])


def test_a_connection_killed_mid_transaction_fails_it_and_the_next_call_works(postgres_url: URL) -> None:
    async def scenario() -> None:
        async with PostgresStore(postgres_url, application_name="victim") as store:
            await store.devices.add(DeviceRecord(id=OTHER_ID))

            async def killed_midway() -> None:
                async with store.transaction() as tx:
                    await tx.devices.get(OTHER_ID)
                    assert await _terminate(postgres_url, "victim") == 1
                    await tx.devices.add(DeviceRecord(id=DEVICE_ID))

            lost = r"cannot add a device: .*the connection to the server was lost"
            with pytest.raises(StoreUnavailableError, match=lost) as info:
                await killed_midway()
            assert f"PostgreSQL database '{postgres_url.database}' at 127.0.0.1:5432" in str(info.value)
            # The next call gets a new connection; nothing of the killed transaction was kept.
            assert [d.id for d in await store.devices.all()] == [OTHER_ID]
            async with store.transaction() as tx:
                await tx.devices.add(DeviceRecord(id=DEVICE_ID))
            assert [d.id for d in await store.devices.all()] == [DEVICE_ID, OTHER_ID]

    run(scenario())


def test_pooled_connections_the_server_closed_are_replaced_without_a_failure(postgres_url: URL) -> None:
    async def scenario() -> None:
        async with PostgresStore(postgres_url, application_name="pooled") as store:
            await asyncio.gather(*(store.devices.all() for _ in range(3)))  # several connections in the pool
            assert await _terminate(postgres_url, "pooled") >= 1

            async def all_gone() -> bool:
                return await _connections(postgres_url, "pooled") == 0

            await wait_until(all_gone, "closed by the server")
            await store.devices.add(DeviceRecord(id=DEVICE_ID))
            assert [d.id for d in await store.devices.all()] == [DEVICE_ID]

    run(scenario())


# -- failures, named without the password -------------------------------------------------------


def test_a_server_that_does_not_answer_is_unavailable_and_the_password_is_not_told() -> None:
    store = PostgresStore("postgresql://cyan:s3cret@127.0.0.1:1/cyan", PostgresOptions(connect_timeout=2))
    with pytest.raises(StoreUnavailableError) as info:
        run(store.open())
    message = str(info.value)
    assert message.startswith("cannot open the store: PostgreSQL database 'cyan' at 127.0.0.1:1 as cyan: ")
    assert "check that the server runs" in message
    assert "s3cret" not in message
    assert "s3cret" not in repr(store)
    with pytest.raises(StoreUnavailableError, match=r"the store on the PostgreSQL database 'cyan' .* is not open"):
        run(store.devices.all())


def test_a_database_that_does_not_exist(postgres_url: URL) -> None:
    missing = postgres_url.set(database=f"{postgres_url.database}_missing", password="s3cret")
    with pytest.raises(StoreUnavailableError, match=r"does not exist; create the database first") as info:
        run(PostgresStore(missing).open())
    assert "s3cret" not in str(info.value)


def test_a_closed_store_says_so(postgres_url: URL) -> None:
    async def scenario() -> None:
        store = PostgresStore(postgres_url)
        await store.open()
        await store.close()
        await store.close()  # closing twice is fine
        with pytest.raises(StoreUnavailableError, match="is closed"):
            await store.devices.get(DEVICE_ID)
        with pytest.raises(StoreUnavailableError, match="is closed"):
            async with store.transaction():
                pass
        await store.open()  # and it can be opened again
        assert await store.devices.get(DEVICE_ID) is None
        await store.close()

    run(scenario())


# -- URLs and options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "postgresql://cyan:s3cret@db:6543/cyan",
        "postgresql+asyncpg://cyan:s3cret@db:6543/cyan",
        "postgres://cyan@db:6543/cyan",
    ],
)
def test_open_store_takes_postgresql_urls(location: str) -> None:
    store = open_store(location)
    assert isinstance(store, PostgresStore)
    assert store.url.drivername == "postgresql+asyncpg"
    assert (store.url.host, store.url.port, store.url.database) == ("db", 6543, "cyan")
    assert store.options == PostgresOptions()


def test_pool_and_timeouts_come_from_the_url_and_the_rest_goes_to_the_driver() -> None:
    url, options = parse_url(
        "postgresql://cyan@db/cyan?pool_size=20&max_overflow=0&pool_timeout=2.5&connect_timeout=3"
        "&statement_timeout=15&lock_timeout=4&ssl=require"
    )
    assert options == PostgresOptions(
        pool_size=20, max_overflow=0, pool_timeout=2.5, connect_timeout=3, statement_timeout=15, lock_timeout=4
    )
    assert dict(url.query) == {"ssl": "require"}


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("postgresql://cyan:s3cret@db/cyan?pool_size=many", "option pool_size must be a number, not 'many'"),
        ("postgresql://cyan:s3cret@db/cyan?lock_timeout=0", "lock_timeout must be more than 0 seconds"),
        ("postgresql://cyan:s3cret@db", "the URL names no database"),
        ("postgresql+psycopg://cyan:s3cret@db/cyan", "not a PostgreSQL URL: 'postgresql\\+psycopg'"),
    ],
)
def test_bad_urls_are_refused_without_telling_the_password(location: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_url(location)
    assert "s3cret" not in str(info.value)
