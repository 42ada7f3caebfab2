"""SqliteStore: the file, the schema and its migrations, and how failures of the database are reported."""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from cyan.cloud.models import AccessToken, DeviceRecord, User
from cyan.cloud.ports import StoreUnavailableError
from cyan.store import FirmwareFiles, SqliteStore, open_store
from cyan.store._migrate import head_revision, newest_revision
from cyan.store._schema import metadata
from store_support import DEVICE_ID, T0, attempt, run

ALICE = "alice@example.com"


def user() -> User:
    return User(username=ALICE, password_hash="scrypt$16384$8$1$salt$alice", created_at=T0)


def token(number: int) -> AccessToken:
    return AccessToken(f"{number:064x}", ALICE, "CLI2", T0, None)


def _permissions_are_enforced() -> bool:
    """False for root (or anyone with CAP_DAC_OVERRIDE), whom file modes do not stop."""
    with tempfile.TemporaryDirectory() as directory:
        probe = Path(directory) / "probe"
        probe.touch(mode=0o400)
        try:
            probe.open("w").close()
        except PermissionError:
            return True
        return False


IGNORES_PERMISSIONS = not _permissions_are_enforced()


def _tables(db: Path) -> dict[str, list[str]]:
    """Table name -> index names, read with the standard library's sqlite3."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    conn.close()
    tables: dict[str, list[str]] = {name: [] for kind, name, _ in rows if kind == "table"}
    for kind, name, table in rows:
        if kind == "index":
            tables[table].append(name)
    return {name: sorted(indexes) for name, indexes in tables.items()}


def _version(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        versions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    conn.close()
    return versions


# -- file and schema ----------------------------------------------------------------------------


def test_open_creates_directories_and_the_schema_at_head(tmp_path: Path) -> None:
    db = tmp_path / "new" / "dir" / "cyan.db"

    async def scenario() -> None:
        async with SqliteStore(db):
            pass

    run(scenario())
    assert head_revision() == "0011"
    # The cheap head that spares every open of a current database from importing Alembic.
    assert newest_revision() == head_revision()
    assert _version(db) == [head_revision()]
    assert _tables(db) == {
        "alembic_version": [],
        "devices": ["ix_devices_owner"],
        "connection_attempts": [
            "ix_connection_attempts_device_id_started_at",
            "ix_connection_attempts_peer_address_started_at",
            "ix_connection_attempts_started_at",
        ],
        "users": [],
        "access_tokens": ["ix_access_tokens_family", "ix_access_tokens_username"],
        "refresh_tokens": ["ix_refresh_tokens_expires_at", "ix_refresh_tokens_family", "ix_refresh_tokens_username"],
        "key_policies": [],
        "rekey_windows": [],
        "pending_keys": [],
        "audit": ["ix_audit_at", "ix_audit_device_id_at", "ix_audit_subject_at"],
        "claim_codes": ["ix_claim_codes_device_id", "ix_claim_codes_expires_at"],
        "firmware": [],
        "update_jobs": ["ix_update_jobs_device_id_id", "ix_update_jobs_rollout", "ix_update_jobs_state"],
        "device_groups": ["ix_device_groups_device_id"],
        "integrations": ["ix_integrations_owner"],
        "hook_deliveries": ["ix_hook_deliveries_integration_id_id"],
        "device_vitals": ["ix_device_vitals_device_id_updated_at", "ix_device_vitals_updated_at"],
        "udp_sessions": ["ix_udp_sessions_device_id_updated_at", "ix_udp_sessions_updated_at"],
    }
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


def test_a_second_open_keeps_the_data_and_runs_no_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "cyan.db"

    async def first() -> None:
        async with SqliteStore(db) as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the schema is at head: nothing to migrate")

    async def second() -> DeviceRecord | None:
        async with SqliteStore(db) as store:
            await store.open()  # opening an open store does nothing
            return await store.devices.get(DEVICE_ID)

    run(first())
    monkeypatch.setattr(command, "upgrade", refuse)
    assert run(second()) == DeviceRecord(id=DEVICE_ID)
    assert _version(db) == [head_revision()]


def test_the_migrations_build_exactly_the_schema_the_queries_use(tmp_path: Path) -> None:
    db = tmp_path / "cyan.db"

    async def scenario() -> None:
        async with SqliteStore(db):
            pass

    run(scenario())
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    finally:
        engine.dispose()


def test_a_migration_that_fails_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "cyan.db"
    create_index = Operations.create_index
    calls = 0

    def fail_on_the_second_index(self: Operations, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a migration step failed")
        create_index(self, *args, **kwargs)

    async def scenario() -> None:
        async with SqliteStore(db):
            pass

    monkeypatch.setattr(Operations, "create_index", fail_on_the_second_index)
    with pytest.raises(RuntimeError, match="a migration step failed"):
        run(scenario())
    assert _tables(db) == {}  # one transaction: the tables created before the failure are gone too
    monkeypatch.undo()
    run(scenario())
    assert _version(db) == [head_revision()]


def test_a_schema_from_a_newer_cyan_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "cyan.db"

    async def scenario() -> None:
        async with SqliteStore(db):
            pass

    run(scenario())
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    with pytest.raises(StoreUnavailableError, match=r"revision '9999', which this version of cyan does not know"):
        run(scenario())


def test_the_database_files_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "cyan.db"
    old_umask = os.umask(0o022)  # the usual one, which would leave the file world-readable
    try:

        async def scenario() -> None:
            async with SqliteStore(db) as store:
                await store.attempts.add([attempt()])
                # While the store is open, its -wal and -shm files exist too.
                for path in (db, db.with_name("cyan.db-wal"), db.with_name("cyan.db-shm")):
                    assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

        run(scenario())
    finally:
        os.umask(old_umask)


def test_every_connection_gets_the_pragmas(tmp_path: Path) -> None:
    async def scenario() -> list[object]:
        async with SqliteStore(tmp_path / "cyan.db", busy_timeout=1.5) as store:
            engine = store._engine
            assert engine is not None
            async with engine.connect() as conn:
                return [
                    (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                    for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
                ]

    assert run(scenario()) == ["wal", 1, 1, 1500]  # synchronous 1 is NORMAL


# -- failures -----------------------------------------------------------------------------------


def test_a_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    store = SqliteStore(blocker / "cyan.db")
    with pytest.raises(
        StoreUnavailableError, match=r"cannot create the SQLite database .*a-file/cyan.db: .*a-file is not a directory"
    ) as info:
        run(store.open())
    assert isinstance(info.value.__cause__, OSError)


@pytest.mark.skipif(IGNORES_PERMISSIONS, reason="this user can write to any directory")
def test_a_directory_without_write_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(StoreUnavailableError, match="Permission denied"):
            run(SqliteStore(locked / "cyan.db").open())
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_a_directory_where_no_file_can_be_created() -> None:
    # /proc refuses new files even to root, which the permission test above cannot show.
    with pytest.raises(StoreUnavailableError, match=r"cannot create the SQLite database /proc/cyan\.db: "):
        run(SqliteStore("/proc/cyan.db").open())


@pytest.mark.skipif(IGNORES_PERMISSIONS, reason="this user can write to any file")
def test_a_read_only_database(tmp_path: Path) -> None:
    db = tmp_path / "cyan.db"
    run(_open_and_write(db))
    db.chmod(0o400)
    with pytest.raises(StoreUnavailableError, match=r"read-only|readonly"):
        run(_open_and_write(db))


async def _open_and_write(db: Path) -> None:
    async with SqliteStore(db) as store:
        await store.attempts.add([attempt()])


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    db = tmp_path / "cyan.db"
    db.write_bytes(b"this is not a SQLite database, just some text\n" * 100)
    with pytest.raises(
        StoreUnavailableError, match="file is not a database; the file is not a SQLite database"
    ) as info:
        run(_open_and_write(db))
    message = str(info.value)
    assert message.startswith(f"cannot open the store: SQLite database {db}: ")
    assert "sqlalche.me" not in message  # the driver's words, not SQLAlchemy's wrapping
    assert info.value.__cause__ is not None


def test_a_database_locked_by_another_process_longer_than_the_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "cyan.db"

    async def scenario(holder: sqlite3.Connection) -> None:
        async with SqliteStore(db, busy_timeout=0.05) as store:
            holder.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreUnavailableError, match=r"database is locked; .*busy timeout \(0.05 s\)"):
                await store.attempts.add([attempt()])
            with pytest.raises(StoreUnavailableError, match=r"cannot save a device: .*database is locked"):
                await store.devices.save(DeviceRecord(id=DEVICE_ID))
            assert await store.attempts.recent() == []  # WAL: readers are not blocked
            holder.rollback()
            # The store recovers once the lock is gone.
            await store.attempts.add([attempt()])
            assert len(await store.attempts.recent()) == 1

    holder = sqlite3.connect(db, isolation_level=None)
    try:
        run(scenario(holder))
    finally:
        holder.close()


StoreCall = Callable[[SqliteStore], Awaitable[object]]
CALLS: dict[str, StoreCall] = {
    "get_device": lambda s: s.devices.get(DEVICE_ID),
    "find_device": lambda s: s.devices.find("kitchen"),
    "list_devices": lambda s: s.devices.all(),
    "add_device": lambda s: s.devices.add(DeviceRecord(id=DEVICE_ID)),
    "save_device": lambda s: s.devices.save(DeviceRecord(id=DEVICE_ID)),
    "remove_device": lambda s: s.devices.remove(DEVICE_ID),
    "mark_all_offline": lambda s: s.devices.mark_all_offline(),
    "record_attempt": lambda s: s.attempts.add([attempt()]),
    "list_attempts": lambda s: s.attempts.recent(),
    "add_user": lambda s: s.accounts.add_user(User("alice@example.com", "scrypt$hash", T0)),
    "get_user": lambda s: s.accounts.get_user("alice@example.com"),
    "list_users": lambda s: s.accounts.list_users(),
    "remove_user": lambda s: s.accounts.remove_user("alice@example.com"),
    "add_token": lambda s: s.accounts.add_token(AccessToken("ab" * 32, "alice@example.com", "CLI2", T0, None)),
    "get_token": lambda s: s.accounts.get_token("ab" * 32),
    "list_tokens": lambda s: s.accounts.list_tokens("alice@example.com"),
    "remove_token": lambda s: s.accounts.remove_token("ab" * 32),
    "remove_expired_tokens": lambda s: s.accounts.remove_expired_tokens(T0),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_a_closed_store_is_unavailable(tmp_path: Path, call: StoreCall) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "cyan.db")
        with pytest.raises(StoreUnavailableError, match=r"is not open \(call open\(\) first\)"):
            await call(store)
        await store.open()
        await store.close()
        await store.close()  # closing twice is fine
        with pytest.raises(StoreUnavailableError, match=f"the SQLite store {tmp_path / 'cyan.db'} is closed"):
            await call(store)
        await store.open()  # and it can be opened again
        await call(store)
        await store.close()

    run(scenario())


# -- open_store ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("relative/cyan.db", Path("relative/cyan.db").absolute()),
        ("/var/lib/cyan/cyan.db", Path("/var/lib/cyan/cyan.db")),
        ("sqlite+aiosqlite:////var/lib/cyan/cyan.db", Path("/var/lib/cyan/cyan.db")),
        ("sqlite:////var/lib/cyan/cyan.db", Path("/var/lib/cyan/cyan.db")),
        ("sqlite+aiosqlite:///relative/cyan.db", Path("relative/cyan.db").absolute()),
    ],
)
def test_open_store_takes_a_path_or_a_sqlite_url(location: str, expected: Path) -> None:
    store = open_store(location)
    assert isinstance(store, SqliteStore)
    assert store.path == expected


def test_open_store_takes_a_path_object(tmp_path: Path) -> None:
    store = open_store(tmp_path / "cyan.db")
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "cyan.db"


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("mysql+aiomysql://cyan:s3cret@db/cyan", "unsupported database URL scheme 'mysql\\+aiomysql'"),
        ("postgresql+psycopg://cyan:s3cret@db/cyan", "unsupported database URL scheme 'postgresql\\+psycopg'"),
        ("redis://localhost", "unsupported database URL scheme 'redis'"),
        ("", "no database given"),
        ("sqlite+aiosqlite://", "names no database file"),
        ("sqlite+aiosqlite:///:memory:", "names no database file"),
        ("sqlite+aiosqlite:///cyan.db?mode=ro", "without host or options"),
    ],
)
def test_open_store_refuses_anything_else(location: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        open_store(location)
    assert "s3cret" not in str(info.value)


def test_remove_user_is_one_transaction(tmp_path: Path) -> None:
    db = tmp_path / "cyan.db"

    async def fill() -> None:
        async with SqliteStore(db) as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID, owner=ALICE))
            await store.accounts.add_user(user())
            await store.accounts.add_token(token(1))

    async def scenario() -> None:
        async with SqliteStore(db) as store:
            with pytest.raises(StoreUnavailableError, match=r"cannot remove a user: SQLite database .*: refused"):
                await store.accounts.remove_user(ALICE)
            # The user's row goes last: the tokens and the owner removed before the failure are back.
            assert await store.accounts.get_user(ALICE) == user()
            assert await store.accounts.list_tokens(ALICE) == [token(1)]
            assert await store.devices.get(DEVICE_ID) == DeviceRecord(id=DEVICE_ID, owner=ALICE)

    run(fill())
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE DELETE ON users BEGIN SELECT RAISE(ABORT, 'refused'); END")
    conn.close()
    run(scenario())


def test_firmware_files(tmp_path: Path) -> None:
    files = FirmwareFiles(tmp_path / "firmware")
    sha = files.put(b"\x01\x02\x03")
    assert files.put(b"\x01\x02\x03") == sha
    path = files.path(sha)
    assert path == tmp_path / "firmware" / sha[:2] / f"{sha}.bin"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert files.get(sha) == b"\x01\x02\x03"
    path.write_bytes(b"\x01\x02\x04")
    with pytest.raises(StoreUnavailableError, match="damaged"):
        files.get(sha)
    with pytest.raises(StoreUnavailableError, match="cannot read"):
        files.get("00" * 32)
    with pytest.raises(ValueError, match="not a SHA-256"):
        files.path("../etc/passwd")
    blocked = FirmwareFiles(path)  # a file where a directory should be
    with pytest.raises(StoreUnavailableError, match="cannot store"):
        blocked.put(b"x")
