"""What every use case works with, and the checks they share."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cyan.cloud.alerts import Alert, AlertSink, LoggingAlerts
from cyan.cloud.errors import DeviceNotFoundError, InvalidInputError
from cyan.cloud.models import FLEET, AuditEntry, DeviceRecord, KeyPolicy, KeyPolicyMode
from cyan.cloud.ports import KeyRepository, Repositories, Sessions, Store

from .actors import Actor

__all__ = [
    "DEVICE_ID",
    "AppContext",
    "check_device_id",
    "effective_policy",
    "fleet_policy",
    "hash_secret",
    "use_claim_code",
    "visible_device",
    "visible_records",
]

DEVICE_ID = re.compile(r"[0-9a-fA-F]{24}")
#: Device names: what Particle accepts, and nothing that could break a path, a log line or a stream.
DEVICE_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class AppContext:
    store: Store
    sessions: Sessions
    alerts: AlertSink = field(default_factory=LoggingAlerts)
    clock: Callable[[], datetime] = _utc_now
    #: For durations and rate limits: a clock that only moves forward.
    ticks: Callable[[], float] = time.monotonic

    def alert(self, entry: AuditEntry, kind: str, summary: str) -> None:
        """Tell the owner and the operators (after the change committed)."""
        self.alerts.send(
            Alert(
                kind,
                entry.device_id,
                entry.at,
                summary,
                {
                    "action": entry.action,
                    "actor": entry.actor,
                    "old_fingerprint": entry.old_fingerprint,
                    "new_fingerprint": entry.new_fingerprint,
                    "detail": entry.detail,
                },
            )
        )


def check_device_id(text: str, field: str = "id") -> str:
    """A device id exactly: 24 hex digits (no trailing newline), lowercased."""
    if not isinstance(text, str) or not DEVICE_ID.fullmatch(text):
        raise InvalidInputError(f"{text!r} is not a device id: 24 hexadecimal digits", field)
    return text.lower()


def check_device_name(text: str, field: str = "name") -> str:
    if not isinstance(text, str) or not DEVICE_NAME.fullmatch(text):
        raise InvalidInputError("a device name is 1 to 63 letters, digits, '_' or '-'", field)
    return text


#: What a device's notes may hold: a page of text, not a document store.
NOTES_LIMIT = 1000


def check_notes(text: str, field: str = "notes") -> str:
    if not isinstance(text, str):
        raise InvalidInputError("notes are text", field)
    if len(text) > NOTES_LIMIT:
        raise InvalidInputError(f"notes are at most {NOTES_LIMIT} characters (got {len(text)})", field)
    # Line breaks and tabs are text; other control characters would corrupt a terminal or a log.
    if any((ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 for c in text):
        raise InvalidInputError("notes hold no control characters but line breaks and tabs", field)
    if any(0xD800 <= ord(c) < 0xE000 for c in text):
        raise InvalidInputError("notes must be valid Unicode text", field)
    return text


async def visible_device(repos: Repositories, actor: Actor, id_or_name: str) -> DeviceRecord:
    """The device by id or name if the actor may see it; otherwise the same `DeviceNotFoundError` as for a
    device that does not exist."""
    if not isinstance(id_or_name, str) or not id_or_name or len(id_or_name) > 255:
        raise DeviceNotFoundError(str(id_or_name)[:64])
    # An account names only its own devices: another account's names are not looked at, let alone told.
    record = await repos.devices.find(id_or_name, owner=None if actor.is_admin else actor.username or "")
    if record is None or not actor.sees(record):
        raise DeviceNotFoundError(id_or_name)
    return record


async def visible_records(repos: Repositories, actor: Actor, device_ids: list[str]) -> list[DeviceRecord]:
    """The registered devices among `device_ids` that the actor may see, in that order: what lists of others'
    things (pending keys, windows, group members) are filtered by, so that no other account's id is named."""
    found = []
    for device_id in dict.fromkeys(device_ids):
        record = await repos.devices.get(device_id)
        if record is not None and actor.sees(record):
            found.append(record)
    return found


async def fleet_policy(keys: KeyRepository) -> KeyPolicy:
    return await keys.get_policy(FLEET) or KeyPolicy(FLEET, KeyPolicyMode.STRICT, False, None, "default")


async def effective_policy(keys: KeyRepository, device_id: str) -> KeyPolicy:
    """The device's own policy, else the fleet's, else strict without trust on first use."""
    return await keys.get_policy(device_id) or await fleet_policy(keys)


async def use_claim_code(tx: Repositories, code: str, device_id: str, now: datetime) -> bool:
    """Consume a claim code issued for this device, inside the caller's transaction: a claim that fails
    afterwards rolls the consumption back. False for any other code (or none), which stays unused."""
    if not isinstance(code, str) or not 8 <= len(code) <= 128:
        return False
    found = await tx.keys.take_claim_code(hash_secret(code))
    if found is None:
        return False
    if found.device_id != device_id or found.expires_at <= now:
        await tx.keys.add_claim_code(found)  # not this device's: put it back
        return False
    return True


def hash_secret(secret: str) -> str:
    """SHA-256 of a random secret (a token, a claim code): what is stored instead of the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()
