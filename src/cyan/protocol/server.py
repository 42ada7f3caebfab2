"""The server role: `ServerConnection`, one per accepted device socket (protocol.md §3–§8, §13.1).

Life of a connection::

    ServerConnection(...)        -> nonce queued in data_to_send()
    receive_data(256 bytes)      -> DeviceIdentified        (caller: accept(key) or reject(reason))
    accept(key)                  -> session key queued, SessionStarted

Built with `server_key=None`, the two RSA private-key operations are the caller's: the connection emits
`PrivateKeyOperationNeeded` (decrypt the 256 bytes; later, sign the session key's digest) and waits for
`private_key_done(result)`, so that a caller can run them on other cores (design §6).
    receive_data(Hello frame)    -> HelloReceived           (server Hello queued at once)
    ... session events; commands call_function / read_variable / send_event / ...

Everything the firmware needs answered is answered here, without the caller: empty ACKs to every
confirmable message and to every event, the time, the server Hello. The caller owns policy (which key
to trust), storage and the clock.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from . import messages as m
from ._connection import BaseConnection
from ._errors import LocalProtocolError, Reason
from ._state import Role, State, Trigger
from .coap import Code, Message, MessageType, Option, format_code
from .events import (
    ChunkAcknowledged,
    ChunksMissed,
    ConnectionClosed,
    DescribeReceived,
    DeviceIdentified,
    EventPublished,
    FunctionFailed,
    FunctionReturned,
    GoodbyeReceived,
    HelloReceived,
    MessageIgnored,
    PingAnswered,
    PingReceived,
    PrivateKeyOperationNeeded,
    RequestTimedOut,
    SessionStarted,
    SignalAcknowledged,
    SubscriptionRequested,
    TimeRequested,
    UpdateChunkRefused,
    UpdateChunksAcknowledged,
    UpdateDoneAcknowledged,
    UpdateFinishAccepted,
    UpdateFinishedByDevice,
    UpdateReady,
    UpdateRefused,
    UpdateRequestFailed,
    UpdateStartAccepted,
    VariableRead,
    VariableReadFailed,
)
from .framing import MAX_PLAINTEXT_TO_DEVICE, SERVER_MAX_FRAME_LENGTH, SessionCredentials
from .handshake import (
    CREDENTIALS_SIZE,
    IDENTITY_MESSAGE_SIZE,
    NONCE_SIZE,
    HandshakeError,
    Rng,
    parse_identity_plaintext,
    private_decrypt,
    private_sign,
    session_key_digest,
)

__all__ = ["RequestKind", "ServerConfig", "ServerConnection"]

#: A device that rejects our session key closes within milliseconds; a close later than this, with no
#: Hello, is the device giving up for another reason (its own Hello wait, a reset).
_KEY_REJECTION_WINDOW = 1.0

_Builder = Callable[[int, int], Message]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Timers and limits of the server role, in seconds and bytes."""

    #: Nonce sent -> the device's 256 bytes must be in. The device itself gives up after 20 s (§3).
    identity_timeout: float = 30.0
    #: Device identified -> the caller must accept or reject; the device waits 20 s for our answer (§3).
    decision_timeout: float = 15.0
    #: Session key sent -> the device Hello must be in (SP uses 30 s, §3 "Timeouts").
    hello_timeout: float = 30.0
    #: Nothing received for this long closes an established session: 2 x the 15 s ping interval + 15 s
    #: (§8.1, §13.1 #13). Suspended while an update runs (§7.2).
    idle_timeout: float = 45.0
    #: Default wait for the answer to a function call, variable read, describe or signal.
    request_timeout: float = 20.0
    #: Request Describe this long after a Hello without the device-initiated-describe flag (§13.1 #6);
    #: None leaves it to the caller.
    describe_delay: float | None = 3.0
    #: Device frames above this length are refused before any buffering (§4 "Size limits").
    max_frame_length: int = SERVER_MAX_FRAME_LENGTH


class RequestKind(enum.Enum):
    FUNCTION = "function"
    VARIABLE = "variable"
    DESCRIBE = "describe"
    SIGNAL = "signal"
    UPDATE_BEGIN = "update_begin"
    CHUNK = "chunk"
    UPDATE_DONE = "update_done"
    UPDATE_START = "update_start"  # OTA v3
    UPDATE_FINISH = "update_finish"  # OTA v3


@dataclass(slots=True)
class _Request:
    request_id: int
    kind: RequestKind
    name: str
    token: int
    message_id: int
    deadline: float | None
    detail: int = 0  # signal: 1/0 on or off; describe: the flags asked for; UpdateFinish: 1 to cancel
    #: Over UDP: the newest message id the device had used when this request left (`_response_floor`).
    floor: int | None = None


