"""Diagnostics: a device's connection attempts and the doctor's report, for its owner; unidentified
attempts for operators.

Unidentified attempts (a device holding another server key cannot name itself, protocol.md §9.3) belong
to no account, and their source addresses say where other people's devices are. So only operators may
list them: the users named in the environment variable CYAN_ADMINS (comma-separated usernames), or
anyone with the data directory (`cyan devices unidentified`). An owner's doctor report still includes the
unidentified attempts that came from the address their own device was last seen at, after it went quiet,
since those are most likely that device (docs/diagnostics.md).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from cyan.cloud.models import AccessToken
from cyan.diagnose.gather import doctor_from_store, unidentified_from_store
from cyan.diagnose.server_evidence import GROUP_GAP, LOOP_FAILURES, LOOP_WINDOW, explain_attempt, parse_time

from ._requests import context, require_token
from .errors import ApiError

router = APIRouter(tags=["diagnostics"])
Token = Annotated[AccessToken, Depends(require_token)]
_MAX_ATTEMPTS = 1000


def admins() -> set[str]:
    """The operators: usernames in CYAN_ADMINS, read at each request so a change needs no restart."""
    return {name.strip().lower() for name in os.environ.get("CYAN_ADMINS", "").split(",") if name.strip()}


def _time(value: str | None, name: str) -> datetime | None:
    if value is None or not value.strip():
        return None
    try:
        return parse_time(value)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be an ISO 8601 time, got {value!r}") from None


@router.get("/v1/devices/{device}/attempts", summary="A device's connection attempts, explained")
async def device_attempts(
    request: Request,
    token: Token,
    device: str,
    *,
    since: str | None = None,
    until: str | None = None,
    limit: Annotated[int, Query(ge=1, le=_MAX_ATTEMPTS)] = 100,
) -> dict[str, Any]:
    cloud = context(request).cloud
    record = await cloud.find_device(device, owner=token.username)
    end = _time(until, "until")
    attempts = await cloud.store.list_attempts(record.id, since=_time(since, "since"), limit=limit)
    return {
        "device_id": record.id,
        "attempts": [explain_attempt(a) for a in attempts if end is None or a.started_at <= end],
    }


@router.get("/v1/devices/{device}/doctor", summary="What the server saw of a device, and what to do")
async def device_doctor(
    request: Request,
    token: Token,
    device: str,
    *,
    since: str | None = None,
    until: str | None = None,
    loop_failures: Annotated[int, Query(ge=2, le=1000)] = LOOP_FAILURES,
    loop_window: Annotated[float, Query(gt=0, le=24 * 60, description="minutes")] = LOOP_WINDOW.total_seconds() / 60,
) -> dict[str, Any]:
    cloud = context(request).cloud
    record = await cloud.find_device(device, owner=token.username)
    report = await doctor_from_store(
        cloud.store,
        record.id,
        now=datetime.now(UTC),
        since=_time(since, "since"),
        until=_time(until, "until"),
        online=cloud.online(record.id),
        include_unregistered=False,
        min_failures=loop_failures,
        window=timedelta(minutes=loop_window),
    )
    if report is None:  # removed meanwhile
        raise ApiError(404, "Not Found", f"device {device!r} is no longer registered")
    return report.to_json()


@router.get("/v1/diagnostics/unidentified", summary="Failed attempts that carry no device id (operators only)")
async def unidentified(
    request: Request,
    token: Token,
    *,
    since: str | None = None,
    until: str | None = None,
    gap: Annotated[float, Query(gt=0, le=7 * 24 * 60, description="minutes")] = GROUP_GAP.total_seconds() / 60,
) -> dict[str, Any]:
    if token.username.lower() not in admins():
        raise ApiError(
            403,
            "Permission Denied",
            "unidentified attempts belong to no account; only the operators listed in CYAN_ADMINS may read them "
            "(or run `cyan devices unidentified` on the server)",
        )
    groups = await unidentified_from_store(
        context(request).cloud.store,
        now=datetime.now(UTC),
        since=_time(since, "since"),
        until=_time(until, "until"),
        gap=timedelta(minutes=gap),
    )
    return {"groups": [g.to_json() for g in groups]}
