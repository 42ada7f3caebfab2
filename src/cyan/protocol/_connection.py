"""What both connection roles share: buffers, the event queue, framing, message ids and closing."""

from __future__ import annotations

from collections.abc import Iterator

from ._errors import LocalProtocolError, Reason, RemoteProtocolError, Step
from ._state import Role, State, StateMachine, Trigger
from .coap import CoapDecodeError, Message, decode
from .events import ConnectionFailed, Event
from .framing import FrameDecoder, FrameEncoder, FramingError, SessionCredentials
from .handshake import Rng

__all__ = ["BaseConnection"]


class BaseConnection:
    """Sans-IO plumbing: bytes in (`receive_data`), events out (`next_event`), bytes out (`data_to_send`)."""

    # Slots: a server holds one connection per device, and an instance dict costs more than the state.
    __slots__ = (
        "_decoder",
        "_encoder",
        "_events",
        "_handshake_buffer",
        "_machine",
        "_message_id",
        "_outgoing",
        "_rng",
        "failure",
    )

    def __init__(self, role: Role, rng: Rng) -> None:
        self._machine = StateMachine(role)
        self._rng = rng
        # A list, not a deque: it holds a handful of events at a time, and an empty deque costs ~600 bytes
        # (one 64-slot block) per connection.
        self._events: list[Event] = []
        self._outgoing = bytearray()
        self._handshake_buffer = bytearray()
        self._encoder: FrameEncoder | None = None
        self._decoder: FrameDecoder | None = None
        self._message_id = 0
        #: The failure that ended the connection, if one did.
        self.failure: ConnectionFailed | None = None

    # -- public surface -----------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._machine.state

    @property
    def step(self) -> Step:
        return self._machine.step

    @property
    def closed(self) -> bool:
        return self._machine.state is State.CLOSED

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def data_to_send(self) -> bytes:
        """Everything queued for the peer. Each frame is whole, so one write sends it atomically (§4)."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    # -- helpers for the roles ------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._machine.state is State.CLOSED:
            raise LocalProtocolError("the connection is closed")

    def _start_session(self, credentials: SessionCredentials, max_incoming_frame: int, strict: bool) -> None:
        self._encoder = FrameEncoder(credentials)
        self._decoder = FrameDecoder(credentials, max_length=max_incoming_frame, strict_padding=strict)

    def _next_message_id(self) -> int:
        self._message_id = (self._message_id + 1) & 0xFFFF
        return self._message_id

    def _send(self, message: Message) -> None:
        assert self._encoder is not None
        self._outgoing += self._encoder.encode(message.encode())

    def _take_handshake_bytes(self, data: bytes, size: int) -> bytes | None:
        """Buffer raw handshake bytes until `size` are there; extra bytes stay for the next step."""
        self._handshake_buffer += data
        if len(self._handshake_buffer) < size:
            return None
        taken = bytes(self._handshake_buffer[:size])
        del self._handshake_buffer[:size]
        return taken

    def _messages(self, data: bytes) -> Iterator[tuple[bytes, Message]]:
        """Decrypt and parse each whole frame now buffered, one at a time, so that the frames before a
        bad one are handled before the `RemoteProtocolError` for it is raised. Yields the plaintext
        too: the device role reads it at the firmware's fixed offsets."""
        decoder = self._decoder
        assert decoder is not None
        decoder.feed(data)
        while True:
            try:
                plaintext = decoder.next_frame()
            except FramingError as exc:
                # A frame that fails its padding is consumed (its IV taken, §4); a bad length is not.
                if exc.reason == Reason.DECRYPT_FAILED and self._tolerate_undecodable(None):
                    continue
                raise self._remote_failure(str(exc), Reason(exc.reason)) from None
            if plaintext is None:
                return
            try:
                message = decode(plaintext)
            except CoapDecodeError as exc:
                if self._tolerate_undecodable(plaintext):
                    continue
                raise self._remote_failure(
                    f"undecodable message {plaintext[:24].hex()}: {exc}", Reason.MALFORMED_MESSAGE
                ) from None
            yield plaintext, message

    def _tolerate_undecodable(self, plaintext: bytes | None) -> bool:
        """Whether a frame that does not decrypt (`plaintext` None) or does not parse may be skipped
        instead of ending the connection. Never, unless a role knows why its peer sends one."""
        return False

    def _remote_failure(self, detail: str, reason: Reason) -> RemoteProtocolError:
        """Close the connection for a peer's fault and return the error for the caller to raise."""
        step = self._machine.step
        if self._machine.state is not State.CLOSED:
            self._machine.advance(Trigger.CLOSE)
        self.failure = ConnectionFailed(step, reason, detail)
        return RemoteProtocolError(detail, step=step, reason=reason)

    def _close_with(self, reason: Reason, detail: str) -> None:
        """Close for a timer, an early EOF or a rejection, and report it as an event."""
        step = self._machine.step
        self._machine.advance(Trigger.CLOSE)
        self.failure = ConnectionFailed(step, reason, detail)
        self._events.append(self.failure)
