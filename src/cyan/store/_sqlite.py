"""The embedded default store: one SQLite file, through SQLAlchemy Core over aiosqlite."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from sqlalchemy import (
    URL,
    Connection,
    RowMapping,
    bindparam,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cyan.cloud.models import (
    AccessToken,
    AttemptOutcome,
    ConnectionAttempt,
    DeviceRecord,
    FirmwareRecord,
    JobState,
    KeyAuditEntry,
    KeyPolicy,
    KeyPolicyMode,
    PendingKey,
    RekeyWindow,
    UpdateJob,
    User,
    Variable,
)
from cyan.cloud.ports import DeviceExistsError, StoreUnavailableError, UserExistsError

from ._migrate import upgrade_to_head
from ._schema import (
    access_tokens,
    connection_attempts,
    device_groups,
    devices,
    firmware,
    key_audit,
    key_policies,
    pending_keys,
    rekey_windows,
    update_jobs,
    users,
)

__all__ = ["SqliteStore"]

#: Execution option read by the ``begin`` listener: the statement that starts a connection's transactions.
_BEGIN_OPTION = "cyan_sqlite_begin"

# Built once: building a statement costs more than running a cached one.
_INSERT_DEVICE = insert(devices)
_UPDATE_DEVICE = update(devices).where(devices.c.id == bindparam("match_id"))
#: What a connection changes: never the name, owner or key, which only people change (see update_device_state).
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
)
_UPDATE_DEVICE_STATE = (
    update(devices)
    .where(devices.c.id == bindparam("match_id"))
    .values({name: bindparam(name) for name in _STATE_COLUMNS})
)
_INSERT_ATTEMPT = insert(connection_attempts)
_INSERT_USER = insert(users)
_INSERT_TOKEN = insert(access_tokens)

#: Hints added to SQLite's terse messages, keyed by a fragment of them.
_HINTS = {
    "database is locked": "another process held a write lock longer than the busy timeout",
    "file is not a database": "the file is not a SQLite database, or it is corrupt",
    "database disk image is malformed": "the file is corrupt",
    "readonly database": "the file or its directory is read-only for this user",
    "unable to open database file": "check that the directory exists and is writable",
    "disk i/o error": "the disk failed, or the -wal/-shm files beside the database cannot be written",
    "database or disk is full": "free some disk space",
}


class SqliteStore:
    """`cyan.cloud.ports.Store` on a SQLite file in WAL mode.

    Readers run in parallel on pooled connections; writes are serialised by an `asyncio.Lock` so that the
    process never queues on SQLite's file lock. Every method but `save_device` and `remove_user` runs one
    statement, which
    SQLite makes atomic by itself, so no BEGIN is sent for it (each is a round trip to the driver's thread).
    Transactions of several statements start with BEGIN IMMEDIATE: they take the write lock up front, so
    another process's writer makes them wait (up to `busy_timeout` seconds) instead of failing midway.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path).expanduser().absolute()
        self.busy_timeout = busy_timeout
        self._engine: AsyncEngine | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._was_opened = False

    def __repr__(self) -> str:
        state = "open" if self._engine is not None else "closed"
        return f"<SqliteStore {str(self.path)!r} {state}>"

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- life cycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._engine is not None:
            return
        self._create_file()
        engine = create_async_engine(URL.create("sqlite+aiosqlite", database=str(self.path)))
        event.listen(engine.sync_engine, "connect", self._on_connect)
        event.listen(engine.sync_engine, "begin", _on_begin)
        try:
            with self._translate("open the store"):
                async with engine.connect() as conn:
                    mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                    await conn.commit()
                    if mode != "wal":
                        raise StoreUnavailableError(
                            f"cannot open the store: SQLite database {self.path}: write-ahead logging is not "
                            f"available there (journal mode {mode!r}); put the file on a local file system"
                        )
                    # IMMEDIATE: two processes opening a new file at once must not both create the tables.
                    await conn.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
                    async with conn.begin():
                        await conn.run_sync(upgrade_to_head, f"SQLite database {self.path}")
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        # Point reads on the handshake path go through a plain synchronous connection: a keyed SQLite read
        # in WAL mode takes ~20 µs and never waits for a writer, while the same read through the async
        # driver's thread hop costs ~0.7 ms of CPU and through SQLAlchemy Core ~0.15 ms, against 0.5 ms of
        # RSA work for the whole handshake (measured in bench/).
        with self._translate("open the store"):
            self._reader = self._open_reader()
        self._write_lock = asyncio.Lock()
        self._was_opened = True

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        engine, self._engine = self._engine, None
        if engine is not None:
            with self._translate("close the store"):
                await engine.dispose()

    def _create_file(self) -> None:
        # SQLite would create the file with the umask's mode; it will hold device keys, so create it first,
        # owner-only. SQLite gives its -wal and -shm files the mode of the database file.
        what = f"cannot create the SQLite database {self.path}"
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise StoreUnavailableError(f"{what}: {exc.filename} is not a directory") from exc
        except OSError as exc:
            raise StoreUnavailableError(f"{what}: cannot create the directory {exc.filename}: {exc.strerror}") from exc
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise StoreUnavailableError(f"{what}: {exc.strerror or exc}") from exc
        os.close(fd)

    def _open_reader(self) -> sqlite3.Connection:
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            reader.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            reader.execute("PRAGMA query_only = ON")
        except BaseException:
            reader.close()
            raise
        return reader

    def _on_connect(self, dbapi_connection: Any, connection_record: Any) -> None:
        # The driver's own BEGIN handling skips SELECT and DDL, so a migration would not be one transaction:
        # turn it off and let `_on_begin` send BEGIN where a transaction needs one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL: readers never block the writer. NORMAL skips an fsync per commit: in WAL mode a crash of
            # the process loses nothing, and a power loss can undo the last commits but not corrupt the file.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={round(self.busy_timeout * 1000)}")
        finally:
            cursor.close()

    # -- devices --------------------------------------------------------------------------------

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        self._require_engine()  # a closed store says so
        reader = self._reader
        assert reader is not None
        with self._translate("read a device"):
            row = reader.execute(_SELECT_DEVICE, (device_id.lower(),)).fetchone()
        return None if row is None else _device_from_row(dict(zip(_DEVICE_COLUMNS, row, strict=True)), raw=True)

    async def find_device(self, id_or_name: str) -> DeviceRecord | None:
        device_id = id_or_name.lower()
        query = select(devices).where(or_(devices.c.id == device_id, devices.c.name == id_or_name))
        async with self._reading("find a device") as conn:
            rows = (await conn.execute(query)).mappings().all()
        # An id wins over another device's name that happens to look like it.
        rows = sorted(rows, key=lambda row: row["id"] != device_id)
        return _device_from_row(rows[0]) if rows else None

    async def list_devices(self, owner: str | None = None) -> list[DeviceRecord]:
        query = select(devices).order_by(devices.c.id)
        if owner is not None:
            query = query.where(devices.c.owner == owner)
        async with self._reading("list devices") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_device_from_row(row) for row in rows]

    async def add_device(self, device: DeviceRecord) -> None:
        values = _device_values(device)
        try:
            async with self._writing("add a device", conflicts=True) as conn:
                await conn.execute(_INSERT_DEVICE, values)
        except IntegrityError as exc:
            raise DeviceExistsError(await self._conflict(values)) from exc

    async def add_devices(self, new_devices: list[DeviceRecord]) -> None:
        """Register many devices in one transaction (fleet provisioning): all of them, or none if one id
        or name is taken (`DeviceExistsError` names the first)."""
        if not new_devices:
            return
        rows = [_device_values(device) for device in new_devices]
        ids: set[str] = set()
        names: set[str] = set()
        for values in rows:
            if values["id"] in ids:
                raise DeviceExistsError(f"device {values['id']} is listed twice")
            if values["name"] is not None and values["name"] in names:
                raise DeviceExistsError(f"the name {values['name']!r} is given to two devices")
            ids.add(values["id"])
            if values["name"] is not None:
                names.add(values["name"])
        try:
            async with self._writing("add devices", conflicts=True, statements="several") as conn:
                await conn.execute(_INSERT_DEVICE, rows)
        except IntegrityError as exc:
            for values in rows:
                if (taken := await self._taken(values)) is not None:
                    raise DeviceExistsError(taken) from exc
            raise DeviceExistsError(f"one of the {len(rows)} devices was registered concurrently") from exc

    async def save_device(self, device: DeviceRecord) -> None:
        values = _device_values(device)
        try:
            async with self._writing("save a device", conflicts=True, statements="several") as conn:
                # UPDATE then INSERT is the portable upsert; BEGIN IMMEDIATE makes the pair atomic.
                result = await conn.execute(_UPDATE_DEVICE, {"match_id": values["id"], **values})
                if result.rowcount == 0:
                    await conn.execute(_INSERT_DEVICE, values)
        except IntegrityError as exc:
            raise DeviceExistsError(await self._conflict(values)) from exc

    async def update_device_state(self, device: DeviceRecord) -> bool:
        values = _device_values(device)
        state = {name: values[name] for name in _STATE_COLUMNS}
        async with self._writing("update a device's state") as conn:
            result = await conn.execute(_UPDATE_DEVICE_STATE, {"match_id": values["id"], **state})
        return bool(result.rowcount)

    async def update_device_states(self, devices: list[DeviceRecord]) -> None:
        if not devices:
            return
        rows = []
        for device in devices:
            values = _device_values(device)
            rows.append({"match_id": values["id"], **{name: values[name] for name in _STATE_COLUMNS}})
        async with self._writing("update devices' state") as conn:
            await conn.execute(_UPDATE_DEVICE_STATE, rows)

    async def remove_device(self, device_id: str) -> bool:
        async with self._writing("remove a device") as conn:
            result = await conn.execute(delete(devices).where(devices.c.id == device_id.lower()))
        return result.rowcount > 0

    async def mark_all_offline(self) -> None:
        async with self._writing("mark devices offline") as conn:
            await conn.execute(update(devices).where(devices.c.online.is_(True)).values(online=False))

    async def _conflict(self, values: Mapping[str, Any]) -> str:
        """Which of id and name is taken, for the message of `DeviceExistsError`."""
        taken = await self._taken(values)
        return taken or f"device {values['id']} or the name {values['name']!r} was registered concurrently"

    async def _taken(self, values: Mapping[str, Any]) -> str | None:
        """What is already registered of this device's id and name, in words; None: neither."""
        device_id, name = values["id"], values["name"]
        query = select(devices.c.id, devices.c.name).where(or_(devices.c.id == device_id, devices.c.name == name))
        async with self._reading("check a device's id and name") as conn:
            rows = (await conn.execute(query)).all()
        for row in rows:
            if row.name == name and row.id != device_id:
                return f"the name {name!r} is already taken by device {row.id}"
        if any(row.id == device_id for row in rows):
            return f"device {device_id} is already registered"
        return None

    # -- connection attempts --------------------------------------------------------------------

    async def record_attempt(self, attempt: ConnectionAttempt) -> int:
        async with self._writing("record a connection attempt") as conn:
            result = await conn.execute(_INSERT_ATTEMPT, _attempt_values(attempt))
        key = result.inserted_primary_key
        assert key is not None  # an INSERT of one row always has one
        return int(key[0])

    async def record_attempts(self, attempts: list[ConnectionAttempt]) -> None:
        if not attempts:
            return
        rows = [_attempt_values(attempt) for attempt in attempts]
        async with self._writing("record connection attempts") as conn:
            await conn.execute(_INSERT_ATTEMPT, rows)

    async def list_attempts(
        self,
        device_id: str | None = None,
        *,
        since: datetime | None = None,
        peer_address: str | None = None,
        limit: int = 100,
    ) -> list[ConnectionAttempt]:
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        table = connection_attempts
        query = select(table).order_by(table.c.started_at.desc(), table.c.id.desc()).limit(limit)
        if device_id is not None:
            query = query.where(table.c.device_id == device_id.lower())
        if since is not None:
            query = query.where(table.c.started_at >= _aware(since, "since"))
        if peer_address is not None:
            query = query.where(table.c.peer_address == peer_address)
        async with self._reading("list connection attempts") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_attempt_from_row(row) for row in rows]

    # -- users and access tokens ------------------------------------------------------------------

    async def add_user(self, user: User) -> None:
        values = _user_values(user)
        try:
            async with self._writing("add a user", conflicts=True) as conn:
                await conn.execute(_INSERT_USER, values)
        except IntegrityError as exc:
            # The primary key is the only constraint the values can break: every other column is set.
            raise UserExistsError(f"the username {values['username']!r} is already taken") from exc

    async def get_user(self, username: str) -> User | None:
        query = select(users).where(users.c.username == username.lower())
        async with self._reading("read a user") as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _user_from_row(row)

    async def list_users(self) -> list[User]:
        async with self._reading("list users") as conn:
            rows = (await conn.execute(select(users).order_by(users.c.username))).mappings().all()
        return [_user_from_row(row) for row in rows]

    async def remove_user(self, username: str) -> bool:
        username = username.lower()
        async with self._writing("remove a user", statements="several") as conn:
            # Tokens and owners are cleared even when no such user exists: nothing stops a caller from adding a
            # token or an owner for a username that has no user, and removing that username should leave none.
            await conn.execute(delete(access_tokens).where(access_tokens.c.username == username))
            # Owners are compared exactly, as `list_devices` does: the domain writes the stored username.
            await conn.execute(update(devices).where(devices.c.owner == username).values(owner=None))
            result = await conn.execute(delete(users).where(users.c.username == username))
        return result.rowcount > 0

    async def add_token(self, token: AccessToken) -> None:
        values = _token_values(token)
        try:
            async with self._writing("add an access token", conflicts=True) as conn:
                await conn.execute(_INSERT_TOKEN, values)
        except IntegrityError as exc:
            # Tokens are random: two with one hash means the caller stored the same token twice.
            raise ValueError(f"an access token with the hash {values['token_hash']} is already stored") from exc

    async def get_token(self, token_hash: str) -> AccessToken | None:
        query = select(access_tokens).where(access_tokens.c.token_hash == token_hash.lower())
        async with self._reading("read an access token") as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _token_from_row(row)

    async def list_tokens(self, username: str) -> list[AccessToken]:
        table = access_tokens
        # The hash breaks ties of creation time, so that the order does not change from one call to the next.
        query = (
            select(table)
            .where(table.c.username == username.lower())
            .order_by(table.c.created_at.desc(), table.c.token_hash)
        )
        async with self._reading("list access tokens") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_token_from_row(row) for row in rows]

    async def remove_token(self, token_hash: str) -> bool:
        async with self._writing("remove an access token") as conn:
            result = await conn.execute(delete(access_tokens).where(access_tokens.c.token_hash == token_hash.lower()))
        return result.rowcount > 0

    async def remove_expired_tokens(self, now: datetime) -> int:
        # A NULL expires_at never compares true, so tokens that never expire stay.
        query = delete(access_tokens).where(access_tokens.c.expires_at <= _aware(now, "now"))
        async with self._writing("remove expired access tokens") as conn:
            result = await conn.execute(query)
        return result.rowcount

    # -- plumbing -------------------------------------------------------------------------------

    # -- key policy ----------------------------------------------------------------------------

    async def get_policy(self, scope: str) -> KeyPolicy | None:
        query = select(key_policies).where(key_policies.c.scope == scope.lower())
        async with self._reading("read a key policy") as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _policy_from_row(row)

    async def set_policy(self, policy: KeyPolicy) -> None:
        values = {
            "scope": policy.scope.lower(),
            "mode": policy.mode.value,
            "trust_on_first_use": policy.trust_on_first_use,
            "updated_at": _aware(policy.updated_at or datetime.now(UTC), "updated_at"),
            "updated_by": policy.updated_by,
        }
        await self._upsert(key_policies, "scope", values, "set a key policy")

    async def remove_policy(self, scope: str) -> bool:
        return await self._delete(key_policies, key_policies.c.scope == scope.lower(), "remove a key policy")

    async def list_policies(self) -> list[KeyPolicy]:
        async with self._reading("list key policies") as conn:
            rows = (await conn.execute(select(key_policies).order_by(key_policies.c.scope))).mappings().all()
        return [_policy_from_row(row) for row in rows]

    async def arm_rekey(self, window: RekeyWindow) -> None:
        values = {
            "device_id": window.device_id.lower(),
            "until": _aware(window.until, "until"),
            "armed_by": window.armed_by,
            "armed_at": _aware(window.armed_at, "armed_at"),
        }
        await self._upsert(rekey_windows, "device_id", values, "arm a re-key window")

    async def get_rekey(self, device_id: str) -> RekeyWindow | None:
        query = select(rekey_windows).where(rekey_windows.c.device_id == device_id.lower())
        async with self._reading("read a re-key window") as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else RekeyWindow(**dict(row))

    async def remove_rekey(self, device_id: str) -> bool:
        table = rekey_windows
        return await self._delete(table, table.c.device_id == device_id.lower(), "remove a re-key window")

    async def list_rekeys(self) -> list[RekeyWindow]:
        async with self._reading("list re-key windows") as conn:
            rows = (await conn.execute(select(rekey_windows).order_by(rekey_windows.c.until))).mappings().all()
        return [RekeyWindow(**dict(row)) for row in rows]

    async def save_pending_key(self, pending: PendingKey) -> None:
        values = {
            "device_id": pending.device_id.lower(),
            "public_key_der": pending.public_key_der,
            "fingerprint": pending.fingerprint,
            "stored_fingerprint": pending.stored_fingerprint,
            "first_seen": _aware(pending.first_seen, "first_seen"),
            "last_seen": _aware(pending.last_seen, "last_seen"),
            "attempts": pending.attempts,
            "peer_address": pending.peer_address,
        }
        await self._upsert(pending_keys, "device_id", values, "save a pending key")

    async def get_pending_key(self, device_id: str) -> PendingKey | None:
        query = select(pending_keys).where(pending_keys.c.device_id == device_id.lower())
        async with self._reading("read a pending key") as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else PendingKey(**dict(row))

    async def remove_pending_key(self, device_id: str) -> bool:
        table = pending_keys
        return await self._delete(table, table.c.device_id == device_id.lower(), "remove a pending key")

    async def list_pending_keys(self) -> list[PendingKey]:
        query = select(pending_keys).order_by(pending_keys.c.first_seen, pending_keys.c.device_id)
        async with self._reading("list pending keys") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [PendingKey(**dict(row)) for row in rows]

    async def add_audit(self, entry: KeyAuditEntry) -> int:
        values = {
            "at": _aware(entry.at, "at"),
            "device_id": entry.device_id.lower(),
            "action": entry.action,
            "actor": entry.actor,
            "old_fingerprint": entry.old_fingerprint,
            "new_fingerprint": entry.new_fingerprint,
            "detail": entry.detail,
        }
        async with self._writing("record a key audit entry") as conn:
            result = await conn.execute(insert(key_audit).values(values))
        key = result.inserted_primary_key
        return int(key[0]) if key else 0

    async def list_audit(self, device_id: str | None = None, *, limit: int = 100) -> list[KeyAuditEntry]:
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        query = select(key_audit).order_by(key_audit.c.at.desc(), key_audit.c.id.desc()).limit(limit)
        if device_id is not None:
            query = query.where(key_audit.c.device_id == device_id.lower())
        async with self._reading("list the key audit") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [KeyAuditEntry(**dict(row)) for row in rows]

    # -- firmware, update jobs and groups (protocol.md §7) -------------------------------------

    async def save_firmware(self, firmware_record: FirmwareRecord) -> None:
        values = _firmware_values(firmware_record)
        async with self._writing("save a firmware record", statements="several") as conn:
            query = select(firmware.c.sha256).where(firmware.c.sha256 == values["sha256"])
            if (await conn.execute(query)).first() is None:
                await conn.execute(insert(firmware).values(values))

    async def get_firmware(self, sha256: str) -> FirmwareRecord | None:
        query = select(firmware).where(firmware.c.sha256 == sha256.lower())
        async with self._reading("read a firmware record") as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else FirmwareRecord(**dict(row))

    async def add_job(self, job: UpdateJob) -> int:
        values = _job_values(job)
        async with self._writing("record an update job") as conn:
            result = await conn.execute(insert(update_jobs).values(values))
        key = result.inserted_primary_key
        job.id = int(key[0]) if key else 0
        return job.id

    async def save_job(self, job: UpdateJob) -> None:
        if job.id is None:
            raise ValueError("the job has no id: add it first")
        query = update(update_jobs).where(update_jobs.c.id == job.id).values(_job_values(job))
        async with self._writing("save an update job") as conn:
            await conn.execute(query)

    async def get_job(self, job_id: int) -> UpdateJob | None:
        query = select(update_jobs).where(update_jobs.c.id == job_id)
        async with self._reading("read an update job") as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _job_from_row(row)

    async def list_jobs(
        self,
        *,
        device_id: str | None = None,
        rollout: str | None = None,
        unfinished: bool = False,
        limit: int = 100,
    ) -> list[UpdateJob]:
        if limit < 0:
            raise ValueError(f"limit must not be negative, got {limit}")
        query = select(update_jobs).order_by(update_jobs.c.id.desc()).limit(limit)
        if device_id is not None:
            query = query.where(update_jobs.c.device_id == device_id.lower())
        if rollout is not None:
            query = query.where(update_jobs.c.rollout == rollout)
        if unfinished:
            query = query.where(update_jobs.c.state.in_([s.value for s in JobState if not s.finished]))
        async with self._reading("list update jobs") as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_job_from_row(row) for row in rows]

    async def add_to_group(self, group: str, device_ids: list[str]) -> int:
        wanted = sorted({d.lower() for d in device_ids})
        async with self._writing("add devices to a group", statements="several") as conn:
            query = select(device_groups.c.device_id).where(device_groups.c.group_name == group)
            present = set((await conn.execute(query)).scalars())
            new = [d for d in wanted if d not in present]
            if new:
                await conn.execute(insert(device_groups), [{"group_name": group, "device_id": d} for d in new])
        return len(new)

    async def remove_from_group(self, group: str, device_ids: list[str]) -> int:
        ids = [d.lower() for d in device_ids]
        condition = (device_groups.c.group_name == group) & device_groups.c.device_id.in_(ids)
        async with self._writing("remove devices from a group") as conn:
            result = await conn.execute(delete(device_groups).where(condition))
        return result.rowcount

    async def list_group(self, group: str) -> list[str]:
        query = select(device_groups.c.device_id).where(device_groups.c.group_name == group)
        async with self._reading("list a group") as conn:
            return sorted((await conn.execute(query.order_by(device_groups.c.device_id))).scalars())

    async def list_groups(self) -> dict[str, int]:
        query = (
            select(device_groups.c.group_name, func.count())
            .group_by(device_groups.c.group_name)
            .order_by(device_groups.c.group_name)
        )
        async with self._reading("list groups") as conn:
            rows = (await conn.execute(query)).all()
        return {str(row[0]): int(row[1]) for row in rows}

    async def _upsert(self, table: Any, key: str, values: dict[str, Any], action: str) -> None:
        async with self._writing(action, statements="several") as conn:
            result = await conn.execute(update(table).where(table.c[key] == values[key]).values(values))
            if result.rowcount == 0:
                await conn.execute(insert(table).values(values))

    async def _delete(self, table: Any, condition: Any, action: str) -> bool:
        async with self._writing(action) as conn:
            result = await conn.execute(delete(table).where(condition))
        return bool(result.rowcount)

    def _require_engine(self) -> AsyncEngine:
        if self._engine is None:
            state = "closed" if self._was_opened else "not open (call open() first)"
            raise StoreUnavailableError(f"the SQLite store {self.path} is {state}")
        return self._engine

    @asynccontextmanager
    async def _reading(self, action: str) -> AsyncIterator[AsyncConnection]:
        engine = self._require_engine()
        with self._translate(action):
            async with engine.connect() as conn:
                yield conn

    @asynccontextmanager
    async def _writing(
        self, action: str, *, conflicts: bool = False, statements: Literal["one", "several"] = "one"
    ) -> AsyncIterator[AsyncConnection]:
        """A write, committed when the block ends; `conflicts` lets `IntegrityError` through.

        A block that runs more than one statement must say so, or they would not form one transaction.
        """
        engine = self._require_engine()
        # Taking the lock before a pooled connection keeps a burst of writers from draining the pool.
        async with self._write_lock:
            with self._translate(action, conflicts=conflicts):
                async with engine.connect() as conn:
                    if statements == "several":
                        await conn.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
                    async with conn.begin():
                        yield conn

    @contextmanager
    def _translate(self, action: str, *, conflicts: bool = False) -> Iterator[None]:
        """Turn every failure of the database into `StoreUnavailableError` naming the file and the cause."""
        try:
            yield
        except IntegrityError as exc:
            if conflicts:
                raise
            raise StoreUnavailableError(self._message(action, exc)) from exc
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StoreUnavailableError(self._message(action, exc)) from exc

    def _message(self, action: str, exc: BaseException) -> str:
        cause = _cause(exc)
        hint = next((hint for fragment, hint in _HINTS.items() if fragment in cause.lower()), None)
        if hint == _HINTS["database is locked"]:
            hint += f" ({self.busy_timeout:g} s)"
        suffix = f"; {hint}" if hint else ""
        return f"cannot {action}: SQLite database {self.path}: {cause}{suffix}"


