"""Device vitals in Particle's shape (`GET /v1/diagnostics/:deviceId`, the ``spark/device/diagnostics/update``
event): what the device reports of itself, and what only the server sees.

What Gen 2 firmware reports (protocol.md §6.7, §16 #16): Device OS 1.2 and later (Hello flag 0x02) answer a
metrics Describe with their diagnostics, a list of (source id, int32) from Device OS's ``diagnostics.h``;
they also post one unasked when the application calls ``Particle.publishVitals()``. Nothing comes unasked
otherwise (the 3.1.0 recording has none). 0.6.x has no diagnostics at all: its vitals are the server's only.

What the server adds (``service``): the round trip of a ping it sends, the session's uptime and how many
events the device published in it, when the last handshake happened and how long it took, and how many
times the device connected in the last 24 hours (from the connection-attempt records).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cyan.tasks import TaskSet

from .errors import DeviceOfflineError, DeviceQuarantinedError
from .models import AttemptOutcome, CloudEvent, LinkDiagnostics, VitalsRecord, iso_time
from .ports import Store, StoreUnavailableError
from .service import Cloud, SessionFacts

__all__ = ["DIAGNOSTICS", "VITALS_EVENT", "ServerObservations", "VitalsCollector", "vitals_payload"]

log = logging.getLogger("cyan.vitals")

#: The event Particle's cloud publishes with a device's vitals.
VITALS_EVENT = "spark/device/diagnostics/update"

#: Device OS ``services/inc/diagnostics.h`` ids of what Gen 2 devices report, by their short names.
DIAGNOSTICS = {
    "sys:reset": 1,
    "mem:free": 2,
    "sys:uptime": 6,
    "net:stat": 8,
    "net:err": 9,
    "cloud:stat": 10,
    "net:dconn": 12,
    "cloud:err": 13,
    "cloud:dconn": 14,
    "net:rssi": 19,
    "pub:throttle": 20,
    "coap:resend": 21,
    "coap:unack": 22,
    "sys:tram": 25,
    "sys:uram": 26,
    "net:connatt": 27,
    "net:dconnrsn": 28,
    "cloud:connatt": 29,
    "cloud:dconnrsn": 30,
    "net:sigstr": 33,
    "net:sigqual": 34,
    "net:sigqualv": 35,
    "net:at": 36,
    "net:sigstrv": 37,
}
_ID = DIAGNOSTICS

#: A device's posted vitals are recorded at most this often (seconds); `_POSTED_TRACKED` devices remembered.
_POSTED_INTERVAL = 1.0
_POSTED_TRACKED = 10_000

_NETWORK_STATUS = [
    "turned_off",
    "turning_on",
    "disconnected",
    "connecting",
    "connected",
    "disconnecting",
    "turning_off",
]
_CLOUD_STATUS = ["disconnected", "connecting", "connected", "disconnecting"]
# system_defs.h (protocol.md §6.10 lists the same reasons for Goodbye).
_NETWORK_REASON = ["none", "error", "user", "network_off", "listening", "sleep", "reset", "unknown"]
_CLOUD_REASON = ["none", "error", "user", "network_disconnect", "listening", "reset", "sleep", "unknown"]
_ACCESS_TECHNOLOGY = ["none", "Wi-Fi", "GSM", "EDGE", "UMTS", "CDMA", "LTE", "IEEE802154", "LTE Cat M1", "LTE Cat NB1"]


def _named(names: list[str], value: int) -> str:
    return names[value] if 0 <= value < len(names) else "unknown"


@dataclass(frozen=True, slots=True)
class ServerObservations:
    """What the server saw of the device when the record was made."""

    online: bool
    #: When the current session started (the end of its handshake).
    session_started: datetime | None = None
    #: Events the device published in the current session.
    published: int | None = None
    #: The latest successful handshake: when it started and how long it took (seconds).
    handshake_at: datetime | None = None
    handshake_duration: float | None = None
    #: Sessions the device started in the 24 hours before the record.
    connections_24h: int = 0
    #: The round trip of the server's ping (seconds).
    round_trip: float | None = None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def vitals_payload(metrics: Mapping[int, int] | None, server: ServerObservations, now: datetime) -> dict[str, Any]:
    """Particle's vitals payload: ``device`` from the device's own diagnostics (only what it reported),
    ``service`` from the server. Values the device sends as fixed point are converted as Device OS defines them
    (signal strength and quality in percent: 8.8; in dBm and dB: 16.16)."""
    payload: dict[str, Any] = {}
    if metrics:
        payload["device"] = _device_part(metrics)
    service: dict[str, Any] = {"device": {"status": "ok" if server.online else "offline"}}
    cloud: dict[str, Any] = {}
    if server.session_started is not None:
        cloud["uptime"] = max(0, int((now - server.session_started).total_seconds()))
    if server.published is not None:
        cloud["publish"] = {"sent": server.published}
    connection: dict[str, Any] = {"reconnects_24h": max(0, server.connections_24h - 1)}
    if server.handshake_at is not None:
        connection["handshake_at"] = iso_time(server.handshake_at)
    if server.handshake_duration is not None:
        connection["handshake_duration"] = _ms(server.handshake_duration)
    cloud["connection"] = connection
    service["cloud"] = cloud
    if server.round_trip is not None:
        service["coap"] = {"round_trip": _ms(server.round_trip)}
    payload["service"] = service
    return payload


def _device_part(m: Mapping[int, int]) -> dict[str, Any]:
    def has(name: str) -> bool:
        return _ID[name] in m

    def value(name: str) -> int:
        return m[_ID[name]]

    device: dict[str, Any] = {}
    network: dict[str, Any] = {}
    signal: dict[str, Any] = {}
    if has("net:at"):
        signal["at"] = _named(_ACCESS_TECHNOLOGY, value("net:at"))
    if has("net:sigstr"):
        signal.update(strength=round(value("net:sigstr") / 256, 2), strength_units="%")
    if has("net:sigstrv") or has("net:rssi"):
        dbm = value("net:sigstrv") / 65536 if has("net:sigstrv") else value("net:rssi") / 256
        signal.update(strengthv=round(dbm, 2), strengthv_units="dBm", strengthv_type="RSSI")
    if has("net:sigqual"):
        signal.update(quality=round(value("net:sigqual") / 256, 2), quality_units="%")
    if has("net:sigqualv"):
        signal.update(qualityv=round(value("net:sigqualv") / 65536, 2), qualityv_units="dB", qualityv_type="SNR")
    if signal:
        network["signal"] = signal
    net_connection = _connection(m, "net", _NETWORK_STATUS, _NETWORK_REASON)
    if net_connection:
        network["connection"] = net_connection
    if network:
        device["network"] = network
    cloud: dict[str, Any] = {}
    cloud_connection = _connection(m, "cloud", _CLOUD_STATUS, _CLOUD_REASON)
    if cloud_connection:
        cloud["connection"] = cloud_connection
    coap = {}
    if has("coap:resend"):
        coap["retransmit"] = value("coap:resend")
    if has("coap:unack"):
        coap["unack"] = value("coap:unack")
    if coap:
        cloud["coap"] = coap
    if has("pub:throttle"):
        cloud["publish"] = {"rate_limited": value("pub:throttle")}
    if cloud:
        device["cloud"] = cloud
    system: dict[str, Any] = {}
    if has("sys:uptime"):
        system["uptime"] = value("sys:uptime")
    memory = {}
    if has("sys:uram"):
        memory["used"] = value("sys:uram")
    elif has("sys:tram") and has("mem:free"):
        memory["used"] = value("sys:tram") - value("mem:free")
    if has("sys:tram"):
        memory["total"] = value("sys:tram")
    if memory:
        system["memory"] = memory
    if system:
        device["system"] = system
    return device


def _connection(m: Mapping[int, int], kind: str, statuses: list[str], reasons: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, name in (("stat", "status"), ("err", "error"), ("dconn", "disconnects"), ("connatt", "attempts")):
        source = _ID[f"{kind}:{key}"]
        if source in m:
            found[name] = _named(statuses, m[source]) if name == "status" else m[source]
    reason = _ID[f"{kind}:dconnrsn"]
    if reason in m:
        found["disconnect_reason"] = _named(reasons, m[reason])
    return found


class VitalsCollector:
    """Makes vitals records: asks a connected device (`refresh`) or takes what it posts unasked, adds what the
    server saw, stores the record and publishes it as ``spark/device/diagnostics/update``."""

    def __init__(
        self,
        cloud: Cloud,
        store: Store,
        *,
        timeout: float = 10.0,
        keep: int = 1000,
        max_age: timedelta = timedelta(days=30),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        ticks: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cloud = cloud
        self.store = store
        self.timeout = timeout
        #: Records kept per device, and their age at most (Particle keeps a month).
        self.keep = keep
        self.max_age = max_age
        self._clock = clock
        self._tasks = TaskSet(log, "cyan-vitals")
        self._refreshing: set[str] = set()
        self._pruning: asyncio.Task[None] | None = None
        self._ticks = ticks
        #: When each device's posted vitals were last recorded (`ticks`).
        self._posted_at: dict[str, float] = {}
        cloud.metrics_listeners.append(self.metrics_posted)

    def refresh(self, device_id: str) -> None:
        """Ask the device for its vitals now; the record follows (or not, if the device goes away). One
        request per device at a time: another one meanwhile joins it."""
        if self.cloud.session_facts(device_id) is None:
            if self.cloud.quarantined(device_id):
                raise DeviceQuarantinedError(device_id)
            raise DeviceOfflineError(device_id)
        if device_id in self._refreshing:
            return
        self._refreshing.add(device_id)
        self._tasks.spawn(self._refresh(device_id), f"ask device {device_id} for its vitals")

    async def _refresh(self, device_id: str) -> None:
        try:
            await self.collect(device_id)
        finally:
            self._refreshing.discard(device_id)

    async def collect(self, device_id: str) -> VitalsRecord | None:
        """Ask the device and record its vitals; None when it is not connected (any more)."""
        facts = self.cloud.session_facts(device_id)
        if facts is None:
            return None
        try:
            measured = await facts.link.diagnose(self.timeout)
        except ConnectionError:
            return None
        if measured.error:
            log.info("vitals of device %s: %s", device_id, measured.error)
        return await self._record(facts, measured)

    def metrics_posted(self, device_id: str, values: dict[int, int]) -> None:
        """A device posted its vitals (`Particle.publishVitals()`): recorded, at most once a second per device
        (a firmware posting in a loop must not write the database in one)."""
        facts = self.cloud.session_facts(device_id)
        if facts is None:
            return
        now = self._ticks()
        if now - self._posted_at.get(device_id, float("-inf")) < _POSTED_INTERVAL:
            return
        if len(self._posted_at) >= _POSTED_TRACKED:
            self._posted_at = {d: t for d, t in self._posted_at.items() if now - t < _POSTED_INTERVAL}
        self._posted_at[device_id] = now
        self._tasks.spawn(self._posted(facts, values), f"record the vitals device {device_id} posted")

    async def _posted(self, facts: SessionFacts, values: dict[int, int]) -> None:
        await self._record(facts, LinkDiagnostics(None, values))

    async def _record(self, facts: SessionFacts, measured: LinkDiagnostics) -> VitalsRecord:
        now = self._clock()
        device_id = facts.record.id
        server = await self._observations(facts, measured, now)
        payload = vitals_payload(measured.metrics, server, now)
        record = VitalsRecord(device_id, now, payload)
        await self.store.vitals.add(record, keep=self.keep)
        data = json.dumps(payload, separators=(",", ":"))
        self.cloud.bus.publish(CloudEvent(VITALS_EVENT, data, 60, now, device_id, facts.record.owner, True))
        return record

    async def _observations(self, facts: SessionFacts, measured: LinkDiagnostics, now: datetime) -> ServerObservations:
        attempts = await self.store.attempts.recent(facts.record.id, since=now - timedelta(hours=24), limit=10_000)
        connected = [a for a in attempts if a.outcome is AttemptOutcome.CONNECTED and a.proven]
        latest = connected[0] if connected else None
        return ServerObservations(
            online=True,
            session_started=facts.started_at,
            published=facts.published,
            handshake_at=latest.started_at if latest else None,
            handshake_duration=latest.duration if latest else None,
            connections_24h=len(connected),
            round_trip=measured.round_trip,
        )

    async def prune(self) -> int:
        """Delete the records older than `max_age`."""
        return await self.store.vitals.prune(before=self._clock() - self.max_age)

    def start(self, prune_interval: float = 3600.0) -> None:
        """Prune the records past their age now and every `prune_interval` seconds."""
        self._pruning = asyncio.get_running_loop().create_task(
            self._prune_now_and_then(prune_interval), name="cyan-vitals-prune"
        )

    async def _prune_now_and_then(self, interval: float) -> None:
        while True:
            try:
                if pruned := await self.prune():
                    log.info("deleted %d device vitals record(s) past their age", pruned)
            except StoreUnavailableError as exc:
                log.warning("pruning device vitals postponed: %s", exc)
            await asyncio.sleep(interval)

    async def drain(self) -> None:
        """Wait for the requests and records under way."""
        await self._tasks.drain()

    async def stop(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruning
            self._pruning = None
        await self._tasks.cancel()
