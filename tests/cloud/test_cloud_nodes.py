"""Two nodes of one cloud (`Cloud` on an `InProcessHub`, the memory store shared): presence, calls and reads
answered by the node holding the device, the newer session closing the stale one on the other node, changes of
the sessions reaching the node that holds them, and the stored online state kept true to the presences."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
from test_cloud_service import HELLO, NOW, FakeLink, _record

from cyan.bus import InProcessBus, InProcessHub
from cyan.cloud.errors import DeviceOfflineError, DeviceTimeoutError, UnknownFunctionError
from cyan.cloud.service import Cloud
from cyan.store import MemoryStore

DEVICE = "ab" * 12


async def _until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.005)
    assert condition(), what


def _two_nodes(test: Callable[[Cloud, Cloud, MemoryStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        hub = InProcessHub(clock=lambda: NOW)
        a = Cloud(store, InProcessBus(node_id="a", hub=hub), clock=lambda: NOW, clustered=True, request_timeout=1)
        b = Cloud(store, InProcessBus(node_id="b", hub=hub), clock=lambda: NOW, clustered=True, request_timeout=1)
        await a.start()
        await b.start()
        try:
            await test(a, b, store)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_a_call_and_a_read_through_either_node_are_answered_by_the_holder() -> None:
    async def check(a: Cloud, b: Cloud, store: MemoryStore) -> None:
        await store.devices.add(_record(DEVICE))

        async def answer(name: str, argument: str) -> int:
            if name == "slow":
                raise DeviceTimeoutError(DEVICE, "function call", 1)
            return len(argument)

        link = FakeLink(DEVICE, answer=answer)
        record = replace(_record(DEVICE), functions=["len", "slow"])
        a.session_started(link, record, HELLO)
        await _until(lambda: b.bus is not None and DEVICE in a._sessions, "held")
        async with asyncio.timeout(5):
            while not await b.connected(DEVICE):
                await asyncio.sleep(0.005)
        assert await b.call_function(DEVICE, "len", "four") == 4
        assert await b.read_variable(DEVICE, "x") == (b"\x00\x00\x00\x07", 7)
        # The holder's own errors, as the device gave them.
        with pytest.raises(UnknownFunctionError):
            await b.call_function(DEVICE, "missing", "")
        with pytest.raises(DeviceTimeoutError):
            await b.call_function(DEVICE, "slow", "")
        await b.signal(DEVICE, True)
        a.session_ended(link)
        async with asyncio.timeout(5):
            while await b.connected(DEVICE):
                await asyncio.sleep(0.005)
        with pytest.raises(DeviceOfflineError):
            await b.call_function(DEVICE, "len", "")

    _two_nodes(check)


def test_the_newer_session_wins_and_the_stale_one_closes_without_an_offline() -> None:
    async def check(a: Cloud, b: Cloud, store: MemoryStore) -> None:
        await store.devices.add(_record(DEVICE))
        statuses = a.bus.subscribe("spark/status")
        old = FakeLink(DEVICE)
        a.session_started(old, _record(DEVICE), HELLO)
        assert (await statuses.get()) is not None
        await _until(lambda: not a._background, "claimed on a")
        new = FakeLink(DEVICE, "127.0.0.1:40001")
        b.session_started(new, _record(DEVICE), HELLO)
        await _until(lambda: old.closed, "the stale session closed on a")
        assert not new.closed
        assert not a.online(DEVICE)
        assert b.online(DEVICE)
        a.session_ended(old)  # the closed link reports its end: nothing follows, it was replaced
        event = await statuses.get()
        assert event is not None
        assert (event.name, event.data) == ("spark/status", "online")  # b's; no "offline" from a
        await _until(lambda: not a._background and not b._background, "settled")
        holder = await a.bus.holder(DEVICE)
        assert holder is not None
        assert holder.node_id == "b"

    _two_nodes(check)


def test_a_change_made_on_one_node_reaches_the_session_on_the_other() -> None:
    async def check(a: Cloud, b: Cloud, store: MemoryStore) -> None:
        await store.devices.add(_record(DEVICE))
        link = FakeLink(DEVICE, fingerprint="old")
        b.session_started(link, _record(DEVICE), HELLO)
        await _until(lambda: not b._background, "claimed")
        await a.owner_changed(DEVICE, "bob")
        assert b.live(DEVICE) is not None
        assert b.live(DEVICE).owner == "bob"  # type: ignore[union-attr]
        await a.close_sessions(DEVICE, keep_key="new")
        assert link.closed

    _two_nodes(check)


def test_reconcile_stores_offline_the_devices_no_node_holds() -> None:
    async def check(a: Cloud, b: Cloud, store: MemoryStore) -> None:
        gone = replace(_record(DEVICE), online=True, last_heard=NOW.replace(year=2025))
        await store.devices.add(gone)
        here = "cd" * 12
        await store.devices.add(_record(here))
        link = FakeLink(here)
        a.session_started(link, _record(here), HELLO)
        await a.flush()
        await _until(lambda: not a._background, "claimed")
        # Starting a node of a cloud clears nothing: another node may hold the device.
        stored = await store.devices.get(DEVICE)
        assert stored is not None
        assert stored.online
        assert await b.reconcile() == 1
        await b.flush()
        stored = await store.devices.get(DEVICE)
        assert stored is not None
        assert not stored.online
        held = await store.devices.get(here)
        assert held is not None
        assert held.online
        assert b.shown_online(held)

    _two_nodes(check)


def test_a_key_approved_on_one_node_gives_the_quarantined_session_on_the_other_its_access() -> None:
    async def check(a: Cloud, b: Cloud, store: MemoryStore) -> None:
        await store.devices.add(_record(DEVICE))
        held = FakeLink(DEVICE, fingerprint="new")
        b.session_started(held, _record(DEVICE), HELLO, quarantined=True)
        await _until(lambda: not b._background, "claimed in quarantine")
        assert not await a.connected(DEVICE)  # quarantine is not a connection
        await a.key_approved(DEVICE, "new")
        assert b.online(DEVICE)
        assert not held.closed
        await _until(lambda: not b._background, "claimed")
        assert await a.connected(DEVICE)
        # Rejected elsewhere: a quarantined session on b is closed.
        other = "ef" * 12
        await store.devices.add(_record(other))
        impostor = FakeLink(other, fingerprint="bad")
        b.session_started(impostor, _record(other), HELLO, quarantined=True)
        await _until(lambda: not b._background, "claimed in quarantine")
        await a.key_rejected(other, "bad")
        assert impostor.closed

    _two_nodes(check)


def test_a_session_that_ends_under_a_call_from_another_node_is_the_device_offline_there() -> None:
    # A device moving to another node while a call routed to its old one is under way: the old session ends,
    # its pending call fails with ConnectionError, and the asking node answers that the device is offline, as
    # a local caller would (the API's 404), not with the holder's failure.
    async def check(a: Cloud, b: Cloud, store: MemoryStore) -> None:
        await store.devices.add(_record(DEVICE))

        async def gone(name: str, argument: str) -> int:
            raise ConnectionError(f"device {DEVICE} disconnected")

        a.session_started(FakeLink(DEVICE, answer=gone), replace(_record(DEVICE), functions=["len"]), HELLO)
        async with asyncio.timeout(5):
            while not await b.connected(DEVICE):
                await asyncio.sleep(0.005)
        with pytest.raises(DeviceOfflineError, match="disconnected"):
            await b.call_function(DEVICE, "len", "x")

    _two_nodes(check)
