"""Device keys: provisioning, pending keys (approve or reject by fingerprint), re-key windows and key policies.

The only code that changes a device's key on someone's request. What the key policy decides on its own
when a device connects is in `cyan.app.handshake`. docs/keys.md states the rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cyan.cloud.errors import (
    ConflictError,
    DeviceNotFoundError,
    InvalidInputError,
    PendingKeyChangedError,
    PermissionDeniedError,
)
from cyan.cloud.models import (
    FLEET,
    AuditEntry,
    ConnectionAttempt,
    DeviceRecord,
    KeyPolicy,
    KeyPolicyMode,
    PendingKey,
    RekeyWindow,
)

from ._context import (
    AppContext,
    check_device_id,
    effective_policy,
    fleet_policy,
    use_claim_code,
    visible_device,
    visible_records,
)
from .actors import Actor
from .devices import checked_device_key

__all__ = ["KeyStatus", "KeyUseCases", "Provisioned", "UnprovenSummary", "match_fingerprint"]

#: The longest re-key window: a device that lost its key reconnects within minutes, or never.
MAX_WINDOW = timedelta(days=30)
_FINGERPRINT = re.compile(r"(?:sha256:)?([0-9a-f]{16,64})")
#: The shortest fingerprint prefix accepted when approving: 64 bits, far beyond what anyone can match by
#: generating keys, and what `cyan policy pending` shows.
_MIN_PREFIX = 16
#: How far back the key status counts the attempts that claimed the device's id without proving it.
UNPROVEN_PERIOD = timedelta(hours=24)
_UNPROVEN_LIMIT = 2000


def match_fingerprint(device_id: str, named: str, pending: list[PendingKey]) -> PendingKey:
    """The pending key the owner named: its full fingerprint, or an unambiguous prefix of at least 16 hex
    digits, with or without "SHA256:". `PendingKeyChangedError` when none (or several) match."""
    found = _FINGERPRINT.fullmatch(named.strip().lower()) if isinstance(named, str) else None
    if found is None or len(found.group(1)) < _MIN_PREFIX:
        raise InvalidInputError(
            "give the pending key's fingerprint (SHA256: and at least its first 16 hex digits)", "fingerprint"
        )
    wanted = "sha256:" + found.group(1)
    matches = [p for p in pending if p.fingerprint.lower().startswith(wanted)]
    if len(matches) != 1:
        raise PendingKeyChangedError(device_id, named.strip(), [p.fingerprint for p in pending])
    return matches[0]


@dataclass(frozen=True, slots=True)
class Provisioned:
    record: DeviceRecord
    #: The device was registered now (it did not exist before).
    created: bool
    old_fingerprint: str | None


@dataclass(frozen=True, slots=True)
class UnprovenSummary:
    """Attempts in the period that claimed the device's id without proving it (docs/keys.md)."""

    count: int
    first: datetime | None
    last: datetime | None
    #: Presented key fingerprint -> attempts.
    keys: dict[str, int]
    addresses: list[str]


@dataclass(frozen=True, slots=True)
class KeyStatus:
    record: DeviceRecord
    policy: KeyPolicy
    pending: list[PendingKey]
    window: RekeyWindow | None
    quarantined: bool
    audit: list[AuditEntry]
    unproven: UnprovenSummary
    connected: bool = False
    notes: list[str] = field(default_factory=list)


