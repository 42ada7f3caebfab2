"""Device vitals (Particle's `/v1/diagnostics/:deviceId`): a device's owner, or an admin, reads its history and
its latest record and asks the device for fresh ones; anyone else is told there is no such device."""

from __future__ import annotations

from datetime import datetime

from cyan.cloud.errors import InvalidInputError
from cyan.cloud.models import VitalsRecord
from cyan.cloud.vitals import VitalsCollector

from ._context import AppContext, visible_device
from .actors import Actor

__all__ = ["MAX_HISTORY", "VitalsUseCases"]

#: Records one request returns at most.
MAX_HISTORY = 1000


class VitalsUseCases:
    def __init__(self, ctx: AppContext, collector: VitalsCollector | None) -> None:
        self._ctx = ctx
        self._collector = collector

    async def history(
        self,
        actor: Actor,
        device: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = MAX_HISTORY,
    ) -> tuple[str, list[VitalsRecord]]:
        """The device's id and its records within [since, until] (the newest `limit`), oldest first."""
        if since is not None and until is not None and since > until:
            raise InvalidInputError("start_date is after end_date", "start_date")
        record = await visible_device(self._ctx.store, actor, device)
        limit = max(1, min(limit, MAX_HISTORY))
        return record.id, await self._ctx.store.vitals.history(record.id, since=since, until=until, limit=limit)

    async def last(self, actor: Actor, device: str) -> tuple[str, VitalsRecord | None]:
        record = await visible_device(self._ctx.store, actor, device)
        return record.id, await self._ctx.store.vitals.last(record.id)

    async def refresh(self, actor: Actor, device: str) -> str:
        """Ask the connected device for its vitals; the record (and its event) follow. The device's id."""
        record = await visible_device(self._ctx.store, actor, device)
        if self._collector is None:
            raise InvalidInputError("this server serves no devices: it cannot ask one for its vitals", "deviceId")
        self._collector.refresh(record.id)
        return record.id
