"""Firmware updates: who may flash which devices, and who may follow which jobs (protocol.md §7).

`cyan.cloud.ota.UpdateManager` runs the jobs; starting them is decided here, and the jobs are stored with
their audit entries in one transaction before any is started.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

from cyan.cloud.errors import ConflictError, DeviceOfflineError, InvalidInputError, NotFoundError
from cyan.cloud.models import AuditEntry, DeviceRecord, FirmwareRecord, JobState, UpdateJob
from cyan.cloud.ota import FirmwareLibrary, UpdateConflictError, UpdateManager, UpdateNotFoundError

from ._context import AppContext, visible_device, visible_records
from .actors import Actor

__all__ = ["JOB_ACTIONS", "JobsControlled", "UpdateUseCases"]

#: What may be done to an unfinished job, and the states it may be done from. A job being sent is left to
#: finish its transfer (`UpdateManager.halt`).
JOB_ACTIONS: dict[str, tuple[JobState, ...]] = {
    "pause": (JobState.QUEUED,),
    "resume": (JobState.PAUSED,),
    "cancel": (JobState.QUEUED, JobState.PAUSED, JobState.WAITING),
}
_AUDIT_ACTIONS = {"pause": "flash_paused", "resume": "flash_resumed", "cancel": "flash_cancelled"}


@dataclass(frozen=True, slots=True)
class JobsControlled:
    """The jobs an action changed, and those it left as they were (with why)."""

    changed: list[UpdateJob] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)


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

    # -- holding and stopping jobs ---------------------------------------------------------------

    async def control(
        self, actor: Actor, action: str, *, job: int | None = None, rollout: str | None = None
    ) -> JobsControlled:
        """Pause, resume or cancel one job or every unfinished job of a rollout: whoever may flash the devices
        (their owner, or an admin), each change audited in one transaction. One job in the wrong state is a
        409; a rollout's jobs in the wrong state are left alone and listed."""
        if action not in JOB_ACTIONS:
            raise InvalidInputError(f"action is one of {', '.join(JOB_ACTIONS)}", "action")
        if job is not None:
            jobs = [await self.job(actor, job)]
        elif isinstance(rollout, str) and 0 < len(rollout) <= 64:
            jobs = [j for j in await self.jobs(actor, rollout=rollout, limit=100_000) if not j.state.finished]
            if not jobs and not await self.jobs(actor, rollout=rollout, limit=1):
                raise NotFoundError(f"no rollout {rollout!r} of yours")
        else:
            raise InvalidInputError("name a job or a rollout", "rollout")
        wanted = JOB_ACTIONS[action]
        result = JobsControlled()
        halted = []
        for found in jobs:
            assert found.id is not None
            if found.state not in wanted:
                result.skipped[found.id] = f"it is {found.state.value}"
                continue
            if action != "resume":
                try:
                    await self.manager.halt(found.id)
                except UpdateConflictError as exc:
                    result.skipped[found.id] = str(exc)
                    continue
            halted.append(found.id)
        if job is not None and result.skipped:
            raise ConflictError(f"update {job} cannot be {action}d: {result.skipped[job]}")
        now = self._ctx.clock()
        try:
            async with self._ctx.store.transaction() as tx:
                for job_id in halted:
                    stored = await tx.updates.get_job(job_id)
                    if stored is None or stored.state not in wanted:
                        result.skipped[job_id] = "it changed meanwhile"
                        continue
                    if action == "pause":
                        stored.state, stored.detail = JobState.PAUSED, f"paused by {actor.name}"
                    elif action == "resume":
                        stored.state, stored.detail = JobState.QUEUED, f"resumed by {actor.name}"
                    else:
                        sent = stored.state is JobState.WAITING
                        stored.state, stored.reason, stored.finished_at = JobState.FAILED, "cancelled", now
                        stored.detail = f"cancelled by {actor.name}" + (
                            " after the image was sent: the device may still apply it" if sent else ""
                        )
                    stored.updated_at = now
                    await tx.updates.save_job(stored)
                    await tx.audit.add(
                        AuditEntry(now, stored.device_id, _AUDIT_ACTIONS[action], actor.name, detail=f"job {job_id}")
                    )
                    result.changed.append(stored)
        except BaseException:
            for job_id in halted:  # nothing was stored: the halted jobs go on as they were
                with contextlib.suppress(UpdateNotFoundError):
                    self.manager.resume(await self.manager.get(job_id))
            raise
        changed = {j.id for j in result.changed}
        for job_id in halted:
            stored_job = await self.manager.get(job_id)
            if job_id not in changed or stored_job.state is JobState.QUEUED:
                self.manager.resume(stored_job)  # resumed, or halted for nothing
        return result
