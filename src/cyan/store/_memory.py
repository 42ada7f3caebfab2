"""`cyan.cloud.ports.Store` in memory: the fake for the use cases' unit tests, held to the same contract as the
databases (tests/ports/). Nothing survives the process.

Records are copied in and out, as a database would: a caller that changes a record it read changes nothing
stored. A transaction takes the store's lock (every other writer waits, as SQLite's BEGIN IMMEDIATE makes them)
and restores the state it found when its block raises.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

from cyan.cloud.errors import DeviceNameAmbiguousError
from cyan.cloud.models import (
    AccessToken,
    AuditEntry,
    ClaimCode,
    ConnectionAttempt,
    DeviceRecord,
    FirmwareRecord,
    HookDelivery,
    Integration,
    KeyPolicy,
    PendingKey,
    RefreshToken,
    RekeyWindow,
    UdpSession,
    UpdateJob,
    User,
    VitalsRecord,
)
from cyan.cloud.ports import DeviceExistsError, Repositories, StoreUnavailableError, UserExistsError
from cyan.cloud.queries import DevicePage, DeviceQuery, DeviceStatus

__all__ = ["MemoryStore"]

T = TypeVar("T")
R = TypeVar("R")


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got the naive {value.isoformat()}")
    return value


def _in_utc(record: R) -> R:
    """The record with every time in UTC, as a database gives them back; a naive one is refused."""
    for item in dataclasses.fields(record):  # type: ignore[arg-type]
        value = getattr(record, item.name)
        if isinstance(value, datetime):
            setattr(record, item.name, _aware(value, item.name).astimezone(UTC))
    return record


def _limit(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    return limit


@dataclass
class _State:
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    policies: dict[str, KeyPolicy] = field(default_factory=dict)
    rekeys: dict[str, RekeyWindow] = field(default_factory=dict)
    pending: dict[tuple[str, str], PendingKey] = field(default_factory=dict)
    claim_codes: dict[str, ClaimCode] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)
    tokens: dict[str, AccessToken] = field(default_factory=dict)
    refresh_tokens: dict[str, RefreshToken] = field(default_factory=dict)
    attempts: list[ConnectionAttempt] = field(default_factory=list)
    firmware: dict[str, FirmwareRecord] = field(default_factory=dict)
    jobs: dict[int, UpdateJob] = field(default_factory=dict)
    groups: dict[str, set[str]] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    integrations: dict[str, Integration] = field(default_factory=dict)
    deliveries: list[HookDelivery] = field(default_factory=list)
    vitals: list[VitalsRecord] = field(default_factory=list)
    udp_sessions: dict[bytes, UdpSession] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class _Guard:
    """Runs one repository call: under the store's lock when it is a call of its own, directly inside a
    transaction (which holds the lock already)."""

    def __init__(self, store: MemoryStore, in_transaction: bool) -> None:
        self._store = store
        self._in_transaction = in_transaction

    @property
    def state(self) -> _State:
        return self._store._state_for_use()

    async def write(self, work: Callable[[], T]) -> T:
        if self._in_transaction:
            return work()
        async with self._store._lock:
            return work()

    async def read(self, work: Callable[[], T]) -> T:
        self._store._state_for_use()
        await asyncio.sleep(0)  # a database read lets other tasks run; so does this one
        return work()


class _Part:
    def __init__(self, guard: _Guard) -> None:
        self._g = guard


class _Devices(_Part):
    async def get(self, device_id: str) -> DeviceRecord | None:
        return await self._g.read(lambda: copy.deepcopy(self._g.state.devices.get(device_id.lower())))

    async def find(self, id_or_name: str, *, owner: str | None = None) -> DeviceRecord | None:
        def work() -> DeviceRecord | None:
            state = self._g.state
            found = state.devices.get(id_or_name.lower())
            if found is None:
                named = [
                    d for d in state.devices.values() if d.name == id_or_name and (owner is None or d.owner == owner)
                ]
                if len(named) > 1:
                    raise DeviceNameAmbiguousError(id_or_name)
                found = named[0] if named else None
            return copy.deepcopy(found)

        return await self._g.read(work)

    async def all(self, owner: str | None = None) -> list[DeviceRecord]:
        def work() -> list[DeviceRecord]:
            found = [d for d in self._g.state.devices.values() if owner is None or d.owner == owner]
            return copy.deepcopy(sorted(found, key=lambda d: d.id))

        return await self._g.read(work)

    def _check(self, device: DeviceRecord, *, replacing: bool) -> DeviceRecord:
        state = self._g.state
        stored = _in_utc(copy.deepcopy(device))
        stored.id = device.id.lower()
        if not replacing and stored.id in state.devices:
            raise DeviceExistsError(f"device {stored.id} is already registered")
        if stored.name is not None and stored.owner is not None:
            # Unique per owner, as the SQL stores' constraint (which lets ownerless devices share a name).
            for other in state.devices.values():
                if other.name == stored.name and other.owner == stored.owner and other.id != stored.id:
                    raise DeviceExistsError(
                        f"the name {stored.name!r} is already given to another device of {stored.owner}'s ({other.id})"
                    )
        return stored

    async def add(self, device: DeviceRecord) -> None:
        def work() -> None:
            stored = self._check(device, replacing=False)
            self._g.state.devices[stored.id] = stored

        await self._g.write(work)

    async def add_many(self, devices: list[DeviceRecord]) -> None:
        def work() -> None:
            ids: set[str] = set()
            names: set[tuple[str | None, str | None]] = set()
            for device in devices:
                if device.id.lower() in ids:
                    raise DeviceExistsError(f"device {device.id.lower()} is listed twice")
                owned_name = (device.owner, device.name)
                if device.name is not None and device.owner is not None and owned_name in names:
                    raise DeviceExistsError(f"the name {device.name!r} is given to two devices of one owner")
                ids.add(device.id.lower())
                names.add(owned_name)
            checked = [self._check(device, replacing=False) for device in devices]
            for stored in checked:
                self._g.state.devices[stored.id] = stored

        await self._g.write(work)

    async def save(self, device: DeviceRecord) -> None:
        def work() -> None:
            stored = self._check(device, replacing=True)
            self._g.state.devices[stored.id] = stored

        await self._g.write(work)

    async def update_states(self, devices: list[DeviceRecord]) -> None:
        def work() -> None:
            for device in devices:
                stored = self._g.state.devices.get(device.id.lower())
                if stored is None:
                    continue
                heard = None if device.last_heard is None else _aware(device.last_heard, "last_heard").astimezone(UTC)
                handshake = device.last_handshake_at
                if handshake is not None:
                    handshake = _aware(handshake, "last_handshake_at").astimezone(UTC)
                self._g.state.devices[stored.id] = replace(
                    stored,
                    platform_id=device.platform_id,
                    product_id=device.product_id,
                    product_version=device.product_version,
                    system_version=device.system_version,
                    hello_flags=device.hello_flags,
                    functions=list(device.functions),
                    variables=list(device.variables),
                    online=device.online,
                    last_heard=heard,
                    last_handshake_at=handshake,
                    last_address=device.last_address,
                )

        await self._g.write(work)

    async def remove(self, device_id: str) -> bool:
        def work() -> bool:
            state = self._g.state
            key = device_id.lower()
            for pair in [pair for pair in state.pending if pair[0] == key]:
                del state.pending[pair]
            state.rekeys.pop(key, None)
            state.policies.pop(key, None)
            for members in state.groups.values():
                members.discard(key)
            state.groups = {name: members for name, members in state.groups.items() if members}
            for code_hash in [h for h, c in state.claim_codes.items() if c.device_id == key]:
                del state.claim_codes[code_hash]
            state.vitals = [v for v in state.vitals if v.device_id != key]
            return state.devices.pop(key, None) is not None

        return await self._g.write(work)

    async def search(self, query: DeviceQuery) -> DevicePage:
        if query.offset < 0 or query.limit < 0:
            raise ValueError("offset and limit must not be negative")
        if query.status is DeviceStatus.FAILING and query.failing_since is None:
            raise ValueError("a search for failing devices needs failing_since")
        for name in ("failing_since", "seen_after", "seen_before"):
            moment = getattr(query, name)
            if moment is not None:
                _aware(moment, name)

        def work() -> DevicePage:
            state = self._g.state
            found = [d for d in state.devices.values() if _matches(state, d, query)]
            key = query.sort.value
            # As the SQL store orders: records without the field last, then by the field, ties by id.
            present = [d for d in found if getattr(d, key) is not None]
            absent = sorted((d for d in found if getattr(d, key) is None), key=lambda d: d.id, reverse=query.descending)
            present.sort(key=lambda d: (getattr(d, key), d.id), reverse=query.descending)
            ordered = present + absent
            page = ordered[query.offset : query.offset + query.limit] if query.limit else []
            return DevicePage(len(found), copy.deepcopy(page))

        return await self._g.read(work)

    async def mark_all_offline(self) -> None:
        def work() -> None:
            for key, device in self._g.state.devices.items():
                if device.online:
                    self._g.state.devices[key] = replace(device, online=False)

        await self._g.write(work)


def _newest(attempts: list[ConnectionAttempt], since: datetime | None) -> dict[str, ConnectionAttempt]:
    newest: dict[str, ConnectionAttempt] = {}
    for attempt in attempts:
        if attempt.device_id is None or (since is not None and attempt.started_at < since):
            continue
        held = newest.get(attempt.device_id)
        if held is None or (attempt.started_at, attempt.id or 0) > (held.started_at, held.id or 0):
            newest[attempt.device_id] = attempt
    return newest


def _matches(state: _State, device: DeviceRecord, query: DeviceQuery) -> bool:
    if query.owner is not None and device.owner != query.owner:
        return False
    if query.text:
        text = query.text.lower()
        if text not in device.id and text not in (device.name or "").lower():
            return False
    status = query.status
    if status is DeviceStatus.ONLINE and not device.online:
        return False
    if status is DeviceStatus.OFFLINE and device.online:
        return False
    if status is DeviceStatus.PENDING and not any(key[0] == device.id for key in state.pending):
        return False
    if status is DeviceStatus.FAILING:
        newest = _newest([a for a in state.attempts if a.device_id == device.id], query.failing_since)
        if device.online or device.id not in newest or newest[device.id].outcome != "failed":
            return False
    if query.group is not None and device.id not in state.groups.get(query.group, set()):
        return False
    for name in ("platform_id", "product_version", "system_version"):
        wanted = getattr(query, name)
        if wanted is not None and getattr(device, name) != wanted:
            return False
    heard = device.last_heard
    if query.seen_after is not None and (heard is None or heard < query.seen_after):
        return False
    return query.seen_before is None or (heard is not None and heard < query.seen_before)


class _Keys(_Part):
    async def get_policy(self, scope: str) -> KeyPolicy | None:
        return await self._g.read(lambda: copy.deepcopy(self._g.state.policies.get(scope.lower())))

    async def set_policy(self, policy: KeyPolicy) -> None:
        def work() -> None:
            stored = _in_utc(copy.deepcopy(policy))
            stored.scope = policy.scope.lower()
            self._g.state.policies[stored.scope] = stored

        await self._g.write(work)

    async def remove_policy(self, scope: str) -> bool:
        return await self._g.write(lambda: self._g.state.policies.pop(scope.lower(), None) is not None)

    async def list_policies(self) -> list[KeyPolicy]:
        return await self._g.read(lambda: copy.deepcopy(sorted(self._g.state.policies.values(), key=lambda p: p.scope)))

    async def get_rekey(self, device_id: str) -> RekeyWindow | None:
        return await self._g.read(lambda: copy.deepcopy(self._g.state.rekeys.get(device_id.lower())))

    async def save_rekey(self, window: RekeyWindow) -> None:
        def work() -> None:
            stored = _in_utc(copy.deepcopy(window))
            stored.device_id = window.device_id.lower()
            self._g.state.rekeys[stored.device_id] = stored

        await self._g.write(work)

    async def remove_rekey(self, device_id: str) -> bool:
        return await self._g.write(lambda: self._g.state.rekeys.pop(device_id.lower(), None) is not None)

    async def list_rekeys(self) -> list[RekeyWindow]:
        return await self._g.read(
            lambda: copy.deepcopy(sorted(self._g.state.rekeys.values(), key=lambda w: (w.until, w.device_id)))
        )

    async def save_pending_key(self, pending: PendingKey) -> None:
        def work() -> None:
            stored = _in_utc(copy.deepcopy(pending))
            stored.device_id = pending.device_id.lower()
            self._g.state.pending[(stored.device_id, stored.fingerprint)] = stored

        await self._g.write(work)

    async def list_pending_keys(self, device_id: str | None = None) -> list[PendingKey]:
        def work() -> list[PendingKey]:
            found = [p for p in self._g.state.pending.values() if device_id is None or p.device_id == device_id.lower()]
            return copy.deepcopy(sorted(found, key=lambda p: (p.first_seen, p.device_id, p.fingerprint)))

        return await self._g.read(work)

    async def remove_pending_key(self, device_id: str, fingerprint: str | None = None) -> int:
        def work() -> int:
            state = self._g.state
            doomed = [
                pair
                for pair in state.pending
                if pair[0] == device_id.lower() and (fingerprint is None or pair[1] == fingerprint)
            ]
            for pair in doomed:
                del state.pending[pair]
            return len(doomed)

        return await self._g.write(work)

    async def add_claim_code(self, code: ClaimCode) -> None:
        def work() -> None:
            stored = _in_utc(copy.deepcopy(code))
            stored.code_hash = code.code_hash.lower()
            stored.device_id = None if code.device_id is None else code.device_id.lower()
            stored.claimant = None if code.claimant is None else code.claimant.lower()
            if stored.code_hash in self._g.state.claim_codes:
                raise StoreUnavailableError(f"cannot add a claim code: its hash {stored.code_hash} is stored already")
            self._g.state.claim_codes[stored.code_hash] = stored

        await self._g.write(work)

    async def take_claim_code(self, code_hash: str) -> ClaimCode | None:
        return await self._g.write(lambda: self._g.state.claim_codes.pop(code_hash.lower(), None))

    async def remove_expired_claim_codes(self, now: datetime) -> int:
        _aware(now, "now")

        def work() -> int:
            codes = self._g.state.claim_codes
            doomed = [h for h, code in codes.items() if code.expires_at <= now]
            for code_hash in doomed:
                del codes[code_hash]
            return len(doomed)

        return await self._g.write(work)


class _Accounts(_Part):
    async def add_user(self, user: User) -> None:
        def work() -> None:
            stored = _in_utc(copy.deepcopy(user))
            stored.username = user.username.lower()
            if stored.username in self._g.state.users:
                raise UserExistsError(f"the username {stored.username!r} is already taken")
            self._g.state.users[stored.username] = stored

        await self._g.write(work)

    async def get_user(self, username: str) -> User | None:
        return await self._g.read(lambda: copy.deepcopy(self._g.state.users.get(username.lower())))

    async def save_user(self, user: User) -> bool:
        def work() -> bool:
            stored = self._g.state.users.get(user.username.lower())
            if stored is None:
                return False
            stored.password_hash, stored.role = user.password_hash, user.role
            return True

        return await self._g.write(work)

    async def list_users(self) -> list[User]:
        return await self._g.read(lambda: copy.deepcopy([u for _, u in sorted(self._g.state.users.items())]))

    async def remove_user(self, username: str) -> bool:
        def work() -> bool:
            state = self._g.state
            name = username.lower()
            state.tokens = {h: t for h, t in state.tokens.items() if t.username != name}
            state.refresh_tokens = {h: t for h, t in state.refresh_tokens.items() if t.username != name}
            for key, device in state.devices.items():
                if device.owner == name:
                    state.devices[key] = replace(device, owner=None)
            state.claim_codes = {h: c for h, c in state.claim_codes.items() if c.claimant != name}
            owned = {i for i, hook in state.integrations.items() if hook.owner == name}
            state.integrations = {i: hook for i, hook in state.integrations.items() if i not in owned}
            state.deliveries = [d for d in state.deliveries if d.integration_id not in owned]
            return state.users.pop(name, None) is not None

        return await self._g.write(work)

    async def add_token(self, token: AccessToken) -> None:
        def work() -> None:
            stored = _in_utc(copy.deepcopy(token))
            stored.token_hash, stored.username = token.token_hash.lower(), token.username.lower()
            if stored.token_hash in self._g.state.tokens:
                raise ValueError(f"an access token with the hash {stored.token_hash} is already stored")
            self._g.state.tokens[stored.token_hash] = stored

        await self._g.write(work)

    async def get_token(self, token_hash: str) -> AccessToken | None:
        return await self._g.read(lambda: copy.deepcopy(self._g.state.tokens.get(token_hash.lower())))

    async def list_tokens(self, username: str) -> list[AccessToken]:
        def work() -> list[AccessToken]:
            found = [t for t in self._g.state.tokens.values() if t.username == username.lower()]
            found.sort(key=lambda t: t.token_hash)
            found.sort(key=lambda t: t.created_at, reverse=True)
            return copy.deepcopy(found)

        return await self._g.read(work)

    async def remove_token(self, token_hash: str) -> bool:
        return await self._g.write(lambda: self._g.state.tokens.pop(token_hash.lower(), None) is not None)

    async def remove_expired_tokens(self, now: datetime) -> int:
        _aware(now, "now")

        def work() -> int:
            tokens = self._g.state.tokens
            doomed = [h for h, t in tokens.items() if t.expires_at is not None and t.expires_at <= now]
            for token_hash in doomed:
                del tokens[token_hash]
            refresh = self._g.state.refresh_tokens
            spent = [h for h, t in refresh.items() if t.expires_at <= now]
            for token_hash in spent:
                del refresh[token_hash]
            return len(doomed) + len(spent)

        return await self._g.write(work)

    async def add_refresh_token(self, token: RefreshToken) -> None:
        def work() -> None:
            stored = _in_utc(copy.deepcopy(token))
            stored.token_hash, stored.username = token.token_hash.lower(), token.username.lower()
            if stored.token_hash in self._g.state.refresh_tokens:
                raise ValueError(f"a refresh token with the hash {stored.token_hash} is already stored")
            self._g.state.refresh_tokens[stored.token_hash] = stored

        await self._g.write(work)

    async def take_refresh_token(self, token_hash: str, now: datetime) -> RefreshToken | None:
        _aware(now, "now")

        def work() -> RefreshToken | None:
            stored = self._g.state.refresh_tokens.get(token_hash.lower())
            if stored is None:
                return None
            before = copy.deepcopy(stored)
            if stored.spent_at is None:
                stored.spent_at = now.astimezone(UTC)
            return before

        return await self._g.write(work)

    async def remove_token_family(self, family: str) -> int:
        def work() -> int:
            state = self._g.state
            refresh = [h for h, t in state.refresh_tokens.items() if t.family == family]
            access = [h for h, t in state.tokens.items() if t.family == family]
            for token_hash in refresh:
                del state.refresh_tokens[token_hash]
            for token_hash in access:
                del state.tokens[token_hash]
            return len(refresh) + len(access)

        return await self._g.write(work)

    async def remove_expired_refresh_tokens(self, now: datetime) -> int:
        _aware(now, "now")

        def work() -> int:
            refresh = self._g.state.refresh_tokens
            expired = [h for h, t in refresh.items() if t.expires_at <= now]
            for token_hash in expired:
                del refresh[token_hash]
            return len(expired)

        return await self._g.write(work)

    async def remove_refresh_tokens(self, username: str) -> int:
        def work() -> int:
            refresh = self._g.state.refresh_tokens
            doomed = [h for h, t in refresh.items() if t.username == username.lower()]
            for token_hash in doomed:
                del refresh[token_hash]
            return len(doomed)

        return await self._g.write(work)


class _Attempts(_Part):
    async def add(self, attempts: list[ConnectionAttempt]) -> None:
        def work() -> None:
            state = self._g.state
            for attempt in attempts:
                stored = _in_utc(copy.deepcopy(attempt))
                stored.device_id = None if attempt.device_id is None else attempt.device_id.lower()
                stored.id = next(state.ids)
                state.attempts.append(stored)

        await self._g.write(work)

    async def recent(
        self,
        device_id: str | None = None,
        *,
        since: datetime | None = None,
        peer_address: str | None = None,
        limit: int = 100,
    ) -> list[ConnectionAttempt]:
        _limit(limit)
        if since is not None:
            _aware(since, "since")

        def work() -> list[ConnectionAttempt]:
            found = [
                a
                for a in self._g.state.attempts
                if (device_id is None or a.device_id == device_id.lower())
                and (since is None or a.started_at >= since)
                and (peer_address is None or a.peer_address == peer_address)
            ]
            found.sort(key=lambda a: (a.started_at, a.id or 0), reverse=True)
            return copy.deepcopy(found[:limit])

        return await self._g.read(work)

    async def prune(self, *, before: datetime, keep: int) -> int:
        _aware(before, "before")
        _limit(keep)

        def work() -> int:
            state = self._g.state
            kept = [a for a in state.attempts if a.started_at >= before]
            kept.sort(key=lambda a: (a.started_at, a.id or 0), reverse=True)
            kept = kept[:keep]
            deleted = len(state.attempts) - len(kept)
            state.attempts = sorted(kept, key=lambda a: a.id or 0)
            return deleted

        return await self._g.write(work)

    async def latest(self, device_ids: list[str], *, since: datetime | None = None) -> dict[str, ConnectionAttempt]:
        if since is not None:
            _aware(since, "since")
        wanted = {d.lower() for d in device_ids}

        def work() -> dict[str, ConnectionAttempt]:
            chosen = [a for a in self._g.state.attempts if a.device_id in wanted]
            return copy.deepcopy(_newest(chosen, since))

        return await self._g.read(work)


class _Updates(_Part):
    async def save_firmware(self, firmware: FirmwareRecord) -> None:
        def work() -> None:
            uploaded = _aware(firmware.uploaded_at, "uploaded_at").astimezone(UTC)
            key = firmware.sha256.lower()
            self._g.state.firmware.setdefault(key, replace(firmware, sha256=key, uploaded_at=uploaded))

        await self._g.write(work)

    async def get_firmware(self, sha256: str) -> FirmwareRecord | None:
        return await self._g.read(lambda: self._g.state.firmware.get(sha256.lower()))

    def _checked(self, job: UpdateJob) -> UpdateJob:
        stored = _in_utc(copy.deepcopy(job))
        stored.device_id = job.device_id.lower()
        return stored

    async def add_job(self, job: UpdateJob) -> int:
        def work() -> int:
            stored = self._checked(job)
            stored.id = job.id = next(self._g.state.ids)
            self._g.state.jobs[stored.id] = stored
            return stored.id

        return await self._g.write(work)

    async def save_job(self, job: UpdateJob) -> None:
        if job.id is None:
            raise ValueError("the job has no id: add it first")

        def work() -> None:
            if job.id in self._g.state.jobs:
                self._g.state.jobs[job.id] = self._checked(job)

        await self._g.write(work)

    async def get_job(self, job_id: int) -> UpdateJob | None:
        return await self._g.read(lambda: copy.deepcopy(self._g.state.jobs.get(job_id)))

    async def list_jobs(
        self,
        *,
        device_id: str | None = None,
        rollout: str | None = None,
        unfinished: bool = False,
        limit: int = 100,
    ) -> list[UpdateJob]:
        _limit(limit)

        def work() -> list[UpdateJob]:
            found = [
                j
                for _, j in sorted(self._g.state.jobs.items(), reverse=True)
                if (device_id is None or j.device_id == device_id.lower())
                and (rollout is None or j.rollout == rollout)
                and not (unfinished and j.state.finished)
            ]
            return copy.deepcopy(found[:limit])

        return await self._g.read(work)

    async def add_to_group(self, group: str, device_ids: list[str]) -> int:
        def work() -> int:
            members = self._g.state.groups.setdefault(group, set())
            new = {d.lower() for d in device_ids} - members
            members |= new
            return len(new)

        return await self._g.write(work)

    async def remove_from_group(self, group: str, device_ids: list[str]) -> int:
        def work() -> int:
            members = self._g.state.groups.get(group, set())
            gone = members & {d.lower() for d in device_ids}
            members -= gone
            if not members:
                self._g.state.groups.pop(group, None)
            return len(gone)

        return await self._g.write(work)

    async def list_group(self, group: str) -> list[str]:
        return await self._g.read(lambda: sorted(self._g.state.groups.get(group, set())))

    async def list_groups(self) -> dict[str, int]:
        return await self._g.read(lambda: {name: len(m) for name, m in sorted(self._g.state.groups.items()) if m})


class _Audit(_Part):
    async def add(self, entry: AuditEntry) -> int:
        def work() -> int:
            stored = _in_utc(copy.deepcopy(entry))
            stored.device_id = None if entry.device_id is None else entry.device_id.lower()
            stored.id = entry.id = next(self._g.state.ids)
            self._g.state.audit.append(stored)
            return stored.id

        return await self._g.write(work)

    async def recent(
        self, device_id: str | None = None, *, subject: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        _limit(limit)

        def work() -> list[AuditEntry]:
            found = [
                e
                for e in self._g.state.audit
                if (device_id is None or e.device_id == device_id.lower()) and (subject is None or e.subject == subject)
            ]
            found.sort(key=lambda e: (e.at, e.id or 0), reverse=True)
            return copy.deepcopy(found[:limit])

        return await self._g.read(work)


class _Integrations(_Part):
    async def add(self, integration: Integration) -> None:
        def work() -> None:
            stored = _in_utc(copy.deepcopy(integration))
            stored.owner = integration.owner.lower()
            if stored.id in self._g.state.integrations:
                raise StoreUnavailableError(f"cannot add an integration: its id {stored.id} is taken")
            self._g.state.integrations[stored.id] = stored

        await self._g.write(work)

    async def get(self, integration_id: str) -> Integration | None:
        return await self._g.read(lambda: copy.deepcopy(self._g.state.integrations.get(integration_id)))

    async def all(self, owner: str | None = None) -> list[Integration]:
        def work() -> list[Integration]:
            found = [i for i in self._g.state.integrations.values() if owner is None or i.owner == owner.lower()]
            return copy.deepcopy(sorted(found, key=lambda i: (i.created_at, i.id)))

        return await self._g.read(work)

    async def save(self, integration: Integration) -> bool:
        def work() -> bool:
            if integration.id not in self._g.state.integrations:
                return False
            stored = _in_utc(copy.deepcopy(integration))
            stored.owner = integration.owner.lower()
            self._g.state.integrations[stored.id] = stored
            return True

        return await self._g.write(work)

    async def remove(self, integration_id: str) -> bool:
        def work() -> bool:
            state = self._g.state
            state.deliveries = [d for d in state.deliveries if d.integration_id != integration_id]
            return state.integrations.pop(integration_id, None) is not None

        return await self._g.write(work)

    async def add_deliveries(self, deliveries: list[HookDelivery], *, keep: int) -> None:
        _limit(keep)

        def work() -> None:
            state = self._g.state
            touched = set()
            for delivery in deliveries:
                if delivery.integration_id not in state.integrations:
                    continue
                stored = _in_utc(copy.deepcopy(delivery))
                stored.id = next(state.ids)
                state.deliveries.append(stored)
                touched.add(delivery.integration_id)
            for integration_id in touched:
                mine = [d for d in state.deliveries if d.integration_id == integration_id]
                doomed = {id(d) for d in mine[: max(0, len(mine) - keep)]}
                state.deliveries = [d for d in state.deliveries if id(d) not in doomed]

        await self._g.write(work)

    async def deliveries(self, integration_id: str, *, limit: int = 100) -> list[HookDelivery]:
        _limit(limit)

        def work() -> list[HookDelivery]:
            found = [d for d in self._g.state.deliveries if d.integration_id == integration_id]
            return copy.deepcopy(found[::-1][:limit])

        return await self._g.read(work)


class _Vitals(_Part):
    async def add(self, record: VitalsRecord, *, keep: int) -> int:
        _limit(keep)

        def work() -> int:
            state = self._g.state
            stored = _in_utc(copy.deepcopy(record))
            stored.device_id = record.device_id.lower()
            stored.id = record.id = next(state.ids)
            state.vitals.append(stored)
            mine = sorted(
                (v for v in state.vitals if v.device_id == stored.device_id),
                key=lambda v: (v.updated_at, v.id or 0),
            )
            doomed = {id(v) for v in mine[: max(0, len(mine) - keep)]}
            state.vitals = [v for v in state.vitals if id(v) not in doomed]
            return stored.id

        return await self._g.write(work)

    async def history(
        self,
        device_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[VitalsRecord]:
        _limit(limit)
        for moment, name in ((since, "since"), (until, "until")):
            if moment is not None:
                _aware(moment, name)

        def work() -> list[VitalsRecord]:
            found = [
                v
                for v in self._g.state.vitals
                if v.device_id == device_id.lower()
                and (since is None or v.updated_at >= since)
                and (until is None or v.updated_at <= until)
            ]
            found.sort(key=lambda v: (v.updated_at, v.id or 0))
            return copy.deepcopy(found[len(found) - limit :] if limit else [])

        return await self._g.read(work)

    async def last(self, device_id: str) -> VitalsRecord | None:
        found = await self.history(device_id, limit=1)
        return found[0] if found else None

    async def prune(self, *, before: datetime) -> int:
        _aware(before, "before")

        def work() -> int:
            state = self._g.state
            kept = [v for v in state.vitals if v.updated_at >= before]
            deleted = len(state.vitals) - len(kept)
            state.vitals = kept
            return deleted

        return await self._g.write(work)


class _UdpSessions:
    def __init__(self, guard: _Guard) -> None:
        self._g = guard

    async def save(self, session: UdpSession) -> None:
        _aware(session.updated_at, "updated_at")
        stored = copy.deepcopy(session)
        if stored.device_id:
            stored.device_id = stored.device_id.lower()

        def work() -> None:
            sessions = self._g.state.udp_sessions
            before = sessions.get(stored.connection_id)
            if before is not None and before.sequence_limit is not None:
                stored.sequence_limit = max(before.sequence_limit, stored.sequence_limit or 0)
            sessions[stored.connection_id] = stored

        await self._g.write(work)

    async def get(self, connection_id: bytes) -> UdpSession | None:
        return await self._g.read(lambda: copy.deepcopy(self._g.state.udp_sessions.get(connection_id)))

    async def of_device(self, device_id: str, *, limit: int) -> list[UdpSession]:
        wanted = device_id.lower()

        def work() -> list[UdpSession]:
            mine = [v for v in self._g.state.udp_sessions.values() if v.device_id == wanted]
            return copy.deepcopy(sorted(mine, key=lambda s: s.updated_at, reverse=True)[:limit])

        return await self._g.read(work)

    async def reserve(self, connection_id: bytes, count: int, *, floor: int = 0) -> int | None:
        if count < 1 or floor < 0:
            raise ValueError("reserve at least one sequence number, from a floor of 0 or more")

        def work() -> int | None:
            stored = self._g.state.udp_sessions.get(connection_id)
            if stored is None:
                return None
            stored.sequence_limit = max(stored.sequence_limit or 0, floor) + count
            return stored.sequence_limit

        return await self._g.write(work)

    async def all(self) -> list[UdpSession]:
        def work() -> list[UdpSession]:
            return copy.deepcopy(sorted(self._g.state.udp_sessions.values(), key=lambda s: s.updated_at))

        return await self._g.read(work)

    async def remove(self, connection_id: bytes) -> bool:
        return await self._g.write(lambda: self._g.state.udp_sessions.pop(connection_id, None) is not None)

    async def prune(self, *, before: datetime) -> int:
        _aware(before, "before")

        def work() -> int:
            state = self._g.state
            doomed = [k for k, v in state.udp_sessions.items() if v.updated_at < before]
            for key in doomed:
                del state.udp_sessions[key]
            return len(doomed)

        return await self._g.write(work)


class _Repositories:
    def __init__(self, guard: _Guard) -> None:
        self.devices = _Devices(guard)
        self.keys = _Keys(guard)
        self.accounts = _Accounts(guard)
        self.attempts = _Attempts(guard)
        self.updates = _Updates(guard)
        self.audit = _Audit(guard)
        self.integrations = _Integrations(guard)
        self.vitals = _Vitals(guard)
        self.udp_sessions = _UdpSessions(guard)


class MemoryStore(_Repositories):
    """Every repository in memory. `fail_with` makes every call raise `StoreUnavailableError` (a database that
    went away), for tests of what the callers do then."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = asyncio.Lock()
        self._open = False
        self._was_opened = False
        self.fail_with: str | None = None
        super().__init__(_Guard(self, in_transaction=False))

    def _state_for_use(self) -> _State:
        if self.fail_with is not None:
            raise StoreUnavailableError(self.fail_with)
        if not self._open:
            state = "closed" if self._was_opened else "not open (call open() first)"
            raise StoreUnavailableError(f"the memory store is {state}")
        return self._state

    async def open(self) -> None:
        self._open = self._was_opened = True
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        self._open = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Repositories]:
        async with self._lock:
            before = copy.deepcopy(self._state_for_use())
            try:
                yield _Repositories(_Guard(self, in_transaction=True))
            except BaseException:
                self._state = before
                raise

    async def __aenter__(self) -> MemoryStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<MemoryStore {'open' if self._open else 'closed'}: {len(self._state.devices)} devices>"