class KeyUseCases:
    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    # -- provisioning (particle keys send, keys doctor, cyan keys provision) -----------------------

    async def provision(
        self,
        actor: Actor,
        device_id: str,
        public_key_der: bytes,
        *,
        product_id: int | None = None,
        claim_code: str | None = None,
        name: str | None = None,
    ) -> Provisioned:
        """Register a device's public key, or replace it.

        A device the cloud has never seen: an admin registers it (an account doing so owns it), or any
        account where the fleet's self-registration is on. A device of the actor's (or any, for an admin):
        its key is replaced. An ownerless device: an admin, or the holder of a claim code issued for it
        (who then owns it). Anyone else gets the same `DeviceNotFoundError` as for a device that does not
        exist."""
        device_id = check_device_id(device_id, "deviceID")
        der, new = checked_device_key(public_key_der)
        if product_id is not None and not 0 <= product_id < 2**31:
            raise InvalidInputError("product_id is a whole number from 0 to 2147483647", "product_id")
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await tx.devices.get(device_id)
            if record is None:
                policy = await fleet_policy(tx.keys)
                if not (actor.is_admin or (policy.self_registration and actor.username)):
                    raise DeviceNotFoundError(device_id)
                record = DeviceRecord(
                    id=device_id,
                    name=name,
                    owner=actor.username,
                    public_key_der=der,
                    key_fingerprint=new,
                    product_id=product_id,
                    created_at=now,
                )
                await tx.devices.add(record)
                how = "by an admin" if actor.is_admin else "self-registration"
                await tx.audit.add(AuditEntry(now, device_id, "registered", actor.name, None, new, how, record.owner))
                return Provisioned(record, True, None)
            claimed = None
            if not actor.sees(record):
                if record.owner is None and claim_code and await use_claim_code(tx, claim_code, device_id, now):
                    claimed = record.owner = actor.username
                else:
                    raise DeviceNotFoundError(device_id)
            old = record.key_fingerprint
            record.public_key_der, record.key_fingerprint = der, new
            if product_id is not None:
                record.product_id = product_id
            await tx.devices.save(record)
            await tx.keys.remove_pending_key(device_id, new)
            dropped_window = await tx.keys.remove_rekey(device_id)
            detail = "the re-key window is closed" if dropped_window else None
            if claimed:
                await tx.audit.add(
                    AuditEntry(now, device_id, "claimed", actor.name, detail="with a claim code", subject=claimed)
                )
            await tx.audit.add(AuditEntry(now, device_id, "provisioned", actor.name, old, new, detail))
        if old != new:
            await self._ctx.sessions.close_sessions(device_id)
        if claimed:
            await self._ctx.sessions.owner_changed(device_id, claimed)
        return Provisioned(record, False, old)

    # -- pending keys -----------------------------------------------------------------------------

    async def approve(self, actor: Actor, device: str, fingerprint: str) -> DeviceRecord:
        """Make the pending key the owner named (by fingerprint) the device's registered key. When the pending
        key changed since the owner looked, nothing is approved (`PendingKeyChangedError`, with both)."""
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await visible_device(tx, actor, device)
            chosen = match_fingerprint(record.id, fingerprint, await tx.keys.list_pending_keys(record.id))
            old = record.key_fingerprint
            record.public_key_der, record.key_fingerprint = chosen.public_key_der, chosen.fingerprint
            await tx.devices.save(record)
            await tx.keys.remove_pending_key(record.id, chosen.fingerprint)
            await tx.keys.remove_rekey(record.id)
            entry = AuditEntry(now, record.id, "approved", actor.name, old, chosen.fingerprint)
            await tx.audit.add(entry)
        self._ctx.alert(entry, "key_change", f"device {record.id}: key {chosen.fingerprint} approved by {actor.name}")
        await self._ctx.sessions.key_approved(record.id, chosen.fingerprint)
        return record

    async def reject(self, actor: Actor, device: str, fingerprint: str) -> PendingKey:
        """Forget the pending key the owner named; a quarantined session with it is closed."""
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await visible_device(tx, actor, device)
            chosen = match_fingerprint(record.id, fingerprint, await tx.keys.list_pending_keys(record.id))
            await tx.keys.remove_pending_key(record.id, chosen.fingerprint)
            await tx.audit.add(
                AuditEntry(now, record.id, "rejected", actor.name, record.key_fingerprint, chosen.fingerprint)
            )
        await self._ctx.sessions.key_rejected(record.id, chosen.fingerprint)
        return chosen

    async def pending(self, actor: Actor) -> list[PendingKey]:
        """Every pending key of the devices the actor sees, oldest first."""
        store = self._ctx.store
        pending = await store.keys.list_pending_keys()
        seen = {r.id for r in await visible_records(store, actor, [p.device_id for p in pending])}
        return [p for p in pending if p.device_id in seen]

    # -- re-key windows ---------------------------------------------------------------------------

    async def arm_rekey(self, actor: Actor, device: str, seconds: float) -> RekeyWindow:
        """For a device that lost its key: accept the one new key it presents before the window ends
        (docs/keys.md "Re-key windows")."""
        if not isinstance(seconds, int | float) or not 1 <= seconds <= MAX_WINDOW.total_seconds():
            raise InvalidInputError(f"seconds: a re-key window lasts 1 s to {MAX_WINDOW.days} days", "seconds")
        now = self._ctx.clock()
        record = await visible_device(self._ctx.store, actor, device)
        if await self._ctx.sessions.connected(record.id):
            raise ConflictError(
                f"device {record.id} is connected with its registered key right now: it has not lost its key, so "
                "there is nothing to re-key (a new key presented while it is connected is refused)"
            )
        async with self._ctx.store.transaction() as tx:
            record = await visible_device(tx, actor, device)
            if record.public_key_der is None:
                raise ConflictError(f"device {record.id} has no registered key: register its key instead")
            window = RekeyWindow(record.id, now + timedelta(seconds=seconds), actor.name, now)
            await tx.keys.save_rekey(window)
            await tx.audit.add(
                AuditEntry(
                    now,
                    record.id,
                    "rekey_armed",
                    actor.name,
                    record.key_fingerprint,
                    None,
                    f"until {window.until.isoformat()}",
                )
            )
        return window

    async def disarm_rekey(self, actor: Actor, device: str) -> bool:
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await visible_device(tx, actor, device)
            removed = await tx.keys.remove_rekey(record.id)
            if removed:
                await tx.audit.add(AuditEntry(now, record.id, "rekey_disarmed", actor.name, record.key_fingerprint))
        return removed

    async def windows(self, actor: Actor) -> list[RekeyWindow]:
        store = self._ctx.store
        windows = await store.keys.list_rekeys()
        seen = {r.id for r in await visible_records(store, actor, [w.device_id for w in windows])}
        return [w for w in windows if w.device_id in seen]

    # -- policies ---------------------------------------------------------------------------------

    async def set_device_policy(self, actor: Actor, device: str, mode: KeyPolicyMode | str) -> KeyPolicy:
        """The policy of one device (its owner, or an admin). The device must exist: a name or a mistyped id
        is an error, never a policy that applies to nothing."""
        mode = _mode(mode)
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await visible_device(tx, actor, device)
            policy = KeyPolicy(record.id, mode, False, now, actor.name)
            await tx.keys.set_policy(policy)
            await tx.audit.add(AuditEntry(now, record.id, "policy_set", actor.name, detail=f"mode {mode.value}"))
        return policy

    async def clear_device_policy(self, actor: Actor, device: str) -> bool:
        """The device follows the fleet's policy again."""
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await visible_device(tx, actor, device)
            removed = await tx.keys.remove_policy(record.id)
            if removed:
                await tx.audit.add(AuditEntry(now, record.id, "policy_cleared", actor.name))
        return removed

    async def set_fleet_policy(
        self,
        actor: Actor,
        *,
        mode: KeyPolicyMode | str | None = None,
        trust_on_first_use: bool | None = None,
        self_registration: bool | None = None,
    ) -> KeyPolicy:
        """The fleet's policy (admins): what a device's new key meets, whether unknown devices are trusted on
        first use, whether any account may register new device ids. What is not given stays as it is."""
        if not actor.is_admin:
            raise PermissionDeniedError("the fleet's key policy is an admin's to set")
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            current = await fleet_policy(tx.keys)
            policy = KeyPolicy(
                FLEET,
                current.mode if mode is None else _mode(mode),
                current.trust_on_first_use if trust_on_first_use is None else bool(trust_on_first_use),
                now,
                actor.name,
                current.self_registration if self_registration is None else bool(self_registration),
            )
            await tx.keys.set_policy(policy)
            detail = (
                f"mode {policy.mode.value}; trust on first use {'on' if policy.trust_on_first_use else 'off'}; "
                f"self-registration {'on' if policy.self_registration else 'off'}"
            )
            await tx.audit.add(AuditEntry(now, None, "policy_set", actor.name, detail=detail, subject="fleet"))
        return policy

    async def policies(self, actor: Actor) -> tuple[KeyPolicy, list[KeyPolicy]]:
        """The fleet's policy and the devices' own policies the actor sees."""
        store = self._ctx.store
        fleet = await fleet_policy(store.keys)
        policies = [p for p in await store.keys.list_policies() if p.scope != FLEET]
        seen = {r.id for r in await visible_records(store, actor, [p.scope for p in policies])}
        return fleet, [p for p in policies if p.scope in seen]

    # -- what the owner sees ----------------------------------------------------------------------

    async def status(self, actor: Actor, device: str, *, audit_limit: int = 50) -> KeyStatus:
        store = self._ctx.store
        record = await visible_device(store, actor, device)
        window = await store.keys.get_rekey(record.id)
        now = self._ctx.clock()
        if window is not None and not window.open_at(now):
            window = None
        attempts = await store.attempts.recent(record.id, since=now - UNPROVEN_PERIOD, limit=_UNPROVEN_LIMIT)
        connected = await self._ctx.sessions.connected(record.id)
        return KeyStatus(
            record,
            await effective_policy(store.keys, record.id),
            await store.keys.list_pending_keys(record.id),
            window,
            self._ctx.sessions.quarantined(record.id) and not connected,
            await store.audit.recent(record.id, limit=audit_limit),
            summarize_unproven(attempts),
            connected,
        )

    async def audit(self, actor: Actor, device: str | None = None, *, limit: int = 100) -> list[AuditEntry]:
        """The audit trail: of one device (its owner or an admin), or everything (admins)."""
        store = self._ctx.store
        if device is not None:
            record = await visible_device(store, actor, device)
            return await store.audit.recent(record.id, limit=limit)
        if not actor.is_admin:
            raise PermissionDeniedError("the whole audit trail is for admins; name one of your devices")
        return await store.audit.recent(limit=limit)


def summarize_unproven(attempts: list[ConnectionAttempt]) -> UnprovenSummary:
    unproven = [a for a in attempts if a.proven is False]
    keys: dict[str, int] = {}
    for attempt in unproven:
        if attempt.presented_fingerprint:
            keys[attempt.presented_fingerprint] = keys.get(attempt.presented_fingerprint, 0) + 1
    times = [a.started_at for a in unproven]
    addresses = sorted({a.peer_address.rsplit(":", 1)[0] for a in unproven})
    return UnprovenSummary(len(unproven), min(times, default=None), max(times, default=None), keys, addresses)


def _mode(mode: KeyPolicyMode | str) -> KeyPolicyMode:
    try:
        return KeyPolicyMode(mode)
    except ValueError:
        raise InvalidInputError("mode is strict or quarantine", "mode") from None
