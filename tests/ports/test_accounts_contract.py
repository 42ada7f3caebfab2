"""The accounts repository's contract: users and access tokens."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cyan.cloud.models import AccessToken, DeviceRecord, RefreshToken, User
from cyan.cloud.ports import UserExistsError
from store_support import DEVICE_ID, OTHER_ID, T0, StoreFactory, run

ALICE = "alice@example.com"
BOB = "bob@example.com"


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


# -- users --------------------------------------------------------------------------------------


def test_every_user_field_survives_a_round_trip(make: StoreFactory) -> None:
    # A zone other than UTC: the instant is kept and comes back in UTC.
    original = user(created_at=datetime(2024, 5, 1, 14, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))))

    async def scenario() -> User | None:
        async with make() as store:
            await store.accounts.add_user(original)
        async with make() as store:  # from the file, not from any cache
            return await store.accounts.get_user(ALICE)

    got = run(scenario())
    assert got == original
    assert got is not None
    assert got.created_at.tzinfo is UTC
    assert got.created_at == datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC)


def test_usernames_are_stored_lowercase_and_looked_up_in_any_case(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.accounts.add_user(user("Alice@Example.COM"))
            got = await store.accounts.get_user(ALICE)
            assert got is not None
            assert got.username == ALICE
            assert got.password_hash == user("Alice@Example.COM").password_hash  # the hash is kept as given
            assert await store.accounts.get_user("ALICE@EXAMPLE.COM") == got
            assert await store.accounts.get_user(BOB) is None

    run(scenario())


def test_add_user_refuses_a_taken_username_in_any_case(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.accounts.add_user(user())
            with pytest.raises(UserExistsError, match=f"the username '{ALICE}' is already taken"):
                await store.accounts.add_user(user(ALICE.upper(), created_at=T0 + timedelta(days=1)))
            assert await store.accounts.list_users() == [user()]

    run(scenario())


def test_of_two_concurrent_adds_of_one_username_exactly_one_wins(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            results = await asyncio.gather(
                *(store.accounts.add_user(user(name)) for name in (ALICE, ALICE.upper(), "Alice@example.com")),
                return_exceptions=True,
            )
            assert results.count(None) == 1
            assert all(isinstance(result, UserExistsError) for result in results if result is not None)
            assert len(await store.accounts.list_users()) == 1

    run(scenario())


def test_list_users_is_ordered_by_lowercase_username(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            assert await store.accounts.list_users() == []
            # Stored as given, "Bob" would sort before "alice".
            for name in ("carol@example.com", "Bob@example.com", ALICE):
                await store.accounts.add_user(user(name))
            assert [u.username for u in await store.accounts.list_users()] == [ALICE, BOB, "carol@example.com"]

    run(scenario())


def test_remove_user_deletes_their_tokens_and_releases_their_devices(make: StoreFactory) -> None:
    kitchen = DeviceRecord(id=DEVICE_ID, name="kitchen", owner=ALICE, online=True, functions=["led"])
    garage = DeviceRecord(id=OTHER_ID, name="garage", owner=BOB)
    unowned = DeviceRecord(id="aa" * 12)

    async def scenario() -> None:
        async with make() as store:
            for device in (kitchen, garage, unowned):
                await store.devices.add(device)
            await store.accounts.add_user(user(ALICE))
            await store.accounts.add_user(user(BOB))
            await store.accounts.add_token(token(1, ALICE))
            await store.accounts.add_token(token(2, ALICE, expires_at=T0 + timedelta(days=1)))
            await store.accounts.add_token(token(3, BOB))

            assert await store.accounts.remove_user("Alice@Example.com") is True
            assert await store.accounts.get_user(ALICE) is None
            assert await store.accounts.list_tokens(ALICE) == []
            assert await store.accounts.get_token(token(1).token_hash) is None
            # Released, and otherwise unchanged.
            assert await store.devices.get(DEVICE_ID) == dataclasses.replace(kitchen, owner=None)
            # Nobody else's user, tokens or devices are touched.
            assert await store.accounts.list_users() == [user(BOB)]
            assert await store.accounts.list_tokens(BOB) == [token(3, BOB)]
            assert await store.devices.all(BOB) == [garage]
            assert await store.devices.get(unowned.id) == unowned

            assert await store.accounts.remove_user(ALICE) is False
            await store.accounts.add_user(user(ALICE))  # the username is free again

    run(scenario())


def test_remove_user_of_a_username_without_a_user_still_clears_tokens_and_owners(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID, owner=ALICE))
            await store.accounts.add_token(token(1, ALICE))
            assert await store.accounts.remove_user(ALICE) is False
            assert await store.accounts.list_tokens(ALICE) == []
            assert await store.devices.get(DEVICE_ID) == DeviceRecord(id=DEVICE_ID)

    run(scenario())


# -- access tokens ------------------------------------------------------------------------------


def test_every_token_field_survives_a_round_trip(make: StoreFactory) -> None:
    plus_two = timezone(timedelta(hours=2))
    expiring = token(
        0xABC,
        client_id="particle",
        created_at=datetime(2024, 5, 1, 14, 0, tzinfo=plus_two),
        expires_at=datetime(2024, 8, 1, 14, 0, 0, 1, tzinfo=plus_two),
    )
    forever = token(0xDEF, BOB, client_id="user")

    async def scenario() -> tuple[AccessToken | None, AccessToken | None]:
        async with make() as store:
            await store.accounts.add_token(expiring)
            await store.accounts.add_token(forever)
        async with make() as store:
            return await store.accounts.get_token(expiring.token_hash), await store.accounts.get_token(
                forever.token_hash
            )

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


def test_token_hashes_and_usernames_are_stored_lowercase(make: StoreFactory) -> None:
    mixed = AccessToken("AB" * 32, "Alice@Example.COM", "CLI2", T0, None)
    stored = AccessToken("ab" * 32, ALICE, "CLI2", T0, None)

    async def scenario() -> None:
        async with make() as store:
            await store.accounts.add_token(mixed)
            assert await store.accounts.get_token("ab" * 32) == stored
            assert await store.accounts.get_token("AB" * 32) == stored
            assert await store.accounts.list_tokens(ALICE.upper()) == [stored]
            assert await store.accounts.get_token("cd" * 32) is None

    run(scenario())


def test_add_token_refuses_a_hash_already_stored(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.accounts.add_token(token(1))
            with pytest.raises(ValueError, match=f"hash {token(1).token_hash} is already stored") as info:
                await store.accounts.add_token(token(1, BOB, client_id="user"))
            assert not isinstance(info.value, UserExistsError)
            assert await store.accounts.get_token(token(1).token_hash) == token(1)
            assert await store.accounts.list_tokens(BOB) == []

    run(scenario())


def test_list_tokens_is_newest_first_and_only_the_users(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            assert await store.accounts.list_tokens(ALICE) == []
            for number, minutes in ((1, 5), (2, 1), (4, 3), (3, 3), (5, 9)):
                await store.accounts.add_token(token(number, created_at=T0 + timedelta(minutes=minutes)))
            await store.accounts.add_token(token(6, BOB, created_at=T0 + timedelta(minutes=7)))
            # Tokens created at the same instant come in the order of their hashes.
            assert [int(t.token_hash, 16) for t in await store.accounts.list_tokens(ALICE)] == [5, 1, 3, 4, 2]
            assert [int(t.token_hash, 16) for t in await store.accounts.list_tokens(BOB)] == [6]
            assert await store.accounts.list_tokens("nobody@example.com") == []

    run(scenario())


def test_remove_token_says_whether_it_existed(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.accounts.add_token(token(1))
            await store.accounts.add_token(token(2))
            assert await store.accounts.remove_token(token(1).token_hash.upper()) is True
            assert await store.accounts.get_token(token(1).token_hash) is None
            assert await store.accounts.remove_token(token(1).token_hash) is False
            assert await store.accounts.list_tokens(ALICE) == [token(2)]

    run(scenario())


def test_remove_expired_tokens_deletes_those_expiring_at_or_before_now(make: StoreFactory) -> None:
    now = T0 + timedelta(days=30)
    microsecond = timedelta(microseconds=1)

    async def scenario() -> None:
        async with make() as store:
            assert await store.accounts.remove_expired_tokens(now) == 0  # nothing to do is fine
            await store.accounts.add_token(token(1, expires_at=now - timedelta(days=1)))
            await store.accounts.add_token(token(2, expires_at=now - microsecond))
            await store.accounts.add_token(token(3, BOB, expires_at=now))
            await store.accounts.add_token(token(4, expires_at=now + microsecond))
            await store.accounts.add_token(token(5, expires_at=None))
            # `now` is an instant: given in another zone it means the same.
            in_tokyo = now.astimezone(timezone(timedelta(hours=9)))
            assert await store.accounts.remove_expired_tokens(in_tokyo) == 3
            assert [int(t.token_hash, 16) for t in await store.accounts.list_tokens(ALICE)] == [4, 5]
            assert await store.accounts.list_tokens(BOB) == []
            assert await store.accounts.remove_expired_tokens(now) == 0
            assert await store.accounts.remove_expired_tokens(now + microsecond) == 1
            assert await store.accounts.list_tokens(ALICE) == [token(5)]

    run(scenario())


# -- refusals and failures ----------------------------------------------------------------------


def test_naive_datetimes_are_refused_before_anything_is_written(make: StoreFactory) -> None:
    naive = datetime(2024, 5, 1, 12, 0)  # no tzinfo: the point of the test

    async def scenario() -> None:
        async with make() as store:
            with pytest.raises(ValueError, match="created_at must be an aware datetime"):
                await store.accounts.add_user(user(created_at=naive))
            with pytest.raises(ValueError, match="created_at must be an aware datetime"):
                await store.accounts.add_token(token(1, created_at=naive))
            with pytest.raises(ValueError, match="expires_at must be an aware datetime"):
                await store.accounts.add_token(token(1, expires_at=naive))
            await store.accounts.add_token(token(2, expires_at=T0))
            with pytest.raises(ValueError, match="now must be an aware datetime"):
                await store.accounts.remove_expired_tokens(naive)
            with pytest.raises(ValueError, match="spent_at must be an aware datetime"):
                await store.accounts.add_refresh_token(refresh(1, spent_at=naive))
            await store.accounts.add_refresh_token(refresh(2))
            with pytest.raises(ValueError, match="now must be an aware datetime"):
                await store.accounts.take_refresh_token(refresh(2).token_hash, naive)
            with pytest.raises(ValueError, match="now must be an aware datetime"):
                await store.accounts.remove_expired_refresh_tokens(naive)
            assert await store.accounts.list_users() == []
            assert await store.accounts.list_tokens(ALICE) == [token(2, expires_at=T0)]
            assert await store.accounts.take_refresh_token(refresh(1).token_hash, T0) is None
            taken = await store.accounts.take_refresh_token(refresh(2).token_hash, T0)
            assert taken is not None
            assert taken.spent_at is None  # the refused take spent nothing

    run(scenario())


# -- refresh tokens -------------------------------------------------------------------------------


def refresh(
    number: int,
    username: str = ALICE,
    *,
    expires_at: datetime = T0 + timedelta(days=30),
    family: str = "f1",
    spent_at: datetime | None = None,
) -> RefreshToken:
    return RefreshToken(f"{number:064X}", username, "CLI2", T0, expires_at, family, spent_at)


def test_a_refresh_token_is_spent_once_in_any_case_and_survives_a_reopen(make: StoreFactory) -> None:
    spent_at = T0 + timedelta(hours=1)

    async def scenario() -> None:
        async with make() as store:
            await store.accounts.add_refresh_token(refresh(1, "Alice@Example.com"))
            with pytest.raises(ValueError, match="already stored"):
                await store.accounts.add_refresh_token(refresh(1, BOB))
        async with make() as store:  # from the file, not from any cache
            unspent = RefreshToken(f"{1:064x}", ALICE, "CLI2", T0, T0 + timedelta(days=30), "f1")
            in_chicago = spent_at.astimezone(timezone(timedelta(hours=-5)))  # another zone, the same instant
            taken = await store.accounts.take_refresh_token(f"{1:064X}", in_chicago)
            assert taken == unspent  # as it was: this call spent it
        async with make() as store:
            # Spent, and kept so: taken again, it comes back with the time it was spent (a reuse).
            again = await store.accounts.take_refresh_token(f"{1:064x}", spent_at + timedelta(minutes=5))
            assert again == dataclasses.replace(unspent, spent_at=spent_at)
            assert again is not None
            assert again.spent_at is not None
            assert again.spent_at.tzinfo is UTC
            # The first time it was spent stays.
            third = await store.accounts.take_refresh_token(f"{1:064x}", spent_at + timedelta(minutes=9))
            assert third == again
            assert await store.accounts.take_refresh_token(f"{2:064x}", spent_at) is None

    run(scenario())


def test_of_two_concurrent_takes_of_one_refresh_token_exactly_one_spends_it(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as first, make() as second:
            await first.accounts.add_refresh_token(refresh(2))
            for _ in range(3):
                await first.accounts.add_refresh_token(refresh(3, family="f2"))
                results = await asyncio.gather(
                    first.accounts.take_refresh_token(refresh(3).token_hash.lower(), T0 + timedelta(hours=1)),
                    second.accounts.take_refresh_token(refresh(3).token_hash.lower(), T0 + timedelta(hours=2)),
                )
                assert all(r is not None for r in results)
                # One found it unspent; the other found it spent by that one (its time, not its own).
                spent = sorted((r.spent_at for r in results if r is not None), key=lambda t: t is not None)
                assert spent[0] is None
                assert spent[1] in (T0 + timedelta(hours=1), T0 + timedelta(hours=2))
                assert await first.accounts.remove_token_family("f2") == 1
            # The other token is untouched.
            assert await first.accounts.take_refresh_token(refresh(2).token_hash, T0) == dataclasses.replace(
                refresh(2), token_hash=refresh(2).token_hash.lower()
            )

    run(scenario())


def test_a_familys_refresh_and_access_tokens_are_revoked_together_and_only_they(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.accounts.add_refresh_token(refresh(1, family="f1", spent_at=T0 + timedelta(hours=1)))
            await store.accounts.add_refresh_token(refresh(2, family="f1"))
            await store.accounts.add_refresh_token(refresh(3, family="f2"))
            await store.accounts.add_refresh_token(refresh(4, BOB, family="f3"))
            await store.accounts.add_token(dataclasses.replace(token(1), family="f1"))
            await store.accounts.add_token(dataclasses.replace(token(2), family="f1"))
            await store.accounts.add_token(dataclasses.replace(token(3), family="f2"))
            await store.accounts.add_token(token(4))  # issued without a refresh token: no family
        async with make() as store:
            assert await store.accounts.get_token(token(1).token_hash) == dataclasses.replace(token(1), family="f1")
            assert await store.accounts.remove_token_family("f1") == 4
            assert await store.accounts.remove_token_family("f1") == 0
            assert await store.accounts.remove_token_family("nothing") == 0
            assert [int(t.token_hash, 16) for t in await store.accounts.list_tokens(ALICE)] == [3, 4]
            for gone in (1, 2):
                assert await store.accounts.take_refresh_token(refresh(gone).token_hash, T0) is None
            assert (await store.accounts.take_refresh_token(refresh(3).token_hash, T0)) is not None
            assert (await store.accounts.take_refresh_token(refresh(4).token_hash, T0)) is not None

    run(scenario())


def test_expired_refresh_tokens_go_spent_or_not(make: StoreFactory) -> None:
    now = T0 + timedelta(days=30)
    microsecond = timedelta(microseconds=1)

    async def scenario() -> None:
        async with make() as store:
            assert await store.accounts.remove_expired_refresh_tokens(now) == 0
            await store.accounts.add_refresh_token(refresh(1, expires_at=now - microsecond, spent_at=T0))
            await store.accounts.add_refresh_token(refresh(2, expires_at=now))
            await store.accounts.add_refresh_token(refresh(3, expires_at=now + microsecond, spent_at=T0))
            await store.accounts.add_refresh_token(refresh(4, BOB, expires_at=now + microsecond))
            await store.accounts.add_token(token(9, expires_at=now - microsecond))
            in_tokyo = now.astimezone(timezone(timedelta(hours=9)))
            assert await store.accounts.remove_expired_refresh_tokens(in_tokyo) == 2
            assert await store.accounts.list_tokens(ALICE) != []  # access tokens are not its business
            for gone in (1, 2):
                assert await store.accounts.take_refresh_token(refresh(gone).token_hash, now) is None
            for kept in (3, 4):
                assert await store.accounts.take_refresh_token(refresh(kept).token_hash, now) is not None

    run(scenario())


def test_refresh_tokens_go_with_their_user_their_expiry_or_on_request(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.accounts.add_user(user())
            await store.accounts.add_refresh_token(refresh(1))
            await store.accounts.add_refresh_token(refresh(2, expires_at=T0 + timedelta(hours=1)))
            await store.accounts.add_refresh_token(refresh(3, BOB))
            await store.accounts.add_refresh_token(refresh(4, BOB))
            await store.accounts.add_token(token(9, expires_at=T0 + timedelta(hours=1)))
            # Access and refresh tokens whose time is up, both counted.
            assert await store.accounts.remove_expired_tokens(T0 + timedelta(hours=1)) == 2
            assert await store.accounts.take_refresh_token(refresh(2).token_hash, T0) is None
            assert await store.accounts.remove_refresh_tokens(BOB.upper()) == 2
            assert await store.accounts.take_refresh_token(refresh(3).token_hash, T0) is None
            assert await store.accounts.remove_user(ALICE)
            assert await store.accounts.take_refresh_token(refresh(1).token_hash, T0) is None

    run(scenario())
