"""The device role: `DeviceConnection`, a Photon/P1/Core as its firmware behaves (protocol.md §3–§8, §13.2).

It is what the simulator runs, so it is deliberately *not* a tolerant peer: it parses server messages at
the fixed offsets the firmware uses, and fails the way the firmware fails (a function call without a
token closes the session on the new stack; any unexpected code closes it on the legacy stack). A server
that only works with a generic CoAP parser is caught here, not in the field.
"""

from __future__ import annotations

import json
import math
import os
import zlib
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
    ChunkStored,
    ConnectionClosed,
    DeviceReset,
    EventReceived,
    FunctionCalled,
    MessageIgnored,
    PingAcknowledged,
    PublishAcknowledged,
    ServerHelloReceived,
    SessionStarted,
    SignalReceived,
    TimeReceived,
    UpdateStarted,
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

__all__ = ["Application", "DeviceConfig", "DeviceConnection", "Subscription", "UpdateCheck"]

#: A device refuses an update of this many chunks or more (MAX_CHUNKS, §7.1).
MAX_CHUNKS = 0xFFFF
#: The legacy stack repeats ChunkMissed after this long without a chunk (v0.7.0 `event_loop`, §7.1).
LEGACY_MISSED_REPEAT = 3.0
#: 0.6.x waits this long after publishing spark/device/ota_result before it resets (OTA README D2).
LEGACY_RESULT_DELAY = 1.0
#: The diagnostic source of the system's uptime in seconds (Device OS `diagnostics.h` DIAG_ID_SYSTEM_UPTIME).
_UPTIME = 6
#: OTA v3 (DO `firmware_update.h`): the receive window in bytes, the acknowledgement delay and count, and the
#: time without a chunk after which the device drops the transfer.
V3_RECEIVE_WINDOW = 128 * 1024
V3_ACK_DELAY = 0.2
V3_ACK_COUNT = 2
V3_TRANSFER_TIMEOUT = 300.0
#: System errors Device OS reports in OTA v3's error responses (DO `services/inc/system_error.h`).
_ERROR_PROTOCOL = -240
_ERROR_INVALID_STATE = -210
_ERROR_UPDATES_DISABLED = -1380
_ERROR_INVALID_SIZE = -1351
#: The new stack asks for n + max(n/5, 2) missed chunks, n the chunks of the last flight (`chunked_transfer.cpp`).
_MINIMUM_CHUNK_INCREASE = 2


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
    #: PRODUCT_ID() and PRODUCT_VERSION() of the running application, which the Hello carries (§5);
    #: None: not a product build, the platform id stands in.
    product_id: int | None = None
    product_version: int = 0xFFFF
    #: The diagnostics the system reports to a metrics Describe (§6.7): source id -> int32 value (Device OS
    #: `diagnostics.h` ids, e.g. 25 total RAM, 26 used RAM).
    metrics: dict[int, int] = field(default_factory=dict)
    #: The `now` at which the device booted: when set, the metrics report the uptime (source 6, seconds).
    booted_at: float | None = None

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
    #: The system resets the device when an update has written no chunk for this long (§7.2); None never
    #: does, as on the Linux virtual device (OTA README D5).
    update_timeout: float | None = 30.0
    #: False: the application called System.disableUpdates(), and UpdateBegin is refused (§7.1).
    updates_enabled: bool = True
    #: The new stack's Connection::FAST_OTA override; None follows the server's offer (§7.1).
    fast_ota: bool | None = None


@dataclass(frozen=True, slots=True)
class UpdateCheck:
    """The firmware's verdict on a received image (module validation before it is applied, §7.1)."""

    #: 0 when valid, else a negative system error (-1320 validation failed, -1330 integrity check failed,
    #: -1360 wrong platform, ...).
    error: int = 0
    #: The module's Describe entry (§6.7), which 0.6.x reports as "u" in spark/device/ota_result. This
    #: default is what the Linux virtual device reports for a raw image (OTA README scenario 3a).
    module: dict[str, object] = field(default_factory=lambda: {"s": 0, "l": "m", "vc": 0, "vv": 0, "d": []})


