"""Admission control: past `max_handshakes` under way the server stops accepting, and the connections wait in
the kernel's queue until a handshake ends; one accepted past the bound anyway is closed before the server's
nonce (no RSA work, one record), and the firmware retries on its backoff."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from cyan.app import Actor, Application, NewDevice
from cyan.bus import InProcessBus
from cyan.cloud.service import Cloud
from cyan.keys import public_key_der
from cyan.protocol import ServerConfig
from cyan.server import DeviceServer
from cyan.server.device_server import OVERLOADED, DeviceProtocol
from cyan.sim import SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.store import MemoryStore
from cyan.testing import fixed_device_key, fixed_server_key

DEVICE = "ab" * 12
NONCE = 40


async def _until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _first_bytes(port: int) -> tuple[bytes, asyncio.StreamWriter]:
    """Connect as a device would and read what the server sends first: its nonce, or nothing (the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = b""
    while len(data) < NONCE:
        chunk = await asyncio.wait_for(reader.read(NONCE - len(data)), 10)
        if not chunk:
            break
        data += chunk
    return data, writer


def test_past_the_bound_connections_wait_in_the_kernel_and_are_served_as_handshakes_end() -> None:
    async def scenario() -> None:
        store = MemoryStore()
        await store.open()
        cloud = Cloud(store, InProcessBus())
        app = Application(store, cloud=cloud)
        assert app.gateway is not None
        await cloud.start()
        server = DeviceServer(
            app.gateway, fixed_server_key(), host="127.0.0.1", port=0, config=ServerConfig(), max_handshakes=2
        )
        await server.start()
        await app.devices.register(
            Actor.operator("ops"), [NewDevice(DEVICE, public_key_der(fixed_device_key(1).public_key()))]
        )
        device = VirtualDevice(
            VirtualDeviceSpec(DEVICE, fixed_device_key(1)),
            fixed_server_key().public_key(),
            config=SimConfig(backoff_scale=0.05),
        )
        writers: list[asyncio.StreamWriter] = []
        try:
            # Two handshakes under way (they got their nonce and say nothing): the bound is reached, and the
            # server stops accepting.
            for _ in range(2):
                nonce, writer = await _first_bytes(server.port)
                writers.append(writer)
                assert len(nonce) == NONCE
            assert (server.handshakes, server.accepting) == (2, False)
            # A third connection is queued by the kernel, not accepted: once a handshake under way ends, it is
            # accepted and gets its nonce, and the server is at its bound again.
            third = asyncio.create_task(_first_bytes(server.port))
            writers[0].close()
            nonce, writer = await asyncio.wait_for(third, 10)
            writers.append(writer)
            assert len(nonce) == NONCE
            assert (server.handshakes, server.accepting) == (2, False)
            # A device arriving now waits its turn the same way, and gets in when the others end.
            device.start("127.0.0.1", server.port)
            writers[1].close()
            writers[2].close()
            await asyncio.wait_for(device.connected.wait(), 10)
            assert server.handshakes == 0  # its session no longer counts
            assert server.accepting
        finally:
            await device.stop()
            for writer in writers:
                writer.close()
            await server.stop()
            await app.gateway.drain()
            await cloud.stop()
        assert server.handshakes == 0
        await store.close()

    asyncio.run(scenario())


class _Transport(asyncio.Transport):
    """A socket's transport as far as a new connection's first step uses it."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.written = b""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("198.51.100.7", 40000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_a_connection_accepted_past_the_bound_is_closed_before_the_nonce_and_recorded() -> None:
    """The connections accepted in one pass of the loop can outnumber the places left before the first of them
    has counted in: the ones past the bound are closed before the nonce (no RSA work), recorded as overloaded,
    and the firmware retries on its backoff."""

    async def scenario() -> None:
        store = MemoryStore()
        await store.open()
        cloud = Cloud(store, InProcessBus())
        app = Application(store, cloud=cloud)
        assert app.gateway is not None
        await cloud.start()
        server = DeviceServer(app.gateway, fixed_server_key(), host="127.0.0.1", port=0, max_handshakes=1)
        first, second = _Transport(), _Transport()
        DeviceProtocol(server).connection_made(first)
        DeviceProtocol(server).connection_made(second)
        assert len(first.written) == NONCE
        assert not first.closed
        assert (second.written, second.closed) == (b"", True)
        assert (server.handshakes, server.overloaded) == (1, 1)
        await app.gateway.drain()
        await cloud.stop()
        refused = [a for a in await store.attempts.recent(limit=100) if a.reason == OVERLOADED]
        assert len(refused) == 1
        assert refused[0].step == "nonce"
        assert refused[0].device_id is None
        await store.close()

    asyncio.run(scenario())


def test_the_bound_is_at_least_one() -> None:
    store = MemoryStore()
    gateway = Application(store, cloud=Cloud(store, InProcessBus())).gateway
    assert gateway is not None
    with pytest.raises(ValueError, match="max_handshakes"):
        DeviceServer(gateway, fixed_server_key(), max_handshakes=0)
