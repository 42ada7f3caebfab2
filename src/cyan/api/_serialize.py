"""Records in the Cloud API's JSON shapes (`schemas`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, overload

from cyan.app import DeviceView
from cyan.cloud.device_os import release_name
from cyan.cloud.models import AuditEntry, FirmwareRecord, KeyPolicy, PendingKey, UpdateJob, User
from cyan.protocol.binary import ModuleFunction, platform_name

from . import schemas

__all__ = [
    "iso",
    "render_account",
    "render_audit",
    "render_device",
    "render_device_detail",
    "render_firmware",
    "render_job",
    "render_pending",
    "render_policy",
]


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
@overload
def iso(moment: datetime | None) -> str | None: ...
def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_device(view: DeviceView) -> schemas.Device:
    return schemas.Device(**_device_fields(view))


def render_device_detail(view: DeviceView) -> schemas.DeviceDetail:
    record = view.record
    return schemas.DeviceDetail(
        **_device_fields(view),
        functions=list(record.functions),
        variables={v.name: v.type for v in record.variables},
        key_fingerprint=record.key_fingerprint,
    )


def _device_fields(view: DeviceView) -> dict[str, Any]:
    record = view.record
    online = view.online
    address = (record.last_address or "").rsplit(":", 1)[0] or None
    return {
        "id": record.id,
        "name": record.name,
        "last_app": None,
        "last_ip_address": address,
        "last_heard": iso(record.last_heard),
        "last_handshake_at": iso(record.last_handshake_at),
        "product_id": record.product_id if record.product_id is not None else record.platform_id,
        "online": online,
        "connected": online,
        "platform_id": record.platform_id,
        "cellular": False,
        "notes": record.notes,
        "status": "quarantined" if view.quarantined else "normal",
        "serial_number": None,
        "system_firmware_version": release_name(record.system_version),
        "current_build_target": None,
        "pinned_build_target": None,
        "default_build_target": None,
        "firmware_updates_enabled": True,
        "firmware_updates_forced": False,
        "owner": record.owner,
    }


def render_pending(pending: PendingKey) -> schemas.PendingKey:
    return schemas.PendingKey(
        device_id=pending.device_id,
        fingerprint=pending.fingerprint,
        registered_fingerprint=pending.stored_fingerprint,
        first_seen=iso(pending.first_seen),
        last_seen=iso(pending.last_seen),
        attempts=pending.attempts,
        peer_address=pending.peer_address,
    )


def render_audit(entry: AuditEntry) -> schemas.AuditRecord:
    return schemas.AuditRecord(
        at=iso(entry.at),
        device_id=entry.device_id,
        action=entry.action,
        actor=entry.actor,
        subject=entry.subject,
        old_fingerprint=entry.old_fingerprint,
        new_fingerprint=entry.new_fingerprint,
        detail=entry.detail,
    )


def render_policy(policy: KeyPolicy) -> schemas.Policy:
    return schemas.Policy(
        scope=policy.scope,
        mode=policy.mode,
        trust_on_first_use=policy.trust_on_first_use,
        self_registration=policy.self_registration,
        updated_by=policy.updated_by,
        updated_at=iso(policy.updated_at),
    )


def render_account(user: User) -> schemas.Account:
    return schemas.Account(username=user.username, role=user.role, created_at=iso(user.created_at))


def render_job(job: UpdateJob) -> schemas.Job:
    assert job.id is not None, "a job is stored before anyone sees it"
    total = job.total_bytes or 0
    return schemas.Job(
        id=job.id,
        device_id=job.device_id,
        firmware=job.firmware,
        rollout=job.rollout,
        state=job.state,
        mode=job.mode,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        bytes_sent=job.bytes_sent,
        total_bytes=total,
        progress=round(job.bytes_sent / total, 4) if total else 0.0,
        reason=job.reason,
        detail=job.detail,
        verification=job.verification,
        transfer_seconds=job.transfer_seconds,
        created_by=job.created_by,
        created_at=iso(job.created_at),
        started_at=iso(job.started_at),
        finished_at=iso(job.finished_at),
        updated_at=iso(job.updated_at),
    )


def render_firmware(record: FirmwareRecord) -> schemas.Firmware:
    return schemas.Firmware(
        sha256=record.sha256,
        size=record.size,
        platform_id=record.platform_id,
        platform=platform_name(record.platform_id),
        module_function=ModuleFunction(record.module_function).name.lower(),
        module_index=record.module_index,
        module_version=record.module_version,
        product_id=record.product_id,
        product_version=record.product_version,
        module_sha256=record.module_sha256,
        filename=record.filename,
        uploaded_by=record.uploaded_by,
        uploaded_at=iso(record.uploaded_at),
    )
