"""OTA firmware updates, server role: `OtaSender` drives one update over a `ServerConnection` (protocol.md §7).

The connection builds and matches the messages (UpdateBegin, Chunk, UpdateDone and their answers); the
sender decides what to send next, and when::

    sender = OtaSender(connection, image, now)      # UpdateBegin is queued on the connection
    for event in events of the connection:          # UpdateReady, ChunkAcknowledged, ChunksMissed, ...
        sender.handle_event(event, now)
    at sender.get_timer(): sender.handle_timer(now, backlog=<bytes not yet written to the socket>)
    sender.finished -> sender.outcome

Modes (§7.1, §13.1 #14-15):

* non-fast: one chunk at a time, the next after ChunkReceived OK, the same again after BAD; the index is
  implicit, so chunks go strictly in order. Then UpdateDone; the answer is final (the device's bitmap is
  all "received" in this mode).
* fast: every chunk with its index, in bursts of at most `OtaConfig.burst` frames, each burst once the
  previous one has left the socket (`backlog` 0) and `burst_interval` has passed: a Photon's socket reads
  frames as whole packets and loses sync on a split length prefix (§4), so it must never be flooded.
  Then the combined finishing strategy of §7.1: UpdateDone; ACK 4.00 and ChunkMissed mean resend those
  chunks, with their index; after a batch, wait `finish_wait`: the device's own UpdateDone (legacy stack)
  means done, a new ChunkMissed means resend, silence means UpdateDone again (the new stack needs it).

Which mode: `fast=None` offers fast OTA only to the new stack from 1.2 on (Hello flags 0x02 and up). The
legacy stack 0.6.x answers fast chunks anyway and finishes fast updates out of IV order (OTA README D1,
D3); the flags cannot tell 0.7.x or new-stack 0.8-1.1 from it, so those get non-fast too. The device has
the last word: UpdateReady says whether it takes fast mode, and that is what is sent.

Time: no wait here outlasts the device's update timer: it resets 30 s after the last chunk it wrote
(§7.2), so every timeout is kept below `OtaConfig.device_timeout`.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .coap import format_code
from .events import (
    ChunkAcknowledged,
    ChunksMissed,
    ConnectionClosed,
    ConnectionFailed,
    Event,
    EventPublished,
    RequestTimedOut,
    UpdateDoneAcknowledged,
    UpdateFinishedByDevice,
    UpdateReady,
    UpdateRefused,
)
from .messages import HelloFlag, json_object_or_none
from .server import ServerConnection

__all__ = ["OtaConfig", "OtaOutcome", "OtaSender", "OtaState", "chunk_count", "fast_by_default"]

#: A device refuses an update of this many chunks or more (MAX_CHUNKS, §7.1).
MAX_CHUNKS = 0xFFFF
#: The private event in which 0.6.x reports an update's result (OTA README D2).
RESULT_EVENT = "spark/device/ota_result"


class OtaState(enum.Enum):
    BEGINNING = "beginning"  # UpdateBegin sent, waiting for UpdateReady
    SENDING = "sending"  # the first pass over the chunks
    FINISHING = "finishing"  # UpdateDone sent, waiting for its answer
    RESENDING = "resending"  # fast: sending the chunks a ChunkMissed listed
    SETTLING = "settling"  # fast: after ACK 4.00 or a resent batch, waiting for the device (§7.1)
    CONFIRMING = "confirming"  # a bare ACK 2.04: waiting for 0.6.x's spark/device/ota_result (README D2)
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class OtaConfig:
    """Pacing, timers and limits of an update, in seconds and counts."""

    #: The chunk size the Gen 2 firmware advertises and the frame arithmetic of §A.4 assumes.
    chunk_size: int = 512
    #: Fast mode: frames per burst (§13.1 #15: "at most about 8 chunks per burst").
    burst: int = 8
    #: Fast mode: at least this long between the starts of two bursts.
    burst_interval: float = 0.02
    #: Fast mode: how often to look again when the previous burst has not left the socket yet.
    drain_poll: float = 0.005
    #: UpdateBegin attempts and how long each waits for UpdateReady. SP tries 3 times 6 s apart, then
    #: once more with a long wait (§7.2); the last wait here stays under the device's update timer.
    begin_timeouts: tuple[float, ...] = (6.0, 6.0, 6.0, 20.0)
    #: Non-fast: the wait for each ChunkReceived.
    chunk_timeout: float = 20.0
    #: Non-fast: ChunkReceived BAD answers tolerated in a row for one chunk (SP retries 10 times).
    bad_chunk_limit: int = 10
    #: The wait for the answer to UpdateDone; each silence sends it again, `done_attempts` times in all.
    done_timeout: float = 10.0
    done_attempts: int = 4
    #: Fast: after ACK 4.00 or a resent batch, how long to wait for ChunkMissed or the device's own
    #: UpdateDone before sending UpdateDone again (§7.1 "wait about 5 s").
    finish_wait: float = 5.0
    #: Fast, new stack (its ChunkMissed is NON): the wait after a resent batch. That stack never finishes
    #: by itself and has no resend timer (§7.1, `chunked_transfer.cpp idle`), so there is nothing to wait
    #: for but the resent frames leaving the socket.
    new_stack_finish_wait: float = 0.1
    #: Fast: ChunkMissed messages tolerated beyond one per chunk (SP: chunk count + 10, §7.2).
    missed_extra: int = 10
    #: After a bare ACK 2.04 to UpdateDone, how long to wait for 0.6.x's result event (it comes about
    #: 44 ms later, and the device resets 1 s after it, OTA README D2).
    result_wait: float = 3.0
    #: The whole transfer (SP: 600 s, §7.2).
    transfer_timeout: float = 600.0
    #: The device resets an update that has written nothing for this long (§7.2).
    device_timeout: float = 30.0

    def __post_init__(self) -> None:
        waits = (*self.begin_timeouts, self.chunk_timeout, self.done_timeout, self.finish_wait)
        if not self.begin_timeouts or max(waits) >= self.device_timeout:
            raise ValueError(
                f"every wait must be shorter than the device's {self.device_timeout:g} s update timer (§7.2)"
            )
        if not 1 <= self.chunk_size <= 512:
            raise ValueError("the chunk size is 1..512 bytes: devices advertise 512 (§7.1, §A.4)")
        if self.burst < 1 or self.done_attempts < 1:
            raise ValueError("burst and done_attempts must be at least 1")


@dataclass(frozen=True, slots=True)
class OtaOutcome:
    """How an update ended. `complete` means the device said it has the whole image; whether it runs it
    is known only after it resets and reconnects (its Describe, §6.7)."""

    complete: bool
    fast: bool
    #: The failure's machine-readable reason (None when complete): refused, no_answer, bad_chunks,
    #: too_many_missed, rejected, incomplete, timeout, disconnected; and from OTA v3 (`OtaV3Sender`)
    #: device_error.
    reason: str | None
    detail: str
    #: The device's result report: ``{"r":0}`` (2.x), ``{"r":"ok",...}`` (older), OTA v3's transfer statistics
    #: (``{"recv_chunks":...}``), or None.
    result: dict[str, Any] | None
    #: Bytes of the image the device has confirmed (non-fast) or been sent (fast), first pass.
    bytes_delivered: int
    chunks_resent: int
    elapsed: float


def chunk_count(size: int, chunk_size: int = 512) -> int:
    return -(-size // chunk_size)


def fast_by_default(hello_flags: int) -> bool:
    """Fast OTA for the new stack from 1.2 on (Hello flags beyond 0x01, §0.1), non-fast otherwise."""
    return bool(hello_flags & ~HelloFlag.OTA_SUCCEEDED)


def _rejected(result: dict[str, Any] | None) -> bool:
    """The device's validation said no: a negative system error (2.x) or "error" (older)."""
    if not result:
        return False
    value = result.get("r")
    return (isinstance(value, int) and not isinstance(value, bool) and value < 0) or value == "error"


