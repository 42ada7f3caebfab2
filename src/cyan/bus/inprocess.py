"""The bus inside one process: prefix-filtered subscriptions with bounded, lossy-at-the-reader queues, and
presence and requests between the nodes that share an `InProcessHub`.

The embedded default is one node with a hub of its own. Several nodes on one hub are a cluster in one
process: what the tests of cross-node behaviour run on, the same contract the Redis bus meets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from cyan.cloud.models import CloudEvent
from cyan.cloud.ports import EventFilter, NodeUnreachableError, Presence, RequestHandler

from ._local import BusSubscription, LocalFanOut

__all__ = ["BusSubscription", "InProcessBus", "InProcessHub"]


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
        self._local = LocalFanOut(capacity)

    async def start(self) -> None:
        """Nothing to join: the node is on its hub from the moment it is made."""

    # -- events ---------------------------------------------------------------------------------

    def publish(self, event: CloudEvent) -> None:
        for node in tuple(self._hub.nodes.values()):
            node._deliver(event)

    def _deliver(self, event: CloudEvent) -> None:
        self._local.deliver(event)

    def subscribe(
        self, prefix: str = "", accept: EventFilter | None = None, *, capacity: int | None = None
    ) -> BusSubscription:
        return self._local.subscribe(prefix, accept, capacity)

    def add_listener(self, listener: Callable[[CloudEvent], None]) -> None:
        """A synchronous callback for every event (the device fan-out); it must not block."""
        self._local.listeners.append(listener)

    def close_all(self) -> None:
        """End every subscription (shutdown): their readers get None."""
        self._local.close_all()

    @property
    def subscriber_count(self) -> int:
        return len(self._local.subscriptions)

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
