"""Firmware updates: who may flash which devices, and who may follow which jobs (protocol.md §7).

`cyan.cloud.ota.UpdateManager` runs the jobs; starting them is decided here, and the jobs are stored with
their audit entries in one transaction before any is started.
"""

from __future__ import annotations

from dataclasses import replace

from cyan.cloud.errors import DeviceOfflineError, InvalidInputError, NotFoundError
from cyan.cloud.models import AuditEntry, DeviceRecord, FirmwareRecord, UpdateJob
from cyan.cloud.ota import FirmwareLibrary, UpdateManager, UpdateNotFoundError

from ._context import AppContext, visible_device, visible_records
from .actors import Actor

__all__ = ["UpdateUseCases"]

#: The most devices one request may name (a rollout to more goes by group or `all`).
MAX_NAMED_DEVICES = 1000


def _as_seen_by(actor: Actor, record: FirmwareRecord, filename: str | None = None) -> FirmwareRecord:
    """A binary is kept once for everyone who uploads the same bytes; who uploaded it first, and under what
    name, is theirs and the admins' to see."""
    if actor.is_admin or record.uploaded_by == actor.name:
        return record
    return replace(record, uploaded_by=None, filename=(filename or "")[-255:] or "(uploaded by another account)")


class UpdateUseCases:
    def __init__(self, ctx: AppContext, manager: UpdateManager) -> None:
        self._ctx = ctx
        self.manager = manager

    @property
    def library(self) -> FirmwareLibrary:
        return self.manager.library

    async def upload(self, actor: Actor, data: bytes, filename: str) -> FirmwareRecord:
        """Keep a binary after checking it as a device would (`FirmwareRejectedError` otherwise)."""
        return _as_seen_by(actor, await self.library.add(data, filename, actor.name), filename)

    async def firmware(self, actor: Actor, sha256: str) -> FirmwareRecord:
        """A kept binary by its SHA-256 (knowing it is having the bytes: the same bytes, the same record)."""
        if not isinstance(sha256, str) or len(sha256) != 64:
            raise InvalidInputError("firmware is the SHA-256 of an uploaded binary (64 hex digits)", "firmware")
        try:
            return _as_seen_by(actor, await self.library.get(sha256))
        except UpdateNotFoundError:
            raise NotFoundError(f"no firmware {sha256}") from None

    async def targets(
        self, actor: Actor, *, devices: list[str] | None = None, everything: bool = False, group: str | None = None
    ) -> list[DeviceRecord]:
        """The devices an update request names, each one the actor's: a list of ids or names, all of the
        actor's devices, or the actor's devices in a group (another account's members are not named)."""
        store = self._ctx.store
        if everything:
            if actor.username is None:
                return await store.devices.all()
            return await store.devices.all(owner=actor.username)
        if group is not None:
            return await visible_records(store, actor, await store.updates.list_group(group))
        if devices is None:
            raise InvalidInputError("say which devices: devices (a list), all (true) or group (a name)", "devices")
        if len(devices) > MAX_NAMED_DEVICES:
            raise InvalidInputError(f"at most {MAX_NAMED_DEVICES} devices by name; use a group or all", "devices")
        return [await visible_device(store, actor, device) for device in devices]

    async def flash(
        self,
        actor: Actor,
        records: list[DeviceRecord],
        firmware: FirmwareRecord,
        *,
        mode: str = "auto",
        concurrency: int | None = None,
        max_attempts: int | None = None,
        queue_if_offline: bool = True,
    ) -> list[UpdateJob]:
        """Start updating the devices (each one checked as visible to the actor by `targets`). An offline device's
        job waits for its next connection; without `queue_if_offline`, an offline device is refused instead
        (`DeviceOfflineError`) and nothing is started, as Particle's cloud answers a flash to an offline device."""
        if not records:
            raise InvalidInputError("no device of yours to update", "devices")
        if not queue_if_offline:
            for record in records:
                if not await self._ctx.sessions.connected(record.id):
                    raise DeviceOfflineError(
                        record.id,
                        "nothing was sent. Flash it when it is online, or queue the update for its next connection "
                        "(queue=true with this request, or cyan devices flash)",
                    )
        try:
            plan = await self.manager.plan(
                [r.id for r in records],
                firmware,
                created_by=actor.name,
                mode=mode,
                concurrency=concurrency,
                max_attempts=max_attempts,
            )
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        now = self._ctx.clock()
        async with self._ctx.store.transaction() as tx:
            for record in records:
                # Visible when named; checked again here, where it cannot change before the jobs are stored.
                current = await tx.devices.get(record.id)
                if current is None or not actor.sees(current):
                    raise NotFoundError(f"no device {record.id!r} of yours")
            await self.manager.record(plan, tx)
            for job in plan.jobs:
                detail = f"{firmware.filename} ({firmware.sha256[:16]}); job {job.id}"
                await tx.audit.add(AuditEntry(now, job.device_id, "flash_started", actor.name, detail=detail))
        self.manager.launch(plan)
        return plan.jobs

    async def job(self, actor: Actor, job_id: int) -> UpdateJob:
        if isinstance(job_id, bool) or not isinstance(job_id, int) or not 0 < job_id < 2**63:
            raise NotFoundError(f"no update job {job_id}")
        try:
            job = await self.manager.get(job_id)
        except UpdateNotFoundError:
            raise NotFoundError(f"no update job {job_id} of yours") from None
        record = await self._ctx.store.devices.get(job.device_id)
        if record is None or not actor.sees(record):
            raise NotFoundError(f"no update job {job_id} of yours")
        return job

    async def jobs(
        self, actor: Actor, *, device: str | None = None, rollout: str | None = None, limit: int = 100
    ) -> list[UpdateJob]:
        """Newest first: of one device, of a rollout, or the latest; only the actor's devices' jobs."""
        device_id = None
        if device is not None:
            device_id = (await visible_device(self._ctx.store, actor, device)).id
        jobs = await self.manager.list(device_id=device_id, rollout=rollout, limit=limit)
        if actor.is_admin or device_id is not None:
            return jobs
        owned = {r.id for r in await self._ctx.store.devices.all(owner=actor.username)}
        return [job for job in jobs if job.device_id in owned]
