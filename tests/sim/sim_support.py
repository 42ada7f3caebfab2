"""A minimal device server for the simulator's tests, on the protocol core's `ServerConnection`.

Strict key policy (protocol.md §12.3 (a)): an unknown id is rejected with unknown_device, a presented key
other than the registered one with key_mismatch; every failure closes the socket. Each connection leaves
one `ServerRecord` saying how it ended, from the server's side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.keys import generate_device_key, public_key_der
from cyan.protocol import (
    ConnectionClosed,
    ConnectionFailed,
    DescribeReceived,
    DeviceIdentified,
    Event,
    EventPublished,
    FunctionFailed,
    FunctionReturned,
    GoodbyeReceived,
    Hello,
    HelloReceived,
    OtaOutcome,
    OtaSender,
    PingReceived,
    Reason,
    RemoteProtocolError,
    RequestTimedOut,
    ServerConfig,
    ServerConnection,
    Step,
    VariableRead,
    VariableReadFailed,
)
from cyan.testing import fixed_server_key

__all__ = ["MiniServer", "ServerRecord", "device_keys", "server_key", "wait_until"]


def server_key() -> rsa.RSAPrivateKey:
    return fixed_server_key()


@cache
def _device_key(index: int) -> rsa.RSAPrivateKey:
    return generate_device_key()


def device_keys(count: int) -> list[rsa.RSAPrivateKey]:
    """Firmware-parsable device keys, made once per process and index."""
    return [_device_key(i) for i in range(count)]


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


@dataclass
class ServerRecord:
    """How one accepted connection ended, seen from the server."""

    device_id: str | None = None
    #: The failure reason (from ConnectionFailed, RemoteProtocolError or our rejection), if any.
    reason: Reason | None = None
    step: Step | None = None
    hello: Hello | None = None
    #: The session ended by the device's EOF (ConnectionClosed).
    closed_by_device: bool = False
    #: The socket went away with an error (a reset).
    reset: bool = False
    goodbye: bool = False
    #: System Describe documents (with "m"), in order.
    describes: list[dict[str, object]] = field(default_factory=list)
    closed_by_server: bool = False
    #: The device closed its side (EOF) while the server still had the socket open.
    eof: bool = False
    pings: int = 0
    #: How many reads the bytes arrived in (BYTE_BY_BYTE makes many).
    reads: int = 0
    events: list[EventPublished] = field(default_factory=list)

    @property
    def connected(self) -> bool:
        return self.hello is not None


class _ServerLink(asyncio.Protocol):
    def __init__(self, server: MiniServer) -> None:
        self.server = server
        self.record = ServerRecord()
        self.conn: ServerConnection | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.pending: dict[int, asyncio.Future[Event]] = {}
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sender: OtaSender | None = None
        self.update_done: asyncio.Future[OtaOutcome] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.conn = ServerConnection(self.server.key, time.time(), config=self.server.config)
        self.server.links.add(self)
        self.pump()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        assert conn is not None
        if conn.closed:
            return
        self.record.reads += 1
        try:
            conn.receive_data(data, time.time())
        except RemoteProtocolError as exc:
            self.record.reason, self.record.step = exc.reason, exc.step
        self.pump()

    def eof_received(self) -> bool:
        conn = self.conn
        assert conn is not None
        self.record.eof = True
        if not conn.closed:
            conn.receive_eof(time.time())
        self.pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        conn = self.conn
        if exc is not None:
            self.record.reset = True
        if conn is not None and not conn.closed:
            conn.close()
        if self.sender is not None:
            self.sender.connection_lost(time.time())
            self._update_step()
        for future in self.pending.values():
            future.cancel()
        self.server.links.discard(self)
        if self.record.device_id is not None and self.server.sessions.get(self.record.device_id) is self:
            del self.server.sessions[self.record.device_id]
        self.server.records.append(self.record)
        self.lost.set_result(None)

    def pump(self) -> None:
        conn = self.conn
        transport = self.transport
        assert conn is not None
        assert transport is not None
        now = time.time()
        while (event := conn.next_event()) is not None:
            self.on_event(conn, event, now)
            if self.sender is not None and self.sender.handle_event(event, now):
                self._update_step()
        data = conn.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)
        if conn.closed:
            if not transport.is_closing():
                self.record.closed_by_server = self.record.closed_by_server or not self.record.closed_by_device
                transport.close()
            return
        dues = [t for t in (conn.get_timer(), self.sender.get_timer() if self.sender else None) if t is not None]
        due = min(dues) if dues else None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if due is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_at(loop.time() + max(0.0, due - now) + 0.001, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        conn = self.conn
        assert conn is not None
        if not conn.closed:
            conn.handle_timer(time.time())
        if self.sender is not None:
            backlog = self.transport.get_write_buffer_size() if self.transport else 0
            self.sender.handle_timer(time.time(), backlog=backlog)
            self._update_step()
        self.pump()

    def _update_step(self) -> None:
        sender = self.sender
        if sender is not None and sender.finished:
            self.sender = None
            assert sender.outcome is not None
            if self.update_done is not None and not self.update_done.done():
                self.update_done.set_result(sender.outcome)

    def on_event(self, conn: ServerConnection, event: Event, now: float) -> None:
        record = self.record
        if isinstance(event, DeviceIdentified):
            record.device_id = event.device_id
            registered = self.server.registered.get(event.device_id)
            if registered is None:
                conn.reject(Reason.UNKNOWN_DEVICE)
            elif event.public_key is None or event.public_key_der != public_key_der(registered):
                conn.reject(Reason.KEY_MISMATCH)
            else:
                conn.accept(registered, now)
        elif isinstance(event, HelloReceived):
            record.hello = event.hello
            self.server.sessions[event.device_id] = self
        elif isinstance(event, EventPublished):
            record.events.append(event)
            self.server.published.append((record.device_id or "", event))
        elif isinstance(event, FunctionReturned | FunctionFailed | VariableRead | VariableReadFailed | RequestTimedOut):
            future = self.pending.pop(event.request_id, None)
            if future is not None and not future.done():
                future.set_result(event)
        elif isinstance(event, ConnectionFailed):
            record.reason, record.step = event.reason, event.step
        elif isinstance(event, ConnectionClosed):
            record.closed_by_device = True
        elif isinstance(event, GoodbyeReceived):
            record.goodbye = True
        elif isinstance(event, PingReceived):
            record.pings += 1
        elif isinstance(event, DescribeReceived) and event.document is not None and "m" in event.document:
            record.describes.append(event.document)


class MiniServer:
    def __init__(self, key: rsa.RSAPrivateKey | None = None, *, config: ServerConfig | None = None) -> None:
        self.key = key or server_key()
        self.config = config or ServerConfig(describe_delay=None)
        self.registered: dict[str, rsa.RSAPublicKey] = {}
        self.records: list[ServerRecord] = []
        self.sessions: dict[str, _ServerLink] = {}
        self.published: list[tuple[str, EventPublished]] = []
        self.links: set[_ServerLink] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    def register(self, device_id: str, key: rsa.RSAPublicKey) -> None:
        self.registered[device_id] = key

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        # A deep backlog: a fleet connects hundreds of sockets at once.
        self._server = await loop.create_server(lambda: _ServerLink(self), "127.0.0.1", port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening, then close every connection and wait until each is gone."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        links = list(self.links)
        for link in links:
            if link.transport is not None and not link.transport.is_closing():
                link.record.closed_by_server = True
                link.transport.close()
        if links:
            await asyncio.wait([link.lost for link in links])

    def failures(self) -> list[ServerRecord]:
        return [r for r in self.records if r.reason is not None]

    async def _request(self, device_id: str, start: Callable[[ServerConnection, float], int]) -> Event:
        link = self.sessions[device_id]
        assert link.conn is not None
        request_id = start(link.conn, time.time())
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        link.pending[request_id] = future
        link.pump()
        return await asyncio.wait_for(future, 3.0)

    async def call_function(self, device_id: str, name: str, argument: str) -> Event:
        return await self._request(device_id, lambda conn, now: conn.call_function(name, argument, now))

    async def read_variable(self, device_id: str, name: str) -> Event:
        return await self._request(device_id, lambda conn, now: conn.read_variable(name, now))

    async def update(
        self, device_id: str, image: bytes, *, fast: bool | None = None, timeout: float = 30.0
    ) -> OtaOutcome:
        """Send an update to a connected device (protocol.md §7) and wait until the transfer ends."""
        link = self.sessions[device_id]
        assert link.conn is not None
        link.sender = OtaSender(link.conn, image, time.time(), fast=fast)
        link.update_done = asyncio.get_running_loop().create_future()
        link.pump()
        return await asyncio.wait_for(link.update_done, timeout)

    def send_event(self, device_id: str, name: str, data: str) -> None:
        link = self.sessions[device_id]
        assert link.conn is not None
        link.conn.send_event(name, data)
        link.pump()
