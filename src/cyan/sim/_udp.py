"""A virtual UDP device: an Argon on Device OS 4.x, or an Electron on 2.x, over DTLS 1.2, with the network's faults.

It runs the same cores as the server, in the device role: `cyan.dtls.ClientEndpoint` (the handshake with
a cookie, the raw public key, the connection id; resuming a saved session as type-253 records) and
`cyan.protocol.datagram.DatagramDeviceConnection` (the confirmable Hello with the device id, confirmable
events and function returns, retransmission, deduplication, the 25 s keep-alive). A `UdpFaults` drops,
duplicates and reorders datagrams both ways, and `move()` changes the device's address mid-session, as a
NAT rebinding or a cellular handover does: the session carries on by its connection id. The Device OS 2.x
personality (`ELECTRON_2`) offers no connection id and marks its records after a move as type 254 with its
device id appended, as that firmware does (udp-dtls.md §1.4).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric import ec

from cyan.dtls import (
    ApplicationDataReceived,
    ClientConfig,
    ClientEndpoint,
    HandshakeCompleted,
    MoveSession,
    RemoteDtlsError,
    Session,
)
from cyan.dtls import ConnectionFailed as DtlsFailed
from cyan.protocol import (
    Application,
    DeviceReset,
    EventReceived,
    FunctionCalled,
    LocalProtocolError,
    RemoteProtocolError,
    ServerHelloReceived,
    VariableType,
)
from cyan.protocol import ConnectionFailed as SessionFailed
from cyan.protocol.datagram import ARGON_4_0_2, ELECTRON_2_3_1, DatagramDeviceConnection
from cyan.protocol.firmware import Firmware

from ._images import check_image, install_user_part

__all__ = ["ARGON_4", "ELECTRON_2", "UdpFaults", "UdpPersonality", "UdpVirtualDevice", "default_udp_application"]

_now = time.monotonic


@dataclass
class UdpFaults:
    """Datagram faults, each a probability per datagram, in both directions; `seed` makes a run repeatable."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class UdpPersonality:
    """What a firmware generation does over UDP (udp-dtls.md §1.3, §1.4)."""

    firmware: Firmware
    #: Offers the draft-05 connection id (Device OS ≥ 3.1).
    connection_id: bool
    #: How records are marked after a resume: 253 (≥ 4.0), or 254 with the device id (≤ 2.x).
    move: MoveSession


#: Device OS 4.0.2 on an Argon: a connection id, type-253 records after a resume.
ARGON_4 = UdpPersonality(ARGON_4_0_2, connection_id=True, move=MoveSession.ALT_CID)
#: Device OS 2.3.1 on an Electron: no connection id, type-254 records with the device id after a resume.
ELECTRON_2 = UdpPersonality(ELECTRON_2_3_1, connection_id=False, move=MoveSession.DEVICE_ID)


def default_udp_application() -> Application:
    """The virtual device's application, as the recorded firmware's: setArg, counter, lastArg, temp."""
    return Application(
        functions=["setArg"],
        variables={
            "counter": (VariableType.INT, 0),
            "lastArg": (VariableType.STRING, ""),
            "temp": (VariableType.DOUBLE, 21.5),
        },
    )


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, device: UdpVirtualDevice) -> None:
        self.device = device
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.device._socket is self:  # a socket left behind by `move()` hears nothing any more
            self.device._arrived(data)


