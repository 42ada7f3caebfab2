"""The fleet at a glance: counts, devices failing to connect now, alerts, and the device list searched, sorted and
paged by the store. Reading only; a user sees their own devices, an admin the fleet (`Actor.sees`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from cyan.cloud.alerts import Alert, LoggingAlerts
from cyan.cloud.errors import InvalidInputError
from cyan.cloud.models import AttemptOutcome, CloudEvent, ConnectionAttempt, DeviceRecord
from cyan.cloud.queries import DeviceQuery, DeviceStatus

from ._context import AppContext
from .actors import Actor

__all__ = ["FAILING_WINDOW", "MAX_PAGE", "DeviceRow", "FleetPage", "FleetSummary", "FleetUseCases"]

#: A device counts as failing to connect "now" when its newest attempt in this window failed. The firmware's
#: reconnect backoff tops out at 128 s, so a device that is still trying fails about seven times in 15 minutes;
#: one that stopped trying longer ago is offline, not failing.
FAILING_WINDOW = timedelta(minutes=15)
#: The most devices one page shows.
MAX_PAGE = 500
#: How long a read waits for the session records written behind (cloud/writer.py) to reach the store, so that
#: a count asked right after a device came or went includes it. Past this it answers with what is stored.
SETTLE_TIMEOUT = 1.0
_FAILING_SHOWN = 20


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device in the list: its record (the live one while connected), what it is doing, and why."""

    record: DeviceRecord
    #: online, quarantined, failing, pending or offline, in that order of precedence.
    status: str
    pending_keys: int
    last_attempt: ConnectionAttempt | None


@dataclass(frozen=True, slots=True)
class FleetPage:
    total: int
    offset: int
    limit: int
    rows: list[DeviceRow]


@dataclass(frozen=True, slots=True)
class FleetSummary:
    at: datetime
    total: int
    online: int
    failing: int
    pending_devices: int
    pending_keys: int
    quarantined: int
    rekey_windows: int
    #: Failed attempts in the window that named no device (admins only; None for users): a device holding
    #: another server key cannot name itself (protocol.md §9.3).
    unidentified_failures: int | None
    failing_devices: list[DeviceRow] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)

    @property
    def offline(self) -> int:
        return self.total - self.online


