"""The repositories of `cyan.cloud.ports` in SQL, through SQLAlchemy Core: one implementation for every
database the store runs on.

A repository does not know whether it runs inside a transaction: it asks its `Access` for a connection to
read or to write, and the access hands out either a connection of its own per call (committed when the call
ends) or the one connection of the transaction it belongs to.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from sqlalchemy import (
    BigInteger,
    RowMapping,
    and_,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cyan.cloud.errors import DeviceNameAmbiguousError
from cyan.cloud.models import (
    AccessToken,
    AttemptOutcome,
    AuditEntry,
    ClaimCode,
    ConnectionAttempt,
    DeviceRecord,
    FirmwareRecord,
    HookDelivery,
    Integration,
    JobState,
    KeyPolicy,
    KeyPolicyMode,
    PendingKey,
    RefreshToken,
    RekeyWindow,
    Role,
    UdpSession,
    UpdateJob,
    User,
    Variable,
    VitalsRecord,
)
from cyan.cloud.ports import DeviceExistsError, UserExistsError
from cyan.cloud.queries import DevicePage, DeviceQuery, DeviceSort, DeviceStatus

from ._schema import (
    access_tokens,
    audit,
    claim_codes,
    connection_attempts,
    device_groups,
    device_vitals,
    devices,
    firmware,
    hook_deliveries,
    integrations,
    key_policies,
    pending_keys,
    refresh_tokens,
    rekey_windows,
    udp_sessions,
    update_jobs,
    users,
)

__all__ = ["Access", "SqlRepositories", "device_from_row", "raw_device_columns"]

Statements = Literal["one", "several"]

#: Rows of a long list converted between two turns of the event loop (`DeviceRepository.all`).
ROWS_PER_TURN = 500


class Access(Protocol):
    """How a repository reaches the database."""

    def reading(self, action: str) -> AbstractAsyncContextManager[AsyncConnection]: ...

    def writing(
        self, action: str, *, conflicts: bool = False, statements: Statements = "one"
    ) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection to write with. `conflicts` lets `IntegrityError` through (and, inside a transaction,
        confines the failed statement to a savepoint so the transaction goes on); a block that runs more than
        one statement says so, so that they form one transaction."""
        ...

    def point_read(self, sql: str, params: tuple[Any, ...], action: str) -> tuple[Any, ...] | Literal[False] | None:
        """One row by a plain SQL statement, without SQLAlchemy, where the store has a fast path for it (the
        handshake's device lookup); False when it has none here (inside a transaction, or another database)."""
        ...


# -- rows <-> records ---------------------------------------------------------------------------


def _aware(value: datetime, field: str) -> datetime:
    # Checked before the query runs: a naive datetime is the caller's mistake, not the database's.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field} must be an aware datetime, got the naive {value.isoformat()}")
    return value


def _optional_aware(value: datetime | None, field: str) -> datetime | None:
    return None if value is None else _aware(value, field)


def _device_values(device: DeviceRecord) -> dict[str, Any]:
    return {
        "id": device.id.lower(),
        "name": device.name,
        "owner": device.owner,
        "public_key_der": device.public_key_der,
        "key_fingerprint": device.key_fingerprint,
        "platform_id": device.platform_id,
        "product_id": device.product_id,
        "product_version": device.product_version,
        "system_version": device.system_version,
        "hello_flags": device.hello_flags,
        "functions": list(device.functions),
        "variables": [{"name": variable.name, "type": variable.type} for variable in device.variables],
        "online": device.online,
        "last_heard": _optional_aware(device.last_heard, "last_heard"),
        "last_address": device.last_address,
        "created_at": _optional_aware(device.created_at, "created_at"),
        "notes": device.notes,
        "last_handshake_at": _optional_aware(device.last_handshake_at, "last_handshake_at"),
    }


#: The columns of a device in table order, for the plain-SQL point read.
_DEVICE_COLUMNS = tuple(column.name for column in devices.columns)


def raw_device_columns() -> tuple[str, ...]:
    return _DEVICE_COLUMNS


_SELECT_DEVICE = f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM devices WHERE id = ?"
_SELECT_DEVICE_BY_OWNER_NAME = f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM devices WHERE owner = ? AND name = ?"
# Every API request resolves its token and the token's user: point reads too (measured in bench/latency.py).
_TOKEN_COLUMNS = tuple(column.name for column in access_tokens.columns)
_SELECT_TOKEN = f"SELECT {', '.join(_TOKEN_COLUMNS)} FROM access_tokens WHERE token_hash = ?"
_USER_COLUMNS = tuple(column.name for column in users.columns)
_SELECT_USER = f"SELECT {', '.join(_USER_COLUMNS)} FROM users WHERE username = ?"
_REKEY_COLUMNS = tuple(column.name for column in rekey_windows.columns)
_SELECT_REKEY = f"SELECT {', '.join(_REKEY_COLUMNS)} FROM rekey_windows WHERE device_id = ?"
_REKEY_TIMES = ("until", "armed_at", "accepted_at")


def _raw_time(value: str | None) -> datetime | None:
    """A UTCDateTime column read without SQLAlchemy: SQLite holds the UTC wall time as ISO text."""
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def device_from_row(row: Mapping[Any, Any], *, raw: bool = False) -> DeviceRecord:
    """A device from a row; `raw`: the row comes straight from sqlite3, so JSON and times are still text."""
    functions, variables = row["functions"], row["variables"]
    last_heard, created_at, handshake = row["last_heard"], row["created_at"], row["last_handshake_at"]
    if raw:
        functions, variables = json.loads(functions), json.loads(variables)
        last_heard, created_at, handshake = _raw_time(last_heard), _raw_time(created_at), _raw_time(handshake)
    return DeviceRecord(
        id=row["id"],
        name=row["name"],
        owner=row["owner"],
        public_key_der=row["public_key_der"],
        key_fingerprint=row["key_fingerprint"],
        platform_id=row["platform_id"],
        product_id=row["product_id"],
        product_version=row["product_version"],
        system_version=row["system_version"],
        hello_flags=row["hello_flags"],
        functions=list(functions),
        variables=[Variable(name=item["name"], type=item["type"]) for item in variables],
        online=bool(row["online"]),
        last_heard=last_heard,
        last_address=row["last_address"],
        created_at=created_at,
        notes=row["notes"],
        last_handshake_at=handshake,
    )


