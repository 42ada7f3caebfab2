"""Writing behind the devices: what connections learn (device state) and every attempt record, batched.

A connection event is handled in memory at once, in the order the device sent it; what it changes is
written afterwards by one writer, many connections to a transaction, so that a slow or failing database
never stalls a device (design.md §1). These are records of what devices did, not changes anyone was told
had been made: those go through the use cases, which write before they answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from .models import AttemptOutcome, ConnectionAttempt, DeviceRecord
from .ports import Store, StoreUnavailableError

__all__ = ["AttemptSampler", "RecordLimits", "RecordWriter"]

log = logging.getLogger("cyan.cloud.writer")


class RecordWriter:
    def __init__(self, store: Store, *, limit: int = 100_000, gather: float = 0.05) -> None:
        self._store = store
        self._limit = limit
        #: Seconds to let records gather before each batch is written: a fleet connecting writes fewer,
        #: larger batches (each costs two transactions), and nothing waits for these writes.
        self._gather = gather
        #: The latest state of each device still to be written, and attempts still to be recorded.
        self._states: dict[str, DeviceRecord] = {}
        self._attempts: list[ConnectionAttempt] = []
        self._signal = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Records taken from the queues whose write has not finished yet.
        self._writing = 0
        self.dropped = 0

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cyan-record-writer")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        self._stopping = True
        self._signal.set()
        if self._task is not None:
            await self._task
            self._task = None

    def state(self, record: DeviceRecord) -> None:
        """Queue the device's state to be written (a later call for the same device replaces it).

        The record is copied when the batch is written, not here: a session start queues the same record up to
        four times (online, two Describes, offline) within a batch, and what is written is the latest state
        either way."""
        self._states[record.id] = record
        self._signal.set()

    def attempt(self, attempt: ConnectionAttempt) -> None:
        if len(self._attempts) >= self._limit:
            del self._attempts[0]
            self.dropped += 1
            log.error("attempt records are backing up: dropped the oldest (%d so far)", self.dropped)
        self._attempts.append(attempt)
        self._signal.set()

    @property
    def backlog(self) -> int:
        """Records not in the store yet: queued, or in the batch being written."""
        return len(self._states) + len(self._attempts) + self._writing

    async def flush(self) -> None:
        """Wait until every queued write has reached the store (tests, shutdown)."""
        while self.backlog:
            self._signal.set()
            await asyncio.sleep(0.005)

    async def _run(self) -> None:
        delay = 0.5
        while True:
            while self.backlog:
                if self._gather and not self._stopping:
                    await asyncio.sleep(self._gather)
                try:
                    await self._write_once()
                except StoreUnavailableError as exc:
                    if self._stopping:
                        log.error("database unavailable at shutdown; %d records lost: %s", self.backlog, exc)
                        return
                    # Keep the records and retry: a database that is down must not lose one.
                    log.error("database unavailable, retrying in %.1f s: %s", delay, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                except Exception:
                    log.exception("a batch of records could not be written and was dropped")
                delay = 0.5
            if self._stopping:
                return
            self._signal.clear()
            await self._signal.wait()

    async def _write_once(self) -> None:
        if self._states:
            # A snapshot: the records go on changing in memory while the write awaits the database.
            states = [
                replace(record, functions=list(record.functions), variables=list(record.variables))
                for record in self._states.values()
            ]
            self._states.clear()
            self._writing = len(states)
            try:
                await self._store.devices.update_states(states)
            except StoreUnavailableError:
                for record in states:  # put them back, unless a newer snapshot arrived meanwhile
                    self._states.setdefault(record.id, record)
                raise
            finally:
                self._writing = 0
        if self._attempts:
            attempts, self._attempts = self._attempts, []
            self._writing = len(attempts)
            try:
                await self._store.attempts.add(attempts)
            except StoreUnavailableError:
                self._attempts[:0] = attempts
                raise
            finally:
                self._writing = 0


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """How much of the device port's history is kept (docs/security.md "Connection attempts")."""

    #: Attempts older than this are deleted.
    max_age: timedelta = timedelta(days=30)
    #: At most this many attempts are kept, the newest.
    max_count: int = 1_000_000
    #: Of identical failures from one address (same device id, step and reason) within `window`, the first
    #: `identical` are kept one by one; the rest are counted into one record at the window's end.
    identical: int = 20
    window: timedelta = timedelta(minutes=10)


@dataclass(slots=True)
class _Run:
    first: datetime
    kept: int
    skipped: int
    last: ConnectionAttempt


class AttemptSampler:
    """Keeps a hostile or broken client from writing a row per connection: past `identical` failures of one
    kind from one address in a window, the rest are summed into one record (`detail` says how many, and
    `duration` spans them). Enough single records stay for the diagnostics to see a loop (5 make one)."""

    def __init__(self, limits: RecordLimits, *, max_tracked: int = 100_000) -> None:
        self._limits = limits
        self._max_tracked = max_tracked
        self._runs: dict[tuple[str, str | None, str, str | None], _Run] = {}

    def keep(self, attempt: ConnectionAttempt) -> list[ConnectionAttempt]:
        """What to record for this attempt: itself, nothing (counted), or an ended run's summary and itself."""
        if attempt.outcome is not AttemptOutcome.FAILED:
            return [attempt]
        key = (attempt.peer_address.rsplit(":", 1)[0], attempt.device_id, attempt.step, attempt.reason)
        run = self._runs.get(key)
        out: list[ConnectionAttempt] = []
        if run is not None and attempt.started_at - run.first >= self._limits.window:
            out += self._summary(self._runs.pop(key))
            run = None
        if run is None:
            if len(self._runs) >= self._max_tracked:
                out += self._summary(self._runs.pop(next(iter(self._runs))))
            self._runs[key] = _Run(attempt.started_at, 1, 0, attempt)
            return [*out, attempt]
        run.last = attempt
        if run.kept < self._limits.identical:
            run.kept += 1
            return [*out, attempt]
        run.skipped += 1
        return out

    def flush(self, now: datetime) -> list[ConnectionAttempt]:
        """The summaries of the runs whose window has ended."""
        ended = [key for key, run in self._runs.items() if now - run.first >= self._limits.window]
        return [summary for key in ended for summary in self._summary(self._runs.pop(key))]

    def _summary(self, run: _Run) -> list[ConnectionAttempt]:
        if not run.skipped:
            return []
        last = run.last
        span = (last.started_at - run.first).total_seconds()
        return [
            replace(
                last,
                id=None,
                detail=f"{run.skipped} more attempt(s) like this one from this address within {span:.0f} s were "
                f"counted, not recorded one by one; last detail: {last.detail or 'none'}",
            )
        ]
