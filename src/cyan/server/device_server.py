"""TCP device server (port 5683): one `ServerConnection` per socket, events handed to the cloud.

The adapter does four things and nothing else: feed received bytes to the core, act on its events, write
what it queued in one `transport.write` (each frame whole, TCP_NODELAY; protocol.md §4, §13.1 #15), and
re-arm one timer from `get_timer()`. Every connection attempt ends in exactly one record: connected, or
failed with the step and reason the core reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import functools
import itertools
import logging
import math
import os
import queue
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.cloud.errors import DeviceTimeoutError, FunctionRefusedError, UnknownVariableError
from cyan.cloud.keypolicy import Decision
from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, DeviceRecord, LinkDiagnostics
from cyan.cloud.service import VariableValue
from cyan.coarse_timers import coarse_timers
from cyan.limits import file_limit
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
    HelloFlag,
    HelloReceived,
    LocalProtocolError,
    MessageIgnored,
    OtaConfig,
    OtaOutcome,
    OtaSender,
    OtaV3Config,
    OtaV3Sender,
    PingAnswered,
    PrivateKeyOperationNeeded,
    Reason,
    RemoteProtocolError,
    RequestTimedOut,
    ServerConfig,
    ServerConnection,
    SignalAcknowledged,
    Step,
    SubscriptionRequested,
    SubscriptionScope,
    VariableRead,
    VariableReadFailed,
)
from cyan.protocol.framing import MAX_PLAINTEXT_TO_DEVICE
from cyan.protocol.handshake import private_decrypt, private_sign
from cyan.protocol.messages import DescribeFlags, decode_describe, decode_metrics
from cyan.server._accept import DEFAULT_MAX_WAIT, AcceptQueue, Dropped, queue_capacity
from cyan.tasks import TaskSet

__all__ = ["AddressLimits", "CloudPort", "DeviceProtocol", "DeviceServer", "LinkHost"]

log = logging.getLogger("cyan.server")
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_connection_ids = itertools.count(1)
#: How much later than the armed timer a new deadline may be and still leave it armed (see `_arm_timer`).
_TIMER_SLACK = 1.0
#: A deadline at least this far off goes on the coarse timers, which may fire it up to a second late.
_FAR = 5.0
#: The clock of every deadline: it only moves forward, so a step of the wall clock (NTP, an operator) neither
#: expires every session at once nor postpones a timeout. Wall time is read only for records and for the
#: answer to a device's time request.
_now = time.monotonic


#: The reason recorded for a connection refused by the limit on new connections from one address.
RATE_LIMITED = "rate_limited"
#: The reason recorded for a connection refused because the server had `max_handshakes` under way.
OVERLOADED = "overloaded"
#: Handshakes one device server runs at once (`DeviceServer.max_handshakes`); past them the connections wait in
#: the server's queue (`cyan.server._accept`), newest first. A fleet reconnecting at once (a server restart) would
#: otherwise start thousands together: each would wait for its RSA work behind all the others, past the
#: firmware's 20 s, and every pass of the event loop would handle what they all have ready while the connected
#: devices and the API wait for it. A few dozen keep the RSA work fed (bench/handshakes.py reaches its rate at
#: 64); measured in bench/storm.py with 5,000 devices: 64 and 128 had every device back in 13.8-17.6 s with calls
#: to the connected ones at p99 185-216 ms, where 1,024 (refusing past them) took 25 s and p99 1.7 s
#: (docs/benchmarks.md).
DEFAULT_MAX_HANDSHAKES = 128
#: The most often the server logs that it is refusing connections for the handshake bound.
_OVERLOAD_LOG_INTERVAL = 10.0
#: Connections the kernel holds for the server until it accepts them (the listen backlog). The server takes
#: them as they come into its own queue, so this only covers a burst between two passes of the event loop.
LISTEN_BACKLOG = 4096
#: Connections accepted in one pass of the event loop. Each is only taken into the server's queue (a system call
#: and a few objects); the rest wait for the next pass, so a burst of thousands does not hold the loop while the
#: connected devices and the API wait.
ACCEPTS_PER_PASS = 64


#: The shortest time between two rounds of closing the connections that waited too long.
_EXPIRY_GRAIN = 0.1

#: The longest the handshakes' work runs in one pass of the event loop (seconds), before it lets the loop go
#: on with the sessions already connected and the API. A reconnecting fleet brings a hundred handshake steps
#: a pass, each 0.1-0.3 ms of Python (the messages, the key policy, the session's start): run as they came,
#: they made passes of 10-20 ms, and a call to a device already back waited several of them (measured with
#: 5,000 devices, docs/benchmarks.md "Reconnect storm").
HANDSHAKE_SLICE = 0.002

#: How long after its Hello a new session's inputs still go through the handshakes' slices: the firmware's
#: start of a session (subscriptions, events, Describes, protocol.md §5) comes within it, and that work is
#: the cloud's heaviest per device.
SETTLING = 2.0

#: Inputs queued for a slice past which the server stops reading the connection until its turn: a handshake's
#: device sends one message at a time and waits for the answer, so only a client flooding the server gets
#: here, and its data waits in the kernel instead of in this process.
_QUEUED_INPUTS_READ = 8
#: `TCP_INFO`'s size up to `tcpi_last_data_recv` and `tcpi_last_ack_recv` (Linux's struct tcp_info), its state
#: byte first; the state of a connection its peer has closed (`TCP_CLOSE_WAIT`).
_TCP_INFO_SIZE = 60
_TCP_LAST_DATA_RECV = struct.Struct("=I")
_TCP_CLOSE_WAIT = 8


def _established_for(conn: socket.socket) -> float:
    """Seconds since the connection's TCP handshake (the device's connect), time in the kernel's queue included:
    for a connection that has sent nothing, Linux's time since the last data received counts from it. 0 where
    the kernel does not say."""
    try:
        info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return 0.0
    if len(info) < _TCP_INFO_SIZE:
        return 0.0
    return float(_TCP_LAST_DATA_RECV.unpack_from(info, 52)[0]) / 1000


def _peer_left(conn: socket.socket) -> bool:
    """Whether the device has closed the connection while it waited (gave up on its nonce)."""
    try:
        info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return False
    return bool(info) and info[0] == _TCP_CLOSE_WAIT


class _LogSampler:
    """The first `per_window` failures of each kind (step, reason) in a window are logged; the rest are counted
    and summed up in one line when the window's next failure of that kind comes. A fleet reconnecting at once
    fails the same way thousands of times (tens of MB of log a minute at 50,000 devices); the attempt records
    keep what the log leaves out, sampled the same way (`cyan.cloud.writer.AttemptSampler`)."""

    __slots__ = ("_kinds", "per_window", "window")

    def __init__(self, per_window: int = 5, window: float = 10.0) -> None:
        self.per_window = per_window
        self.window = window
        self._kinds: dict[tuple[str, str], list[float]] = {}  # kind -> [window start, logged, left out]

    def allow(self, step: str, reason: str, now: float) -> bool:
        kind = (step, reason)
        counts = self._kinds.get(kind)
        if counts is None or now - counts[0] >= self.window:
            if counts is not None and counts[2]:
                log.info(
                    "%d more connections failed at %s: %s in %.0f s (not logged one by one; see the attempt records)",
                    counts[2],
                    step,
                    reason,
                    now - counts[0],
                )
            if len(self._kinds) >= 1024:
                self._kinds.clear()  # kinds are few (steps x reasons); bounded all the same
            counts = self._kinds[kind] = [now, 0.0, 0.0]
        if counts[1] < self.per_window:
            counts[1] += 1
            return True
        counts[2] += 1
        return False


_failure_log = _LogSampler()


@dataclass(frozen=True, slots=True)
class _Waiting:
    """An accepted connection in the server's queue, not yet started."""

    sock: socket.socket
    peer_address: str
    connected_at: float  # wall clock, for its record if it is closed unserved


