"""Process limits that decide how many devices one process can hold: one open file per connection."""

from __future__ import annotations

__all__ = ["ensure_file_limit", "file_limit"]


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