class UdpVirtualDevice:
    """One simulated Argon (Device OS 4.x), or another `personality`, over UDP. `await start(host, port)`, then
    `connected` is set once the server acknowledged its Hello; `await stop()`."""

    def __init__(
        self,
        device_id: bytes,
        device_key: ec.EllipticCurvePrivateKey,
        server_public_key: ec.EllipticCurvePublicKey,
        *,
        application: Application | None = None,
        faults: UdpFaults | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        on_function: Callable[[str, bytes], int] | None = None,
        personality: UdpPersonality = ARGON_4,
    ) -> None:
        self.device_id = device_id
        self.personality = personality
        self.device_key = device_key
        self.server_public_key = server_public_key
        self.application = application or default_udp_application()
        self.faults = faults or UdpFaults()
        self._chance = random.Random(self.faults.seed)
        self._random = random_bytes
        self._on_function = on_function or self._default_function
        self._endpoint: ClientEndpoint | None = None
        self._conn: DatagramDeviceConnection | None = None
        self._socket: _Socket | None = None
        self._held: list[bytes] = []  # a datagram kept back to be sent after the next (reordering)
        self._server: tuple[str, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.session: Session | None = None
        self.connected = asyncio.Event()
        self.failure: str | None = None
        self.received_events: list[tuple[str, bytes]] = []
        self.functions_called: list[tuple[str, bytes]] = []
        self.datagrams_sent = 0
        self.datagrams_dropped = 0
        #: The user part it runs (None: the one it started with), the updates it applied, and the resets
        #: without one by reason.
        self.image: bytes | None = None
        self.updates_applied = 0
        self.update_failures: dict[str, int] = {}
        self._rebooting: asyncio.Task[None] | None = None

    @property
    def connection(self) -> DatagramDeviceConnection | None:
        return self._conn

    # -- life -------------------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        """Open a socket and start a full handshake."""
        self._server = (host, port)
        await self._open_socket()
        now = _now()
        self._endpoint = ClientEndpoint(
            self.device_key, self.server_public_key, now=now, random_bytes=self._random, config=self._dtls_config()
        )
        self._conn = None
        self._pump(now)

    async def move(self, *, resume: bool = True, to: tuple[str, int] | None = None) -> None:
        """Change address mid-session: a new socket (a new source port), and, with `resume`, the session
        carried on as the firmware does after a reconnect: its saved keys, no handshake, and its records marked
        as the personality's (type 253 on 4.x, type 254 with the device id on 2.x).
        `to`: the server's address from here on (another node of the cloud)."""
        if to is not None:
            self._server = to
        await self._open_socket()
        if resume and self._endpoint is not None and self._endpoint.established:
            now = _now()
            session = self._endpoint.export_session()
            self._endpoint = ClientEndpoint.resume(
                session,
                self.device_key,
                now=now,
                random_bytes=self._random,
                config=self._dtls_config(),
                move=self.personality.move,
                device_id=self.device_id,
            )
            if self._conn is not None and not self._conn.closed:
                self._conn.resumed(now)
                self._pump(now)

    def _dtls_config(self) -> ClientConfig:
        return ClientConfig(offer_connection_id=self.personality.connection_id)

    async def stop(self) -> None:
        if self._rebooting is not None:
            self._rebooting.cancel()
            self._rebooting = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._socket is not None and self._socket.transport is not None:
            self._socket.transport.close()
        self._socket = None
        await asyncio.sleep(0)

    async def _open_socket(self) -> None:
        assert self._server is not None
        old = self._socket
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(lambda: _Socket(self), remote_addr=self._server)
        self._socket = protocol
        if old is not None and old.transport is not None:
            old.transport.close()

    # -- the application --------------------------------------------------------------------------

    def publish(self, name: str, data: str | None = None) -> None:
        conn = self._conn
        if conn is None:
            raise LocalProtocolError("the device is not connected")
        conn.publish(name, data, _now())
        self._pump(_now())

    def _default_function(self, name: str, argument: bytes) -> int:
        if name == "setArg":
            kind, _ = self.application.variables["lastArg"]
            self.application.variables["lastArg"] = (kind, argument.decode("utf-8", "replace"))
        return len(argument)

    # -- the cores ---------------------------------------------------------------------------------

    def _arrived(self, data: bytes) -> None:
        if self._drop():
            return
        endpoint = self._endpoint
        if endpoint is None:
            return
        now = _now()
        try:
            endpoint.receive_datagram(data, now)
        except RemoteDtlsError as exc:
            self.failure = f"{exc.step.value}: {exc.reason.value}: {exc}"
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Act on what the cores say, send what they queued, re-arm the timer."""
        endpoint = self._endpoint
        if endpoint is None:
            return
        while (event := endpoint.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.session = event.session
                self._conn = DatagramDeviceConnection(
                    self.device_id,
                    now,
                    firmware=self.personality.firmware,
                    application=self.application,
                    rng=self._random,
                    check_update=check_image(self.personality.firmware),
                )
                self._conn.start(now)
            elif isinstance(event, ApplicationDataReceived) and self._conn is not None and not self._conn.closed:
                try:
                    self._conn.receive_message(event.data, now)
                except RemoteProtocolError as exc:
                    self.failure = f"{exc.step.value}: {exc.reason.value}: {exc}"
            elif isinstance(event, DtlsFailed):
                self.failure = f"{event.step.value}: {event.reason.value}: {event.detail}"
        conn = self._conn
        if conn is not None:
            while (message_event := conn.next_event()) is not None:
                if isinstance(message_event, ServerHelloReceived):
                    self.connected.set()
                elif isinstance(message_event, FunctionCalled):
                    self.functions_called.append((message_event.name, message_event.argument))
                    value = self._on_function(message_event.name, message_event.argument)
                    conn.respond_function(message_event.request, value)
                elif isinstance(message_event, EventReceived):
                    self.received_events.append((message_event.name, message_event.data))
                elif isinstance(message_event, DeviceReset):
                    self._reset(message_event)
                elif isinstance(message_event, SessionFailed):
                    self.failure = f"{message_event.step.value}: {message_event.reason.value}: {message_event.detail}"
                    self.connected.clear()
            if endpoint.established:
                # What the device queued goes out even when it then closed: the firmware writes its answer to
                # UpdateDone before it resets (DO `chunked_transfer.cpp`), as it writes any reply before it ends.
                for message in conn.messages_to_send(now):
                    endpoint.send_application_data(message, now)
        for datagram in endpoint.datagrams_to_send():
            self._send(datagram)
        self._arm(now)

    def _reset(self, event: DeviceReset) -> None:
        """The end of an update: the image (when valid) runs after the reboot, which starts a new session with a
        full handshake, as the firmware's restart does."""
        self.connected.clear()
        if event.image is not None:
            # The device's own check passed: it is a module.
            install_user_part(self.application, self.personality.firmware, event.image)
            self.image = event.image
            self.updates_applied += 1
        else:
            self.update_failures[event.reason] = self.update_failures.get(event.reason, 0) + 1
        if self._server is not None:
            self._rebooting = asyncio.get_running_loop().create_task(self.start(*self._server))

    def _arm(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = [t for t in (self._endpoint.get_timer() if self._endpoint else None,) if t is not None]
        if self._conn is not None and (conn_due := self._conn.get_timer()) is not None:
            due.append(conn_due)
        if due:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_at(loop.time() + max(0.0, min(due) - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = _now()
        if self._endpoint is not None:
            self._endpoint.handle_timer(now)
        if self._conn is not None and not self._conn.closed:
            self._conn.handle_timer(now)
        self._pump(now)

    # -- faults -----------------------------------------------------------------------------------

    def _drop(self) -> bool:
        if self.faults.loss and self._chance.random() < self.faults.loss:
            self.datagrams_dropped += 1
            return True
        return False

    def _send(self, datagram: bytes) -> None:
        socket = self._socket
        if socket is None or socket.transport is None:
            return
        if self._drop():
            return
        copies = 2 if self.faults.duplicate and self._chance.random() < self.faults.duplicate else 1
        if self.faults.reorder and not self._held and self._chance.random() < self.faults.reorder:
            self._held.append(datagram)  # goes out after the next one
            return
        for _ in range(copies):
            socket.transport.sendto(datagram)
            self.datagrams_sent += 1
        held, self._held = self._held, []
        for late in held:
            socket.transport.sendto(late)
            self.datagrams_sent += 1
