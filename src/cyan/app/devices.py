"""Devices: who may register, claim, release, rename and remove them, and who may see them.

Every change happens in one transaction with its audit entry (docs/keys.md "Who may do what").
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, replace
from datetime import timedelta

from cyan.cloud.errors import (
    AlreadyExistsError,
    ConflictError,
    DeviceNotFoundError,
    InvalidInputError,
    PermissionDeniedError,
)
from cyan.cloud.models import AuditEntry, ClaimCode, DeviceRecord
from cyan.cloud.ports import DeviceExistsError, Repositories
from cyan.keys import KeyFormatError, device_public_key_der, fingerprint

from ._context import (
    AppContext,
    check_device_id,
    check_device_name,
    check_notes,
    hash_secret,
    use_claim_code,
    visible_device,
    visible_records,
)
from .actors import Actor

__all__ = ["ClaimCodeIssued", "DeviceUseCases", "DeviceView", "NewDevice", "checked_device_key"]

#: How long a claim code stays good (Particle's are good for a day too).
CLAIM_CODE_LIFETIME = timedelta(hours=24)
#: Devices shown between two turns of the event loop when a whole fleet is listed (`DeviceUseCases.mine`).
_VIEWS_PER_TURN = 500


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device as its owner sees it: the record (the live one while it is connected) and its state."""

    record: DeviceRecord
    online: bool
    quarantined: bool


@dataclass(frozen=True, slots=True)
class NewDevice:
    """A device to register: its id, public key (SubjectPublicKeyInfo DER) and optional name and owner."""

    device_id: str
    public_key_der: bytes
    name: str | None = None
    owner: str | None = None
    product_id: int | None = None


@dataclass(frozen=True, slots=True)
class ClaimCodeIssued:
    code: str
    expires_in: int
    #: The devices the issuer owns (Particle's answer lists them).
    device_ids: list[str]


def checked_device_key(der: bytes) -> tuple[bytes, str]:
    """A device public key as stored (DER) and its fingerprint; `InvalidInputError` for a key no device can
    have. RSA-1024 (Gen 2 over TCP) and EC P-256 (the Electron and Gen 3 over UDP) are the two kinds."""
    try:
        der = device_public_key_der(der)
    except KeyFormatError as exc:
        raise InvalidInputError(f"the public key cannot be used: {exc}", "publicKey") from None
    return der, fingerprint(der)


