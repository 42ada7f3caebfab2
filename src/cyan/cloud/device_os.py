"""Device OS release names from the system module version a device reports.

A device reports its system firmware as a module version (a number in its Hello from 0.8 on, and in the
system part's ``"v"`` of its system Describe): the release it corresponds to is what the Particle API calls
``system_firmware_version``. The numbers come from Device OS's own table (system/system-versions.md); a
number not listed there (a pre-release, or a release newer than this table) has no name here.
"""

from __future__ import annotations

__all__ = ["release_name"]

_RELEASES: dict[int, str] = {
    0: "0.4.0", 1: "0.4.1", 2: "0.4.2", 3: "0.4.3", 5: "0.4.4", 6: "0.4.5", 7: "0.4.6", 8: "0.4.7",
    11: "0.4.9", 13: "0.5.0", 15: "0.5.1", 17: "0.5.2", 21: "0.5.3", 22: "0.5.4", 23: "0.5.5",
    102: "0.6.0", 105: "0.6.1", 108: "0.6.2", 109: "0.6.3", 110: "0.6.4", 207: "0.7.0", 403: "0.9.0",
    1000: "1.0.0", 1002: "1.0.1", 1102: "1.1.0", 1213: "1.2.1", 1321: "1.3.1",
    1401: "1.4.0", 1403: "1.4.1", 1404: "1.4.2", 1405: "1.4.3", 1406: "1.4.4",
    1502: "1.5.0", 1511: "1.5.1", 1512: "1.5.2",
    2008: "2.0.0", 2011: "2.0.1", 2101: "2.1.0", 2202: "2.2.0", 2301: "2.3.0",
    3005: "3.0.0", 3103: "3.1.0", 3201: "3.2.0", 4006: "4.0.2",
}  # fmt: skip


def release_name(module_version: int | None) -> str | None:
    """The release name for a system module version (``105`` -> ``"0.6.1"``), or None when unknown."""
    if module_version is None:
        return None
    return _RELEASES.get(module_version)
