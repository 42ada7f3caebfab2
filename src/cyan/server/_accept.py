"""The queue of accepted connections that wait for a place among the handshakes under way.

A fleet reconnecting at once (a server restart, an outage's end) brings more connections than the server can
start handshakes for. Left in the kernel's listen queue they are served in arrival order, and once that queue
holds more than the firmware waits for its nonce (20 s from connect, protocol.md §3), every connection at its
head belongs to a device that has given up: the server sends a nonce to a closed socket, the device comes back
at the end of the queue after its backoff, and almost no handshake succeeds until the herd thins out
(measured at 50,000 devices, docs/benchmarks.md "Reconnect storm").

So the server takes connections from the kernel as they come and holds them here, where it chooses: the newest
is served first (its device has the most of its 20 s left), and one that has waited `max_wait` is closed (its
device is about to give up, and retries on its backoff). A connection's wait counts from its TCP handshake,
which the server reads from the kernel: time in the kernel's queue counts too. When the queue is full the
server stops taking connections from the kernel, which then holds them and past its own queue drops new
connection requests: that costs the server nothing, where closing one connection for another was measured to
make a retry storm (840,889 connections closed in a 50,000-device storm, docs/benchmarks.md). Under no
overload the queue stays empty and the order does not matter.

Sans-IO: the caller passes the monotonic times and closes what is handed back.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: Connections one device server holds unserved, at most. What the queue can usefully hold is what the server
#: can start before they wait `DEFAULT_MAX_WAIT`: 18 s at a few hundred handshakes a second is a few thousand.
#: Each holds a descriptor, so a process takes at most a quarter of its open-file limit for it
#: (`queue_capacity`).
DEFAULT_CAPACITY = 8192


def queue_capacity(file_limit: int | None) -> int:
    """The queue's size for a process whose open-file limit is `file_limit` (None: no limit)."""
    if file_limit is None:
        return DEFAULT_CAPACITY
    return max(16, min(DEFAULT_CAPACITY, file_limit // 4))


#: How long a connection waits for its handshake, from its TCP handshake, before the server closes it. The
#: firmware waits 20 s for the nonce from its connect, and the nonce is the server's first message: one served
#: just before this still gets it in time.
DEFAULT_MAX_WAIT = 18.0


@dataclass(frozen=True, slots=True)
class Dropped(Generic[T]):
    """A connection closed unserved after `waited` seconds; `full`: to give its descriptor up."""

    item: T
    waited: float
    full: bool


class AcceptQueue(Generic[T]):
    """Accepted connections waiting for a handshake to start: newest first, none older than `max_wait`."""

    __slots__ = ("_items", "_taken", "capacity", "max_wait")

    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_wait: float = DEFAULT_MAX_WAIT) -> None:
        if capacity < 1:
            raise ValueError(f"the queue holds 1 connection or more, not {capacity}")
        if not max_wait > 0:
            raise ValueError(f"a connection waits more than 0 s, not {max_wait}")
        self.capacity = capacity
        self.max_wait = max_wait
        # (since, order taken, connection), oldest first. Kept in order of `since`, not of arrival here: while
        # the queue was full the kernel held the later connections, and they are older than the ones queued.
        self._items: list[tuple[float, int, T]] = []
        self._taken = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def push(self, item: T, since: float, now: float) -> Dropped[T] | None:
        """Queue a connection that has waited since `since` (its TCP handshake); handed back at once if it has
        waited `max_wait` already. The queue must not be `full`."""
        if len(self._items) >= self.capacity:
            raise OverflowError("the queue is full: the server takes no connection from the kernel until it has room")
        if now - since >= self.max_wait:
            return Dropped(item, now - since, full=False)
        self._taken += 1
        entry = (since, self._taken, item)
        if not self._items or since >= self._items[-1][0]:
            self._items.append(entry)  # the usual case: younger than every connection queued
        else:
            bisect.insort(self._items, entry, key=_since)
        return None

    def pop(self, now: float) -> T | None:
        """The newest connection that has not waited `max_wait`, or None. Older ones stay for `expire`."""
        if not self._items:
            return None
        since, _, item = self._items[-1]
        if now - since >= self.max_wait:
            return None  # the newest is too old: so is every other one
        self._items.pop()
        return item

    def drop_oldest(self, now: float) -> Dropped[T] | None:
        """Hand back the oldest connection to make room (the server is out of descriptors), or None."""
        if not self._items:
            return None
        since, _, item = self._items.pop(0)
        return Dropped(item, now - since, full=True)

    def expire(self, now: float) -> list[Dropped[T]]:
        """Hand back every connection that has waited `max_wait` or longer, oldest first."""
        items = self._items
        stale = bisect.bisect_right(items, now - self.max_wait, key=_since)
        # At the boundary the subtraction's rounding decides, as in `pop`.
        while stale and now - items[stale - 1][0] < self.max_wait:
            stale -= 1
        while stale < len(items) and now - items[stale][0] >= self.max_wait:
            stale += 1
        expired = [Dropped(item, now - since, full=False) for since, _, item in items[:stale]]
        del items[:stale]
        return expired

    def next_expiry(self) -> float | None:
        """When the oldest connection will have waited `max_wait` (monotonic), or None when empty."""
        return self._items[0][0] + self.max_wait if self._items else None

    def clear(self) -> list[T]:
        """Empty the queue (the server stops), handing back what it held."""
        items = [item for _, _, item in self._items]
        self._items.clear()
        return items


def _since(entry: tuple[float, int, object]) -> float:
    return entry[0]
