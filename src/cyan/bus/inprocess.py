"""In-process publish/subscribe with prefix filters and bounded, lossy-at-the-reader queues."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from ._events import CloudEvent

__all__ = ["BusSubscription", "InProcessBus"]

EventFilter = Callable[[CloudEvent], bool]


class BusSubscription:
    """One subscriber's view of the bus. Iterate with `await get()`; `dropped` counts lost events."""

    def __init__(self, bus: InProcessBus, prefix: str, accept: EventFilter | None, capacity: int) -> None:
        self._bus = bus
        self.prefix = prefix
        self._accept = accept
        self._queue: deque[CloudEvent] = deque(maxlen=capacity)
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        self.closed = False

    def _offer(self, event: CloudEvent) -> None:
        if not event.name.startswith(self.prefix):
            return
        if self._accept is not None and not self._accept(event):
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the oldest goes; the publisher never waits (design §6)
        self._queue.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> CloudEvent | None:
        """The next event, or None once the subscription is closed."""
        while not self._queue:
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._bus._subscriptions.discard(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class InProcessBus:
    """The embedded default bus: every subscriber in this process sees matching events at once."""

    def __init__(self, *, capacity: int = 1000) -> None:
        self._subscriptions: set[BusSubscription] = set()
        self._listeners: list[Callable[[CloudEvent], None]] = []
        self._capacity = capacity

    def publish(self, event: CloudEvent) -> None:
        for listener in self._listeners:
            listener(event)
        for subscription in tuple(self._subscriptions):
            subscription._offer(event)

    def subscribe(
        self, prefix: str = "", accept: EventFilter | None = None, *, capacity: int | None = None
    ) -> BusSubscription:
        subscription = BusSubscription(self, prefix, accept, capacity or self._capacity)
        self._subscriptions.add(subscription)
        return subscription

    def add_listener(self, listener: Callable[[CloudEvent], None]) -> None:
        """A synchronous callback for every event (the device fan-out); it must not block."""
        self._listeners.append(listener)

    def close_all(self) -> None:
        """End every subscription (shutdown): their readers get None."""
        for subscription in tuple(self._subscriptions):
            subscription.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)
