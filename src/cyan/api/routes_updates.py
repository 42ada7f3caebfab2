"""Firmware updates: `PUT /v1/devices/:id` with a binary (what `particle flash` sends), firmware uploads,
rollouts and the state of every update job (protocol.md §7, `cyan.cloud.ota`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyan.cloud.models import AccessToken, DeviceRecord, FirmwareRecord, UpdateJob
from cyan.cloud.ota import FirmwareRejectedError, UpdateConflictError, UpdateManager, UpdateNotFoundError
from cyan.protocol.binary import ModuleFunction, platform_name

from ._requests import body, context, require_token
from ._serialize import iso
from .errors import ApiError

__all__ = ["flash", "router"]

router = APIRouter(tags=["updates"])
Token = Annotated[AccessToken, Depends(require_token)]


def _updates(request: Request) -> UpdateManager:
    updates = context(request).updates
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


def _rejected(exc: FirmwareRejectedError) -> ApiError:
    # The Particle CLI prints error_description for a 400 (src/cmd/api.js _checkToken).
    return ApiError(400, "Invalid firmware", str(exc), reason=exc.reason, info=str(exc))


async def _upload(request: Request, token: AccessToken) -> FirmwareRecord:
    """The binary of a multipart request's `file` part, checked and kept."""
    await body(request)
    files: dict[str, tuple[str, bytes]] = getattr(request.state, "files", {})
    if "file" not in files:
        raise ApiError(400, "invalid_request", "give the firmware binary as the multipart part `file`")
    filename, data = files["file"]
    try:
        return await _updates(request).library.add(data, filename, token.username)
    except FirmwareRejectedError as exc:
        raise _rejected(exc) from None


async def _start(
    request: Request,
    token: AccessToken,
    records: list[DeviceRecord],
    firmware: FirmwareRecord,
    *,
    mode: str = "auto",
    concurrency: int | None = None,
    max_attempts: int | None = None,
) -> list[UpdateJob]:
    try:
        return await _updates(request).create(
            [r.id for r in records],
            firmware,
            created_by=token.username,
            mode=mode,
            concurrency=concurrency,
            max_attempts=max_attempts,
        )
    except FirmwareRejectedError as exc:
        raise _rejected(exc) from None
    except UpdateConflictError as exc:
        raise ApiError(400, "Update in progress", str(exc)) from None
    except ValueError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None


async def flash(request: Request, token: AccessToken, record: DeviceRecord) -> dict[str, Any]:
    """`particle flash DEVICE app.bin`: PUT /v1/devices/:id, multipart `file` (plus `latest` or
    `build_target_version`, which do not apply to a binary). Answers as Particle does, with `status`, which
    the CLI requires; the update runs as a job (GET /v1/updates/:job)."""
    firmware = await _upload(request, token)
    (job,) = await _start(request, token, [record], firmware)
    online = context(request).cloud.online(record.id)
    return {
        "ok": True,
        "id": record.id,
        "status": "Update started" if online else "Update queued: the device is offline and updates when it connects",
        "job": job.id,
        "firmware": firmware.sha256,
    }


@router.post("/v1/firmware", summary="Upload a firmware binary (checked as a device would check it)")
async def upload_firmware(request: Request, token: Token) -> dict[str, Any]:
    return {"ok": True, **firmware_json(await _upload(request, token))}


async def _owned(request: Request, token: AccessToken, id_or_name: str) -> DeviceRecord:
    return await context(request).cloud.find_device(id_or_name, owner=token.username)


@router.post("/v1/updates", summary="Update devices: a list, all of yours, or a group")
async def create_updates(request: Request, token: Token) -> dict[str, Any]:
    params = await body(request)
    updates = _updates(request)
    sha = params.get("firmware")
    if not isinstance(sha, str):
        raise ApiError(400, "invalid_request", "give the firmware's sha256 (POST /v1/firmware) as firmware")
    try:
        firmware = await updates.library.get(sha)
    except UpdateNotFoundError as exc:
        raise ApiError(404, "Not Found", str(exc)) from None
    cloud = context(request).cloud
    wanted = params.get("devices")
    records: list[DeviceRecord] = []
    skipped: list[str] = []
    if params.get("all") is True:
        records = await cloud.store.list_devices(owner=token.username)
    elif isinstance(params.get("group"), str):
        for device_id in await updates.store.list_group(params["group"]):
            stored = await cloud.store.get_device(device_id)
            if stored is not None and stored.owner == token.username:
                records.append(stored)
            else:
                skipped.append(device_id)
    elif isinstance(wanted, list) and all(isinstance(d, str) for d in wanted):
        records = [await _owned(request, token, d) for d in wanted]
    else:
        raise ApiError(400, "invalid_request", "say which devices: devices (a list), all (true) or group (a name)")
    if not records:
        raise ApiError(400, "invalid_request", "no device of yours to update")
    concurrency = params.get("concurrency")
    attempts = params.get("max_attempts")
    jobs = await _start(
        request,
        token,
        records,
        firmware,
        mode=str(params.get("mode", "auto")),
        concurrency=concurrency if isinstance(concurrency, int) else None,
        max_attempts=attempts if isinstance(attempts, int) else None,
    )
    return {"ok": True, "rollout": jobs[0].rollout, "jobs": [job_json(j) for j in jobs], "skipped": skipped}


@router.get("/v1/updates", summary="Update jobs: of a rollout, or your latest")
async def list_updates(request: Request, token: Token, rollout: str | None = None, limit: int = 100) -> Any:
    updates = _updates(request)
    jobs = await updates.list(rollout=rollout, limit=max(1, min(limit, 10_000)))
    owned = {r.id for r in await context(request).cloud.store.list_devices(owner=token.username)}
    return [job_json(job) for job in jobs if job.device_id in owned]


@router.get("/v1/updates/{job_id}", summary="One update job: its state, progress and outcome")
async def get_update(request: Request, token: Token, job_id: int) -> dict[str, Any]:
    try:
        job = await _updates(request).get(job_id)
    except UpdateNotFoundError as exc:
        raise ApiError(404, "Not Found", str(exc)) from None
    record = await context(request).cloud.store.get_device(job.device_id)
    if record is None or record.owner != token.username:
        raise ApiError(404, "Not Found", f"no update job {job_id} of yours")
    return job_json(job)


@router.get("/v1/devices/{device}/updates", summary="A device's update jobs, newest first")
async def device_updates(request: Request, token: Token, device: str) -> list[dict[str, Any]]:
    record = await _owned(request, token, device)  # not yours: 403, as for every device route
    return [job_json(job) for job in await _updates(request).list(device_id=record.id)]