@dataclass(slots=True)
class _Progress:
    next_chunk: int = 0
    delivered: int = 0
    bad_answers: int = 0
    missed_messages: int = 0
    resent: int = 0
    done_sent: int = 0
    queue: list[int] = field(default_factory=list)
    #: The last ChunkMissed came CON: a legacy device, which may finish by itself.
    legacy_missed: bool = True


class OtaSender:
    """One update of one device over one connection. Time is injected (`now`, unix seconds)."""

    def __init__(
        self,
        connection: ServerConnection,
        image: bytes,
        now: float,
        *,
        fast: bool | None = None,
        config: OtaConfig | None = None,
    ) -> None:
        self.config = config or OtaConfig()
        size = self.config.chunk_size
        if not image:
            raise ValueError("an update needs a non-empty image")
        chunks = chunk_count(len(image), size)
        if chunks >= MAX_CHUNKS:
            raise ValueError(f"{len(image)} bytes make {chunks} chunks of {size}; devices take fewer than 65535")
        self.connection = connection
        self.image = image
        self.total = len(image)
        self._chunks = [image[i : i + size] for i in range(0, len(image), size)]
        # The CRC of the bytes sent: the last chunk goes unpadded (§7.1, §16: the device writes what it gets).
        self._crcs = [zlib.crc32(chunk) for chunk in self._chunks]
        hello = connection.hello
        self.offered_fast = fast if fast is not None else fast_by_default(int(hello.flags) if hello else 0)
        self.fast = self.offered_fast
        self.state = OtaState.BEGINNING
        self.outcome: OtaOutcome | None = None
        self._started = now
        self._progress = _Progress()
        self._request: int | None = None
        self._deadline: float | None = None
        self._burst_at: float | None = None
        self._begin_attempt = 0
        self._begin(now)

    # -- public surface -------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state in (OtaState.COMPLETE, OtaState.FAILED)

    @property
    def chunk_total(self) -> int:
        return len(self._chunks)

    @property
    def bytes_delivered(self) -> int:
        return self._progress.delivered

    def get_timer(self) -> float | None:
        if self.finished:
            return None
        due = [t for t in (self._deadline, self._burst_at) if t is not None]
        due.append(self._started + self.config.transfer_timeout)
        return min(due)

    def handle_timer(self, now: float, *, backlog: int = 0) -> None:
        """Act on what is due. `backlog`: bytes the adapter has not yet handed to the socket; a fast burst
        waits until it is 0 (§13.1 #15)."""
        if self.finished:
            return
        if self._closed(now):
            return
        if now >= self._started + self.config.transfer_timeout:
            self._fail("timeout", f"the update took longer than {self.config.transfer_timeout:g} s", now)
            return
        if self._burst_at is not None and now >= self._burst_at:
            if backlog > 0:
                self._burst_at = now + self.config.drain_poll
            else:
                self._burst_at = None
                self._burst(now)
        if self._deadline is not None and now >= self._deadline:
            self._deadline = None
            self._on_wait_over(now)

    def handle_event(self, event: Event, now: float) -> bool:
        """Feed an event of the connection; True when it was this update's."""
        if self.finished:
            return False
        if isinstance(event, ChunksMissed):
            self._on_missed(event.indexes, event.confirmable, now)
            return True
        if isinstance(event, UpdateFinishedByDevice):
            self._complete(event.result, now)
            return True
        if isinstance(event, ConnectionClosed | ConnectionFailed):
            self.connection_lost(now)
            return True
        if isinstance(event, EventPublished):
            if event.name != RESULT_EVENT or self.state is not OtaState.CONFIRMING:
                return False
            self._complete(json_object_or_none(event.data), now)
            return True
        if not isinstance(
            event, UpdateReady | UpdateRefused | ChunkAcknowledged | UpdateDoneAcknowledged | RequestTimedOut
        ):
            return False
        if event.request_id != self._request:
            # A late answer to a request given up on (an UpdateBegin that was sent again).
            return isinstance(event, UpdateReady | UpdateRefused | ChunkAcknowledged | UpdateDoneAcknowledged)
        self._request = None
        self._deadline = None
        if isinstance(event, UpdateReady):
            self._on_ready(event.fast, now)
        elif isinstance(event, UpdateRefused):
            self._fail(
                "refused",
                f"the device refused UpdateBegin ({format_code(event.code)}): its updates are disabled, or the "
                "image does not fit its OTA area",
                now,
            )
        elif isinstance(event, ChunkAcknowledged):
            self._on_chunk_answer(event.ok, now)
        elif isinstance(event, UpdateDoneAcknowledged):
            self._on_done_answer(event.complete, event.result, now)
        else:
            self._on_no_answer(now)
        return True

    def connection_lost(self, now: float) -> None:
        if self.finished:
            return
        if self.state is OtaState.CONFIRMING:
            self._complete(None, now)  # acknowledged complete, then the reset
            return
        where = {
            OtaState.BEGINNING: "before the device was ready",
            OtaState.SENDING: f"after {self._progress.delivered} of {self.total} bytes",
            OtaState.FINISHING: "while waiting for the answer to UpdateDone",
            OtaState.RESENDING: "while resending missed chunks",
            OtaState.SETTLING: "while waiting for the device to finish",
        }[self.state]
        self._fail("disconnected", f"the connection ended {where}", now)

    # -- the steps ------------------------------------------------------------------------------

    def _closed(self, now: float) -> bool:
        """The connection ended before this step (events of a batch that ended with it are still fed)."""
        if self.connection.closed:
            self.connection_lost(now)
            return True
        return False

    def _begin(self, now: float) -> None:
        timeout = self.config.begin_timeouts[self._begin_attempt]
        self._begin_attempt += 1
        self._request = self.connection.begin_update(
            file_size=self.total, chunk_size=self.config.chunk_size, fast=self.offered_fast, now=now, timeout=timeout
        )

    def _on_ready(self, fast: bool, now: float) -> None:
        # The device decides: it may decline fast mode, or force it (Connection::FAST_OTA, §7.1).
        self.fast = fast
        self.state = OtaState.SENDING
        if fast:
            self._burst(now)
        else:
            self._send_in_order(now)

    def _send_in_order(self, now: float) -> None:
        if self._closed(now):
            return
        index = self._progress.next_chunk
        self._request = self.connection.send_chunk(
            self._chunks[index], self._crcs[index], now=now, timeout=self.config.chunk_timeout
        )

    def _on_chunk_answer(self, ok: bool, now: float) -> None:
        progress = self._progress
        if not ok:
            progress.bad_answers += 1
            if progress.bad_answers > self.config.bad_chunk_limit:
                self._fail(
                    "bad_chunks",
                    f"the device found chunk {progress.next_chunk} damaged {progress.bad_answers} times in a "
                    "row (ChunkReceived 4.00): the link corrupts data",
                    now,
                )
                return
            progress.resent += 1
            self._send_in_order(now)  # the implicit index did not move: the same chunk again (§7.1)
            return
        progress.bad_answers = 0
        progress.delivered += len(self._chunks[progress.next_chunk])
        progress.next_chunk += 1
        if progress.next_chunk < len(self._chunks):
            self._send_in_order(now)
        else:
            self._send_done(now)

    def _burst(self, now: float) -> None:
        """Fast mode: the next frames of the first pass, then of the resend queue."""
        if self._closed(now):
            return
        for _ in range(self.config.burst):
            index = self._next_index()
            if index is None:
                break
            self.connection.send_chunk(self._chunks[index], self._crcs[index], index=index, now=now)
        if self._pending():
            self._burst_at = now + self.config.burst_interval
        elif self.state is OtaState.SENDING:
            # TCP keeps the order: the device has every chunk in hand before it reads UpdateDone.
            self._send_done(now)
        else:
            self.state = OtaState.SETTLING
            config = self.config
            legacy = self._progress.legacy_missed
            self._deadline = now + (config.finish_wait if legacy else config.new_stack_finish_wait)

    def _next_index(self) -> int | None:
        progress = self._progress
        if self.state is OtaState.SENDING:
            if progress.next_chunk < len(self._chunks):
                index = progress.next_chunk
                progress.next_chunk += 1
                progress.delivered += len(self._chunks[index])
                return index
            if not progress.queue:
                return None
            self.state = OtaState.RESENDING  # chunks reported missing during the first pass
        if not progress.queue:
            return None
        progress.resent += 1
        return progress.queue.pop(0)

    def _pending(self) -> bool:
        progress = self._progress
        first_pass = self.state is OtaState.SENDING and progress.next_chunk < len(self._chunks)
        return first_pass or bool(progress.queue)

    def _send_done(self, now: float) -> None:
        if self._closed(now):
            return
        self.state = OtaState.FINISHING
        self._progress.done_sent += 1
        self._request = self.connection.finish_update(now, timeout=self.config.done_timeout)

    def _on_done_answer(self, complete: bool, result: dict[str, Any] | None, now: float) -> None:
        if complete and result is None:
            # 0.6.x: the verdict follows as an event, then the device resets (OTA README D2).
            self.state = OtaState.CONFIRMING
            self._deadline = now + self.config.result_wait
        elif complete:
            self._complete(result, now)
        elif self.fast:
            # ACK 4.00: ChunkMissed follows (at once on both stacks); wait for it (§7.1).
            self._progress.done_sent = 0
            self.state = OtaState.SETTLING
            self._deadline = now + self.config.finish_wait
        else:
            self._fail("incomplete", "the device answered UpdateDone with 4.00 in non-fast mode", now)

    def _on_missed(self, indexes: Sequence[int], confirmable: bool, now: float) -> None:
        progress = self._progress
        if not self.fast or self.state is OtaState.BEGINNING:
            return  # only fast mode has missed chunks to ask for
        progress.legacy_missed = confirmable
        progress.missed_messages += 1
        limit = len(self._chunks) + self.config.missed_extra
        if progress.missed_messages > limit:
            self._fail("too_many_missed", f"the device sent ChunkMissed {progress.missed_messages} times", now)
            return
        wanted = [i for i in indexes if 0 <= i < len(self._chunks) and i not in progress.queue]
        progress.queue.extend(wanted)
        if self.state is OtaState.SENDING:
            return  # the first pass continues; the queue is served after it
        if self.state is not OtaState.RESENDING:
            # A ChunkMissed may overtake the answer to UpdateDone; that answer no longer matters.
            self._request = None
            self._deadline = None
            self.state = OtaState.RESENDING
            if self._burst_at is None:
                self._burst(now)

    def _on_wait_over(self, now: float) -> None:
        if self.state is OtaState.CONFIRMING:
            self._complete(None, now)  # a firmware that reports no result at all
        elif self.state is OtaState.SETTLING:
            # Silence after a resent batch: the new stack waits for UpdateDone again (§7.1, §16).
            self._send_done(now)

    def _on_no_answer(self, now: float) -> None:
        config = self.config
        if self.state is OtaState.BEGINNING:
            if self._begin_attempt < len(config.begin_timeouts):
                if not self._closed(now):
                    self._begin(now)
            else:
                self._fail("no_answer", f"no UpdateReady after {self._begin_attempt} UpdateBegin messages", now)
        elif self.state is OtaState.SENDING:
            # Non-fast: resending could write the chunk twice (the index is implicit); give up instead.
            self._fail(
                "no_answer",
                f"no ChunkReceived for chunk {self._progress.next_chunk} within {config.chunk_timeout:g} s",
                now,
            )
        elif self._progress.done_sent < config.done_attempts:
            self._send_done(now)
        else:
            self._fail("no_answer", f"no answer to {self._progress.done_sent} UpdateDone messages", now)

    # -- endings --------------------------------------------------------------------------------

    def _complete(self, result: dict[str, Any] | None, now: float) -> None:
        if _rejected(result):
            self._fail("rejected", f"the device found the image invalid: {result}", now, result)
            return
        self._end(OtaState.COMPLETE, None, "the device has the whole image and resets to apply it", result, now)

    def _fail(self, reason: str, detail: str, now: float, result: dict[str, Any] | None = None) -> None:
        # The device no longer updates as far as we are concerned: the idle timeout applies again.
        if not self.connection.closed:
            self.connection.suspend_idle_timeout(False)
        self._end(OtaState.FAILED, reason, detail, result, now)

    def _end(self, state: OtaState, reason: str | None, detail: str, result: dict[str, Any] | None, now: float) -> None:
        self.state = state
        self._deadline = self._burst_at = None
        self._request = None
        progress = self._progress
        self.outcome = OtaOutcome(
            complete=state is OtaState.COMPLETE,
            fast=self.fast,
            reason=reason,
            detail=detail,
            result=result,
            bytes_delivered=progress.delivered,
            chunks_resent=progress.resent,
            elapsed=now - self._started,
        )