@dataclass(frozen=True, slots=True)
class AddressLimits:
    """New connections one address may open (a token bucket): `burst` at once, then `per_second`. Past it, a
    connection is closed before the handshake; the firmware retries on its backoff (1 s x5, 2 s x5, ...,
    protocol.md §8.3), so devices behind one busy NAT all get through, spread out, while a flood from one
    address costs no RSA work and no more than one record in `RecordLimits.identical`."""

    burst: int = 200
    per_second: float = 50.0


class _AddressGate:
    __slots__ = ("_buckets", "_limits", "_max_tracked")

    def __init__(self, limits: AddressLimits, max_tracked: int = 100_000) -> None:
        self._limits = limits
        self._max_tracked = max_tracked
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit(self, host: str, now: float) -> bool:
        limits = self._limits
        tokens, last = self._buckets.get(host, (float(limits.burst), now))
        tokens = min(float(limits.burst), tokens + (now - last) * limits.per_second)
        if tokens < 1.0:
            self._buckets[host] = (tokens, now)
            return False
        if host not in self._buckets and len(self._buckets) >= self._max_tracked:
            # Forget full buckets first: they are the addresses that have been quiet.
            for known, (held, when) in list(self._buckets.items()):
                if held + (now - when) * limits.per_second >= limits.burst:
                    del self._buckets[known]
            if len(self._buckets) >= self._max_tracked:
                del self._buckets[next(iter(self._buckets))]
        self._buckets[host] = (tokens - 1.0, now)
        return True


class CloudPort(Protocol):
    """What the device server asks of the cloud: `cyan.cloud.service.Cloud` in this process, or
    `cyan.server.relay.RelayCloud`, which forwards to the cloud in the parent process."""

    def authorize(
        self, device_id: str, presented_der: bytes | None, peer_address: str = ""
    ) -> Awaitable[tuple[Decision, DeviceRecord | None]]: ...

    def record_attempt(self, attempt: ConnectionAttempt) -> None: ...

    def session_started(
        self, link: DeviceProtocol, record: DeviceRecord, hello: Hello, *, quarantined: bool = False
    ) -> None: ...

    def session_ended(self, link: DeviceProtocol) -> None: ...

    def heard_from(self, link: DeviceProtocol) -> None: ...

    def describe_received(self, link: DeviceProtocol, document: dict[str, Any]) -> None: ...

    def metrics_received(self, link: DeviceProtocol, values: dict[int, int]) -> None:
        """The device posted its diagnostics unasked (a metrics Describe, protocol.md §6.7)."""

    def event_from_device(
        self, link: DeviceProtocol, name: str, data: bytes | None, ttl: int, private: bool
    ) -> None: ...

    def subscription_from_device(
        self, link: DeviceProtocol, prefix: str, scope: SubscriptionScope, device_id: str | None
    ) -> None: ...


class LinkHost(Protocol):
    """What a device link asks of the server that holds it: the TCP `DeviceServer`, or the UDP
    `cyan.server.datagram_server.DatagramServer`, whose links share all of `DeviceProtocol` but its stream."""

    @property
    def cloud(self) -> CloudPort: ...

    @property
    def config(self) -> ServerConfig: ...

    @property
    def ota_config(self) -> OtaConfig: ...

    @property
    def ota_v3_config(self) -> OtaV3Config: ...

    def spawn(self, work: Awaitable[None], what: str) -> None: ...

    def forget(self, link: DeviceProtocol) -> None:
        """The link has ended: drop it from the server's connections."""

    def run_private_key_operation(self, needed: PrivateKeyOperationNeeded, callback: _KeyCallback) -> None: ...


