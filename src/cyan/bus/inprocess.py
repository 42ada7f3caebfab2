"""The bus inside one process: prefix-filtered subscriptions with bounded, lossy-at-the-reader queues, and
presence and requests between the nodes that share an `InProcessHub`.

The embedded default is one node with a hub of its own. Several nodes on one hub are a cluster in one
process: what the tests of cross-node behaviour run on, the same contract the Redis bus meets.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from cyan.cloud.models import CloudEvent
from cyan.cloud.ports import EventFilter, NodeUnreachableError, Presence, RequestHandler

__all__ = ["BusSubscription", "InProcessBus", "InProcessHub"]


class BusSubscription:
    """One subscriber's view of the bus. Iterate with `await get()`; `dropped` counts lost events."""

    __slots__ = ("_accept", "_bus", "_queue", "_waiter", "closed", "dropped", "prefix")

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


class InProcessHub:
    """What the nodes of one process share: who holds which device, and how to reach each node."""

    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.clock = clock
        self.nodes: dict[str, InProcessBus] = {}
        self.presence: dict[str, Presence] = {}
        self.handlers: dict[str, RequestHandler] = {}


class InProcessBus:
    """`cyan.cloud.ports.Bus` for the nodes of one process."""

    def __init__(self, *, node_id: str = "local", hub: InProcessHub | None = None, capacity: int = 1000) -> None:
        self.node_id = node_id
        self._hub = hub or InProcessHub()
        if node_id in self._hub.nodes:
            raise ValueError(f"node {node_id!r} is on this hub already")
        self._hub.nodes[node_id] = self
        self._subscriptions: set[BusSubscription] = set()
        self._listeners: list[Callable[[CloudEvent], None]] = []
        self._capacity = capacity

    # -- events ---------------------------------------------------------------------------------

    def publish(self, event: CloudEvent) -> None:
        for node in tuple(self._hub.nodes.values()):
            node._deliver(event)

    def _deliver(self, event: CloudEvent) -> None:
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

    # -- presence -------------------------------------------------------------------------------

    async def claim(self, device_id: str, session_id: str) -> Presence | None:
        previous = self._hub.presence.get(device_id)
        self._hub.presence[device_id] = Presence(self.node_id, session_id, self._hub.clock())
        return previous

    async def release(self, device_id: str, session_id: str) -> None:
        current = self._hub.presence.get(device_id)
        if current is not None and current.node_id == self.node_id and current.session_id == session_id:
            del self._hub.presence[device_id]

    async def holder(self, device_id: str) -> Presence | None:
        return self._hub.presence.get(device_id)

    # -- requests between nodes -----------------------------------------------------------------

    def serve(self, handler: RequestHandler) -> None:
        self._hub.handlers[self.node_id] = handler

    async def request(self, node_id: str, message: object, timeout: float) -> object:
        handler = self._hub.handlers.get(node_id)
        if handler is None:
            raise NodeUnreachableError(f"node {node_id} is not serving requests")
        try:
            return await asyncio.wait_for(handler(message), timeout)
        except TimeoutError:
            raise NodeUnreachableError(f"node {node_id} did not answer within {timeout:g} s") from None

    async def close(self) -> None:
        """Leave the hub: this node's devices are nobody's any more, and it answers no request."""
        self.close_all()
        self._hub.nodes.pop(self.node_id, None)
        self._hub.handlers.pop(self.node_id, None)
        for device_id, presence in list(self._hub.presence.items()):
            if presence.node_id == self.node_id:
                del self._hub.presence[device_id]
