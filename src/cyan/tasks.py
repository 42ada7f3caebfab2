"""Work started beside the event loop's callbacks, never lost: every task is referenced until it ends (asyncio
keeps only weak references, so an unreferenced task can vanish mid-way), and a failure is logged with what the
task was for, instead of surfacing as "Task exception was never retrieved" at exit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

__all__ = ["TaskSet"]


class TaskSet:
    """The tasks one component started. `spawn` them, `drain` them at shutdown (or `cancel` them)."""

    __slots__ = ("_log", "_prefix", "_tasks")

    def __init__(self, log: logging.Logger, prefix: str) -> None:
        self._log = log
        self._prefix = prefix
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Awaitable[None], what: str) -> asyncio.Task[None]:
        """Run `work`; `what` says what it does ("record a key error report"), for the name and the log."""

        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                self._log.exception("could not %s", what)

        task = asyncio.get_running_loop().create_task(run(), name=f"{self._prefix}: {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for every task, including those the waited ones start."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
