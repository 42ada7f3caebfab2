"""Diagnostics: a device's connection attempts and the doctor's report, for its owner (or an admin);
unidentified attempts for admins.

Unidentified attempts (a device holding another server key cannot name itself, protocol.md §9.3) belong
to no account, and their source addresses say where other people's devices are, so only admins may list
them (or anyone with the data directory: `cyan devices unidentified`). An owner's doctor report still
includes the unidentified attempts that came from the address their own device was last seen at, after it
went quiet, since those are most likely that device (docs/diagnostics.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from cyan.app import Actor
from cyan.diagnose.server_evidence import GROUP_GAP, LOOP_FAILURES, LOOP_WINDOW, explain_attempt, parse_time

from . import schemas
from ._requests import app, require_actor
from .errors import ApiError
from .schemas import errors

router = APIRouter(tags=["diagnostics"])
Caller = Annotated[Actor, Depends(require_actor)]
_MAX_ATTEMPTS = 1000


def _time(value: str | None, name: str) -> datetime | None:
    if value is None or not value.strip():
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        raise ApiError(400, "invalid_request", f"{name} must be an ISO 8601 time, got {value[:40]!r}") from None


@router.get(
    "/v1/devices/{device}/attempts",
    summary="A device's connection attempts, explained",
    responses=errors(400, 401, 404),
)
async def device_attempts(
    request: Request,
    actor: Caller,
    device: str,
    *,
    since: str | None = None,
    until: str | None = None,
    limit: Annotated[int, Query(ge=1, le=_MAX_ATTEMPTS)] = 100,
) -> schemas.AttemptList:
    record, attempts = await app(request).diagnostics.attempts(
        actor, device, since=_time(since, "since"), until=_time(until, "until"), limit=limit
    )
    assert record is not None
    return schemas.AttemptList.model_validate(
        {"device_id": record.id, "attempts": [explain_attempt(a) for a in attempts]}
    )


@router.get(
    "/v1/devices/{device}/doctor",
    summary="What the server saw of a device, and what to do",
    responses=errors(400, 401, 404),
)
async def device_doctor(
    request: Request,
    actor: Caller,
    device: str,
    *,
    since: str | None = None,
    until: str | None = None,
    loop_failures: Annotated[int, Query(ge=2, le=1000)] = LOOP_FAILURES,
    loop_window: Annotated[float, Query(gt=0, le=24 * 60, description="minutes")] = LOOP_WINDOW.total_seconds() / 60,
) -> schemas.DoctorReport:
    report = await app(request).diagnostics.doctor(
        actor,
        device,
        since=_time(since, "since"),
        until=_time(until, "until"),
        min_failures=loop_failures,
        window=timedelta(minutes=loop_window),
    )
    return schemas.DoctorReport.model_validate(report.to_json())


@router.get(
    "/v1/diagnostics/unidentified",
    summary="Failed attempts that carry no device id (admins only)",
    responses=errors(400, 401, 403),
)
async def unidentified(
    request: Request,
    actor: Caller,
    *,
    since: str | None = None,
    until: str | None = None,
    gap: Annotated[float, Query(gt=0, le=7 * 24 * 60, description="minutes")] = GROUP_GAP.total_seconds() / 60,
) -> schemas.UnidentifiedList:
    groups = await app(request).diagnostics.unidentified(
        actor, since=_time(since, "since"), until=_time(until, "until"), gap=timedelta(minutes=gap)
    )
    return schemas.UnidentifiedList.model_validate({"groups": [g.to_json() for g in groups]})
