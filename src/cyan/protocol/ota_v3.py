"""OTA protocol v3, server role: `OtaV3Sender` sends one update to a Gen 3 or P2 device (udp-dtls.md §1.5).

Device OS 3.0 and later on Gen 3 and P2 (Hello flag 0x80) update by this protocol only (DO
`communication/src/firmware_update.cpp`); the legacy UpdateBegin is compiled out. On the wire::

    server  CON POST S  file size, SHA-256, chunk size   -> device ACK, then CON 2.01 window, offset
    server  NON POST C  index 1..n, the bytes            (many in flight)
    device  NON POST A  chunks held in order + bitmap    (at most 200 ms after a chunk, every 2nd chunk,
                                                          at once on a gap or a duplicate)
    server  CON POST F                                   -> device ACK, then CON 2.04 with its statistics;
                                                            our ACK of that answer makes it apply the update

Chunks are unconfirmed: this sender is the transport. It keeps at most `window` chunks beyond those the
device holds in order (beyond it the device drops them), paces them with a congestion window that grows
with every chunk acknowledged and halves on a loss, and resends a chunk when three chunks sent after it are
acknowledged while it is not, or when it has gone unacknowledged for a retransmission timeout measured as
TCP does (RFC 6298, Karn's rule: only chunks sent once give a sample). When the device holds every chunk,
UpdateFinish; the answer says the device validated the file (complete) or why not.

Time is injected (`now`, any clock that only moves forward). Every wait stays far below the device's own
transfer timeout of 300 s without a chunk (`OTA_TRANSFER_TIMEOUT`).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Any

from .coap import format_code
from .events import (
    ConnectionClosed,
    ConnectionFailed,
    Event,
    RequestTimedOut,
    UpdateChunkRefused,
    UpdateChunksAcknowledged,
    UpdateFinishAccepted,
    UpdateRequestFailed,
    UpdateStartAccepted,
)
from .messages import MIN_OTA_V3_CHUNK, OTA_V3_CHUNK_OVERHEAD, Hello
from .ota import OtaOutcome
from .server import ServerConnection

__all__ = ["OtaV3Config", "OtaV3Sender", "OtaV3State", "v3_chunk_size"]

#: Device OS's system errors of a module it will not apply (-1499..-1300: validation, integrity, platform,
#: dependencies, size, format; DO `services/inc/system_error.h`). Sending the same file again cannot help.
_OTA_ERRORS = (-1499, -1300)


class OtaV3State(enum.Enum):
    STARTING = "starting"  # UpdateStart sent, waiting for its answer
    SENDING = "sending"  # chunks until the device holds them all
    FINISHING = "finishing"  # UpdateFinish sent, waiting for its answer
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class OtaV3Config:
    """Sizes, pacing and timers of a v3 update, in bytes, chunks and seconds."""

    #: The largest chunk offered; a device takes up to its largest record less 14 bytes of CoAP.
    max_chunk_size: int = 1024
    #: Chunks in flight at the start, and at most. The device's window (128 KiB) bounds them too.
    initial_window: int = 4
    max_window: int = 64
    #: Retransmission timeout before any round trip was measured, and its bounds (RFC 6298). The device
    #: acknowledges a lone chunk 200 ms after it (`OTA_CHUNK_ACK_DELAY`): below that, every timeout is early.
    initial_rto: float = 1.0
    min_rto: float = 0.4
    max_rto: float = 10.0
    #: The wait for the answers to UpdateStart (the device may erase its OTA area first) and UpdateFinish (it
    #: validates the file). Over UDP the request itself is retransmitted meanwhile.
    start_timeout: float = 60.0
    finish_timeout: float = 60.0
    #: No chunk newly acknowledged for this long: give up (the device gives up after 300 s).
    stall_timeout: float = 60.0
    #: The whole update.
    transfer_timeout: float = 1800.0

    def __post_init__(self) -> None:
        if self.max_chunk_size < MIN_OTA_V3_CHUNK or self.max_chunk_size % 4:
            raise ValueError(f"max_chunk_size must be a multiple of 4 from {MIN_OTA_V3_CHUNK}")
        if not 1 <= self.initial_window <= self.max_window:
            raise ValueError("initial_window must be from 1 to max_window")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ValueError("the timeouts must satisfy 0 < min_rto <= initial_rto <= max_rto")
        if max(self.start_timeout, self.finish_timeout, self.stall_timeout) >= 300.0:
            raise ValueError("every wait must be shorter than the device's 300 s transfer timeout")


def v3_chunk_size(hello: Hello | None, config: OtaV3Config, *, transport_limit: int | None = None) -> int:
    """The chunk size to offer: what the device's largest message (its Hello says; the transport may carry
    less) holds with the chunk's 14 bytes of CoAP, rounded down to a multiple of 4 (DO `MAX_OTA_CHUNK_SIZE`),
    within 512 and `max_chunk_size`."""
    largest = hello.max_message_size if hello is not None and hello.max_message_size else 0
    if transport_limit is not None:
        largest = min(largest, transport_limit)
    fits = (largest - OTA_V3_CHUNK_OVERHEAD) // 4 * 4
    return max(MIN_OTA_V3_CHUNK, min(config.max_chunk_size, fits))


class OtaV3Sender:
    """One v3 update of one device over one connection. Same surface as `OtaSender`, so a link runs either:
    `handle_event`, `get_timer`, `handle_timer`, `connection_lost`, then `finished` and `outcome`."""

    def __init__(
        self,
        connection: ServerConnection,
        image: bytes,
        now: float,
        *,
        config: OtaV3Config | None = None,
        transport_limit: int | None = None,
    ) -> None:
        """`transport_limit`: the largest message the transport carries to the device, when smaller than
        what its Hello says (a TCP frame)."""
        if not image:
            raise ValueError("an update needs a non-empty image")
        self.config = config or OtaV3Config()
        self.connection = connection
        self.image = image
        self.total = len(image)
        self.chunk_size = v3_chunk_size(connection.hello, self.config, transport_limit=transport_limit)
        self.state = OtaV3State.STARTING
        self.outcome: OtaOutcome | None = None
        self._started = now
        self._offset = 0
        self._chunks: list[bytes] = []
        #: Per chunk (index - 1): held by the device.
        self._held = bytearray()
        #: The device's count of chunks held in order.
        self._in_order = 0
        self._window = 0
        #: Chunks sent and not known held: index -> (time of the last send, its send number).
        self._in_flight: dict[int, tuple[float, int]] = {}
        self._sends = bytearray()  # per chunk, capped at 255: Karn's rule needs only "once or more"
        self._resend: list[int] = []
        self._next_new = 1
        self._send_number = 0
        self._highest_acked_send = 0
        self._cwnd = float(self.config.initial_window)
        self._ssthresh = float(self.config.max_window)
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._rto = self.config.initial_rto
        self._backoff = 1.0
        self._recovery_until = 0  # losses of sends up to this number were answered with one halving already
        self._progress_at = now
        self._delivered = 0
        self._resent = 0
        self._request: int | None = self.connection.start_update_v3(
            file_size=self.total,
            file_sha256=hashlib.sha256(image).digest(),
            chunk_size=self.chunk_size,
            now=now,
            timeout=self.config.start_timeout,
        )

    # -- the surface a link drives ----------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state in (OtaV3State.COMPLETE, OtaV3State.FAILED)

    @property
    def chunk_total(self) -> int:
        return len(self._chunks)

    @property
    def bytes_delivered(self) -> int:
        """Bytes of the file the device holds: what it had already, and the chunks it acknowledged."""
        return self._offset + self._delivered

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def get_timer(self) -> float | None:
        if self.finished:
            return None
        due = [self._started + self.config.transfer_timeout]
        if self.state is OtaV3State.SENDING:
            due.append(self._progress_at + self.config.stall_timeout)
            if self._in_flight:
                due.append(min(sent for sent, _ in self._in_flight.values()) + self._rto * self._backoff)
        return min(due)

    def handle_timer(self, now: float, *, backlog: int = 0) -> None:
        """Act on what is due (`backlog` is the TCP sender's; datagrams have none)."""
        if self.finished or self._closed(now):
            return
        if now >= self._started + self.config.transfer_timeout:
            self._fail("timeout", f"the update took longer than {self.config.transfer_timeout:g} s", now)
            return
        if self.state is not OtaV3State.SENDING:
            return  # the requests' own timers (the connection's) end those waits
        if now >= self._progress_at + self.config.stall_timeout:
            self._fail(
                "no_answer",
                f"the device acknowledged no chunk for {self.config.stall_timeout:g} s "
                f"({self._in_order} of {len(self._chunks)} held in order)",
                now,
            )
            return
        expired = [i for i, (sent, _) in self._in_flight.items() if now >= sent + self._rto * self._backoff]
        if expired:
            # A timeout: the chunks are gone, the path is worse than thought. Start again from two in flight.
            self._ssthresh = max(2.0, len(self._in_flight) / 2)
            self._cwnd = 2.0
            self._backoff = min(self._backoff * 2, self.config.max_rto / self._rto)
            self._recovery_until = self._send_number
            for index in sorted(expired):
                del self._in_flight[index]
                self._resend.append(index)
        self._pump(now)

    def handle_event(self, event: Event, now: float) -> bool:
        """Feed an event of the connection; True when it was this update's."""
        if self.finished:
            return False
        if isinstance(event, ConnectionClosed | ConnectionFailed):
            self.connection_lost(now)
            return True
        if isinstance(event, UpdateChunksAcknowledged):
            if self.state is OtaV3State.SENDING:
                self._on_ack(event.index, event.bitmap, now)
            return True  # an acknowledgement that arrives late changes nothing
        if isinstance(event, UpdateChunkRefused):
            if self.state is OtaV3State.SENDING:
                self._fail("disconnected", "the device has no update in progress any more (it reset a chunk)", now)
            return True
        if not isinstance(event, UpdateStartAccepted | UpdateFinishAccepted | UpdateRequestFailed | RequestTimedOut):
            return False
        if event.request_id != self._request:
            return isinstance(event, UpdateStartAccepted | UpdateFinishAccepted | UpdateRequestFailed)
        self._request = None
        if isinstance(event, UpdateStartAccepted):
            self._on_started(event.window, event.offset, now)
        elif isinstance(event, UpdateFinishAccepted):
            self._end(OtaV3State.COMPLETE, None, "the device validated the file and applies it", event.stats, now)
        elif isinstance(event, UpdateRequestFailed):
            self._on_refused(event, now)
        else:
            step = "UpdateStart" if self.state is OtaV3State.STARTING else "UpdateFinish"
            self._fail("no_answer", f"no answer to {step}", now)
        return True

    def connection_lost(self, now: float) -> None:
        if self.finished:
            return
        where = {
            OtaV3State.STARTING: "before the device was ready",
            OtaV3State.SENDING: f"after {self.bytes_delivered} of {self.total} bytes",
            OtaV3State.FINISHING: "while the device validated the file",
        }[self.state]
        self._fail("disconnected", f"the connection ended {where}", now)

    # -- the steps --------------------------------------------------------------------------------

    def _closed(self, now: float) -> bool:
        if self.connection.closed:
            self.connection_lost(now)
            return True
        return False

    def _on_started(self, window: int, offset: int, now: float) -> None:
        if offset > self.total or window < 1:
            self._fail("refused", f"the device answered UpdateStart with window {window} and offset {offset}", now)
            return
        size = self.chunk_size
        self._offset = offset
        self._chunks = [self.image[i : i + size] for i in range(offset, self.total, size)]
        self._held = bytearray(len(self._chunks))
        self._sends = bytearray(len(self._chunks))
        self._window = window
        self._progress_at = now
        self.state = OtaV3State.SENDING
        if not self._chunks:
            self._send_finish(now)  # the device holds the whole file already (a resumed transfer)
        else:
            self._pump(now)

    def _pump(self, now: float) -> None:
        """Send what the congestion window and the device's window allow: resends first, then new chunks."""
        if self._closed(now):
            return
        limit = min(int(self._cwnd), self.config.max_window)
        edge = self._in_order + self._window  # the device drops chunks past this index
        while len(self._in_flight) < limit:
            if self._resend:
                index = self._resend.pop(0)
                if self._held[index - 1] or index > edge:
                    continue
                self._resent += 1
            elif self._next_new <= len(self._chunks) and self._next_new <= edge:
                index = self._next_new
                self._next_new += 1
                if self._held[index - 1]:
                    continue  # an acknowledgement ran ahead of what was sent (never from real firmware)
            else:
                break
            self._send_number += 1
            self._in_flight[index] = (now, self._send_number)
            self._sends[index - 1] = min(255, self._sends[index - 1] + 1)
            self.connection.send_chunk_v3(index, self._chunks[index - 1])

    def _on_ack(self, in_order: int, bitmap: bytes, now: float) -> None:
        count = len(self._chunks)
        if in_order > count:
            self._fail("rejected", f"the device acknowledged {in_order} chunks of {count}", now)
            return
        newly = [i for i in range(self._in_order + 1, in_order + 1) if not self._held[i - 1]]
        words = len(bitmap) // 4
        for word in range(words):
            value = int.from_bytes(bitmap[word * 4 : word * 4 + 4], "little")
            while value:
                bit = (value & -value).bit_length() - 1
                value &= value - 1
                index = in_order + 1 + word * 32 + bit
                if index <= count and not self._held[index - 1]:
                    newly.append(index)
        self._in_order = max(self._in_order, in_order)
        if newly:
            self._progress_at = now
            self._backoff = 1.0
        for index in newly:
            self._held[index - 1] = 1
            self._delivered += len(self._chunks[index - 1])
            sent = self._in_flight.pop(index, None)
            if sent is None:
                continue
            sent_at, number = sent
            self._highest_acked_send = max(self._highest_acked_send, number)
            if self._sends[index - 1] == 1:
                self._sample(now - sent_at)
            # Slow start below the threshold, then one more chunk per window's worth acknowledged.
            self._cwnd += 1.0 if self._cwnd < self._ssthresh else 1.0 / self._cwnd
        self._cwnd = min(self._cwnd, float(self.config.max_window))
        lost = sorted(i for i, (_, number) in self._in_flight.items() if number + 3 <= self._highest_acked_send)
        if lost:
            if max(self._in_flight[i][1] for i in lost) > self._recovery_until:
                # One halving per window of losses (RFC 5681 fast recovery), not one per lost chunk.
                self._ssthresh = max(2.0, self._cwnd / 2)
                self._cwnd = self._ssthresh
                self._recovery_until = self._send_number
            for index in lost:
                del self._in_flight[index]
                self._resend.append(index)
        if self._in_order >= count:
            self._send_finish(now)
        else:
            self._pump(now)

    def _sample(self, rtt: float) -> None:
        """RFC 6298 §2: the smoothed round trip and its variation give the retransmission timeout."""
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._rto = min(self.config.max_rto, max(self.config.min_rto, self._srtt + 4 * self._rttvar))

    def _send_finish(self, now: float) -> None:
        if self._closed(now):
            return
        self.state = OtaV3State.FINISHING
        self._in_flight.clear()
        self._resend.clear()
        self._request = self.connection.finish_update_v3(now, timeout=self.config.finish_timeout)

    def _on_refused(self, event: UpdateRequestFailed, now: float) -> None:
        said = f"{event.detail} (system error {event.error})" if event.error is not None else event.detail
        answer = f"{format_code(event.code)}: {said}" if said else format_code(event.code)
        # Device OS answers nearly every error 5.03 (DO `coapCodeForSystemError`): the system error says what.
        if event.kind == "start":
            self._fail("refused", f"the device refused UpdateStart ({answer})", now)
        elif "ncomplete" in event.detail:
            self._fail("incomplete", f"the device says the transfer is incomplete ({answer})", now)
        elif event.error is not None and _OTA_ERRORS[0] <= event.error <= _OTA_ERRORS[1]:
            self._fail("rejected", f"the device found the file invalid ({answer})", now)
        else:
            self._fail("device_error", f"the device could not validate the file ({answer})", now)

    # -- endings ------------------------------------------------------------------------------------

    def _fail(self, reason: str, detail: str, now: float) -> None:
        if not self.connection.closed:
            if self.state is OtaV3State.SENDING:
                # Tell the device to drop the transfer rather than hold it for its own 300 s; its answer, if
                # any, comes after this update ended and changes nothing.
                self.connection.finish_update_v3(now, cancel=True, timeout=self.config.finish_timeout)
            self.connection.end_update_v3()
        self._end(OtaV3State.FAILED, reason, detail, None, now)

    def _end(
        self, state: OtaV3State, reason: str | None, detail: str, stats: dict[str, Any] | None, now: float
    ) -> None:
        self.state = state
        self._request = None
        self._in_flight.clear()
        self._resend.clear()
        self.outcome = OtaOutcome(
            complete=state is OtaV3State.COMPLETE,
            fast=False,
            reason=reason,
            detail=detail,
            result=stats,
            bytes_delivered=self.bytes_delivered,
            chunks_resent=self._resent,
            elapsed=now - self._started,
        )