class FleetUseCases:
    def __init__(self, ctx: AppContext, *, settle: Callable[[], Awaitable[None]] | None = None) -> None:
        self._ctx = ctx
        self._settle = settle

    async def _settled(self) -> None:
        if self._settle is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settle(), SETTLE_TIMEOUT)

    @staticmethod
    def _scope(actor: Actor, query: DeviceQuery) -> DeviceQuery:
        """The query limited to what the actor sees: a user's own devices whatever owner they asked for."""
        if actor.is_admin:
            return query
        return replace(query, owner=actor.username or "\x00nobody")

    async def devices(self, actor: Actor, query: DeviceQuery) -> FleetPage:
        """One page of the actor's devices (admins: the fleet's, or one owner's) matching the query."""
        if not 0 <= query.limit <= MAX_PAGE:
            raise InvalidInputError(f"limit is from 0 to {MAX_PAGE}", "limit")
        if not 0 <= query.offset <= 10**9:
            raise InvalidInputError("offset is a whole number from 0", "offset")
        now = self._ctx.clock()
        if query.status is DeviceStatus.FAILING and query.failing_since is None:
            query = replace(query, failing_since=now - FAILING_WINDOW)
        await self._settled()
        page = await self._ctx.store.devices.search(self._scope(actor, query))
        return FleetPage(page.total, query.offset, query.limit, await self._rows(page.devices, now))

    async def _rows(self, records: list[DeviceRecord], now: datetime) -> list[DeviceRow]:
        store, sessions = self._ctx.store, self._ctx.sessions
        ids = [r.id for r in records]
        latest = await store.attempts.latest(ids, since=now - FAILING_WINDOW) if ids else {}
        pending: dict[str, int] = {}
        if ids:
            for key in await store.keys.list_pending_keys():
                pending[key.device_id] = pending.get(key.device_id, 0) + 1
        rows = []
        for record in records:
            live = sessions.live(record.id)
            shown = record
            if live is not None:
                shown = replace(live, name=record.name, owner=record.owner, key_fingerprint=record.key_fingerprint)
            attempt = latest.get(record.id)
            # Without live sessions here (the command line), the stored state says whether it is connected.
            if (
                live is not None
                or sessions.shown_online(record)
                or (record.online and await sessions.connected(record.id))
            ):
                status = "online"
            elif sessions.quarantined(record.id):
                status = "quarantined"
            elif attempt is not None and attempt.outcome is AttemptOutcome.FAILED:
                status = "failing"
            elif pending.get(record.id):
                status = "pending"
            else:
                status = "offline"
            rows.append(DeviceRow(shown, status, pending.get(record.id, 0), attempt))
        return rows

    async def summary(self, actor: Actor) -> FleetSummary:
        store, sessions = self._ctx.store, self._ctx.sessions
        now = self._ctx.clock()
        since = now - FAILING_WINDOW
        await self._settled()

        async def count(status: DeviceStatus | None) -> int:
            query = DeviceQuery(status=status, failing_since=since, limit=0)
            return (await store.devices.search(self._scope(actor, query))).total

        total, online, failing = await count(None), await count(DeviceStatus.ONLINE), await count(DeviceStatus.FAILING)
        failing_page = await store.devices.search(
            self._scope(actor, DeviceQuery(status=DeviceStatus.FAILING, failing_since=since, limit=_FAILING_SHOWN))
        )
        every_pending = await store.keys.list_pending_keys()
        visible = await self._visible_ids(actor, [k.device_id for k in every_pending])
        pending = [k for k in every_pending if k.device_id in visible]
        pending_devices = {k.device_id for k in pending}
        windows = await store.keys.list_rekeys()
        open_windows = await self._visible_ids(actor, [w.device_id for w in windows if w.open_at(now)])
        unidentified = None
        if actor.is_admin:
            recent = await store.attempts.recent(None, since=since, limit=10_000)
            unidentified = sum(1 for a in recent if a.device_id is None and a.outcome is AttemptOutcome.FAILED)
        return FleetSummary(
            at=now,
            total=total,
            online=online,
            failing=failing,
            pending_devices=len(pending_devices),
            pending_keys=len(pending),
            quarantined=sum(1 for d in pending_devices if sessions.quarantined(d)),
            rekey_windows=len(open_windows),
            unidentified_failures=unidentified,
            failing_devices=await self._rows(failing_page.devices, now),
            alerts=await self.alerts(actor),
        )

    async def alerts(self, actor: Actor, limit: int = 50) -> list[Alert]:
        """The most recent alerts about what the actor sees, newest first. Alerts are kept in memory by the
        server that raised them (cloud/alerts.py), so these are the ones since it started."""
        sink = self._ctx.alerts
        if not isinstance(sink, LoggingAlerts):
            return []
        recent = list(reversed(sink.recent))
        if actor.is_admin:
            return recent[:limit]
        visible = await self._visible_ids(actor, [a.device_id for a in recent if a.device_id is not None])
        return [a for a in recent if a.device_id in visible][:limit]

    async def _visible_ids(self, actor: Actor, device_ids: list[str]) -> set[str]:
        if actor.is_admin:
            return set(device_ids)
        found = set()
        for device_id in set(device_ids):
            record = await self._ctx.store.devices.get(device_id)
            if record is not None and actor.sees(record):
                found.add(record.id)
        return found

    async def groups(self, actor: Actor) -> dict[str, int]:
        """Group names and how many of the actor's devices each holds (groups with none of them are not named)."""
        store = self._ctx.store
        groups = await store.updates.list_groups()
        if actor.is_admin:
            return groups
        found = {}
        for name in groups:
            members = await self._visible_ids(actor, await store.updates.list_group(name))
            if members:
                found[name] = len(members)
        return found

    @staticmethod
    def event_filter(actor: Actor) -> Callable[[CloudEvent], bool]:
        """Which events a fleet stream shows the actor: an admin, every device's and the API's; a user, those of
        their own devices and their own. The owner is the event's (at publication), not the device's now."""
        if actor.is_admin:
            return lambda event: True
        user = actor.username
        return lambda event: user is not None and event.owner == user