def _attempt_values(attempt: ConnectionAttempt) -> dict[str, Any]:
    # The id is the database's to assign: a record that already has one is recorded again as new.
    return {
        "started_at": _aware(attempt.started_at, "started_at"),
        "peer_address": attempt.peer_address,
        "outcome": AttemptOutcome(attempt.outcome).value,
        "step": attempt.step,
        "reason": attempt.reason,
        "detail": attempt.detail,
        "device_id": None if attempt.device_id is None else attempt.device_id.lower(),
        "presented_fingerprint": attempt.presented_fingerprint,
        "stored_fingerprint": attempt.stored_fingerprint,
        "duration": attempt.duration,
        "proven": attempt.proven,
    }


def _attempt_from_row(row: Mapping[Any, Any]) -> ConnectionAttempt:
    return ConnectionAttempt(
        id=row["id"],
        started_at=row["started_at"],
        peer_address=row["peer_address"],
        outcome=AttemptOutcome(row["outcome"]),
        step=row["step"],
        reason=row["reason"],
        detail=row["detail"],
        device_id=row["device_id"],
        presented_fingerprint=row["presented_fingerprint"],
        stored_fingerprint=row["stored_fingerprint"],
        duration=row["duration"],
        proven=None if row["proven"] is None else bool(row["proven"]),
    )


def _user_values(user: User) -> dict[str, Any]:
    return {
        "username": user.username.lower(),
        "password_hash": user.password_hash,
        "created_at": _aware(user.created_at, "created_at"),
        "role": Role(user.role).value,
    }


def _user_from_row(row: Mapping[Any, Any]) -> User:
    return User(
        username=row["username"],
        password_hash=row["password_hash"],
        created_at=row["created_at"],
        role=Role(row["role"]),
    )


def _policy_from_row(row: Mapping[Any, Any]) -> KeyPolicy:
    return KeyPolicy(
        scope=row["scope"],
        mode=KeyPolicyMode(row["mode"]),
        trust_on_first_use=bool(row["trust_on_first_use"]),
        updated_at=row["updated_at"],
        updated_by=row["updated_by"],
        self_registration=bool(row["self_registration"]),
    )


def _token_values(token: AccessToken) -> dict[str, Any]:
    return {
        "token_hash": token.token_hash.lower(),
        "username": token.username.lower(),
        "client_id": token.client_id,
        "created_at": _aware(token.created_at, "created_at"),
        "expires_at": _optional_aware(token.expires_at, "expires_at"),
        "family": token.family,
    }


def _refresh_values(token: RefreshToken) -> dict[str, Any]:
    return {
        "token_hash": token.token_hash.lower(),
        "username": token.username.lower(),
        "client_id": token.client_id,
        "created_at": _aware(token.created_at, "created_at"),
        "expires_at": _aware(token.expires_at, "expires_at"),
        "family": token.family,
        "spent_at": _optional_aware(token.spent_at, "spent_at"),
    }


