"""Reading the records the server-side analysis needs from the store (for `cyan.app.diagnostics`)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from cyan.cloud.models import ConnectionAttempt
from cyan.cloud.ports import Repositories

from .server_evidence import (
    GROUP_GAP,
    LOOP_FAILURES,
    LOOP_WINDOW,
    DoctorReport,
    UnidentifiedGroup,
    build_doctor,
    group_unidentified,
)

__all__ = ["DEFAULT_PERIOD", "doctor_from_store", "unidentified_from_store"]

#: How far back the doctor looks when no period is given.
DEFAULT_PERIOD = timedelta(days=7)
#: Bounds on what one report reads: a device in a loop at the backoff ceiling makes ~700 attempts a day.
_DEVICE_LIMIT = 5000
_ALL_LIMIT = 20000
_DEVICE_ID = re.compile(r"[0-9a-fA-F]{24}")


def _within(attempts: list[ConnectionAttempt], until: datetime | None) -> list[ConnectionAttempt]:
    return [a for a in attempts if until is None or a.started_at <= until]


async def doctor_from_store(
    store: Repositories,
    id_or_name: str,
    *,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    online: bool | None = None,
    include_unregistered: bool = True,
    min_failures: int = LOOP_FAILURES,
    window: timedelta = LOOP_WINDOW,
) -> DoctorReport | None:
    """The doctor's report for a device (by id or name), or None when there is nothing by that name.

    An id that is not registered still gets a report when `include_unregistered` (its attempts are recorded
    as `unknown_device`); the API passes False, since such records belong to nobody.
    """
    record = await store.devices.find(id_or_name)
    if record is None and not (include_unregistered and _DEVICE_ID.fullmatch(id_or_name)):
        return None
    device_id = record.id if record is not None else id_or_name.lower()
    since = since or now - DEFAULT_PERIOD
    mine = _within(await store.attempts.recent(device_id, since=since, limit=_DEVICE_LIMIT), until)
    unidentified: list[ConnectionAttempt] = []
    if record is not None and record.last_address:
        everything = await store.attempts.recent(None, since=since, limit=_ALL_LIMIT)
        unidentified = [a for a in _within(everything, until) if a.device_id is None]
    return build_doctor(
        device_id,
        record,
        mine,
        now=now,
        online=online,
        unidentified=unidentified,
        since=since,
        until=until,
        min_failures=min_failures,
        window=window,
    )


async def unidentified_from_store(
    store: Repositories,
    *,
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    gap: timedelta = GROUP_GAP,
) -> list[UnidentifiedGroup]:
    """Every group of unidentified failed attempts in the period, related to the registered devices."""
    since = since or now - DEFAULT_PERIOD
    attempts = _within(await store.attempts.recent(None, since=since, limit=_ALL_LIMIT), until)
    devices = await store.devices.all()
    return group_unidentified(attempts, devices, gap=gap)
