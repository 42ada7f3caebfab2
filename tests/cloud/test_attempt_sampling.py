"""What the device port's history keeps when a client fails the same way over and over: enough single records
for the diagnostics to see the loop, then one summary per window, never a row per connection."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from cyan.bus import InProcessBus
from cyan.cloud.models import AttemptOutcome, ConnectionAttempt
from cyan.cloud.service import Cloud
from cyan.cloud.writer import AttemptSampler, RecordLimits
from cyan.store import MemoryStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = RecordLimits(identical=3, window=timedelta(minutes=10))


def failure(seconds: float, *, address: str = "203.0.113.7", reason: str = "bad_signature") -> ConnectionAttempt:
    return ConnectionAttempt(
        T0 + timedelta(seconds=seconds),
        f"{address}:{40000 + int(seconds) % 20000}",
        AttemptOutcome.FAILED,
        "hello",
        reason,
        detail=f"try {seconds:g}",
        device_id="ab" * 12,
    )


def test_past_the_identical_limit_failures_are_counted_into_one_summary() -> None:
    sampler = AttemptSampler(LIMITS)
    kept = [record for second in range(10) for record in sampler.keep(failure(second))]
    # The first three one by one, whatever port each came from; the other seven only counted.
    assert [a.detail for a in kept] == ["try 0", "try 1", "try 2"]
    assert sampler.flush(T0 + timedelta(minutes=9)) == []  # the window is still open
    (summary,) = sampler.flush(T0 + timedelta(minutes=10))
    assert summary.id is None
    assert summary.reason == "bad_signature"
    assert summary.device_id == "ab" * 12
    assert summary.started_at == T0 + timedelta(seconds=9)
    assert summary.detail is not None
    assert summary.detail.startswith("7 more attempt(s)")
    assert "last detail: try 9" in summary.detail
    assert sampler.flush(T0 + timedelta(hours=1)) == []  # summed once


def test_a_new_window_starts_with_the_summary_of_the_last() -> None:
    sampler = AttemptSampler(LIMITS)
    for second in range(5):
        sampler.keep(failure(second))
    summary, first_of_next = sampler.keep(failure(601))
    assert summary.detail is not None
    assert summary.detail.startswith("2 more")
    assert first_of_next.detail == "try 601"


def test_successes_other_reasons_and_other_addresses_are_their_own() -> None:
    sampler = AttemptSampler(LIMITS)
    for second in range(3):
        sampler.keep(failure(second))
    assert sampler.keep(failure(4)) == []
    assert len(sampler.keep(failure(5, reason="wrong_server_key"))) == 1
    assert len(sampler.keep(failure(6, address="198.51.100.9"))) == 1
    connected = ConnectionAttempt(T0, "203.0.113.7:1", AttemptOutcome.CONNECTED, "session", device_id="ab" * 12)
    assert all(sampler.keep(connected) == [connected] for _ in range(10))


def test_a_flood_of_distinct_addresses_is_bounded_in_memory_and_still_summed() -> None:
    sampler = AttemptSampler(LIMITS, max_tracked=100)
    kept = 0
    for n in range(1000):
        address = f"10.0.{n // 256}.{n % 256}"
        for second in range(5):
            kept += len(sampler.keep(failure(second, address=address)))
    assert len(sampler._runs) <= 100
    # Per address: three single records, and its summary when it was forgotten or its window ended.
    kept += len(sampler.flush(T0 + timedelta(hours=1)))
    assert kept == 1000 * 4


def test_housekeeping_sums_ended_runs_and_deletes_past_age_and_count() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        await store.open()
        now = [T0]
        cloud = Cloud(
            store,
            InProcessBus(),
            clock=lambda: now[0],
            records=RecordLimits(max_age=timedelta(days=1), max_count=8, identical=3),
            housekeeping_interval=3600,
        )
        await cloud.start()
        try:
            for second in range(12):
                cloud.record_attempt(failure(second))
            await cloud.flush()
            assert len(await store.attempts.recent()) == 3
            now[0] = T0 + timedelta(minutes=11)
            assert await cloud.housekeep(prune=False) == 0
            await cloud.flush()
            latest = (await store.attempts.recent())[0]
            assert latest.detail is not None
            assert latest.detail.startswith("9 more")
            # Ten more from other addresses: fourteen rows against a count of eight; the oldest six go.
            for n in range(10):
                cloud.record_attempt(failure(700 + n, address=f"198.51.100.{n}"))
            await cloud.flush()
            assert await cloud.housekeep() == 6
            assert len(await store.attempts.recent()) == 8
            # A day on, all of them are past their age.
            now[0] = T0 + timedelta(days=2)
            assert await cloud.housekeep() == 8
        finally:
            await cloud.stop()
            await store.close()

    asyncio.run(scenario())