def _refresh_from_row(row: Mapping[Any, Any]) -> RefreshToken:
    return RefreshToken(
        token_hash=row["token_hash"],
        username=row["username"],
        client_id=row["client_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        family=row["family"],
        spent_at=row["spent_at"],
    )


def _token_from_row(row: Mapping[Any, Any]) -> AccessToken:
    return AccessToken(
        token_hash=row["token_hash"],
        username=row["username"],
        client_id=row["client_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        family=row["family"],
    )


def _window_values(window: RekeyWindow) -> dict[str, Any]:
    return {
        "device_id": window.device_id.lower(),
        "until": _aware(window.until, "until"),
        "armed_by": window.armed_by,
        "armed_at": _aware(window.armed_at, "armed_at"),
        "accepted_fingerprint": window.accepted_fingerprint,
        "accepted_at": _optional_aware(window.accepted_at, "accepted_at"),
        "previous_key_der": window.previous_key_der,
        "previous_fingerprint": window.previous_fingerprint,
    }


def _pending_values(pending: PendingKey) -> dict[str, Any]:
    return {
        "device_id": pending.device_id.lower(),
        "public_key_der": pending.public_key_der,
        "fingerprint": pending.fingerprint,
        "stored_fingerprint": pending.stored_fingerprint,
        "first_seen": _aware(pending.first_seen, "first_seen"),
        "last_seen": _aware(pending.last_seen, "last_seen"),
        "attempts": pending.attempts,
        "peer_address": pending.peer_address,
    }


def _audit_values(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": _aware(entry.at, "at"),
        "device_id": None if entry.device_id is None else entry.device_id.lower(),
        "action": entry.action,
        "actor": entry.actor,
        "old_fingerprint": entry.old_fingerprint,
        "new_fingerprint": entry.new_fingerprint,
        "detail": entry.detail,
        "subject": entry.subject,
    }


def _claim_code_values(code: ClaimCode) -> dict[str, Any]:
    return {
        "code_hash": code.code_hash.lower(),
        "issued_by": code.issued_by,
        "created_at": _aware(code.created_at, "created_at"),
        "expires_at": _aware(code.expires_at, "expires_at"),
        "device_id": None if code.device_id is None else code.device_id.lower(),
        "claimant": None if code.claimant is None else code.claimant.lower(),
    }


def _firmware_values(record: FirmwareRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in FirmwareRecord.__dataclass_fields__}
    values["sha256"] = record.sha256.lower()
    values["uploaded_at"] = _aware(record.uploaded_at, "uploaded_at")
    return values


def _job_values(job: UpdateJob) -> dict[str, Any]:
    # The id is the database's to assign.
    values = {name: getattr(job, name) for name in UpdateJob.__dataclass_fields__ if name != "id"}
    values["device_id"] = job.device_id.lower()
    values["state"] = JobState(job.state).value
    values["created_at"] = _aware(job.created_at, "created_at")
    for name in ("started_at", "finished_at", "updated_at"):
        values[name] = _optional_aware(values[name], name)
    return values


def _job_from_row(row: Mapping[Any, Any]) -> UpdateJob:
    values = dict(row)
    values["state"] = JobState(values["state"])
    return UpdateJob(**values)


def _limit(limit: int) -> int:
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    return limit


# Built once: building a statement costs more than running a cached one.
_INSERT_DEVICE = insert(devices)
_UPDATE_DEVICE = update(devices).where(devices.c.id == bindparam("match_id"))
#: What a connection changes: never the name, owner or key, which only people change (see update_states).
_STATE_COLUMNS = (
    "platform_id",
    "product_id",
    "product_version",
    "system_version",
    "hello_flags",
    "functions",
    "variables",
    "online",
    "last_heard",
    "last_address",
    "last_handshake_at",
)
_UPDATE_DEVICE_STATE = (
    update(devices)
    .where(devices.c.id == bindparam("match_id"))
    .values({name: bindparam(name) for name in _STATE_COLUMNS})
)
_INSERT_ATTEMPT = insert(connection_attempts)


# -- the repositories -------------------------------------------------------------------------------


class _Repository:
    __slots__ = ("_db",)

    def __init__(self, db: Access) -> None:
        self._db = db

    async def _first(self, query: Any, action: str) -> RowMapping | None:
        async with self._db.reading(action) as conn:
            return (await conn.execute(query)).mappings().first()

    async def _rows(self, query: Any, action: str) -> Sequence[RowMapping]:
        async with self._db.reading(action) as conn:
            return (await conn.execute(query)).mappings().all()

    async def _upsert(self, table: Any, keys: tuple[str, ...], values: dict[str, Any], action: str) -> None:
        condition = [table.c[key] == values[key] for key in keys]
        async with self._db.writing(action, statements="several") as conn:
            result = await conn.execute(update(table).where(*condition).values(values))
            if result.rowcount == 0:
                await conn.execute(insert(table).values(values))

    async def _delete(self, table: Any, condition: Any, action: str) -> int:
        async with self._db.writing(action) as conn:
            result = await conn.execute(delete(table).where(condition))
        return int(result.rowcount)


class SqlDevices(_Repository):
    __slots__ = ()

    async def get(self, device_id: str) -> DeviceRecord | None:
        row = self._db.point_read(_SELECT_DEVICE, (device_id.lower(),), "read a device")
        if row is not False:
            return None if row is None else device_from_row(dict(zip(_DEVICE_COLUMNS, row, strict=True)), raw=True)
        found = await self._first(select(devices).where(devices.c.id == device_id.lower()), "read a device")
        return None if found is None else device_from_row(found)

    async def find(self, id_or_name: str, *, owner: str | None = None) -> DeviceRecord | None:
        device_id = id_or_name.lower()
        # An id wins over a name that happens to look like it: by id first, then by name.
        row = self._db.point_read(_SELECT_DEVICE, (device_id,), "find a device")
        if row is None and owner is not None:
            row = self._db.point_read(_SELECT_DEVICE_BY_OWNER_NAME, (owner, id_or_name), "find a device")
        if row is not False and (row is not None or owner is not None):
            return None if row is None else device_from_row(dict(zip(_DEVICE_COLUMNS, row, strict=True)), raw=True)
        # Across owners (an admin's view), or where the store has no fast path: a name may be several devices'.
        named = devices.c.name == id_or_name
        if owner is not None:
            named = and_(named, devices.c.owner == owner)
        query = select(devices).where(or_(devices.c.id == device_id, named)).limit(3)
        rows = await self._rows(query, "find a device")
        # An id wins over a name that happens to look like it.
        by_id = [row for row in rows if row["id"] == device_id]
        if by_id:
            return device_from_row(by_id[0])
        if len(rows) > 1:
            raise DeviceNameAmbiguousError(id_or_name)
        return device_from_row(rows[0]) if rows else None

    async def all(self, owner: str | None = None) -> list[DeviceRecord]:
        query = select(devices).order_by(devices.c.id)
        if owner is not None:
            query = query.where(devices.c.owner == owner)
        found: list[DeviceRecord] = []
        async with self._db.reading("list devices") as conn:
            result = (await conn.execute(query)).mappings()
            # A fleet's rows are converted a few hundred at a time, the event loop served in between: the
            # devices' pings and handshakes on the same loop wait for one part, not for the whole fleet.
            for part in result.partitions(ROWS_PER_TURN):
                found += [device_from_row(row) for row in part]
                await asyncio.sleep(0)
        return found

    async def add(self, device: DeviceRecord) -> None:
        values = _device_values(device)
        try:
            async with self._db.writing("add a device", conflicts=True) as conn:
                await conn.execute(_INSERT_DEVICE, values)
        except IntegrityError as exc:
            raise DeviceExistsError(await self._conflict(values)) from exc

    async def add_many(self, new_devices: list[DeviceRecord]) -> None:
        if not new_devices:
            return
        rows = [_device_values(device) for device in new_devices]
        ids: set[str] = set()
        names: set[tuple[str, str]] = set()
        for values in rows:
            if values["id"] in ids:
                raise DeviceExistsError(f"device {values['id']} is listed twice")
            owned_name = (values["owner"], values["name"])
            if values["name"] is not None and values["owner"] is not None and owned_name in names:
                raise DeviceExistsError(f"the name {values['name']!r} is given to two devices of one owner")
            ids.add(values["id"])
            names.add(owned_name)
        try:
            async with self._db.writing("add devices", conflicts=True, statements="several") as conn:
                await conn.execute(_INSERT_DEVICE, rows)
        except IntegrityError as exc:
            for values in rows:
                if (taken := await self._taken(values)) is not None:
                    raise DeviceExistsError(taken) from exc
            raise DeviceExistsError(f"one of the {len(rows)} devices was registered concurrently") from exc

    async def save(self, device: DeviceRecord) -> None:
        values = _device_values(device)
        try:
            async with self._db.writing("save a device", conflicts=True, statements="several") as conn:
                # UPDATE then INSERT is the portable upsert; the transaction makes the pair atomic.
                result = await conn.execute(_UPDATE_DEVICE, {"match_id": values["id"], **values})
                if result.rowcount == 0:
                    await conn.execute(_INSERT_DEVICE, values)
        except IntegrityError as exc:
            raise DeviceExistsError(await self._conflict(values)) from exc

    async def update_states(self, states: list[DeviceRecord]) -> None:
        if not states:
            return
        rows = []
        for device in states:
            values = _device_values(device)
            rows.append({"match_id": values["id"], **{name: values[name] for name in _STATE_COLUMNS}})
        # In id order (stable, so a device listed twice keeps its last state): two nodes writing batches that
        # share devices then lock their rows in the same order, and PostgreSQL cannot find them deadlocked.
        rows.sort(key=lambda row: row["match_id"])
        async with self._db.writing("update devices' state") as conn:
            await conn.execute(_UPDATE_DEVICE_STATE, rows)

    async def remove(self, device_id: str) -> bool:
        device_id = device_id.lower()
        async with self._db.writing("remove a device", statements="several") as conn:
            for table in (pending_keys, rekey_windows, device_groups, claim_codes, device_vitals):
                await conn.execute(delete(table).where(table.c.device_id == device_id))
            await conn.execute(delete(key_policies).where(key_policies.c.scope == device_id))
            result = await conn.execute(delete(devices).where(devices.c.id == device_id))
        return bool(result.rowcount)

    async def mark_all_offline(self) -> None:
        # One statement, but over many rows in the table's order rather than by id: it runs alone among the
        # writers ("several"), so that it cannot deadlock against a batch of state updates on PostgreSQL.
        async with self._db.writing("mark devices offline", statements="several") as conn:
            await conn.execute(update(devices).where(devices.c.online.is_(True)).values(online=False))

    async def search(self, query: DeviceQuery) -> DevicePage:
        conditions = _device_conditions(query)
        async with self._db.reading("search devices") as conn:
            total = (await conn.execute(select(func.count()).select_from(devices).where(*conditions))).scalar_one()
            if query.limit <= 0 or total <= query.offset:
                return DevicePage(int(total))
            column = devices.c[query.sort.value]
            # Devices never heard from (or without the field) last either way: they say least.
            order = [column.is_(None), column.desc() if query.descending else column.asc()]
            if query.sort is not DeviceSort.ID:
                order.append(devices.c.id.desc() if query.descending else devices.c.id.asc())
            page = select(devices).where(*conditions).order_by(*order).offset(query.offset).limit(query.limit)
            rows = (await conn.execute(page)).mappings().all()
        return DevicePage(int(total), [device_from_row(row) for row in rows])

    async def _conflict(self, values: Mapping[Any, Any]) -> str:
        """Which of id and name is taken, for the message of `DeviceExistsError`."""
        taken = await self._taken(values)
        if taken:
            return taken
        named = f" or the name {values['name']!r}" if values["name"] is not None else ""
        return f"device {values['id']}{named} was registered concurrently"

    async def _taken(self, values: Mapping[Any, Any]) -> str | None:
        """What is already registered of this device's id and name, in words; None: neither."""
        device_id, name, owner = values["id"], values["name"], values["owner"]
        same_name = and_(devices.c.name == name, devices.c.owner == owner)
        query = select(devices.c.id, devices.c.name).where(or_(devices.c.id == device_id, same_name))
        async with self._db.reading("check a device's id and name") as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            if row.name == name and row.id != device_id and owner is not None:
                return f"the name {name!r} is already given to another device of {owner}'s ({row.id})"
        if any(row.id == device_id for row in rows):
            return f"device {device_id} is already registered"
        return None


def _failing_ids(since: datetime) -> Any:
    """The ids of the devices whose newest attempt since `since` failed."""
    table = connection_attempts
    newest = (
        select(
            table.c.device_id,
            table.c.outcome,
            func.row_number()
            .over(partition_by=table.c.device_id, order_by=(table.c.started_at.desc(), table.c.id.desc()))
            .label("n"),
        )
        .where(table.c.device_id.is_not(None), table.c.started_at >= _aware(since, "failing_since"))
        .subquery()
    )
    return select(newest.c.device_id).where(newest.c.n == 1, newest.c.outcome == AttemptOutcome.FAILED.value)


def _device_conditions(query: DeviceQuery) -> list[Any]:
    if query.offset < 0 or query.limit < 0:
        raise ValueError("offset and limit must not be negative")
    found: list[Any] = []
    if query.owner is not None:
        found.append(devices.c.owner == query.owner)
    if query.text:
        # LIKE with its wildcards escaped: the text is looked for as written.
        pattern = "%" + query.text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        found.append(
            or_(devices.c.id.like(pattern, escape="\\"), func.lower(devices.c.name).like(pattern, escape="\\"))
        )
    if query.status is DeviceStatus.ONLINE:
        found.append(devices.c.online.is_(true()))
    elif query.status is DeviceStatus.OFFLINE:
        found.append(devices.c.online.is_(false()))
    elif query.status is DeviceStatus.PENDING:
        found.append(devices.c.id.in_(select(pending_keys.c.device_id)))
    elif query.status is DeviceStatus.FAILING:
        if query.failing_since is None:
            raise ValueError("a search for failing devices needs failing_since")
        found.append(and_(devices.c.online.is_(false()), devices.c.id.in_(_failing_ids(query.failing_since))))
    if query.group is not None:
        members = select(device_groups.c.device_id).where(device_groups.c.group_name == query.group)
        found.append(devices.c.id.in_(members))
    for name in ("platform_id", "product_version", "system_version"):
        value = getattr(query, name)
        if value is not None:
            found.append(devices.c[name] == value)
    if query.seen_after is not None:
        found.append(devices.c.last_heard >= _aware(query.seen_after, "seen_after"))
    if query.seen_before is not None:
        found.append(devices.c.last_heard < _aware(query.seen_before, "seen_before"))
    return found


class SqlKeys(_Repository):
    __slots__ = ()

    async def get_policy(self, scope: str) -> KeyPolicy | None:
        query = select(key_policies).where(key_policies.c.scope == scope.lower())
        row = await self._first(query, "read a key policy")
        return None if row is None else _policy_from_row(row)

    async def set_policy(self, policy: KeyPolicy) -> None:
        values = {
            "scope": policy.scope.lower(),
            "mode": KeyPolicyMode(policy.mode).value,
            "trust_on_first_use": policy.trust_on_first_use,
            "updated_at": _aware(policy.updated_at or datetime.now(UTC), "updated_at"),
            "updated_by": policy.updated_by,
            "self_registration": policy.self_registration,
        }
        await self._upsert(key_policies, ("scope",), values, "set a key policy")

    async def remove_policy(self, scope: str) -> bool:
        return bool(await self._delete(key_policies, key_policies.c.scope == scope.lower(), "remove a key policy"))

    async def list_policies(self) -> list[KeyPolicy]:
        rows = await self._rows(select(key_policies).order_by(key_policies.c.scope), "list key policies")
        return [_policy_from_row(row) for row in rows]

    async def get_rekey(self, device_id: str) -> RekeyWindow | None:
        # Read at every handshake (a device that connects with its key closes its window): the fast path.
        raw = self._db.point_read(_SELECT_REKEY, (device_id.lower(),), "read a re-key window")
        if raw is not False:
            if raw is None:
                return None
            values = dict(zip(_REKEY_COLUMNS, raw, strict=True))
            for name in _REKEY_TIMES:
                values[name] = _raw_time(values[name])
            return RekeyWindow(**values)
        query = select(rekey_windows).where(rekey_windows.c.device_id == device_id.lower())
        row = await self._first(query, "read a re-key window")
        return None if row is None else RekeyWindow(**dict(row))

    async def save_rekey(self, window: RekeyWindow) -> None:
        await self._upsert(rekey_windows, ("device_id",), _window_values(window), "save a re-key window")

    async def remove_rekey(self, device_id: str) -> bool:
        table = rekey_windows
        return bool(await self._delete(table, table.c.device_id == device_id.lower(), "remove a re-key window"))

    async def list_rekeys(self) -> list[RekeyWindow]:
        query = select(rekey_windows).order_by(rekey_windows.c.until, rekey_windows.c.device_id)
        rows = await self._rows(query, "list re-key windows")
        return [RekeyWindow(**dict(row)) for row in rows]

    async def save_pending_key(self, pending: PendingKey) -> None:
        values = _pending_values(pending)
        await self._upsert(pending_keys, ("device_id", "fingerprint"), values, "save a pending key")

    async def list_pending_keys(self, device_id: str | None = None) -> list[PendingKey]:
        table = pending_keys
        query = select(table).order_by(table.c.first_seen, table.c.device_id, table.c.fingerprint)
        if device_id is not None:
            query = query.where(table.c.device_id == device_id.lower())
        rows = await self._rows(query, "list pending keys")
        return [PendingKey(**dict(row)) for row in rows]

    async def remove_pending_key(self, device_id: str, fingerprint: str | None = None) -> int:
        condition = pending_keys.c.device_id == device_id.lower()
        if fingerprint is not None:
            condition = condition & (pending_keys.c.fingerprint == fingerprint)
        return await self._delete(pending_keys, condition, "remove a pending key")

    async def add_claim_code(self, code: ClaimCode) -> None:
        async with self._db.writing("add a claim code") as conn:
            await conn.execute(insert(claim_codes).values(_claim_code_values(code)))

    async def take_claim_code(self, code_hash: str) -> ClaimCode | None:
        condition = claim_codes.c.code_hash == code_hash.lower()
        async with self._db.writing("use a claim code", statements="several") as conn:
            row = (await conn.execute(select(claim_codes).where(condition))).mappings().first()
            if row is None:
                return None
            await conn.execute(delete(claim_codes).where(condition))
        return ClaimCode(**dict(row))

    async def remove_expired_claim_codes(self, now: datetime) -> int:
        condition = claim_codes.c.expires_at <= _aware(now, "now")
        return await self._delete(claim_codes, condition, "remove expired claim codes")


class SqlAccounts(_Repository):
    __slots__ = ()

    async def add_user(self, user: User) -> None:
        values = _user_values(user)
        try:
            async with self._db.writing("add a user", conflicts=True) as conn:
                await conn.execute(insert(users).values(values))
        except IntegrityError as exc:
            # The primary key is the only constraint the values can break: every other column is set.
            raise UserExistsError(f"the username {values['username']!r} is already taken") from exc

    async def get_user(self, username: str) -> User | None:
        raw = self._db.point_read(_SELECT_USER, (username.lower(),), "read a user")
        if raw is not False:
            if raw is None:
                return None
            fields = dict(zip(_USER_COLUMNS, raw, strict=True))
            return _user_from_row({**fields, "created_at": _raw_time(fields["created_at"])})
        query = select(users).where(users.c.username == username.lower())
        row = await self._first(query, "read a user")
        return None if row is None else _user_from_row(row)

    async def save_user(self, user: User) -> bool:
        values = _user_values(user)
        query = (
            update(users)
            .where(users.c.username == values["username"])
            .values(password_hash=values["password_hash"], role=values["role"])
        )
        async with self._db.writing("save a user") as conn:
            result = await conn.execute(query)
        return bool(result.rowcount)

    async def list_users(self) -> list[User]:
        rows = await self._rows(select(users).order_by(users.c.username), "list users")
        return [_user_from_row(row) for row in rows]

    async def remove_user(self, username: str) -> bool:
        username = username.lower()
        async with self._db.writing("remove a user", statements="several") as conn:
            # Tokens and owners are cleared even when no such user exists: nothing stops a caller from adding a
            # token or an owner for a username that has no user, and removing that username should leave none.
            await conn.execute(delete(access_tokens).where(access_tokens.c.username == username))
            await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.username == username))
            # Owners are compared exactly, as `list` does: the domain writes the stored username.
            await conn.execute(update(devices).where(devices.c.owner == username).values(owner=None))
            await conn.execute(delete(claim_codes).where(claim_codes.c.claimant == username))
            # A username given again later must not inherit the hooks of the account that had it.
            owned = select(integrations.c.id).where(integrations.c.owner == username)
            await conn.execute(delete(hook_deliveries).where(hook_deliveries.c.integration_id.in_(owned)))
            await conn.execute(delete(integrations).where(integrations.c.owner == username))
            result = await conn.execute(delete(users).where(users.c.username == username))
        return bool(result.rowcount)

    async def add_token(self, token: AccessToken) -> None:
        values = _token_values(token)
        try:
            async with self._db.writing("add an access token", conflicts=True) as conn:
                await conn.execute(insert(access_tokens).values(values))
        except IntegrityError as exc:
            # Tokens are random: two with one hash means the caller stored the same token twice.
            raise ValueError(f"an access token with the hash {values['token_hash']} is already stored") from exc

    async def get_token(self, token_hash: str) -> AccessToken | None:
        raw = self._db.point_read(_SELECT_TOKEN, (token_hash.lower(),), "read an access token")
        if raw is not False:
            if raw is None:
                return None
            fields = dict(zip(_TOKEN_COLUMNS, raw, strict=True))
            return _token_from_row(
                {
                    **fields,
                    "created_at": _raw_time(fields["created_at"]),
                    "expires_at": _raw_time(fields["expires_at"]),
                }
            )
        query = select(access_tokens).where(access_tokens.c.token_hash == token_hash.lower())
        row = await self._first(query, "read an access token")
        return None if row is None else _token_from_row(row)

    async def list_tokens(self, username: str) -> list[AccessToken]:
        table = access_tokens
        # The hash breaks ties of creation time, so that the order does not change from one call to the next.
        query = (
            select(table)
            .where(table.c.username == username.lower())
            .order_by(table.c.created_at.desc(), table.c.token_hash)
        )
        rows = await self._rows(query, "list access tokens")
        return [_token_from_row(row) for row in rows]

    async def remove_token(self, token_hash: str) -> bool:
        condition = access_tokens.c.token_hash == token_hash.lower()
        return bool(await self._delete(access_tokens, condition, "remove an access token"))

    async def remove_expired_tokens(self, now: datetime) -> int:
        moment = _aware(now, "now")
        async with self._db.writing("remove expired tokens", statements="several") as conn:
            # A NULL expires_at never compares true, so access tokens that never expire stay.
            access = await conn.execute(delete(access_tokens).where(access_tokens.c.expires_at <= moment))
            refresh = await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.expires_at <= moment))
        return int(access.rowcount) + int(refresh.rowcount)

    async def add_refresh_token(self, token: RefreshToken) -> None:
        values = _refresh_values(token)
        try:
            async with self._db.writing("add a refresh token", conflicts=True) as conn:
                await conn.execute(insert(refresh_tokens).values(values))
        except IntegrityError as exc:
            raise ValueError(f"a refresh token with the hash {values['token_hash']} is already stored") from exc

    async def take_refresh_token(self, token_hash: str, now: datetime) -> RefreshToken | None:
        moment = _aware(now, "now")
        condition = refresh_tokens.c.token_hash == token_hash.lower()
        async with self._db.writing("use a refresh token", statements="several") as conn:
            row = (await conn.execute(select(refresh_tokens).where(condition))).mappings().first()
            if row is None or row["spent_at"] is not None:
                return None if row is None else _refresh_from_row(row)
            # Whoever marks the row spent took the token: a second caller that read it unspent too marks
            # nothing, and is answered with the token as the first left it.
            unspent = condition & refresh_tokens.c.spent_at.is_(None)
            taken = await conn.execute(update(refresh_tokens).where(unspent).values(spent_at=moment))
            if taken.rowcount != 1:
                row = (await conn.execute(select(refresh_tokens).where(condition))).mappings().first()
                return None if row is None else _refresh_from_row(row)
        return _refresh_from_row(row)

    async def remove_token_family(self, family: str) -> int:
        async with self._db.writing("revoke a family of tokens", statements="several") as conn:
            refresh = await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.family == family))
            access = await conn.execute(delete(access_tokens).where(access_tokens.c.family == family))
        return int(refresh.rowcount) + int(access.rowcount)

    async def remove_expired_refresh_tokens(self, now: datetime) -> int:
        condition = refresh_tokens.c.expires_at <= _aware(now, "now")
        return await self._delete(refresh_tokens, condition, "remove expired refresh tokens")

    async def remove_refresh_tokens(self, username: str) -> int:
        condition = refresh_tokens.c.username == username.lower()
        return await self._delete(refresh_tokens, condition, "remove refresh tokens")