class DeviceUseCases:
    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, actor: Actor, id_or_name: str) -> DeviceView:
        record = await visible_device(self._ctx.store, actor, id_or_name)
        return self._view(record)

    async def mine(self, actor: Actor, *, everyone: bool = False) -> list[DeviceView]:
        """The actor's devices; `everyone`: the whole fleet (admins only)."""
        if everyone and not actor.is_admin:
            raise PermissionDeniedError("only admins list every device of the fleet")
        owner = None if everyone else actor.username
        if owner is None and not everyone:
            return []
        records = await self._ctx.store.devices.all(owner=owner)
        views: list[DeviceView] = []
        for start in range(0, len(records), _VIEWS_PER_TURN):
            if start:
                # A fleet of tens of thousands is shown a part at a time: the devices' pings, calls and
                # handshakes on the same event loop wait for one part, not for the whole fleet.
                await asyncio.sleep(0)
            views += [self._view(record) for record in records[start : start + _VIEWS_PER_TURN]]
        return views

    def shown(self, record: DeviceRecord) -> DeviceView:
        """A device record another use case has read and authorized, as `get` shows it (a connected device's
        state is its session's): for an answer that would otherwise look the device up a second time."""
        return self._view(record)

    def _view(self, record: DeviceRecord) -> DeviceView:
        sessions = self._ctx.sessions
        live = sessions.live(record.id)
        shown = record
        if live is not None:
            shown = replace(live, name=record.name, owner=record.owner, key_fingerprint=record.key_fingerprint)
        return DeviceView(shown, live is not None or sessions.shown_online(record), sessions.quarantined(record.id))

    # -- registering ------------------------------------------------------------------------------

    async def register(self, actor: Actor, devices: list[NewDevice]) -> list[DeviceRecord]:
        """Register new devices with their keys (`cyan devices add`, fleet provisioning): admins only, all
        of them or none."""
        if not actor.is_admin:
            raise PermissionDeniedError("registering devices is an admin's act (docs/keys.md)")
        now = self._ctx.clock()
        records = []
        for new in devices:
            der, key_fingerprint = checked_device_key(new.public_key_der)
            records.append(
                DeviceRecord(
                    id=check_device_id(new.device_id),
                    name=None if new.name is None else check_device_name(new.name),
                    owner=new.owner.lower() if new.owner else None,
                    public_key_der=der,
                    key_fingerprint=key_fingerprint,
                    product_id=new.product_id,
                    created_at=now,
                )
            )
        async with self._ctx.store.transaction() as tx:
            for owner in {r.owner for r in records if r.owner is not None}:
                if await tx.accounts.get_user(owner) is None:
                    raise InvalidInputError(f"no user {owner!r}; create it with cyan users add", "owner")
            try:
                await tx.devices.add_many(records)
            except DeviceExistsError as exc:
                raise AlreadyExistsError(str(exc)) from None
            for record in records:
                detail = f"owner {record.owner}" if record.owner else "no owner"
                await tx.audit.add(
                    AuditEntry(now, record.id, "registered", actor.name, None, record.key_fingerprint, detail)
                )
        return records

    # -- owners -----------------------------------------------------------------------------------

    async def claim(
        self, actor: Actor, device_id: str, *, claim_code: str | None = None, owner: str | None = None
    ) -> DeviceRecord:
        """Make a device the actor's (or, for an admin, `owner`'s). An ownerless device may be claimed by an
        admin, or with a claim code issued for it; a device of someone else's is not found."""
        # An admin sees every device, so may name it; anyone else claims by the id printed on it.
        device_id = str(device_id)[:255] if actor.is_admin else check_device_id(device_id)
        if owner is not None and not actor.is_admin:
            raise PermissionDeniedError("only admins claim devices for another account")
        new_owner = (owner or actor.username or "").lower()
        if not new_owner:
            raise InvalidInputError("say whose the device becomes", "owner")
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await (tx.devices.find(device_id) if actor.is_admin else tx.devices.get(device_id))
            if record is None:
                raise DeviceNotFoundError(device_id)
            if record.owner == new_owner:
                return record
            how = await self._may_take(tx, actor, record, claim_code)
            if owner is not None and await tx.accounts.get_user(new_owner) is None:
                raise InvalidInputError(f"no user {new_owner!r}", "owner")
            record.owner = new_owner
            try:
                await tx.devices.save(record)
            except DeviceExistsError:
                raise AlreadyExistsError(
                    f"{new_owner} already has a device named {record.name!r}: rename one of them first"
                ) from None
            await tx.audit.add(AuditEntry(now, record.id, "claimed", actor.name, detail=how, subject=new_owner))
        await self._ctx.sessions.owner_changed(record.id, new_owner)
        return record

    async def _may_take(self, tx: Repositories, actor: Actor, record: DeviceRecord, claim_code: str | None) -> str:
        """How the actor may take this device, or `DeviceNotFoundError` as if it did not exist."""
        if record.owner is not None:
            if actor.is_admin:
                raise ConflictError(f"device {record.id} belongs to {record.owner}; release it first")
            raise DeviceNotFoundError(record.id)
        if actor.is_admin:
            return "by an admin"
        if claim_code and await use_claim_code(tx, claim_code, record.id, self._ctx.clock()):
            return "with a claim code"
        raise DeviceNotFoundError(record.id)

    async def release(self, actor: Actor, id_or_name: str) -> DeviceRecord:
        """The device is no longer the owner's (`particle device remove`); it stays registered."""
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await visible_device(tx, actor, id_or_name)
            previous = record.owner
            if previous is None:
                return record
            record.owner = None
            await tx.devices.save(record)
            await tx.audit.add(AuditEntry(now, record.id, "released", actor.name, subject=previous))
        await self._ctx.sessions.owner_changed(record.id, None)
        return record

    async def rename(self, actor: Actor, id_or_name: str, name: str) -> DeviceRecord:
        name = check_device_name(name)
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await visible_device(tx, actor, id_or_name)
            old = record.name
            if old == name:
                return record
            record.name = name
            try:
                await tx.devices.save(record)
            except DeviceExistsError:
                # Names are unique within an owner's devices: the other one is theirs too.
                raise AlreadyExistsError(f"another device of its owner's is already named {name!r}") from None
            await tx.audit.add(
                AuditEntry(now, record.id, "renamed", actor.name, detail=f"{old or '(no name)'} -> {name}")
            )
        live = self._ctx.sessions.live(record.id)
        if live is not None:
            live.name = name
        return record

    async def set_notes(self, actor: Actor, id_or_name: str, notes: str) -> DeviceRecord:
        """The owner's (or an admin's) notes about a device; "" clears them. The audit entry records that
        they changed and their length, not their text (it may hold what the owner keeps to themselves)."""
        notes = check_notes(notes)
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await visible_device(tx, actor, id_or_name)
            new = notes or None
            if record.notes == new:
                return record
            record.notes = new
            await tx.devices.save(record)
            await tx.audit.add(
                AuditEntry(
                    now,
                    record.id,
                    "notes_changed",
                    actor.name,
                    detail=f"{len(notes)} characters" if notes else "cleared",
                )
            )
        live = self._ctx.sessions.live(record.id)
        if live is not None:
            live.notes = new
        return record

    async def remove(self, actor: Actor, id_or_name: str) -> DeviceRecord:
        """Forget the device and its key (admins only): it can no longer connect until registered again."""
        if not actor.is_admin:
            raise PermissionDeniedError("removing a device from the registry is an admin's act; release it instead")
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            record = await visible_device(tx, actor, id_or_name)
            await tx.devices.remove(record.id)
            await tx.audit.add(
                AuditEntry(now, record.id, "removed", actor.name, record.key_fingerprint, None, subject=record.owner)
            )
        await self._ctx.sessions.close_sessions(record.id)
        return record

    # -- claim codes --------------------------------------------------------------------------------

    async def issue_claim_code(self, actor: Actor, device: str | None = None) -> ClaimCodeIssued:
        """A claim code (shown once; only its hash is kept).

        With `device` (admins): a code for that ownerless device, to hand to whoever should own it. Without:
        a code for the actor's own account, which a device presents after connecting to be claimed by it
        (Particle's `POST /v1/device_claims`).
        """
        now = self._ctx.clock()
        code = secrets.token_urlsafe(24)
        async with self._ctx.store.transaction() as tx:
            if device is not None:
                if not actor.is_admin:
                    raise PermissionDeniedError("only admins issue claim codes for a device")
                record = await visible_device(tx, actor, device)
                if record.owner is not None:
                    raise ConflictError(f"device {record.id} belongs to {record.owner} already")
                entry = ClaimCode(hash_secret(code), actor.name, now, now + CLAIM_CODE_LIFETIME, device_id=record.id)
                audit = AuditEntry(now, record.id, "claim_code_issued", actor.name)
            else:
                if actor.username is None:
                    raise InvalidInputError("a claim code for an account is issued by that account", "device")
                entry = ClaimCode(hash_secret(code), actor.name, now, now + CLAIM_CODE_LIFETIME, claimant=actor.name)
                audit = AuditEntry(now, None, "claim_code_issued", actor.name, subject=actor.name)
            await tx.keys.remove_expired_claim_codes(now)
            await tx.keys.add_claim_code(entry)
            await tx.audit.add(audit)
            owned = [] if actor.username is None else [r.id for r in await tx.devices.all(owner=actor.username)]
        return ClaimCodeIssued(code, int(CLAIM_CODE_LIFETIME.total_seconds()), owned)

    async def claimed_by_device(self, device_id: str, code: str) -> DeviceRecord | None:
        """A device that proved its identity presented a claim code (`spark/device/claim/code`): an ownerless
        device goes to the account that issued the code. Anything else changes nothing (and says so in the
        log by the caller)."""
        now = self._ctx.clock()
        if not 8 <= len(code) <= 128:
            return None
        try:
            async with self._ctx.store.transaction() as tx:
                record = await tx.devices.get(device_id)
                if record is None or record.owner is not None:
                    return None
                found = await tx.keys.take_claim_code(hash_secret(code))
                if found is None or found.claimant is None or found.expires_at <= now:
                    raise _NoClaim  # rolls the use of the code back
                if await tx.accounts.get_user(found.claimant) is None:
                    raise _NoClaim
                detail = "with a claim code it presented"
                if record.name is not None:
                    namesake = await tx.devices.find(record.name, owner=found.claimant)
                    if namesake is not None and namesake.id != record.id:
                        # Nobody is there to choose another name: the device comes unnamed rather than not at all.
                        detail += f"; its name {record.name!r} was another of the account's devices', so it has none"
                        record.name = None
                record.owner = found.claimant
                await tx.devices.save(record)
                await tx.audit.add(AuditEntry(now, device_id, "claimed", "device", detail=detail, subject=record.owner))
        except _NoClaim:
            return None
        await self._ctx.sessions.owner_changed(device_id, record.owner)
        return record

    # -- groups -----------------------------------------------------------------------------------

    async def group(self, actor: Actor, group: str, devices: list[str], *, remove: bool = False) -> int:
        """Add devices (ids or names the actor sees) to a group, or remove them; how many changed."""
        if not isinstance(group, str) or not group or len(group) > 64 or not group.isprintable():
            raise InvalidInputError("a group name is 1 to 64 printable characters", "group")
        async with self._ctx.store.transaction() as tx:
            ids = [(await visible_device(tx, actor, device)).id for device in devices]
            change = tx.updates.remove_from_group if remove else tx.updates.add_to_group
            changed = await change(group, ids)
            if changed:
                action = "ungrouped" if remove else "grouped"
                for device_id in ids:
                    await tx.audit.add(AuditEntry(self._ctx.clock(), device_id, action, actor.name, detail=group))
        return changed

    async def groups(self, actor: Actor) -> dict[str, int]:
        """Every group and how many of the actor's devices are in it (admins: all devices)."""
        found: dict[str, int] = {}
        store = self._ctx.store
        for name in await store.updates.list_groups():
            members = await self.group_members(actor, name)
            if members:
                found[name] = len(members)
        return found

    async def group_members(self, actor: Actor, group: str) -> list[str]:
        """The ids of the group's devices the actor sees: another account's devices are not named."""
        store = self._ctx.store
        return [r.id for r in await visible_records(store, actor, await store.updates.list_group(group))]


class _NoClaim(Exception):
    """A presented claim code that does not apply: the transaction is rolled back, nothing changes."""
