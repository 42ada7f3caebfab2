"""Firmware updates: uploaded binaries, and one job per device that brings it to a new image (protocol.md §7).

A job goes ``queued -> sending -> waiting_for_reconnect -> succeeded``, or ends ``failed`` with a
reason. It waits in ``queued`` while its device is offline or all transfer slots are taken; ``sending``
runs the protocol core's `OtaSender` over the device's link; after the transfer the device resets, and
the job waits for it to come back. Success is defined by what the device then reports of itself:

* a user part: the system Describe lists a user part whose SHA-256 (``"u"``, §6.7) is the image's (the
  hash in its module suffix). A device that lists no hash is judged by its Hello's product version (§5)
  when the image carries one;
* a system part or bootloader: the Describe lists that module at the image's module version;
* when the device reports neither, a completed transfer followed by a reconnect counts, marked
  ``unverified``.

An attempt that fails (the connection dropped, chunks kept arriving damaged, the device came back with its
old image) is retried, up to `UpdateJob.max_attempts`; a device that refuses the image as invalid is not
sent it again. An image built for another platform, larger than the device takes, or depending on a newer
system part than the device runs (it would restart in safe mode, field-failures C15) is refused before
anything is sent (`FirmwareRejectedError`). Jobs are stored, and resumed when the server restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from cyan.protocol import ModuleError, ModuleInfo, OtaConfig, OtaOutcome, parse_module
from cyan.protocol.binary import ModuleFunction, check_for_device

from .errors import CloudError, DeviceNotFoundError
from .models import CloudEvent, FirmwareRecord, JobState, UpdateJob
from .ports import Repositories, UpdateRepository
from .routing import JobsQueued
from .service import Cloud, DeviceLink

__all__ = [
    "MAX_FIRMWARE",
    "FirmwareLibrary",
    "FirmwareRejectedError",
    "UpdateConfig",
    "UpdateConflictError",
    "UpdateManager",
    "UpdateNotFoundError",
    "UpdatePlan",
    "default_max_binary",
]

log = logging.getLogger("cyan.ota")

#: The OTA area of a Photon or P1 (§10); devices that report their own limit are held to theirs.
_OTA_AREA = {6: 262144, 8: 262144}
#: The largest binary any Gen 2 device takes: what an upload may be at most.
MAX_FIRMWARE = max(_OTA_AREA.values())
MODES = {"auto": None, "fast": True, "non_fast": False}


def default_max_binary(platform_id: int | None) -> int | None:
    return None if platform_id is None else _OTA_AREA.get(platform_id)


class FirmwareRejectedError(CloudError):
    """A binary no device of the kind would take; `reason` as `cyan.protocol.ModuleError`'s."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class UpdateConflictError(CloudError):
    """The device is being sent another update right now."""


class UpdateNotFoundError(CloudError):
    """No such job or firmware."""


def firmware_record(
    info: ModuleInfo, *, sha256: str, filename: str, uploaded_at: datetime, uploaded_by: str | None = None
) -> FirmwareRecord:
    """The record of a firmware image from its parsed module header and suffix (`parse_module`)."""
    return FirmwareRecord(
        sha256=sha256,
        size=info.size,
        platform_id=info.platform_id,
        module_function=int(info.function),
        module_index=info.index,
        module_version=info.module_version,
        product_id=info.product_id,
        product_version=info.product_version,
        module_sha256=info.module_sha256,
        crc32=info.crc32,
        filename=filename,
        uploaded_at=uploaded_at,
        uploaded_by=uploaded_by,
    )


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    #: Transfers at once, server-wide (a rollout can ask for fewer).
    max_concurrent: int = 100
    max_attempts: int = 3
    #: Before another attempt on a device that is still connected.
    retry_delay: float = 5.0
    #: After a device connects, before UpdateBegin: its start-up burst of Describe, events and
    #: subscriptions goes first (the recordings' server waited 3 s).
    start_delay: float = 1.0
    #: From the end of a transfer to the device's return after its reset.
    reconnect_timeout: float = 120.0
    #: How long to wait for the system Describe of a device that came back (legacy devices are asked
    #: for it 3 s after their Hello, §13.1 #6).
    describe_timeout: float = 15.0
    ota: OtaConfig = field(default_factory=OtaConfig)