class SqlAttempts(_Repository):
    __slots__ = ()

    async def add(self, attempts: list[ConnectionAttempt]) -> None:
        if not attempts:
            return
        rows = [_attempt_values(attempt) for attempt in attempts]
        async with self._db.writing("record connection attempts") as conn:
            await conn.execute(_INSERT_ATTEMPT, rows)

    async def recent(
        self,
        device_id: str | None = None,
        *,
        since: datetime | None = None,
        peer_address: str | None = None,
        limit: int = 100,
    ) -> list[ConnectionAttempt]:
        table = connection_attempts
        query = select(table).order_by(table.c.started_at.desc(), table.c.id.desc()).limit(_limit(limit))
        if device_id is not None:
            query = query.where(table.c.device_id == device_id.lower())
        if since is not None:
            query = query.where(table.c.started_at >= _aware(since, "since"))
        if peer_address is not None:
            query = query.where(table.c.peer_address == peer_address)
        rows = await self._rows(query, "list connection attempts")
        return [_attempt_from_row(row) for row in rows]

    async def prune(self, *, before: datetime, keep: int) -> int:
        table = connection_attempts
        _limit(keep)
        async with self._db.writing("prune connection attempts", statements="several") as conn:
            old = await conn.execute(delete(table).where(table.c.started_at < _aware(before, "before")))
            # The newest `keep` by start time (ties by id); everything older than the last of them goes.
            boundary = (
                await conn.execute(
                    select(table.c.started_at, table.c.id)
                    .order_by(table.c.started_at.desc(), table.c.id.desc())
                    .offset(keep)
                    .limit(1)
                )
            ).first()
            extra = 0
            if boundary is not None:
                started, ident = boundary
                condition = (table.c.started_at < started) | ((table.c.started_at == started) & (table.c.id <= ident))
                extra = (await conn.execute(delete(table).where(condition))).rowcount
        return int(old.rowcount) + int(extra)

    async def latest(self, device_ids: list[str], *, since: datetime | None = None) -> dict[str, ConnectionAttempt]:
        wanted = sorted({d.lower() for d in device_ids})
        if not wanted:
            return {}
        table = connection_attempts
        newest = select(
            table,
            func.row_number()
            .over(partition_by=table.c.device_id, order_by=(table.c.started_at.desc(), table.c.id.desc()))
            .label("n"),
        ).where(table.c.device_id.in_(wanted))
        if since is not None:
            newest = newest.where(table.c.started_at >= _aware(since, "since"))
        ranked = newest.subquery()
        query = select(*[ranked.c[c.name] for c in table.columns]).where(ranked.c.n == 1)
        rows = await self._rows(query, "read the latest connection attempts")
        return {row["device_id"]: _attempt_from_row(row) for row in rows}


