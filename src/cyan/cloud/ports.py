"""The interfaces the cloud domain needs from storage and the event bus (design.md §1).

`cyan.store` and `cyan.bus` implement them; the domain never imports a database or a broker.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from .models import (
    AccessToken,
    ConnectionAttempt,
    DeviceRecord,
    FirmwareRecord,
    KeyAuditEntry,
    KeyPolicy,
    PendingKey,
    RekeyWindow,
    UpdateJob,
    User,
)

__all__ = ["DeviceExistsError", "Store", "StoreUnavailableError", "UpdateStore", "UserExistsError"]


class StoreUnavailableError(RuntimeError):
    """The database cannot be reached or written; the message says what failed."""


class DeviceExistsError(ValueError):
    """A device with this id (or name) is already registered."""


class UserExistsError(ValueError):
    """A user with this username already exists."""


class Store(Protocol):
    """Persistent state of the cloud. Every method raises `StoreUnavailableError` when the database fails."""

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""

    async def close(self) -> None: ...

    # -- devices --------------------------------------------------------------------------------

    async def get_device(self, device_id: str) -> DeviceRecord | None: ...

    async def find_device(self, id_or_name: str) -> DeviceRecord | None:
        """By id (case-insensitive) or, failing that, by exact name."""

    async def list_devices(self, owner: str | None = None) -> list[DeviceRecord]:
        """All devices, or one owner's, ordered by id."""

    async def add_device(self, device: DeviceRecord) -> None:
        """Raises `DeviceExistsError` for a taken id or name."""

    async def save_device(self, device: DeviceRecord) -> None:
        """Insert or replace every field of the device (raises `DeviceExistsError` for a taken name)."""

    async def update_device_state(self, device: DeviceRecord) -> bool:
        """Write only what a connection learns (online, last heard and address, Hello and Describe
        fields), never the name, owner or key, so a queued session update cannot undo a rename, a claim
        or a key change made meanwhile. False if the device is not registered."""

    async def update_device_states(self, devices: list[DeviceRecord]) -> None:
        """`update_device_state` for many devices in one transaction (unregistered ones are skipped)."""

    async def remove_device(self, device_id: str) -> bool:
        """True if it existed."""

    async def mark_all_offline(self) -> None:
        """At start-up: no device is connected to a process that just started."""

    # -- connection attempts --------------------------------------------------------------------

    async def record_attempt(self, attempt: ConnectionAttempt) -> int:
        """Store the attempt, return its id."""

    async def record_attempts(self, attempts: list[ConnectionAttempt]) -> None:
        """Store many attempts in one transaction."""

    async def list_attempts(
        self,
        device_id: str | None = None,
        *,
        since: datetime | None = None,
        peer_address: str | None = None,
        limit: int = 100,
    ) -> list[ConnectionAttempt]:
        """Newest first. `device_id` None means all attempts, identified or not."""

    # -- users and access tokens ------------------------------------------------------------------

    async def add_user(self, user: User) -> None:
        """Raises `UserExistsError` for a taken username (compared case-insensitively)."""

    async def get_user(self, username: str) -> User | None:
        """Case-insensitive lookup."""

    async def list_users(self) -> list[User]:
        """Ordered by username."""

    async def remove_user(self, username: str) -> bool:
        """Remove the user and all their tokens, and release their devices (owner becomes None)."""

    async def add_token(self, token: AccessToken) -> None: ...

    async def get_token(self, token_hash: str) -> AccessToken | None: ...

    async def list_tokens(self, username: str) -> list[AccessToken]:
        """Newest first."""

    async def remove_token(self, token_hash: str) -> bool:
        """True if it existed."""

    async def remove_expired_tokens(self, now: datetime) -> int:
        """Delete tokens whose `expires_at` is at or before `now`; how many."""

    # -- key policy (protocol.md §12.3) -----------------------------------------------------------

    async def get_policy(self, scope: str) -> KeyPolicy | None:
        """The policy of a device id, or of the fleet for scope "*"; None when none was set."""

    async def set_policy(self, policy: KeyPolicy) -> None: ...

    async def remove_policy(self, scope: str) -> bool: ...

    async def list_policies(self) -> list[KeyPolicy]: ...

    async def arm_rekey(self, window: RekeyWindow) -> None:
        """Arm (or re-arm) the window of one device."""

    async def get_rekey(self, device_id: str) -> RekeyWindow | None: ...

    async def remove_rekey(self, device_id: str) -> bool: ...

    async def list_rekeys(self) -> list[RekeyWindow]: ...

    async def save_pending_key(self, pending: PendingKey) -> None:
        """Insert or replace the device's pending key."""

    async def get_pending_key(self, device_id: str) -> PendingKey | None: ...

    async def remove_pending_key(self, device_id: str) -> bool: ...

    async def list_pending_keys(self) -> list[PendingKey]:
        """Oldest first."""

    async def add_audit(self, entry: KeyAuditEntry) -> int: ...

    async def list_audit(self, device_id: str | None = None, *, limit: int = 100) -> list[KeyAuditEntry]:
        """Newest first."""


class UpdateStore(Protocol):
    """Firmware metadata, update jobs and device groups (protocol.md §7). The binaries themselves are
    files, kept by `cyan.store.FirmwareFiles`. Methods raise `StoreUnavailableError` as `Store`'s do."""

    async def save_firmware(self, firmware: FirmwareRecord) -> None:
        """Insert the record unless one with the same SHA-256 exists (the same bytes, the same record)."""

    async def get_firmware(self, sha256: str) -> FirmwareRecord | None: ...

    async def add_job(self, job: UpdateJob) -> int:
        """Store a new job and return its id (also set on `job`)."""

    async def save_job(self, job: UpdateJob) -> None:
        """Write every field of an existing job."""

    async def get_job(self, job_id: int) -> UpdateJob | None: ...

    async def list_jobs(
        self,
        *,
        device_id: str | None = None,
        rollout: str | None = None,
        unfinished: bool = False,
        limit: int = 100,
    ) -> list[UpdateJob]:
        """Newest first; `unfinished` keeps the queued, sending and waiting ones."""

    async def add_to_group(self, group: str, device_ids: list[str]) -> int:
        """Add devices to a group (created on first use); how many were not in it yet."""

    async def remove_from_group(self, group: str, device_ids: list[str]) -> int:
        """How many were removed."""

    async def list_group(self, group: str) -> list[str]:
        """The group's device ids, sorted."""

    async def list_groups(self) -> dict[str, int]:
        """Group names and their sizes."""
