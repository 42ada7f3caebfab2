"""UDP device server (port 5684): DTLS 1.2 for the Electron and Gen 3, and the same cloud as TCP devices.

One socket serves every UDP device. A datagram finds its session by the connection id it carries (so a device
that changes address carries on), else by its source address; a ClientHello starts a handshake only once its
address has echoed a cookie, and until then the answer is a HelloVerifyRequest no larger than the ClientHello
(udp-dtls.md "Security"). Each session is a `DatagramLink`: a `DeviceProtocol` (the TCP link's events,
requests, OTA, diagnostics, all of it) whose stream is a DTLS endpoint and whose core is
`DatagramServerConnection`. Every attempt ends in one record: connected, or failed with the step and reason
the DTLS or the message core reported.

Sessions are kept after their link ends (an idle device, a cloud disconnect): Device OS resumes a saved session
with no handshake at all (udp-dtls.md §1.4), so a record on a known connection id brings the link back. With a
store, a record on a connection id no link here holds is looked up there, whichever node saved it; the lookups
an unauthenticated datagram can cause are bounded (a cache of the ids not found, misses limited per address, a
bound on lookups under way). Each node writes only sequence numbers from blocks it reserved in the store, so a
session that moves between nodes never repeats a nonce.

Device OS ≤ 2.x takes no connection id: its session is kept under 8 bytes of the server's that never go on the
wire, and when the device resumes it (maybe from a new address) its records come as type 254 with its device
id appended (udp-dtls.md §1.4). The id is only a hint: the device's live link, or its sessions in the store
(within the same bounds), are tried, and a session moves or resumes only on a record that authenticates under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

from cryptography.hazmat.primitives.asymmetric import ec

from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, UdpSession
from cyan.dtls import (
    DEFAULT_SEQUENCE_GAP,
    AlertReceived,
    ApplicationDataReceived,
    CookieVerifier,
    DeviceKeyPresented,
    HandshakeCompleted,
    RecordDiscarded,
    RemoteDtlsError,
    ServerEndpoint,
    Session,
    SessionOpener,
    connection_id_of,
    is_client_hello,
    move_device_id_of,
)
from cyan.dtls import ConnectionClosed as DtlsClosed
from cyan.dtls import ConnectionFailed as DtlsFailed
from cyan.dtls import Reason as DtlsReason
from cyan.dtls import ServerConfig as DtlsConfig
from cyan.dtls import Step as DtlsStep
from cyan.protocol import (
    DeviceIdentified,
    Event,
    Hello,
    HelloReceived,
    OtaConfig,
    OtaOutcome,
    OtaV3Config,
    PrivateKeyOperationNeeded,
    Reason,
    RemoteProtocolError,
)
from cyan.protocol.datagram import DatagramConfig, DatagramServerConnection
from cyan.protocol.messages import parse_hello
from cyan.tasks import TaskSet

from .device_server import AddressLimits, CloudPort, DeviceProtocol, _AddressGate, _KeyCallback

__all__ = ["DatagramLink", "DatagramServer", "Recorder", "StoredSession", "UdpSessionPort"]

_T = TypeVar("_T")

log = logging.getLogger("cyan.server.udp")
#: The clock of every deadline (see device_server): only moves forward.
_now = time.monotonic

_Address = tuple[Any, ...]
#: Takes one entry of a session recording (see `DatagramServer`'s `recorder`).
Recorder = Callable[[dict[str, Any]], None]

#: Write sequence numbers a node reserves at a time in the store for a session it holds; the next block is
#: reserved when half of this one is used.
SEQUENCE_BLOCK = 1 << 16
#: Messages wait, rather than run into the end of the block, when fewer numbers than this are left in it.
_SEQUENCE_MARGIN = 256
#: The shortest datagram that could be a CID record that authenticates (13-byte header, the 8-byte CID, the
#: 8-byte explicit nonce, a content type, the 8-byte tag): nothing shorter is looked up.
_MIN_CID_RECORD = 13 + 8 + 8 + 1 + 8
#: The shortest type-254 datagram that could authenticate (13-byte header, the 8-byte explicit nonce, a byte of
#: data, the 8-byte tag, the 12-byte device id and its length): nothing shorter is looked up.
_MIN_MOVE_RECORD = 13 + 8 + 1 + 8 + 12 + 1
#: Datagrams held for one connection id while it is looked up.
_MAX_HELD = 8
#: A device's stored sessions tried against its type-254 record, the last saved first.
_MAX_DEVICE_SESSIONS = 4


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A DTLS session a device may resume without a handshake, and who it was (udp-dtls.md §1.4): Device OS
    may resume with no Hello at all, so the device id and the Hello it last said are kept with the keys."""

    session: Session
    device_id: str | None = None
    hello: Hello | None = None
    #: What the session is kept and found under: its connection id, or for a device that takes none (Device
    #: OS ≤ 2.x) 8 bytes of the server's that never go on the wire.
    key: bytes = b""

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.session.connection_id)


class UdpSessionPort(Protocol):
    """Where the sessions are kept across restarts: `cyan.app.DeviceGateway`, over the store."""

    async def save_udp_session(self, session: UdpSession) -> None: ...

    async def find_udp_session(self, connection_id: bytes) -> UdpSession | None: ...

    async def find_udp_sessions_of_device(self, device_id: str, *, limit: int) -> list[UdpSession]: ...

    async def reserve_udp_sequences(self, connection_id: bytes, count: int, *, floor: int = 0) -> int | None: ...

    async def prune_udp_sessions(self, *, before: datetime) -> int: ...

    async def drop_udp_session(self, connection_id: bytes) -> None: ...