class SqlUpdates(_Repository):
    __slots__ = ()

    async def save_firmware(self, firmware_record: FirmwareRecord) -> None:
        values = _firmware_values(firmware_record)
        async with self._db.writing("save a firmware record", statements="several") as conn:
            query = select(firmware.c.sha256).where(firmware.c.sha256 == values["sha256"])
            if (await conn.execute(query)).first() is None:
                await conn.execute(insert(firmware).values(values))

    async def get_firmware(self, sha256: str) -> FirmwareRecord | None:
        query = select(firmware).where(firmware.c.sha256 == sha256.lower())
        row = await self._first(query, "read a firmware record")
        return None if row is None else FirmwareRecord(**dict(row))

    async def add_job(self, job: UpdateJob) -> int:
        values = _job_values(job)
        async with self._db.writing("record an update job") as conn:
            result = await conn.execute(insert(update_jobs).values(values))
        key = result.inserted_primary_key
        job.id = int(key[0]) if key else 0
        return job.id

    async def save_job(self, job: UpdateJob) -> None:
        if job.id is None:
            raise ValueError("the job has no id: add it first")
        query = update(update_jobs).where(update_jobs.c.id == job.id).values(_job_values(job))
        async with self._db.writing("save an update job") as conn:
            await conn.execute(query)

    async def get_job(self, job_id: int) -> UpdateJob | None:
        query = select(update_jobs).where(update_jobs.c.id == job_id)
        row = await self._first(query, "read an update job")
        return None if row is None else _job_from_row(row)

    async def list_jobs(
        self,
        *,
        device_id: str | None = None,
        rollout: str | None = None,
        unfinished: bool = False,
        limit: int = 100,
    ) -> list[UpdateJob]:
        query = select(update_jobs).order_by(update_jobs.c.id.desc()).limit(_limit(limit))
        if device_id is not None:
            query = query.where(update_jobs.c.device_id == device_id.lower())
        if rollout is not None:
            query = query.where(update_jobs.c.rollout == rollout)
        if unfinished:
            query = query.where(update_jobs.c.state.in_([s.value for s in JobState if not s.finished]))
        rows = await self._rows(query, "list update jobs")
        return [_job_from_row(row) for row in rows]

    async def add_to_group(self, group: str, device_ids: list[str]) -> int:
        wanted = sorted({d.lower() for d in device_ids})
        async with self._db.writing("add devices to a group", statements="several") as conn:
            query = select(device_groups.c.device_id).where(device_groups.c.group_name == group)
            present = set((await conn.execute(query)).scalars())
            new = [d for d in wanted if d not in present]
            if new:
                await conn.execute(insert(device_groups), [{"group_name": group, "device_id": d} for d in new])
        return len(new)

    async def remove_from_group(self, group: str, device_ids: list[str]) -> int:
        ids = [d.lower() for d in device_ids]
        condition = (device_groups.c.group_name == group) & device_groups.c.device_id.in_(ids)
        return await self._delete(device_groups, condition, "remove devices from a group")

    async def list_group(self, group: str) -> list[str]:
        query = select(device_groups.c.device_id).where(device_groups.c.group_name == group)
        async with self._db.reading("list a group") as conn:
            return sorted((await conn.execute(query.order_by(device_groups.c.device_id))).scalars())

    async def list_groups(self) -> dict[str, int]:
        query = (
            select(device_groups.c.group_name, func.count())
            .group_by(device_groups.c.group_name)
            .order_by(device_groups.c.group_name)
        )
        async with self._db.reading("list groups") as conn:
            rows = (await conn.execute(query)).all()
        return {str(row[0]): int(row[1]) for row in rows}


