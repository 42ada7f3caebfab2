"""One virtual device: an asyncio adapter that drives the protocol core's `DeviceConnection`.

The adapter is as thin as the server's: an `asyncio.Protocol` per TCP connection feeds received bytes to
the core, acts on its events (the user application lives here), writes whatever the core queued in one
`transport.write` (each frame whole, §4), and keeps one `loop.call_at` timer armed from `get_timer()`.
The core counts time on the monotonic clock (`time.monotonic()`), as the firmware counts milliseconds since
boot: a step of the wall clock moves no deadline. The loop has its own monotonic clock; deadlines are
converted when the timer is armed. Between connections a device holds no task, only a timer handle, so a
process can keep tens of thousands of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.coarse_timers import coarse_timers
from cyan.keys import generate_device_key, public_key_der
from cyan.protocol import (
    Application,
    ChunkStored,
    ConnectionClosed,
    ConnectionFailed,
    DeviceConnection,
    DeviceReset,
    Event,
    EventReceived,
    FunctionCalled,
    HelloFlag,
    LocalProtocolError,
    MessageIgnored,
    ModuleInfo,
    PingAcknowledged,
    ProtocolError,
    PublishAcknowledged,
    Reason,
    ServerHelloReceived,
    SessionStarted,
    SignalReceived,
    Step,
    TimeReceived,
    UpdateStarted,
    VariableType,
)
from cyan.protocol.messages import CloudDisconnectReason, Goodbye

from ._faults import CorruptedDeviceKey, corrupt_device_key, wrong_server_key
from ._images import check_image, factory_image, install_user_part
from ._spec import Fault, SimConfig, VirtualDeviceSpec

#: The clock of every deadline (see the module's docstring).
_now = time.monotonic

__all__ = [
    "ConnectedFlag",
    "DeviceState",
    "FunctionHandler",
    "ReceivedEvent",
    "SimAttempt",
    "VirtualDevice",
    "backoff_delay",
]

log = logging.getLogger("cyan.sim")

#: A function handler: (device, function name, argument) -> the int32 the function returns.
FunctionHandler = Callable[["VirtualDevice", str, bytes], int]

# Outcomes of attempts that did not end with a protocol `Reason`.
CONNECT_FAILED = "connect_failed"
CONNECT_TIMEOUT = "connect_timeout"
STOPPED = "stopped"
DROPPED = "dropped"
#: The outcome of a session that ended with the device's reset after an update: "reset_" + the reason
#: (update, update_error, update_timeout; protocol.md §6.10, §7).
RESET = "reset_"

#: The timer is armed this much after the core's deadline: the loop's clock and the wall clock drift
#: apart by microseconds, and a timer that fires a hair early would only be re-armed.
_TIMER_SLACK = 0.001
#: A deadline at least this far off goes on the coarse timers, which may fire it up to a second late.
_FAR = 5.0


#: <linux/in.h>; Python's socket module does not name it.
_BIND_ADDRESS_NO_PORT: int | None = 24 if sys.platform == "linux" else None


def _socket_from(address: str) -> socket.socket:
    """A non-blocking TCP socket bound to `address`, its port left to the connect.

    A bind to port 0 picks the port at once, searching the address's ports in use: with tens of thousands of
    devices connected from one address that search was most of the simulator's CPU (system time). Linux's
    IP_BIND_ADDRESS_NO_PORT defers the choice to the connect, which looks it up by the whole address pair."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET and _BIND_ADDRESS_NO_PORT is not None:
            sock.setsockopt(socket.IPPROTO_IP, _BIND_ADDRESS_NO_PORT, 1)
        sock.setblocking(False)
        sock.bind((address, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def backoff_delay(failures: int) -> float:
    """Seconds a device waits after its `failures`-th consecutive failed attempt (§8.3):
    1000 ms x 2^min(7, (n-1) div 5), so 1 s for attempts 1-5, 2 s for 6-10, ... 128 s from 36 on."""
    if failures < 1:
        return 0.0
    return float(2 ** min(7, (min(failures, 255) - 1) // 5))


class DeviceState(enum.StrEnum):
    STOPPED = "stopped"
    #: Waiting for the next attempt (the backoff of §8.3, or the start ramp).
    WAITING = "waiting"
    #: Opening the TCP connection (blinking cyan, §9.5).
    CONNECTING = "connecting"
    #: Socket open, RSA handshake and Hello under way (fast-blinking cyan).
    HANDSHAKE = "handshake"
    #: The server answered the Hello (breathing cyan).
    CONNECTED = "connected"


@dataclass(frozen=True, slots=True)
class SimAttempt:
    """How one connection attempt ended."""

    #: Unix time at which the TCP connect started (for records; durations use the monotonic clock).
    started_at: float
    #: Seconds from the TCP connect to the end of the attempt.
    duration: float
    #: The protocol step it ended in; None when the TCP connection never opened.
    step: Step | None
    #: The protocol reason it ended for; None when it ended otherwise (see `outcome`).
    reason: Reason | None
    #: True when the Hello exchange completed, i.e. the device was connected (§5).
    connected: bool
    #: The reason's value, or connect_failed, connect_timeout, stopped (our stop) or dropped (fault).
    outcome: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        """A failed attempt counts towards the reconnect backoff (§8.3); a session that ended does not."""
        return not self.connected and self.outcome != STOPPED


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event the device received through one of its subscriptions."""

    name: str
    data: bytes
    received_at: float


class ConnectedFlag:
    """`asyncio.Event`-like view of whether the device is connected: `is_set()` and `await wait()`.

    Far smaller than an `asyncio.Event` per device (which carries a deque); waiters are created only
    when someone waits.
    """

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    async def wait(self) -> bool:
        if self._value:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(future)
        try:
            await future
        finally:
            if self._waiters is not None and future in self._waiters:
                self._waiters.remove(future)
        return True

    def _set(self, value: bool) -> None:
        self._value = value
        if value and self._waiters:
            waiters, self._waiters = self._waiters, None
            for future in waiters:
                if not future.done():
                    future.set_result(None)


class VirtualDevice:
    """One simulated Photon/P1/Core: connects, keeps its session, reconnects with the firmware's backoff.

    Drive it with `start(host, port)` and `await stop()`, or `await run(host, port, stop=event)`.
    """

    __slots__ = (
        "_application",
        "_connect_task",
        "_counter",
        "_device_key",
        "_failures",
        "_function_handler",
        "_host",
        "_image",
        "_image_info",
        "_link",
        "_loop",
        "_ota_disconnects",
        "_ota_flag",
        "_port",
        "_received",
        "_retry_handle",
        "_server_key",
        "_source_address",
        "_state",
        "_stopping",
        "attempt_count",
        "attempts",
        "config",
        "connect_count",
        "connected",
        "failure_count",
        "failures_by_outcome",
        "ignored_count",
        "last_failure",
        "ping_round_trips",
        "published_count",
        "rate_limited_count",
        "spec",
        "update_failures",
        "updates_applied",
    )

    def __init__(
        self,
        spec: VirtualDeviceSpec,
        server_public_key: rsa.RSAPublicKey,
        *,
        config: SimConfig | None = None,
        function_handler: FunctionHandler | None = None,
        source_address: str | None = None,
    ) -> None:
        self.spec = spec
        self.config = config or SimConfig()
        # The server key the device holds; a WRONG_SERVER_KEY device holds another one (§2.3, §9.3).
        self._server_key = wrong_server_key() if spec.fault is Fault.WRONG_SERVER_KEY else server_public_key
        self._device_key: rsa.RSAPrivateKey | None = None
        self._function_handler = function_handler
        self._source_address = source_address
        self._application = _build_application(spec)
        self._counter = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host = ""
        self._port = 0
        self._state = DeviceState.STOPPED
        self._stopping = False
        self._failures = 0
        self._retry_handle: asyncio.TimerHandle | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._link: _Link | None = None
        self._received: deque[ReceivedEvent] | None = None
        #: Connected (breathing cyan) or not; `await device.connected.wait()` waits for it.
        self.connected = ConnectedFlag()
        #: The latest attempts, oldest first (at most `config.attempt_history`).
        self.attempts: list[SimAttempt] = []
        self.attempt_count = 0
        self.connect_count = 0
        #: Failed attempts (not connected), in total and by outcome.
        self.failure_count = 0
        self.failures_by_outcome: dict[str, int] = {}
        #: The protocol reason of the latest failed attempt that had one.
        self.last_failure: Reason | None = None
        self.published_count = 0
        self.rate_limited_count = 0
        self.ignored_count = 0
        #: The round trips (seconds) of its keep-alive pings the server acknowledged, oldest first, when
        #: `SimConfig.record_pings` is set; None otherwise.
        self.ping_round_trips: list[float] | None = [] if self.config.record_pings else None
        #: Updates applied, and updates that ended in a reset without one (invalid image, timeout).
        self.updates_applied = 0
        self.update_failures: dict[str, int] = {}
        #: OTA_DISCONNECT cuts off this many updates (the first one).
        self._ota_disconnects = 1 if spec.fault is Fault.OTA_DISCONNECT else 0
        #: Set after an applied update until a server Hello is received (the Hello's flag 0x01, §7.2).
        self._ota_flag = False
        self._image = b""
        self._image_info: ModuleInfo | None = None
        self.install_image(factory_image(spec.firmware))

    def __repr__(self) -> str:
        return f"<VirtualDevice {self.spec.label} {self._state.value}>"

    # -- identity ---------------------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self.spec.device_id

    @property
    def state(self) -> DeviceState:
        return self._state

    @property
    def application(self) -> Application:
        """Functions, variables (with their current values) and subscriptions, shared by every session."""
        return self._application

    @property
    def device_key(self) -> rsa.RSAPrivateKey:
        """The key the device really uses: the spec's, except for AMNESIA (a new key, made once, as the
        firmware does at boot, §12.1) and CORRUPT_KEY (the key read back from damaged bytes)."""
        if self._device_key is None:
            fault = self.spec.fault
            if fault is Fault.AMNESIA:
                self._device_key = generate_device_key()
            elif fault is Fault.CORRUPT_KEY:
                self._device_key = corrupt_device_key(self.spec.private_key)
            else:
                self._device_key = self.spec.private_key
        return self._device_key

    @property
    def presented_public_key_der(self) -> bytes:
        """The 162-byte public key the device sends in its handshake (§2.2, §3 S2)."""
        key = self.device_key
        if isinstance(key, CorruptedDeviceKey):
            return key.public_key_der
        return public_key_der(key.public_key())

    @property
    def received_events(self) -> list[ReceivedEvent]:
        """The latest events received through subscriptions, oldest first."""
        return list(self._received) if self._received is not None else []

    @property
    def last_attempt(self) -> SimAttempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def counter(self) -> int:
        return self._counter

    # -- firmware -------------------------------------------------------------------------------

    @property
    def image(self) -> bytes:
        """The user part the device runs: a factory image until an update is applied."""
        return self._image

    @property
    def image_info(self) -> ModuleInfo | None:
        return self._image_info

    def install_image(self, image: bytes) -> None:
        """Run this user part from the next connection on (as after an update or a USB flash): its hash
        goes into the system Describe and its PRODUCT_ID/PRODUCT_VERSION into the Hello (§5, §6.7)."""
        self._image_info = install_user_part(self._application, self.spec.firmware, image)
        self._image = image

    # -- user-level actions ---------------------------------------------------------------------

    def publish(self, name: str, data: str | bytes | None = None, *, private: bool = True, ttl: int = 60) -> bool:
        """Publish an event now. False when not connected or refused by the firmware's rate limit (§6.4)."""
        link = self._link
        if link is None or self._state is not DeviceState.CONNECTED:
            return False
        sent = link.publish(name, data, private=private, ttl=ttl)
        link.flush_and_arm()
        return sent

    def publish_vitals(self) -> bool:
        """`Particle.publishVitals()`: post the diagnostics unasked (Device OS 1.2+). False when not connected
        or the firmware has no diagnostics."""
        link = self._link
        if link is None or self._state is not DeviceState.CONNECTED:
            return False
        sent = link.publish_vitals()
        link.flush_and_arm()
        return sent

    def set_variable(self, name: str, value: bool | int | float | str) -> None:
        kind, _ = self._application.variables[name]
        self._application.variables[name] = (kind, value)

    def call_function(self, name: str, argument: bytes) -> int:
        """Run a function as the application does when the server calls it; the return value goes back."""
        if self._function_handler is not None:
            try:
                return self._function_handler(self, name, argument)
            except Exception:
                # A bug in a test's handler must not take the socket down with it (data_received would
                # fail and the attempt would read as the server's doing): log it, answer -1.
                log.exception("device %s: function handler for %r failed", self.spec.label, name)
                return -1
        app = self.spec.app
        text = argument.decode("utf-8", "replace")
        if app.argument_variable is not None and app.argument_variable in self._application.variables:
            self.set_variable(app.argument_variable, text)
        if app.call_event is not None:
            self.publish(app.call_event, argument)
        return len(argument)

    # -- life cycle -------------------------------------------------------------------------------

    def start(self, host: str, port: int, *, delay: float = 0.0) -> None:
        """Begin connecting to host:port (after `delay` seconds); returns at once. Needs a running loop."""
        if self._state is not DeviceState.STOPPED:
            raise RuntimeError(f"{self!r} is already running")
        self._loop = asyncio.get_running_loop()
        self._host, self._port = host, port
        self._stopping = False
        self._failures = 0
        self._state = DeviceState.WAITING
        self._retry_handle = self._loop.call_later(delay, self._begin_attempt)

    async def stop(self) -> None:
        """Disconnect the normal way (Goodbye on 2.0+, half-close, §8.4) and stay disconnected."""
        waiters = self._begin_stop()
        if waiters:
            await asyncio.wait(waiters)
        self._stopped()

    async def run(self, host: str, port: int, *, stop: asyncio.Event) -> None:
        """Connect and stay connected (reconnecting after failures) until `stop` is set, then stop."""
        self.start(host, port)
        try:
            await stop.wait()
        finally:
            await self.stop()

    def _begin_stop(self) -> list[asyncio.Future[None] | asyncio.Task[None]]:
        """Start stopping; what is returned completes when the socket is closed and every timer gone."""
        self._stopping = True
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        waiters: list[asyncio.Future[None] | asyncio.Task[None]] = []
        if self._link is not None:
            waiters.append(self._link.shutdown())
        if self._connect_task is not None:
            self._connect_task.cancel()
            waiters.append(self._connect_task)
        if not waiters:
            self._state = DeviceState.STOPPED
        return waiters

    def _stopped(self) -> None:
        """After `_begin_stop`'s waiters: a connect cancelled before it began records no attempt, so
        nothing else would mark the device stopped."""
        if self._stopping and self._link is None:
            self._state = DeviceState.STOPPED
            self.connected._set(False)

    def _begin_attempt(self) -> None:
        self._retry_handle = None
        if self._stopping:
            return
        assert self._loop is not None
        self._state = DeviceState.CONNECTING
        self._connect_task = self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        started, started_at = _now(), time.time()
        link = _Link(self, started, started_at)
        outcome, detail = CONNECT_FAILED, ""
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                if self._source_address:
                    sock = _socket_from(self._source_address)
                    try:
                        await loop.sock_connect(sock, (self._host, self._port))
                        await loop.create_connection(lambda: link, sock=sock)
                    except BaseException:
                        sock.close()
                        raise
                else:
                    await loop.create_connection(lambda: link, self._host, self._port)
            return
        except TimeoutError:
            outcome, detail = CONNECT_TIMEOUT, f"no TCP connection within {self.config.connect_timeout:g} s (§1)"
        except OSError as exc:
            detail = f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            outcome = STOPPED
        finally:
            # A session that ended at once may already have scheduled (even begun) the next attempt.
            if self._connect_task is asyncio.current_task():
                self._connect_task = None
        if link.transport is None:
            # The socket never opened, so no protocol step was reached.
            self._attempt_ended(SimAttempt(started_at, _now() - started, None, None, False, outcome, detail))

    # -- called by the link ----------------------------------------------------------------------------

    def _link_opened(self, link: _Link) -> bool:
        self._link = link
        if self._stopping:
            return False
        self._state = DeviceState.HANDSHAKE
        return True

    def _session_started(self) -> None:
        self._ota_flag = False  # any server Hello clears it (§5)
        self._state = DeviceState.CONNECTED
        self._failures = 0  # the counter is reset when the device connects (§8.3)
        self.connect_count += 1
        self.connected._set(True)
        if self._application.metrics:
            self._application.metrics[_CLOUD_ATTEMPTS] = self.attempt_count + 1
            self._application.metrics[_CLOUD_DISCONNECTS] = self.connect_count - 1

    def _link_closed(self, link: _Link, attempt: SimAttempt) -> None:
        if self._link is link:
            self._link = None
        self._attempt_ended(attempt)

    def _attempt_ended(self, attempt: SimAttempt) -> None:
        self.connected._set(False)
        self.attempt_count += 1
        self.attempts.append(attempt)
        if len(self.attempts) > self.config.attempt_history:
            del self.attempts[0]
        if attempt.failed:
            self.failure_count += 1
            self.failures_by_outcome[attempt.outcome] = self.failures_by_outcome.get(attempt.outcome, 0) + 1
            if attempt.reason is not None:
                self.last_failure = attempt.reason
        log.debug(
            "device %s attempt ended: %s in step %s after %.3f s %s",
            self.spec.label,
            attempt.outcome,
            attempt.step.value if attempt.step else "-",
            attempt.duration,
            attempt.detail,
        )
        if self._stopping:
            self._state = DeviceState.STOPPED
            return
        assert self._loop is not None
        if attempt.failed:
            # Failed attempts back off (§8.3); a session that ended reconnects at once, as the system
            # thread does after a cloud disconnect; after a reset, once the device has rebooted.
            self._failures = min(255, self._failures + 1)
            delay = backoff_delay(self._failures) * self.config.backoff_scale
        elif attempt.outcome.startswith(RESET):
            delay = self.config.reboot_delay
        else:
            delay = 0.0
        self._state = DeviceState.WAITING
        self._retry_handle = self._loop.call_later(delay, self._begin_attempt)

    def _new_connection(self, now: float, damage_chunk: Callable[[int], bool] | None) -> DeviceConnection:
        return DeviceConnection(
            bytes.fromhex(self.spec.device_id),
            self.device_key,
            self._server_key,
            now,
            firmware=self.spec.firmware,
            application=self._application,
            config=self.config.device_config,
            ota_succeeded=self._ota_flag,
            check_update=check_image(self.spec.firmware),
            damage_chunk=damage_chunk,
        )

    def _reset(self, reason: str, image: bytes | None) -> None:
        """The firmware reset at the end of an update (§7.1, §7.2): the new image runs after the reboot."""
        if image is not None:
            self.install_image(image)
            self._ota_flag = True
            self.updates_applied += 1
            log.info("device %s applied an update: %s", self.spec.label, self._image_info)
        else:
            self.update_failures[reason] = self.update_failures.get(reason, 0) + 1
            log.info("device %s reset without applying an update: %s", self.spec.label, reason)
        if self._application.booted_at is not None:
            self._application.booted_at = _now()

    def _record_event(self, event: ReceivedEvent) -> None:
        if self._received is None:
            self._received = deque(maxlen=self.config.received_events_limit)
        self._received.append(event)

    def _next_counter(self) -> int:
        self._counter += 1
        variable = self.spec.app.counter_variable
        if variable is not None and variable in self._application.variables:
            self.set_variable(variable, self._counter)
        return self._counter


#: What a Photon on Wi-Fi reports to a metrics Describe (Device OS `diagnostics.h` ids; the values as a Photon
#: reported them, signal in 8.8 and 16.16 fixed point): total and used RAM, network and cloud connected, one
#: attempt each, no errors or disconnects, -73 dBm (54 %), 19 dB SNR (32 %), Wi-Fi. The uptime and the cloud
#: connection counters are the device's own.
PHOTON_DIAGNOSTICS = {
    25: 83200,
    26: 32992,
    8: 4,
    9: 0,
    12: 0,
    27: 1,
    28: 0,
    10: 2,
    13: 0,
    30: 0,
    19: -18688,
    33: 13823,
    34: 8257,
    35: 1245184,
    36: 1,
    37: -4784128,
    20: 0,
    21: 0,
    22: 0,
}
_CLOUD_ATTEMPTS = 29
_CLOUD_DISCONNECTS = 14


def _build_application(spec: VirtualDeviceSpec) -> Application:
    app = spec.app
    variables: dict[str, tuple[VariableType, bool | int | float | str]] = {
        name: (kind, value) for name, kind, value in app.variables
    }
    reports = bool(spec.firmware.hello_flags & HelloFlag.DIAGNOSTICS)
    return Application(
        functions=list(app.functions),
        variables=variables,
        subscriptions=list(app.subscriptions),
        metrics=dict(PHOTON_DIAGNOSTICS) if reports else {},
        booted_at=_now() if reports else None,
    )


class _Link(asyncio.Protocol):
    """One TCP connection of a device: the byte pump between the socket and `DeviceConnection`."""

    __slots__ = (
        "_coarse",
        "_conn",
        "_damaged",
        "_device",
        "_drip",
        "_drip_handle",
        "_drop_at",
        "_end",
        "_lost",
        "_ota_received",
        "_ota_total",
        "_periodic_due",
        "_shutdown_handle",
        "_started",
        "_started_at",
        "_suppress_frame",
        "_timer",
        "_timer_due",
        "transport",
    )

    def __init__(self, device: VirtualDevice, started: float, started_at: float) -> None:
        self._device = device
        self._started = started  # `_now()`, for durations
        self._started_at = started_at  # unix time, for the record
        self._conn: DeviceConnection | None = None
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._coarse = False  # the deadline is on the loop's coarse timers instead
        self._periodic_due: list[float] | None = None
        self._drop_at: float | None = None
        # (outcome, reason, detail) decided locally: by our stop or by a fault, before the socket closed.
        self._end: tuple[str, Reason | None, str] | None = None
        self._lost: asyncio.Future[None] | None = None
        self._shutdown_handle: asyncio.TimerHandle | None = None
        self._drip: bytearray | None = None
        self._drip_handle: asyncio.TimerHandle | None = None
        self._suppress_frame = False
        # The update under way: chunks damaged once by OTA_DROP_CHUNKS, bytes received, size.
        self._damaged: set[int] = set()
        self._ota_received = 0
        self._ota_total = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self._device._link_opened(self):
            self._end = (STOPPED, None, "stopped while connecting")
            transport.close()
            return
        damage = self._damage_chunk if self._device.spec.fault is Fault.OTA_DROP_CHUNKS else None
        self._conn = self._device._new_connection(_now(), damage)
        self._arm()

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        if conn is None or conn.closed:
            return  # closing: the firmware reads and discards until the server closes (§8.4)
        now = _now()
        # On a breach the core raises after closing, and keeps the step and reason in `conn.failure`.
        with contextlib.suppress(ProtocolError):
            conn.receive_data(data, now)
        self._after_input(now)

    def eof_received(self) -> bool:
        conn = self._conn
        if conn is not None and not conn.closed:
            now = _now()
            conn.receive_eof(now)
            self._after_input(now)
        return False  # let the transport close: the firmware closes its socket too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        device = self._device
        conn = self._conn
        now = _now()
        connected = False
        step: Step | None = None
        reason: Reason | None = None
        detail = ""
        if conn is not None:
            connected = conn.step is Step.SESSION
            step = conn.step
            if not conn.closed:
                # Reset or vanished under us: the core takes it as the peer closing.
                conn.receive_eof(now)
                self._drain_events(now)
                detail = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        if self._end is not None:
            outcome, reason, detail = self._end
        elif conn is not None and conn.failure is not None:
            reason, detail = conn.failure.reason, conn.failure.detail
            outcome = reason.value
        else:
            reason = Reason.CLOSED_BY_PEER
            outcome = reason.value
            detail = detail or "the server closed the session"
        attempt = SimAttempt(self._started_at, now - self._started, step, reason, connected, outcome, detail)
        device._link_closed(self, attempt)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    # -- input --------------------------------------------------------------------------------------

    def _after_input(self, now: float) -> None:
        self._drain_events(now)
        self.flush_and_arm()

    def _drain_events(self, now: float) -> None:
        conn = self._conn
        assert conn is not None
        while (event := conn.next_event()) is not None:
            self._on_event(event, now)

    def _on_event(self, event: Event, now: float) -> None:
        device = self._device
        conn = self._conn
        assert conn is not None
        if isinstance(event, FunctionCalled):
            result = device.call_function(event.name, event.argument)
            if not conn.closed:
                conn.respond_function(event.request, result)
        elif isinstance(event, EventReceived):
            device._record_event(ReceivedEvent(event.name, event.data, now))
            for prefix, reply in device.spec.app.echo:
                if event.name.startswith(prefix):
                    self.publish(reply, event.data)
        elif isinstance(event, ServerHelloReceived):
            device._session_started()
            self._on_connected(now)
        elif isinstance(event, ConnectionFailed | ConnectionClosed):
            pass  # the connection is closed; the attempt is recorded when the socket is gone
        elif isinstance(event, MessageIgnored):
            device.ignored_count += 1
        elif isinstance(event, SessionStarted):
            # NO_HELLO: the Hello the core has just queued must not leave the device.
            self._suppress_frame = device.spec.fault is Fault.NO_HELLO
        elif isinstance(event, UpdateStarted):
            self._damaged.clear()
            self._ota_received, self._ota_total = 0, event.file_size
        elif isinstance(event, ChunkStored):
            self._ota_received += event.size
            if (
                device._ota_disconnects > 0
                and self._drop_at is None
                and self._ota_received >= device.spec.ota_disconnect_at * self._ota_total
            ):
                device._ota_disconnects -= 1
                self._drop_at = now  # at the next turn of the loop, after what is being read
        elif isinstance(event, DeviceReset):
            device._reset(event.reason, event.image)
            self._end = (f"{RESET}{event.reason}", None, f"the device reset ({event.reason})")
        elif isinstance(event, PingAcknowledged):
            if device.ping_round_trips is not None:
                device.ping_round_trips.append(event.round_trip)
        elif isinstance(event, TimeReceived | SignalReceived | PublishAcknowledged):
            pass  # the firmware sets its clock, blinks, completes the publish: nothing to simulate

    def _damage_chunk(self, index: int) -> bool:
        """OTA_DROP_CHUNKS: every n-th chunk of an update arrives damaged, the first time only."""
        every = self._device.spec.ota_drop_every
        if (index + 1) % every or index in self._damaged:
            return False
        self._damaged.add(index)
        return True

    def _on_connected(self, now: float) -> None:
        spec = self._device.spec
        if spec.app.periodic:
            self._periodic_due = [now + p.interval for p in spec.app.periodic]
        if spec.fault is Fault.DROP_MID_SESSION:
            self._drop_at = now + spec.drop_after

    def publish_vitals(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            conn.publish_vitals(_now())
        except LocalProtocolError:
            return False
        return True

    def publish(self, name: str, data: str | bytes | None, *, private: bool = True, ttl: int = 60) -> bool:
        conn = self._conn
        device = self._device
        if conn is None or conn.closed:
            return False
        try:
            message_id = conn.publish(name, data, _now(), private=private, ttl=ttl)
        except (LocalProtocolError, ValueError):
            return False
        if message_id is None:
            device.rate_limited_count += 1
            return False
        device.published_count += 1
        return True

    # -- output -------------------------------------------------------------------------------------

    def flush_and_arm(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._flush()
        if conn.closed:
            self._close_transport()
        else:
            self._arm()

    def _flush(self) -> None:
        conn = self._conn
        transport = self.transport
        assert conn is not None
        assert transport is not None
        data = conn.data_to_send()
        if not data:
            return
        fault = self._device.spec.fault
        if fault is Fault.STALL_HANDSHAKE:
            # The nonce was read; the answer never leaves the device.
            return
        if self._suppress_frame:
            # NO_HELLO: the first frame after the handshake is the Hello (§5); it is dropped whole.
            self._suppress_frame = False
            length = int.from_bytes(data[:2], "big")
            data = data[2 + length :]
            if not data:
                return
        if fault is Fault.BYTE_BY_BYTE:
            self._drip_write(data)
            return
        if not transport.is_closing():
            transport.write(data)  # every frame whole in one write (§4, §13.1 #15)

    def _drip_write(self, data: bytes) -> None:
        if self._drip is None:
            self._drip = bytearray()
        self._drip += data
        if self._drip_handle is None:
            self._drip_one()

    def _drip_one(self) -> None:
        self._drip_handle = None
        transport = self.transport
        drip = self._drip
        if transport is None or transport.is_closing() or not drip:
            return
        transport.write(bytes(drip[:1]))
        del drip[:1]
        if drip:
            loop = asyncio.get_running_loop()
            self._drip_handle = loop.call_later(self._device.spec.byte_delay, self._drip_one)

    # -- the one timer ---------------------------------------------------------------------------------

    def _next_due(self) -> float | None:
        conn = self._conn
        assert conn is not None
        due = conn.get_timer()
        if self._drop_at is None and self._periodic_due is None:
            return due
        extra = [t for t in (self._drop_at, *(self._periodic_due or ())) if t is not None]
        if extra:
            due = min(extra) if due is None else min(due, *extra)
        return due

    def _arm(self) -> None:
        due = self._next_due()
        if due is not None and due - _now() >= _FAR:
            # The next ping, a handshake step's limit: on the loop's coarse timers, where moving the deadline
            # at each message costs a dictionary update (cyan.coarse_timers).
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            coarse_timers().schedule(self, due, self._on_timer)
            self._coarse = True
            return
        if self._coarse:
            coarse_timers().cancel(self)
            self._coarse = False
        if due is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        if self._timer is not None:
            if self._timer_due <= due:
                return  # an earlier wake-up is armed; it re-arms for this deadline when it fires
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer_due = due
        delay = max(0.0, due - _now()) + _TIMER_SLACK
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._coarse = False
        conn = self._conn
        if conn is None or conn.closed:
            return
        now = _now()
        if self._drop_at is not None and now >= self._drop_at:
            self._drop()
            return
        conn.handle_timer(now)
        if self._periodic_due is not None and not conn.closed:
            self._publish_periodic(now)
        self._after_input(now)

    def _drop(self) -> None:
        """DROP_MID_SESSION: the session vanishes without Goodbye (§8.4 "error disconnect"). A zero linger
        makes the close a reset, so the server learns of it at once rather than at its idle timeout."""
        conn = self._conn
        transport = self.transport
        assert conn is not None
        assert transport is not None
        fault = self._device.spec.fault
        self._end = (DROPPED, None, f"fault {fault.value if fault else 'none'}: socket reset without Goodbye")
        conn.close()
        self._cancel_timers()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def _publish_periodic(self, now: float) -> None:
        due = self._periodic_due
        assert due is not None
        device = self._device
        spec = device.spec
        for index, event in enumerate(spec.app.periodic):
            if now >= due[index]:
                data = event.render(device._next_counter(), spec.device_id, spec.label)
                self.publish(event.name, data, private=event.private)
                # Keep the cadence; after a long stall (a blocked loop) start again from now.
                next_due = due[index] + event.interval
                due[index] = next_due if next_due > now else now + event.interval

    # -- closing ---------------------------------------------------------------------------------------

    def _close_transport(self) -> None:
        """The core closed the connection (a failure or the peer's EOF): close the socket, as the
        firmware does after a handshake or session error (§3, §8.4)."""
        self._cancel_timers()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> asyncio.Future[None]:
        """Our stop: Goodbye (2.0+) and a half-close, then wait for the server to close (§8.4)."""
        loop = asyncio.get_running_loop()
        if self._lost is None:
            self._lost = loop.create_future()
        transport = self.transport
        conn = self._conn
        if self._end is None and (conn is None or not conn.closed):
            self._end = (STOPPED, None, "stopped")
        if transport is None or transport.is_closing():
            return self._lost
        config = self._device.config
        said_goodbye = False
        if conn is not None and not conn.closed:
            if (
                config.goodbye_on_stop
                and conn.step is Step.SESSION
                and conn.firmware.hello_flags & HelloFlag.GOODBYE
                and not self._drip
            ):
                conn.goodbye(Goodbye(cloud_reason=CloudDisconnectReason.USER))
                self._flush()
                said_goodbye = True
            conn.close()
        self._cancel_timers()
        if said_goodbye and transport.can_write_eof():
            transport.write_eof()
            self._shutdown_handle = loop.call_later(config.disconnect_timeout, transport.close)
        else:
            transport.close()
        return self._lost

    def _cancel_timers(self) -> None:
        for handle in (self._timer, self._drip_handle, self._shutdown_handle):
            if handle is not None:
                handle.cancel()
        self._timer = self._drip_handle = self._shutdown_handle = None
        if self._coarse:
            coarse_timers().cancel(self)
            self._coarse = False
        self._periodic_due = None
        self._drop_at = None
