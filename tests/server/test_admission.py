"""Admission control: past `max_handshakes` under way, a new connection is closed before the server's nonce
(no RSA work, one record), and a device so refused gets in on the firmware's backoff once one has ended."""

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
from cyan.server.device_server import OVERLOADED
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


def test_past_the_bound_connections_are_closed_before_the_nonce_and_a_device_gets_in_on_its_backoff() -> None:
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
            # Two handshakes under way (they got their nonce and say nothing): the bound is reached.
            for _ in range(2):
                nonce, writer = await _first_bytes(server.port)
                writers.append(writer)
                assert len(nonce) == NONCE
            assert server.handshakes == 2
            # A burst of ten more: every one closed before the nonce, and the bound holds.
            burst = await asyncio.gather(*(_first_bytes(server.port) for _ in range(10)))
            writers += [writer for _, writer in burst]
            assert [first for first, _ in burst] == [b""] * 10
            assert (server.handshakes, server.overloaded) == (2, 10)
            # A device arriving now is refused too, and retries on its backoff...
            device.start("127.0.0.1", server.port)
            await _until(lambda: server.overloaded >= 12, "the device to be refused twice")
            assert not device.connected.is_set()
            last = device.last_attempt
            assert last is not None
            assert last.failed
            # ...until a handshake under way ends: then it gets in, and its session no longer counts.
            writers[0].close()
            await asyncio.wait_for(device.connected.wait(), 10)
            assert server.handshakes == 1
        finally:
            await device.stop()
            for writer in writers:
                writer.close()
            await server.stop()
            await app.gateway.drain()
            await cloud.stop()
        assert server.handshakes == 0
        refused = [a for a in await store.attempts.recent(limit=1000) if a.reason == OVERLOADED]
        assert len(refused) >= 12
        assert all(a.step == "nonce" and a.device_id is None for a in refused)
        await store.close()

    asyncio.run(scenario())


def test_the_bound_is_at_least_one() -> None:
    store = MemoryStore()
    gateway = Application(store, cloud=Cloud(store, InProcessBus())).gateway
    assert gateway is not None
    with pytest.raises(ValueError, match="max_handshakes"):
        DeviceServer(gateway, fixed_server_key(), max_handshakes=0)