class SqlAudit(_Repository):
    __slots__ = ()

    async def add(self, entry: AuditEntry) -> int:
        async with self._db.writing("record an audit entry") as conn:
            result = await conn.execute(insert(audit).values(_audit_values(entry)))
        key = result.inserted_primary_key
        entry.id = int(key[0]) if key else 0
        return entry.id

    async def recent(
        self, device_id: str | None = None, *, subject: str | None = None, limit: int = 100
    ) -> list[AuditEntry]:
        query = select(audit).order_by(audit.c.at.desc(), audit.c.id.desc()).limit(_limit(limit))
        if device_id is not None:
            query = query.where(audit.c.device_id == device_id.lower())
        if subject is not None:
            query = query.where(audit.c.subject == subject)
        rows = await self._rows(query, "list the audit trail")
        return [AuditEntry(**dict(row)) for row in rows]


def _integration_values(integration: Integration) -> dict[str, Any]:
    values = {name: getattr(integration, name) for name in Integration.__dataclass_fields__}
    values["owner"] = integration.owner.lower()
    values["created_at"] = _aware(integration.created_at, "created_at")
    values["updated_at"] = _optional_aware(integration.updated_at, "updated_at")
    values["templates"] = dict(integration.templates)
    return values


def _delivery_values(delivery: HookDelivery) -> dict[str, Any]:
    # The id is the database's to assign.
    values = {name: getattr(delivery, name) for name in HookDelivery.__dataclass_fields__ if name != "id"}
    values["at"] = _aware(delivery.at, "at")
    return values