class _MissGate:
    """Lookups that found nothing, per address (a token bucket): an address out of tokens gets no lookup. A
    lookup is charged when it starts and refunded when it finds the session, so lookups under way count too."""

    __slots__ = ("_buckets", "_limits", "_max_tracked")

    def __init__(self, limits: AddressLimits, max_tracked: int = 100_000) -> None:
        self._limits = limits
        self._max_tracked = max_tracked
        self._buckets: dict[str, tuple[float, float]] = {}

    def _tokens(self, host: str, now: float) -> float:
        limits = self._limits
        tokens, last = self._buckets.get(host, (float(limits.burst), now))
        return min(float(limits.burst), tokens + (now - last) * limits.per_second)

    def allows(self, host: str, now: float) -> bool:
        return self._tokens(host, now) >= 1.0

    def charge(self, host: str, now: float, tokens: float = 1.0) -> None:
        left = self._tokens(host, now) - tokens
        if host not in self._buckets and len(self._buckets) >= self._max_tracked:
            del self._buckets[next(iter(self._buckets))]  # the oldest tracked first
        self._buckets[host] = (min(float(self._limits.burst), max(0.0, left)), now)

    def refund(self, host: str, now: float) -> None:
        self.charge(host, now, -1.0)


def _address_text(address: _Address) -> str:
    return f"{address[0]}:{address[1]}"


def _address_bytes(address: _Address) -> bytes:
    return _address_text(address).encode()


