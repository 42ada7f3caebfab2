"""The fleet as a whole (Cyan's own routes): counts, the device list searched and paged by the server, a stream of
every visible device's events, holding and stopping update jobs, access tokens by account, and the server key
devices need. What the console shows, for any client (docs/api.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.responses import Response

from cyan.app import Actor, DeviceRow, UpdateUseCases
from cyan.app.fleet import FAILING_WINDOW
from cyan.cloud.errors import InvalidInputError, NotFoundError
from cyan.cloud.models import AccessToken, ConnectionAttempt
from cyan.cloud.queries import DeviceQuery, DeviceSort, DeviceStatus
from cyan.diagnose.server_evidence import parse_time

from . import schemas
from ._requests import app, body, context, require_actor
from ._routing import IndexedRouter
from ._serialize import iso, render_job
from .errors import ApiError
from .routes_events import _stream
from .schemas import BODY_ERRORS, EventStream, errors, request_body, stream_responses

router = IndexedRouter()
Caller = Annotated[Actor, Depends(require_actor)]


def _attempt(attempt: ConnectionAttempt | None) -> schemas.AttemptBrief | None:
    if attempt is None:
        return None
    return schemas.AttemptBrief(
        started_at=iso(attempt.started_at),
        outcome=attempt.outcome.value,
        step=attempt.step,
        reason=attempt.reason,
        peer_address=attempt.peer_address,
    )


def _row(row: DeviceRow) -> schemas.FleetDevice:
    record = row.record
    return schemas.FleetDevice(
        id=record.id,
        name=record.name,
        owner=record.owner,
        status=row.status,
        online=row.status == "online",
        platform_id=record.platform_id,
        product_id=record.product_id,
        product_version=record.product_version,
        system_version=record.system_version,
        last_heard=iso(record.last_heard),
        last_ip_address=(record.last_address or "").rsplit(":", 1)[0] or None,
        key_fingerprint=record.key_fingerprint,
        pending_keys=row.pending_keys,
        last_attempt=_attempt(row.last_attempt),
    )


@router.get(
    "/v1/fleet",
    tags=["fleet"],
    summary="The fleet at a glance: counts, devices failing now, alerts",
    responses=errors(401),
)
async def fleet(request: Request, actor: Caller) -> schemas.FleetSummary:
    summary = await app(request).fleet.summary(actor)
    return schemas.FleetSummary(
        at=iso(summary.at),
        devices=summary.total,
        online=summary.online,
        offline=summary.offline,
        failing=summary.failing,
        failing_window_minutes=int(FAILING_WINDOW.total_seconds() // 60),
        pending_devices=summary.pending_devices,
        pending_keys=summary.pending_keys,
        quarantined=summary.quarantined,
        rekey_windows=summary.rekey_windows,
        unidentified_failures=summary.unidentified_failures,
        failing_devices=[_row(r) for r in summary.failing_devices],
        alerts=[schemas.FleetAlert(**{**a.to_json(), "at": iso(a.at)}) for a in summary.alerts],
    )


def _enum(kind: Any, value: str | None, name: str) -> Any:
    if value is None or value == "":
        return None
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise InvalidInputError(f"{name} is one of {choices}", name) from None


def _time(value: str | None, name: str) -> datetime | None:
    if value is None or not value.strip():
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        raise InvalidInputError(f"{name} must be an ISO 8601 time", name) from None


@router.get(
    "/v1/fleet/devices",
    tags=["fleet"],
    summary="Search your devices (admins: the fleet), sorted and paged",
    responses=errors(400, 401),
)
async def fleet_devices(
    request: Request,
    actor: Caller,
    *,
    q: Annotated[str | None, Query(max_length=64, description="part of the id or name")] = None,
    status: Annotated[str | None, Query(description="online, offline, failing or pending")] = None,
    group: Annotated[str | None, Query(max_length=64)] = None,
    owner: Annotated[str | None, Query(max_length=255, description="admins: one account's devices")] = None,
    platform_id: Annotated[int | None, Query(ge=0, lt=2**31)] = None,
    product_version: Annotated[int | None, Query(ge=0, lt=2**31)] = None,
    system_version: Annotated[int | None, Query(ge=0, lt=2**31)] = None,
    seen_after: str | None = None,
    seen_before: str | None = None,
    sort: str = "id",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=0, le=500)] = 50,
) -> schemas.FleetPage:
    query = DeviceQuery(
        owner=owner.lower() if owner else None,
        text=q or None,
        status=_enum(DeviceStatus, status, "status"),
        group=group or None,
        platform_id=platform_id,
        product_version=product_version,
        system_version=system_version,
        seen_after=_time(seen_after, "seen_after"),
        seen_before=_time(seen_before, "seen_before"),
        sort=_enum(DeviceSort, sort, "sort") or DeviceSort.ID,
        descending=order == "desc",
        offset=offset,
        limit=limit,
    )
    page = await app(request).fleet.devices(actor, query)
    return schemas.FleetPage(
        total=page.total, offset=page.offset, limit=page.limit, devices=[_row(r) for r in page.rows]
    )


@router.get(
    "/v1/fleet/groups",
    tags=["fleet"],
    summary="Device groups and how many of your devices each holds",
    responses=errors(401),
)
async def fleet_groups(request: Request, actor: Caller) -> dict[str, int]:
    return await app(request).fleet.groups(actor)


_STREAM: dict[str, Any] = {"response_class": EventStream, "responses": stream_responses(401)}


@router.get(
    "/v1/fleet/events", tags=["events"], summary="Stream the events of every device you see (admins: all)", **_STREAM
)
@router.get("/v1/fleet/events/{prefix:path}", tags=["events"], summary="The same, by event name prefix", **_STREAM)
async def fleet_events(request: Request, actor: Caller, prefix: str = "") -> EventStream:
    return _stream(request, prefix, app(request).fleet.event_filter(actor))


# -- update jobs: pause, resume, cancel -------------------------------------------------------------


def _updates(request: Request) -> UpdateUseCases:
    updates = app(request).updates
    if updates is None:
        raise ApiError(400, "Not supported", "firmware updates are not available on this server")
    return updates


def _action(action: str) -> str:
    if action not in ("pause", "resume", "cancel"):
        raise ApiError(404, "Not Found", f"no action {action[:16]!r}: pause, resume or cancel")
    return action


@router.post(
    "/v1/updates/{job_id}/{action}",
    tags=["updates"],
    summary="Pause, resume or cancel an update job",
    responses=errors(401, 404, 409, *BODY_ERRORS),
    openapi_extra=request_body(schemas.NoParameters),
)
async def control_job(
    request: Request, actor: Caller, job_id: int, action: str
) -> schemas.JobControlled | schemas.NothingChanged:
    done = await _updates(request).control(actor, _action(action), job=job_id)
    if not done.changed:
        return schemas.NothingChanged(ok=False)
    return schemas.JobControlled(ok=True, **dict(render_job(done.changed[0])))


@router.post(
    "/v1/rollouts/{rollout}/{action}",
    tags=["updates"],
    summary="Pause, resume or cancel a rollout's jobs",
    responses=errors(401, 404, 409, *BODY_ERRORS),
    openapi_extra=request_body(schemas.NoParameters),
)
async def control_rollout(request: Request, actor: Caller, rollout: str, action: str) -> schemas.RolloutControlled:
    done = await _updates(request).control(actor, _action(action), rollout=rollout)
    return schemas.RolloutControlled(
        ok=True,
        changed=[render_job(j) for j in done.changed],
        skipped=[schemas.SkippedJob(id=job_id, why=why) for job_id, why in sorted(done.skipped.items())],
    )


# -- access tokens --------------------------------------------------------------------------------


def _token(token: AccessToken) -> schemas.TokenInfo:
    return schemas.TokenInfo(
        hash=token.token_hash,
        username=token.username,
        client=token.client_id,
        created_at=iso(token.created_at),
        expires_at=iso(token.expires_at),
    )


@router.get(
    "/v1/access_tokens",
    tags=["authentication"],
    summary="Your tokens (admins: ?username=), by hash",
    responses=errors(401, 404),
)
async def list_tokens(request: Request, actor: Caller, username: str | None = None) -> list[schemas.TokenInfo]:
    return [_token(t) for t in await app(request).accounts.tokens(actor, username)]


@router.post(
    "/v1/users/{username}/tokens",
    tags=["authentication"],
    summary="A token for an account (admins)",
    responses=errors(401, 404, *BODY_ERRORS),
    openapi_extra=request_body(schemas.TokenGrant),
)
async def create_token(request: Request, actor: Caller, username: str) -> schemas.TokenCreated:
    params = await body(request)
    raw = params.get("expires_in", 90 * 24 * 3600)
    if isinstance(raw, bool) or not isinstance(raw, int | str) or not str(raw).isdigit() or len(str(raw)) > 12:
        raise InvalidInputError("expires_in is a whole number of seconds (0: never)", "expires_in")
    issued = await app(request).accounts.create_token(actor, username, int(raw) or None)
    return schemas.TokenCreated(ok=True, access_token=issued.token, **dict(_token(issued.record)))


@router.delete(
    "/v1/users/{username}/tokens/{token_hash}",
    tags=["authentication"],
    summary="Revoke a token by hash",
    responses=errors(401, 404, *BODY_ERRORS),
)
async def revoke_token(request: Request, actor: Caller, username: str, token_hash: str) -> schemas.Ok:
    await app(request).accounts.revoke_by_hash(actor, username, token_hash)
    return schemas.Ok(ok=True)


@router.get(
    "/v1/keys/rekey",
    tags=["keys"],
    summary="Re-key windows of your devices (admins: all), with their expiry",
    responses=errors(401),
)
async def rekey_windows(request: Request, actor: Caller) -> list[schemas.RekeyWindowOf]:
    return [
        schemas.RekeyWindowOf(
            device_id=w.device_id,
            until=iso(w.until),
            armed_by=w.armed_by,
            armed_at=iso(w.armed_at),
            accepted_fingerprint=w.accepted_fingerprint,
            accepted_at=iso(w.accepted_at),
        )
        for w in await app(request).keys.windows(actor)
    ]


# -- the server key ------------------------------------------------------------------------------


@router.get(
    "/v1/server/key",
    tags=["keys"],
    summary="The server key devices must hold: fingerprint and key file",
    responses=errors(401),
)
async def server_key(request: Request, actor: Caller) -> schemas.ServerKey:
    path = context(request).server_key_file()
    return schemas.ServerKey(
        fingerprint=await app(request).server_key.expected(),
        key_file=path.name if path is not None else None,
        key_file_url="/v1/server/key/file" if path is not None else None,
    )


@router.get(
    "/v1/server/key/file",
    tags=["keys"],
    summary="The 512-byte key file (server key and address) for DFU",
    response_class=Response,
    responses={
        **errors(401, 404),
        200: {
            "description": "The key file, as particle keys server writes it",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
    },
)
async def server_key_file(request: Request, actor: Caller) -> Response:
    path = context(request).server_key_file()
    if path is None or not path.is_file():
        raise NotFoundError("the key file is written once the device port is open")
    return Response(
        path.read_bytes(),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{path.name}"'},
    )