class FirmwareLibrary:
    """Uploaded binaries: checked as a device would check them, metadata in the store, bytes on disk."""

    def __init__(self, store: UpdateRepository, files: Any) -> None:
        self.store = store
        self.files = files  # cyan.store.FirmwareFiles

    async def add(
        self, data: bytes, filename: str, uploaded_by: str | None, *, now: datetime | None = None
    ) -> FirmwareRecord:
        """Keep a binary; raises `FirmwareRejectedError` for one no Gen 2 device would apply."""
        try:
            info = parse_module(data)
        except ModuleError as exc:
            raise FirmwareRejectedError(f"{filename}: {exc}", exc.reason) from None
        sha256 = await asyncio.to_thread(self.files.put, data)
        record = firmware_record(
            info, sha256=sha256, filename=filename[-255:], uploaded_at=now or datetime.now(UTC), uploaded_by=uploaded_by
        )
        await self.store.save_firmware(record)
        return await self.store.get_firmware(sha256) or record

    async def get(self, sha256: str) -> FirmwareRecord:
        record = await self.store.get_firmware(sha256.lower())
        if record is None:
            raise UpdateNotFoundError(f"no firmware {sha256}")
        return record

    async def load(self, record: FirmwareRecord) -> bytes:
        data: bytes = await asyncio.to_thread(self.files.get, record.sha256)
        return data


def check_firmware(record: FirmwareRecord, *, platform_id: int | None, max_size: int | None) -> None:
    """Refuse, before anything is sent, what the device would refuse (`check_for_device`)."""
    try:
        check_for_device(record.platform_id, record.size, platform_id=platform_id, max_size=max_size)
    except ModuleError as exc:
        raise FirmwareRejectedError(str(exc), exc.reason) from None


def _modules(document: dict[str, Any] | None) -> list[dict[str, Any]]:
    modules = document.get("m") if document else None
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


def check_dependencies(info: ModuleInfo, document: dict[str, Any] | None) -> None:
    """Refuse an image whose module dependencies the device's modules do not meet: it would be applied,
    and the device would then restart in safe mode (breathing magenta, field-failures C15). Judged from
    the system Describe (§6.7); a dependency on a module the device does not list is not judged."""
    for function, index, version in info.dependencies:
        code = ModuleFunction(function).describe_code
        for module in _modules(document):
            running = module.get("v")
            if module.get("f") != code or str(module.get("n")) != str(index) or not isinstance(running, int):
                continue
            if running < version:
                name = ModuleFunction(function).name.lower().replace("_", " ")
                raise FirmwareRejectedError(
                    f"unmet dependency: the image needs {name} {index} version {version} or later, the device "
                    f"runs version {running}; it would restart in safe mode (update its Device OS first)",
                    "dependency",
                )


@dataclass(slots=True)
class _Verdict:
    #: True: runs the image; False: runs another; None: cannot tell.
    runs_it: bool | None
    how: str
    detail: str


def judge(record: FirmwareRecord, document: dict[str, Any] | None, hello: Any) -> _Verdict:
    """Does a device that reports `document` (its system Describe) and `hello` run `record`?"""
    entries = _modules(document)
    function = ModuleFunction(record.module_function)
    if function is ModuleFunction.USER_PART:
        hashes = [m["u"] for m in entries if m.get("f") == "u" and isinstance(m.get("u"), str)]
        if hashes:
            runs = record.module_sha256 in [h.lower() for h in hashes]
            return _Verdict(runs, "hash", f"the device runs user part {hashes[0][:16]}")
    else:
        code, index = function.describe_code, str(record.module_index)
        versions = [m.get("v") for m in entries if m.get("f") == code and str(m.get("n")) == index]
        if versions:
            runs = record.module_version in versions
            return _Verdict(runs, "module_version", f"the device runs module {code}{index} v{versions[0]}")
    if record.product_version is not None and hello is not None:
        runs = hello.product_version == record.product_version
        return _Verdict(runs, "product_version", f"the device runs product version {hello.product_version}")
    return _Verdict(None, "unverified", "the device reports neither its image's hash nor a product version")


