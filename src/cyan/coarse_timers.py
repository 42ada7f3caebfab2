"""Far deadlines of many connections on one event-loop timer.

Every connection of an idle fleet moves its deadline once per ping: the server's idle timeout, a simulated
device's next ping. With one asyncio timer each, every ping cancels a `TimerHandle`, makes a new one and
pushes it on the loop's heap (comparisons written in Python, about 17 deep at 100,000 connections), and the
cancelled one is popped later. Here a deadline is filed under its second: moving it is a dictionary update,
and one loop timer a second fires whatever has come due. A deadline fires up to one grain late, never early,
so only deadlines that are far off belong here (the callers keep near ones on precise timers); the
protocol's own timer handling then acts on whatever is due when it fires.
"""

from __future__ import annotations

import asyncio
import heapq
import time
import weakref
from collections.abc import Callable, Hashable

__all__ = ["CoarseTimers", "coarse_timers"]

#: Seconds per slot: how late a deadline may fire.
GRAIN = 1.0


class CoarseTimers:
    """Deadlines by key, each with its callback, fired in the first loop pass after their slot ends."""

    __slots__ = ("_clock", "_grain", "_handle", "_handle_slot", "_heap", "_loop", "_slot_of", "_slots")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, grain: float = GRAIN, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if grain <= 0:
            raise ValueError("the grain must be positive")
        self._loop = loop
        self._grain = grain
        self._clock = clock
        self._slots: dict[int, dict[Hashable, Callable[[], object]]] = {}
        self._slot_of: dict[Hashable, int] = {}
        # Slots that had a bucket when pushed; one emptied since is skipped when popped.
        self._heap: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self._handle_slot: int | None = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def schedule(self, key: Hashable, due: float, callback: Callable[[], object]) -> None:
        """Call `callback` once, at or after `due` (the clock's time), replacing what `key` had."""
        slot = -int(-due // self._grain)  # the slot that ends at or after `due`
        old = self._slot_of.get(key)
        if old == slot:
            self._slots[slot][key] = callback
            return
        if old is not None:
            self._remove(key, old)
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = {}
            heapq.heappush(self._heap, slot)
            if self._handle_slot is None or slot < self._handle_slot:
                self._arm(slot)
        bucket[key] = callback
        self._slot_of[key] = slot  # replaces the old slot, if any

    def cancel(self, key: Hashable) -> None:
        """Forget `key`'s deadline, if it has one."""
        slot = self._slot_of.pop(key, None)
        if slot is not None:
            self._remove(key, slot)
            if not self._slot_of and self._handle is not None:
                # Nothing left to fire: the loop holds no timer of ours (a stopped fleet leaves none).
                self._handle.cancel()
                self._handle = None
                self._handle_slot = None
                self._heap.clear()

    def _remove(self, key: Hashable, slot: int) -> None:
        """Take `key` out of its slot's bucket (the caller keeps `_slot_of` right)."""
        bucket = self._slots[slot]
        del bucket[key]
        if not bucket:
            del self._slots[slot]

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = self._loop
        delay = max(0.0, slot * self._grain - self._clock())
        self._handle = loop.call_at(loop.time() + delay, self._fire)
        self._handle_slot = slot

    def _fire(self) -> None:
        self._handle = None
        self._handle_slot = None
        current = int(self._clock() // self._grain)
        heap = self._heap
        due: list[Callable[[], object]] = []
        while heap and heap[0] <= current:
            bucket = self._slots.pop(heapq.heappop(heap), None)
            if bucket:
                for key in bucket:
                    del self._slot_of[key]
                due.extend(bucket.values())
        # Collected first: a callback may file its next deadline, even into a slot already past.
        for callback in due:
            callback()
        while heap and heap[0] not in self._slots:
            heapq.heappop(heap)
        if heap and self._handle is None:
            self._arm(heap[0])


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CoarseTimers] = weakref.WeakKeyDictionary()
_last: CoarseTimers | None = None  # the last one asked for: a process runs one loop, asked once per message


def coarse_timers() -> CoarseTimers:
    """The running loop's coarse timers (one per loop, shared by everything on it)."""
    global _last  # noqa: PLW0603 - a one-entry cache in front of the per-loop table
    loop = asyncio.get_running_loop()
    timers = _last
    if timers is not None and timers._loop is loop:
        return timers
    timers = _per_loop.get(loop)
    if timers is None:
        timers = _per_loop[loop] = CoarseTimers(loop, grain=GRAIN)
    _last = timers
    return timers