class DatagramLink(DeviceProtocol):
    """One UDP device session: a DTLS endpoint for its stream, the datagram core for its messages, and
    everything else of `DeviceProtocol`."""

    __slots__ = ("_address", "_ended", "_endpoint", "_reserving", "_resumed_from", "_udp", "indexed_device", "key")

    _message_limit = None  # a DTLS record carries what the device's Hello says it takes

    def __init__(
        self,
        server: DatagramServer,
        endpoint: ServerEndpoint,
        address: _Address,
        now: float,
        *,
        resumed_from: StoredSession | None = None,
        key: bytes = b"",
    ) -> None:
        super().__init__(server)
        self._udp = server
        self._endpoint = endpoint
        #: What the session is kept under (`StoredSession.key`).
        self.key = key or (resumed_from.key if resumed_from is not None else endpoint.connection_id)
        #: The device id its type-254 records are routed to it by, when the server filed it so.
        self.indexed_device: bytes | None = None
        self._address = address
        self._ended = False
        #: A block of sequence numbers is being reserved in the store.
        self._reserving = False
        self._resumed_from = resumed_from
        self._started = now
        self._started_at = time.time()
        self.peer_address = _address_text(address)
        if resumed_from is not None:
            self._conn = self._new_connection(endpoint.peer_public_key_der, now)

    @property
    def endpoint(self) -> ServerEndpoint:
        return self._endpoint

    @property
    def address(self) -> _Address:
        return self._address

    def _new_connection(self, key_der: bytes, now: float) -> DatagramServerConnection:
        stored = self._resumed_from
        return DatagramServerConnection(
            key_der,
            now,
            config=self._udp.config,
            rng=self._udp.random_bytes,
            resumed_device_id=None if stored is None else stored.device_id,
            resumed_hello=None if stored is None else stored.hello,
        )

    # -- input ----------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, address: _Address, now: float) -> bool:
        """Feed a datagram from `address`; whether it carried application data that authenticated."""
        if self._ended:
            return False
        try:
            self._endpoint.receive_datagram(data, now)
        except RemoteDtlsError as exc:
            self._dtls_events(address, now)
            self._dtls_failed(exc.step, exc.reason, str(exc))
            return False
        delivered = self._dtls_events(address, now)
        if not self._ended:
            self._flush()
        return delivered

    def _dtls_events(self, address: _Address, now: float) -> bool:
        endpoint = self._endpoint
        delivered = False
        while (event := endpoint.next_event()) is not None and not self._ended:
            if isinstance(event, DeviceKeyPresented):
                # DTLS names no device: the key is checked against the id its Hello names, by the same key
                # policy as TCP devices (`DeviceIdentified` -> `_decide`). Here it has only proved it holds it.
                endpoint.accept(now)
            elif isinstance(event, HandshakeCompleted):
                self._conn = self._new_connection(event.peer_public_key_der, now)
                self._udp.session_established(self, event.session)
            elif isinstance(event, ApplicationDataReceived):
                delivered = True
                if address != self._address:
                    # Only an authenticated record moves a session: a forged source address moves nothing.
                    self._udp.moved(self, address)
                    self._address = address
                    self.peer_address = _address_text(address)
                conn = self._conn
                if conn is None or conn.closed:
                    continue
                assert isinstance(conn, DatagramServerConnection)
                unix_time = self._udp.unix_time()
                try:
                    conn.receive_message(event.data, now, unix_time=unix_time)
                except RemoteProtocolError as exc:
                    self._handle_events()
                    self._fail(exc.step, exc.reason, str(exc))
                    return True
                self._handle_events()
            elif isinstance(event, DtlsFailed):
                self._dtls_failed(event.step, event.reason, event.detail)
            elif isinstance(event, DtlsClosed):
                # close_notify: the device ended the session on purpose; it will not resume it.
                self._udp.drop_session(self.key)
                self._close()
            elif isinstance(event, AlertReceived):
                log.debug("device %s sent alert %d/%d", self.device_id, event.level, event.description)
            elif isinstance(event, RecordDiscarded):
                log.debug("%s: record discarded (%s: %s)", self.peer_address, event.reason.value, event.detail)
        return delivered

    def _dtls_failed(self, step: DtlsStep, reason: DtlsReason, detail: str) -> None:
        self._send_datagrams()  # a fatal alert, if one was queued
        if self._session_started:
            log.info("device %s session ended: %s at %s: %s", self.device_id, reason.value, step.value, detail)
        else:
            self._record_attempt(AttemptOutcome.FAILED, step, reason, detail)
        self._close()

    # -- output and timers ----------------------------------------------------------------------

    def _flush(self) -> bool:
        """Send what the core queued over DTLS and arm the timer. False: a datagram has no stream ACK to
        carry (see `DeviceProtocol.data_received`)."""
        conn = self._conn
        endpoint = self._endpoint
        now = _now()
        if isinstance(conn, DatagramServerConnection) and endpoint.established and self._udp.may_write(self):
            for message in conn.messages_to_send(now):
                try:
                    endpoint.send_application_data(message, now)
                except OverflowError as exc:
                    # Past the block reserved for this node: never send it. The session stays in the store;
                    # the device's next record resumes it with a fresh block.
                    log.warning("device %s: %s; the link ends", self.device_id, exc)
                    self._send_datagrams()
                    self._close()
                    return False
        self._send_datagrams()
        self._arm_timer()
        return False

    def _send_datagrams(self) -> None:
        for datagram in self._endpoint.datagrams_to_send():
            self._udp.send(datagram, self._address)

    def _arm_timer(self) -> None:
        if self._ended:
            return
        candidates = [self._endpoint.get_timer()]
        if self._conn is not None:
            candidates.append(self._conn.get_timer())
        if self._ota is not None:
            candidates.append(self._ota.get_timer())
        due = min((t for t in candidates if t is not None), default=None)
        if self._timer is not None:
            if due is not None and self._timer_due <= due:
                return  # fires early at worst, finds nothing due, and re-arms
            self._timer.cancel()
            self._timer = None
        if due is not None:
            loop = asyncio.get_running_loop()
            self._timer_due = due
            self._timer = loop.call_at(loop.time() + max(0.0, due - _now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._ended:
            return
        now = _now()
        self._udp.record({"t": now, "op": "timer", "port": self._address[1]})
        self._endpoint.handle_timer(now)
        self._dtls_events(self._address, now)
        conn = self._conn
        if not self._ended and conn is not None and not conn.closed:
            conn.handle_timer(now)
            self._handle_events()
            if self._ota is not None:
                self._ota.handle_timer(now, backlog=0)
                self._ota_step()
        if not self._ended:
            self._flush()

    # -- events the UDP link treats its own way --------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, HelloReceived) and self._session_started:
            # A Hello within a session (after a resumption whose app state changed): not a new session.
            self.hello = event.hello
            self._udp.remember_hello(self, event.hello)
            self._cloud.heard_from(self)
            return
        if isinstance(event, PrivateKeyOperationNeeded):
            return  # no RSA over UDP: the DTLS core does its own P-256 work
        super()._on_event(event)
        if isinstance(event, HelloReceived):
            self._udp.remember_hello(self, event.hello)
            if not self._quarantined:
                self._udp.index_device(self)

    async def _decide(self, event: DeviceIdentified) -> None:
        conn = self._conn
        assert isinstance(conn, DatagramServerConnection)
        try:
            decision, record = await self._cloud.authorize(event.device_id, event.public_key_der, self.peer_address)
        except Exception as exc:
            log.exception("could not decide on device %s", event.device_id)
            if not conn.closed:
                conn.reject(Reason.SERVER_ERROR, f"the server could not look the device up: {exc}")
                self._handle_events()
            return
        if conn.closed or self._ended:
            return
        self._presented, self._stored = decision.presented_fingerprint, decision.stored_fingerprint
        if decision.trusted_key_der is None or decision.trusted_key_der != event.public_key_der:
            # A refused device's session is forgotten, so that its next records resume nothing (and ask for
            # no decision each). On TCP the server encrypts to the trusted key and a device without it fails;
            # over DTLS the device has proved the key it presented, so trusting another is refusing this one.
            self._udp.drop_session(self.key)
            if decision.trusted_key_der is None:
                assert decision.reason is not None
                conn.reject(decision.reason, decision.detail)
            else:
                conn.reject(Reason.KEY_MISMATCH, "the device proved a key other than the one the key policy trusts")
            self._handle_events()
            return
        self._record = record
        self._quarantined = decision.quarantined
        now = _now()
        self._udp.record({"t": now, "op": "accept_device", "port": self._address[1]})
        self._drive(lambda: conn.accept_device(now))

    # -- ending ---------------------------------------------------------------------------------

    def _close(self) -> None:
        if self._ended:
            return
        self._ended = True
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.close()
        self._ota_lost()
        self._disarm()
        self._end_session()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"device {self.device_id} disconnected"))
        self._pending.clear()
        self._udp.forget(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._close()

    async def call_function(self, name: str, argument: str, timeout: float) -> int:
        self._udp.record(
            {"t": _now(), "op": "call", "port": self._address[1], "name": name, "arg": argument, "timeout": timeout}
        )
        return await super().call_function(name, argument, timeout)

    async def read_variable(self, name: str, timeout: float) -> tuple[bytes, Any]:
        self._udp.record({"t": _now(), "op": "read", "port": self._address[1], "name": name, "timeout": timeout})
        return await super().read_variable(name, timeout)

    def update_firmware(
        self, image: bytes, *, fast: bool | None, progress: Callable[[int, int], None] | None = None
    ) -> asyncio.Future[OtaOutcome]:
        # Over UDP every legacy chunk is confirmable and acknowledged (udp-dtls.md §1.5): never the fast mode.
        self._udp.record({"t": _now(), "op": "update", "port": self._address[1], "image": image.hex(), "fast": False})
        return super().update_firmware(image, fast=False, progress=progress)


class DatagramServer(asyncio.DatagramProtocol):
    """Listens for UDP devices and serves each with a `DatagramLink`.

    `random_bytes` (connection ids, cookies, handshakes, message ids) and the session map are the server's.
    With `sessions`, each session is also saved there when it starts, when its device says its Hello and when
    its link ends, and a record on a connection id no link here holds is looked up there: a restarted server,
    or another node, resumes it. Every node writes only sequence numbers from blocks it reserved there, so a
    session that moves between nodes, or outlives a killed one, never reuses a nonce.

    `recorder`, when given, is handed every input of every session (datagrams in with the time and wall
    time they were read at, timers, key decisions, API requests), every datagram out and every random draw:
    enough to replay a session byte for byte without the device (tests/vectors/udp-*). It holds the
    session keys' secrets: a debugging and testing aid, never for a production fleet."""

    def __init__(
        self,
        cloud: CloudPort,
        server_key: ec.EllipticCurvePrivateKey,
        *,
        host: str = "0.0.0.0",
        port: int = 5684,
        config: DatagramConfig | None = None,
        dtls_config: DtlsConfig | None = None,
        ota_config: OtaConfig | None = None,
        ota_v3_config: OtaV3Config | None = None,
        address_limits: AddressLimits | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        max_sessions: int = 200_000,
        session_max_age: timedelta = timedelta(days=30),
        recorder: Recorder | None = None,
        wall_clock: Callable[[], float] = time.time,
        sessions: UdpSessionPort | None = None,
        miss_limits: AddressLimits | None = None,
        max_lookups: int = 64,
        unknown_ttl: float = 10.0,
        max_unknown: int = 65_536,
        prune_interval: float = 3600.0,
    ) -> None:
        self.cloud = cloud
        self.server_key = server_key
        self.host = host
        self.port = port
        self.config = config or DatagramConfig()
        self.dtls_config = dtls_config or DtlsConfig()
        # A legacy chunk's answer is one confirmable message, which the device sends again after ~5, ~15 and
        # ~35 s (DO `coap_channel.h`): the wait for it is as long as the device's 30 s update timer allows.
        self.ota_config = ota_config or OtaConfig(chunk_timeout=28.0)
        self.ota_v3_config = ota_v3_config or OtaV3Config()
        self.address_limits = address_limits or AddressLimits()
        self._gate = _AddressGate(self.address_limits)
        self._recorder = recorder
        self._wall_clock = wall_clock
        self._random = random_bytes
        self._cookies = CookieVerifier(self.random_bytes(32))
        self._transport: asyncio.DatagramTransport | None = None
        self._by_address: dict[_Address, DatagramLink] = {}
        #: Live links by session key (`StoredSession.key`: the connection id, when the device takes one).
        self._by_cid: dict[bytes, DatagramLink] = {}
        #: Live links of devices without connection ids, by the 12-byte device id their 254 records carry.
        self._by_device: dict[bytes, DatagramLink] = {}
        self._sessions: dict[bytes, StoredSession] = {}
        self._max_sessions = max_sessions
        #: Sessions not saved for this long are not resumed (and are deleted at start): a device away that long
        #: does a full handshake, and the store does not keep every device that ever spoke.
        self._session_max_age = session_max_age
        self._tasks = TaskSet(log, "cyan-udp")
        self._store = sessions
        #: Saves of sessions: drained at `stop()` (the decisions under way are cancelled instead).
        self._writes = TaskSet(log, "cyan-udp-sessions")
        #: Connection ids being looked up in the store, with the datagrams that came for them meanwhile.
        self._lookups: dict[bytes, list[tuple[bytes, _Address]]] = {}
        self._max_lookups = max_lookups
        #: Connection ids the store did not have, until when (insertion order: the oldest first).
        self._unknown: dict[bytes, float] = {}
        self._unknown_ttl = unknown_ttl
        #: The same for device ids of type-254 records: being looked up, and not found (no session at all).
        self._device_lookups: dict[bytes, list[tuple[bytes, _Address]]] = {}
        self._unknown_devices: dict[bytes, float] = {}
        #: A device's sessions found in the store that a record naming it did not open under, until when:
        #: the next records naming it are tried against them with no read.
        self._device_candidates: dict[bytes, tuple[float, list[tuple[StoredSession, SessionOpener]]]] = {}
        self._max_unknown = max_unknown
        self._misses = _MissGate(miss_limits or AddressLimits(burst=20, per_second=2.0))
        self._prune_interval = prune_interval
        self.datagrams_in = 0
        self.datagrams_out = 0
        #: Sessions looked up in the store; of those, found and resumed here; datagrams refused a lookup.
        self.lookups = 0
        self.lookups_found = 0
        self.lookups_refused = 0

    def random_bytes(self, count: int) -> bytes:
        data = self._random(count)
        if self._recorder is not None:
            self._recorder({"t": _now(), "op": "random", "hex": data.hex()})
        return data

    def unix_time(self) -> float:
        value = self._wall_clock()
        self.record({"t": _now(), "op": "unix_time", "value": value})
        return value

    def record(self, entry: dict[str, Any]) -> None:
        if self._recorder is not None:
            self._recorder(entry)

    # -- LinkHost ---------------------------------------------------------------------------------

    def spawn(self, work: Awaitable[None], what: str) -> None:
        self._tasks.spawn(work, what)

    def run_private_key_operation(self, needed: PrivateKeyOperationNeeded, callback: _KeyCallback) -> None:
        callback(RuntimeError("no RSA private-key operation over UDP"))

    def forget(self, link: DeviceProtocol) -> None:
        assert isinstance(link, DatagramLink)
        if self._by_address.get(link.address) is link:
            del self._by_address[link.address]
        device = link.indexed_device
        if device is not None and self._by_device.get(device) is link:
            del self._by_device[device]
        endpoint = link.endpoint
        cid = link.key
        if self._by_cid.get(cid) is link:
            del self._by_cid[cid]
            if endpoint.established and cid in self._sessions:
                # The counters as they are now: the device resumes from here (udp-dtls.md §1.4).
                self._sessions[cid] = replace(self._sessions[cid], session=endpoint.export_session())
                self._save(cid, endpoint.write_limit)
                if self._store is not None:
                    # The store has it: a resume here reserves its sequence numbers there, as on any node.
                    del self._sessions[cid]

    def may_write(self, link: DatagramLink) -> bool:
        """Whether `link` may write records now: enough of its block of sequence numbers is left. The next
        block is reserved in the store when half of this one is used."""
        endpoint = link.endpoint
        left = endpoint.write_limit - endpoint.next_write_sequence
        if self._store is not None and left < SEQUENCE_BLOCK // 2 and not link._reserving:
            link._reserving = True
            self._tasks.spawn(self._reserve_more(link), "reserve UDP sequence numbers")
        return left > _SEQUENCE_MARGIN

    async def _reserve_more(self, link: DatagramLink) -> None:
        assert self._store is not None
        cid = link.key
        try:
            limit = await self._store.reserve_udp_sequences(cid, SEQUENCE_BLOCK)
        except Exception as exc:
            log.warning("device %s: could not reserve sequence numbers: %s", link.device_id, exc)
            limit = None
        finally:
            link._reserving = False
        if limit is None or link._ended:
            return  # the session is gone from the store: the link writes to the end of its block, then ends
        link.endpoint.limit_writes(limit - SEQUENCE_BLOCK, limit)
        link._flush()

    # -- what links tell the server ----------------------------------------------------------------

    def session_established(self, link: DatagramLink, session: Session) -> None:
        # A device without connection ids (Device OS ≤ 2.x) has its session kept as well, under the id the
        # server would have assigned (`StoredSession.key`), and found by its device id when it resumes.
        cid = link.key
        old = self._by_cid.get(cid)
        if old is not None and old is not link:
            old.close()
        self._by_cid[cid] = link
        if len(self._sessions) >= self._max_sessions:
            self.drop_session(next(iter(self._sessions)))  # the oldest first
        self._sessions[cid] = StoredSession(session, key=cid)
        limit = None
        if self._store is not None:
            # A new session's first block: the store has no record of it before this save.
            link.endpoint.limit_writes(0, SEQUENCE_BLOCK)
            limit = SEQUENCE_BLOCK
        self._save(cid, limit)

    def remember_hello(self, link: DatagramLink, hello: Hello) -> None:
        cid = link.key
        stored = self._sessions.get(cid)
        if stored is not None:
            device_id: str | None = link.device_id
            if link._quarantined and not link.endpoint.connection_id:
                # A client in quarantine proved a key, not the device: its session is not filed under the
                # device's id, where a 254 record of the device looks (and only the last few are tried).
                device_id = None
            self._sessions[cid] = replace(stored, device_id=device_id, hello=hello)
            self._save(cid, link.endpoint.write_limit)

    @staticmethod
    def _device_key(link: DatagramLink) -> bytes | None:
        """The 12 bytes a type-254 record of the link's device carries, if it has no connection id."""
        if link.endpoint.connection_id or not link.device_id:
            return None
        try:
            device = bytes.fromhex(link.device_id)
        except ValueError:
            return None
        return device or None

    def index_device(self, link: DatagramLink) -> None:
        """The link's device (accepted, not in quarantine) takes no connection id: its type-254 records come
        here, whatever their address (udp-dtls.md §1.4)."""
        device = self._device_key(link)
        if device is not None:
            self._file_device(link, device)

    def _file_device(self, link: DatagramLink, device: bytes) -> None:
        old = link.indexed_device
        if old is not None and old != device and self._by_device.get(old) is link:
            del self._by_device[old]
        link.indexed_device = device
        self._by_device[device] = link

    def moved(self, link: DatagramLink, address: _Address) -> None:
        if self._by_address.get(link.address) is link:
            del self._by_address[link.address]
        other = self._by_address.get(address)
        if other is not None and other is not link:
            other.close()
        self._by_address[address] = link

    def drop_session(self, cid: bytes) -> None:
        if self._sessions.pop(cid, None) is not None and self._store is not None:
            self._writes.spawn(self._store.drop_udp_session(cid), "forget a UDP session")

    def _save(self, cid: bytes, sequence_limit: int | None) -> None:
        stored = self._sessions.get(cid)
        if stored is None or self._store is None:
            return
        record = UdpSession(
            connection_id=cid,
            session=stored.session.encode(),
            updated_at=datetime.now(UTC),
            device_id=stored.device_id,
            hello=None if stored.hello is None else stored.hello.encode(),
            sequence_limit=sequence_limit,
        )
        self._writes.spawn(self._store.save_udp_session(record), "save a UDP session")

    def send(self, datagram: bytes, address: _Address) -> None:
        self.record({"t": _now(), "op": "out", "port": address[1], "hex": datagram.hex()})
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.sendto(datagram, address)
            self.datagrams_out += 1

    # -- asyncio ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram transport (not every loop's subclasses asyncio.DatagramTransport, so no isinstance check).
        self._transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: _Address) -> None:
        if self._transport is None:
            return  # stopping
        self.datagrams_in += 1
        now = _now()
        self.record({"t": now, "op": "in", "port": addr[1], "hex": data.hex()})
        cid = connection_id_of(data)
        if cid is None and (device := move_device_id_of(data)) is not None:
            self._move_record(data, device, addr, now)
            return
        link = self._by_cid.get(cid) if cid is not None else None
        if link is None:
            link = self._by_address.get(addr)
        if is_client_hello(data):
            self._client_hello(data, addr, link, now)
            return
        if link is None:
            if self._store is not None:
                self._look_up(cid, data, addr, now)
                return
            link = self._resume(cid, addr, now)
            if link is None:
                return
        link.receive_datagram(data, addr, now)

    def _client_hello(self, data: bytes, addr: _Address, link: DatagramLink | None, now: float) -> None:
        check = self._cookies.check(data, _address_bytes(addr), now)
        if check.reply is not None:
            # An address that has not proved it receives what we send gets this and nothing larger.
            self.send(check.reply, addr)
            return
        if not check.verified:
            return
        if link is not None and link.endpoint.client_random == check.client_random:
            link.receive_datagram(data, addr, now)  # a retransmission of the handshake under way
            return
        if not self._gate.admit(str(addr[0]), now):
            self.cloud.record_attempt(
                ConnectionAttempt(
                    datetime.now(UTC),
                    _address_text(addr),
                    AttemptOutcome.FAILED,
                    DtlsStep.CLIENT_HELLO.value,
                    "rate_limited",
                    f"more new handshakes from {addr[0]} than the limit",
                    duration=0.0,
                )
            )
            return
        if link is not None and self._by_address.get(addr) is link:
            del self._by_address[addr]  # a new handshake from this address replaces what it had here
        key = self._new_cid()
        endpoint = ServerEndpoint(
            self.server_key, now=now, random_bytes=self.random_bytes, config=self.dtls_config, connection_id=key
        )
        fresh = DatagramLink(self, endpoint, addr, now, key=key)
        self._by_address[addr] = fresh
        fresh.receive_datagram(data, addr, now)

    def _new_cid(self) -> bytes:
        while True:
            cid = self.random_bytes(self.dtls_config.connection_id_size)
            if cid not in self._by_cid and cid not in self._sessions:
                return cid

    def _look_up(self, cid: bytes | None, data: bytes, addr: _Address, now: float) -> None:
        """A record for no live link, with a store: look its connection id up there (another node may have
        saved it), unless that is known to be pointless. Nothing here is authenticated yet, so an attacker's
        datagram costs at most one read: ids not found are remembered, an address whose lookups keep missing
        gets none, and only `max_lookups` are under way at once."""
        if cid is None or self._held(self._lookups, cid, data, addr) or len(data) < _MIN_CID_RECORD:
            return
        if self._known_unknown(self._unknown, cid, now) or not self._admit_lookup(addr, now):
            return
        self._lookups[cid] = [(data, addr)]
        self._tasks.spawn(self._resume_stored(cid), "look up a UDP session")

    def _held(
        self, pending: dict[bytes, list[tuple[bytes, _Address]]], key: bytes, data: bytes, addr: _Address
    ) -> bool:
        """Whether a lookup of `key` is under way: the record then waits for it (`_MAX_HELD` at most)."""
        held = pending.get(key)
        if held is None:
            return False
        if len(held) < _MAX_HELD:
            held.append((data, addr))
        else:
            self.lookups_refused += 1
        return True

    def _known_unknown(self, unknown: dict[bytes, float], key: bytes, now: float) -> bool:
        """Whether the store was found not to have `key` a moment ago (`unknown_ttl`)."""
        until = unknown.get(key)
        if until is None:
            return False
        if until > now:
            self.lookups_refused += 1
            return True
        del unknown[key]
        return False

    def _admit_lookup(self, addr: _Address, now: float) -> bool:
        """One more store lookup for a record from `addr`: within `max_lookups` under way (by connection id and
        by device id together) and the address's budget of misses, which it is charged."""
        host = str(addr[0])
        if len(self._lookups) + len(self._device_lookups) >= self._max_lookups or not self._misses.allows(host, now):
            self.lookups_refused += 1
            return False
        self._misses.charge(host, now)
        self.lookups += 1
        return True

    async def _reserve_block(self, stored: StoredSession) -> int | None:
        """The next block of write sequence numbers for a session resumed here: above every number any node may
        have written, the stored limit, and for a session saved before there were limits, its saved counter plus
        the gap (`DEFAULT_SEQUENCE_GAP`). Its end, or None when the store no longer has the session."""
        assert self._store is not None
        floor = stored.session.write_sequence + DEFAULT_SEQUENCE_GAP
        return await self._store.reserve_udp_sequences(stored.key, SEQUENCE_BLOCK, floor=floor)

    async def _resume_stored(self, cid: bytes) -> None:
        assert self._store is not None
        stored: StoredSession | None = None
        limit: int | None = None
        try:
            record = await self._store.find_udp_session(cid)
            stored = None if record is None else self._readable(record)
            if stored is not None and not stored.session.connection_id:
                stored = None  # kept under a key that never goes on the wire: a 254 record resumes it
            if stored is not None:
                limit = await self._reserve_block(stored)
        except Exception as exc:
            log.warning("could not look up a UDP session: %s", exc)
            self._lookups.pop(cid, None)
            return
        held = self._lookups.pop(cid, [])
        now = _now()
        if self._recorder is not None:
            # What the store answered: a recording replays it in place of a store (tests/server/udp_replay.py).
            self.record(
                {
                    "t": now,
                    "op": "stored",
                    "cid": cid.hex(),
                    "session": None if stored is None else stored.session.encode().hex(),
                    "device_id": None if stored is None else stored.device_id,
                    "hello": None if stored is None or stored.hello is None else stored.hello.encode().hex(),
                    "limit": limit,
                }
            )
        if stored is None or limit is None:
            self._remember_unknown(cid, now)
            return
        if held:
            self._misses.refund(str(held[0][1][0]), now)
        if self._transport is None or not held:
            return  # stopping
        self.lookups_found += 1
        link = self._by_cid.get(cid)
        if link is None:
            link = self._resume_link(stored, held[-1][1], now, start=limit - SEQUENCE_BLOCK, limit=limit)
        for data, addr in held:
            link.receive_datagram(data, addr, _now())

    def _remember_unknown(self, cid: bytes, now: float, unknown: dict[bytes, float] | None = None) -> None:
        self._remember(self._unknown if unknown is None else unknown, cid, now + self._unknown_ttl)

    def _remember(self, memory: dict[bytes, _T], key: bytes, value: _T) -> None:
        """`memory[key] = value`, the oldest entries forgotten past `max_unknown`."""
        while len(memory) >= self._max_unknown:
            del memory[next(iter(memory))]
        memory[key] = value

    # -- Device OS ≤ 2.x: type-254 records, found by the device id they carry ---------------------------

    def _move_record(self, data: bytes, device: bytes, addr: _Address, now: float) -> None:
        """A type-254 record: a device without connection ids resuming its session, maybe from a new address
        (udp-dtls.md §1.4). The device id it carries is not authenticated, so it only says which session to
        try: the device's live link here, else its sessions in the store (looked up within the same bounds as
        connection ids). Nothing moves unless the record opens under the session's keys."""
        link = self._by_device.get(device)
        if link is not None and not link._ended:
            # A record that does not open here is dropped: the session the device holds is this one (a newer
            # one would have replaced this link), and the store's copy of it is older.
            link.receive_datagram(data, addr, now)
            return
        if self._store is None:
            self._resume_device_here(data, device, addr, now)
            return
        if self._held(self._device_lookups, device, data, addr) or len(data) < _MIN_MOVE_RECORD:
            return
        cached = self._device_candidates.get(device)
        if cached is not None:
            if cached[0] > now:
                # The device's sessions as the store had them a moment ago: tried with no read, so that a
                # flood of forgeries naming it neither reaches the store nor crowds out the device's own record.
                chosen = self._opening(cached[1], [(data, addr)])
                if chosen is None:
                    self.lookups_refused += 1
                    return
                del self._device_candidates[device]
                self._device_lookups[device] = [(data, addr)]
                self._tasks.spawn(self._resume_chosen(device, *chosen, charged=False), "resume a UDP session")
                return
            del self._device_candidates[device]
        if self._known_unknown(self._unknown_devices, device, now) or not self._admit_lookup(addr, now):
            return
        self._device_lookups[device] = [(data, addr)]
        self._tasks.spawn(self._resume_device(device), "look up a UDP device's sessions")

    @staticmethod
    def _opening(
        candidates: list[tuple[StoredSession, SessionOpener]], held: list[tuple[bytes, _Address]]
    ) -> tuple[StoredSession, _Address] | None:
        """The first session under which one of the held records authenticates, and that record's address."""
        for data, addr in held:
            for stored, opener in candidates:
                if opener.opens(data):
                    return stored, addr
        return None

    async def _resume_device(self, device: bytes) -> None:
        assert self._store is not None
        try:
            records = await self._store.find_udp_sessions_of_device(device.hex(), limit=_MAX_DEVICE_SESSIONS)
        except Exception as exc:
            log.warning("could not look up a device's UDP sessions: %s", exc)
            self._device_lookups.pop(device, None)
            return
        held = self._device_lookups.get(device, [])
        now = _now()
        readable = [s for r in records if (s := self._readable(r, key=r.connection_id)) is not None]
        # Only sessions without a connection id take type-254 records, and none that a link here holds (its
        # stored replay window is older than the link's).
        candidates = [
            (s, SessionOpener(s.session)) for s in readable if not s.session.connection_id and s.key not in self._by_cid
        ]
        live = self._by_device.get(device)
        if not candidates or self._transport is None or not held or live is not None:
            self._device_lookups.pop(device, None)
            if not candidates:
                self._remember_unknown(device, now, self._unknown_devices)
            elif live is not None:  # a handshake or another lookup got there first
                for data, addr in held:
                    live.receive_datagram(data, addr, _now())
            return
        chosen = self._opening(candidates, held)
        if chosen is None:
            # A claim that did not authenticate: the miss stays charged to its address, and the sessions are
            # kept a moment for the next records naming the device (the device's own among them, maybe).
            self._device_lookups.pop(device, None)
            self._remember(self._device_candidates, device, (now + self._unknown_ttl, candidates))
            return
        await self._resume_chosen(device, *chosen, charged=True)

    async def _resume_chosen(self, device: bytes, stored: StoredSession, addr: _Address, *, charged: bool) -> None:
        """Resume `stored`, under which a record from `addr` authenticated, in a block of sequence numbers
        reserved in the store; the records that came for the device meanwhile (held) follow it."""
        assert self._store is not None
        try:
            limit = await self._reserve_block(stored)
        except Exception as exc:
            log.warning("could not reserve sequence numbers for a UDP session: %s", exc)
            self._device_lookups.pop(device, None)
            return
        held = self._device_lookups.pop(device, [])
        now = _now()
        if charged:
            self._misses.refund(str(addr[0]), now)
        if limit is None or self._transport is None or stored.key in self._by_cid:
            return
        self.lookups_found += 1
        link = self._resume_link(stored, addr, now, start=limit - SEQUENCE_BLOCK, limit=limit)
        for data, source in held:
            link.receive_datagram(data, source, _now())

    def _resume_device_here(self, data: bytes, device: bytes, addr: _Address, now: float) -> None:
        """A type-254 record without a store: a session this process keeps for the device, if the record opens
        under one."""
        name = device.hex()
        candidates = [
            (s, SessionOpener(s.session))
            for s in self._sessions.values()
            if s.device_id == name and not s.session.connection_id
        ]
        chosen = self._opening(candidates, [(data, addr)])
        if chosen is None or chosen[0].key in self._by_cid:
            return
        stored = chosen[0]
        endpoint = ServerEndpoint.from_session(
            stored.session, self.server_key, now=now, random_bytes=self.random_bytes, config=self.dtls_config
        )
        link = DatagramLink(self, endpoint, addr, now, resumed_from=stored)
        self._by_cid[stored.key] = link
        self._by_address[addr] = link
        self._file_device(link, device)
        link.receive_datagram(data, addr, now)

    @staticmethod
    def _readable(record: UdpSession, *, key: bytes = b"") -> StoredSession | None:
        try:
            session = Session.decode(record.session)
            hello = None if record.hello is None else parse_hello(record.hello)
        except ValueError as exc:
            log.warning("a stored UDP session cannot be read, and is not resumed: %s", exc)
            return None
        return StoredSession(session, record.device_id, hello, key=key or record.connection_id)

    def _resume_link(
        self, stored: StoredSession, addr: _Address, now: float, *, start: int, limit: int
    ) -> DatagramLink:
        cid = stored.key
        endpoint = ServerEndpoint.from_session(
            stored.session,
            self.server_key,
            now=now,
            random_bytes=self.random_bytes,
            config=self.dtls_config,
            sequence_gap=0,
        )
        endpoint.limit_writes(start, limit)
        link = DatagramLink(self, endpoint, addr, now, resumed_from=stored)
        self._sessions[cid] = stored
        self._by_cid[cid] = link
        self._by_address[addr] = link
        if stored.device_id and not stored.session.connection_id:
            with contextlib.suppress(ValueError):  # a stored id that is not hex: the link is not filed
                self._file_device(link, bytes.fromhex(stored.device_id))
        return link

    def _resume(self, cid: bytes | None, addr: _Address, now: float) -> DatagramLink | None:
        """A record for no live link, without a store: a device resuming a session this process keeps
        (udp-dtls.md §1.4), or nothing."""
        stored = self._sessions.get(cid) if cid is not None else None
        if stored is None or cid is None or not stored.session.connection_id:
            return None
        endpoint = ServerEndpoint.from_session(
            stored.session, self.server_key, now=now, random_bytes=self.random_bytes, config=self.dtls_config
        )
        link = DatagramLink(self, endpoint, addr, now, resumed_from=stored)
        self._by_cid[cid] = link
        self._by_address[addr] = link
        return link

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP socket error: %s", exc)

    # -- life -------------------------------------------------------------------------------------

    async def start(self) -> None:
        # A recording may span restarts: each start is marked, and what the store holds comes in `stored`.
        self.record({"t": _now(), "op": "start", "sessions": []})
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.port = sock.getsockname()[1]
        if self._store is not None:
            await self.prune()
            self._tasks.spawn(self._prune_periodically(), "prune UDP sessions")

    async def prune(self) -> int:
        """Delete the stored sessions not saved for `session_max_age`: their devices handshake again. Every
        node does it when it starts and every `prune_interval` seconds; how many went."""
        if self._store is None:
            return 0
        try:
            pruned = await self._store.prune_udp_sessions(before=datetime.now(UTC) - self._session_max_age)
        except Exception as exc:
            log.warning("could not prune the UDP sessions: %s", exc)
            return 0
        if pruned:
            log.info("%d UDP sessions not saved for %s deleted", pruned, self._session_max_age)
        return pruned

    async def _prune_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._prune_interval)
            await self.prune()

    async def stop(self) -> None:
        # No datagram in from here on: one arriving while the sessions are saved would resume a session here.
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        # Each link's session is saved as it ends (`forget`), with its counters as they are now.
        for link in list(self._by_address.values()) + list(self._by_cid.values()):
            link.close()
        await self._tasks.cancel()
        await self._writes.drain()
        await asyncio.sleep(0)

    @property
    def connection_count(self) -> int:
        return len({id(link) for link in [*self._by_address.values(), *self._by_cid.values()]})

    def link(self, cid: bytes) -> DatagramLink | None:
        return self._by_cid.get(cid)

    def stored_session(self, cid: bytes) -> StoredSession | None:
        return self._sessions.get(cid)
