"""The loop's coarse timers (cyan.coarse_timers): far deadlines by the slot, never early, one loop timer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from cyan.coarse_timers import CoarseTimers, coarse_timers

GRAIN = 0.05


def _live_handles(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    return [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()]


def test_a_deadline_fires_once_never_early_and_moving_it_keeps_one_loop_timer() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop, grain=GRAIN)
        fired: dict[str, float] = {}
        now = time.monotonic()
        due = {f"k{n}": now + 0.1 + n * 0.03 for n in range(10)}

        def firing(key: str) -> Callable[[], object]:
            return lambda: fired.setdefault(key, time.monotonic())

        for key, when in due.items():
            timers.schedule(key, when, firing(key))
        # Moved later many times, as pings move an idle deadline: still one timer of ours on the loop.
        for step in range(50):
            due["k0"] = now + 0.2 + step * 0.002
            timers.schedule("k0", due["k0"], firing("k0"))
        assert len(timers) == 10
        assert len(_live_handles(loop)) == 1
        while len(fired) < 10:
            await asyncio.sleep(GRAIN)
        assert all(fired[key] >= due[key] for key in due), {k: fired[k] - due[k] for k in due}
        assert len(timers) == 0
        assert _live_handles(loop) == []

    asyncio.run(scenario())


def test_a_cancelled_deadline_never_fires_and_the_last_cancel_leaves_no_loop_timer() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        timers = CoarseTimers(loop, grain=GRAIN)
        fired: list[str] = []
        now = time.monotonic()
        timers.schedule("a", now + 0.1, lambda: fired.append("a"))
        timers.schedule("b", now + 0.1, lambda: fired.append("b"))
        timers.cancel("a")
        timers.cancel("missing")  # nothing to forget: no error
        await asyncio.sleep(0.3)
        assert fired == ["b"]
        timers.schedule("c", time.monotonic() + 10, lambda: fired.append("c"))
        timers.cancel("c")
        assert _live_handles(loop) == []

    asyncio.run(scenario())


def test_rescheduling_replaces_the_callback_and_a_callback_may_file_its_next_deadline() -> None:
    async def scenario() -> None:
        timers = CoarseTimers(asyncio.get_running_loop(), grain=GRAIN)
        calls: list[str] = []
        timers.schedule("k", time.monotonic() + 0.05, lambda: calls.append("old"))
        timers.schedule("k", time.monotonic() + 0.05, lambda: calls.append("new"))

        def again() -> None:
            calls.append("again")
            if calls.count("again") < 3:
                # Even into a slot already past: fired on a later pass, not in a loop within this one.
                timers.schedule("r", time.monotonic() - 1.0, again)

        timers.schedule("r", time.monotonic() + 0.05, again)
        while calls.count("again") < 3 or "new" not in calls:
            await asyncio.sleep(GRAIN)
        assert "old" not in calls
        await asyncio.sleep(0.2)
        assert calls.count("again") == 3

    asyncio.run(scenario())


def test_an_earlier_deadline_rearms_the_loop_timer_sooner() -> None:
    async def scenario() -> None:
        timers = CoarseTimers(asyncio.get_running_loop(), grain=GRAIN)
        fired: list[float] = []
        timers.schedule("late", time.monotonic() + 60, lambda: fired.append(60))
        timers.schedule("soon", time.monotonic() + 0.1, lambda: fired.append(0.1))
        await asyncio.sleep(0.5)
        assert fired == [0.1]
        timers.cancel("late")

    asyncio.run(scenario())


def test_each_loop_has_its_own() -> None:
    async def get() -> CoarseTimers:
        first = coarse_timers()
        assert coarse_timers() is first
        return first

    assert asyncio.run(get()) is not asyncio.run(get())


def test_the_grain_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="positive"):
            CoarseTimers(loop, grain=0)
    finally:
        loop.close()
