"""The message layer over UDP (Electron, Gen 3, P2): `DatagramServerConnection` (udp-dtls.md §1.5).

Above DTLS the device speaks the same CoAP messages as on TCP, so this is `ServerConnection` with the
transport's differences, and nothing else:

* one CoAP message per DTLS record: `receive_message(plaintext)` in, `messages_to_send()` out (the caller
  seals each into its own record, as Device OS does);
* no RSA handshake: DTLS authenticated a raw P-256 key already. The device names itself in its Hello,
  which is confirmable and carries the 12-byte device id; that id and the DTLS key become
  `DeviceIdentified`, and the caller's `accept_device` / `reject` is the same key decision as on TCP;
* the Hello is answered by its ACK alone: Device OS sets no REQUIRE_HELLO_RESPONSE on UDP, so no server
  Hello is sent;
* confirmable messages of ours are retransmitted on the firmware's own CoAP timers (ACK_TIMEOUT 4 s,
  doubled each time, up to half again at random; 3 retransmissions; DO `coap_channel.h`), and the
  device's are deduplicated by message id: a retransmitted event, function return or OTA answer is
  acknowledged again, with the very same ACK, and acted upon once (RFC 7252 §4.5);
* the keep-alive is the device's: it pings every 25 s on Wi-Fi and every 23 min on cellular
  (`HAL_PLATFORM_*_CLOUD_KEEPALIVE_INTERVAL`), so the idle timeout follows the platform the Hello names;
* a session the device resumes with no handshake may carry no Hello at all (DO `protocol.cpp` `begin()`):
  it is built with the device id and the Hello the stored session remembers (`resumed_device_id`,
  `resumed_hello`), and the first message of any kind identifies it.

Everything else (functions, variables, events, describe, signals, the OTA messages, the time) is the TCP
code path, unchanged.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

from . import messages as m
from ._errors import LocalProtocolError, Reason
from ._state import Role, State, StateMachine, Trigger
from .coap import CoapDecodeError, Code, Message, MessageType, Option, decode
from .device import Application, DeviceConfig, DeviceConnection, UpdateCheck
from .events import DeviceIdentified, HelloReceived, ServerHelloReceived, SessionStarted
from .firmware import Firmware
from .handshake import Rng
from .server import ServerConfig, ServerConnection, _Request

__all__ = [
    "ARGON_4_0_2",
    "CELLULAR_PLATFORMS",
    "ELECTRON_2_3_1",
    "DatagramConfig",
    "DatagramDeviceConnection",
    "DatagramServerConnection",
    "hello_device_id",
    "keepalive_interval",
    "udp_hello_payload",
]

#: Platforms whose keep-alive is the cellular one, 23 min (Electron 10, Boron 13, B SoM 23, Tracker 26,
#: E SoM X 27 ... from DO `hal/shared/platforms.h`, those with `HAL_PLATFORM_CELLULAR`).
CELLULAR_PLATFORMS = frozenset({10, 13, 23, 25, 26, 27, 28, 35})


def keepalive_interval(platform_id: int) -> float:
    """The device's own ping interval: 25 s off cellular, 23 min on it (DO `hal/inc/hal_platform.h`)."""
    return 23 * 60.0 if platform_id in CELLULAR_PLATFORMS else 25.0


def hello_device_id(payload: bytes) -> bytes | None:
    """The device id a UDP Hello carries (DO `Messages::hello`: its length at payload byte 9, the id from
    byte 10), or None when it carries none (a TCP Hello, or one too short)."""
    if len(payload) < 10:
        return None
    length = payload[9]
    if length == 0 or len(payload) < 10 + length:
        return None
    return bytes(payload[10 : 10 + length])


