"""SqliteStore: users and access tokens, and the migration that adds them to an existing database."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine
from store_support import DEVICE_ID, OTHER_ID, T0, attempt, run

from cyan.cloud.models import AccessToken, AttemptOutcome, DeviceRecord, User, Variable
from cyan.cloud.ports import StoreUnavailableError, UserExistsError
from cyan.store import SqliteStore
from cyan.store._migrate import alembic_config, head_revision

ALICE = "alice@example.com"
BOB = "bob@example.com"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cyan.db"


def user(username: str = ALICE, created_at: datetime = T0) -> User:
    return User(username=username, password_hash=f"scrypt$16384$8$1$salt${username}", created_at=created_at)


def token(
    number: int,
    username: str = ALICE,
    *,
    created_at: datetime = T0,
    expires_at: datetime | None = None,
    client_id: str = "CLI2",
) -> AccessToken:
    return AccessToken(
        token_hash=f"{number:064x}",
        username=username,
        client_id=client_id,
        created_at=created_at,
        expires_at=expires_at,
    )


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
            assert await store.get_device(DEVICE_ID) == device
            [listed] = await store.list_attempts()
            assert listed == dataclasses.replace(attempt(), id=listed.id)
            assert listed.outcome is AttemptOutcome.FAILED
            # The new tables work on the upgraded file, with the devices that were there before them.
            await store.add_user(user())
            await store.add_token(token(1))
            assert await store.remove_user(ALICE) is True
            assert await store.get_device(DEVICE_ID) == dataclasses.replace(device, owner=None)

    run(scenario())
    assert _version(db) == [head_revision()]


def test_a_downgrade_to_0001_drops_only_users_and_tokens(db: Path) -> None:
    async def fill() -> None:
        async with SqliteStore(db) as store:
            await store.add_device(DeviceRecord(id=DEVICE_ID, owner=ALICE))
            await store.record_attempt(attempt())
            await store.add_user(user())
            await store.add_token(token(1))

    async def check() -> None:
        async with SqliteStore(db) as store:
            assert await store.get_device(DEVICE_ID) == DeviceRecord(id=DEVICE_ID, owner=ALICE)
            assert len(await store.list_attempts()) == 1
            assert await store.list_users() == []
            assert await store.get_token(token(1).token_hash) is None

    run(fill())
    _migrate(db, "0001", down=True)
    assert _version(db) == ["0001"]
    assert _table_names(db) == {"alembic_version", "devices", "connection_attempts"}
    run(check())
    assert _version(db) == [head_revision()]


# -- users --------------------------------------------------------------------------------------


def test_every_user_field_survives_a_round_trip(db: Path) -> None:
    # A zone other than UTC: the instant is kept and comes back in UTC.
    original = user(created_at=datetime(2024, 5, 1, 14, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))))

    async def scenario() -> User | None:
        async with SqliteStore(db) as store:
            await store.add_user(original)
        async with SqliteStore(db) as store:  # from the file, not from any cache
            return await store.get_user(ALICE)

    got = run(scenario())
    assert got == original
    assert got is not None
    assert got.created_at.tzinfo is UTC
    assert got.created_at == datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC)


def test_usernames_are_stored_lowercase_and_looked_up_in_any_case(db: Path) -> None:
    async def scenario() -> None:
        async with SqliteStore(db) as store:
            await store.add_user(user("Alice@Example.COM"))
            got = await store.get_user(ALICE)
            assert got is not None
            assert got.username == ALICE
            assert got.password_hash == user("Alice@Example.COM").password_hash  # the hash is kept as given
            assert await store.get_user("ALICE@EXAMPLE.COM") == got
            assert await store.get_user(BOB) is None

    run(scenario())


def test_add_user_refuses_a_taken_username_in_any_case(db: Path) -> None:
    async def scenario() -> None:
        async with SqliteStore(db) as store:
            await store.add_user(user())
            with pytest.raises(UserExistsError, match=f"the username '{ALICE}' is already taken"):
                await store.add_user(user(ALICE.upper(), created_at=T0 + timedelta(days=1)))
            assert await store.list_users() == [user()]

    run(scenario())


def test_of_two_concurrent_adds_of_one_username_exactly_one_wins(db: Path) -> None:
    async def scenario() -> None:
        async with SqliteStore(db) as store:
            results = await asyncio.gather(
                *(store.add_user(user(name)) for name in (ALICE, ALICE.upper(), "Alice@example.com")),
                return_exceptions=True,
            )
            assert results.count(None) == 1
            assert all(isinstance(result, UserExistsError) for result in results if result is not None)
            assert len(await store.list_users()) == 1

    run(scenario())


def test_list_users_is_ordered_by_lowercase_username(db: Path) -> None:
    async def scenario() -> None:
        async with SqliteStore(db) as store:
            assert await store.list_users() == []
            # Stored as given, "Bob" would sort before "alice".
            for name in ("carol@example.com", "Bob@example.com", ALICE):
                await store.add_user(user(name))
            assert [u.username for u in await store.list_users()] == [ALICE, BOB, "carol@example.com"]

    run(scenario())


def test_remove_user_deletes_their_tokens_and_releases_their_devices(db: Path) -> None:
    kitchen = DeviceRecord(id=DEVICE_ID, name="kitchen", owner=ALICE, online=True, functions=["led"])
    garage = DeviceRecord(id=OTHER_ID, name="garage", owner=BOB)
    unowned = DeviceRecord(id="aa" * 12)

    async def scenario() -> None:
        async with SqliteStore(db) as store:
            for device in (kitchen, garage, unowned):
                await store.add_device(device)
            await store.add_user(user(ALICE))
            await store.add_user(user(BOB))
            await store.add_token(token(1, ALICE))
            await store.add_token(token(2, ALICE, expires_at=T0 + timedelta(days=1)))
            await store.add_token(token(3, BOB))

            assert await store.remove_user("Alice@Example.com") is True
            assert await store.get_user(ALICE) is None
            assert await store.list_tokens(ALICE) == []
            assert await store.get_token(token(1).token_hash) is None
            # Released, and otherwise unchanged.
            assert await store.get_device(DEVICE_ID) == dataclasses.replace(kitchen, owner=None)
            # Nobody else's user, tokens or devices are touched.
            assert await store.list_users() == [user(BOB)]
            assert await store.list_tokens(BOB) == [token(3, BOB)]
            assert await store.list_devices(BOB) == [garage]
            assert await store.get_device(unowned.id) == unowned

            assert await store.remove_user(ALICE) is False
            await store.add_user(user(ALICE))  # the username is free again

    run(scenario())


def test_remove_user_of_a_username_without_a_user_still_clears_tokens_and_owners(db: Path) -> None:
    async def scenario() -> None:
        async with SqliteStore(db) as store:
            await store.add_device(DeviceRecord(id=DEVICE_ID, owner=ALICE))
            await store.add_token(token(1, ALICE))
            assert await store.remove_user(ALICE) is False
            assert await store.list_tokens(ALICE) == []
            assert await store.get_device(DEVICE_ID) == DeviceRecord(id=DEVICE_ID)

    run(scenario())


def test_remove_user_is_one_transaction(db: Path) -> None:
    async def fill() -> None:
        async with SqliteStore(db) as store:
            await store.add_device(DeviceRecord(id=DEVICE_ID, owner=ALICE))
            await store.add_user(user())
            await store.add_token(token(1))

    async def scenario() -> None:
        async with SqliteStore(db) as store:
            with pytest.raises(StoreUnavailableError, match=r"cannot remove a user: SQLite database .*: refused"):
                await store.remove_user(ALICE)
            # The user's row goes last: the tokens and the owner removed before the failure are back.
            assert await store.get_user(ALICE) == user()
            assert await store.list_tokens(ALICE) == [token(1)]
            assert await store.get_device(DEVICE_ID) == DeviceRecord(id=DEVICE_ID, owner=ALICE)

    run(fill())
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TRIGGER refuse BEFORE DELETE ON users BEGIN SELECT RAISE(ABORT, 'refused'); END")
    conn.close()
    run(scenario())


# -- access tokens ------------------------------------------------------------------------------


def test_every_token_field_survives_a_round_trip(db: Path) -> None:
    plus_two = timezone(timedelta(hours=2))
    expiring = token(
        0xABC,
        client_id="particle",
        created_at=datetime(2024, 5, 1, 14, 0, tzinfo=plus_two),
        expires_at=datetime(2024, 8, 1, 14, 0, 0, 1, tzinfo=plus_two),
    )
    forever = token(0xDEF, BOB, client_id="user")

    async def scenario() -> tuple[AccessToken | None, AccessToken | None]:
        async with SqliteStore(db) as store:
            await store.add_token(expiring)
            await store.add_token(forever)
        async with SqliteStore(db) as store:
            return await store.get_token(expiring.token_hash), await store.get_token(forever.token_hash)

    got_expiring, got_forever = run(scenario())
    assert got_expiring == expiring
    assert got_forever == forever
    assert got_expiring is not None
    assert got_expiring.created_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert got_expiring.created_at.tzinfo is UTC
    assert got_expiring.expires_at == datetime(2024, 8, 1, 12, 0, 0, 1, tzinfo=UTC)
    assert got_expiring.expires_at.tzinfo is UTC
    assert got_forever is not None
    assert got_forever.expires_at is None


def test_token_hashes_and_usernames_are_stored_lowercase(db: Path) -> None:
    mixed = AccessToken("AB" * 32, "Alice@Example.COM", "CLI2", T0, None)
    stored = AccessToken("ab" * 32, ALICE, "CLI2", T0, None)

    async def scenario() -> None:
        async with SqliteStore(db) as store:
            await store.add_token(mixed)
            assert await store.get_token("ab" * 32) == stored
            assert await store.get_token("AB" * 32) == stored
            assert await store.list_tokens(ALICE.upper()) == [stored]
            assert await store.get_token("cd" * 32) is None

    run(scenario())


def test_add_token_refuses_a_hash_already_stored(db: Path) -> None:
    async def scenario() -> None:
        async with SqliteStore(db) as store:
            await store.add_token(token(1))
            with pytest.raises(ValueError, match=f"hash {token(1).token_hash} is already stored") as info:
                await store.add_token(token(1, BOB, client_id="user"))
            assert not isinstance(info.value, UserExistsError)
            assert await store.get_token(token(1).token_hash) == token(1)
            assert await store.list_tokens(BOB) == []

    run(scenario())


def test_list_tokens_is_newest_first_and_only_the_users(db: Path) -> None:
    async def scenario() -> None:
        async with SqliteStore(db) as store:
            assert await store.list_tokens(ALICE) == []
            for number, minutes in ((1, 5), (2, 1), (4, 3), (3, 3), (5, 9)):
                await store.add_token(token(number, created_at=T0 + timedelta(minutes=minutes)))
            await store.add_token(token(6, BOB, created_at=T0 + timedelta(minutes=7)))
            # Tokens created at the same instant come in the order of their hashes.
            assert [int(t.token_hash, 16) for t in await store.list_tokens(ALICE)] == [5, 1, 3, 4, 2]
            assert [int(t.token_hash, 16) for t in await store.list_tokens(BOB)] == [6]
            assert await store.list_tokens("nobody@example.com") == []

    run(scenario())


def test_remove_token_says_whether_it_existed(db: Path) -> None:
    async def scenario() -> None:
        async with SqliteStore(db) as store:
            await store.add_token(token(1))
            await store.add_token(token(2))
            assert await store.remove_token(token(1).token_hash.upper()) is True
            assert await store.get_token(token(1).token_hash) is None
            assert await store.remove_token(token(1).token_hash) is False
            assert await store.list_tokens(ALICE) == [token(2)]

    run(scenario())


def test_remove_expired_tokens_deletes_those_expiring_at_or_before_now(db: Path) -> None:
    now = T0 + timedelta(days=30)
    microsecond = timedelta(microseconds=1)

    async def scenario() -> None:
        async with SqliteStore(db) as store:
            assert await store.remove_expired_tokens(now) == 0  # nothing to do is fine
            await store.add_token(token(1, expires_at=now - timedelta(days=1)))
            await store.add_token(token(2, expires_at=now - microsecond))
            await store.add_token(token(3, BOB, expires_at=now))
            await store.add_token(token(4, expires_at=now + microsecond))
            await store.add_token(token(5, expires_at=None))
            # `now` is an instant: given in another zone it means the same.
            in_tokyo = now.astimezone(timezone(timedelta(hours=9)))
            assert await store.remove_expired_tokens(in_tokyo) == 3
            assert [int(t.token_hash, 16) for t in await store.list_tokens(ALICE)] == [4, 5]
            assert await store.list_tokens(BOB) == []
            assert await store.remove_expired_tokens(now) == 0
            assert await store.remove_expired_tokens(now + microsecond) == 1
            assert await store.list_tokens(ALICE) == [token(5)]

    run(scenario())


# -- refusals and failures ----------------------------------------------------------------------


def test_naive_datetimes_are_refused_before_anything_is_written(db: Path) -> None:
    naive = datetime(2024, 5, 1, 12, 0)  # no tzinfo: the point of the test

    async def scenario() -> None:
        async with SqliteStore(db) as store:
            with pytest.raises(ValueError, match="created_at must be an aware datetime"):
                await store.add_user(user(created_at=naive))
            with pytest.raises(ValueError, match="created_at must be an aware datetime"):
                await store.add_token(token(1, created_at=naive))
            with pytest.raises(ValueError, match="expires_at must be an aware datetime"):
                await store.add_token(token(1, expires_at=naive))
            await store.add_token(token(2, expires_at=T0))
            with pytest.raises(ValueError, match="now must be an aware datetime"):
                await store.remove_expired_tokens(naive)
            assert await store.list_users() == []
            assert await store.list_tokens(ALICE) == [token(2, expires_at=T0)]

    run(scenario())


def test_writes_fail_as_unavailable_while_another_process_holds_the_lock(db: Path) -> None:
    async def scenario(holder: sqlite3.Connection) -> None:
        async with SqliteStore(db, busy_timeout=0.05) as store:
            await store.add_user(user())
            await store.add_token(token(1, expires_at=T0))
            holder.execute("BEGIN EXCLUSIVE")
            # Built one at a time: a coroutine created but never awaited would be reported as a warning.
            writes: dict[str, Callable[[], Awaitable[object]]] = {
                "add a user": lambda: store.add_user(user(BOB)),
                "remove a user": lambda: store.remove_user(ALICE),
                "add an access token": lambda: store.add_token(token(2)),
                "remove an access token": lambda: store.remove_token(token(1).token_hash),
                "remove expired access tokens": lambda: store.remove_expired_tokens(T0),
            }
            for action, write in writes.items():
                with pytest.raises(StoreUnavailableError, match=f"cannot {action}: .*database is locked"):
                    await write()
            # WAL: readers are not blocked, and nothing was written.
            assert await store.list_users() == [user()]
            assert await store.list_tokens(ALICE) == [token(1, expires_at=T0)]
            holder.rollback()
            assert await store.remove_user(ALICE) is True

    holder = sqlite3.connect(db, isolation_level=None)
    try:
        run(scenario(holder))
    finally:
        holder.close()
