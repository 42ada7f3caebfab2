"""What both roles share: datagrams in, records opened, handshake messages reassembled in order, flights
sent and retransmitted on timers (RFC 6347 §4.2), events out.

Sans-IO: `receive_datagram(data, now)`, `datagrams_to_send()`, `get_timer()` / `handle_timer(now)`,
`next_event()`. Time is always passed in; randomness is the caller's `random_bytes`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from ._crypto import EXPLICIT_NONCE_SIZE, TAG_SIZE, RandomBytes, RecordProtection, key_block
from ._errors import LocalDtlsError, Reason, RemoteDtlsError, Step
from ._record import MAX_SEQUENCE, Opened, RecordLayer, ReplayWindow
from ._state import Role, State, StateMachine, Trigger
from ._wire import (
    HANDSHAKE_HEADER_SIZE,
    RECORD_HEADER_SIZE,
    AlertDescription,
    ContentType,
    DecodeError,
    HandshakeFragment,
    HandshakeType,
    Record,
    decode_alert,
    encode_handshake,
    parse_handshake_fragments,
    parse_records,
)
from .events import (
    AlertReceived,
    ApplicationDataReceived,
    ConnectionClosed,
    ConnectionFailed,
    Event,
    RecordDiscarded,
)
from .session import Session

__all__ = ["BaseEndpoint", "EndpointConfig"]

_WARNING, _FATAL = 1, 2

#: Alerts we send for each failure reason (RFC 5246 §7.2.2).
_ALERTS: dict[Reason, AlertDescription] = {
    Reason.UNSUPPORTED_VERSION: AlertDescription.PROTOCOL_VERSION,
    Reason.UNSUPPORTED_SUITE: AlertDescription.HANDSHAKE_FAILURE,
    Reason.UNSUPPORTED_CURVE: AlertDescription.HANDSHAKE_FAILURE,
    Reason.UNSUPPORTED_CERTIFICATE_TYPE: AlertDescription.UNSUPPORTED_CERTIFICATE,
    Reason.UNSUPPORTED_EXTENSION: AlertDescription.HANDSHAKE_FAILURE,
    Reason.BAD_CERTIFICATE: AlertDescription.BAD_CERTIFICATE,
    Reason.BAD_KEY_EXCHANGE: AlertDescription.ILLEGAL_PARAMETER,
    Reason.BAD_SIGNATURE: AlertDescription.DECRYPT_ERROR,
    Reason.BAD_FINISHED: AlertDescription.DECRYPT_ERROR,
    Reason.MALFORMED_MESSAGE: AlertDescription.DECODE_ERROR,
    Reason.UNEXPECTED_MESSAGE: AlertDescription.UNEXPECTED_MESSAGE,
    Reason.TOO_LARGE: AlertDescription.DECODE_ERROR,
    Reason.KEY_REJECTED: AlertDescription.ACCESS_DENIED,
    Reason.UNKNOWN_DEVICE: AlertDescription.ACCESS_DENIED,
    Reason.KEY_MISMATCH: AlertDescription.ACCESS_DENIED,
}


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Timers and bounds shared by both roles, in seconds and bytes."""

    #: First retransmission of a flight; doubled each time up to `retransmit_max` (RFC 6347 §4.2.4.1
    #: recommends 1 s; Device OS uses 3 s to 24 s, udp-dtls.md §1.1).
    retransmit_initial: float = 1.0
    retransmit_max: float = 60.0
    #: Retransmissions of one flight before the handshake fails with `timeout`.
    max_retransmissions: int = 6
    #: Datagrams we build stay at or below this: handshake messages are fragmented to fit (RFC 6347
    #: §4.1.1.1). 1152 is the largest Device OS record payload (udp-dtls.md §1.1), well under 1280.
    max_datagram_size: int = 1152
    #: Largest handshake message we reassemble; the profile's are under 200 bytes (a raw key is 91), an
    #: X.509 certificate of the test-only variant a few hundred.
    max_handshake_message: int = 2048
    #: Largest record fragment we accept (RFC 5246 §6.2.3: 2^14 + 2048).
    max_record_size: int = 16384 + 2048
    #: Records of the next epoch held while its keys are not known yet (reordering), and early
    #: application data held until the handshake completes.
    max_buffered_records: int = 8
    #: Application data longer than this is refused by `send_application_data` (RFC 5246 §6.2.1).
    max_application_data: int = 16384
    #: `RecordDiscarded` events queued at most; past that, discards are only counted (`records_discarded`),
    #: so a flood of junk cannot grow the event queue of a caller that drains it late.
    max_queued_discards: int = 32