@dataclass(frozen=True, slots=True)
class DatagramConfig(ServerConfig):
    """`ServerConfig` plus CoAP reliability over UDP (RFC 7252 §4.2, with Device OS's values)."""

    #: Off cellular: two missed 25 s pings and the device's 30 s wait for an ACK (see `idle_pings`).
    idle_timeout: float = 80.0

    #: First wait for an ACK; doubled after each retransmission (DO `CoAPMessage::ACK_TIMEOUT`).
    ack_timeout: float = 4.0
    #: Each wait is stretched by up to this factor at random, so that devices behind one NAT do not
    #: retransmit in step (DO adds up to half: `timeout * (rand() % 256) >> 9`).
    ack_random_factor: float = 1.5
    #: Retransmissions of one confirmable message before it is given up (DO `MAX_RETRANSMIT`).
    max_retransmit: int = 3
    #: How long a device message id is remembered to recognise its retransmissions (RFC 7252
    #: EXCHANGE_LIFETIME with the device's timers: 4 s x (2^4 - 1) x 1.5 + 2 x 100 s + 4 s ~ 294 s).
    exchange_lifetime: float = 300.0
    #: Message ids remembered at most, whatever their age: a bound on a device that floods.
    max_remembered: int = 64
    #: Device messages held while the key decision is pending (the device sends one at a time, NSTART 1).
    max_held: int = 8
    #: Idle timeout = the platform's keep-alive x this + `idle_grace`: two missed pings and the device's
    #: own 30 s wait for a ping's ACK (DO `dtls_protocol.cpp`).
    idle_pings: int = 2
    idle_grace: float = 30.0


@dataclass(slots=True)
class _Outgoing:
    message_id: int
    data: bytes
    #: When to send it again; None until `messages_to_send` hands it out (the moment it leaves).
    due: float | None
    wait: float
    transmissions: int = 1


@dataclass(slots=True)
class _Seen:
    expires: float
    replies: list[bytes]


