"""Admission control: past `max_handshakes` under way the connections wait in the server's queue, newest
served first as handshakes end; one that waits too long, or is pushed out of a full queue, is closed before the
server's nonce (no RSA work, one record), and the firmware retries on its backoff."""

from __future__ import annotations

import asyncio

import pytest

from cyan.app import Application
from cyan.bus import InProcessBus
from cyan.cloud.service import Cloud
from cyan.server import DeviceServer
from cyan.server.device_server import OVERLOADED, DeviceProtocol
from cyan.store import MemoryStore
from cyan.testing import fixed_server_key
from device_server_support import cloud_on_memory, registered_device, served_server, shut, wait_until

DEVICE = "ab" * 12
NONCE = 40


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


async def _nothing_yet(reader: asyncio.StreamReader) -> None:
    """The server has sent nothing on this connection (no nonce, no close) for a moment."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.3)


def test_past_the_bound_connections_wait_in_the_server_and_the_newest_is_served_first() -> None:
    """Past the bound the server holds the connections itself and starts the newest first as handshakes end:
    after a restart the oldest are the devices closest to giving up on their nonce (20 s), and serving them
    first is how a queue longer than that serves only devices that have left."""

    async def scenario() -> None:
        app, cloud, server = await served_server(max_handshakes=2)
        device = await registered_device(app, DEVICE)
        writers: list[asyncio.StreamWriter] = []
        try:
            # Two handshakes under way (they got their nonce and say nothing): the bound is reached.
            for _ in range(2):
                nonce, writer = await _first_bytes(server.port)
                writers.append(writer)
                assert len(nonce) == NONCE
            assert server.handshakes == 2
            # Two more are taken from the kernel and wait in the server, unserved.
            older_reader, older = await asyncio.open_connection("127.0.0.1", server.port)
            await wait_until(lambda: server.queued == 1, "the first waiting connection")
            newer_reader, newer = await asyncio.open_connection("127.0.0.1", server.port)
            await wait_until(lambda: server.queued == 2, "the second waiting connection")
            writers += [older, newer]
            assert server.accepting
            await _nothing_yet(older_reader)
            # A handshake ends: the newer one gets the place.
            writers[0].close()
            assert len(await asyncio.wait_for(newer_reader.readexactly(NONCE), 10)) == NONCE
            assert (server.handshakes, server.queued) == (2, 1)
            await _nothing_yet(older_reader)
            # Another ends: the older one's turn.
            writers[1].close()
            assert len(await asyncio.wait_for(older_reader.readexactly(NONCE), 10)) == NONCE
            assert server.queued == 0
            # A device arriving now waits its turn the same way, and gets in when the others end.
            device.start("127.0.0.1", server.port)
            await wait_until(lambda: server.queued == 1, "the device waiting")
            older.close()
            newer.close()
            await asyncio.wait_for(device.connected.wait(), 10)
            assert server.handshakes == 0  # its session no longer counts
        finally:
            await device.stop()
            for writer in writers:
                writer.close()
            attempts = await shut(app, cloud, server)
        assert server.handshakes == 0
        assert not [a for a in attempts if a.reason == OVERLOADED]

    asyncio.run(scenario())


def test_a_connection_that_waits_too_long_is_closed_before_its_nonce_and_recorded() -> None:
    async def scenario() -> None:
        app, cloud, server = await served_server(max_handshakes=1, max_wait=0.5)
        writers: list[asyncio.StreamWriter] = []
        try:
            nonce, first = await _first_bytes(server.port)
            writers.append(first)
            assert len(nonce) == NONCE
            reader, waiting = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(waiting)
            # Closed, not served: the device would have a few seconds left for a handshake by then.
            assert await asyncio.wait_for(reader.read(NONCE), 10) == b""
            assert (server.queued, server.overloaded, server.handshakes) == (0, 1, 1)
            # A connection that waited too long is not served late either when a place frees.
            first.close()
            nonce, third = await _first_bytes(server.port)
            writers.append(third)
            assert len(nonce) == NONCE
        finally:
            for writer in writers:
                writer.close()
            attempts = await shut(app, cloud, server)
        [closed] = [a for a in attempts if a.reason == OVERLOADED]
        assert closed.step == "nonce"
        assert closed.device_id is None
        assert closed.detail is not None
        assert closed.detail.startswith("not served in ")
        assert float(closed.detail.split()[3]) >= 0.5

    asyncio.run(scenario())


def test_past_a_full_queue_the_kernel_holds_the_connections_and_their_wait_counts_from_their_connect() -> None:
    """A full queue stops the server taking connections from the kernel (closing one for another would make
    a retry storm). Their wait counts from their connect, read from the kernel: one that waited there past
    `max_wait` is closed as soon as the server takes it, never served late."""

    async def scenario() -> None:
        # 3 s: the checks that it is still waiting must come well within the wait, on a loaded machine too.
        app, cloud, server = await served_server(max_handshakes=1, max_queued=1, max_wait=3.0)
        writers: list[asyncio.StreamWriter] = []
        try:
            nonce, first = await _first_bytes(server.port)
            writers.append(first)
            assert len(nonce) == NONCE
            queued_reader, queued = await asyncio.open_connection("127.0.0.1", server.port)
            await wait_until(lambda: server.queued == 1, "the waiting connection")
            kernel_reader, in_kernel = await asyncio.open_connection("127.0.0.1", server.port)
            writers += [queued, in_kernel]
            await _nothing_yet(kernel_reader)
            assert (server.queued, server.accepting) == (1, False)
            # The queued one waits its 3 s out and is closed; the server takes the one the kernel held, which
            # has waited as long: closed at once (or a grain later).
            assert await asyncio.wait_for(queued_reader.read(NONCE), 10) == b""
            assert await asyncio.wait_for(kernel_reader.read(NONCE), 10) == b""
            assert (server.queued, server.overloaded, server.accepting) == (0, 2, True)
        finally:
            for writer in writers:
                writer.close()
            attempts = await shut(app, cloud, server)
        closed = [a for a in attempts if a.reason == OVERLOADED]
        assert len(closed) == 2
        for attempt in closed:
            assert attempt.detail is not None
            assert attempt.detail.startswith("not served in ")
            assert float(attempt.detail.split()[3]) >= 2.9

    asyncio.run(scenario())


def test_a_device_that_left_while_it_waited_is_not_served() -> None:
    async def scenario() -> None:
        app, cloud, server = await served_server(max_handshakes=1)
        try:
            nonce, first = await _first_bytes(server.port)
            assert len(nonce) == NONCE
            _, gone = await asyncio.open_connection("127.0.0.1", server.port)
            await wait_until(lambda: server.queued == 1, "the waiting connection")
            gone.close()
            await gone.wait_closed()
            await asyncio.sleep(0.1)  # the FIN reaches the server's socket (loopback: at once)
            first.close()
            await wait_until(lambda: server.queued == 0 and server.handshakes == 0, "the queue emptied")
            assert server.overloaded == 1
        finally:
            attempts = await shut(app, cloud, server)
        [left] = [a for a in attempts if a.reason == OVERLOADED]
        assert left.detail is not None
        assert left.detail.startswith("the device left after ")

    asyncio.run(scenario())


def test_stopping_closes_the_waiting_connections() -> None:
    async def scenario() -> None:
        app, cloud, server = await served_server(max_handshakes=1)
        nonce, first = await _first_bytes(server.port)
        assert len(nonce) == NONCE
        reader, waiting = await asyncio.open_connection("127.0.0.1", server.port)
        await wait_until(lambda: server.queued == 1, "the waiting connection")
        await shut(app, cloud, server)
        assert await asyncio.wait_for(reader.read(NONCE), 10) == b""
        assert server.queued == 0
        first.close()
        waiting.close()

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

    def get_write_buffer_size(self) -> int:
        return 0  # every write "leaves" at once


def test_a_connection_started_past_the_bound_is_closed_before_the_nonce_and_recorded() -> None:
    """The server starts a connection only for a free place; should one be started past the bound anyway, it
    is closed before the nonce (no RSA work), recorded as overloaded, and the firmware retries on its backoff."""

    async def scenario() -> None:
        app, cloud = await cloud_on_memory()
        assert app.gateway is not None
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
        refused = [a for a in await app.store.attempts.recent(limit=100) if a.reason == OVERLOADED]
        assert len(refused) == 1
        assert refused[0].step == "nonce"
        assert refused[0].device_id is None
        await app.store.close()

    asyncio.run(scenario())


def test_the_bound_is_at_least_one() -> None:
    store = MemoryStore()
    gateway = Application(store, cloud=Cloud(store, InProcessBus())).gateway
    assert gateway is not None
    with pytest.raises(ValueError, match="max_handshakes"):
        DeviceServer(gateway, fixed_server_key(), max_handshakes=0)