@dataclass(slots=True)
class _Partial:
    msg_type: int
    length: int
    epoch: int
    body: bytearray
    filled: bytearray
    missing: int


@dataclass(frozen=True, slots=True)
class _Message:
    msg_type: int
    message_seq: int
    body: bytes
    epoch: int


class _Reassembler:
    """Handshake messages in message_seq order from fragments in any order (RFC 6347 §4.2.2), bounded."""

    __slots__ = ("_max", "_partials", "next_seq")

    WINDOW = 8

    def __init__(self, max_message: int) -> None:
        self._max = max_message
        self._partials: dict[int, _Partial] = {}
        #: None until the first message fixes it (the server learns it from the ClientHello).
        self.next_seq: int | None = None

    def add(self, fragment: HandshakeFragment, epoch: int) -> bool | None:
        """True: stored (or a duplicate of what is stored); False: an old message, already processed;
        None: ignored (too far ahead, too large, or inconsistent with the fragments before it)."""
        if self.next_seq is None:
            return None
        seq = fragment.message_seq
        if seq < self.next_seq:
            return False
        if seq >= self.next_seq + self.WINDOW or fragment.length > self._max:
            return None
        partial = self._partials.get(seq)
        if partial is None:
            partial = _Partial(
                fragment.msg_type,
                fragment.length,
                epoch,
                bytearray(fragment.length),
                bytearray(fragment.length),
                fragment.length,
            )
            self._partials[seq] = partial
        elif (partial.msg_type, partial.length, partial.epoch) != (fragment.msg_type, fragment.length, epoch):
            return None
        start, end = fragment.offset, fragment.offset + len(fragment.body)
        partial.body[start:end] = fragment.body
        partial.missing -= end - start - partial.filled.count(1, start, end)
        partial.filled[start:end] = b"\x01" * (end - start)
        return True

    def peek(self) -> _Message | None:
        if self.next_seq is None:
            return None
        partial = self._partials.get(self.next_seq)
        if partial is None or partial.missing:
            return None
        return _Message(partial.msg_type, self.next_seq, bytes(partial.body), partial.epoch)

    def pop(self) -> None:
        assert self.next_seq is not None
        del self._partials[self.next_seq]
        self.next_seq += 1


@dataclass(frozen=True, slots=True)
class _FlightItem:
    """A handshake message or a ChangeCipherSpec (msg_type -1), with the epoch it is sent in."""

    msg_type: int
    message_seq: int
    body: bytes
    epoch: int


