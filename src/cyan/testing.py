"""Public test helpers: deterministic randomness, fixed test keys, and connection pairs over an
in-memory wire (the h11 `ConnectionPair` habit). Used by Cyan's own tests and by anyone testing
against Cyan's protocol core.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.config import Settings
from cyan.protocol import DeviceConnection, Event, ServerConnection

if TYPE_CHECKING:
    from cyan.cloud.models import UdpSession
    from cyan.server.datagram_server import UdpSessionPort

__all__ = [
    "ConnectionPair",
    "CountingUdpSessions",
    "ScriptedRandom",
    "drain",
    "fixed_device_key",
    "fixed_server_key",
    "loopback_settings",
]


def loopback_settings(data_dir: Path, **overrides: Any) -> Settings:
    """A service's settings for a test or a bench: on loopback only, every port chosen by the system."""
    return Settings(
        data_dir=data_dir,
        device_host="127.0.0.1",
        device_port=0,
        device_udp_port=0,
        api_host="127.0.0.1",
        api_port=0,
        **overrides,
    )


class ScriptedRandom:
    """An `rng(n)` that first hands out the given byte strings, each exactly as asked, then a seeded
    pseudo-random stream. Replays the randomness of a recorded session."""

    def __init__(self, *script: bytes, seed: int = 0) -> None:
        self._script = list(script)
        self._random = random.Random(seed)

    def __call__(self, size: int) -> bytes:
        if self._script:
            chunk = self._script.pop(0)
            if len(chunk) != size:
                raise AssertionError(f"scripted randomness of {len(chunk)} bytes asked for as {size}")
            return chunk
        return self._random.randbytes(size)


@cache
def fixed_server_key() -> rsa.RSAPrivateKey:
    """An RSA-2048 server key, generated once per process."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def fixed_device_key(index: int = 0) -> rsa.RSAPrivateKey:
    """RSA-1024 device keys, generated once per process and index."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def drain(connection: ServerConnection | DeviceConnection) -> list[Event]:
    """All events the connection has queued."""
    events = []
    while (event := connection.next_event()) is not None:
        events.append(event)
    return events


@dataclass
class ConnectionPair:
    """A server and a device connection joined by an in-memory wire.

    `pump(now)` moves bytes both ways until both are quiet, optionally in pieces of `chunk` bytes (one
    byte at a time included), and collects each side's events.
    """

    server: ServerConnection
    device: DeviceConnection
    server_events: list[Event] = field(default_factory=list)
    device_events: list[Event] = field(default_factory=list)

    def pump(self, now: float, *, chunk: int | None = None) -> None:
        for _ in range(1000):
            to_device = self.server.data_to_send()
            to_server = self.device.data_to_send()
            if not to_device and not to_server:
                break
            if to_device and not self.device.closed:
                for piece in _pieces(to_device, chunk):
                    self.device.receive_data(piece, now)
            if to_server and not self.server.closed:
                for piece in _pieces(to_server, chunk):
                    self.server.receive_data(piece, now)
            self.server_events += drain(self.server)
            self.device_events += drain(self.device)
        self.server_events += drain(self.server)
        self.device_events += drain(self.device)

    def take_server_events(self) -> list[Event]:
        events, self.server_events = self.server_events, []
        return events

    def take_device_events(self) -> list[Event]:
        events, self.device_events = self.device_events, []
        return events


def _pieces(data: bytes, size: int | None) -> Iterator[bytes]:
    if size is None:
        yield data
        return
    for start in range(0, len(data), size):
        yield data[start : start + size]


@dataclass
class CountingUdpSessions:
    """A UDP server's session port (`UdpSessionPort`) that passes everything on to `inner` and notes each
    lookup that reaches it: the connection id, or the device id's bytes of a lookup by device."""

    inner: UdpSessionPort
    finds: list[bytes] = field(default_factory=list)

    async def save_udp_session(self, session: UdpSession) -> None:
        await self.inner.save_udp_session(session)

    async def find_udp_session(self, connection_id: bytes) -> UdpSession | None:
        self.finds.append(connection_id)
        return await self.inner.find_udp_session(connection_id)

    async def find_udp_sessions_of_device(self, device_id: str, *, limit: int) -> list[UdpSession]:
        self.finds.append(device_id.encode())
        return await self.inner.find_udp_sessions_of_device(device_id, limit=limit)

    async def reserve_udp_sequences(self, connection_id: bytes, count: int, *, floor: int = 0) -> int | None:
        return await self.inner.reserve_udp_sequences(connection_id, count, floor=floor)

    async def prune_udp_sessions(self, *, before: datetime) -> int:
        return await self.inner.prune_udp_sessions(before=before)

    async def drop_udp_session(self, connection_id: bytes) -> None:
        await self.inner.drop_udp_session(connection_id)
