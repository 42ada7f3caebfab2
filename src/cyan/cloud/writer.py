"""Writing behind the devices: what connections learn (device state) and every attempt record, batched.

A connection event is handled in memory at once, in the order the device sent it; what it changes is
written afterwards by one writer, many connections to a transaction, so that a slow or failing database
never stalls a device (design.md §1). These are records of what devices did, not changes anyone was told
had been made: those go through the use cases, which write before they answer.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from .models import ConnectionAttempt, DeviceRecord
from .ports import Store, StoreUnavailableError

__all__ = ["RecordWriter"]

log = logging.getLogger("cyan.cloud.writer")


class RecordWriter:
    def __init__(self, store: Store, *, limit: int = 100_000) -> None:
        self._store = store
        self._limit = limit
        #: The latest state of each device still to be written, and attempts still to be recorded.
        self._states: dict[str, DeviceRecord] = {}
        self._attempts: list[ConnectionAttempt] = []
        self._signal = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
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
        """Queue the device's state as it is now (a later call for the same device replaces it)."""
        self._states[record.id] = replace(record, functions=list(record.functions), variables=list(record.variables))
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
        return len(self._states) + len(self._attempts)

    async def flush(self) -> None:
        """Wait until every queued write has reached the store (tests, shutdown)."""
        while self.backlog:
            self._signal.set()
            await asyncio.sleep(0.005)

    async def _run(self) -> None:
        delay = 0.5
        while True:
            while self.backlog:
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
            states = list(self._states.values())
            self._states.clear()
            try:
                await self._store.devices.update_states(states)
            except StoreUnavailableError:
                for record in states:  # put them back, unless a newer snapshot arrived meanwhile
                    self._states.setdefault(record.id, record)
                raise
        if self._attempts:
            attempts, self._attempts = self._attempts, []
            try:
                await self._store.attempts.add(attempts)
            except StoreUnavailableError:
                self._attempts[:0] = attempts
                raise