class BaseEndpoint:
    """Sans-IO plumbing shared by `ServerEndpoint` and `ClientEndpoint`."""

    __slots__ = (
        "_early_data",
        "_events",
        "_flight",
        "_flight_final",
        "_future_records",
        "_last_sent",
        "_machine",
        "_move",
        "_next_send_seq",
        "_outgoing",
        "_peer_ccs",
        "_random",
        "_reassembler",
        "_retransmissions",
        "_retransmit_at",
        "_retransmit_interval",
        "_session_id",
        "_step",
        "_transcript",
        "client_random",
        "config",
        "failure",
        "master_secret",
        "peer_public_key_der",
        "records",
        "records_discarded",
        "server_random",
    )

    def __init__(
        self,
        role: Role,
        state: State,
        step: Step,
        config: EndpointConfig,
        random_bytes: RandomBytes,
        *,
        own_cid: bytes = b"",
        peer_cid: bytes = b"",
    ) -> None:
        self._machine = StateMachine(role, state)
        self._step = step
        self.config = config
        self._random = random_bytes
        self._events: list[Event] = []
        self._outgoing: list[bytes] = []
        self.records = RecordLayer(own_cid=own_cid, peer_cid=peer_cid)
        self._reassembler = _Reassembler(config.max_handshake_message)
        self._transcript = bytearray()
        self._next_send_seq = 0
        self._flight: list[_FlightItem] = []
        #: The flight is our last of the handshake: resent only when the peer resends its own (§4.2.4).
        self._flight_final = False
        self._retransmit_at: float | None = None
        self._retransmit_interval = config.retransmit_initial
        self._retransmissions = 0
        self._last_sent = float("-inf")
        self._peer_ccs = False
        self._future_records: list[Record] = []
        self._early_data: list[Opened] = []
        self._move: bytes | None = None
        self._session_id = b""
        self.master_secret = b""
        self.client_random = b""
        self.server_random = b""
        self.peer_public_key_der = b""
        #: The failure that ended the endpoint, if one did.
        self.failure: ConnectionFailed | None = None
        #: Records dropped so far (RFC 6347 §4.1.2.7), whether or not an event was queued for each.
        self.records_discarded = 0

    # -- public surface -------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._machine.state

    @property
    def step(self) -> Step:
        """What the endpoint waits for, or waited for when it closed."""
        return self._step

    @property
    def closed(self) -> bool:
        return self._machine.state is State.CLOSED

    @property
    def established(self) -> bool:
        return self._machine.state is State.ESTABLISHED

    @property
    def connection_id(self) -> bytes:
        """The server-assigned CID of this association (empty when none)."""
        raise NotImplementedError

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    def datagrams_to_send(self) -> list[bytes]:
        """Everything queued for the peer, one bytes object per UDP datagram."""
        out, self._outgoing = self._outgoing, []
        return out

    def get_timer(self) -> float | None:
        """When `handle_timer` must next be called, or None."""
        if self.closed:
            return None
        return self._retransmit_at

    def handle_timer(self, now: float) -> None:
        if self.closed or self._retransmit_at is None or now < self._retransmit_at:
            return
        if self._retransmissions >= self.config.max_retransmissions:
            self._close_with(Reason.TIMEOUT, f"no answer from the peer after {self._retransmissions} retransmissions")
            return
        # RFC 6347 §4.2.4.1: double the timer on each retransmission, up to the maximum.
        self._retransmissions += 1
        self._retransmit_interval = min(self._retransmit_interval * 2, self.config.retransmit_max)
        self._transmit_flight(now)
        self._retransmit_at = now + self._retransmit_interval

    def send_application_data(self, data: bytes, now: float) -> None:
        """Queue one application-data record, alone in its datagram (Device OS sends one per datagram,
        and its 253/254 marking rewrites a whole datagram, udp-dtls.md §1.4)."""
        if not self.established:
            raise LocalDtlsError(f"application data needs an established session, not {self.state.value!r}")
        if len(data) > self.config.max_application_data:
            raise LocalDtlsError(f"{len(data)} bytes of application data above {self.config.max_application_data}")
        self._outgoing.append(self.records.seal(ContentType.APPLICATION_DATA, data, move=self._move))

    def close(self, now: float) -> None:
        """End the session: a close_notify alert when established (RFC 5246 §7.2.1), then closed."""
        if self.closed:
            return
        if self.established:
            self._outgoing.append(
                self.records.seal(ContentType.ALERT, bytes([_WARNING, AlertDescription.CLOSE_NOTIFY]))
            )
        self._machine.advance(Trigger.CLOSE)
        self._retransmit_at = None

    @property
    def next_write_sequence(self) -> int:
        """The sequence number of the next record written in the current epoch."""
        return self.records.write_sequences[self.records.write_epoch]

    @property
    def write_limit(self) -> int:
        """No protected record is written at or past this sequence number (`limit_writes`)."""
        return self.records.write_limit

    def limit_writes(self, start: int, limit: int) -> None:
        """Write only in [start, limit) from here on: a block of sequence numbers reserved for this process,
        when others may carry the same session on (so no two ever use one nonce under its keys). The counter
        only moves forward, to `start` if it is below; a record that would pass `limit` raises `OverflowError`
        and is not sent."""
        if not 0 <= start <= limit <= MAX_SEQUENCE + 1:
            raise LocalDtlsError(f"a write block [{start}, {limit}) out of range")
        sequences = self.records.write_sequences
        epoch = self.records.write_epoch
        sequences[epoch] = max(sequences[epoch], start)
        self.records.write_limit = limit

    def export_session(self) -> Session:
        """The state to persist so that this or another process can carry the session on."""
        if not self.established:
            raise LocalDtlsError(f"only an established session can be exported, not {self.state.value!r}")
        epoch = self.records.write_epoch
        window = self.records.window(epoch)
        role: Literal["server", "client"] = "server" if self._machine.role is Role.SERVER else "client"
        return Session(
            role,
            self._session_id,
            self.master_secret,
            self.client_random,
            self.server_random,
            self.connection_id,
            epoch,
            self.records.write_sequences[epoch],
            window.top,
            window.bitmap,
            self.peer_public_key_der,
        )

    # -- input ----------------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Feed one UDP datagram from the peer. Bad records are discarded (a `RecordDiscarded` event); a
        peer fault in the handshake raises `RemoteDtlsError` after queueing a fatal alert and closing."""
        if self.closed or len(data) <= 1:
            return  # Device OS treats 0- and 1-byte datagrams as keepalives (udp-dtls.md §1.5)
        records, problem = parse_records(data, len(self.records.own_cid), max_fragment=self.config.max_record_size)
        retransmit = False
        for record in records:
            retransmit |= self._receive_record(record, now)
            if self._machine.state is State.CLOSED:  # a fatal alert (not `self.closed`: mypy narrows it)
                return
        if problem is not None:
            self._discard(Reason.BAD_RECORD, problem)
        self._process_handshake(now)
        if retransmit and not self.closed:
            self._peer_retransmitted(now)

    def _receive_record(self, record: Record, now: float) -> bool:
        """Handle one record; True when it shows the peer resending a flight we already answered."""
        opened = self.records.open(record)
        if isinstance(opened, Reason):
            if (
                opened is Reason.UNEXPECTED_EPOCH
                and record.epoch == self.records.write_epoch + 1
                and not self.established
                and len(self._future_records) < self.config.max_buffered_records
            ):
                self._future_records.append(record)  # keys for it are not derived yet (RFC 6347 §4.1)
                return False
            self._discard(opened, f"record epoch {record.epoch} sequence {record.sequence}")
            return False
        return self._dispatch(opened, now)

    def _dispatch(self, opened: Opened, now: float) -> bool:
        kind = opened.content_type
        if kind == ContentType.HANDSHAKE:
            return self._receive_handshake(opened)
        if kind == ContentType.CHANGE_CIPHER_SPEC:
            if opened.payload != b"\x01":
                self._discard(Reason.BAD_RECORD, "a ChangeCipherSpec that is not the single byte 1")
            elif not self.established:
                self._peer_ccs = True
            return False
        if kind == ContentType.ALERT:
            self._receive_alert(opened)
            return False
        if kind == ContentType.APPLICATION_DATA and opened.epoch > 0:
            if not self.established:
                if len(self._early_data) < self.config.max_buffered_records:
                    self._early_data.append(opened)  # overtook the Finished that completes our side
                return False
            self._deliver(opened)
            return False
        self._discard(Reason.UNEXPECTED_MESSAGE, f"content type {kind} in epoch {opened.epoch}")
        return False

    def _deliver(self, opened: Opened) -> None:
        # The peer has our last flight: no more retransmissions of it (RFC 6347 §4.2.4).
        self._flight = []
        self._move = None  # Device OS clears move_session at the first data received (udp-dtls.md §1.4)
        self._events.append(ApplicationDataReceived(opened.payload, opened.moved))

    def _receive_handshake(self, opened: Opened) -> bool:
        try:
            fragments = parse_handshake_fragments(opened.payload)
        except DecodeError as exc:
            self._discard(Reason.MALFORMED_MESSAGE, f"handshake fragment: {exc}")
            return False
        old = False
        for fragment in fragments:
            added = self._add_fragment(fragment, opened.epoch)
            old |= added is False
        return old

    def _add_fragment(self, fragment: HandshakeFragment, epoch: int) -> bool | None:
        if self.established:
            # Nothing new is buffered once established: a message from before only tells that the peer
            # resends its flight, so that ours is resent (RFC 6347 §4.2.4).
            next_seq = self._reassembler.next_seq
            return False if next_seq is not None and fragment.message_seq < next_seq else None
        return self._reassembler.add(fragment, epoch)

    def _receive_alert(self, opened: Opened) -> None:
        try:
            level, description = decode_alert(opened.payload)
        except DecodeError as exc:
            self._discard(Reason.BAD_RECORD, f"alert: {exc}")
            return
        if self.established and opened.epoch == 0:
            self._discard(Reason.UNEXPECTED_EPOCH, "a plaintext alert in an encrypted session")
            return
        self._events.append(AlertReceived(level, description))
        if description == AlertDescription.CLOSE_NOTIFY:
            self._machine.advance(Trigger.CLOSE)
            self._retransmit_at = None
            self._events.append(ConnectionClosed())
        elif level == _FATAL:
            self._close_with(Reason.ALERT_RECEIVED, f"the peer sent fatal alert {description}")

    def _peer_retransmitted(self, now: float) -> None:
        """The peer resent a flight we answered: our answer was lost, resend it (RFC 6347 §4.2.4), at most
        once per half initial timeout so that a flood of copies does not become a flood of flights."""
        if self._flight and now - self._last_sent >= self.config.retransmit_initial / 2:
            self._transmit_flight(now)

    def _process_handshake(self, now: float) -> None:
        while not self.closed:
            message = self._reassembler.peek()
            if message is None or not self._on_message(message, now):
                return

    def _on_message(self, message: _Message, now: float) -> bool:
        """Handle the next handshake message in order; False leaves it queued (a Finished before the
        ChangeCipherSpec that must precede it)."""
        raise NotImplementedError

    # -- helpers for the roles ------------------------------------------------------------------------

    def _discard(self, reason: Reason, detail: str) -> None:
        self.records_discarded += 1
        queued = sum(isinstance(e, RecordDiscarded) for e in self._events)
        if queued < self.config.max_queued_discards:
            self._events.append(RecordDiscarded(self._step, reason, detail))

    def _append_transcript(self, msg_type: int, message_seq: int, body: bytes) -> None:
        # RFC 6347 §4.2.6: the hash covers each message with its DTLS header, as one unfragmented piece.
        self._transcript += encode_handshake(msg_type, message_seq, body)

    def _transcript_hash(self) -> bytes:
        return hashlib.sha256(self._transcript).digest()

    def _install_keys(self, is_server: bool) -> None:
        keys = key_block(self.master_secret, self.client_random, self.server_random)
        client = RecordProtection(keys.client_key, keys.client_iv)
        server = RecordProtection(keys.server_key, keys.server_iv)
        if is_server:
            self.records.install(1, read=client, write=server)
        else:
            self.records.install(1, read=server, write=client)
        pending, self._future_records = self._future_records, []
        for record in pending:
            self._receive_record(record, 0.0)

    def _flight_message(self, msg_type: int, body: bytes, epoch: int) -> _FlightItem:
        """A handshake message of our next flight: it takes the next message_seq and joins the transcript."""
        seq = self._next_send_seq
        self._next_send_seq += 1
        self._append_transcript(msg_type, seq, body)
        return _FlightItem(msg_type, seq, body, epoch)

    @staticmethod
    def _change_cipher_spec() -> _FlightItem:
        return _FlightItem(-1, 0, b"\x01", 0)

    def _send_flight(self, flight: list[_FlightItem], now: float, *, final: bool) -> None:
        """Send a flight and arm its retransmission, unless it is our last of the handshake: that one is
        resent only when the peer resends its own (RFC 6347 §4.2.4)."""
        self._flight = flight
        self._flight_final = final
        self._retransmissions = 0
        self._retransmit_interval = self.config.retransmit_initial
        self._transmit_flight(now)
        self._retransmit_at = None if final else now + self._retransmit_interval

    def _transmit_flight(self, now: float) -> None:
        """(Re)send the current flight with fresh record sequence numbers (RFC 6347 §4.2.4: a
        retransmission is new records), handshake messages fragmented to the datagram size."""
        self._last_sent = now
        records: list[bytes] = []
        for item in self._flight:
            if item.msg_type < 0:
                records.append(self.records.seal(ContentType.CHANGE_CIPHER_SPEC, item.body, epoch=item.epoch))
                continue
            overhead = RECORD_HEADER_SIZE + HANDSHAKE_HEADER_SIZE
            if item.epoch > 0:
                overhead += EXPLICIT_NONCE_SIZE + TAG_SIZE + len(self.records.peer_cid) + 16
            room = max(self.config.max_datagram_size - overhead, 64)
            if item.msg_type == HandshakeType.CLIENT_HELLO:
                # Never fragmented: a stateless cookie check cannot reassemble, and mbedtls servers refuse
                # a fragmented ClientHello (RFC 6347 §4.2.1).
                room = len(item.body) or 1
            offset = 0
            while True:
                chunk = item.body[offset : offset + room]
                fragment = encode_handshake(item.msg_type, item.message_seq, chunk, offset, len(item.body))
                records.append(self.records.seal(ContentType.HANDSHAKE, fragment, epoch=item.epoch))
                offset += len(chunk)
                if offset >= len(item.body):
                    break
        self._pack(records)

    def _pack(self, records: list[bytes]) -> None:
        """Several records per datagram, up to the size bound (RFC 6347 §4.1.1)."""
        current = b""
        for record in records:
            if current and len(current) + len(record) > self.config.max_datagram_size:
                self._outgoing.append(current)
                current = b""
            current += record
        if current:
            self._outgoing.append(current)

    def _stop_retransmitting(self) -> None:
        self._retransmit_at = None

    def _flush_early_data(self) -> None:
        early, self._early_data = self._early_data, []
        for opened in early:
            self._deliver(opened)

    def _session(self) -> Session:
        return self.export_session()

    def _remote_failure(self, reason: Reason, detail: str) -> RemoteDtlsError:
        """Send a fatal alert, close for a peer's fault, and return the error for the caller to raise."""
        step = self._step
        alert = _ALERTS.get(reason, AlertDescription.HANDSHAKE_FAILURE)
        self._outgoing.append(self.records.seal(ContentType.ALERT, bytes([_FATAL, alert])))
        if not self.closed:
            self._machine.advance(Trigger.CLOSE)
        self._retransmit_at = None
        self.failure = ConnectionFailed(step, reason, detail)
        return RemoteDtlsError(detail, step=step, reason=reason)

    def _close_with(self, reason: Reason, detail: str, alert: AlertDescription | None = None) -> None:
        """Close for a timer, a rejection or a peer's fatal alert, and report it as an event."""
        if alert is not None:
            self._outgoing.append(self.records.seal(ContentType.ALERT, bytes([_FATAL, alert])))
        self._machine.advance(Trigger.CLOSE)
        self._retransmit_at = None
        self.failure = ConnectionFailed(self._step, reason, detail)
        self._events.append(self.failure)

    def _restore(self, session: Session, *, is_server: bool, sequence_gap: int) -> None:
        """Carry on an exported session: same keys (derived again, as the device does), epoch, counters
        and replay window. `sequence_gap` skips write sequence numbers that a lost process may have used
        after its last export, so that no CCM nonce repeats under the session's keys."""
        self.master_secret = session.master_secret
        self.client_random = session.client_random
        self.server_random = session.server_random
        self._session_id = session.session_id
        self.peer_public_key_der = session.peer_public_key_der
        keys = key_block(session.master_secret, session.client_random, session.server_random)
        client = RecordProtection(keys.client_key, keys.client_iv)
        server = RecordProtection(keys.server_key, keys.server_iv)
        read, write = (client, server) if is_server else (server, client)
        records = self.records
        records.install(session.epoch, read=read, write=write)
        records.forget_epoch(0)
        records.write_epoch = session.epoch
        records.write_sequences[session.epoch] = session.write_sequence + sequence_gap
        records.set_window(session.epoch, ReplayWindow(session.read_top, session.read_bitmap))
