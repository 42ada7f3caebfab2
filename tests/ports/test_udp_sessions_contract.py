"""The UDP devices' DTLS sessions in the store: one contract for every implementation."""

from __future__ import annotations

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
