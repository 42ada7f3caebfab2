"""The event bus: how events travel between devices, the API's streams and other nodes, which node holds
which device, and how a request reaches that node (`cyan.cloud.ports.Bus`).

The embedded default is `InProcessBus`; the nodes of a cloud of several share one Redis (`RedisBus`).
Subscribers get bounded queues: a slow reader (an SSE client on a bad network) loses its oldest events and is
told how many, and never slows a device down.
"""

from __future__ import annotations

from ._events import CloudEvent
from ._local import BusSubscription
from .inprocess import InProcessBus, InProcessHub
from .redis import REDIS_SCHEMES, RedisBus, RedisOptions, RemoteRequestError

__all__ = [
    "BusSubscription",
    "CloudEvent",
    "InProcessBus",
    "InProcessHub",
    "RedisBus",
    "RedisOptions",
    "RemoteRequestError",
    "open_bus",
]


def open_bus(url: str, *, node_id: str) -> InProcessBus | RedisBus:
    """The bus for a URL: none (an empty string) is the in-process bus of a cloud of one node; a
    ``redis://[user:password@]host[:port][/db]`` (``rediss://`` for TLS, ``unix://``) URL joins the cloud whose
    nodes share that Redis. Not connected yet: ``await bus.start()`` joins the cloud (`cyan.service.Service`
    does so before it serves anything), raising `BusUnavailableError` if Redis does not answer.

    Raises ValueError for another scheme or a bad option (never repeating a password).
    """
    if not url.strip():
        return InProcessBus(node_id=node_id)
    scheme = url.partition("://")[0]
    if scheme not in REDIS_SCHEMES:
        raise ValueError(f"unsupported bus URL scheme {scheme!r}: use redis://host:6379/0 (or none, for one node)")
    return RedisBus(url, node_id=node_id)
