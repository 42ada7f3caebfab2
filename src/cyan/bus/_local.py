"""What every bus does inside its own process: hand each event to the listeners and to the subscriptions whose
prefix and filter take it, through bounded queues that lose their oldest events rather than slow anyone down."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from cyan.cloud.models import CloudEvent
from cyan.cloud.ports import EventFilter

__all__ = ["BusSubscription", "LocalFanOut"]


class BusSubscription:
    """One subscriber's view of the bus. Iterate with `await get()`; `dropped` counts lost events."""

    __slots__ = ("_accept", "_forget", "_queue", "_waiter", "closed", "dropped", "interruptions", "prefix")

    def __init__(
        self,
        forget: Callable[[BusSubscription], None],
        prefix: str,
        accept: EventFilter | None,
        capacity: int,
    ) -> None:
        self._forget = forget
        self.prefix = prefix
        self._accept = accept
        self._queue: deque[CloudEvent] = deque(maxlen=capacity)
        self._waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        #: Times the bus lost its way to the other nodes while this subscription was open: their events meanwhile
        #: never arrived (the subscriber is to be told, not left to guess).
        self.interruptions = 0
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
        self._forget(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class LocalFanOut:
    """This node's listeners and subscriptions."""

    __slots__ = ("_capacity", "listeners", "subscriptions")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self.subscriptions: set[BusSubscription] = set()
        self.listeners: list[Callable[[CloudEvent], None]] = []

    def deliver(self, event: CloudEvent) -> None:
        for listener in self.listeners:
            listener(event)
        for subscription in tuple(self.subscriptions):
            subscription._offer(event)

    def subscribe(self, prefix: str, accept: EventFilter | None, capacity: int | None) -> BusSubscription:
        subscription = BusSubscription(self.subscriptions.discard, prefix, accept, capacity or self._capacity)
        self.subscriptions.add(subscription)
        return subscription

    def close_all(self) -> None:
        for subscription in tuple(self.subscriptions):
            subscription.close()

    def interrupted(self) -> None:
        """The other nodes' events could not arrive for a while: every subscription counts it."""
        for subscription in tuple(self.subscriptions):
            subscription.interruptions += 1