class SqlIntegrations(_Repository):
    __slots__ = ()

    async def add(self, integration: Integration) -> None:
        async with self._db.writing("add an integration") as conn:
            await conn.execute(insert(integrations).values(_integration_values(integration)))

    async def get(self, integration_id: str) -> Integration | None:
        row = await self._first(select(integrations).where(integrations.c.id == integration_id), "read an integration")
        return None if row is None else Integration(**dict(row))

    async def all(self, owner: str | None = None) -> list[Integration]:
        query = select(integrations).order_by(integrations.c.created_at, integrations.c.id)
        if owner is not None:
            query = query.where(integrations.c.owner == owner.lower())
        return [Integration(**dict(row)) for row in await self._rows(query, "list integrations")]

    async def save(self, integration: Integration) -> bool:
        values = _integration_values(integration)
        query = update(integrations).where(integrations.c.id == values["id"]).values(values)
        async with self._db.writing("save an integration") as conn:
            result = await conn.execute(query)
        return bool(result.rowcount)

    async def remove(self, integration_id: str) -> bool:
        async with self._db.writing("remove an integration", statements="several") as conn:
            await conn.execute(delete(hook_deliveries).where(hook_deliveries.c.integration_id == integration_id))
            result = await conn.execute(delete(integrations).where(integrations.c.id == integration_id))
        return bool(result.rowcount)

    async def add_deliveries(self, deliveries: list[HookDelivery], *, keep: int) -> None:
        _limit(keep)
        if not deliveries:
            return
        table = hook_deliveries
        async with self._db.writing("record hook deliveries", statements="several") as conn:
            wanted = {d.integration_id for d in deliveries}
            query = select(integrations.c.id).where(integrations.c.id.in_(wanted))
            present = set((await conn.execute(query)).scalars())
            rows = [_delivery_values(d) for d in deliveries if d.integration_id in present]
            if rows:
                await conn.execute(insert(table), rows)
            for integration_id in sorted(present):
                boundary = (
                    await conn.execute(
                        select(table.c.id)
                        .where(table.c.integration_id == integration_id)
                        .order_by(table.c.id.desc())
                        .offset(keep)
                        .limit(1)
                    )
                ).scalar()
                if boundary is not None:
                    await conn.execute(
                        delete(table).where((table.c.integration_id == integration_id) & (table.c.id <= boundary))
                    )

    async def deliveries(self, integration_id: str, *, limit: int = 100) -> list[HookDelivery]:
        table = hook_deliveries
        query = select(table).where(table.c.integration_id == integration_id)
        query = query.order_by(table.c.id.desc()).limit(_limit(limit))
        return [HookDelivery(**dict(row)) for row in await self._rows(query, "list hook deliveries")]


