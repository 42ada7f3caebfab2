"""Process limits that decide how many devices one process can hold (one open file per connection), and the
garbage collector's share of a serving process's latency."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

__all__ = ["CollectorPolicy", "ensure_file_limit", "file_limit", "freeze_startup_objects"]

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Put every object alive now (modules, classes, the app and its routes: what a serving process holds
    until it exits) out of the cyclic garbage collector's sight; returns how many.

    Each full collection walks every object it tracks, with the event loop held meanwhile: in a serving
    process most of them are the start-up's, and a full collection there took 60-110 ms (measured beside a
    fleet's device list, docs/benchmarks.md), 1 ms with them frozen. Called before a serving process opens
    its ports (a fleet reconnecting at once arrives with the first), and again once it has started; what it
    creates afterwards (sessions, requests) is collected as before, under `CollectorPolicy`."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


#: A full collection that held the process this long (seconds) freezes what survived it (`CollectorPolicy`).
SLOW_FULL_COLLECTION = 0.005

#: How often a serving process collects its whole heap, frozen objects included (`CollectorPolicy.reclaim`).
RECLAIM_INTERVAL = 6 * 3600.0


class CollectorPolicy:
    """Keeps the cyclic garbage collector's full collections short in a process whose long-lived objects grow
    by thousands at a time: a fleet reconnecting at once.

    CPython's generational collector (3.11 to 3.13; 3.14's is incremental, and where the full collections
    watched for here do not come, only `reclaim` acts) runs a full collection each time the objects that
    survived into its oldest generation have grown by a quarter, and each one walks all of them with the
    event loop held. A session holds about 30 tracked objects (its protocol, transport, socket, selector key
    and handle, subscriptions, record), so while a fleet reconnects the collections come one after another
    and each is longer than the last: the longest 55-88 ms with 5,000 devices in one process, in the middle
    of the storm, with the calls to the devices already back waiting behind them (docs/benchmarks.md
    "Handshakes in slices, the collector's freezes, and the key workers below the loop").

    So a full collection that took `slow` seconds or more freezes what survived it (`gc.freeze`): what is
    alive after a full collection is what the process holds (sessions, mostly), and the next collection
    walks only what was made since. Objects freed by their reference count go as before, frozen or not,
    and a closed session is freed so (tests/server/test_session_garbage.py holds it to that). What a frozen
    object cannot be is cyclic garbage found later: `reclaim` collects the whole heap every
    `RECLAIM_INTERVAL`, one long pause at a known rate instead of many in a storm, so a cycle frozen by
    mistake (a request's, alive at the moment of a freeze) is held for hours at most, not for the process's
    life."""

    def __init__(self, slow: float = SLOW_FULL_COLLECTION, clock: Callable[[], float] = time.perf_counter) -> None:
        if not slow >= 0:
            raise ValueError(f"a slow collection takes 0 s or more, not {slow}")
        self.slow = slow
        self._clock = clock
        self._started: float | None = None
        self._thresholds = gc.get_threshold()
        self._reclaiming = False
        #: Full collections whose survivors were frozen, and whole-heap collections run, since `install`.
        self.freezes = 0
        self.reclaims = 0

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        """For as long as a process serves, once it has started: what starting made frozen with the start-up
        objects (`freeze_startup_objects`), the policy installed, and the whole heap reclaimed every
        `RECLAIM_INTERVAL`."""
        freeze_startup_objects()
        self.install()
        reclaims = asyncio.create_task(self.reclaim_every(), name="cyan-reclaim")
        try:
            yield
        finally:
            reclaims.cancel()
            self.uninstall()

    def install(self) -> None:
        if self._observe not in gc.callbacks:
            gc.callbacks.append(self._observe)
            self._thresholds = gc.get_threshold()
            young, middle, _ = self._thresholds
            gc.set_threshold(young, middle, 1)

    def uninstall(self) -> None:
        while self._observe in gc.callbacks:
            gc.callbacks.remove(self._observe)
        gc.set_threshold(*self._thresholds)

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2 or self._reclaiming:
            return  # the young generations' collections walk only the young objects; `reclaim` freezes itself
        if phase == "start":
            self._started = self._clock()
            return
        started, self._started = self._started, None
        if started is not None and self._clock() - started >= self.slow:
            # The collection is over; freezing moves its survivors into the permanent generation (a list
            # splice, no walk).
            gc.freeze()
            self.freezes += 1

    def reclaim(self) -> int:
        """Collect the whole heap, frozen objects included, then freeze what survives; returns how many
        objects were unreachable."""
        self._reclaiming = True
        gc.unfreeze()
        try:
            collected = gc.collect()
        finally:
            gc.freeze()
            self._reclaiming = False
        self.reclaims += 1
        return collected

    async def reclaim_every(self, interval: float = RECLAIM_INTERVAL) -> None:
        """`reclaim` every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            started = time.monotonic()
            collected = self.reclaim()
            log.info(
                "collected the whole heap in %.0f ms: %d unreachable objects, %d kept",
                (time.monotonic() - started) * 1000,
                collected,
                gc.get_freeze_count(),
            )


def file_limit() -> int | None:
    """This process's open-file limit in force (the soft one), or None where there is none."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def ensure_file_limit(wanted: int | None = None) -> int:
    """Raise this process's open-file limit towards `wanted` (None: as far as the hard limit allows);
    returns the soft limit now in force. A no-op where there are no rlimits."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:
        return wanted or 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None:
        wanted = hard
    if soft == resource.RLIM_INFINITY or (wanted != resource.RLIM_INFINITY and soft >= wanted):
        return wanted if soft == resource.RLIM_INFINITY else soft
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target == resource.RLIM_INFINITY:
        return soft  # an unlimited hard limit: leave the soft one as it is, it is what the system allows
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target
