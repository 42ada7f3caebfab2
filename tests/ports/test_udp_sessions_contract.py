"""The UDP devices' DTLS sessions in the store: one contract for every implementation."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from cyan.cloud.models import UdpSession
from store_support import DEVICE_ID, T0, StoreFactory, run


def session(cid: bytes, seconds: int = 0, device_id: str | None = DEVICE_ID) -> UdpSession:
    return UdpSession(
        connection_id=cid,
        session=b"CYDTLS1" + cid * 4,
        updated_at=T0 + timedelta(seconds=seconds),
        device_id=device_id,
        hello=b"\x00\x0c\x00\x03" + bytes(4),
    )


def test_a_session_is_saved_replaced_read_listed_and_removed(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            first, second = bytes(range(8)), bytes(range(8, 16))
            assert await store.udp_sessions.get(first) is None
            await store.udp_sessions.save(session(first, 10))
            await store.udp_sessions.save(session(second, 5, device_id=None))
            assert await store.udp_sessions.get(first) == session(first, 10)
            # Saved again (new counters, a Hello): replaced, not added.
            newer = session(first, 20)
            newer.session = b"CYDTLS1 newer"
            newer.device_id = DEVICE_ID.upper()
            await store.udp_sessions.save(newer)
            stored = await store.udp_sessions.get(first)
            assert stored is not None
            assert (stored.session, stored.device_id) == (b"CYDTLS1 newer", DEVICE_ID)
            assert [s.connection_id for s in await store.udp_sessions.all()] == [second, first]
            assert await store.udp_sessions.remove(second)
            assert not await store.udp_sessions.remove(second)
            assert [s.connection_id for s in await store.udp_sessions.all()] == [first]

    run(scenario())


def test_a_device_s_sessions_are_found_by_its_id_the_last_saved_first(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            for n, seconds in enumerate([30, 10, 20]):
                await store.udp_sessions.save(session(bytes([n]) * 8, seconds))
            await store.udp_sessions.save(session(b"\x09" * 8, 40, device_id="00000000000000000000000a"))
            await store.udp_sessions.save(session(b"\x08" * 8, 50, device_id=None))
            found = await store.udp_sessions.of_device(DEVICE_ID.upper(), limit=2)
            assert [s.connection_id for s in found] == [b"\x00" * 8, b"\x02" * 8]
            assert len(await store.udp_sessions.of_device(DEVICE_ID, limit=10)) == 3
            assert await store.udp_sessions.of_device("ffffffffffffffffffffffff", limit=10) == []

    run(scenario())


def test_old_sessions_are_pruned(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            for n in range(4):
                await store.udp_sessions.save(session(bytes([n]) * 8, n * 10))
            assert await store.udp_sessions.prune(before=T0 + timedelta(seconds=15)) == 2
            left = [s.connection_id for s in await store.udp_sessions.all()]
            assert left == [bytes([2]) * 8, bytes([3]) * 8]

    run(scenario())


def test_a_session_is_part_of_a_transaction(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            cid = b"\x01" * 8
            try:
                async with store.transaction() as tx:
                    await tx.udp_sessions.save(session(cid))
                    raise RuntimeError("roll back")
            except RuntimeError:
                pass
            assert await store.udp_sessions.get(cid) is None

    run(scenario())


def test_a_sequence_limit_only_rises_whoever_saves(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            cid = b"\x02" * 8
            first = session(cid)
            first.sequence_limit = 1000
            await store.udp_sessions.save(first)
            # A node saving later with the limit it last knew (or none) does not lower the stored one.
            for limit in (500, None):
                again = session(cid, 5)
                again.sequence_limit = limit
                await store.udp_sessions.save(again)
                stored = await store.udp_sessions.get(cid)
                assert stored is not None
                assert (stored.sequence_limit, stored.updated_at) == (1000, T0 + timedelta(seconds=5))
            higher = session(cid, 6)
            higher.sequence_limit = 4000
            await store.udp_sessions.save(higher)
            stored = await store.udp_sessions.get(cid)
            assert stored is not None
            assert stored.sequence_limit == 4000

    run(scenario())


def test_reserving_sequence_numbers_gives_blocks_that_never_overlap(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            cid, legacy = b"\x03" * 8, b"\x04" * 8
            assert await store.udp_sessions.reserve(cid, 100) is None  # no such session
            made = session(cid)
            made.sequence_limit = 1000
            await store.udp_sessions.save(made)
            await store.udp_sessions.save(session(legacy))  # saved before there were limits
            assert await store.udp_sessions.reserve(cid, 100) == 1100
            # The floor counts only where it is above the limit: a session resumed far past its saved counter.
            assert await store.udp_sessions.reserve(cid, 100, floor=500) == 1200
            assert await store.udp_sessions.reserve(cid, 100, floor=5000) == 5100
            assert await store.udp_sessions.reserve(legacy, 10, floor=1 << 20) == (1 << 20) + 10
            # Many at once (two nodes, or two tasks of one): every block distinct.
            limits = await asyncio.gather(*(store.udp_sessions.reserve(cid, 10) for _ in range(20)))
            assert sorted(x for x in limits if x is not None) == list(range(5110, 5310, 10))
            stored = await store.udp_sessions.get(cid)
            assert stored is not None
            assert stored.sequence_limit == 5300

    run(scenario())
