"""The device role: `DeviceConnection`, a Photon/P1/Core as its firmware behaves (protocol.md §3–§8, §13.2).

It is what the simulator runs, so it is deliberately *not* a tolerant peer: it parses server messages at
the fixed offsets the firmware uses, and fails the way the firmware fails (a function call without a
token closes the session on the new stack; any unexpected code closes it on the legacy stack). A server
that only works with a generic CoAP parser is caught here, not in the field.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import messages as m
from ._connection import BaseConnection
from ._errors import LocalProtocolError, Reason
from ._state import Role, State, Trigger
from .coap import Code, Message, MessageType
from .events import (
    ConnectionClosed,
    EventReceived,
    FunctionCalled,
    MessageIgnored,
    PublishAcknowledged,
    ServerHelloReceived,
    SessionStarted,
    SignalReceived,
    TimeReceived,
    VariableRequested,
)
from .firmware import DEVICE_OS_3_1_0, Firmware
from .framing import SessionCredentials
from .handshake import (
    DEVICE_ID_SIZE,
    NONCE_SIZE,
    SESSION_KEY_MESSAGE_SIZE,
    HandshakeError,
    Rng,
    build_identity_message,
    open_session_key_message,
)

__all__ = ["Application", "DeviceConfig", "DeviceConnection", "Subscription"]


@dataclass(frozen=True, slots=True)
class Subscription:
    prefix: str
    scope: m.SubscriptionScope = m.SubscriptionScope.MY_DEVICES
    device_id: str | None = None


@dataclass(slots=True)
class Application:
    """What the user firmware registered: functions, variables (with current values) and subscriptions."""

    functions: list[str] = field(default_factory=list)
    variables: dict[str, tuple[m.VariableType, bool | int | float | str]] = field(default_factory=dict)
    subscriptions: list[Subscription] = field(default_factory=list)
    #: The system Describe's module list (§6.7); empty on the virtual device.
    modules: list[dict[str, object]] = field(default_factory=list)

    def describe(self, flags: int, platform: int) -> dict[str, object]:
        document: dict[str, object] = {}
        if flags & m.DescribeFlags.APPLICATION:
            document["f"] = list(self.functions)
            document["v"] = {name: int(kind) for name, (kind, _value) in self.variables.items()}
        if flags & m.DescribeFlags.SYSTEM:
            document["p"] = platform
            document["m"] = list(self.modules)
        return document


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    #: Each blocking handshake read gives up 20 s after it started (§3 "Timeouts").
    handshake_step_timeout: float = 20.0
    #: A ping after this long without receiving anything (§8.1); `Particle.keepAlive()` changes it.
    ping_interval: float = 15.0
    #: After a ping, anything must arrive within this long (§8.1).
    ping_timeout: float = 10.0
    #: Old Core firmware sent only nonce ‖ id (52 bytes), without its public key (§3 S2).
    send_public_key: bool = True
    #: The new stack removes padding without checking it; a strict check catches bad servers (§4).
    strict_padding: bool = True


def _uint(data: bytes, offset: int, nibble: int) -> tuple[int, int]:
    """Option length as the firmware reads it: the low nibble, with the 13 and 14 extensions."""
    if nibble == 13:
        return data[offset] + 13, offset + 1
    if nibble == 14:
        return int.from_bytes(data[offset : offset + 2], "big") + 269, offset + 2
    return nibble, offset


class DeviceConnection(BaseConnection):
    """One connection attempt of a device, device side. Time and randomness are injected."""

    def __init__(
        self,
        device_id: bytes,
        device_key: rsa.RSAPrivateKey,
        server_public_key: rsa.RSAPublicKey,
        now: float,
        *,
        firmware: Firmware = DEVICE_OS_3_1_0,
        application: Application | None = None,
        config: DeviceConfig | None = None,
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(Role.DEVICE, rng)
        if len(device_id) != DEVICE_ID_SIZE:
            raise ValueError("a device id is 12 bytes")
        self.device_id = device_id
        self.firmware = firmware
        self.application = application or Application()
        self.config = config or DeviceConfig()
        self._device_key = device_key
        self._server_public_key = server_public_key
        self._deadline: float | None = now + self.config.handshake_step_timeout
        self._last_received = now
        self._ping_sent_at: float | None = None
        self._token = 0
        self._time_pending = False
        self._confirmable_events: set[int] = set()
        self._publish_times: deque[float] = deque(maxlen=4)

    @property
    def device_id_hex(self) -> str:
        return self.device_id.hex()

    # -- timers ---------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        if self.closed:
            return None
        if self.state is not State.CONNECTED:
            return self._deadline
        if self._ping_sent_at is not None:
            return self._ping_sent_at + self.config.ping_timeout
        return self._last_received + self.config.ping_interval

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        state = self.state
        if state is not State.CONNECTED:
            if self._deadline is not None and now >= self._deadline:
                reason = {
                    State.AWAIT_NONCE: Reason.NONCE_TIMEOUT,
                    State.AWAIT_SESSION_KEY: Reason.SESSION_KEY_TIMEOUT,
                    State.AWAIT_HELLO: Reason.HELLO_TIMEOUT,
                }[state]
                self._close_with(reason, f"no answer from the server in the {self.step.value} step")
            return
        if self._ping_sent_at is not None:
            if now >= self._ping_sent_at + self.config.ping_timeout:
                self._close_with(Reason.PING_TIMEOUT, "the server did not answer the keep-alive ping")
        elif now >= self._last_received + self.config.ping_interval:
            self._send(m.ping(self._next_message_id()))
            self._ping_sent_at = now

    # -- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        self._require_open()
        if not data:
            return
        self._last_received = now
        self._ping_sent_at = None
        state = self.state
        if state is State.AWAIT_NONCE:
            nonce = self._take_handshake_bytes(data, NONCE_SIZE)
            if nonce is not None:
                self._on_nonce(nonce, now)
                data = b""
            else:
                return
        if self.state is State.AWAIT_SESSION_KEY:
            answer = self._take_handshake_bytes(data, SESSION_KEY_MESSAGE_SIZE)
            if answer is None:
                return
            self._on_session_key(answer, now)
            data = bytes(self._handshake_buffer)
            self._handshake_buffer.clear()
        if data and self._decoder is not None:
            self._on_frames(data, now)

    def receive_eof(self, now: float) -> None:
        if self.closed:
            return
        if self.state is State.CONNECTED:
            self._machine.advance(Trigger.CLOSE)
            self._events.append(ConnectionClosed())
        else:
            self._close_with(Reason.CLOSED_BY_PEER, f"the server closed the connection in the {self.step.value} step")

    def close(self) -> None:
        if not self.closed:
            self._machine.advance(Trigger.CLOSE)

    def _on_nonce(self, nonce: bytes, now: float) -> None:
        public_der = None
        if self.config.send_public_key:
            public_der = self._device_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        self._outgoing += build_identity_message(self._server_public_key, nonce, self.device_id, public_der, self._rng)
        self._machine.advance(Trigger.NONCE_RECEIVED)
        self._deadline = now + self.config.handshake_step_timeout

    def _on_session_key(self, answer: bytes, now: float) -> None:
        try:
            raw = open_session_key_message(self._device_key, self._server_public_key, answer)
        except HandshakeError as exc:
            raise self._remote_failure(str(exc), exc.reason) from None
        credentials = SessionCredentials.from_bytes(raw)
        salt = credentials.salt
        firmware = self.firmware
        self._message_id = int.from_bytes(salt[:2], "little" if firmware.message_id_little_endian else "big")
        self._token = self._rng(1)[0] if firmware.random_token_seed else (salt[2] if firmware.legacy else 0)
        self._machine.advance(Trigger.SESSION_KEY_RECEIVED)
        self._start_session(credentials, firmware.max_incoming_frame, self.config.strict_padding)
        self._events.append(SessionStarted())
        self._send(m.device_hello(self._next_message_id(), self._hello()))
        self._deadline = now + firmware.hello_wait

    def _hello(self) -> m.Hello:
        fw = self.firmware
        extra: dict[str, int] = {}
        if fw.hello_has_system_info:
            extra = {
                "system_version": fw.module_version,
                "max_message_size": fw.max_message_size,
                "max_binary_size": fw.max_binary_size,
                "ota_chunk_size": fw.ota_chunk_size,
            }
        return m.Hello(fw.platform, 0xFFFF, fw.hello_flags, fw.platform, **extra)

    def _next_token(self) -> int:
        self._token = (self._token + 1) & 0xFF
        return self._token

    # -- frames, parsed at the firmware's fixed offsets ----------------------------------------

    def _on_frames(self, data: bytes, now: float) -> None:
        decoder = self._decoder
        assert decoder is not None
        for plaintext, message in self._messages(data):
            if self.closed:
                return
            self._on_message(plaintext, message, now)

    def _on_message(self, raw: bytes, message: Message, now: float) -> None:
        fw = self.firmware
        code = message.code
        tkl = raw[0] & 0x0F
        if fw.requires_request_token and tkl >= 2:
            tkl = 0  # the new stack logs it and treats it as no token (§6.1)
        path = raw[5 + tkl : 6 + tkl] if len(raw) > 5 + tkl and raw[4 + tkl] & 0x0F else b""
        if self.state is State.AWAIT_HELLO:
            if code == Code.POST and path == b"h":
                self._machine.advance(Trigger.HELLO_RECEIVED)
                self._deadline = None
                self._events.append(ServerHelloReceived())
                self._after_hello(now)
            else:
                self._other_message(raw, message, tkl, path, now)
            return
        if code == Code.POST and path == b"h":
            return  # a repeated Hello only clears the OTA flag (§5)
        self._other_message(raw, message, tkl, path, now)

    def _other_message(self, raw: bytes, message: Message, tkl: int, path: bytes, now: float) -> None:
        fw = self.firmware
        kind, code = message.type, message.code
        if code == Code.EMPTY:
            if kind is MessageType.CON:
                # The new stack answers a server ping with an id of its own (§6.1).
                mid = self._next_message_id() if fw.fresh_id_on_ping_and_signal_ack else message.message_id
                self._send(m.empty_ack(mid))
            elif kind is MessageType.ACK and message.message_id in self._confirmable_events:
                self._confirmable_events.discard(message.message_id)
                self._events.append(PublishAcknowledged(message.message_id))
            return
        if code == Code.CONTENT:
            # Any 2.05 is taken as the time, read at bytes 6..9 whatever its token (§6.1, §6.8).
            if len(raw) >= 10:
                self._time_pending = False
                self._events.append(TimeReceived(int.from_bytes(raw[6:10], "big")))
            return
        if kind is MessageType.ACK or code >= 0x40:
            if fw.drops_on_unknown_code:
                raise self._remote_failure(
                    f"the legacy stack does not understand code {code >> 5}.{code & 0x1F:02d} and disconnects",
                    Reason.UNSUPPORTED_CODE,
                )
            self._events.append(MessageIgnored("coded reply with no request to complete", message))
            return
        handlers: dict[tuple[int, bytes], Callable[[bytes, Message, int], None]] = {
            (Code.POST, b"f"): self._on_function_call,
            (Code.GET, b"v"): self._on_variable_request,
            (Code.GET, b"d"): self._on_describe_request,
            (Code.POST, b"e"): self._on_event,
            (Code.POST, b"E"): self._on_event,
            (Code.PUT, b"s"): self._on_signal,
            (Code.PUT, b"k"): self._on_key_change,
        }
        handler = handlers.get((code, path))
        if handler is None:
            if fw.drops_on_unknown_code:
                raise self._remote_failure(
                    f"the legacy stack does not understand {message.type.name} {code >> 5}.{code & 0x1F:02d} "
                    f"with path {path!r} and disconnects",
                    Reason.UNSUPPORTED_CODE,
                )
            # The new stack drops unknown requests silently, CON included (§6.1).
            self._events.append(MessageIgnored("request the firmware does not handle", message))
            return
        handler(raw, message, tkl)

    def _require_token(self, tkl: int, what: str) -> None:
        if tkl != 1 and self.firmware.requires_request_token:
            raise self._remote_failure(
                f"{what} without a 1-byte token: the firmware returns MISSING_REQUEST_TOKEN and closes (§6.1)",
                Reason.MISSING_REQUEST_TOKEN,
            )

    def _read_option_at(self, raw: bytes, offset: int, what: str) -> tuple[bytes, int]:
        try:
            length, start = _uint(raw, offset + 1, raw[offset] & 0x0F)
        except IndexError:
            raise self._remote_failure(f"{what} ends at byte {offset}", Reason.MALFORMED_MESSAGE) from None
        if raw[offset] == 0xFF or start + length > len(raw):
            raise self._remote_failure(f"{what} option at byte {offset} overruns the message", Reason.MALFORMED_MESSAGE)
        return raw[start : start + length], start + length

    def _on_function_call(self, raw: bytes, message: Message, tkl: int) -> None:
        self._require_token(tkl, "function call")
        # Name at offset 7 (TKL 1), then the argument option; only length nibbles are read (§6.5).
        name, after = self._read_option_at(raw, 7, "function name")
        argument, _ = self._read_option_at(raw, after, "function argument")
        too_long = len(argument) > self.firmware.max_function_argument
        self._send(m.function_ack(message.message_id, argument_too_long=too_long))
        text = name[: self.firmware.max_name].decode("utf-8", "replace")
        if text in self.application.functions:
            self._events.append(FunctionCalled(raw[4] if tkl else 0, text, argument))
        # An unknown function is ACKed and never answered (§6.5).

    def respond_function(self, request: int, return_value: int) -> None:
        """The function's return value: NON 2.04 with the call's token and a fresh id (§6.5)."""
        self._require_connected()
        self._send(m.function_return(self._next_message_id(), bytes((request,)), return_value))

    def _on_variable_request(self, raw: bytes, message: Message, tkl: int) -> None:
        self._require_token(tkl, "variable request")
        name_raw, _ = self._read_option_at(raw, 7, "variable name")
        name = name_raw[: self.firmware.max_name].decode("utf-8", "replace")
        token = raw[4:5]
        entry = self.application.variables.get(name)
        self._events.append(VariableRequested(name, entry is not None))
        if self.firmware.separate_variable_reply:
            self._send(m.empty_ack(message.message_id))
            if entry is None:
                self._send(m.content_response(self._next_message_id(), token, Code.NOT_FOUND, None))
            else:
                value = m.encode_variable(*entry)
                self._send(m.content_response(self._next_message_id(), token, Code.CONTENT, value))
        else:
            # Legacy: an unknown name falls back to an int read from address 0 (§6.6).
            value = m.encode_variable(*entry) if entry is not None else b"\x00\x00\x00\x00"
            self._send(m.piggybacked_response(message.message_id, token, Code.CONTENT, value))

    def _on_describe_request(self, raw: bytes, message: Message, tkl: int) -> None:
        # The flags byte sits at offset 8 (TKL 1); absent or out of range means "everything" (§6.7).
        flags = raw[8] if len(raw) > 8 and raw[7] == 0x41 else 3
        if flags > (3 if self.firmware.legacy else 7) or flags == 0:
            flags = 3
        token = raw[4 : 4 + tkl] if tkl else b""
        payload = self._describe_payload(flags)
        if self.firmware.separate_describe_reply:
            self._send(m.empty_ack(message.message_id))
            self._send(m.content_response(self._next_message_id(), token, Code.CONTENT, payload, confirmable=True))
        else:
            self._send(m.piggybacked_response(message.message_id, token, Code.CONTENT, payload))

    def _describe_payload(self, flags: int) -> bytes:
        if flags == m.DescribeFlags.METRICS:
            # Binary diagnostics: a header, id size 2 and value size 4, no entries (§6.7).
            return b"\x00\x04\x00\x02\x00\x04\x00"
        document = self.application.describe(flags & 3, self.firmware.platform)
        return json.dumps(document, separators=(",", ":")).encode()

    def _on_event(self, raw: bytes, message: Message, tkl: int) -> None:
        # Name options from offset 6 + TKL, consecutive Uri-Path segments joined by '/', an optional
        # Max-Age right after them, then the payload marker and data to the end (§6.4).
        offset = 6 + tkl
        segments = []
        while offset < len(raw) and raw[offset] != 0xFF and raw[offset] >> 4 == 0:
            value, offset = self._read_option_at(raw, offset, "event name")
            segments.append(value)
        if offset < len(raw) and raw[offset] >> 4 == 3 and raw[offset] != 0xFF:
            _, offset = self._read_option_at(raw, offset, "event max-age")
        data = raw[offset + 1 :] if offset < len(raw) and raw[offset] == 0xFF else b""
        name = b"/".join(segments)[: self.firmware.max_event_name].decode("utf-8", "replace")
        if any(name.encode().startswith(s.prefix.encode()) for s in self._all_subscriptions()):
            self._events.append(EventReceived(name, data))

    def _on_signal(self, raw: bytes, message: Message, tkl: int) -> None:
        on = len(raw) > 8 and raw[8] == 1
        mid = self._next_message_id() if self.firmware.fresh_id_on_ping_and_signal_ack else message.message_id
        self._send(m.signal_ack(mid, raw[4 : 4 + tkl] if tkl else b""))
        self._events.append(SignalReceived(on))

    def _on_key_change(self, raw: bytes, message: Message, tkl: int) -> None:
        # Legacy ignores it; the new stack ACKs a CON with a fresh id and does nothing on TCP (§6.10).
        if not self.firmware.legacy and message.type is MessageType.CON:
            self._send(m.empty_ack(self._next_message_id()))

    # -- after the Hello: what the firmware sends by itself (§5.1) -----------------------------

    def _system_subscriptions(self) -> list[Subscription]:
        if self.firmware.legacy:
            return [Subscription("spark", m.SubscriptionScope.ALL_DEVICES)]
        return [Subscription("particle"), Subscription("spark")]

    def _all_subscriptions(self) -> list[Subscription]:
        return self._system_subscriptions() + self.application.subscriptions

    def _after_hello(self, now: float) -> None:
        fw = self.firmware
        if fw.posts_system_describe:
            self._send(m.describe_post(self._next_message_id(), 1, self._describe_payload(1)))
        if fw.publishes_hardware_events:
            self._publish_system("spark/hardware/max_binary", str(fw.max_binary_size))
            self._publish_system("spark/hardware/ota_chunk_size", str(fw.ota_chunk_size))
        if fw.publishes_update_settings:
            self._publish_system("particle/device/updates/enabled", "true")
            self._publish_system("particle/device/updates/forced", "false")
        if fw.legacy:
            # Recorded 0.6.1 order: system subscription, time request, then the application's.
            self._send_subscriptions(self._system_subscriptions())
            self.sync_time()
            self._send_subscriptions(self.application.subscriptions)
            return
        self.sync_time()
        if fw.posts_application_describe:
            self._send(m.describe_post(self._next_message_id(), 2, self._describe_payload(2)))
        self._send_subscriptions(self._all_subscriptions())

    def _publish_system(self, name: str, data: str) -> None:
        self._send(m.device_event(self._next_message_id(), name, data))

    def _send_subscriptions(self, subscriptions: list[Subscription]) -> None:
        for s in subscriptions:
            self._send(m.subscribe(self._next_message_id(), s.prefix, s.scope, s.device_id))

    # -- commands -------------------------------------------------------------------------------

    def _require_connected(self) -> None:
        if self.state is not State.CONNECTED:
            raise LocalProtocolError(f"the device is not connected (state {self.state.value!r})")

    def publish(
        self,
        name: str,
        data: str | bytes | None,
        now: float,
        *,
        ttl: int = m.DEFAULT_EVENT_TTL,
        private: bool = True,
        with_ack: bool = False,
    ) -> int | None:
        """Publish an event; None when the firmware's rate limit refuses it (4 per second, §6.4)."""
        self._require_connected()
        if not name.startswith(("spark", "particle")):
            if len(self._publish_times) == 4 and now - self._publish_times[0] < 1.0:
                return None
            self._publish_times.append(now)
        # The firmware truncates the name and the data in bytes (§6.4); cut at a character boundary.
        raw_name = name.encode()[: self.firmware.max_event_name].decode("utf-8", "ignore")
        raw = data.encode() if isinstance(data, str) else data
        if raw is not None:
            raw = raw[: self.firmware.max_event_data]
        message_id = self._next_message_id()
        self._send(m.device_event(message_id, raw_name, raw, ttl=ttl, private=private, confirmable=with_ack))
        if with_ack:
            self._confirmable_events.add(message_id)
        return message_id

    def subscribe(self, subscription: Subscription) -> None:
        """Register a handler; while connected the subscription goes out at once (§6.4)."""
        self.application.subscriptions.append(subscription)
        if self.state is State.CONNECTED:
            self._send_subscriptions([subscription])

    def sync_time(self) -> None:
        """Ask for the time; one request at a time (§6.8)."""
        self._require_connected()
        if not self._time_pending:
            self._time_pending = True
            self._send(m.time_request(self._next_message_id(), self._next_token()))

    def set_variable(self, name: str, value: bool | int | float | str) -> None:
        kind, _ = self.application.variables[name]
        self.application.variables[name] = (kind, value)

    def goodbye(self, content: m.Goodbye) -> None:
        """Device OS 2.x says goodbye before an intentional disconnect (§6.10, §8.4)."""
        self._require_connected()
        if not self.firmware.hello_flags & m.HelloFlag.GOODBYE:
            raise LocalProtocolError("this firmware has no Goodbye message (2.0+)")
        self._send(m.goodbye(self._next_message_id(), content))
