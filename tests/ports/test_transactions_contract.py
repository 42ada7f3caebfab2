"""`Store.transaction()`'s contract: all of a block or none of it, serializable against other transactions, and
a conflict inside it leaves it usable."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from cyan.cloud.models import AuditEntry, DeviceRecord
from cyan.cloud.ports import DeviceExistsError, Store, StoreUnavailableError
from store_support import DEVICE_ID, OTHER_ID, StoreFactory, run

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class Boom(Exception):
    pass


def test_a_transaction_commits_when_its_block_ends(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store, store.transaction() as tx:
            await tx.devices.add(DeviceRecord(id=DEVICE_ID, name="kitchen"))
            await tx.audit.add(AuditEntry(T0, DEVICE_ID, "registered", "alice"))
            assert await tx.devices.get(DEVICE_ID) is not None  # it reads its own writes
        async with make() as store:
            assert await store.devices.get(DEVICE_ID) == DeviceRecord(id=DEVICE_ID, name="kitchen")
            assert [e.action for e in await store.audit.recent()] == ["registered"]

    run(scenario())


def test_a_transaction_that_raises_leaves_nothing(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=OTHER_ID, owner="bob"))

            async def failing() -> None:
                async with store.transaction() as tx:
                    await tx.devices.add(DeviceRecord(id=DEVICE_ID))
                    await tx.devices.save(DeviceRecord(id=OTHER_ID, owner="alice"))
                    await tx.audit.add(AuditEntry(T0, DEVICE_ID, "registered", "alice"))
                    raise Boom

            with pytest.raises(Boom):
                await failing()
            assert await store.devices.get(DEVICE_ID) is None
            assert await store.devices.get(OTHER_ID) == DeviceRecord(id=OTHER_ID, owner="bob")
            assert await store.audit.recent() == []

    run(scenario())


def test_a_conflict_inside_a_transaction_leaves_it_usable(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=OTHER_ID, name="kitchen", owner="alice"))
            async with store.transaction() as tx:
                with pytest.raises(DeviceExistsError, match="'kitchen' is already given to another device"):
                    await tx.devices.add(DeviceRecord(id=DEVICE_ID, name="kitchen", owner="alice"))
                await tx.devices.add(DeviceRecord(id=DEVICE_ID, name="garage", owner="alice"))
            assert [d.name for d in await store.devices.all()] == ["garage", "kitchen"]

    run(scenario())


async def increment(store: Store, label: str) -> None:
    """A read-modify-write of one counter."""
    async with store.transaction() as tx:
        device = await tx.devices.get(DEVICE_ID)
        assert device is not None
        await asyncio.sleep(0.01)  # the other transactions run meanwhile, if they can
        device.hello_flags = (device.hello_flags or 0) + 1
        await tx.devices.save(device)
        await tx.audit.add(AuditEntry(T0, DEVICE_ID, "incremented", label))


def test_transactions_are_serializable(make: StoreFactory) -> None:
    """Read-modify-write transactions of one counter: none loses another's increment."""

    async def scenario() -> None:
        async with make() as store:
            await store.devices.add(DeviceRecord(id=DEVICE_ID))
            await asyncio.gather(*(increment(store, f"t{n}") for n in range(5)))
            device = await store.devices.get(DEVICE_ID)
            assert device is not None
            assert device.hello_flags == 5
            assert len(await store.audit.recent()) == 5

    run(scenario())


def test_transactions_of_two_stores_on_one_database_are_serializable(make: StoreFactory) -> None:
    """As above, across two stores on one database (two processes, or two nodes of a cloud)."""

    async def scenario() -> None:
        async with make() as first, make() as second:
            await first.devices.add(DeviceRecord(id=DEVICE_ID))
            await asyncio.gather(*(increment((first, second)[n % 2], f"t{n}") for n in range(6)))
            device = await second.devices.get(DEVICE_ID)
            assert device is not None
            assert device.hello_flags == 6
            assert len(await first.audit.recent()) == 6

    run(scenario())


def test_writes_of_another_store_wait_for_a_transaction(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as first, make() as second:
            order: list[str] = []

            async def outside() -> None:
                await second.devices.add(DeviceRecord(id=OTHER_ID))
                order.append("outside")

            async with first.transaction() as tx:
                await tx.devices.add(DeviceRecord(id=DEVICE_ID))
                waiting = asyncio.get_running_loop().create_task(outside())
                await asyncio.sleep(0.02)  # the other write would be done by now, if it could run
                order.append("transaction")
            await waiting
            assert order == ["transaction", "outside"]

    run(scenario())


def test_writes_outside_wait_for_a_transaction(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            order: list[str] = []

            async def outside() -> None:
                await store.devices.add(DeviceRecord(id=OTHER_ID))
                order.append("outside")

            async with store.transaction() as tx:
                await tx.devices.add(DeviceRecord(id=DEVICE_ID))
                waiting = asyncio.get_running_loop().create_task(outside())
                await asyncio.sleep(0.02)
                order.append("transaction")
            await waiting
            assert order == ["transaction", "outside"]

    run(scenario())


def test_a_closed_store_has_no_transaction(make: StoreFactory) -> None:
    async def scenario() -> None:
        store = make()
        with pytest.raises(StoreUnavailableError):
            async with store.transaction():
                pass

    run(scenario())