class DeviceProtocol(asyncio.Protocol):
    """One device socket: the protocol core's connection, and the `DeviceLink` the cloud drives."""

    #: The largest message the transport carries to the device when it is less than its Hello says: a TCP
    #: frame's (§4); None over DTLS, whose records carry what the Hello says.
    _message_limit: int | None = MAX_PLAINTEXT_TO_DEVICE

    # Slots: one of these per connected device (design §6 memory goal); an instance dict costs ~1 KB.
    __slots__ = (
        "_attempt_recorded",
        "_cloud",
        "_coarse",
        "_conn",
        "_deferred",
        "_describe_waiters",
        "_id",
        "_in_handshake",
        "_ota",
        "_ota_done",
        "_ota_progress",
        "_pending",
        "_ping_waiters",
        "_presented",
        "_quarantined",
        "_record",
        "_server",
        "_session_started",
        "_sliced_until",
        "_socket",
        "_started",
        "_started_at",
        "_stored",
        "_system_describe",
        "_timer",
        "_timer_due",
        "_transport",
        "device_id",
        "hello",
        "max_binary_size",
        "peer_address",
    )

    def __init__(self, server: LinkHost) -> None:
        self._server = server
        self._cloud = server.cloud
        self._id = next(_connection_ids)
        self._transport: asyncio.Transport | None = None
        self._conn: ServerConnection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0  # `_now()` time the armed timer is for
        self._coarse = False  # the deadline is on the server's coarse timers instead
        self._started = 0.0  # `_now()` time of the connection
        self._started_at = 0.0  # unix time of the connection, for its record
        self._record: DeviceRecord | None = None
        self._presented: str | None = None
        self._stored: str | None = None
        self._attempt_recorded = False
        self._in_handshake = False  # counted in the server's handshakes under way
        #: A handshake's inputs waiting for their turn in the server's slices, in the order they came
        #: (`DeviceServer.defer`); None when none waits.
        self._deferred: list[Callable[[], None]] | None = None
        #: Until when (`_now()`) its inputs wait for the server's slices: from the connection until
        #: `SETTLING` after its Hello, when the device's burst of a session's start is over (its subscriptions,
        #: events and Describes, handled by the cloud). Never over UDP.
        self._sliced_until = 0.0
        self._session_started = False
        self._quarantined = False
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._socket: socket.socket | None = None
        # Firmware updates (protocol.md §7): the sender of the running one, what it reports to.
        self._ota: OtaSender | OtaV3Sender | None = None
        self._ota_done: asyncio.Future[OtaOutcome] | None = None
        self._ota_progress: Callable[[int, int], None] | None = None
        # The latest system Describe as the device sent it: what updates are judged by (§6.7). Kept as bytes,
        # parsed when asked for: a parsed module list costs ~1.5 KB per connected device, the text a third.
        self._system_describe: bytes | None = None
        self._describe_waiters: list[asyncio.Future[None]] = []
        #: Callers waiting for the answer to our timed ping (its round trip in seconds).
        self._ping_waiters: list[asyncio.Future[float]] = []
        self.device_id = ""
        self.peer_address = ""
        self.hello: Hello | None = None
        self.max_binary_size: int | None = None

    @property
    def connection_id(self) -> int:
        """Unique in this process, for as long as it runs."""
        return self._id

    @property
    def armed_deadline(self) -> float | None:
        """The `time.monotonic()` time its timer is armed for (precise or coarse), None when none is."""
        return self._timer_due if self._timer is not None or self._coarse else None

    @property
    def key_fingerprint(self) -> str | None:
        """The fingerprint of the key this session started with (the one the device presented)."""
        return self._presented or self._stored

    # -- asyncio callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport, so no isinstance check).
        self._transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = sock
        peer = transport.get_extra_info("peername")
        self.peer_address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._started = _now()
        self._started_at = time.time()
        server = self._server
        # A stream connection is made by the TCP server only; a UDP link never gets here.
        assert isinstance(server, DeviceServer)
        if not server.begin_handshake(self._started):
            # The server starts a connection only when a place is free, so this is a safety net. Closed before
            # the nonce: it costs no RSA work, and the firmware counts it as a failed attempt and tries again on
            # its backoff (1 s after each of the first five failures, then 2 s, ...).
            self._refuse(OVERLOADED, f"{server.max_handshakes} handshakes under way, the most this server runs at once")
            return
        self._in_handshake = True
        self._sliced_until = math.inf
        server._connections[self._id] = self
        # With key workers the core asks for its two RSA private-key operations instead of doing them here.
        server_key = None if server.key_workers else server.server_key
        self._conn = ServerConnection(server_key, self._started, config=server.config)
        self._flush()

    def _refuse(self, reason: str, detail: str) -> None:
        """Close a new connection before the handshake, recorded as failed at its first step."""
        assert self._transport is not None
        self._transport.close()
        self._cloud.record_attempt(
            ConnectionAttempt(
                datetime.fromtimestamp(self._started_at, UTC),
                self.peer_address,
                AttemptOutcome.FAILED,
                Step.NONCE.value,
                reason,
                detail,
                duration=0.0,
            )
        )
        self._attempt_recorded = True

    def _handshake_over(self) -> None:
        if self._in_handshake:
            self._in_handshake = False
            server = self._server
            # Only the TCP server bounds handshakes (`_in_handshake` is set there alone).
            assert isinstance(server, DeviceServer)
            server.end_handshake()

    def data_received(self, data: bytes) -> None:
        self._in_turn(self._receive, data)
        if self._deferred is not None and len(self._deferred) >= _QUEUED_INPUTS_READ and self._transport:
            self._transport.pause_reading()  # resumed when its turn comes (`run_deferred`)

    def _receive(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        sent = self._drive(lambda: conn.receive_data(data, _now(), unix_time=time.time()))
        if not sent and _QUICKACK is not None and self._socket is not None:
            # Acknowledge at once what was read and not answered. A device writes its ACK and its answer (a
            # function's return value, a variable) as two small frames; with Nagle on its side and a delayed
            # ACK on ours, the answer would wait ~40 ms for our ACK of the first (seen with real firmware).
            # Setting the flag sends the pending ACK now; Linux clears it again after each ACK. A read that
            # was answered (a ping, most of an idle fleet's traffic) carried its ACK with the answer.
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def _drive(self, step: Callable[[], None]) -> bool:
        """Give the core its input (`step`), then act on what it says and send what it queued; whether all
        of it left for the socket at once. A protocol breach it raises ends the connection with the step
        and reason it names."""
        try:
            step()
        except RemoteProtocolError as exc:
            self._handle_events()
            self._fail(exc.step, exc.reason, str(exc))
            return False
        self._handle_events()
        return self._flush()

    def _in_turn(self, step: Callable[..., None], *args: Any) -> None:
        """`step(*args)` now, or queued for the server's slices while the connection's inputs go through them
        (its handshake and `SETTLING` after, or others already queued: they keep their order)."""
        if self._deferred or _now() < self._sliced_until:
            self._defer(functools.partial(step, *args))
        else:
            step(*args)

    def _defer(self, work: Callable[[], None]) -> None:
        """Queue a handshake's input for the server's next slice (`HANDSHAKE_SLICE`), after the ones before it."""
        if self._deferred is None:
            self._deferred = [work]
            server = self._server
            # Only the TCP server runs handshakes in slices (`_sliced_until` is set there alone).
            assert isinstance(server, DeviceServer)
            server.defer(self)
        else:
            self._deferred.append(work)

    def run_deferred(self) -> None:
        """Act on the inputs queued for the handshake, in order. Run by the server's slices, and here before
        anything that must see them first: the end of the stream, the connection's loss, its timer (a
        device that answered in time is not timed out while its answer waits for a slice)."""
        while (work := self._deferred) is not None:
            self._deferred = None
            if len(work) >= _QUEUED_INPUTS_READ and self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
            for step in work:
                step()

    def failed_internally(self, exc: Exception) -> None:
        """One of the server's own steps for this connection raised (a bug, or a cloud that failed): logged,
        recorded as `server_error` at the step the connection was at, and the connection ends, as asyncio
        ends one whose callback raises. Its inputs still queued go with it."""
        self._deferred = None
        log.error("connection %d from %s: the server failed on it", self._id, self.peer_address, exc_info=exc)
        conn = self._conn
        step = conn.step if conn is not None else Step.NONCE
        try:
            self._fail(step, Reason.SERVER_ERROR, f"the server failed on this connection: {exc!r}")
        except Exception:
            log.exception("connection %d from %s: could not end it cleanly", self._id, self.peer_address)
            if self._transport is not None:
                self._transport.abort()

    def _catch_up(self) -> None:
        """`run_deferred` before an end of the stream, a loss or a timer, which go on whatever it raised."""
        try:
            self.run_deferred()
        except Exception as exc:
            self.failed_internally(exc)

    def eof_received(self) -> bool | None:
        self._catch_up()
        conn = self._conn
        if conn is not None and not conn.closed:
            conn.receive_eof(_now())
            self._handle_events()
        self._close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._catch_up()
        self._disarm()
        conn = self._conn
        if conn is not None and not conn.closed:
            # The socket went away without a FIN we saw as EOF (a reset, or our own close).
            conn.receive_eof(_now())
            self._handle_events()
        self._handshake_over()
        self._end_session()
        self._ota_lost()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"device {self.device_id} disconnected"))
        self._pending.clear()
        self._server.forget(self)

    # -- core plumbing --------------------------------------------------------------------------

    def _flush(self) -> bool:
        """Send what the core queued and arm the timer; whether something was sent and none of it waits in
        the transport's buffer."""
        conn = self._conn
        transport = self._transport
        if conn is None or transport is None:
            return False
        data = conn.data_to_send()
        sent = False
        if data and not transport.is_closing():
            transport.write(data)
            sent = not transport.get_write_buffer_size()
        self._arm_timer()
        return sent

    def _arm_timer(self) -> None:
        conn = self._conn
        due = None if conn is None else conn.get_timer()
        if self._ota is not None and (ota_due := self._ota.get_timer()) is not None:
            due = ota_due if due is None else min(due, ota_due)
        if due is not None and due - _now() >= _FAR:
            # The idle timeout, and whatever else is far off: on the loop's coarse timers, where a ping's
            # move of the deadline is a dictionary update (cyan.coarse_timers).
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            coarse_timers().schedule(self, due, self._on_timer)
            self._coarse = True
            self._timer_due = due
            return
        if self._coarse:
            coarse_timers().cancel(self)
            self._coarse = False
        if self._timer is not None:
            if due is not None and self._timer_due <= due < self._timer_due + _TIMER_SLACK:
                # A burst of messages pushes the idle deadline later by a little each time: keeping the
                # armed timer (it fires at most a second early, finds nothing due and re-arms) is cheaper
                # than a cancel and a new timer per message. A ping moves it by 15 s: that re-arms.
                return
            self._timer.cancel()
            self._timer = None
        if due is not None:
            loop = asyncio.get_running_loop()
            self._timer_due = due
            self._timer = loop.call_at(loop.time() + max(0.0, due - _now()), self._on_timer)

    def _disarm(self) -> None:
        """No timer of ours fires any more, precise or coarse."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._coarse:
            coarse_timers().cancel(self)
            self._coarse = False

    def _on_timer(self) -> None:
        self._timer = None
        self._coarse = False
        self._catch_up()
        conn = self._conn
        if conn is None or conn.closed:
            return
        now = _now()
        conn.handle_timer(now)
        self._handle_events()
        if self._ota is not None and self._transport is not None:
            # A fast-OTA burst only once the previous one has left for the socket (§13.1 #15).
            self._ota.handle_timer(now, backlog=self._transport.get_write_buffer_size())
            self._ota_step()
        self._flush()

    def _handle_events(self) -> None:
        conn = self._conn
        assert conn is not None
        while (event := conn.next_event()) is not None:
            self._on_event(event)

    def _on_event(self, event: Event) -> None:
        if self._ota is not None and self._ota.handle_event(event, _now()):
            # OTA answers (§7) drive the update; a closing connection or an event goes on below as well.
            self._ota_step()
        if isinstance(event, PrivateKeyOperationNeeded):
            self._server.run_private_key_operation(event, self._private_key_done)
        elif isinstance(event, DeviceIdentified):
            self.device_id = event.device_id
            self._server.spawn(self._decide(event), f"decide on device {event.device_id}")
        elif isinstance(event, HelloReceived):
            assert self._record is not None
            self._handshake_over()
            if self._sliced_until:
                self._sliced_until = _now() + SETTLING
            self._record_attempt(AttemptOutcome.CONNECTED, Step.SESSION, None, None)
            self._session_started = True
            self.hello = event.hello
            self.max_binary_size = event.hello.max_binary_size or self.max_binary_size
            self._cloud.session_started(self, self._record, event.hello, quarantined=self._quarantined)
            # The cloud keeps the record from here. In a device process it got a copy, and ours would stay
            # with the connection for nothing: about a kilobyte per connected device.
            self._record = None
            # Every connection is in the attempt records; the log names them at debug level, as a fleet that
            # reconnects at once would otherwise write thousands of lines a second.
            log.debug("device %s connected from %s (connection %d)", self.device_id, self.peer_address, self._id)
        elif isinstance(event, EventPublished):
            if event.name == "spark/hardware/max_binary" and event.data and event.data.isdigit():
                self.max_binary_size = int(event.data)  # 2.x and older report it so (§5.1)
            self._cloud.event_from_device(self, event.name, event.data, event.ttl, event.private)
        elif isinstance(event, DescribeReceived) and event.flags == DescribeFlags.METRICS:
            if event.request_id is not None:
                self._resolve(event.request_id, event.raw)
            else:
                try:
                    values = decode_metrics(event.raw)
                except ValueError as exc:
                    log.warning("device %s posted diagnostics that cannot be read: %s", self.device_id, exc)
                else:
                    self._cloud.metrics_received(self, values)
        elif isinstance(event, PingAnswered):
            waiters, self._ping_waiters = self._ping_waiters, []
            for ping in waiters:
                if not ping.done():
                    ping.set_result(event.round_trip)
        elif isinstance(event, DescribeReceived):
            if event.document is not None and "m" in event.document:
                self._system_describe = event.raw
                for waiter in self._describe_waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._describe_waiters.clear()
            if event.document is not None:
                self._cloud.describe_received(self, event.document)
            elif event.error:
                log.warning("device %s sent a describe that is not JSON: %s", self.device_id, event.error)
        elif isinstance(event, SubscriptionRequested):
            self._cloud.subscription_from_device(self, event.prefix, event.scope, event.device_id)
        elif isinstance(event, FunctionReturned):
            self._resolve(event.request_id, event.return_value)
        elif isinstance(event, FunctionFailed):
            self._reject(event.request_id, FunctionRefusedError(f"device {self.device_id}: {event.detail}"))
        elif isinstance(event, VariableRead):
            self._resolve(event.request_id, (event.raw, event.value))
        elif isinstance(event, VariableReadFailed):
            self._reject(event.request_id, UnknownVariableError(self.device_id, event.name))
        elif isinstance(event, SignalAcknowledged):
            self._resolve(event.request_id, None)
        elif isinstance(event, RequestTimedOut):
            timeout = self._server.config.request_timeout
            error: Exception = DeviceTimeoutError(self.device_id, f"{event.kind} {event.name!r}", timeout)
            if event.kind == "function":
                # The firmware ACKs an unknown function and never answers (protocol.md §6.5).
                error = DeviceTimeoutError(self.device_id, f"call of {event.name!r}", timeout)
            self._reject(event.request_id, error)
        elif isinstance(event, ConnectionFailed):
            self._fail(event.step, event.reason, event.detail)
        elif isinstance(event, ConnectionClosed):
            self._close()
        elif isinstance(event, GoodbyeReceived):
            log.info("device %s said goodbye: %s", self.device_id, event.goodbye)
        elif isinstance(event, MessageIgnored):
            log.debug("device %s: %s", self.device_id, event.description)
        if self._session_started:
            self._cloud.heard_from(self)

    def _private_key_done(self, result: bytes | BaseException | None) -> None:
        self._in_turn(self._private_key_result, result)

    def _private_key_result(self, result: bytes | BaseException | None) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        if isinstance(result, BaseException):
            self._drive(lambda: conn.private_key_failed(f"the server's private-key operation failed: {result!r}"))
        else:
            self._drive(lambda: conn.private_key_done(result, _now()))

    async def _decide(self, event: DeviceIdentified) -> None:
        conn = self._conn
        assert conn is not None
        try:
            decision, record = await self._cloud.authorize(event.device_id, event.public_key_der, self.peer_address)
        except Exception as exc:
            log.exception("could not decide on device %s", event.device_id)
            if not conn.closed:
                conn.reject(Reason.SERVER_ERROR, f"the server could not look the device up: {exc}")
                self._handle_events()
            return
        self._in_turn(self._act_on, decision, record)

    def _act_on(self, decision: Decision, record: DeviceRecord | None) -> None:
        conn = self._conn
        assert conn is not None
        if conn.closed:
            return
        self._presented, self._stored = decision.presented_fingerprint, decision.stored_fingerprint
        if decision.trusted_key_der is None:
            assert decision.reason is not None
            conn.reject(decision.reason, decision.detail)
            self._handle_events()
            return
        self._record = record
        self._quarantined = decision.quarantined
        trusted = serialization.load_der_public_key(decision.trusted_key_der)
        assert isinstance(trusted, rsa.RSAPublicKey)
        conn.accept(trusted, _now())
        self._handle_events()
        self._flush()

    # -- ending ---------------------------------------------------------------------------------

    def _record_attempt(
        self, outcome: AttemptOutcome, step: enum.StrEnum, reason: enum.StrEnum | None, detail: str | None
    ) -> None:
        if self._attempt_recorded:
            return
        self._attempt_recorded = True
        self._cloud.record_attempt(
            ConnectionAttempt(
                started_at=datetime.fromtimestamp(self._started_at, UTC),
                peer_address=self.peer_address,
                outcome=outcome,
                step=step.value,
                reason=reason.value if reason else None,
                detail=detail,
                device_id=self.device_id or None,
                presented_fingerprint=self._presented,
                stored_fingerprint=self._stored,
                duration=round(_now() - self._started, 6),
                # Only a session started with the registered key proves the device is who it says; a failure
                # or a quarantined session proved nothing (docs/keys.md "Unproven attempts").
                proven=None if not self.device_id else outcome is AttemptOutcome.CONNECTED and not self._quarantined,
            )
        )

    def _fail(self, step: Step, reason: Reason, detail: str) -> None:
        if self._session_started:
            log.info("device %s session ended: %s at %s: %s", self.device_id, reason.value, step.value, detail)
        else:
            self._record_attempt(AttemptOutcome.FAILED, step, reason, detail)
            if _failure_log.allow(step.value, reason.value, _now()):
                log.info(
                    "connection %d from %s failed at %s: %s (%s)",
                    self._id,
                    self.peer_address,
                    step.value,
                    reason.value,
                    detail,
                )
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._ota_lost()
        self._disarm()
        if self._transport is not None and not self._transport.is_closing():
            # Flush what is queued (a final ACK), then close: a plain FIN, like Particle's cloud (§9.3).
            self._transport.close()
        self._end_session()

    def _end_session(self) -> None:
        if self._session_started:
            self._session_started = False
            log.debug(
                "device %s disconnected from %s after %.0f s (connection %d)",
                self.device_id,
                self.peer_address,
                _now() - self._started,
                self._id,
            )
            self._cloud.session_ended(self)

    # -- DeviceLink: what the cloud can ask of this device ----------------------------------------

    def _request(self, start: Any) -> asyncio.Future[Any]:
        conn = self._conn
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if conn is None or conn.closed:
            future.set_exception(ConnectionError(f"device {self.device_id} disconnected"))
            return future
        try:
            request_id = start(conn)
        except (LocalProtocolError, ValueError) as exc:
            future.set_exception(exc)
            return future
        self._pending[request_id] = future
        self._flush()
        return future

    def _resolve(self, request_id: int, value: Any) -> None:
        future = self._pending.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(value)

    def _reject(self, request_id: int, error: Exception) -> None:
        future = self._pending.pop(request_id, None)
        if future is not None and not future.done():
            future.set_exception(error)

    async def call_function(self, name: str, argument: str, timeout: float) -> int:
        result: int = await self._request(lambda c: c.call_function(name, argument, _now(), timeout))
        return result

    async def read_variable(self, name: str, timeout: float) -> tuple[bytes, VariableValue | None]:
        result: tuple[bytes, VariableValue | None] = await self._request(
            lambda c: c.read_variable(name, _now(), timeout)
        )
        return result

    def send_event(self, name: str, data: str | None, ttl: int, private: bool) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return
        conn.send_event(name, data, ttl=ttl, private=private)
        self._flush()

    async def signal(self, on: bool, timeout: float) -> None:
        await self._request(lambda c: c.signal(on, _now(), timeout))

    def close(self) -> None:
        self._close()

    # -- firmware updates (protocol.md §7) ------------------------------------------------------

    def update_firmware(
        self, image: bytes, *, fast: bool | None, progress: Callable[[int, int], None] | None = None
    ) -> asyncio.Future[OtaOutcome]:
        """Run an `OtaSender` on this connection; the future gets its outcome, failure included."""
        done: asyncio.Future[OtaOutcome] = asyncio.get_running_loop().create_future()
        conn = self._conn
        if conn is None or conn.closed or not self._session_started:
            done.set_exception(ConnectionError(f"device {self.device_id} disconnected"))
            return done
        if self._ota is not None:
            done.set_exception(RuntimeError(f"device {self.device_id} is being updated already"))
            return done
        try:
            self._ota = self._update_sender(conn, image, fast)
        except (LocalProtocolError, ValueError) as exc:
            done.set_exception(exc)
            return done
        self._ota_done, self._ota_progress = done, progress
        self._flush()
        return done

    def _update_sender(self, conn: ServerConnection, image: bytes, fast: bool | None) -> OtaSender | OtaV3Sender:
        # The device says which update protocol it speaks: 0x80 in its Hello is OTA protocol v3 only (Gen 3
        # and P2 from Device OS 3.0, whose legacy handlers are compiled out), the legacy chunks otherwise.
        if self.hello is not None and self.hello.flags & HelloFlag.OTA_PROTOCOL_V3:
            return OtaV3Sender(
                conn, image, _now(), config=self._server.ota_v3_config, transport_limit=self._message_limit
            )
        return OtaSender(conn, image, _now(), fast=fast, config=self._server.ota_config)

    def _ota_step(self) -> None:
        sender = self._ota
        if sender is None:
            return
        if self._ota_progress is not None:
            self._ota_progress(sender.bytes_delivered, sender.total)
        if sender.finished:
            assert sender.outcome is not None
            self._ota = None
            if self._ota_done is not None and not self._ota_done.done():
                self._ota_done.set_result(sender.outcome)
            log.info(
                "device %s update ended: %s %s",
                self.device_id,
                sender.outcome.reason or "complete",
                sender.outcome.detail,
            )

    def _ota_lost(self) -> None:
        if self._ota is not None:
            self._ota.connection_lost(_now())
            self._ota_step()
        for waiter in self._describe_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._describe_waiters.clear()
        for ping in self._ping_waiters:
            if not ping.done():
                ping.set_exception(ConnectionError(f"device {self.device_id} disconnected"))
        self._ping_waiters.clear()

    async def diagnose(self, timeout: float) -> LinkDiagnostics:
        """A timed ping (§8.1) and, for firmware that reports diagnostics (1.2+, Hello flag 0x02; 0.6.x would
        answer a metrics Describe with its application Describe, §6.7), a metrics Describe, at once."""
        conn = self._conn
        if conn is None or conn.closed or not self._session_started:
            raise ConnectionError(f"device {self.device_id} disconnected")
        loop = asyncio.get_running_loop()
        ping: asyncio.Future[float] = loop.create_future()
        if not self._ping_waiters:
            conn.ping(_now())
        self._ping_waiters.append(ping)
        metrics: asyncio.Future[bytes] | None = None
        if self.hello is not None and self.hello.flags & HelloFlag.DIAGNOSTICS:
            metrics = self._request(lambda c: c.request_describe(_now(), flags=DescribeFlags.METRICS, timeout=timeout))
        self._flush()
        problems = []
        round_trip: float | None = None
        values: dict[int, int] | None = None
        try:
            round_trip = await asyncio.wait_for(ping, timeout)
        except TimeoutError:
            problems.append(f"no answer to a ping within {timeout:g} s")
        finally:
            if ping in self._ping_waiters:
                self._ping_waiters.remove(ping)
        if metrics is None:
            problems.append("the firmware reports no diagnostics (Device OS 1.2 and later do)")
        else:
            try:
                values = decode_metrics(await metrics)
            except ValueError as exc:
                problems.append(f"the diagnostics cannot be read: {exc}")
            except DeviceTimeoutError:
                problems.append(f"no diagnostics within {timeout:g} s")
        return LinkDiagnostics(round_trip, values, "; ".join(problems) or None)

    async def system_describe(self, timeout: float) -> dict[str, Any] | None:
        """The latest system Describe; if none came within half of `timeout` (2.2+ posts one at once, the
        server asks older firmware 3 s after its Hello, §13.1 #6), ask for it (GET d, flags 1)."""
        if (document := self._latest_describe()) is not None or timeout <= 0:
            return document
        loop = asyncio.get_running_loop()
        for ask in (False, True):
            conn = self._conn
            if conn is None or conn.closed:
                return None
            if ask:
                with contextlib.suppress(LocalProtocolError):
                    conn.request_describe(_now(), flags=1, timeout=timeout / 2)
                    self._flush()
            waiter: asyncio.Future[None] = loop.create_future()
            self._describe_waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, timeout / 2)
            if (document := self._latest_describe()) is not None:
                return document
        return None

    def _latest_describe(self) -> dict[str, Any] | None:
        if self._system_describe is None:
            return None
        return decode_describe(self._system_describe)  # it parsed once already, so it parses again