class SqlVitals(_Repository):
    __slots__ = ()

    async def add(self, record: VitalsRecord, *, keep: int) -> int:
        _limit(keep)
        table = device_vitals
        device_id = record.device_id.lower()
        values = {
            "device_id": device_id,
            "updated_at": _aware(record.updated_at, "updated_at"),
            "payload": record.payload,
        }
        async with self._db.writing("record device vitals", statements="several") as conn:
            result = await conn.execute(insert(table).values(values))
            boundary = (
                await conn.execute(
                    select(table.c.updated_at, table.c.id)
                    .where(table.c.device_id == device_id)
                    .order_by(table.c.updated_at.desc(), table.c.id.desc())
                    .offset(keep)
                    .limit(1)
                )
            ).first()
            if boundary is not None:
                at, ident = boundary
                older = (table.c.updated_at < at) | ((table.c.updated_at == at) & (table.c.id <= ident))
                await conn.execute(delete(table).where((table.c.device_id == device_id) & older))
        key = result.inserted_primary_key
        record.id = int(key[0]) if key else 0
        return record.id

    async def history(
        self,
        device_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[VitalsRecord]:
        table = device_vitals
        query = (
            select(table)
            .where(table.c.device_id == device_id.lower())
            .order_by(table.c.updated_at.desc(), table.c.id.desc())
            .limit(_limit(limit))
        )
        if since is not None:
            query = query.where(table.c.updated_at >= _aware(since, "since"))
        if until is not None:
            query = query.where(table.c.updated_at <= _aware(until, "until"))
        rows = await self._rows(query, "list device vitals")
        return [VitalsRecord(**dict(row)) for row in reversed(rows)]

    async def last(self, device_id: str) -> VitalsRecord | None:
        found = await self.history(device_id, limit=1)
        return found[0] if found else None

    async def prune(self, *, before: datetime) -> int:
        condition = device_vitals.c.updated_at < _aware(before, "before")
        return await self._delete(device_vitals, condition, "prune device vitals")


class SqlUdpSessions(_Repository):
    __slots__ = ()

    async def save(self, session: UdpSession) -> None:
        values: dict[str, Any] = {
            "connection_id": session.connection_id,
            "session": session.session,
            "updated_at": _aware(session.updated_at, "updated_at"),
            "device_id": session.device_id.lower() if session.device_id else None,
            "hello": session.hello,
            "sequence_limit": session.sequence_limit,
        }
        stored = udp_sessions.c.sequence_limit
        # The limit only rises: another node may have reserved past this one's since it last read it.
        changes = dict(values, sequence_limit=stored)
        if session.sequence_limit is not None:
            limit = literal(session.sequence_limit, BigInteger)
            changes["sequence_limit"] = case((or_(stored.is_(None), stored < limit), limit), else_=stored)
        async with self._db.writing("save a UDP session", statements="several") as conn:
            condition = udp_sessions.c.connection_id == session.connection_id
            result = await conn.execute(update(udp_sessions).where(condition).values(changes))
            if result.rowcount == 0:
                await conn.execute(insert(udp_sessions).values(values))

    async def get(self, connection_id: bytes) -> UdpSession | None:
        query = select(udp_sessions).where(udp_sessions.c.connection_id == connection_id)
        row = await self._first(query, "read a UDP session")
        return None if row is None else UdpSession(**dict(row))

    async def of_device(self, device_id: str, *, limit: int) -> list[UdpSession]:
        query = (
            select(udp_sessions)
            .where(udp_sessions.c.device_id == device_id.lower())
            .order_by(udp_sessions.c.updated_at.desc())
            .limit(limit)
        )
        rows = await self._rows(query, "read a device's UDP sessions")
        return [UdpSession(**dict(row)) for row in rows]

    async def reserve(self, connection_id: bytes, count: int, *, floor: int = 0) -> int | None:
        if count < 1 or floor < 0:
            raise ValueError("reserve at least one sequence number, from a floor of 0 or more")
        stored = func.coalesce(udp_sessions.c.sequence_limit, 0)
        bottom = literal(floor, BigInteger)
        # One statement: PostgreSQL locks the row, so two nodes reserving at once get two blocks.
        statement = (
            update(udp_sessions)
            .where(udp_sessions.c.connection_id == connection_id)
            .values(sequence_limit=case((stored > bottom, stored), else_=bottom) + count)
            .returning(udp_sessions.c.sequence_limit)
        )
        async with self._db.writing("reserve a UDP session's sequence numbers") as conn:
            row = (await conn.execute(statement)).first()
        return None if row is None else int(row[0])

    async def all(self) -> list[UdpSession]:
        rows = await self._rows(select(udp_sessions).order_by(udp_sessions.c.updated_at), "list UDP sessions")
        return [UdpSession(**dict(row)) for row in rows]

    async def remove(self, connection_id: bytes) -> bool:
        condition = udp_sessions.c.connection_id == connection_id
        return bool(await self._delete(udp_sessions, condition, "remove a UDP session"))

    async def prune(self, *, before: datetime) -> int:
        condition = udp_sessions.c.updated_at < _aware(before, "before")
        return await self._delete(udp_sessions, condition, "prune UDP sessions")


class SqlRepositories:
    """Every repository over one `Access`: a store's per-call access, or one transaction."""

    __slots__ = (
        "accounts",
        "attempts",
        "audit",
        "devices",
        "integrations",
        "keys",
        "udp_sessions",
        "updates",
        "vitals",
    )

    def __init__(self, db: Access) -> None:
        self.devices = SqlDevices(db)
        self.keys = SqlKeys(db)
        self.accounts = SqlAccounts(db)
        self.attempts = SqlAttempts(db)
        self.updates = SqlUpdates(db)
        self.audit = SqlAudit(db)
        self.integrations = SqlIntegrations(db)
        self.vitals = SqlVitals(db)
        self.udp_sessions = SqlUdpSessions(db)


class TransactionAccess:
    """The `Access` of one transaction: every statement on its connection; a statement that may conflict runs
    in a savepoint, so that its failure leaves the transaction usable (PostgreSQL aborts a transaction at its
    first error otherwise)."""

    __slots__ = ("_conn", "_describe")

    def __init__(self, conn: AsyncConnection, describe: Any) -> None:
        self._conn = conn
        #: `(action, exc) -> Exception`: the store's translation of a database failure.
        self._describe = describe

    @asynccontextmanager
    async def reading(self, action: str) -> AsyncIterator[AsyncConnection]:
        with self._describe(action):
            yield self._conn

    @asynccontextmanager
    async def writing(
        self, action: str, *, conflicts: bool = False, statements: Statements = "one"
    ) -> AsyncIterator[AsyncConnection]:
        with self._describe(action, conflicts=conflicts):
            if conflicts:
                async with self._conn.begin_nested():
                    yield self._conn
            else:
                yield self._conn

    def point_read(self, sql: str, params: tuple[Any, ...], action: str) -> Literal[False]:
        return False
