"""Device records in the Cloud API's JSON shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cyan.cloud.models import DeviceRecord
from cyan.cloud.service import Cloud

__all__ = ["device_json", "iso"]


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def device_json(record: DeviceRecord, cloud: Cloud, *, detail: bool) -> dict[str, Any]:
    online = cloud.online(record.id)
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
        "status": "quarantined" if cloud.quarantined(record.id) else "normal",
        "serial_number": None,
        "system_firmware_version": None,
        "current_build_target": None,
        "pinned_build_target": None,
        "default_build_target": None,
        "firmware_updates_enabled": True,
        "firmware_updates_forced": False,
    }
    if detail:
        body["functions"] = list(record.functions)
        body["variables"] = {v.name: v.type for v in record.variables}
        body["key_fingerprint"] = record.key_fingerprint
    return body