def _cause(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's statement and documentation link."""
    original = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if isinstance(original, OSError) and original.strerror:
        return f"{original.strerror}: {original.filename}" if original.filename else original.strerror
    return str(original) or type(original).__name__


def _on_begin(conn: Connection) -> None:
    # Without the option the driver stays in autocommit: the block runs a single statement (see `_writing`).
    begin = conn.get_execution_options().get(_BEGIN_OPTION)
    if begin is not None:
        conn.exec_driver_sql(begin)


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
    }


#: The plain-SQL point read of `get_device`: the columns in table order, decoded by `_device_from_row`.
_DEVICE_COLUMNS = tuple(column.name for column in devices.columns)
_SELECT_DEVICE = f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM devices WHERE id = ?"


def _raw_time(value: str | None) -> datetime | None:
    """A UTCDateTime column read without SQLAlchemy: SQLite holds the UTC wall time as ISO text."""
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _device_from_row(row: Mapping[Any, Any], *, raw: bool = False) -> DeviceRecord:
    """A device from a row; `raw`: the row comes straight from sqlite3, so JSON and times are still text."""
    functions, variables = row["functions"], row["variables"]
    last_heard, created_at = row["last_heard"], row["created_at"]
    if raw:
        functions, variables = json.loads(functions), json.loads(variables)
        last_heard, created_at = _raw_time(last_heard), _raw_time(created_at)
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
    }


