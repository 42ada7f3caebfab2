"""Device vitals: Particle's payload from what a device reports and what the server saw, and the collector that
asks, records and publishes them (over the in-memory store and a fake link)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cyan.bus import InProcessBus
from cyan.cloud.errors import DeviceOfflineError, DeviceQuarantinedError
from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, DeviceRecord, LinkDiagnostics, VitalsRecord
from cyan.cloud.service import Cloud
from cyan.cloud.vitals import DIAGNOSTICS, VITALS_EVENT, ServerObservations, VitalsCollector, vitals_payload
from cyan.protocol import Hello, HelloFlag, OtaOutcome
from cyan.sim._device import PHOTON_DIAGNOSTICS
from cyan.store import MemoryStore

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DEVICE = "0123456789abcdef01234567"
HELLO = Hello(6, 0xFFFF, HelloFlag(0x36), 6, 3103, 960, 262144, 512)


def test_a_photons_diagnostics_fill_particles_device_part() -> None:
    metrics = {**PHOTON_DIAGNOSTICS, DIAGNOSTICS["sys:uptime"]: 2001, DIAGNOSTICS["cloud:connatt"]: 3}
    server = ServerObservations(online=True, session_started=NOW - timedelta(seconds=90), published=7)
    payload = vitals_payload(metrics, server, NOW)
    assert payload["device"] == {
        "network": {
            "signal": {
                "at": "Wi-Fi",
                "strength": 54.0,
                "strength_units": "%",
                "strengthv": -73.0,
                "strengthv_units": "dBm",
                "strengthv_type": "RSSI",
                "quality": 32.25,
                "quality_units": "%",
                "qualityv": 19.0,
                "qualityv_units": "dB",
                "qualityv_type": "SNR",
            },
            "connection": {
                "status": "connected",
                "error": 0,
                "disconnects": 0,
                "attempts": 1,
                "disconnect_reason": "none",
            },
        },
        "cloud": {
            "connection": {"status": "connected", "error": 0, "attempts": 3, "disconnect_reason": "none"},
            "coap": {"retransmit": 0, "unack": 0},
            "publish": {"rate_limited": 0},
        },
        "system": {"uptime": 2001, "memory": {"used": 32992, "total": 83200}},
    }
    assert payload["service"] == {
        "device": {"status": "ok"},
        "cloud": {"uptime": 90, "publish": {"sent": 7}, "connection": {"reconnects_24h": 0}},
    }


def test_what_only_the_server_sees() -> None:
    server = ServerObservations(
        online=True,
        session_started=NOW - timedelta(seconds=5),
        published=0,
        handshake_at=NOW - timedelta(seconds=6),
        handshake_duration=0.0421,
        connections_24h=4,
        round_trip=0.0123,
    )
    payload = vitals_payload(None, server, NOW)
    assert "device" not in payload  # the firmware reported nothing of itself (0.6.x)
    assert payload["service"] == {
        "device": {"status": "ok"},
        "cloud": {
            "uptime": 5,
            "publish": {"sent": 0},
            "connection": {
                "reconnects_24h": 3,
                "handshake_at": "2026-11-25T11:59:54.000Z",
                "handshake_duration": 42,
            },
        },
        "coap": {"round_trip": 12},
    }
    assert vitals_payload({}, ServerObservations(online=False), NOW)["service"]["device"] == {"status": "offline"}


def test_odd_values_are_named_unknown_and_unknown_sources_ignored() -> None:
    ids = DIAGNOSTICS
    metrics = {ids["net:stat"]: 99, ids["cloud:dconnrsn"]: -1, ids["net:at"]: 42, 4242: 7, ids["net:rssi"]: -17920}
    metrics |= {ids["sys:tram"]: 1000, ids["mem:free"]: 250}
    device = vitals_payload(metrics, ServerObservations(online=True), NOW)["device"]
    assert device["network"] == {
        "signal": {"at": "unknown", "strengthv": -70.0, "strengthv_units": "dBm", "strengthv_type": "RSSI"},
        "connection": {"status": "unknown"},
    }
    assert device["cloud"] == {"connection": {"disconnect_reason": "unknown"}}
    assert device["system"] == {"memory": {"used": 750, "total": 1000}}


# -- the collector ----------------------------------------------------------------------------------------


@dataclass
class Link:
    device_id: str = DEVICE
    peer_address: str = "127.0.0.1:40000"
    measured: LinkDiagnostics = field(default_factory=lambda: LinkDiagnostics(0.02, {6: 100, 10: 2}))
    asked: int = 0
    gate: asyncio.Event | None = None
    #: The connection went away meanwhile: a real link's measurement then fails.
    gone: bool = False
    hello: Hello | None = HELLO
    max_binary_size: int | None = None
    key_fingerprint: str | None = None

    async def diagnose(self, timeout: float) -> LinkDiagnostics:
        self.asked += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.gone:
            raise ConnectionError(f"device {self.device_id} disconnected")
        return self.measured

    async def call_function(self, name: str, argument: str, timeout: float) -> int:
        raise NotImplementedError

    async def read_variable(self, name: str, timeout: float) -> tuple[bytes, Any]:
        raise NotImplementedError

    def send_event(self, name: str, data: str | None, ttl: int, private: bool) -> None:
        return None

    async def signal(self, on: bool, timeout: float) -> None:
        return None

    def close(self) -> None:
        return None

    async def system_describe(self, timeout: float) -> dict[str, Any] | None:
        return None

    async def update_firmware(
        self, image: bytes, *, fast: bool | None, progress: Callable[[int, int], None] | None = None
    ) -> OtaOutcome:
        raise ConnectionError("no updates here")


def run(scenario: Callable[[Cloud, VitalsCollector, MemoryStore], Awaitable[None]]) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        bus = InProcessBus()
        times = iter([NOW, NOW + timedelta(seconds=30), NOW + timedelta(seconds=60)] + [NOW + timedelta(hours=1)] * 50)
        cloud = Cloud(store, bus, clock=lambda: NOW)
        collector = VitalsCollector(cloud, store, timeout=1.0, keep=5, clock=lambda: next(times), ticks=lambda: 5.0)
        try:
            await scenario(cloud, collector, store)
        finally:
            await collector.stop()
            await store.close()

    asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"not so in 5 s: {what}"
        await asyncio.sleep(0.002)


def test_refresh_asks_a_connected_device_records_and_publishes() -> None:
    async def scenario(cloud: Cloud, collector: VitalsCollector, store: MemoryStore) -> None:
        with pytest.raises(DeviceOfflineError):
            collector.refresh(DEVICE)
        link = Link()
        await store.attempts.add(
            [
                ConnectionAttempt(
                    NOW - timedelta(hours=2),
                    "a",
                    AttemptOutcome.CONNECTED,
                    "session",
                    device_id=DEVICE,
                    duration=0.5,
                    proven=True,
                ),
                ConnectionAttempt(
                    NOW - timedelta(minutes=1),
                    "a",
                    AttemptOutcome.CONNECTED,
                    "session",
                    device_id=DEVICE,
                    duration=0.031,
                    proven=True,
                ),
                ConnectionAttempt(
                    NOW - timedelta(minutes=2),
                    "a",
                    AttemptOutcome.FAILED,
                    "nonce",
                    "nonce_timeout",
                    device_id=DEVICE,
                    proven=False,
                ),
                ConnectionAttempt(
                    NOW - timedelta(days=2),
                    "a",
                    AttemptOutcome.CONNECTED,
                    "session",
                    device_id=DEVICE,
                    duration=1.0,
                    proven=True,
                ),
            ]
        )
        cloud.session_started(link, DeviceRecord(id=DEVICE, owner="alice"), HELLO)
        cloud.event_from_device(link, "temp", b"1", 60, True)
        stream = cloud.bus.subscribe(VITALS_EVENT)
        collector.refresh(DEVICE)
        collector.refresh(DEVICE)  # joins the first
        event = await asyncio.wait_for(stream.get(), 5)
        assert event is not None
        assert (event.device_id, event.owner, event.private) == (DEVICE, "alice", True)
        payload = json.loads(event.data or "")
        assert payload["device"]["system"] == {"uptime": 100}
        assert payload["service"] == {
            "device": {"status": "ok"},
            "cloud": {
                "uptime": 0,
                "publish": {"sent": 1},
                "connection": {
                    "reconnects_24h": 1,
                    "handshake_at": "2026-11-25T11:59:00.000Z",
                    "handshake_duration": 31,
                },
            },
            "coap": {"round_trip": 20},
        }
        assert link.asked == 1
        last = await store.vitals.last(DEVICE)
        assert last == VitalsRecord(DEVICE, NOW, payload, id=last.id if last else None)

    run(scenario)


def test_a_quarantined_device_is_not_asked_and_one_that_leaves_gives_no_record() -> None:
    async def scenario(cloud: Cloud, collector: VitalsCollector, store: MemoryStore) -> None:
        link = Link()
        cloud.session_started(link, DeviceRecord(id=DEVICE, owner="alice"), HELLO, quarantined=True)
        with pytest.raises(DeviceQuarantinedError):
            collector.refresh(DEVICE)
        link.gate = asyncio.Event()
        cloud.session_started(link, DeviceRecord(id=DEVICE, owner="alice"), HELLO)
        collector.refresh(DEVICE)

        async def asked() -> bool:
            return link.asked == 1

        await eventually(asked, "the device asked")
        cloud.session_ended(link)
        link.gone = True
        link.gate.set()
        assert await collector.collect(DEVICE) is None
        await collector.drain()  # the refresh under way ends, and records nothing
        assert await store.vitals.history(DEVICE) == []

    run(scenario)


def test_vitals_a_device_posts_are_recorded_and_old_ones_pruned() -> None:
    async def scenario(cloud: Cloud, collector: VitalsCollector, store: MemoryStore) -> None:
        link = Link()
        cloud.session_started(link, DeviceRecord(id=DEVICE, owner="alice"), HELLO)
        cloud.metrics_received(link, {DIAGNOSTICS["sys:uptime"]: 7})
        cloud.metrics_received(link, {DIAGNOSTICS["sys:uptime"]: 8})  # within a second of the first: dropped
        cloud.metrics_received(Link(device_id="ff" * 12), {6: 1})  # no session: nothing

        await collector.drain()
        (record,) = await store.vitals.history(DEVICE)
        assert record.payload["device"] == {"system": {"uptime": 7}}
        assert "coap" not in record.payload["service"]  # nothing was measured
        await store.vitals.add(VitalsRecord(DEVICE, NOW - timedelta(days=31), {}), keep=5)
        assert await collector.prune() == 1
        assert len(await store.vitals.history(DEVICE)) == 1

    run(scenario)
