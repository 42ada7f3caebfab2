"""Diagnostics: a device's connection attempts and the doctor's report, for its owner (or an admin);
unidentified attempts for admins; and Particle's device vitals (`/v1/diagnostics/:deviceId`), for the owner
(or an admin).

Unidentified attempts (a device holding another server key cannot name itself, protocol.md §9.3) belong
to no account, and their source addresses say where other people's devices are, so only admins may list
them (or anyone with the data directory: `cyan devices unidentified`). An owner's doctor report still
includes the unidentified attempts that came from the address their own device was last seen at, after it
went quiet, since those are most likely that device (docs/diagnostics.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Query, Request

from cyan.app import Actor
from cyan.cloud.models import VitalsRecord
from cyan.diagnose.server_evidence import GROUP_GAP, LOOP_FAILURES, LOOP_WINDOW, explain_attempt, parse_time

from . import schemas
from ._requests import app, require_actor
from ._routing import IndexedRouter
from ._serialize import iso
from .errors import ApiError
from .schemas import BODY_ERRORS, errors, request_body

router = IndexedRouter(tags=["diagnostics"])
Caller = Annotated[Actor, Depends(require_actor)]
_MAX_ATTEMPTS = 1000


def _time(value: str | None, name: str) -> datetime | None:
    if value is None or not value.strip():
        return None
    try:
        # In UTC here: a time at the edge of the calendar in another zone would overflow later, in the query.
        return parse_time(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ApiError(
            400, "invalid_request", f"{name} must be an ISO 8601 time, got {value[:40]!r}", field=name
        ) from None


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


# -- device vitals (Particle's) -------------------------------------------------------------------------
# After /v1/diagnostics/unidentified: that path is not a device's (a device named "unidentified" is asked
# about by its id).


def _vitals(record: VitalsRecord) -> schemas.VitalsRecord:
    return schemas.VitalsRecord(updated_at=iso(record.updated_at), deviceID=record.device_id, payload=record.payload)


@router.get("/v1/diagnostics/{device}/last", summary="A device's latest vitals", responses=errors(400, 401, 404))
async def last_vitals(request: Request, actor: Caller, device: str) -> schemas.LastVitals:
    device_id, record = await app(request).vitals.last(actor, device)
    if record is None:
        raise ApiError(
            404,
            "Not Found",
            f"no vitals of device {device_id} yet: POST /v1/diagnostics/{device_id}/update asks the device for them",
        )
    return schemas.LastVitals(diagnostics=_vitals(record))


@router.post(
    "/v1/diagnostics/{device}/update",
    summary="Ask a connected device for its vitals now",
    responses=errors(401, 403, 404, 408, *BODY_ERRORS),
    openapi_extra=request_body(schemas.NoParameters),
)
async def refresh_vitals(request: Request, actor: Caller, device: str) -> schemas.Ok:
    await app(request).vitals.refresh(actor, device)
    return schemas.Ok(ok=True)


@router.get(
    "/v1/diagnostics/{device}",
    summary="A device's vitals over time (the last 30 days at most)",
    responses=errors(400, 401, 404),
)
async def vitals_history(
    request: Request,
    actor: Caller,
    device: str,
    *,
    start_date: str | None = None,
    end_date: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> schemas.VitalsHistory:
    _, records = await app(request).vitals.history(
        actor,
        device,
        since=_time(start_date, "start_date"),
        until=_time(end_date, "end_date"),
        limit=limit,
    )
    return schemas.VitalsHistory(diagnostics=[_vitals(record) for record in records])