class DatagramServerConnection(ServerConnection):
    """One device session over DTLS, server side. Time and randomness are injected, as everywhere.

    Life of a session::

        DatagramServerConnection(device_key_der, now)
        receive_message(CON POST h ...)    -> DeviceIdentified   (caller: accept_device(now) or reject(reason))
        accept_device(now)                 -> the Hello's ACK queued, HelloReceived
        ... the events and commands of ServerConnection
    """

    __slots__ = (
        "_device_id_high",
        "_held",
        "_hello_message",
        "_key_der",
        "_messages_out",
        "_replying_to",
        "_resumed_hello",
        "_resumed_id",
        "_seen",
        "_unacked",
        "resumed",
    )

    def __init__(
        self,
        device_key_der: bytes,
        now: float,
        *,
        config: DatagramConfig | None = None,
        rng: Rng = os.urandom,
        resumed_device_id: str | None = None,
        resumed_hello: m.Hello | None = None,
    ) -> None:
        config = config or DatagramConfig()
        # The base class starts a TCP handshake (a nonce queued, the nonce timer armed); over DTLS there is
        # none, so both are cleared and the timer becomes the wait for the first message.
        super().__init__(None, now, config=config, rng=rng)
        self._machine = StateMachine(Role.DATAGRAM_SERVER)
        self._outgoing.clear()
        self._deadline = now + config.hello_timeout
        self._key_der = device_key_der
        self._messages_out: list[bytes] = []
        self._unacked: dict[int, _Outgoing] = {}
        self._seen: dict[int, _Seen] = {}
        self._replying_to: int | None = None
        self._held: list[Message] = []
        #: The newest message id the device has used (its ids count up by one, DO `CoAPChannel`).
        self._device_id_high: int | None = None
        self._hello_message: Message | None = None
        self._resumed_id = resumed_device_id
        self._resumed_hello = resumed_hello
        #: The session carries on a stored one (no handshake); its Hello may never come.
        self.resumed = resumed_device_id is not None

    @property
    def datagram_config(self) -> DatagramConfig:
        assert isinstance(self.config, DatagramConfig)
        return self.config

    # -- output ---------------------------------------------------------------------------------

    def messages_to_send(self, now: float) -> list[bytes]:
        """The CoAP messages queued for the device, each for one DTLS record of its own. `now` is when they
        leave: the retransmission timers of the confirmable ones start then."""
        for pending in self._unacked.values():
            if pending.due is None:
                pending.due = now + pending.wait
        out, self._messages_out = self._messages_out, []
        return out

    def data_to_send(self) -> bytes:
        raise LocalProtocolError("a datagram session sends messages, not a stream: use messages_to_send()")

    def _send(self, message: Message) -> None:
        data = message.encode()
        self._messages_out.append(data)
        if message.type is MessageType.CON:
            config = self.datagram_config
            wait = self._jittered(config.ack_timeout)
            self._unacked[message.message_id] = _Outgoing(message.message_id, data, None, wait)
        elif message.type is MessageType.ACK and self._replying_to == message.message_id:
            # Kept so that a retransmission of what this answers gets this very answer again.
            seen = self._seen.get(message.message_id)
            if seen is not None:
                seen.replies.append(data)

    def _jittered(self, wait: float) -> float:
        factor = self.datagram_config.ack_random_factor - 1.0
        return wait * (1.0 + factor * self._rng(1)[0] / 256)

    # -- timers ---------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        due = super().get_timer()
        if self.closed:
            return None
        for pending in self._unacked.values():
            if pending.due is not None and (due is None or pending.due < due):
                due = pending.due
        return due

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self.state is State.AWAIT_IDENTITY and self._deadline is not None and now >= self._deadline:
            self._close_with(Reason.HELLO_TIMEOUT, "the device sent no Hello after the DTLS handshake")
            return
        config = self.datagram_config
        for pending in list(self._unacked.values()):
            if pending.due is None or now < pending.due:
                continue
            if pending.transmissions > config.max_retransmit:
                # Given up: a request among them fails on its own timer; the session ends by the idle
                # timeout, or carries on when the device is heard from again.
                del self._unacked[pending.message_id]
                continue
            pending.transmissions += 1
            pending.wait *= 2
            pending.due = now + pending.wait
            self._messages_out.append(pending.data)
        super().handle_timer(now)

    # -- input ----------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float, *, unix_time: float | None = None) -> None:
        raise LocalProtocolError("a datagram session takes messages, not a stream: use receive_message()")

    def receive_eof(self, now: float) -> None:
        raise LocalProtocolError("a datagram session has no end of stream; close() it")

    def receive_message(self, plaintext: bytes, now: float, *, unix_time: float | None = None) -> None:
        """One CoAP message from one DTLS record. Raises `RemoteProtocolError` (and closes) on a breach."""
        self._require_open()
        self._last_received = now
        self._unix_time = unix_time
        try:
            try:
                message = decode(plaintext)
            except CoapDecodeError as exc:
                raise self._remote_failure(
                    f"undecodable message {plaintext[:24].hex()}: {exc}", Reason.MALFORMED_MESSAGE
                ) from None
            self._receive(message, now)
        finally:
            self._replying_to = None

    def _receive(self, message: Message, now: float) -> None:
        if message.type in (MessageType.ACK, MessageType.RST):
            self._unacked.pop(message.message_id, None)
        elif self._duplicate(message, now):
            return
        else:
            high = self._device_id_high
            if high is None or _newer(message.message_id, high):
                self._device_id_high = message.message_id
        state = self.state
        if state is State.AWAIT_IDENTITY:
            self._on_identity_message(message, now)
        elif state is State.AWAIT_DECISION:
            if len(self._held) >= self.datagram_config.max_held:
                raise self._remote_failure(
                    f"more than {len(self._held)} messages before the key decision", Reason.UNEXPECTED_MESSAGE
                )
            self._held.append(message)
        elif message.code == Code.POST and message.uri_path[:1] == (b"h",):
            # A Hello again in a session (its app state changed after a resumption): answered, and taken.
            self._take_hello(message, now)
        else:
            self._dispatch(message, now)

    def _response_floor(self) -> int | None:
        return self._device_id_high

    def _find_request(self, message: Message) -> _Request | None:
        """As over TCP, but a separate answer (CON or NON with a code and a token) that is not newer than what
        the device had sent when the request left cannot be its answer: it is a late retransmission of the
        answer to an earlier request with the same 1-byte token, which the deduplication's bounded memory no
        longer held (a legacy update's chunks reuse every token within a second). Taken for the current
        request, it would skip a chunk the device never got."""
        request = super()._find_request(message)
        if (
            request is not None
            and request.floor is not None
            and message.type in (MessageType.CON, MessageType.NON)
            and not _newer(message.message_id, request.floor)
        ):
            return None
        return request

    def _finish(self, request: _Request) -> None:
        # Answered (or given up): a request is not sent again. A separate answer proves the device got it even
        # when its empty ACK was lost (RFC 7252 §5.2.2); a legacy chunk repeated after the device's memory of its
        # message id ran out would be written again at the next chunk's place.
        super()._finish(request)
        self._unacked.pop(request.message_id, None)

    def _duplicate(self, message: Message, now: float) -> bool:
        """Whether a CON or NON from the device is one seen already; a CON's answers are sent again."""
        config = self.datagram_config
        seen = self._seen.get(message.message_id)
        if seen is not None and now < seen.expires:
            if message.type is MessageType.CON:
                self._messages_out.extend(seen.replies)
            return True
        if seen is not None:
            del self._seen[message.message_id]
        # Forget the expired first, then the oldest, so that a bound is kept without a timer.
        if len(self._seen) >= config.max_remembered:
            for key in [k for k, v in self._seen.items() if v.expires <= now]:
                del self._seen[key]
            while len(self._seen) >= config.max_remembered:
                del self._seen[next(iter(self._seen))]
        self._seen[message.message_id] = _Seen(now + config.exchange_lifetime, [])
        self._replying_to = message.message_id
        return False

    def _on_identity_message(self, message: Message, now: float) -> None:
        is_hello = message.code == Code.POST and message.uri_path[:1] == (b"h",)
        if is_hello:
            raw_id = hello_device_id(message.payload or b"")
            if raw_id is None:
                raise self._remote_failure("the device Hello carries no device id", Reason.MALFORMED_IDENTITY)
            device_id = raw_id.hex()
            if self._resumed_id is not None and device_id != self._resumed_id:
                raise self._remote_failure(
                    f"the Hello names device {device_id} in a session stored for {self._resumed_id}",
                    Reason.KEY_MISMATCH,
                )
            self._hello_message = message
        elif self._resumed_id is not None:
            device_id = self._resumed_id
            self._held.append(message)
        else:
            raise self._remote_failure(
                f"the first message of a new session is {_describe(message)}, not the device Hello",
                Reason.UNEXPECTED_MESSAGE,
            )
        self.device_id = device_id
        self._machine.advance(Trigger.IDENTITY_RECEIVED)
        self._deadline = now + self.config.decision_timeout
        self._events.append(DeviceIdentified(device_id, self._key_der, None))

    # -- the caller's decision ------------------------------------------------------------------

    def accept(self, trusted_key: object, now: float) -> None:
        raise LocalProtocolError("over DTLS the key is proven already: use accept_device(now)")

    def accept_device(self, now: float) -> None:
        """The key policy accepts the device: its Hello is acknowledged and the session starts.

        Messages held while the decision was pending are processed now, so this may raise
        `RemoteProtocolError` for them."""
        if self.state is not State.AWAIT_DECISION:
            raise LocalProtocolError(f"accept_device() needs a device awaiting a decision, not {self.state.value!r}")
        self._machine.advance(Trigger.ACCEPTED)
        try:
            hello_message, self._hello_message = self._hello_message, None
            if hello_message is not None:
                self._replying_to = hello_message.message_id
                self._take_hello(hello_message, now)
            else:
                hello = self._resumed_hello or m.Hello(0, 0, m.HelloFlag(0), 0)
                self._start(hello, now)
            held, self._held = self._held, []
            for message in held:
                if self.closed:
                    break
                self._replying_to = message.message_id if message.type is not MessageType.ACK else None
                self._dispatch(message, now)
        finally:
            self._replying_to = None

    def _take_hello(self, message: Message, now: float) -> None:
        try:
            hello = m.parse_hello(message.payload or b"")
        except ValueError as exc:
            raise self._remote_failure(str(exc), Reason.MALFORMED_MESSAGE) from None
        if message.type is MessageType.CON:
            self._send(m.empty_ack(message.message_id))
        if self.state is State.CONNECTED:
            self.hello = hello
            self._set_idle_timeout(hello)
            assert self.device_id is not None
            self._events.append(HelloReceived(self.device_id, hello))
            return
        self._start(hello, now)
        if self.config.describe_delay is not None and not (hello.flags & m.HelloFlag.DEVICE_INITIATED_DESCRIBE):
            self._describe_at = now + self.config.describe_delay

    def _start(self, hello: m.Hello, now: float) -> None:
        self._machine.advance(Trigger.HELLO_RECEIVED)
        self._deadline = None
        self.hello = hello
        self._set_idle_timeout(hello)
        assert self.device_id is not None
        self._events.append(HelloReceived(self.device_id, hello))

    def _set_idle_timeout(self, hello: m.Hello) -> None:
        # The config is frozen and shared; a session whose platform pings at another pace gets its own copy.
        config = self.datagram_config
        idle = keepalive_interval(hello.platform_id) * config.idle_pings + config.idle_grace
        if idle != config.idle_timeout:
            self.config = replace(config, idle_timeout=idle)