def _attempt_from_row(row: RowMapping) -> ConnectionAttempt:
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
    )


def _user_values(user: User) -> dict[str, Any]:
    return {
        "username": user.username.lower(),
        "password_hash": user.password_hash,
        "created_at": _aware(user.created_at, "created_at"),
    }


def _policy_from_row(row: RowMapping) -> KeyPolicy:
    return KeyPolicy(
        scope=row["scope"],
        mode=KeyPolicyMode(row["mode"]),
        trust_on_first_use=bool(row["trust_on_first_use"]),
        updated_at=row["updated_at"],
        updated_by=row["updated_by"],
    )


def _user_from_row(row: RowMapping) -> User:
    return User(username=row["username"], password_hash=row["password_hash"], created_at=row["created_at"])


def _token_values(token: AccessToken) -> dict[str, Any]:
    return {
        "token_hash": token.token_hash.lower(),
        "username": token.username.lower(),
        "client_id": token.client_id,
        "created_at": _aware(token.created_at, "created_at"),
        "expires_at": _optional_aware(token.expires_at, "expires_at"),
    }


def _token_from_row(row: RowMapping) -> AccessToken:
    return AccessToken(
        token_hash=row["token_hash"],
        username=row["username"],
        client_id=row["client_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


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


def _job_from_row(row: RowMapping) -> UpdateJob:
    values = dict(row)
    values["state"] = JobState(values["state"])
    return UpdateJob(**values)