@dataclass(slots=True)
class _Download:
    """One update being received: the image buffer and the bitmap of chunks (§7.1, §A.4)."""

    file_size: int
    chunk_size: int
    fast: bool
    token: bytes
    image: bytearray
    received: bytearray
    #: The implicit index of non-fast mode, or the last index option (the firmware's `chunk_index`).
    index: int = 0
    #: After a ChunkMissed: the firmware's `updating == 2`.
    missing_phase: bool = False
    #: Chunks received since UpdateBegin or the last UpdateDone (the new stack's growth rule).
    chunk_count: int = 0
    #: The last index listed in a ChunkMissed (legacy `missed_chunk_index`).
    last_requested: int = 0
    #: When a chunk was last written or the update begun: the 30 s update timer (§7.2).
    last_written: float = 0.0
    #: When a chunk last arrived or ChunkMissed was last sent: the legacy 3 s repeat.
    last_chunk: float = 0.0

    @property
    def chunk_total(self) -> int:
        return len(self.received)

    def next_missing(self, start: int = 0) -> int | None:
        found = self.received.find(0, start)
        return None if found < 0 else found


@dataclass(slots=True)
class _V3Download:
    """One OTA v3 update being received (DO `FirmwareUpdate`): the chunks held in order, and a bitmap of
    those held beyond, within the receive window."""

    file_size: int
    chunk_size: int
    chunk_count: int
    window: int
    image: bytearray
    #: Chunks held in order (the firmware's `chunkIndex_`); bit k of `beyond` is chunk `in_order` + 1 + k, so
    #: bit 0 is clear whenever the window has moved past what arrived.
    in_order: int = 0
    beyond: int = 0
    unacked: int = 0
    last_chunk: float = 0.0
    has_gaps: bool = False
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    acks_sent: int = 0
    #: The message id of our answer to UpdateFinish (its ACK applies the update) or to a failed request.
    finish_id: int | None = None
    error_id: int | None = None


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
        device_key: rsa.RSAPrivateKey | None,
        server_public_key: rsa.RSAPublicKey | None,
        now: float,
        *,
        firmware: Firmware = DEVICE_OS_3_1_0,
        application: Application | None = None,
        config: DeviceConfig | None = None,
        rng: Rng = os.urandom,
        ota_succeeded: bool = False,
        check_update: Callable[[bytes], UpdateCheck] | None = None,
        damage_chunk: Callable[[int], bool] | None = None,
    ) -> None:
        """`ota_succeeded`: the device rebooted after an applied update and has not yet had a server Hello
        (the Hello's flag 0x01, §7.2). `check_update` validates a received image (default: valid).
        `damage_chunk(index)` injects faults: True makes the chunk fail its CRC check as if damaged."""
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
        #: The message id and time of the keep-alive ping awaiting its ACK, for its round trip.
        self._ping_out: tuple[int, float] | None = None
        self._token = 0
        self._time_pending = False
        self._confirmable_events: set[int] = set()
        self._publish_times: deque[float] = deque(maxlen=4)
        self._ota_succeeded = ota_succeeded
        self._check_update = check_update or (lambda image: UpdateCheck())
        self._damage_chunk = damage_chunk
        self._download: _Download | None = None
        self._v3: _V3Download | None = None
        #: 0.6.x: when to reset after publishing the update result, and its own UpdateDone frame, already
        #: encrypted, to write just before (OTA README D2, D3).
        self._reset_at: float | None = None
        self._reset: tuple[str, bytes | None] = ("update", None)
        self._held_frame = b""

    @property
    def device_id_hex(self) -> str:
        return self.device_id.hex()

    # -- timers ---------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        if self.closed:
            return None
        if self.state is not State.CONNECTED:
            return self._deadline
        if self._reset_at is not None:
            return self._reset_at
        download = self._download
        if download is not None:
            # No pings while updating (§7.2): only the update's own timers run.
            due = [] if self.config.update_timeout is None else [download.last_written + self.config.update_timeout]
            if download.missing_phase and self.firmware.finishes_update_itself:
                due.append(download.last_chunk + LEGACY_MISSED_REPEAT)
            return min(due) if due else None
        v3_due = self._v3_timer()
        if self._ping_sent_at is not None:
            ping_due = self._ping_sent_at + self.config.ping_timeout
        else:
            ping_due = self._last_received + self.config.ping_interval
        return ping_due if v3_due is None else min(ping_due, v3_due)

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
        if self._reset_at is not None:
            if now >= self._reset_at:
                self._outgoing += self._held_frame
                self._do_reset(*self._reset)
            return
        download = self._download
        if download is not None:
            timeout = self.config.update_timeout
            if timeout is not None and now >= download.last_written + timeout:
                self._do_reset("update_timeout", None)
            elif (
                download.missing_phase
                and self.firmware.finishes_update_itself
                and now >= download.last_chunk + LEGACY_MISSED_REPEAT
            ):
                self._send_missing(download, self.firmware.max_missed_chunks, now)
            return
        if self._v3 is not None and self._v3_on_timer(now):
            return
        if self._ping_sent_at is not None:
            if now >= self._ping_sent_at + self.config.ping_timeout:
                self._close_with(Reason.PING_TIMEOUT, "the server did not answer the keep-alive ping")
        elif now >= self._last_received + self.config.ping_interval:
            mid = self._next_message_id()
            self._send(m.ping(mid))
            self._ping_sent_at = now
            self._ping_out = (mid, now)

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
        # The RSA keys are None only in the UDP device role (datagram.py), which has no RSA handshake.
        assert self._device_key is not None
        assert self._server_public_key is not None
        public_der = None
        if self.config.send_public_key:
            public_der = self._device_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        self._outgoing += build_identity_message(self._server_public_key, nonce, self.device_id, public_der, self._rng)
        self._machine.advance(Trigger.NONCE_RECEIVED)
        self._deadline = now + self.config.handshake_step_timeout

    def _on_session_key(self, answer: bytes, now: float) -> None:
        assert self._device_key is not None
        assert self._server_public_key is not None
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
        flags = fw.hello_flags
        if self._ota_succeeded and fw.reports_ota_flag:
            flags |= m.HelloFlag.OTA_SUCCEEDED
        app = self.application
        product = fw.platform if app.product_id is None else app.product_id
        return m.Hello(product, app.product_version, flags, fw.platform, **extra)

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
            elif kind is MessageType.ACK and self._v3 is not None and self._v3_acknowledged(message.message_id):
                return
            elif kind is MessageType.ACK and self._ping_out is not None and message.message_id == self._ping_out[0]:
                self._events.append(PingAcknowledged(now - self._ping_out[1]))
                self._ping_out = None
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
        if fw.ota_protocol_v3:
            v3 = {b"S": self._on_update_start, b"C": self._on_update_chunk, b"F": self._on_update_finish}
            if code == Code.POST and path in v3:
                v3[path](message, now)
                return
            if path in (b"u", b"c", b"s"):
                # The legacy handlers are compiled out where OTA v3 is in (DO `protocol.cpp`): dropped unread.
                self._events.append(MessageIgnored("legacy OTA request to an OTA v3 device", message))
                return
        handlers: dict[tuple[int, bytes], Callable[[bytes, Message, int, float], None]] = {
            (Code.POST, b"f"): self._on_function_call,
            (Code.GET, b"v"): self._on_variable_request,
            (Code.GET, b"d"): self._on_describe_request,
            (Code.POST, b"e"): self._on_event,
            (Code.POST, b"E"): self._on_event,
            (Code.PUT, b"s"): self._on_signal,
            (Code.PUT, b"k"): self._on_key_change,
            (Code.POST, b"u"): self._on_update_begin,
            # SaveBegin: decodeType maps POST s to SAVE_BEGIN, which falls through to UpdateBegin (§6.3).
            (Code.POST, b"s"): self._on_update_begin,
            (Code.POST, b"c"): self._on_chunk,
            (Code.PUT, b"u"): self._on_update_done,
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
        handler(raw, message, tkl, now)

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

    def _on_function_call(self, raw: bytes, message: Message, tkl: int, now: float) -> None:
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

    def _on_variable_request(self, raw: bytes, message: Message, tkl: int, now: float) -> None:
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

    def _on_describe_request(self, raw: bytes, message: Message, tkl: int, now: float) -> None:
        # The flags byte sits at offset 8 (TKL 1); absent or out of range means "everything" (§6.7).
        flags = raw[8] if len(raw) > 8 and raw[7] == 0x41 else 3
        if flags > (3 if self.firmware.legacy else 7) or flags == 0:
            flags = 3
        token = raw[4 : 4 + tkl] if tkl else b""
        payload = self._describe_payload(flags, now)
        if self.firmware.separate_describe_reply:
            self._send(m.empty_ack(message.message_id))
            self._send(m.content_response(self._next_message_id(), token, Code.CONTENT, payload, confirmable=True))
        else:
            self._send(m.piggybacked_response(message.message_id, token, Code.CONTENT, payload))

    def _describe_payload(self, flags: int, now: float) -> bytes:
        if flags == m.DescribeFlags.METRICS:
            # Binary diagnostics: a header, id size 2 and value size 4, then one entry per source (§6.7).
            metrics = dict(self.application.metrics)
            if self.application.booted_at is not None:
                metrics[_UPTIME] = int(max(0.0, now - self.application.booted_at))
            return m.encode_metrics(metrics)
        document = self.application.describe(flags & 3, self.firmware.platform)
        return json.dumps(document, separators=(",", ":")).encode()

    def _on_event(self, raw: bytes, message: Message, tkl: int, now: float) -> None:
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

    def _on_signal(self, raw: bytes, message: Message, tkl: int, now: float) -> None:
        on = len(raw) > 8 and raw[8] == 1
        mid = self._next_message_id() if self.firmware.fresh_id_on_ping_and_signal_ack else message.message_id
        self._send(m.signal_ack(mid, raw[4 : 4 + tkl] if tkl else b""))
        self._events.append(SignalReceived(on))

    def _on_key_change(self, raw: bytes, message: Message, tkl: int, now: float) -> None:
        # Legacy ignores it; the new stack ACKs a CON with a fresh id and does nothing on TCP (§6.10).
        if not self.firmware.legacy and message.type is MessageType.CON:
            self._send(m.empty_ack(self._next_message_id()))

    # -- OTA: the firmware's chunked transfer (§7; N `chunked_transfer.cpp`, L v0.6.1 `spark_protocol.cpp`) --

    def _on_update_begin(self, raw: bytes, message: Message, tkl: int, now: float) -> None:
        fw = self.firmware
        token = raw[4 : 4 + tkl]
        flags = 0
        chunk_size = file_size = 0
        # The 12-byte payload is read at offset 8 only when the message has it and byte 7 is the payload
        # marker, i.e. with a 1-byte token; otherwise the device's defaults apply (§7.1).
        if len(raw) >= 20 and raw[7] == 0xFF:
            flags = raw[8]
            chunk_size = int.from_bytes(raw[9:11], "big")
            file_size = int.from_bytes(raw[11:15], "big")
        chunk_size = chunk_size or fw.ota_chunk_size
        file_size = file_size or fw.max_binary_size
        chunks = math.ceil(file_size / chunk_size)
        if not self.config.updates_enabled or file_size > fw.max_binary_size or chunks >= MAX_CHUNKS:
            # Refused: legacy ACKs 4.00 without a token, the new stack 5.03 with it (§7.1).
            if fw.legacy:
                self._send(Message(MessageType.ACK, Code.BAD_REQUEST, message.message_id))
            else:
                self._send(Message(MessageType.ACK, Code.SERVICE_UNAVAILABLE, message.message_id, token))
            return
        self._send(m.empty_ack(message.message_id))
        fast = bool(flags & 1)
        if self.config.fast_ota is not None and not fw.legacy:
            fast = self.config.fast_ota
        # Outside fast mode the bitmap is preset to "all received": missing chunks are handled one by one.
        received = bytearray(b"\x00" if fast else b"\x01") * chunks
        self._download = _Download(
            file_size, chunk_size, fast, token, bytearray(file_size), received, last_written=now, last_chunk=now
        )
        self._send(m.update_ready(self._next_message_id(), token, fast=fast))
        self._events.append(UpdateStarted(file_size, chunk_size, fast))

    def _on_chunk(self, raw: bytes, message: Message, tkl: int, now: float) -> None:
        fw = self.firmware
        if fw.legacy:
            self._send(m.empty_ack(message.message_id))  # legacy ACKs every chunk before anything else
        download = self._download
        if download is None:
            return  # "Received chunk when not updating"
        download.chunk_count += 1
        download.last_chunk = now
        # Options from offset 7, told apart by position: the CRC, then (fast mode) the index. Only the
        # length nibbles are read, and each value is read at its full width whatever the length (§7.1).
        offset, position, crc, index, indexed = 7, 0, 0, download.index, False
        while offset < len(raw) and raw[offset] != 0xFF:
            value = raw[offset + 1 : offset + 5]
            if position == 0:
                crc = int.from_bytes(value[:4], "big")
            elif position == 1:
                index, indexed = int.from_bytes(value[:2], "big"), True
            position += 1
            offset += (raw[offset] & 0x0F) + 1
        if offset >= len(raw):
            raise self._remote_failure("a Chunk without its payload marker", Reason.MALFORMED_MESSAGE)
        if not fw.legacy and not indexed:
            self._send(m.empty_ack(message.message_id))
        token = raw[4 : 4 + tkl]
        data = raw[offset + 1 :]
        download.index = index
        if index >= MAX_CHUNKS:
            if fw.legacy:
                raise self._remote_failure(f"chunk index {index} is out of range", Reason.MALFORMED_MESSAGE)
            return
        known = index < download.chunk_total
        if indexed and not fw.legacy and known and download.received[index]:
            return  # the new stack ignores a chunk it already has
        damaged = self._damage_chunk is not None and self._damage_chunk(index)
        if damaged or zlib.crc32(data) != crc:
            # Non-fast: ChunkReceived 4.00 and the same index again; fast: dropped, requested later (§7.1).
            if not indexed:
                self._send(m.chunk_received(self._next_message_id(), token, ok=False))
            return
        # The write lands in the OTA area, which ends at max_binary_size: what lies past it is not stored (the
        # flash write checks its range). An index far past the image would otherwise grow it to index x chunk
        # size bytes, up to 4 GiB (65534 x 65535) for one empty chunk, whose CRC is 0.
        start = index * download.chunk_size
        end = min(start + len(data), max(fw.max_binary_size, download.file_size))
        if end > len(download.image):
            download.image.extend(bytes(end - len(download.image)))
        if start < end:
            download.image[start:end] = data[: end - start]
        download.last_written = now
        if known:
            download.received[index] = 1
        download.index = index + 1
        self._events.append(ChunkStored(index, len(data)))
        answers = not indexed or (fw.answers_fast_chunks and not download.missing_phase)
        if answers:
            self._send(m.chunk_received(self._next_message_id(), token, ok=True))
        if fw.finishes_update_itself and download.missing_phase:
            missing = download.next_missing()
            if missing is None:
                self._finish_by_itself(download, now)
            elif missing > download.last_requested:
                self._send_missing(download, fw.max_missed_chunks, now)

    def _on_update_done(self, raw: bytes, message: Message, tkl: int, now: float) -> None:
        fw = self.firmware
        token = raw[4 : 4 + tkl]
        download = self._download
        if download is None:
            self._send(Message(MessageType.ACK, Code.CHANGED, message.message_id, token))
            return
        if download.next_missing() is not None:
            self._send(Message(MessageType.ACK, Code.BAD_REQUEST, message.message_id, token))
            download.missing_phase = True
            if fw.legacy:
                count = fw.max_missed_chunks
            else:
                grown = download.chunk_count + max(int(download.chunk_count * 0.2), _MINIMUM_CHUNK_INCREASE)
                count = min(grown, fw.max_missed_chunks)
            download.chunk_count = 0
            self._send_missing(download, count, now)
            return
        image, check = self._validate(download)
        payload = None if fw.ota_result_event else self._result_json(check)
        self._send(Message(MessageType.ACK, Code.CHANGED, message.message_id, token, payload=payload))
        self._finish(image, check, now)

    def _send_missing(self, download: _Download, count: int, now: float) -> None:
        indexes: list[int] = []
        position = 0
        while len(indexes) < count and (missing := download.next_missing(position)) is not None:
            indexes.append(missing)
            position = missing + 1
        download.last_chunk = now
        if indexes:
            download.last_requested = indexes[-1]
            self._send(m.chunk_missed(self._next_message_id(), indexes, confirmable=self.firmware.legacy))

    # -- OTA protocol v3 (Gen 3 and P2 from 3.0; DO `communication/src/firmware_update.cpp`) -------------

    def _v3_error(self, request: Message, error: int, text: str, *, separate: bool) -> int:
        """An error answer as the firmware sends it: its system error and message as JSON, with 5.03, which
        `coapCodeForSystemError` gives the protocol's, state and OTA errors alike; piggybacked on the ACK, or
        `separate` (CON, a new id) once the request was acknowledged. Returns the message id."""
        code = Code.SERVICE_UNAVAILABLE
        payload = json.dumps({"code": error, "message": text}, separators=(",", ":")).encode()
        if separate:
            mid = self._next_message_id()
            self._send(Message(MessageType.CON, code, mid, request.token, payload=payload))
            return mid
        self._send(Message(MessageType.ACK, code, request.message_id, request.token, payload=payload))
        return request.message_id

    def _v3_request_ok(self, message: Message) -> bool:
        """UpdateStart and UpdateFinish must be CON with a token; a breach gets a piggybacked error."""
        if message.type is not MessageType.CON:
            return False
        if not message.token:
            self._v3_error(message, _ERROR_PROTOCOL, "Message token is missing", separate=False)
            return False
        return True

    def _on_update_start(self, message: Message, now: float) -> None:
        if not self._v3_request_ok(message):
            return
        fw = self.firmware
        try:
            file_size = m.option_uint(message, m.OtaOption.FILE_SIZE) or 0
            chunk_size = m.option_uint(message, m.OtaOption.CHUNK_SIZE) or 0
        except ValueError:
            file_size = chunk_size = 0
        digest = message.option_values(m.OtaOption.FILE_SHA256)
        largest = (fw.max_message_size - m.OTA_V3_CHUNK_OVERHEAD) // 4 * 4
        if (
            not file_size
            or not m.MIN_OTA_V3_CHUNK <= chunk_size <= largest
            or chunk_size % 4
            or (digest and len(digest[0]) != 32)
        ):
            self._v3_error(message, _ERROR_PROTOCOL, "Invalid message options", separate=False)
            return
        self._send(m.empty_ack(message.message_id))
        self._v3 = None  # a new UpdateStart replaces the update under way
        if not self.config.updates_enabled:
            self._v3_error(message, _ERROR_UPDATES_DISABLED, "Firmware updates are disabled", separate=True)
            return
        if file_size > fw.max_binary_size:
            self._v3_error(message, _ERROR_INVALID_SIZE, "Invalid firmware size", separate=True)
            return
        count = -(-file_size // chunk_size)
        window = V3_RECEIVE_WINDOW // chunk_size
        self._v3 = _V3Download(file_size, chunk_size, count, window, bytearray(file_size), last_chunk=now)
        options = (
            (m.OtaOption.WINDOW_SIZE, m.uint_option(window)),
            (m.OtaOption.FILE_SIZE, m.uint_option(0)),  # nothing held from an earlier transfer
        )
        self._send(Message(MessageType.CON, Code.CREATED, self._next_message_id(), message.token, options))
        self._events.append(UpdateStarted(file_size, chunk_size, False))

    def _on_update_chunk(self, message: Message, now: float) -> None:
        download = self._v3
        if message.type is not MessageType.NON or message.token or not message.payload:
            return  # decodeChunkRequest refuses it; a NON without a token gets nothing back
        try:
            index = m.option_uint(message, m.OtaOption.CHUNK_INDEX)
        except ValueError:
            index = None
        if index is None:
            return
        if download is None:
            self._send(Message(MessageType.RST, Code.EMPTY, message.message_id))
            return
        data = message.payload
        download.received += 1
        last = download.chunk_count
        size_ok = (
            len(data) == download.chunk_size
            if index < last
            else (index - 1) * download.chunk_size + len(data) == download.file_size
        )
        if not 1 <= index <= last or not size_ok:
            # The firmware answers an invalid chunk with a reset and drops the update and the connection.
            self._send(Message(MessageType.RST, Code.EMPTY, message.message_id))
            self._v3 = None
            raise self._remote_failure(
                f"OTA v3 chunk {index} of {len(data)} bytes does not fit a {download.file_size}-byte file "
                f"in {download.chunk_size}-byte chunks",
                Reason.MALFORMED_MESSAGE,
            )
        duplicate = False
        if index <= download.in_order:
            duplicate = True
        elif index <= download.in_order + download.window:
            bit = 1 << (index - download.in_order - 1)
            if download.beyond & bit:
                duplicate = True
            else:
                if index - 1 > download.in_order and not download.beyond & (bit >> 1):
                    download.out_of_order += 1  # its predecessor has not arrived
                download.beyond |= bit
                start = (index - 1) * download.chunk_size
                download.image[start : start + len(data)] = data
                self._events.append(ChunkStored(index - 1, len(data)))
                while download.beyond & 1:
                    download.beyond >>= 1
                    download.in_order += 1
        if duplicate:
            download.duplicates += 1
        has_gaps = download.beyond != 0
        download.unacked += 1
        if (
            duplicate
            or has_gaps
            or has_gaps != download.has_gaps
            or download.in_order == last
            or download.unacked >= V3_ACK_COUNT
            or now - download.last_chunk >= V3_ACK_DELAY
        ):
            self._v3_ack(download)
        download.has_gaps = has_gaps
        download.last_chunk = now

    def _v3_ack(self, download: _V3Download) -> None:
        beyond = download.beyond
        words = (beyond.bit_length() + 31) // 32
        bitmap = beyond.to_bytes(words * 4, "little") if words else b""
        self._send(m.update_ack(self._next_message_id(), download.in_order, bitmap))
        download.unacked = 0
        download.acks_sent += 1

    def _on_update_finish(self, message: Message, now: float) -> None:
        if not self._v3_request_ok(message):
            return
        self._send(m.empty_ack(message.message_id))
        download = self._v3
        if download is None:
            self._v3_error(message, _ERROR_INVALID_STATE, "Invalid state", separate=True)
            return
        if message.option_values(m.OtaOption.CANCEL_UPDATE):
            self._v3 = None
            self._send(Message(MessageType.CON, Code.CHANGED, self._next_message_id(), message.token))
            return
        if download.in_order < download.chunk_count:
            download.error_id = self._v3_error(message, _ERROR_PROTOCOL, "Incomplete file transfer", separate=True)
            return
        check = self._check_update(bytes(download.image))
        if check.error:
            download.error_id = self._v3_error(message, check.error, "Invalid firmware", separate=True)
            return
        stats = {
            "recv_chunks": download.received,
            "dup_chunks": download.duplicates,
            "ooo_chunks": download.out_of_order,
            "sent_acks": download.acks_sent,
            "proc_time": 0,
        }
        payload = json.dumps(stats, separators=(",", ":")).encode()
        download.finish_id = self._next_message_id()
        self._send(Message(MessageType.CON, Code.CHANGED, download.finish_id, message.token, payload=payload))

    def _v3_acknowledged(self, message_id: int) -> bool:
        """The server's ACK of our answer to UpdateFinish applies the update; of an error answer, drops it."""
        download = self._v3
        assert download is not None
        if message_id == download.finish_id:
            self._v3 = None
            self._do_reset("update", bytes(download.image))
            return True
        if message_id == download.error_id:
            self._v3 = None
            return True
        return False

    def _v3_timer(self) -> float | None:
        download = self._v3
        if download is None:
            return None
        due = download.last_chunk + V3_TRANSFER_TIMEOUT
        if download.unacked:
            due = min(due, download.last_chunk + V3_ACK_DELAY)
        return due

    def _v3_on_timer(self, now: float) -> bool:
        """True when the device reset."""
        download = self._v3
        assert download is not None
        if now >= download.last_chunk + V3_TRANSFER_TIMEOUT:
            # "Transfer timeout": the firmware drops the update, and the error ends its session; here, as for
            # the legacy update timer, the device resets.
            self._v3 = None
            self._do_reset("update_timeout", None)
            return True
        if download.unacked and now >= download.last_chunk + V3_ACK_DELAY:
            self._v3_ack(download)
        return False

    def _validate(self, download: _Download) -> tuple[bytes, UpdateCheck]:
        image = bytes(download.image[: download.file_size])
        return image, self._check_update(image)

    def _result_json(self, check: UpdateCheck) -> bytes:
        """The update's result as the firmware formats it (`formatOtaUpdateStatusEventData`, §7.1)."""
        document: dict[str, object]
        if self.firmware.numeric_ota_result:
            document = {"r": check.error}
        else:
            document = {"r": "error" if check.error else "ok", "u": check.module}
        return json.dumps(document, separators=(",", ":")).encode()

    def _finish_by_itself(self, download: _Download, now: float) -> None:
        """Legacy: the last missing chunk arrived; the device sends its own UpdateDone and applies (§7.1).
        0.6.x encrypts that UpdateDone first but writes it after its result event (OTA README D3)."""
        image, check = self._validate(download)
        payload = None if self.firmware.ota_result_event else self._result_json(check)
        assert self._encoder is not None
        frame = self._encoder.encode(m.device_update_done(self._next_message_id(), payload).encode())
        if self.firmware.ota_result_event:
            self._held_frame = frame
        else:
            self._outgoing += frame
        self._finish(image, check, now)

    def _finish(self, image: bytes, check: UpdateCheck, now: float) -> None:
        """Apply (or not) and reset: always, right away on the new stack (OTA README D6), 1 s after the
        result event on 0.6.x (D2)."""
        self._download = None
        reset = ("update_error", None) if check.error else ("update", image)
        if self.firmware.ota_result_event:
            self._send(m.device_event(self._next_message_id(), "spark/device/ota_result", self._result_json(check)))
            self._reset = reset
            self._reset_at = now + LEGACY_RESULT_DELAY
            return
        self._do_reset(*reset)

    def _do_reset(self, reason: str, image: bytes | None) -> None:
        self._download = None
        self._reset_at = None
        self._held_frame = b""
        self._machine.advance(Trigger.CLOSE)
        self._events.append(DeviceReset(reason, image))

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
            self._send(m.describe_post(self._next_message_id(), 1, self._describe_payload(1, now)))
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
            self._send(m.describe_post(self._next_message_id(), 2, self._describe_payload(2, now)))
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

    def publish_vitals(self, now: float) -> None:
        """`Particle.publishVitals()`: post the metrics Describe unasked (§6.7; 1.2+, the diagnostics flag)."""
        self._require_connected()
        if not self.firmware.hello_flags & m.HelloFlag.DIAGNOSTICS:
            raise LocalProtocolError("this firmware reports no diagnostics (1.2+)")
        flags = m.DescribeFlags.METRICS
        self._send(m.describe_post(self._next_message_id(), flags, self._describe_payload(flags, now)))

    def set_variable(self, name: str, value: bool | int | float | str) -> None:
        kind, _ = self.application.variables[name]
        self.application.variables[name] = (kind, value)

    def goodbye(self, content: m.Goodbye) -> None:
        """Device OS 2.x says goodbye before an intentional disconnect (§6.10, §8.4)."""
        self._require_connected()
        if not self.firmware.hello_flags & m.HelloFlag.GOODBYE:
            raise LocalProtocolError("this firmware has no Goodbye message (2.0+)")
        self._send(m.goodbye(self._next_message_id(), content))