def _newer(message_id: int, than: int) -> bool:
    """Serial-number order of 16-bit message ids (RFC 1982): `message_id` came after `than`."""
    return 0 < (message_id - than) % 0x10000 < 0x8000


def _describe(message: Message) -> str:
    path = "/".join(s.decode("utf-8", "replace") for s in message.uri_path)
    return f"{message.type.name} {message.code:#04x} {path or '(no path)'}"


#: Device OS 4.0.2 on an Argon (Gen 3, Wi-Fi): module version 4006, 1152-byte records from 3.0 on Gen 3
#: (udp-dtls.md §1.1). The UDP personality of the simulator.
ARGON_4_0_2 = Firmware(
    version=(4, 0, 2),
    platform=12,
    module_version=4006,
    max_message_size=1152,
    max_binary_size=1048576,
    ota_protocol_v3=True,
)


#: Device OS 2.3.1 on an Electron (Gen 2, cellular; the 2.x LTS): module version 2302, 900-byte records on Gen 2
#: (udp-dtls.md §1.1), no connection id, type-254 records after a resume (§1.4). Its Hello has no system
#: fields (they came with 3.0), and its keep-alive is the cellular 23 minutes.
ELECTRON_2_3_1 = Firmware(
    version=(2, 3, 1), platform=10, module_version=2302, max_message_size=900, max_binary_size=131072
)