class ServerConnection(BaseConnection):
    """One device connection, server side. Time and randomness are injected.

    `now` drives every timer: any clock that only moves forward (a server passes the monotonic clock, so that a
    step of the wall clock neither expires nor stretches a deadline). The one wall-clock reading the protocol
    needs, the answer to a device's time request (§6.8), is `receive_data`'s `unix_time`, or `now` when none
    is given (tests that use unix seconds for both).
    """

    __slots__ = (
        "_accepted_at",
        "_by_message_id",
        "_credentials",
        "_deadline",
        "_describe_at",
        "_discard_input",
        "_encrypted_credentials",
        "_idle_suspended",
        "_last_received",
        "_nonce",
        "_ping_sent_at",
        "_private_operation",
        "_request_ids",
        "_requests",
        "_server_key",
        "_tail_finished",
        "_token",
        "_unix_time",
        "_update_tail",
        "_v3_update",
        "config",
        "device_id",
        "hello",
        "variable_types",
    )

    def __init__(
        self,
        server_key: rsa.RSAPrivateKey | None,
        now: float,
        *,
        config: ServerConfig | None = None,
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(Role.SERVER, rng)
        self.config = config or ServerConfig()
        self._server_key = server_key
        #: The private-key operation the caller is running for us (server_key None), and for a signature
        #: the credentials and their encryption waiting for it.
        self._private_operation: str | None = None
        self._credentials = b""
        self._encrypted_credentials = b""
        self._nonce = rng(NONCE_SIZE)
        #: When our outstanding ping was sent, if its round trip is being measured.
        self._ping_sent_at: float | None = None
        self._deadline: float | None = now + self.config.identity_timeout
        self._accepted_at = now
        self._describe_at: float | None = None
        self._last_received = now
        self._idle_suspended = False
        # A legacy device finishing a fast update by itself after ChunkMissed (CON on that stack): 0.6.x
        # then sends its result event and its own UpdateDone out of IV order (OTA README D3).
        self._update_tail = False
        #: An OTA v3 update is under way: a reset (RST) matching no request is the device refusing a chunk.
        self._v3_update = False
        self._tail_finished = False
        self._discard_input = False
        self._unix_time: float | None = None
        self._requests: dict[int, _Request] = {}  # by token
        self._by_message_id: dict[int, int] = {}  # message id -> token
        self._request_ids = 0
        self._message_id = int.from_bytes(rng(2), "big")
        self._token = rng(1)[0]
        self.device_id: str | None = None
        self.hello: m.Hello | None = None
        #: Variable types from the device's Describe, used to decode values (§6.6).
        self.variable_types: dict[str, m.VariableType] = {}
        self._outgoing += self._nonce

    # -- timers ---------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called, or None."""
        if self.closed:
            return None
        # Asked after every message: plain comparisons, no lists (an idle fleet asks once per ping).
        due = self._deadline
        if (describe_at := self._describe_at) is not None and (due is None or describe_at < due):
            due = describe_at
        if self.state is State.CONNECTED and not self._idle_suspended:
            idle = self._last_received + self.config.idle_timeout
            if due is None or idle < due:
                due = idle
        for request in self._requests.values():
            if (deadline := request.deadline) is not None and (due is None or deadline < due):
                due = deadline
        return due

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if self._deadline is not None and now >= self._deadline:
            if self._private_operation is not None:
                self._close_with(
                    Reason.SERVER_ERROR,
                    f"the server's private-key operation ({self._private_operation}) did not finish in time",
                )
                return
            reason, detail = {
                State.AWAIT_IDENTITY: (Reason.NONCE_TIMEOUT, "the device did not answer the nonce in time"),
                State.AWAIT_DECISION: (Reason.IDENTITY_TIMEOUT, "no accept or reject decision in time"),
                State.AWAIT_HELLO: (Reason.HELLO_TIMEOUT, "the device sent no Hello after the session key"),
            }[self.state]
            self._close_with(reason, detail)
            return
        if self.state is not State.CONNECTED:
            return
        if not self._idle_suspended and now >= self._last_received + self.config.idle_timeout:
            self._close_with(
                Reason.IDLE_TIMEOUT,
                f"nothing received from the device for {self.config.idle_timeout:g} s",
            )
            return
        if self._describe_at is not None and now >= self._describe_at:
            self._describe_at = None
            self.request_describe(now)
        for request in [r for r in self._requests.values() if r.deadline is not None and now >= r.deadline]:
            self._finish(request)
            self._events.append(RequestTimedOut(request.request_id, request.kind.value, request.name))

    # -- input --------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float, *, unix_time: float | None = None) -> None:
        """Feed bytes from the device. Raises `RemoteProtocolError` (and closes) on a protocol breach."""
        self._require_open()
        if not data:
            return
        self._last_received = now
        self._unix_time = unix_time
        if self._discard_input:
            return  # the IV chain is lost after a legacy update's out-of-order frame; the device resets
        state = self.state
        if state is State.AWAIT_IDENTITY and self._private_operation is None:
            identity = self._take_handshake_bytes(data, IDENTITY_MESSAGE_SIZE)
            if identity is not None:
                self._on_identity(identity, now)
        elif state in (State.AWAIT_IDENTITY, State.AWAIT_DECISION):
            # A device sends nothing until it has our answer (§3); buffer what comes, bounded.
            self._handshake_buffer += data
            if len(self._handshake_buffer) > self.config.max_frame_length:
                raise self._remote_failure(
                    "the device sent data before the handshake answer", Reason.UNEXPECTED_MESSAGE
                )
        else:
            for plaintext, message in self._messages(data):
                if self.closed:
                    break
                if self._update_tail and self._out_of_order_result(plaintext):
                    continue
                if self.state is State.AWAIT_HELLO:
                    self._on_first_message(message, now)
                else:
                    self._dispatch(message, now)

    def receive_eof(self, now: float) -> None:
        """The device closed its side. In a session that is the normal end (§8.4)."""
        if self.closed:
            return
        if self.state is State.CONNECTED:
            self._machine.advance(Trigger.CLOSE)
            self._events.append(ConnectionClosed())
        elif self.state is State.AWAIT_HELLO:
            waited = now - self._accepted_at
            if waited < _KEY_REJECTION_WINDOW:
                # A device that cannot decrypt or verify the session key closes at once (§3 "S3 checks").
                self._close_with(
                    Reason.SESSION_KEY_REJECTED,
                    "the device closed the connection right after our session key: it could not decrypt "
                    "it, so the public key we used is not the device's",
                )
            else:
                self._close_with(
                    Reason.CLOSED_BY_PEER,
                    f"the device closed the connection {waited:.1f} s after our session key without sending its Hello",
                )
        else:
            self._close_with(Reason.CLOSED_BY_PEER, "the device closed the connection during the handshake")

    def _on_identity(self, message: bytes, now: float) -> None:
        if self._server_key is None:
            self._private_operation = "decrypt"
            self._deadline = now + self.config.decision_timeout
            self._events.append(PrivateKeyOperationNeeded("decrypt", message))
            return
        self._on_identity_plaintext(private_decrypt(self._server_key, message), now)

    def _on_identity_plaintext(self, plaintext: bytes | None, now: float) -> None:
        try:
            identity = parse_identity_plaintext(plaintext, self._nonce)
        except HandshakeError as exc:
            raise self._remote_failure(str(exc), exc.reason) from None
        self.device_id = identity.device_id.hex()
        self._machine.advance(Trigger.IDENTITY_RECEIVED)
        self._deadline = now + self.config.decision_timeout
        self._events.append(DeviceIdentified(self.device_id, identity.public_key_der, identity.public_key))

    # -- the caller's decision ------------------------------------------------------------------

    def accept(self, trusted_key: rsa.RSAPublicKey, now: float) -> None:
        """Answer the device with session credentials encrypted to `trusted_key` (§3 S3, §12.3).

        Bytes the device sent early are processed now, so this may raise `RemoteProtocolError` for them.
        """
        if self.state is not State.AWAIT_DECISION or self._private_operation is not None:
            raise LocalProtocolError(f"accept() needs a device awaiting a decision, not {self.state.value!r}")
        if trusted_key.key_size != 1024 or trusted_key.public_numbers().e != 65537:
            raise LocalProtocolError("a device key is RSA-1024 with e=65537 (protocol.md §2.2)")
        credentials = self._rng(CREDENTIALS_SIZE)
        encrypted, digest = session_key_digest(trusted_key, credentials, self._rng)
        if self._server_key is None:
            self._private_operation = "sign"
            self._credentials, self._encrypted_credentials = credentials, encrypted
            self._deadline = now + self.config.decision_timeout
            self._events.append(PrivateKeyOperationNeeded("sign", digest))
            return
        self._send_session_key(credentials, encrypted + private_sign(self._server_key, digest), now)

    def private_key_done(self, result: bytes | None, now: float) -> None:
        """The result of the `PrivateKeyOperationNeeded` asked for: the identity plaintext (None when its
        padding did not decrypt) or the 256-byte signature. May raise `RemoteProtocolError` (a bad identity,
        or bytes the device sent early)."""
        if self.closed:
            return  # the device went away while the operation ran
        operation = self._private_operation
        if operation is None:
            raise LocalProtocolError("no private-key operation is awaited")
        self._private_operation = None
        if operation == "decrypt":
            self._on_identity_plaintext(result, now)
            return
        if result is None or len(result) != 256:
            raise LocalProtocolError("a session key signature is 256 bytes (RSA-2048, protocol.md §3 S3)")
        encrypted, self._encrypted_credentials = self._encrypted_credentials, b""
        credentials, self._credentials = self._credentials, b""
        self._send_session_key(credentials, encrypted + result, now)

    def private_key_failed(self, detail: str) -> None:
        """The caller could not run the private-key operation: the connection closes (SERVER_ERROR)."""
        if self.closed:
            return
        if self._private_operation is None:
            raise LocalProtocolError("no private-key operation is awaited")
        self._private_operation = None
        self._close_with(Reason.SERVER_ERROR, detail)

    def _send_session_key(self, credentials: bytes, message: bytes, now: float) -> None:
        self._outgoing += message
        self._machine.advance(Trigger.ACCEPTED)
        self._start_session(SessionCredentials.from_bytes(credentials), self.config.max_frame_length, strict=True)
        self._deadline = now + self.config.hello_timeout
        self._accepted_at = now
        self._events.append(SessionStarted())
        leftover = bytes(self._handshake_buffer)
        self._handshake_buffer.clear()
        if leftover:
            self.receive_data(leftover, now)

    def reject(self, reason: Reason, detail: str = "") -> None:
        """Refuse the device: the connection closes without an answer, as Particle's cloud does (§9.3).

        The device then logs `Unable to receive key` / `code=-19` (legacy) or 26 / -220 (new).
        """
        if self.state is not State.AWAIT_DECISION:
            raise LocalProtocolError(f"reject() needs a device awaiting a decision, not {self.state.value!r}")
        self._private_operation = None
        self._close_with(reason, detail or f"rejected: {reason.value}")

    def close(self) -> None:
        """Close locally (shutdown, a replacing connection); emits nothing."""
        if not self.closed:
            self._machine.advance(Trigger.CLOSE)

    # -- Hello ----------------------------------------------------------------------------------

    def _on_first_message(self, message: Message, now: float) -> None:
        if not (message.code == Code.POST and message.uri_path[:1] == (b"h",)):
            raise self._remote_failure(
                f"the first message after the handshake is {_describe(message)}, not the device Hello",
                Reason.UNEXPECTED_MESSAGE,
            )
        try:
            hello = m.parse_hello(message.payload or b"")
        except ValueError as exc:
            raise self._remote_failure(str(exc), Reason.MALFORMED_MESSAGE) from None
        self._machine.advance(Trigger.HELLO_RECEIVED)
        self._deadline = None
        self.hello = hello
        # Answer at once: legacy firmware waits only 2 s, the new stack 4 s (§5).
        self._send(m.server_hello(self._next_message_id(), self._next_token()))
        if self.config.describe_delay is not None and not (hello.flags & m.HelloFlag.DEVICE_INITIATED_DESCRIBE):
            self._describe_at = now + self.config.describe_delay
        assert self.device_id is not None
        self._events.append(HelloReceived(self.device_id, hello))

    # -- messages in a session ------------------------------------------------------------------

    def _dispatch(self, message: Message, now: float) -> None:
        kind = message.type
        if kind in (MessageType.ACK, MessageType.RST):
            self._on_acknowledgement(message, now)
        elif message.code >= 0x40:
            self._on_response(message)
        else:
            self._on_device_request(message, now)

    def _on_device_request(self, message: Message, now: float) -> None:
        confirmable = message.type is MessageType.CON
        if message.is_empty:
            if confirmable:
                self._send(m.empty_ack(message.message_id))
                self._events.append(PingReceived())
            return
        path = message.uri_path
        first = path[0] if path else b""
        code = message.code
        if code == Code.POST and first in (b"e", b"E"):
            self._on_event(message, first == b"E")
        elif code == Code.GET and first == b"e":
            self._on_subscribe(message)
        elif code == Code.GET and first == b"t":
            if len(message.token) != 1:
                self._ignore("time request without the 1-byte token", message)
                return
            unix_time = int(now if self._unix_time is None else self._unix_time)
            self._send(m.time_response(message.message_id, message.token, unix_time))
            self._events.append(TimeRequested(unix_time))
        elif code == Code.POST and first == b"d":
            if confirmable:
                self._send(m.empty_ack(message.message_id))
            query = message.uri_query
            flags = query[0][0] if query and query[0] else 0
            self._events.append(self._describe_event(flags, message.payload or b"", None))
        elif code == Code.GET and first == b"c":
            # CON on the legacy stack, NON on the new: ACK both (the legacy stack needs it, §7.1).
            self._send(m.empty_ack(message.message_id))
            if confirmable and self._idle_suspended:
                self._update_tail = True
            try:
                indexes = m.parse_chunk_missed(message.payload)
            except ValueError as exc:
                self._ignore(str(exc), message)
                return
            self._events.append(ChunksMissed(tuple(indexes), confirmable))
        elif code == Code.POST and first == b"A":
            # OTA v3's UpdateAck: NON, never answered (DO `firmware_update.cpp` `initChunkAck`).
            if confirmable:
                self._send(m.empty_ack(message.message_id))
            try:
                index = m.option_uint(message, m.OtaOption.CHUNK_INDEX)
            except ValueError as exc:
                self._ignore(str(exc), message)
                return
            if index is None:
                self._ignore("UpdateAck without its chunk index", message)
                return
            self._events.append(UpdateChunksAcknowledged(index, message.payload or b""))
        elif code == Code.PUT and first == b"u":
            # The legacy stack's own UpdateDone after resent chunks (§7.1); NON, not answered.
            self._finish_tail(m.json_object_or_none(message.payload))
        elif code == Code.POST and first == b"x":
            try:
                goodbye = m.decode_goodbye(message.payload or b"")
            except ValueError as exc:
                self._ignore(str(exc), message)
                return
            self._events.append(GoodbyeReceived(goodbye))
        else:
            if confirmable:
                self._send(m.empty_ack(message.message_id))
            self._ignore(f"device request {_describe(message)} has no meaning here", message)

    def _out_of_order_result(self, plaintext: bytes) -> bool:
        """0.6.x's result event, encrypted with the wrong IV: its first 16 bytes are noise (they may read
        as any header: CON, ACK, RST), the rest ``...ota_result`` and the JSON (OTA README D3). It is
        taken as the device finishing, and never acted upon as a message."""
        at = plaintext.find(b"ota_result", 16)
        if at < 0:
            return False
        marker = plaintext.find(b"\xff", at)
        self._finish_tail(m.json_object_or_none(plaintext[marker + 1 :]) if marker >= 0 else None)
        return True

    def _tolerate_undecodable(self, plaintext: bytes | None) -> bool:
        if not self._update_tail:
            return False
        if plaintext is not None:
            # Noise where a header should be: only the out-of-order result event can be read from it.
            self._out_of_order_result(plaintext)
            return True
        # The device's own UpdateDone, written after the event it was encrypted before: it fails its
        # padding, and the IV chain cannot be followed any further. The device is resetting.
        self._finish_tail(None)
        self._discard_input = True
        assert self._decoder is not None
        self._decoder.discard()
        return True

    def _finish_tail(self, result: dict[str, Any] | None) -> None:
        if self._tail_finished:
            return
        self._tail_finished = True
        self._idle_suspended = False
        self._events.append(UpdateFinishedByDevice(result))

    def _on_event(self, message: Message, private: bool) -> None:
        # The Particle cloud acknowledges every event, NON included (§6.4, §13.1 #7).
        self._send(m.empty_ack(message.message_id))
        path = message.uri_path
        if len(path) < 2 or not path[1]:
            self._ignore("event without a name", message)
            return
        # The whole name is one option; a device never splits it, but join defensively (§6.4).
        name = "/".join(segment.decode("utf-8", "replace") for segment in path[1:])
        ttl = m.DEFAULT_EVENT_TTL
        max_age = message.option_values(Option.MAX_AGE)
        if max_age:
            ttl = int.from_bytes(max_age[0], "big")
        payload = message.payload
        self._events.append(
            EventPublished(
                name=name,
                data=payload if payload else None,
                ttl=ttl,
                private=private,
                confirmable=message.type is MessageType.CON,
            )
        )

    def _on_subscribe(self, message: Message) -> None:
        if message.type is MessageType.CON:
            self._send(m.empty_ack(message.message_id))
        path = message.uri_path
        prefix = "/".join(segment.decode("utf-8", "replace") for segment in path[1:])
        if message.payload:
            scope, device = m.SubscriptionScope.DEVICE, message.payload.decode("utf-8", "replace")
        elif b"u" in message.uri_query:
            scope, device = m.SubscriptionScope.MY_DEVICES, None
        else:
            scope, device = m.SubscriptionScope.ALL_DEVICES, None
        self._events.append(SubscriptionRequested(prefix, scope, device))

    def _describe_event(self, flags: int, payload: bytes, request_id: int | None) -> DescribeReceived:
        if flags == m.DescribeFlags.METRICS:
            return DescribeReceived(flags, payload, None, None, request_id)
        try:
            document = m.decode_describe(payload)
        except ValueError as exc:
            return DescribeReceived(flags, payload, None, str(exc), request_id)
        variables = document.get("v")
        if isinstance(variables, dict):
            for name, code in variables.items():
                if isinstance(code, int) and code in m.VariableType._value2member_map_:
                    self.variable_types[name] = m.VariableType(code)
        return DescribeReceived(flags, payload, document, None, request_id)

    # -- replies to our requests ------------------------------------------------------------------

    def _find_request(self, message: Message) -> _Request | None:
        if len(message.token) == 1 and message.token[0] in self._requests:
            return self._requests[message.token[0]]
        if message.type in (MessageType.ACK, MessageType.RST) and not message.token:
            token = self._by_message_id.get(message.message_id)
            if token is not None:
                return self._requests.get(token)
        return None

    def _on_acknowledgement(self, message: Message, now: float) -> None:
        request = self._find_request(message)
        if request is None and message.type is MessageType.RST and self._v3_update:
            # Chunks are NON with no token: a reset is the device saying it has no update (DO
            # `FirmwareUpdate::handleChunkRequest`).
            self._events.append(UpdateChunkRefused(message.message_id))
            return
        if request is None:
            # A fresh-id ACK to our ping (new stack quirk, §6.1) lands here too: it is proof of life, and with
            # a ping outstanding it is that ping's answer (an empty ACK of no request answers nothing else).
            if not message.is_empty:
                self._ignore("acknowledgement matching no outstanding request", message)
            elif self._ping_sent_at is not None and message.type is MessageType.ACK:
                sent, self._ping_sent_at = self._ping_sent_at, None
                self._events.append(PingAnswered(max(0.0, now - sent)))
            return
        code = message.code
        if message.type is MessageType.RST:
            self._fail_request(request, Code.INTERNAL_SERVER_ERROR, "the device reset the request")
        elif code == Code.EMPTY:
            # Acknowledged; the answer follows separately, except for a fast-mode chunk (no answer).
            self._by_message_id.pop(request.message_id, None)
        else:
            self._complete(request, message)

    def _on_response(self, message: Message) -> None:
        request = self._find_request(message)
        if message.type is MessageType.CON:
            self._send(m.empty_ack(message.message_id))
        if request is None:
            self._ignore("response matching no outstanding request", message)
            return
        self._complete(request, message)

    def _complete(self, request: _Request, message: Message) -> None:
        code = message.code
        payload = message.payload or b""
        kind = request.kind
        self._finish(request)
        success = code < 0x80
        if kind is RequestKind.FUNCTION:
            if code == Code.CHANGED and len(payload) == 4:
                value = struct.unpack(">i", payload)[0]
                self._events.append(FunctionReturned(request.request_id, request.name, value))
            else:
                self._events.append(
                    FunctionFailed(request.request_id, request.name, code, _failure_text(code, payload))
                )
        elif kind is RequestKind.VARIABLE:
            if code == Code.CONTENT:
                self._events.append(self._variable_event(request, payload))
            else:
                self._events.append(
                    VariableReadFailed(request.request_id, request.name, code, _failure_text(code, payload))
                )
        elif kind is RequestKind.DESCRIBE:
            if code == Code.CONTENT:
                self._events.append(self._describe_event(request.detail, payload, request.request_id))
            else:
                self._ignore(f"describe answered {format_code(code)}", message)
        elif kind is RequestKind.SIGNAL:
            self._events.append(SignalAcknowledged(request.request_id, bool(request.detail)))
        elif kind is RequestKind.UPDATE_BEGIN:
            if code == Code.CHANGED:
                self._events.append(UpdateReady(request.request_id, bool(payload[:1]) and payload[0] & 1 == 1))
            else:
                self._idle_suspended = False
                self._events.append(UpdateRefused(request.request_id, code))
        elif kind is RequestKind.CHUNK:
            self._events.append(ChunkAcknowledged(request.request_id, success))
        elif kind is RequestKind.UPDATE_START:
            if code == Code.CREATED:
                try:
                    window = m.option_uint(message, m.OtaOption.WINDOW_SIZE) or 0
                    offset = m.option_uint(message, m.OtaOption.FILE_SIZE) or 0
                except ValueError as exc:
                    self._update_failed(request, code, None, str(exc))
                    return
                self._events.append(UpdateStartAccepted(request.request_id, window, offset))
            else:
                self._update_failed(request, code, *_system_error(payload))
        elif kind is RequestKind.UPDATE_FINISH:
            if code == Code.CHANGED:
                self._v3_update = self._idle_suspended = False
                self._events.append(UpdateFinishAccepted(request.request_id, m.json_object_or_none(payload)))
            else:
                self._update_failed(request, code, *_system_error(payload))
        else:  # UPDATE_DONE
            complete = code == Code.CHANGED
            if complete:
                self._idle_suspended = False
            self._events.append(UpdateDoneAcknowledged(request.request_id, complete, m.json_object_or_none(payload)))

    def _update_failed(self, request: _Request, code: int, error: int | None, detail: str) -> None:
        self._v3_update = self._idle_suspended = False
        kind = "start" if request.kind is RequestKind.UPDATE_START else "finish"
        self._events.append(UpdateRequestFailed(request.request_id, kind, code, error, detail))

    def _variable_event(self, request: _Request, raw: bytes) -> VariableRead:
        kind = self.variable_types.get(request.name)
        value: bool | int | float | str | None = None
        if kind is not None:
            try:
                value = m.decode_variable(kind, raw)
            except ValueError:
                value = None
        return VariableRead(request.request_id, request.name, raw, value, kind)

    def _fail_request(self, request: _Request, code: int, detail: str) -> None:
        self._finish(request)
        if request.kind is RequestKind.FUNCTION:
            self._events.append(FunctionFailed(request.request_id, request.name, code, detail))
        elif request.kind is RequestKind.VARIABLE:
            self._events.append(VariableReadFailed(request.request_id, request.name, code, detail))
        else:
            self._events.append(RequestTimedOut(request.request_id, request.kind.value, request.name))

    def _finish(self, request: _Request) -> None:
        self._requests.pop(request.token, None)
        self._by_message_id.pop(request.message_id, None)

    def _response_floor(self) -> int | None:
        """What a separate answer to a request sent now must be newer than (the datagram layer's; None)."""
        return None

    def _ignore(self, description: str, message: Message) -> None:
        self._events.append(MessageIgnored(description, message))

    # -- commands -------------------------------------------------------------------------------

    def _require_session(self) -> None:
        if self.state is not State.CONNECTED:
            raise LocalProtocolError(f"the device is not connected (state {self.state.value!r})")

    def _next_token(self) -> int:
        for _ in range(256):
            self._token = (self._token + 1) & 0xFF
            if self._token not in self._requests:
                return self._token
        raise LocalProtocolError("256 requests are outstanding: the 1-byte token space is exhausted")

    def _request(
        self,
        kind: RequestKind,
        name: str,
        build: _Builder,
        now: float,
        timeout: float | None,
        *,
        expects_answer: bool = True,
        detail: int = 0,
    ) -> int:
        self._require_session()
        token = self._next_token()
        message_id = self._next_message_id()
        message = build(message_id, token)
        encoded = message.encode()
        if len(encoded) > MAX_PLAINTEXT_TO_DEVICE:
            raise LocalProtocolError(
                f"a {len(encoded)}-byte message exceeds the {MAX_PLAINTEXT_TO_DEVICE} bytes a device takes (§4)"
            )
        self._request_ids += 1
        if expects_answer:
            wait = self.config.request_timeout if timeout is None else timeout
            request = _Request(
                self._request_ids, kind, name, token, message_id, now + wait, detail, self._response_floor()
            )
            self._requests[token] = request
            self._by_message_id[message_id] = token
        self._send(message)
        return self._request_ids

    def call_function(self, name: str, argument: str | bytes, now: float, timeout: float | None = None) -> int:
        """Call a device function; `FunctionReturned`, `FunctionFailed` or `RequestTimedOut` follows."""
        return self._request(
            RequestKind.FUNCTION,
            name,
            lambda mid, tok: m.function_call(mid, tok, name, argument),
            now,
            timeout,
        )

    def read_variable(self, name: str, now: float, timeout: float | None = None) -> int:
        """Read a device variable; `VariableRead`, `VariableReadFailed` or `RequestTimedOut` follows."""
        return self._request(
            RequestKind.VARIABLE, name, lambda mid, tok: m.variable_request(mid, tok, name), now, timeout
        )

    def request_describe(self, now: float, flags: int = 3, timeout: float | None = None) -> int:
        """Ask for Describe (1 system, 2 application, 3 both, 4 metrics; §6.7)."""
        return self._request(
            RequestKind.DESCRIBE,
            "describe",
            lambda mid, tok: m.describe_request(mid, tok, flags),
            now,
            timeout,
            detail=flags,
        )

    def signal(self, on: bool, now: float, timeout: float | None = None) -> int:
        """Start or stop the rainbow LED ("nyan", §6.9)."""
        return self._request(
            RequestKind.SIGNAL,
            "signal",
            lambda mid, tok: m.signal(mid, tok, on),
            now,
            timeout,
            detail=int(on),
        )

    def send_event(self, name: str, data: bytes | str | None, *, ttl: int = 60, private: bool = True) -> None:
        """Deliver an event to the device: NON, no token (§6.4)."""
        self._require_session()
        self._send(m.event(self._next_message_id(), name, data, ttl=ttl, private=private))

    def ping(self, now: float | None = None) -> None:
        """An optional server ping; any frame received afterwards proves the device alive (§8.1). With `now`,
        its acknowledgement is reported as `PingAnswered` with the round trip (the legacy stack echoes the
        ping's message id, the new one sends a fresh one, §6.1: either way it is the empty ACK that matches no
        request)."""
        self._require_session()
        self._send(m.ping(self._next_message_id()))
        if now is not None:
            self._ping_sent_at = now

    def begin_update(
        self,
        *,
        file_size: int,
        chunk_size: int = 512,
        fast: bool = False,
        now: float,
        timeout: float | None = None,
    ) -> int:
        """UpdateBegin (§7.1). Suspends the idle timeout until the update ends: devices do not ping
        during an update (§7.2)."""
        self._update_tail = self._tail_finished = False
        request_id = self._request(
            RequestKind.UPDATE_BEGIN,
            "update",
            lambda mid, tok: m.update_begin(mid, tok, fast=fast, chunk_size=chunk_size, file_size=file_size),
            now,
            timeout,
        )
        self._idle_suspended = True
        return request_id

    def send_chunk(
        self, data: bytes, crc: int, *, index: int | None = None, now: float, timeout: float | None = None
    ) -> int:
        """A Chunk. With `index` (fast mode) the device sends no answer, so none is awaited (§7.1)."""
        return self._request(
            RequestKind.CHUNK,
            "chunk",
            lambda mid, tok: m.chunk(mid, tok, crc=crc, data=data, index=index),
            now,
            timeout,
            expects_answer=index is None,
        )

    def finish_update(self, now: float, timeout: float | None = None) -> int:
        """UpdateDone; the answer says complete (2.04) or chunks missing (4.00, fast mode) (§7.1)."""
        return self._request(RequestKind.UPDATE_DONE, "update", m.update_done, now, timeout)

    def start_update_v3(
        self, *, file_size: int, file_sha256: bytes, chunk_size: int, now: float, timeout: float | None = None
    ) -> int:
        """OTA v3's UpdateStart; `UpdateStartAccepted`, `UpdateRequestFailed` or `RequestTimedOut` follows. The
        idle timeout is suspended until the update ends, as for the legacy update.

        A cancel of an earlier update still unanswered is given up first: sent again after this UpdateStart it
        would cancel the new update, and not needed, since an UpdateStart ends the update under way on the device
        (DO `FirmwareUpdate::handleStartRequest`)."""
        for stale in [r for r in self._requests.values() if r.kind is RequestKind.UPDATE_FINISH and r.detail]:
            self._finish(stale)
        request_id = self._request(
            RequestKind.UPDATE_START,
            "update",
            lambda mid, tok: m.update_start(
                mid, tok, file_size=file_size, file_sha256=file_sha256, chunk_size=chunk_size
            ),
            now,
            timeout,
        )
        self._v3_update = self._idle_suspended = True
        return request_id

    def send_chunk_v3(self, index: int, data: bytes) -> None:
        """OTA v3's UpdateChunk: NON, unanswered; the device's UpdateAck says what it holds."""
        self._require_session()
        self._send(m.update_chunk(self._next_message_id(), index, data))

    def finish_update_v3(self, now: float, *, cancel: bool = False, timeout: float | None = None) -> int:
        """OTA v3's UpdateFinish; `UpdateFinishAccepted`, `UpdateRequestFailed` or `RequestTimedOut` follows.
        With `cancel` the device drops the transfer."""
        return self._request(
            RequestKind.UPDATE_FINISH,
            "update",
            lambda mid, tok: m.update_finish(mid, tok, cancel=cancel),
            now,
            timeout,
            detail=int(cancel),
        )

    def end_update_v3(self) -> None:
        """The update is over on our side (given up): the idle timeout applies again."""
        self._v3_update = self._idle_suspended = False

    def suspend_idle_timeout(self, suspended: bool) -> None:
        self._idle_suspended = suspended


def _describe(message: Message) -> str:
    path = "/".join(s.decode("utf-8", "replace") for s in message.uri_path)
    return f"{message.type.name} {format_code(message.code)} {path or '(no path)'}"


def _system_error(payload: bytes) -> tuple[int | None, str]:
    """The system error code and message of a Device OS error response (``{"code":-N,"message":"..."}``,
    DO `formatDiagnosticPayload`)."""
    document = m.json_object_or_none(payload)
    if document is None:
        return None, payload[:200].decode("utf-8", "replace")
    code = document.get("code")
    message = document.get("message")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        message[:200] if isinstance(message, str) else "",
    )


def _failure_text(code: int, payload: bytes) -> str:
    if code == Code.CHANGED:
        return f"malformed return value of {len(payload)} bytes (a function returns 4 bytes)"
    if code == Code.BAD_REQUEST:
        return "the device refused the request (4.00)"
    if code == Code.NOT_FOUND:
        return "the device has no such name (4.04)"
    return f"the device answered {format_code(code)}"