_KeyCallback = Callable[[bytes | BaseException | None], None]


def _private_key_operation(key: rsa.RSAPrivateKey, operation: str, data: bytes) -> bytes | None:
    return private_decrypt(key, data) if operation == "decrypt" else private_sign(key, data)


def _name_os_thread(name: str) -> None:
    """Give the OS thread our name too, so `top -H` and /proc show where the CPU goes (Linux only)."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


#: How much lower than the event loop's the key workers' scheduling priority is (nice levels, Linux). The RSA
#: work can wait for a core; the event loop, which the connected devices' calls and pings wait for, should
#: not: at the same priority a reconnecting fleet's RSA took the core from the loop in the middle of its
#: passes (docs/benchmarks.md "Reconnect storm"). At 5 levels lower a worker still gets a quarter of a core the
#: loop wants (the scheduler's weights 335 against 1,024), and all of one it does not.
KEY_WORKER_NICENESS = 5


def _lower_os_thread_priority(by: int) -> None:
    """Lower the calling thread's scheduling priority by `by` nice levels (Linux, where a thread has its own)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (OSError, AttributeError):
        pass  # no per-thread priorities here: the workers run at the loop's


class _KeyWorkers:
    """Threads that run the RSA private-key operations; their results reach the event loop in batches.

    Leaner than a `ThreadPoolExecutor` (no future and condition per operation, measured in bench/): a
    job queue in, a result deque out, and one loop wake-up for whatever finished meanwhile.
    """

    def __init__(self, key: rsa.RSAPrivateKey, count: int, loop: asyncio.AbstractEventLoop) -> None:
        self._key = key
        self._loop = loop
        self._jobs: queue.SimpleQueue[tuple[_KeyCallback, str, bytes] | None] = queue.SimpleQueue()
        self._results: deque[tuple[_KeyCallback, bytes | BaseException | None]] = deque()
        self._wakeup_pending = False
        self._threads = [threading.Thread(target=self._work, name=f"cyan-key-{n}", daemon=True) for n in range(count)]
        for thread in self._threads:
            thread.start()

    def submit(self, callback: _KeyCallback, operation: str, data: bytes) -> None:
        self._jobs.put((callback, operation, data))

    def stop(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        _name_os_thread(threading.current_thread().name)
        _lower_os_thread_priority(KEY_WORKER_NICENESS)
        while (job := self._jobs.get()) is not None:
            callback, operation, data = job
            outcome: bytes | BaseException | None
            try:
                outcome = _private_key_operation(self._key, operation, data)
            except Exception as exc:  # reported on the connection as server_error
                outcome = exc
            self._results.append((callback, outcome))
            # `_deliver` clears the flag before it drains, so a result appended meanwhile is never stranded.
            if not self._wakeup_pending:
                self._wakeup_pending = True
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop closed during shutdown
                    return

    def _deliver(self) -> None:
        self._wakeup_pending = False
        results = self._results
        while results:
            callback, outcome = results.popleft()
            callback(outcome)


class DeviceServer:
    """Listens for devices and serves each with a `DeviceProtocol`.

    `key_workers` threads run the handshakes' RSA private-key operations (two per handshake, about 0.25 ms
    each, protocol.md §3): OpenSSL releases the GIL while it computes, so they run on the other cores
    while the event loop goes on with everything else (design §6). With 0 they run on the event loop.
    """

    def __init__(
        self,
        cloud: CloudPort,
        server_key: rsa.RSAPrivateKey,
        *,
        host: str = "0.0.0.0",
        port: int = 5683,
        config: ServerConfig | None = None,
        ota_config: OtaConfig | None = None,
        ota_v3_config: OtaV3Config | None = None,
        key_workers: int = 0,
        reuse_port: bool = False,
        address_limits: AddressLimits | None = None,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_queued: int | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        if key_workers < 0:
            raise ValueError(f"key_workers is 0 or more, not {key_workers}")
        if max_handshakes < 1:
            raise ValueError(f"max_handshakes is 1 or more, not {max_handshakes}")
        self.cloud = cloud
        self.server_key = server_key
        self.key_workers = key_workers
        #: Share the port with the other device processes of one `cyan serve` (SO_REUSEPORT).
        self.reuse_port = reuse_port
        self._key_pool: _KeyWorkers | None = None
        self.host = host
        self.port = port
        self.config = config or ServerConfig()
        #: Pacing, timers and limits of firmware updates (protocol.md §7, §13.1 #14-15).
        self.ota_config = ota_config or OtaConfig()
        self.ota_v3_config = ota_v3_config or OtaV3Config()
        self._server: asyncio.Server | None = None
        self._connections: dict[int, DeviceProtocol] = {}
        #: New connections per address (`AddressLimits`).
        self.address_limits = address_limits or AddressLimits()
        self._gate = _AddressGate(self.address_limits)
        #: Admission control: at most this many handshakes under way. Each holds a socket, the core's state and
        #: up to two queued RSA jobs until its Hello, so this bounds what a reconnecting fleet can make the
        #: server hold: the other connections wait in `_waiting`, newest first, and are closed unserved
        #: after `max_wait` seconds or when it is full.
        self.max_handshakes = max_handshakes
        self.handshakes = 0
        #: `max_queued` None: the most the process's open-file limit allows (`cyan.server._accept.queue_capacity`).
        self._waiting: AcceptQueue[_Waiting] = AcceptQueue(
            queue_capacity(file_limit()) if max_queued is None else max_queued, max_wait
        )
        self._expiry: asyncio.TimerHandle | None = None
        #: Connections closed unserved for the bound (waited too long, or made room) since the server started.
        self.overloaded = 0
        self._overload_logged = -_OVERLOAD_LOG_INTERVAL
        #: Whether the server is taking new connections from the kernel (all the time, but for a second after
        #: it ran out of descriptors with none queued to give up, and once it stops).
        self.accepting = False
        self._listeners: list[socket.socket] = []
        #: Connections taken from the queue whose protocol has not started yet.
        self._opening = 0
        #: Handshakes with inputs waiting for a slice (`HANDSHAKE_SLICE`), in the order their first came.
        self._handshake_work: deque[DeviceProtocol] = deque()
        self._slice_scheduled = False
        self._tasks = TaskSet(log, "cyan-server")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.key_workers:
            self._key_pool = _KeyWorkers(self.server_key, self.key_workers, loop)
        self._server = await loop.create_server(
            lambda: DeviceProtocol(self),
            self.host,
            self.port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=ACCEPTS_PER_PASS,
        )
        sockets = self._server.sockets
        for listening in sockets:
            # asyncio bound the sockets (every address of the host, its errors); this server accepts on them itself,
            # into its own queue, so that it chooses which waiting connection to serve (`cyan.server._accept`).
            loop.remove_reader(listening.fileno())
            listener = socket.socket(fileno=os.dup(listening.fileno()))
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
            self._listeners.append(listener)
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._resume_accepting()

    @property
    def queued(self) -> int:
        """Connections accepted and waiting for a place among the handshakes under way."""
        return len(self._waiting)

    def _resume_accepting(self) -> None:
        if self.accepting or not self._listeners:
            return
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.add_reader(listener.fileno(), self._accept, listener)
        self.accepting = True

    def _pause_accepting(self) -> None:
        if not self.accepting:
            return
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.remove_reader(listener.fileno())
        self.accepting = False

    def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPTS_PER_PASS):
            if self._waiting.full:
                # The kernel holds the rest (and past its own queue drops new connection requests, which costs
                # the server nothing) until a connection is served or expires.
                self._pause_accepting()
                break
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # Out of descriptors or buffers (EMFILE, ENFILE, ENOBUFS). The oldest waiting connection is the
                # least likely to be served in time: give its descriptor up, else leave the kernel a second.
                oldest = self._waiting.drop_oldest(_now())
                if oldest is not None:
                    self._drop(oldest)
                    continue
                log.warning("cannot accept a device connection, trying again in a second: %s", exc)
                self._pause_accepting()
                loop.call_later(1.0, self._resume_accepting)
                break
            self._queue_connection(conn, peer)
        self._serve()

    def _queue_connection(self, conn: socket.socket, peer: Any) -> None:
        now = _now()
        age = _established_for(conn)
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        peer_address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        waiting = _Waiting(conn, peer_address, time.time() - age)
        if not self.admit(host, now):
            # Refused before it can take a place in the queue: a flood from one address does not push the
            # other addresses' connections out.
            limits = self.address_limits
            self._close_unserved(
                waiting,
                RATE_LIMITED,
                f"more new connections from {host} than the limit ({limits.burst} at once, {limits.per_second:g}/s)",
            )
            return
        conn.setblocking(False)
        dropped = self._waiting.push(waiting, now - age, now)
        if dropped is not None:
            self._drop(dropped)
        if self._expiry is None:
            self._arm_expiry()

    def _serve(self) -> None:
        """Start the newest waiting connections while places are free among the handshakes under way."""
        now = _now()
        while self.handshakes + self._opening < self.max_handshakes:
            waiting = self._waiting.pop(now)
            if waiting is None:
                break
            if _peer_left(waiting.sock):
                self._drop(Dropped(waiting, _established_for(waiting.sock), full=False), left=True)
                continue
            self._opening += 1
            self._tasks.spawn(self._open(waiting.sock), "open a device connection")
        if not self.accepting and not self._waiting.full:
            self._resume_accepting()

    def _arm_expiry(self) -> None:
        when = self._waiting.next_expiry()
        if when is None or not self._listeners:
            self._expiry = None
            return
        # A tenth of a second at least between two rounds: a storm's connections expire a batch at a time, not
        # one timer each (none is served late meanwhile: `pop` checks the age of what it serves).
        self._expiry = asyncio.get_running_loop().call_later(max(_EXPIRY_GRAIN, when - _now()), self._expire)

    def _expire(self) -> None:
        for dropped in self._waiting.expire(_now()):
            self._drop(dropped)
        self._arm_expiry()
        if not self.accepting and not self._waiting.full:
            self._resume_accepting()

    def _drop(self, dropped: Dropped[_Waiting], *, left: bool = False) -> None:
        """Close a connection the server could not serve in time, recorded as overloaded."""
        self.overloaded += 1
        if left:
            why = f"the device left after {dropped.waited:.1f} s waiting"
        elif dropped.full:
            why = "closed for its descriptor, the process out of them"
        else:
            why = f"not served in {dropped.waited:.1f} s"
        self._close_unserved(
            dropped.item,
            OVERLOADED,
            f"{why}: {self.handshakes} handshakes under way and {len(self._waiting)} connections waiting",
        )
        now = _now()
        if now - self._overload_logged >= _OVERLOAD_LOG_INTERVAL:
            self._overload_logged = now
            log.warning(
                "%d handshakes under way and %d connections waiting: closing the ones waiting longest "
                "(%d so far); their devices retry on their backoff",
                self.handshakes,
                len(self._waiting),
                self.overloaded,
            )

    def _close_unserved(self, waiting: _Waiting, reason: str, detail: str) -> None:
        """Close a connection before its nonce (no RSA work) and record it as failed at its first step."""
        waiting.sock.close()
        self.cloud.record_attempt(
            ConnectionAttempt(
                datetime.fromtimestamp(waiting.connected_at, UTC),
                waiting.peer_address,
                AttemptOutcome.FAILED,
                Step.NONCE.value,
                reason,
                detail,
                duration=0.0,
            )
        )

    async def _open(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: DeviceProtocol(self), conn)
        except BaseException:
            conn.close()
            raise
        finally:
            self._opening -= 1  # connection_made has counted it in, or refused it
            self._serve()

    async def stop(self) -> None:
        self._pause_accepting()
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for waiting in self._waiting.clear():
            waiting.sock.close()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self._connections.values()):
            connection.close()
        # Key decisions still running would read a store that closes next: they belong to closed connections.
        await self._tasks.cancel()
        if server is not None:
            await server.wait_closed()
        pool, self._key_pool = self._key_pool, None
        if pool is not None:
            pool.stop()
        await asyncio.sleep(0)

    def run_private_key_operation(self, needed: PrivateKeyOperationNeeded, callback: _KeyCallback) -> None:
        """Run `needed` on a key worker; `callback` gets the result (or the exception) on the event loop."""
        pool = self._key_pool
        if pool is None:
            callback(RuntimeError("the device server is stopping"))
            return
        pool.submit(callback, needed.operation, needed.data)

    def forget(self, link: DeviceProtocol) -> None:
        self._connections.pop(link.connection_id, None)

    def defer(self, link: DeviceProtocol) -> None:
        """Run `link`'s queued handshake inputs in a coming slice (`DeviceProtocol.run_deferred`)."""
        self._handshake_work.append(link)
        self._schedule_slice()

    def _schedule_slice(self) -> None:
        if not self._slice_scheduled:
            self._slice_scheduled = True
            asyncio.get_running_loop().call_soon(self._run_slice)

    def _run_slice(self) -> None:
        """Run queued handshake work for up to `HANDSHAKE_SLICE`, then leave the rest to the next pass of the
        loop: the sockets and requests that became ready meanwhile go first."""
        self._slice_scheduled = False
        work = self._handshake_work
        ends = _now() + HANDSHAKE_SLICE
        while work:
            link = work.popleft()
            try:
                link.run_deferred()
            except Exception as exc:
                link.failed_internally(exc)  # that connection ends; the others go on
            if _now() >= ends:
                break
        if work:
            self._schedule_slice()

    def admit(self, host: str, now: float) -> bool:
        """Whether a new connection from `host` is within its address's limit."""
        return self._gate.admit(host, now)

    def begin_handshake(self, now: float) -> bool:
        """Count a new handshake in, unless `max_handshakes` are under way already."""
        if self.handshakes >= self.max_handshakes:
            self.overloaded += 1
            if now - self._overload_logged >= _OVERLOAD_LOG_INTERVAL:
                self._overload_logged = now
                log.warning(
                    "%d handshakes under way: closing new connections before the handshake (%d so far); "
                    "the devices retry on their backoff",
                    self.handshakes,
                    self.overloaded,
                )
            return False
        self.handshakes += 1
        return True

    def end_handshake(self) -> None:
        self.handshakes -= 1
        if self._listeners:
            self._serve()

    def connection(self, connection_id: int) -> DeviceProtocol | None:
        return self._connections.get(connection_id)

    def spawn(self, work: Awaitable[None], what: str) -> None:
        """Run `work` beside the connections (`cyan.tasks.TaskSet`)."""
        self._tasks.spawn(work, what)

    @property
    def connection_count(self) -> int:
        return len(self._connections)
