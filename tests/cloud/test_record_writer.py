"""The writer behind the devices: `flush` waits for the batch being written, not only for the queue."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from cyan.cloud.models import AttemptOutcome, ConnectionAttempt
from cyan.cloud.writer import RecordWriter
from cyan.store import MemoryStore


def connected(device_id: str) -> ConnectionAttempt:
    return ConnectionAttempt(
        datetime(2026, 1, 1, tzinfo=UTC), "127.0.0.2:40000", AttemptOutcome.CONNECTED, "session", device_id=device_id
    )


def test_flush_returns_only_once_the_batch_in_flight_is_stored() -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        gate = asyncio.Event()
        entered = asyncio.Event()
        add = store.attempts.add

        async def slow_add(attempts: list[ConnectionAttempt]) -> None:
            # The database takes its time: the queue is empty while this batch is still on its way.
            entered.set()
            await gate.wait()
            await add(attempts)

        store.attempts.add = slow_add  # type: ignore[method-assign]
        writer = RecordWriter(store, gather=0)
        writer.start()
        writer.attempt(connected("ab" * 12))
        await entered.wait()
        assert writer.backlog == 1  # off the queue, not yet in the store
        flushed = asyncio.ensure_future(writer.flush())
        await asyncio.sleep(0.05)
        assert not flushed.done()
        gate.set()
        await asyncio.wait_for(flushed, 5)
        assert [a.device_id for a in await store.attempts.recent(limit=10)] == ["ab" * 12]
        await writer.stop()

    asyncio.run(main())
