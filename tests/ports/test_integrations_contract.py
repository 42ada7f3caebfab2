"""The store's integrations (webhooks) and their delivery records, and device vitals: one contract for every
implementation."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest

from cyan.cloud.models import DeviceRecord, HookDelivery, Integration, User, VitalsRecord
from store_support import DEVICE_ID, OTHER_ID, T0, StoreFactory, run

ALICE = "alice@example.com"
BOB = "bob@example.com"


def hook(number: int, owner: str = ALICE, *, created_at: datetime = T0) -> Integration:
    return Integration(
        id=f"{number:024x}", owner=owner, event="temp", url="https://example.com/in", created_at=created_at
    )


def full_hook() -> Integration:
    """Every field set to a value that differs from the default."""
    return Integration(
        id="ab" * 12,
        owner=ALICE,
        event="temp/",
        url="https://example.com/{{{PARTICLE_DEVICE_ID}}}",
        created_at=datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        request_type="PUT",
        device_id=DEVICE_ID,
        name="Record ünïcode",
        disabled=True,
        no_defaults=True,
        reject_unauthorized=False,
        my_devices=False,
        templates={
            "json": {"t": "{{{t}}}", "nested": [1, 2.5, None, True]},
            "headers": {"X-Sender": "{{PARTICLE_DEVICE_ID}}"},
            "auth": {"username": "u", "password": "p"},
            "responseTopic": "{{PARTICLE_DEVICE_ID}}/hook-response/temp",
        },
        updated_at=T0 + timedelta(minutes=1),
    )


def delivery(number: int, integration: str, *, outcome: str = "success") -> HookDelivery:
    return HookDelivery(
        integration_id=integration,
        at=T0 + timedelta(seconds=number),
        event_name=f"temp/{number}",
        device_id=DEVICE_ID,
        attempt=1,
        outcome=outcome,
        status=200 if outcome == "success" else None,
        duration=0.125,
        error=None if outcome == "success" else "connection refused",
    )


# -- integrations -----------------------------------------------------------------------------------


def test_every_integration_field_survives_a_round_trip(make: StoreFactory) -> None:
    stored = full_hook()

    async def scenario() -> None:
        async with make() as store:
            await store.integrations.add(stored)
            found = await store.integrations.get(stored.id)
            # Times come back in UTC; everything else as it was given.
            assert found == dataclasses.replace(stored, created_at=stored.created_at.astimezone(UTC))
            assert await store.integrations.get("cd" * 12) is None

    run(scenario())


def test_all_lists_oldest_first_and_filters_by_owner(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.integrations.add(hook(3, created_at=T0 + timedelta(seconds=1)))
            await store.integrations.add(hook(2, BOB))
            await store.integrations.add(hook(1))
            assert [h.id[-1] for h in await store.integrations.all()] == ["1", "2", "3"]
            assert [h.id[-1] for h in await store.integrations.all("ALICE@example.com")] == ["1", "3"]
            assert await store.integrations.all("nobody@example.com") == []

    run(scenario())


def test_save_replaces_every_field_of_an_existing_integration_only(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.integrations.add(hook(1))
            changed = dataclasses.replace(full_hook(), id=hook(1).id, created_at=T0)
            assert await store.integrations.save(changed) is True
            assert await store.integrations.get(changed.id) == changed
            assert await store.integrations.save(hook(9)) is False
            assert await store.integrations.get(hook(9).id) is None

    run(scenario())


def test_remove_takes_the_deliveries_along(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.integrations.add(hook(1))
            await store.integrations.add(hook(2))
            await store.integrations.add_deliveries([delivery(1, hook(1).id), delivery(2, hook(2).id)], keep=10)
            assert await store.integrations.remove(hook(1).id) is True
            assert await store.integrations.remove(hook(1).id) is False
            assert await store.integrations.deliveries(hook(1).id) == []
            assert [d.event_name for d in await store.integrations.deliveries(hook(2).id)] == ["temp/2"]

    run(scenario())


def test_deliveries_are_newest_first_trimmed_per_integration_and_dropped_for_unknown_ones(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            first, second = hook(1).id, hook(2).id
            await store.integrations.add(hook(1))
            await store.integrations.add(hook(2))
            await store.integrations.add_deliveries([delivery(n, first) for n in range(3)], keep=4)
            await store.integrations.add_deliveries(
                [
                    delivery(3, first, outcome="failure"),
                    delivery(4, first),
                    delivery(5, second),
                    delivery(6, "ff" * 12),
                ],
                keep=4,
            )
            mine = await store.integrations.deliveries(first)
            assert [d.event_name for d in mine] == ["temp/4", "temp/3", "temp/2", "temp/1"]
            assert mine[1] == dataclasses.replace(delivery(3, first, outcome="failure"), id=mine[1].id)
            assert mine[0].id is not None
            assert [d.event_name for d in await store.integrations.deliveries(first, limit=2)] == ["temp/4", "temp/3"]
            assert [d.event_name for d in await store.integrations.deliveries(second)] == ["temp/5"]
            assert await store.integrations.deliveries("ff" * 12) == []
            await store.integrations.add_deliveries([], keep=4)
            with pytest.raises(ValueError, match="negative"):
                await store.integrations.add_deliveries([delivery(7, first)], keep=-1)
            with pytest.raises(ValueError, match="negative"):
                await store.integrations.deliveries(first, limit=-1)

    run(scenario())


def test_removing_a_user_removes_their_integrations_and_deliveries(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.accounts.add_user(User(ALICE, "x", T0))
            await store.integrations.add(hook(1))
            await store.integrations.add(hook(2, BOB))
            await store.integrations.add_deliveries([delivery(1, hook(1).id)], keep=10)
            assert await store.accounts.remove_user(ALICE) is True
            assert [h.id for h in await store.integrations.all()] == [hook(2).id]
            assert await store.integrations.deliveries(hook(1).id) == []

    run(scenario())


def test_naive_datetimes_are_refused(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            with pytest.raises(ValueError, match="naive"):
                await store.integrations.add(hook(1, created_at=datetime(2024, 5, 1)))
            assert await store.integrations.all() == []

    run(scenario())


# -- vitals -------------------------------------------------------------------------------------------


def vitals(seconds: int, device_id: str = DEVICE_ID) -> VitalsRecord:
    payload = {"device": {"system": {"uptime": seconds}}, "service": {"coap": {"round_trip": 12}}}
    return VitalsRecord(device_id=device_id, updated_at=T0 + timedelta(seconds=seconds), payload=payload)


def test_vitals_history_is_oldest_first_within_the_range_and_keeps_the_newest(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            for seconds in (30, 10, 20):
                record = vitals(seconds)
                assert await store.vitals.add(record, keep=3) == record.id
            await store.vitals.add(vitals(5, OTHER_ID), keep=3)
            history = await store.vitals.history(DEVICE_ID.upper())
            assert [r.payload["device"]["system"]["uptime"] for r in history] == [10, 20, 30]
            assert history[0] == dataclasses.replace(vitals(10), id=history[0].id)
            # The newest first when the limit cuts, still returned oldest first.
            assert [r.updated_at for r in await store.vitals.history(DEVICE_ID, limit=2)] == [
                T0 + timedelta(seconds=20),
                T0 + timedelta(seconds=30),
            ]
            window = await store.vitals.history(
                DEVICE_ID, since=T0 + timedelta(seconds=15), until=T0 + timedelta(seconds=25)
            )
            assert [r.updated_at for r in window] == [T0 + timedelta(seconds=20)]
            last = await store.vitals.last(DEVICE_ID)
            assert last is not None
            assert last.updated_at == T0 + timedelta(seconds=30)
            # A fourth record pushes out the oldest of this device only.
            await store.vitals.add(vitals(40), keep=3)
            assert [r.updated_at.second for r in await store.vitals.history(DEVICE_ID)] == [20, 30, 40]
            assert len(await store.vitals.history(OTHER_ID)) == 1
            assert await store.vitals.last("ee" * 12) is None
            assert await store.vitals.history(DEVICE_ID, limit=0) == []

    run(scenario())


def test_vitals_prune_by_age_and_go_with_their_device(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID))
            for seconds in (1, 2, 3):
                await store.vitals.add(vitals(seconds), keep=10)
            await store.vitals.add(vitals(1, OTHER_ID), keep=10)
            assert await store.vitals.prune(before=T0 + timedelta(seconds=2)) == 2
            assert [r.updated_at.second for r in await store.vitals.history(DEVICE_ID)] == [2, 3]
            assert await store.devices.remove(DEVICE_ID) is True
            assert await store.vitals.history(DEVICE_ID) == []
            with pytest.raises(ValueError, match="naive"):
                await store.vitals.prune(before=datetime(2024, 1, 1))
            with pytest.raises(ValueError, match="naive"):
                await store.vitals.history(OTHER_ID, since=datetime(2024, 1, 1))
            with pytest.raises(ValueError, match="negative"):
                await store.vitals.add(vitals(9), keep=-1)

    run(scenario())


def test_vitals_and_integrations_roll_back_with_their_transaction(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:

            async def abandoned() -> None:
                async with store.transaction() as tx:
                    await tx.integrations.add(hook(1))
                    await tx.vitals.add(vitals(1), keep=10)
                    raise RuntimeError("abandoned")

            with pytest.raises(RuntimeError, match="abandoned"):
                await abandoned()
            assert await store.integrations.all() == []
            assert await store.vitals.history(DEVICE_ID) == []

    run(scenario())
