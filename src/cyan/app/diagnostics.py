"""What the server saw of devices: their connection attempts explained, the doctor's report, and the attempts
that name no device (admins only: they belong to no account, and their addresses say where others' devices
are)."""

from __future__ import annotations

from datetime import datetime, timedelta

from cyan.cloud.errors import NotFoundError, PermissionDeniedError
from cyan.cloud.models import ConnectionAttempt, DeviceRecord
from cyan.diagnose.gather import DEFAULT_PERIOD, doctor_from_store, unidentified_from_store
from cyan.diagnose.server_evidence import GROUP_GAP, LOOP_FAILURES, LOOP_WINDOW, DoctorReport, UnidentifiedGroup

from ._context import DEVICE_ID, AppContext, visible_device
from .actors import Actor

__all__ = ["Diagnostics"]

_MAX_ATTEMPTS = 1000


class Diagnostics:
    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx

    async def attempts(
        self,
        actor: Actor,
        device: str | None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> tuple[DeviceRecord | None, list[ConnectionAttempt]]:
        """One device's attempts (its owner or an admin), or every attempt (admins), newest first."""
        limit = max(1, min(limit, _MAX_ATTEMPTS))
        store = self._ctx.store
        record = None
        if device is not None:
            record = await visible_device(store, actor, device)
        elif not actor.is_admin:
            raise PermissionDeniedError("every device's attempts are for admins; name one of your devices")
        found = await store.attempts.recent(record.id if record else None, since=since, limit=limit)
        return record, [a for a in found if until is None or a.started_at <= until]

    async def doctor(
        self,
        actor: Actor,
        device: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        min_failures: int = LOOP_FAILURES,
        window: timedelta = LOOP_WINDOW,
    ) -> DoctorReport:
        """The doctor's report for a device. An operator may ask about an id nobody registered (its attempts are
        recorded as unknown_device); an account only about its own devices."""
        store = self._ctx.store
        now = self._ctx.clock()
        try:
            record = await visible_device(store, actor, device)
            name = record.id
        except NotFoundError:
            if not actor.is_admin or not DEVICE_ID.fullmatch(device):
                raise
            name = device.lower()  # an id nobody registered: its attempts say what it tried
        report = await doctor_from_store(
            store,
            name,
            now=now,
            since=since or now - DEFAULT_PERIOD,
            until=until,
            online=await self._ctx.sessions.connected(name),
            include_unregistered=actor.is_admin,
            min_failures=min_failures,
            window=window,
        )
        if report is None:
            raise NotFoundError(f"no device {device!r}")
        return report

    async def unidentified(
        self,
        actor: Actor,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        gap: timedelta = GROUP_GAP,
    ) -> list[UnidentifiedGroup]:
        if not actor.is_admin:
            raise PermissionDeniedError(
                "unidentified attempts belong to no account; only admins may read them "
                "(cyan users role EMAIL admin, or `cyan devices unidentified` on the server)"
            )
        now = self._ctx.clock()
        return await unidentified_from_store(
            self._ctx.store, now=now, since=since or now - DEFAULT_PERIOD, until=until, gap=gap
        )
