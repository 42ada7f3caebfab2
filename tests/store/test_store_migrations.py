"""SQLite only: a database of an older schema is upgraded in place, keeping its data; the schema only moves
forward; a write lock held by another process is reported, not waited on forever."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine

from cyan.cloud.models import (
    AccessToken,
    AttemptOutcome,
    DeviceRecord,
    KeyPolicyMode,
    RefreshToken,
    Role,
    User,
    Variable,
)
from cyan.cloud.ports import StoreUnavailableError
from cyan.store import SqliteStore
from cyan.store._migrate import alembic_config, head_revision
from store_support import DEVICE_ID, T0, attempt, run

ALICE = "alice@example.com"
BOB = "bob@example.com"
#: A data directory's database made by release 0.1.0 (schema 0004) with one of everything; see data/README.md.
RELEASE_0_1_0 = Path(__file__).parent / "data" / "release-0.1.0.db"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cyan.db"


def user(username: str = ALICE, created_at: datetime = T0) -> User:
    return User(username=username, password_hash=f"scrypt$16384$8$1$salt${username}", created_at=created_at)


def token(number: int, username: str = ALICE, *, expires_at: datetime | None = None) -> AccessToken:
    return AccessToken(f"{number:064x}", username, "CLI2", T0, expires_at)


def _version(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        versions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
    conn.close()
    return versions


def _table_names(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    return names


def _migrate(db: Path, revision: str, *, down: bool = False) -> None:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.begin() as conn:
            (command.downgrade if down else command.upgrade)(alembic_config(conn), revision)
    finally:
        engine.dispose()


# -- migration ----------------------------------------------------------------------------------


def test_a_database_at_0001_is_upgraded_keeping_its_devices_and_attempts(db: Path) -> None:
    _migrate(db, "0001")
    assert _version(db) == ["0001"]
    assert "users" not in _table_names(db)
    # Rows as a store at revision 0001 wrote them, in SQL rather than through today's schema: what is on disk
    # must not change when the current tables do.
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO devices (id, name, owner, public_key_der, key_fingerprint, platform_id, product_id,"
            " product_version, system_version, hello_flags, functions, variables, online, last_heard,"
            " last_address, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                DEVICE_ID,
                "kitchen",
                ALICE,
                b"\x30\x81\x9f",
                "sha256:abc",
                6,
                6,
                65535,
                3103,
                6,
                '["led"]',
                '[{"name": "temp", "type": "double"}]',
                1,
                "2024-05-01 12:05:00.123456",
                "192.0.2.10:51234",
                "2024-05-01 12:00:00.123456",
            ),
        )
        conn.execute(
            "INSERT INTO connection_attempts (started_at, peer_address, outcome, step, reason, detail, device_id,"
            " presented_fingerprint, stored_fingerprint, duration) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "2024-05-01 12:00:00.123456",
                "192.0.2.10:51234",
                "failed",
                "nonce",
                "nonce_mismatch",
                "the device holds another server key",
                DEVICE_ID,
                "sha256:presented",
                "sha256:stored",
                0.25,
            ),
        )
    conn.close()
    device = DeviceRecord(
        id=DEVICE_ID,
        name="kitchen",
        owner=ALICE,
        public_key_der=b"\x30\x81\x9f",
        key_fingerprint="sha256:abc",
        platform_id=6,
        product_id=6,
        product_version=65535,
        system_version=3103,
        hello_flags=6,
        functions=["led"],
        variables=[Variable("temp", "double")],
        online=True,
        last_heard=T0 + timedelta(minutes=5),
        last_address="192.0.2.10:51234",
        created_at=T0,
    )

    async def scenario() -> None:
        async with SqliteStore(db) as store:
            assert await store.devices.get(DEVICE_ID) == device
            [listed] = await store.attempts.recent()
            # A failed attempt of that time proved nothing (revision 0005 marks it so).
            assert listed == dataclasses.replace(attempt(), id=listed.id, proven=False)
            assert listed.outcome is AttemptOutcome.FAILED
            # The new tables work on the upgraded file, with the devices that were there before them.
            await store.accounts.add_user(user())
            await store.accounts.add_token(token(1))
            assert await store.accounts.remove_user(ALICE) is True
            assert await store.devices.get(DEVICE_ID) == dataclasses.replace(device, owner=None)

    run(scenario())
    assert _version(db) == [head_revision()]


def test_a_data_directory_of_release_0_1_0_upgrades_in_place(db: Path) -> None:
    shutil.copy(RELEASE_0_1_0, db)
    assert _version(db) == ["0004"]
    kitchen = "0123456789abcdef01234567"

    async def scenario() -> None:
        async with SqliteStore(db) as store:
            device = await store.devices.get(kitchen)
            assert device is not None
            assert (device.name, device.owner, device.key_fingerprint) == ("kitchen", ALICE, "SHA256:kitchen")
            assert device.variables == [Variable("counter", "int32")]
            users = await store.accounts.list_users()
            assert [(u.username, u.role) for u in users] == [(ALICE, Role.USER), (BOB, Role.USER)]
            assert len(await store.accounts.list_tokens(ALICE)) == 1
            # The key audit became the audit trail, ids and all; new entries may name no device.
            trail = await store.audit.recent()
            assert [(e.id, e.action, e.device_id, e.subject) for e in trail] == [
                (2, "approved", kitchen, None),
                (1, "refused", kitchen, None),
            ]
            pending = await store.keys.list_pending_keys(kitchen)
            assert [(p.fingerprint, p.attempts) for p in pending] == [("SHA256:new", 3)]
            fleet = await store.keys.get_policy("*")
            assert fleet is not None
            assert (fleet.mode, fleet.self_registration) == (KeyPolicyMode.QUARANTINE, False)
            window = await store.keys.get_rekey("aaaaaaaaaaaaaaaaaaaaaaaa")
            assert window is not None
            assert window.accepted_fingerprint is None
            # Attempts of that time: connected and identified ones are taken as proven, failed ones not.
            proven = {(a.reason, a.proven) for a in await store.attempts.recent()}
            assert proven == {(None, True), ("key_mismatch", False), ("nonce_mismatch", None)}
            assert [j.state.value for j in await store.updates.list_jobs()] == ["succeeded"]
            assert await store.updates.list_group("porch") == [kitchen]
            # What is new works on the upgraded file.
            async with store.transaction() as tx:
                await tx.keys.save_pending_key(dataclasses.replace(pending[0], fingerprint="SHA256:other"))
            assert len(await store.keys.list_pending_keys(kitchen)) == 2

    run(scenario())
    assert _version(db) == [head_revision()]


def test_refresh_tokens_of_0010_each_start_a_family_of_their_own_and_work_after_0011(db: Path) -> None:
    _migrate(db, "0010")
    created, expires = "2024-05-01 12:00:00.123456", "2024-05-31 12:00:00.123456"
    columns = "(token_hash, username, client_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?)"
    with sqlite3.connect(db) as conn:
        conn.execute(f"INSERT INTO refresh_tokens {columns}", ("ab" * 32, ALICE, "particle", created, expires))
        conn.execute(f"INSERT INTO access_tokens {columns}", ("cd" * 32, ALICE, "particle", created, None))
    conn.close()

    async def scenario() -> None:
        async with SqliteStore(db) as store:
            # Unspent, a family of its own (its descendants, if any, are not known); the access token of none.
            taken = await store.accounts.take_refresh_token("ab" * 32, T0 + timedelta(hours=1))
            assert taken == RefreshToken("ab" * 32, ALICE, "particle", T0, T0 + timedelta(days=30), "ab" * 32)
            assert await store.accounts.list_tokens(ALICE) == [
                AccessToken("cd" * 32, ALICE, "particle", T0, None, None)
            ]
            spent = await store.accounts.take_refresh_token("ab" * 32, T0 + timedelta(hours=2))
            assert spent is not None
            assert spent.spent_at == T0 + timedelta(hours=1)
            assert await store.accounts.remove_token_family("ab" * 32) == 1
            assert len(await store.accounts.list_tokens(ALICE)) == 1  # not of the family

    run(scenario())
    assert _version(db) == [head_revision()]


def test_the_schema_only_moves_forward(db: Path) -> None:
    async def create() -> None:
        async with SqliteStore(db):
            pass

    run(create())
    with pytest.raises(NotImplementedError, match="only moves forward"):
        _migrate(db, "0004", down=True)
    assert _version(db) == [head_revision()]


def test_writes_fail_as_unavailable_while_another_process_holds_the_lock(db: Path) -> None:
    async def scenario(holder: sqlite3.Connection) -> None:
        async with SqliteStore(db, busy_timeout=0.05) as store:
            await store.accounts.add_user(user())
            await store.accounts.add_token(token(1, expires_at=T0))
            holder.execute("BEGIN EXCLUSIVE")
            # Built one at a time: a coroutine created but never awaited would be reported as a warning.
            writes: dict[str, Callable[[], Awaitable[object]]] = {
                "add a user": lambda: store.accounts.add_user(user(BOB)),
                "remove a user": lambda: store.accounts.remove_user(ALICE),
                "add an access token": lambda: store.accounts.add_token(token(2)),
                "remove an access token": lambda: store.accounts.remove_token(token(1).token_hash),
                "remove expired tokens": lambda: store.accounts.remove_expired_tokens(T0),
            }
            for action, write in writes.items():
                with pytest.raises(StoreUnavailableError, match=f"cannot {action}: .*database is locked"):
                    await write()
            # WAL: readers are not blocked, and nothing was written.
            assert await store.accounts.list_users() == [user()]
            assert await store.accounts.list_tokens(ALICE) == [token(1, expires_at=T0)]
            holder.rollback()
            assert await store.accounts.remove_user(ALICE) is True

    holder = sqlite3.connect(db, isolation_level=None)
    try:
        run(scenario(holder))
    finally:
        holder.close()
