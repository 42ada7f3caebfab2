"""Firmware updates: `PUT /v1/devices/:id` with a binary (what `particle flash` sends), firmware uploads,
rollouts and the state of every update job (protocol.md §7, `cyan.cloud.ota`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from cyan.app import Actor, DeviceView, UpdateUseCases
from cyan.cloud.errors import InvalidInputError
from cyan.cloud.models import FirmwareRecord

from . import schemas
from ._requests import app, body, require_actor
from ._routing import IndexedRouter
from ._serialize import render_firmware, render_job
from .errors import ApiError
from .schemas import BODY_ERRORS, errors, request_body

__all__ = ["flash", "router"]

router = IndexedRouter(tags=["updates"])
Caller = Annotated[Actor, Depends(require_actor)]


def _updates(request: Request) -> UpdateUseCases:
    updates = app(request).updates
    if updates is None:
        raise ApiError(400, "Not supported", "firmware updates are not available on this server")
    return updates


async def _upload(request: Request, actor: Actor) -> FirmwareRecord:
    """The binary of a multipart request's `file` part, checked and kept."""
    await body(request)  # reads the multipart parts into request.state
    files: dict[str, tuple[str, bytes]] = getattr(request.state, "files", {})
    if "file" not in files:
        raise ApiError(400, "invalid_request", "give the firmware binary as the multipart part `file`")
    filename, data = files["file"]
    return await _updates(request).upload(actor, data, filename)


async def flash(request: Request, actor: Actor, view: DeviceView) -> schemas.Flashed:
    """`particle flash DEVICE app.bin`: PUT /v1/devices/:id, multipart `file` (plus `latest` or
    `build_target_version`, which do not apply to a binary). Answers as Particle does, with `status`, which
    the CLI requires; the update runs as a job (GET /v1/updates/:job). An offline device is refused, as
    Particle's cloud refuses it, unless the form says `queue=true`: then its update waits for its connection."""
    firmware = await _upload(request, actor)
    queue = _flag(await body(request), "queue")
    (job,) = await _updates(request).flash(actor, [view.record], firmware, queue_if_offline=queue)
    online = await app(request).context.sessions.connected(view.record.id)
    assert job.id is not None, "jobs are stored before they start"
    return schemas.Flashed(
        ok=True,
        id=view.record.id,
        status="Update started" if online else "Update queued: the device is offline and updates when it connects",
        job=job.id,
        firmware=firmware.sha256,
    )


def _flag(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise InvalidInputError(f"{name} is true or false", name)


@router.post(
    "/v1/firmware",
    summary="Upload a firmware binary (checked as a device would check it)",
    responses=errors(401, *BODY_ERRORS),
    openapi_extra=request_body(multipart=schemas.FirmwareFile, required=True),
)
async def upload_firmware(request: Request, actor: Caller) -> schemas.FirmwareUploaded:
    return schemas.FirmwareUploaded(ok=True, **dict(render_firmware(await _upload(request, actor))))


def _whole(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} is a whole number", name)
    return value


@router.post(
    "/v1/updates",
    summary="Update devices: a list, all of yours, or a group",
    responses=errors(401, 404, 409, *BODY_ERRORS),
    # JSON only: a list of devices and `all: true` have no form encoding.
    openapi_extra=request_body(schemas.UpdateRequest, forms=False, required=True),
)
async def create_updates(request: Request, actor: Caller) -> schemas.Rollout:
    params = await body(request)
    updates = _updates(request)
    sha = params.get("firmware")
    if not isinstance(sha, str):
        raise ApiError(400, "invalid_request", "give the firmware's sha256 (POST /v1/firmware) as firmware")
    firmware = await updates.firmware(actor, sha)
    wanted = params.get("devices")
    group = params.get("group")
    if params.get("all") is True:
        records = await updates.targets(actor, everything=True)
    elif isinstance(group, str):
        records = await updates.targets(actor, group=group)
    elif isinstance(wanted, list) and all(isinstance(d, str) for d in wanted):
        records = await updates.targets(actor, devices=wanted)
    else:
        raise ApiError(400, "invalid_request", "say which devices: devices (a list), all (true) or group (a name)")
    jobs = await updates.flash(
        actor,
        records,
        firmware,
        mode=str(params.get("mode", "auto")),
        concurrency=_whole(params, "concurrency"),
        max_attempts=_whole(params, "max_attempts"),
    )
    return schemas.Rollout(ok=True, rollout=jobs[0].rollout, jobs=[render_job(j) for j in jobs], skipped=[])


@router.get("/v1/updates", summary="Update jobs: of a rollout, or your latest", responses=errors(400, 401))
async def list_updates(
    request: Request, actor: Caller, rollout: str | None = None, limit: int = 100
) -> list[schemas.Job]:
    jobs = await _updates(request).jobs(actor, rollout=rollout, limit=max(1, min(limit, 10_000)))
    return [render_job(job) for job in jobs]


@router.get(
    "/v1/updates/{job_id}",
    summary="One update job: its state, progress and outcome",
    responses=errors(400, 401, 404),
)
async def get_update(request: Request, actor: Caller, job_id: int) -> schemas.Job:
    return render_job(await _updates(request).job(actor, job_id))


@router.get(
    "/v1/devices/{device}/updates", summary="A device's update jobs, newest first", responses=errors(400, 401, 404)
)
async def device_updates(request: Request, actor: Caller, device: str) -> list[schemas.Job]:
    return [render_job(job) for job in await _updates(request).jobs(actor, device=device)]
