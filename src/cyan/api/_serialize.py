"""Records in the Cloud API's JSON shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cyan.app import DeviceView
from cyan.cloud.models import AuditEntry, PendingKey

__all__ = ["audit_json", "device_json", "iso", "pending_json"]


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def device_json(view: DeviceView, *, detail: bool) -> dict[str, Any]:
    record = view.record
    online = view.online
    address = (record.last_address or "").rsplit(":", 1)[0] or None
    body: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "last_app": None,
        "last_ip_address": address,
        "last_heard": iso(record.last_heard),
        "last_handshake_at": iso(record.last_heard) if online else None,
        "product_id": record.product_id if record.product_id is not None else record.platform_id,
        "online": online,
        "connected": online,
        "platform_id": record.platform_id,
        "cellular": False,
        "notes": None,
        "status": "quarantined" if view.quarantined else "normal",
        "serial_number": None,
        "system_firmware_version": None,
        "current_build_target": None,
        "pinned_build_target": None,
        "default_build_target": None,
        "firmware_updates_enabled": True,
        "firmware_updates_forced": False,
        "owner": record.owner,
    }
    if detail:
        body["functions"] = list(record.functions)
        body["variables"] = {v.name: v.type for v in record.variables}
        body["key_fingerprint"] = record.key_fingerprint
    return body


def pending_json(pending: PendingKey) -> dict[str, Any]:
    return {
        "device_id": pending.device_id,
        "fingerprint": pending.fingerprint,
        "registered_fingerprint": pending.stored_fingerprint,
        "first_seen": iso(pending.first_seen),
        "last_seen": iso(pending.last_seen),
        "attempts": pending.attempts,
        "peer_address": pending.peer_address,
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": iso(entry.at),
        "device_id": entry.device_id,
        "action": entry.action,
        "actor": entry.actor,
        "subject": entry.subject,
        "old_fingerprint": entry.old_fingerprint,
        "new_fingerprint": entry.new_fingerprint,
        "detail": entry.detail,
    }