def udp_hello_payload(hello: m.Hello, device_id: bytes) -> bytes:
    """A UDP Hello's payload as DO `Messages::hello` writes it: the TCP fields with the device id in."""
    payload = struct.pack(
        ">HHHHBB", hello.product_id, hello.product_version, int(hello.flags), hello.platform_id, 0, len(device_id)
    )
    payload += device_id
    if hello.system_version is not None:
        payload += struct.pack(
            ">HHIH",
            hello.system_version,
            hello.max_message_size or 0,
            hello.max_binary_size or 0,
            hello.ota_chunk_size or 0,
        )
    return payload


class DatagramDeviceConnection(DeviceConnection):
    """The device role over DTLS, as Device OS 3.1+ behaves on UDP: the simulator's Argon.

    After the caller's DTLS handshake, `start(now)` sends the confirmable Hello with the device id; its ACK
    completes the session (no server Hello on UDP). Events and function returns are confirmable, every
    confirmable message is retransmitted on the firmware's timers until acknowledged, and the server's
    confirmable messages are deduplicated by message id, their ACK sent again. One CoAP message per DTLS
    record: `receive_message(plaintext, now)` in, `messages_to_send(now)` out."""

    __slots__ = ("_hello_id", "_out", "_seen", "_unacked_device", "dconfig")

    def __init__(
        self,
        device_id: bytes,
        now: float,
        *,
        firmware: Firmware = ARGON_4_0_2,
        application: Application | None = None,
        config: DeviceConfig | None = None,
        datagram_config: DatagramConfig | None = None,
        rng: Rng = os.urandom,
        check_update: Callable[[bytes], UpdateCheck] | None = None,
    ) -> None:
        super().__init__(
            device_id,
            None,
            None,
            now,
            firmware=firmware,
            application=application,
            config=config or DeviceConfig(ping_interval=keepalive_interval(firmware.platform), ping_timeout=30.0),
            rng=rng,
            check_update=check_update,
        )
        self.dconfig = datagram_config or DatagramConfig()
        self._out: list[bytes] = []
        self._unacked_device: dict[int, _Outgoing] = {}
        self._seen: dict[int, _Seen] = {}
        self._hello_id: int | None = None
        self._deadline = None

    def start(self, now: float) -> None:
        """The DTLS session is up: send the Hello (DO `protocol.cpp` `hello()`)."""
        # The RSA steps do not exist over DTLS: pass through them to the wait for the Hello's answer.
        self._machine.advance(Trigger.NONCE_RECEIVED)
        self._machine.advance(Trigger.SESSION_KEY_RECEIVED)
        self._message_id = int.from_bytes(self._rng(2), "big")
        self._token = self._rng(1)[0]
        self._events.append(SessionStarted())
        hello_id = self._next_message_id()
        self._hello_id = hello_id
        payload = udp_hello_payload(self._hello(), self.device_id)
        self._send(Message(MessageType.CON, Code.POST, hello_id, options=((Option.URI_PATH, b"h"),), payload=payload))
        self._deadline = now + self.firmware.hello_wait + 60.0

    def resumed(self, now: float) -> None:
        """The saved DTLS session was resumed with no handshake: a ping says so, as Device OS does when its
        app state is unchanged and it skips the Hello (DO `protocol.cpp` `begin()`, udp-dtls.md §1.4)."""
        self._require_open()
        self._send(m.ping(self._next_message_id()))
        self._ping_sent_at = now

    def messages_to_send(self, now: float) -> list[bytes]:
        for pending in self._unacked_device.values():
            if pending.due is None:
                pending.due = now + pending.wait
        out, self._out = self._out, []
        return out

    def data_to_send(self) -> bytes:
        raise LocalProtocolError("a datagram session sends messages: use messages_to_send()")

    def _send(self, message: Message) -> None:
        # What Device OS makes confirmable on an unreliable channel (udp-dtls.md §1.5): events, function
        # returns and the OTA answers; NON everywhere else.
        if message.type is MessageType.NON and (
            (message.code == Code.POST and message.uri_path[:1] in ((b"e",), (b"E",)))
            or (message.code == Code.CHANGED and message.token)
        ):
            message = replace(message, type=MessageType.CON)
        data = message.encode()
        self._out.append(data)
        if message.type is MessageType.CON:
            wait = self.dconfig.ack_timeout * (1.0 + (self.dconfig.ack_random_factor - 1.0) * self._rng(1)[0] / 256)
            self._unacked_device[message.message_id] = _Outgoing(message.message_id, data, None, wait)
        elif message.type is MessageType.ACK:
            seen = self._seen.get(message.message_id)
            if seen is not None:
                seen.replies.append(data)

    def get_timer(self) -> float | None:
        if self.closed:
            return None  # a reset device retransmits nothing
        due = super().get_timer()
        for pending in self._unacked_device.values():
            if pending.due is not None and (due is None or pending.due < due):
                due = pending.due
        return due

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        for pending in list(self._unacked_device.values()):
            if pending.due is None or now < pending.due:
                continue
            if pending.transmissions > self.dconfig.max_retransmit:
                del self._unacked_device[pending.message_id]
                continue
            pending.transmissions += 1
            pending.wait *= 2
            pending.due = now + pending.wait
            self._out.append(pending.data)
        super().handle_timer(now)

    def receive_data(self, data: bytes, now: float) -> None:
        raise LocalProtocolError("a datagram session takes messages: use receive_message()")

    def receive_message(self, plaintext: bytes, now: float) -> None:
        self._require_open()
        self._last_received = now
        self._ping_sent_at = None
        try:
            message = decode(plaintext)
        except CoapDecodeError as exc:
            raise self._remote_failure(f"undecodable message: {exc}", Reason.MALFORMED_MESSAGE) from None
        if message.type in (MessageType.ACK, MessageType.RST):
            self._unacked_device.pop(message.message_id, None)
            if self.state is State.AWAIT_HELLO and message.message_id == self._hello_id:
                self._machine.advance(Trigger.HELLO_RECEIVED)
                self._deadline = None
                self._events.append(ServerHelloReceived())
                self._after_hello(now)
                return
        else:
            seen = self._seen.get(message.message_id)
            if seen is not None and now < seen.expires:
                if message.type is MessageType.CON:
                    self._out.extend(seen.replies)
                return
            if len(self._seen) >= self.dconfig.max_remembered:
                del self._seen[next(iter(self._seen))]
            self._seen[message.message_id] = _Seen(now + self.dconfig.exchange_lifetime, [])
        self._on_message(plaintext, message, now)
