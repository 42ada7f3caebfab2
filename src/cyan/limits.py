"""Process limits that decide how many devices one process can hold (one open file per connection), and the
garbage collector's share of a serving process's latency."""

from __future__ import annotations

import gc

__all__ = ["ensure_file_limit", "file_limit", "freeze_startup_objects"]


def freeze_startup_objects() -> int:
    """Put every object alive now (modules, classes, the app and its routes: what a serving process holds
    until it exits) out of the cyclic garbage collector's sight; returns how many.

    Each full collection walks every object it tracks, with the event loop held meanwhile: in a serving
    process most of them are the start-up's, and a full collection there took 60-110 ms (measured beside a
    fleet's device list, docs/benchmarks.md), 1 ms with them frozen. Called once a process is serving; what
    it creates afterwards (sessions, requests) is collected as before."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


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
