"""The event bus: how events travel between devices, the API's streams and other nodes, which node holds
which device, and how a request reaches that node (`cyan.cloud.ports.Bus`).

The embedded default is `InProcessBus`. Subscribers get bounded queues: a slow reader (an SSE client on a
bad network) loses its oldest events and is told how many, and never slows a device down.
"""

from ._events import CloudEvent
from .inprocess import BusSubscription, InProcessBus, InProcessHub

__all__ = ["BusSubscription", "CloudEvent", "InProcessBus", "InProcessHub"]
