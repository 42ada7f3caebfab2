"""SqliteStore: every method of the Store interface, round trips, ordering, filters and concurrent writes."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cyan.cloud.errors import DeviceNameAmbiguousError
from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, DeviceRecord, Variable
from cyan.cloud.ports import DeviceExistsError, Store
from store_support import DEVICE_ID, OTHER_ID, T0, StoreFactory, attempt, full_device, run


def test_the_store_under_test_implements_the_store_interface(make: StoreFactory) -> None:
    store: Store = make()  # checked by mypy
    assert "closed" in repr(store)


# -- devices ------------------------------------------------------------------------------------


def test_every_device_field_survives_a_round_trip(make: StoreFactory) -> None:
    device = full_device()
    # A zone other than UTC: the instant is kept and comes back in UTC.
    device.last_heard = datetime(2024, 5, 1, 14, 30, 0, 1, tzinfo=timezone(timedelta(hours=2)))

    async def scenario() -> DeviceRecord | None:
        async with make() as store:
            await store.devices.add(device)
        async with make() as store:  # from the file, not from any cache
            return await store.devices.get(DEVICE_ID)

    got = run(scenario())
    assert got == device
    assert got is not None
    assert got.last_heard is not None
    assert got.last_heard.tzinfo is UTC
    assert got.last_heard == datetime(2024, 5, 1, 12, 30, 0, 1, tzinfo=UTC)
    assert got.created_at is not None
    assert got.created_at.tzinfo is UTC
    assert isinstance(got.public_key_der, bytes)
    assert got.variables == [Variable("temp", "double"), Variable("count", "int32"), Variable("ok", "bool")]


def test_a_device_with_only_an_id_round_trips_its_none_values(make: StoreFactory) -> None:
    async def scenario() -> DeviceRecord | None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID))
            return await store.devices.get(DEVICE_ID)

    assert run(scenario()) == DeviceRecord(id=DEVICE_ID)


def test_ids_are_stored_lowercase_and_looked_up_in_any_case(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID.upper(), name="Upper"))
            got = await store.devices.get(DEVICE_ID)
            assert got is not None
            assert got.id == DEVICE_ID
            assert await store.devices.get(DEVICE_ID.upper()) == got
            assert await store.devices.get(OTHER_ID) is None

    run(scenario())


def test_find_device_by_id_in_any_case_then_by_exact_name(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID, name="Kitchen"))
            # A name that looks like the other device's id: the id wins.
            await store.devices.add(DeviceRecord(id=OTHER_ID, name=DEVICE_ID))
            found = await store.devices.find(DEVICE_ID.upper())
            assert found is not None
            assert found.id == DEVICE_ID
            found = await store.devices.find(DEVICE_ID)
            assert found is not None
            assert found.id == DEVICE_ID
            found = await store.devices.find("Kitchen")
            assert found is not None
            assert found.id == DEVICE_ID
            assert await store.devices.find("kitchen") is None  # names are exact
            assert await store.devices.find("nowhere") is None

    run(scenario())


def test_list_devices_is_ordered_by_id_and_filters_by_owner(make: StoreFactory) -> None:
    ids = ["cc" * 12, "aa" * 12, "bb" * 12]

    async def scenario() -> None:
        async with make() as store:
            assert await store.devices.all() == []
            for device_id, owner in zip(ids, ["alice", "bob", "alice"], strict=True):
                await store.devices.add(DeviceRecord(id=device_id, owner=owner))
            await store.devices.add(DeviceRecord(id="dd" * 12))
            assert [d.id for d in await store.devices.all()] == ["aa" * 12, "bb" * 12, "cc" * 12, "dd" * 12]
            assert [d.id for d in await store.devices.all("alice")] == ["bb" * 12, "cc" * 12]
            assert [d.owner for d in await store.devices.all(owner="bob")] == ["bob"]
            assert await store.devices.all("nobody") == []

    run(scenario())


def test_add_device_refuses_a_taken_id_in_any_case(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID, name="first"))
            with pytest.raises(DeviceExistsError, match=f"device {DEVICE_ID} is already registered"):
                await store.devices.add(DeviceRecord(id=DEVICE_ID.upper(), name="second"))
            got = await store.devices.get(DEVICE_ID)
            assert got is not None
            assert got.name == "first"

    run(scenario())


def test_add_devices_registers_a_fleet_in_one_transaction_or_nothing(make: StoreFactory) -> None:
    fleet = [DeviceRecord(id=f"{n:024x}", name=f"unit-{n}", owner="ops@example.com") for n in range(1, 501)]

    async def scenario() -> None:
        async with make() as store:
            await store.devices.add_many(fleet[:300])
            # One taken id among new ones: nothing of the batch is added, and the message names it.
            with pytest.raises(DeviceExistsError, match=f"device {fleet[299].id} is already registered"):
                await store.devices.add_many(fleet[299:])
            assert len(await store.devices.all()) == 300
            with pytest.raises(DeviceExistsError, match="is listed twice"):
                await store.devices.add_many([fleet[400], fleet[400]])
            ops = "ops@example.com"
            with pytest.raises(DeviceExistsError, match="'unit-1' is given to two devices of one owner"):
                await store.devices.add_many(
                    [
                        DeviceRecord(id="aa" * 12, name="unit-1", owner=ops),
                        DeviceRecord(id="bb" * 12, name="unit-1", owner=ops),
                    ]
                )
            with pytest.raises(
                DeviceExistsError, match=re.escape("'unit-1' is already given to another device of ops@example.com's")
            ):
                await store.devices.add_many([DeviceRecord(id="cc" * 12, name="unit-1", owner=ops)])
            await store.devices.add_many(fleet[300:])
            await store.devices.add_many([])
            assert [d.id for d in await store.devices.all()] == [d.id for d in fleet]
            assert await store.devices.get(fleet[-1].id) == fleet[-1]

    run(scenario())


def test_names_are_unique_per_owner(make: StoreFactory) -> None:
    """Another account's device may have the same name: what others call theirs is none of an account's
    business. Ownerless and unnamed devices may share a name (or none)."""

    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID, name="kitchen", owner="alice@example.com"))
            with pytest.raises(
                DeviceExistsError,
                match=re.escape(f"'kitchen' is already given to another device of alice@example.com's ({DEVICE_ID})"),
            ):
                await store.devices.add(DeviceRecord(id=OTHER_ID, name="kitchen", owner="alice@example.com"))
            assert await store.devices.get(OTHER_ID) is None
            await store.devices.add(DeviceRecord(id=OTHER_ID, name="kitchen", owner="bob@example.com"))
            await store.devices.add(DeviceRecord(id="aa" * 12))
            await store.devices.add(DeviceRecord(id="bb" * 12))
            await store.devices.add(DeviceRecord(id="cc" * 12, name="spare"))
            await store.devices.add(DeviceRecord(id="dd" * 12, name="spare"))
            assert len(await store.devices.all()) == 6
            # A name is looked up among one owner's devices; across owners, a name two have is ambiguous.
            alice = await store.devices.find("kitchen", owner="alice@example.com")
            assert alice is not None
            assert alice.id == DEVICE_ID
            bob = await store.devices.find("kitchen", owner="bob@example.com")
            assert bob is not None
            assert bob.id == OTHER_ID
            assert await store.devices.find("kitchen", owner="carol@example.com") is None
            with pytest.raises(DeviceNameAmbiguousError, match="name the device by its id"):
                await store.devices.find("kitchen")
            # An id is an id whoever asks.
            found = await store.devices.find(OTHER_ID.upper(), owner="alice@example.com")
            assert found is not None
            assert found.id == OTHER_ID
            # Moving a device to an owner who already has the name is refused.
            moved = await store.devices.get(OTHER_ID)
            assert moved is not None
            moved.owner = "alice@example.com"
            with pytest.raises(DeviceExistsError):
                await store.devices.save(moved)

    run(scenario())


def test_save_device_inserts_then_replaces_every_field(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.save(full_device())
            assert await store.devices.get(DEVICE_ID) == full_device()
            # Every field changed, including back to None and to empty lists.
            emptied = DeviceRecord(id=DEVICE_ID.upper(), online=False)
            await store.devices.save(emptied)
            assert await store.devices.get(DEVICE_ID) == dataclasses.replace(emptied, id=DEVICE_ID)
            renamed = dataclasses.replace(full_device(), name="garage", functions=["x"], variables=[])
            await store.devices.save(renamed)
            assert await store.devices.get(DEVICE_ID) == renamed
            assert len(await store.devices.all()) == 1

    run(scenario())


def test_save_device_refuses_another_devices_name_and_changes_nothing(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID, name="kitchen", owner="bob"))
            await store.devices.add(DeviceRecord(id=OTHER_ID, name="garage", owner="alice"))
            with pytest.raises(
                DeviceExistsError,
                match=re.escape(f"'kitchen' is already given to another device of bob's ({DEVICE_ID})"),
            ):
                await store.devices.save(DeviceRecord(id=OTHER_ID, name="kitchen", owner="bob"))
            with pytest.raises(DeviceExistsError, match="'kitchen'"):
                await store.devices.save(DeviceRecord(id="aa" * 12, name="kitchen", owner="bob"))
            assert await store.devices.get(OTHER_ID) == DeviceRecord(id=OTHER_ID, name="garage", owner="alice")
            assert await store.devices.get("aa" * 12) is None
            # Keeping its own name is no conflict.
            await store.devices.save(DeviceRecord(id=DEVICE_ID, name="kitchen", owner="bob", online=True))

    run(scenario())


def test_remove_device_says_whether_it_existed(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID, name="kitchen"))
            await store.attempts.add([attempt(device_id=DEVICE_ID)])
            assert await store.devices.remove(DEVICE_ID.upper()) is True
            assert await store.devices.get(DEVICE_ID) is None
            assert await store.devices.remove(DEVICE_ID) is False
            # The history of its connections stays, and its name is free again.
            assert len(await store.attempts.recent(DEVICE_ID)) == 1
            await store.devices.add(DeviceRecord(id=OTHER_ID, name="kitchen"))

    run(scenario())


def test_mark_all_offline(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.mark_all_offline()  # nothing to do is fine
            await store.devices.add(DeviceRecord(id=DEVICE_ID, online=True, last_address="192.0.2.1:1"))
            await store.devices.add(DeviceRecord(id=OTHER_ID, online=False))
            await store.devices.mark_all_offline()
            devices = await store.devices.all()
            assert [d.online for d in devices] == [False, False]
            assert devices[0].last_address == "192.0.2.1:1"  # nothing else changes

    run(scenario())


def test_naive_datetimes_are_refused_before_anything_is_written(make: StoreFactory) -> None:
    naive = datetime(2024, 5, 1, 12, 0)  # no tzinfo: the point of the test

    async def scenario() -> None:
        async with make() as store:
            with pytest.raises(ValueError, match="last_heard must be an aware datetime"):
                await store.devices.add(DeviceRecord(id=DEVICE_ID, last_heard=naive))
            with pytest.raises(ValueError, match="started_at must be an aware datetime"):
                await store.attempts.add([attempt(naive)])
            with pytest.raises(ValueError, match="since must be an aware datetime"):
                await store.attempts.recent(since=naive)
            assert await store.devices.all() == []
            assert await store.attempts.recent() == []

    run(scenario())


# -- connection attempts ------------------------------------------------------------------------


def test_every_attempt_field_survives_a_round_trip(make: StoreFactory) -> None:
    original = attempt(device_id=DEVICE_ID.upper())
    unidentified = ConnectionAttempt(
        started_at=T0 + timedelta(seconds=1),
        peer_address="198.51.100.7:4000",
        outcome=AttemptOutcome.FAILED,
        step="hello",
    )

    async def scenario() -> list[ConnectionAttempt]:
        async with make() as store:
            await store.attempts.add([original])
            await store.attempts.add([unidentified])
        async with make() as store:
            return await store.attempts.recent()

    newest, oldest = run(scenario())
    assert newest.id is not None
    assert oldest.id is not None
    assert newest.id > oldest.id > 0
    assert oldest == dataclasses.replace(original, id=oldest.id, device_id=DEVICE_ID)
    assert newest == dataclasses.replace(unidentified, id=newest.id)
    assert isinstance(newest.outcome, AttemptOutcome)
    assert oldest.started_at.tzinfo is UTC
    assert original.id is None  # the caller's record is not changed


def test_list_attempts_is_newest_first_with_ties_in_insertion_order_reversed(make: StoreFactory) -> None:
    times = [T0 + timedelta(seconds=s) for s in (5, 1, 3, 3, 9)]

    async def scenario() -> None:
        async with make() as store:
            for t in times:
                await store.attempts.add([attempt(t)])
            ids = [a.id for a in sorted(await store.attempts.recent(), key=lambda a: a.id or 0)]
            listed = await store.attempts.recent()
            assert [a.id for a in listed] == [ids[4], ids[0], ids[3], ids[2], ids[1]]
            assert [a.started_at for a in listed] == sorted(times, reverse=True)

    run(scenario())


def test_list_attempts_filters_combine_and_limit_is_respected(make: StoreFactory) -> None:
    here, there = "192.0.2.10:1000", "198.51.100.7:2000"
    rows = [
        (DEVICE_ID, here, 0),
        (DEVICE_ID, there, 10),
        (OTHER_ID, here, 20),
        (None, here, 30),
        (DEVICE_ID, here, 40),
        (None, there, 50),
    ]

    async def scenario() -> None:
        async with make() as store:
            for device_id, peer, offset in rows:
                await store.attempts.add(
                    [attempt(T0 + timedelta(minutes=offset), device_id=device_id, peer_address=peer)]
                )

            async def minutes(
                device_id: str | None = None,
                *,
                since: datetime | None = None,
                peer_address: str | None = None,
                limit: int = 100,
            ) -> list[int]:
                """The listed attempts, as minutes after T0."""
                listed = await store.attempts.recent(device_id, since=since, peer_address=peer_address, limit=limit)
                return [int((a.started_at - T0).total_seconds() // 60) for a in listed]

            assert await minutes() == [50, 40, 30, 20, 10, 0]  # None: identified or not
            assert await minutes(device_id=DEVICE_ID.upper()) == [40, 10, 0]
            assert await minutes(peer_address=here) == [40, 30, 20, 0]
            assert await minutes(since=T0 + timedelta(minutes=20)) == [50, 40, 30, 20]  # inclusive
            # `since` is an instant: 14:15 at UTC+2 is 12:15 UTC.
            plus_two = timezone(timedelta(hours=2))
            assert await minutes(since=datetime(2024, 5, 1, 14, 15, tzinfo=plus_two)) == [50, 40, 30, 20]
            assert await minutes(device_id=DEVICE_ID, peer_address=here) == [40, 0]
            assert await minutes(device_id=DEVICE_ID, peer_address=here, since=T0 + timedelta(minutes=1)) == [40]
            assert await minutes(device_id=DEVICE_ID, peer_address=there, since=T0 + timedelta(minutes=11)) == []
            assert await minutes(limit=2) == [50, 40]
            assert await minutes(device_id=DEVICE_ID, limit=1) == [40]
            assert await minutes(limit=0) == []
            with pytest.raises(ValueError, match="limit must not be negative"):
                await store.attempts.recent(limit=-1)

    run(scenario())


def test_list_attempts_default_limit_is_100(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            for i in range(105):
                await store.attempts.add([attempt(T0 + timedelta(seconds=i))])
            listed = await store.attempts.recent()
            assert len(listed) == 100
            assert listed[0].started_at == T0 + timedelta(seconds=104)

    run(scenario())


def test_concurrent_writers_and_readers_all_succeed(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID))
            writes = [store.attempts.add([attempt(T0 + timedelta(milliseconds=i))]) for i in range(200)]
            saves = [store.devices.save(DeviceRecord(id=DEVICE_ID, hello_flags=i)) for i in range(20)]
            reads = [store.attempts.recent(limit=5) for _ in range(20)]
            await asyncio.gather(*writes, *saves, *reads)
            stored = await store.attempts.recent(limit=1000)
            assert len({a.id for a in stored}) == 200

    run(scenario())


def test_two_stores_on_one_file_see_each_others_writes(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as first, make() as second:
            await first.devices.add(DeviceRecord(id=DEVICE_ID))
            await asyncio.gather(
                *(first.attempts.add([attempt()]) for _ in range(50)),
                *(second.attempts.add([attempt()]) for _ in range(50)),
            )
            assert await second.devices.get(DEVICE_ID) == DeviceRecord(id=DEVICE_ID)
            assert len(await second.attempts.recent(limit=200)) == 100
            with pytest.raises(DeviceExistsError):
                await second.devices.add(DeviceRecord(id=DEVICE_ID))

    run(scenario())


def test_update_device_state_leaves_name_owner_notes_and_key_alone(make: StoreFactory) -> None:
    async def scenario() -> None:
        store = make()
        await store.open()
        try:
            original = DeviceRecord(
                id="ab" * 12, name="kitchen", owner="alice", public_key_der=b"key", key_fingerprint="fp", notes="hi"
            )
            await store.devices.add(original)
            stale = DeviceRecord(
                id="ab" * 12,
                name="old-name",
                owner=None,
                public_key_der=b"old",
                key_fingerprint="old",
                platform_id=6,
                functions=["setArg"],
                online=True,
                last_address="127.0.0.1:1",
                last_handshake_at=datetime(2026, 12, 1, 8, 30, tzinfo=UTC),
                system_version=105,
            )
            await store.devices.update_states([stale])
            stored = await store.devices.get("ab" * 12)
            assert stored is not None
            assert (stored.name, stored.owner, stored.public_key_der, stored.key_fingerprint, stored.notes) == (
                "kitchen",
                "alice",
                b"key",
                "fp",
                "hi",
            )
            assert (
                stored.platform_id,
                stored.functions,
                stored.online,
                stored.last_address,
                stored.last_handshake_at,
                stored.system_version,
            ) == (6, ["setArg"], True, "127.0.0.1:1", datetime(2026, 12, 1, 8, 30, tzinfo=UTC), 105)
            await store.devices.update_states([DeviceRecord(id="cd" * 12)])  # unregistered: skipped
            assert await store.devices.get("cd" * 12) is None
        finally:
            await store.close()

    asyncio.run(scenario())


def test_prune_keeps_the_newest_within_their_age(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            times = [T0 + timedelta(minutes=m) for m in (0, 10, 20, 20, 30, 40)]
            for t in times:
                await store.attempts.add([attempt(t)])
            # Older than 15 minutes after T0: two go.
            assert await store.attempts.prune(before=T0 + timedelta(minutes=15), keep=100) == 2
            assert [a.started_at for a in await store.attempts.recent()] == sorted(times[2:], reverse=True)
            # At most three: the oldest of the tie at 20 minutes goes first (the lower id).
            assert await store.attempts.prune(before=T0, keep=3) == 1
            left = await store.attempts.recent()
            assert [a.started_at for a in left] == [times[5], times[4], times[3]]
            assert await store.attempts.prune(before=T0, keep=3) == 0
            assert await store.attempts.prune(before=T0 + timedelta(days=1), keep=3) == 3
            assert await store.attempts.recent() == []

    run(scenario())
