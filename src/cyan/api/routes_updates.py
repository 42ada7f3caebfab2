"""Firmware updates: `PUT /v1/devices/:id` with a binary (what `particle flash` sends), firmware uploads,
rollouts and the state of every update job (protocol.md §7, `cyan.cloud.ota`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyan.app import Actor, DeviceView, UpdateUseCases
from cyan.cloud.errors import InvalidInputError
from cyan.cloud.models import FirmwareRecord, UpdateJob
from cyan.protocol.binary import ModuleFunction, platform_name

from ._requests import app, body, require_actor
from ._serialize import iso
from .errors import ApiError

__all__ = ["flash", "router"]

router = APIRouter(tags=["updates"])
Caller = Annotated[Actor, Depends(require_actor)]


def _updates(request: Request) -> UpdateUseCases:
    updates = app(request).updates
    if updates is None:
        raise ApiError(400, "Not supported", "firmware updates are not available on this server")
    return updates


def job_json(job: UpdateJob) -> dict[str, Any]:
    total = job.total_bytes or 0
    return {
        "id": job.id,
        "device_id": job.device_id,
        "firmware": job.firmware,
        "rollout": job.rollout,
        "state": job.state.value,
        "mode": job.mode,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "bytes_sent": job.bytes_sent,
        "total_bytes": total,
        "progress": round(job.bytes_sent / total, 4) if total else 0.0,
        "reason": job.reason,
        "detail": job.detail,
        "verification": job.verification,
        "transfer_seconds": job.transfer_seconds,
        "created_by": job.created_by,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "updated_at": iso(job.updated_at),
    }


def firmware_json(record: FirmwareRecord) -> dict[str, Any]:
    return {
        "sha256": record.sha256,
        "size": record.size,
        "platform_id": record.platform_id,
        "platform": platform_name(record.platform_id),
        "module_function": ModuleFunction(record.module_function).name.lower(),
        "module_index": record.module_index,
        "module_version": record.module_version,
        "product_id": record.product_id,
        "product_version": record.product_version,
        "module_sha256": record.module_sha256,
        "filename": record.filename,
        "uploaded_by": record.uploaded_by,
        "uploaded_at": iso(record.uploaded_at),
    }


async def _upload(request: Request, actor: Actor) -> FirmwareRecord:
    """The binary of a multipart request's `file` part, checked and kept."""
    await body(request)  # reads the multipart parts into request.state
    files: dict[str, tuple[str, bytes]] = getattr(request.state, "files", {})
    if "file" not in files:
        raise ApiError(400, "invalid_request", "give the firmware binary as the multipart part `file`")
    filename, data = files["file"]
    return await _updates(request).upload(actor, data, filename)


async def flash(request: Request, actor: Actor, view: DeviceView) -> dict[str, Any]:
    """`particle flash DEVICE app.bin`: PUT /v1/devices/:id, multipart `file` (plus `latest` or
    `build_target_version`, which do not apply to a binary). Answers as Particle does, with `status`, which
    the CLI requires; the update runs as a job (GET /v1/updates/:job). An offline device is refused, as
    Particle's cloud refuses it, unless the form says `queue=true`: then its update waits for its connection."""
    firmware = await _upload(request, actor)
    queue = _flag(await body(request), "queue")
    (job,) = await _updates(request).flash(actor, [view.record], firmware, queue_if_offline=queue)
    online = await app(request).context.sessions.connected(view.record.id)
    return {
        "ok": True,
        "id": view.record.id,
        "status": "Update started" if online else "Update queued: the device is offline and updates when it connects",
        "job": job.id,
        "firmware": firmware.sha256,
    }


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


@router.post("/v1/firmware", summary="Upload a firmware binary (checked as a device would check it)")
async def upload_firmware(request: Request, actor: Caller) -> dict[str, Any]:
    return {"ok": True, **firmware_json(await _upload(request, actor))}


def _whole(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} is a whole number", name)
    return value


@router.post("/v1/updates", summary="Update devices: a list, all of yours, or a group")
async def create_updates(request: Request, actor: Caller) -> dict[str, Any]:
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
    return {"ok": True, "rollout": jobs[0].rollout, "jobs": [job_json(j) for j in jobs], "skipped": []}


@router.get("/v1/updates", summary="Update jobs: of a rollout, or your latest")
async def list_updates(request: Request, actor: Caller, rollout: str | None = None, limit: int = 100) -> Any:
    jobs = await _updates(request).jobs(actor, rollout=rollout, limit=max(1, min(limit, 10_000)))
    return [job_json(job) for job in jobs]


@router.get("/v1/updates/{job_id}", summary="One update job: its state, progress and outcome")
async def get_update(request: Request, actor: Caller, job_id: int) -> dict[str, Any]:
    return job_json(await _updates(request).job(actor, job_id))


@router.get("/v1/devices/{device}/updates", summary="A device's update jobs, newest first")
async def device_updates(request: Request, actor: Caller, device: str) -> list[dict[str, Any]]:
    return [job_json(job) for job in await _updates(request).jobs(actor, device=device)]