@dataclass(slots=True)
class UpdatePlan:
    """Jobs checked and ready, not stored yet: `UpdateManager.record` stores them in the caller's transaction,
    `launch` starts them once it committed."""

    firmware: FirmwareRecord
    jobs: list[UpdateJob]
    concurrency: int | None
    #: Unfinished jobs of the same devices that the new ones replace.
    superseded: list[UpdateJob] = field(default_factory=list)


class UpdateManager:
    """Runs update jobs over the cloud's device links, a task per active job."""

    def __init__(
        self,
        cloud: Cloud,
        store: UpdateRepository,
        library: FirmwareLibrary,
        *,
        config: UpdateConfig | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cloud = cloud
        self.store = store
        self.library = library
        self.config = config or UpdateConfig()
        self._clock = clock
        self._slots = asyncio.Semaphore(self.config.max_concurrent)
        self._rollout_slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: Jobs being worked on, by id: what the API shows while a transfer runs.
        self._active: dict[int, UpdateJob] = {}
        #: Set when a device connects; waiters take a fresh one each time.
        self._presence: dict[str, asyncio.Event] = {}
        self._started = False
        self._adopting: set[asyncio.Task[None]] = set()
        cloud.bus.add_listener(self._on_bus_event)
        cloud.request_handlers[JobsQueued] = self._jobs_queued

    # -- life cycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume the jobs a previous run left unfinished: a transfer cut off by the restart is queued again.

        One of several nodes works on the jobs of the devices it holds, whoever stored them: it takes them up
        when a device connects to it (`_adopt`), or when the node that stored them says so (`JobsQueued`); a
        rollout whose node died goes on wherever its devices reconnect."""
        self._started = True
        if self.cloud.clustered:
            for device_id in self.cloud.local_device_ids():
                self._adopt_soon(device_id)
            return
        for job in reversed(await self.store.list_jobs(unfinished=True, limit=1_000_000)):
            if job.state is JobState.PAUSED:
                continue  # stays held until someone resumes it
            if job.state is JobState.SENDING:
                job.state = JobState.QUEUED
                job.detail = "the server restarted during the transfer"
                await self._save(job)
            self._spawn(job, None)

    async def stop(self) -> None:
        tasks = list(self._tasks.values()) + list(self._adopting)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._started = False

    # -- jobs ---------------------------------------------------------------------------------

    async def plan(
        self,
        device_ids: list[str],
        firmware: FirmwareRecord,
        *,
        created_by: str | None,
        mode: str = "auto",
        concurrency: int | None = None,
        max_attempts: int | None = None,
    ) -> UpdatePlan:
        """A job per device (a rollout when there are several). Refuses, before anything is queued, an
        image built for another platform or too large for a device (`FirmwareRejectedError`), and a device
        that is being sent another image right now (`UpdateConflictError`)."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        if concurrency is not None and not 1 <= concurrency <= 10_000:
            raise ValueError("concurrency must be from 1 to 10000")
        if max_attempts is not None and not 1 <= max_attempts <= 100:
            raise ValueError("max_attempts must be from 1 to 100")
        info = parse_module(await self.library.load(firmware))
        records = []
        for device_id in device_ids:
            record = await self.cloud.store.devices.get(device_id.lower())
            if record is None:
                raise DeviceNotFoundError(device_id)
            link = self.cloud.device_link(record.id)
            platform = link.hello.platform_id if link is not None and link.hello else record.platform_id
            limit = link.max_binary_size if link is not None and link.max_binary_size else None
            try:
                check_firmware(firmware, platform_id=platform, max_size=limit or default_max_binary(platform))
                if link is not None and info.dependencies:
                    check_dependencies(info, await link.system_describe(0.0))  # only one already received
            except FirmwareRejectedError as exc:
                raise FirmwareRejectedError(f"device {record.id}: {exc}", exc.reason) from None
            records.append(record)
        superseded = []
        for record in records:
            for active in await self.store.list_jobs(device_id=record.id, unfinished=True):
                if active.state is JobState.SENDING:
                    raise UpdateConflictError(f"device {record.id} is being sent update {active.id} right now")
                superseded.append(active)
        rollout = uuid.uuid4().hex if len(records) > 1 or concurrency is not None else None
        now = self._clock()
        jobs = [
            UpdateJob(
                device_id=record.id,
                firmware=firmware.sha256,
                created_at=now,
                rollout=rollout,
                created_by=created_by,
                mode=mode,
                max_attempts=max_attempts or self.config.max_attempts,
                total_bytes=firmware.size,
                updated_at=now,
            )
            for record in records
        ]
        return UpdatePlan(firmware, jobs, concurrency, superseded)

    async def record(self, plan: UpdatePlan, tx: Repositories) -> None:
        """Store the plan's jobs, and the end of the ones they replace, in the caller's transaction."""
        now = self._clock()
        for active in plan.superseded:
            active.state, active.reason = JobState.FAILED, "superseded"
            active.detail, active.finished_at, active.updated_at = "a newer update of the device replaced it", now, now
            await tx.updates.save_job(replace(active))
        for job in plan.jobs:
            await tx.updates.add_job(job)

    def launch(self, plan: UpdatePlan) -> None:
        """Start the recorded jobs (after the transaction that stored them committed)."""
        for active in plan.superseded:
            self._cancel(active.id)
            self._active.pop(active.id or 0, None)  # finished: what is stored says how
        rollout = plan.jobs[0].rollout if plan.jobs else None
        if rollout is not None and plan.concurrency is not None:
            self._rollout_slots[rollout] = asyncio.Semaphore(plan.concurrency)
        for job in plan.jobs:
            self._spawn(job, plan.firmware)
            if self.cloud.clustered and self.cloud.device_link(job.device_id) is None:
                self.cloud.tell_holder(job.device_id, JobsQueued(job.device_id))

    async def get(self, job_id: int) -> UpdateJob:
        active = self._active.get(job_id)
        if active is not None and self._current(active):
            return active
        job = await self.store.get_job(job_id)
        if job is None:
            raise UpdateNotFoundError(f"no update job {job_id}")
        return job

    async def list(
        self, *, device_id: str | None = None, rollout: str | None = None, limit: int = 100
    ) -> list[UpdateJob]:
        """Newest first, with the live progress of the jobs being worked on."""
        jobs = await self.store.list_jobs(device_id=device_id, rollout=rollout, limit=limit)
        shown = []
        for job in jobs:
            active = self._active.get(job.id or 0)
            shown.append(active if active is not None and self._current(active) else job)
        return shown

    def _current(self, active: UpdateJob) -> bool:
        """Whether this node's copy of a job it works on is the newest: always on one node; of several, only
        while this node sends it (its progress is here), since another node may have taken the job on since."""
        return not self.cloud.clustered or active.state is JobState.SENDING

    async def halt(self, job_id: int) -> None:
        """Stop working on a job that is not being sent (`UpdateConflictError` if it is): its task ends where
        it waits (for the device, a transfer slot, or the device's return), and what is stored stays as it
        was, for the caller to store the job's new state (paused, cancelled). A transfer is never cut off
        part way: the device would hold half an image until its own update timer gave up."""
        live = self._active.get(job_id)
        if live is not None and live.state is JobState.SENDING:
            raise UpdateConflictError(f"update {job_id} is being sent right now; try again when the transfer ends")
        # No await between the check above and the cancellation: the job cannot start sending in between.
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def resume(self, job: UpdateJob) -> None:
        """Work on a stored job again (after `halt`), from the state it is stored in."""
        if job.id is not None and job.id not in self._tasks and not job.state.finished:
            self._spawn(job, None)
            if self.cloud.clustered and self.cloud.device_link(job.device_id) is None:
                self.cloud.tell_holder(job.device_id, JobsQueued(job.device_id))

    # -- presence (the device server reports sessions on the bus as spark/status) ---------------

    def _on_bus_event(self, event: CloudEvent) -> None:
        if event.name == "spark/status" and event.data == "online" and event.device_id is not None:
            waiter = self._presence.pop(event.device_id, None)
            if waiter is not None:
                waiter.set()
            if self._started and self.cloud.clustered and self.cloud.device_link(event.device_id) is not None:
                self._adopt_soon(event.device_id)

    # -- the jobs of the devices this node holds (one of several nodes) ---------------------------

    async def _jobs_queued(self, message: JobsQueued) -> None:
        if self._started:
            await self._adopt(message.device_id)

    def _adopt_soon(self, device_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._adopt(device_id), name=f"cyan-update-adopt-{device_id}")
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _adopt(self, device_id: str) -> None:
        """Work on the device's unfinished jobs that no task here works on. A job stored as being sent is not
        being sent: the device's session is here now, so the node that was sending lost it (or died)."""
        try:
            jobs = await self.store.list_jobs(device_id=device_id, unfinished=True)
        except Exception:
            log.exception("could not read the update jobs of device %s", device_id)
            return
        for job in reversed(jobs):
            if job.id is None or job.id in self._tasks or job.state is JobState.PAUSED:
                continue
            if job.state is JobState.SENDING:
                job.state = JobState.QUEUED
                job.detail = "the transfer's session ended on another node"
                await self._save(job)
            self._spawn(job, None)

    async def _taken_elsewhere(self, job: UpdateJob) -> bool:
        """One of several nodes: whether another node saved the job since this one did (it sent it, finished it,
        or someone paused or cancelled it); if so, the stored job replaces this node's copy."""
        if not self.cloud.clustered or job.id is None:
            return False
        stored = await self.store.get_job(job.id)
        if stored is None or stored.updated_at == job.updated_at:
            return False
        for item in fields(UpdateJob):
            setattr(job, item.name, getattr(stored, item.name))
        if job.state is JobState.SENDING and self.cloud.device_link(job.device_id) is not None:
            job.state = JobState.QUEUED  # the device is here: the node that was sending lost its session
        return True

    async def _session(self, device_id: str, *, other_than: DeviceLink | None, timeout: float | None) -> DeviceLink:
        """The device's link once it is connected (in a session other than `other_than`); TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                link = self.cloud.device_link(device_id)
                if link is not None and link is not other_than:
                    return link
                waiter = self._presence.setdefault(device_id, asyncio.Event())
                await waiter.wait()

    # -- one job ------------------------------------------------------------------------------

    def _spawn(self, job: UpdateJob, firmware: FirmwareRecord | None) -> None:
        assert job.id is not None
        self._active[job.id] = job
        task = asyncio.get_running_loop().create_task(self._run(job, firmware), name=f"cyan-update-{job.id}")
        self._tasks[job.id] = task
        # Only this task's own entry: a job halted and resumed has a newer task under the same id.
        task.add_done_callback(
            lambda done: self._tasks.pop(job.id or 0) if self._tasks.get(job.id or 0) is done else None
        )

    def _cancel(self, job_id: int | None) -> None:
        task = self._tasks.pop(job_id or 0, None)
        if task is not None:
            task.cancel()

    async def _run(self, job: UpdateJob, firmware: FirmwareRecord | None) -> None:
        try:
            record = firmware or await self.library.get(job.firmware)
            image = await self.library.load(record)
            info = parse_module(image)
            last_link: DeviceLink | None = None
            while not job.state.finished:
                if job.state is JobState.PAUSED:
                    return  # paused on another node: resumed, it is started again
                if job.state is JobState.WAITING:
                    await self._confirm(job, record, last_link)
                else:
                    last_link = await self._attempt(job, record, image, info)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("update job %s of device %s failed unexpectedly", job.id, job.device_id)
            await self._finish(job, JobState.FAILED, "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            self._active.pop(job.id or 0, None)

    async def _attempt(
        self, job: UpdateJob, record: FirmwareRecord, image: bytes, info: ModuleInfo
    ) -> DeviceLink | None:
        """Wait for the device and a slot, then send the image once. Returns the link it was sent over."""
        config = self.config
        link = await self._session(job.device_id, other_than=None, timeout=None)
        await asyncio.sleep(config.start_delay)
        link = self.cloud.device_link(job.device_id) or link
        if await self._taken_elsewhere(job):
            return None  # go on from the state the other node left it in
        hello = link.hello
        platform = hello.platform_id if hello is not None else None
        try:
            check_firmware(record, platform_id=platform, max_size=link.max_binary_size or default_max_binary(platform))
            if info.dependencies:
                check_dependencies(info, await link.system_describe(self.config.describe_timeout))
        except FirmwareRejectedError as exc:
            await self._finish(job, JobState.FAILED, exc.reason, f"nothing was sent: {exc}")
            return link
        if job.attempts > 0:
            # An earlier attempt may have been applied although its end was not seen.
            verdict = await self._judge(link, record)
            if verdict.runs_it:
                await self._succeed(job, verdict)
                return link
        limit = self._rollout_slots.get(job.rollout or "")
        async with self._slots, limit or contextlib.nullcontext():
            if self.cloud.device_link(job.device_id) is not link:
                return None  # it reconnected meanwhile: start over with the new session
            job.attempts += 1
            job.state = JobState.SENDING
            job.bytes_sent = 0
            job.started_at = job.started_at or self._clock()
            await self._save(job)
            log.info(
                "update job %s: sending %s to device %s (attempt %d)",
                job.id,
                record.sha256[:12],
                job.device_id,
                job.attempts,
            )

            def progress(delivered: int, total: int) -> None:
                job.bytes_sent = delivered

            try:
                outcome = await link.update_firmware(image, fast=MODES[job.mode], progress=progress)
            except ConnectionError as exc:
                outcome = OtaOutcome(False, False, "disconnected", str(exc), None, 0, 0, 0.0)
        job.bytes_sent = outcome.bytes_delivered
        job.reason, job.detail = outcome.reason, outcome.detail
        if outcome.complete:
            job.transfer_seconds = outcome.elapsed
            job.state = JobState.WAITING
        elif outcome.reason == "rejected":
            await self._finish(job, JobState.FAILED, "rejected", outcome.detail)
            return link
        elif self.cloud.device_link(job.device_id) is not link:
            # The session ended: if everything had arrived the device may be applying it; its return says.
            job.state = JobState.WAITING
        else:
            await self._retry(job, outcome.reason or "failed", outcome.detail)
        await self._save(job)
        return link

    async def _confirm(self, job: UpdateJob, record: FirmwareRecord, sent_over: DeviceLink | None) -> None:
        """After a transfer: wait for the device's next session and judge what it runs."""
        try:
            link = await self._session(job.device_id, other_than=sent_over, timeout=self.config.reconnect_timeout)
        except TimeoutError:
            if await self._taken_elsewhere(job):
                return  # the device came back to another node, which judged it
            await self._retry(
                job, "no_reconnect", f"the device did not come back within {self.config.reconnect_timeout:g} s"
            )
            return
        verdict = await self._judge(link, record)
        if verdict.runs_it or (verdict.runs_it is None and job.reason is None):
            await self._succeed(job, verdict)
        else:
            await self._retry(job, "not_applied", f"the device came back without the image: {verdict.detail}")

    async def _judge(self, link: DeviceLink, record: FirmwareRecord) -> _Verdict:
        document = await link.system_describe(self.config.describe_timeout)
        return judge(record, document, link.hello)

    async def _succeed(self, job: UpdateJob, verdict: _Verdict) -> None:
        job.verification = verdict.how
        job.bytes_sent = job.total_bytes
        await self._finish(job, JobState.SUCCEEDED, None, verdict.detail)
        log.info("update job %s: device %s runs the new image (%s)", job.id, job.device_id, verdict.how)

    async def _retry(self, job: UpdateJob, reason: str, detail: str) -> None:
        if job.attempts >= job.max_attempts:
            await self._finish(job, JobState.FAILED, reason, f"after {job.attempts} attempts: {detail}")
            return
        log.info("update job %s: attempt %d failed (%s: %s); trying again", job.id, job.attempts, reason, detail)
        job.state = JobState.QUEUED
        job.reason, job.detail = reason, detail
        await self._save(job)
        await asyncio.sleep(self.config.retry_delay)

    async def _finish(self, job: UpdateJob, state: JobState, reason: str | None, detail: str) -> None:
        job.state = state
        job.reason, job.detail = reason, detail
        job.finished_at = self._clock()
        await self._save(job)
        if state is JobState.FAILED:
            log.warning("update job %s of device %s failed: %s: %s", job.id, job.device_id, reason, detail)

    async def _save(self, job: UpdateJob) -> None:
        job.updated_at = self._clock()
        await self.store.save_job(replace(job))
