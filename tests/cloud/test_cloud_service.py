"""The live sessions (`Cloud`) with the in-memory store and fake device links."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cyan.bus import CloudEvent, InProcessBus
from cyan.cloud.alerts import LoggingAlerts
from cyan.cloud.errors import DeviceOfflineError, DeviceQuarantinedError, UnknownFunctionError, UnknownVariableError
from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, DeviceRecord, LinkDiagnostics
from cyan.cloud.service import Cloud
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import Hello, HelloFlag, OtaOutcome, SubscriptionScope
from cyan.store import MemoryStore
from cyan.testing import fixed_device_key

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass
class FakeLink:
    device_id: str
    peer_address: str = "127.0.0.1:40000"
    events: list[tuple[str, str | None, int, bool]] = field(default_factory=list)
    closed: bool = False
    answer: Callable[[str, str], Awaitable[int]] | None = None
    fingerprint: str | None = None

    @property
    def key_fingerprint(self) -> str | None:
        return self.fingerprint

    async def call_function(self, name: str, argument: str, timeout: float) -> int:
        assert self.answer is not None
        return await self.answer(name, argument)

    #: What the link decoded the variable as: None when it has no Describe to know its type by.
    value: Any = 7

    async def read_variable(self, name: str, timeout: float) -> tuple[bytes, Any]:
        return b"\x00\x00\x00\x07", self.value

    def send_event(self, name: str, data: str | None, ttl: int, private: bool) -> None:
        self.events.append((name, data, ttl, private))

    async def signal(self, on: bool, timeout: float) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def is_closed(self) -> bool:
        return self.closed

    # Firmware updates: not used by these tests (tests/cloud/test_cloud_ota.py has a link for them).
    hello: Hello | None = None
    max_binary_size: int | None = None

    async def system_describe(self, timeout: float) -> dict[str, Any] | None:
        return None

    async def update_firmware(
        self, image: bytes, *, fast: bool | None, progress: Callable[[int, int], None] | None = None
    ) -> OtaOutcome:
        raise ConnectionError("no updates here")

    # Vitals: what a test sets is what the link measured.
    diagnostics: LinkDiagnostics = field(default_factory=lambda: LinkDiagnostics(None, None, "not measured"))

    async def diagnose(self, timeout: float) -> LinkDiagnostics:
        return self.diagnostics


HELLO = Hello(6, 0xFFFF, HelloFlag(0x36), 6, 3103, 960, 262144, 512)


def _record(device_id: str, owner: str | None = "alice", name: str | None = None) -> DeviceRecord:
    der = public_key_der(fixed_device_key().public_key())
    return DeviceRecord(id=device_id, name=name, owner=owner, public_key_der=der, key_fingerprint=fingerprint(der))


def _run(test: Callable[[Cloud, MemoryStore, InProcessBus], Awaitable[None]]) -> None:
    async def main() -> None:
        store = MemoryStore()
        await store.open()
        bus = InProcessBus()
        cloud = Cloud(store, bus, clock=lambda: NOW)
        await cloud.start()
        try:
            await test(cloud, store, bus)
        finally:
            await cloud.stop()

    asyncio.run(main())


def test_sessions_status_events_and_replacement() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        stream = bus.subscribe("spark/status")
        record = _record("aa" * 12)
        await store.devices.add(_record("aa" * 12))
        first = FakeLink("aa" * 12)
        cloud.session_started(first, record, HELLO)
        assert cloud.online("aa" * 12)
        second = FakeLink("aa" * 12, "127.0.0.1:40001")
        cloud.session_started(second, record, HELLO)
        assert first.closed
        cloud.session_ended(first)  # the old link's end must not take the new session down
        assert cloud.online("aa" * 12)
        cloud.session_ended(second)
        assert not cloud.online("aa" * 12)
        statuses = [await stream.get() for _ in range(3)]
        assert [e.data for e in statuses if e] == ["online", "online", "offline"]
        await cloud.flush()
        saved = await store.devices.get("aa" * 12)
        assert saved is not None
        assert (saved.online, saved.last_address, saved.system_version, saved.platform_id) == (
            False,
            "127.0.0.1:40001",
            3103,
            6,
        )

    _run(check)


def test_fan_out_follows_scopes_and_owners() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        mine, sibling, stranger, firehose = (FakeLink(c * 24) for c in "abcd")
        cloud.session_started(mine, _record(mine.device_id), HELLO)
        cloud.session_started(sibling, _record(sibling.device_id), HELLO)
        cloud.session_started(stranger, _record(stranger.device_id, owner="bob"), HELLO)
        cloud.session_started(firehose, _record(firehose.device_id, owner="carol"), HELLO)
        cloud.subscription_from_device(sibling, "temp", SubscriptionScope.MY_DEVICES, None)
        cloud.subscription_from_device(stranger, "temp", SubscriptionScope.MY_DEVICES, None)
        cloud.subscription_from_device(firehose, "temp", SubscriptionScope.ALL_DEVICES, None)
        cloud.subscription_from_device(mine, "", SubscriptionScope.DEVICE, sibling.device_id)
        cloud.event_from_device(mine, "temp/room", b"21", 60, True)
        cloud.event_from_device(mine, "temp/public", b"22", 60, False)
        cloud.event_from_device(sibling, "humidity", b"40", 60, True)
        cloud.publish("temp/api", "from the API", owner="alice")
        assert sibling.events == [
            ("temp/room", "21", 60, True),
            ("temp/public", "22", 60, False),
            ("temp/api", "from the API", 60, True),
        ]
        assert stranger.events == []
        assert firehose.events == [("temp/public", "22", 60, False)]
        assert mine.events == [("humidity", "40", 60, True)]

    _run(check)


def test_calls_reads_and_their_errors() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        record = _record("aa" * 12, name="kitchen")
        with pytest.raises(DeviceOfflineError):
            await cloud.call_function(record.id, "f", "")

        async def answer(name: str, argument: str) -> int:
            return len(argument)

        link = FakeLink(record.id, answer=answer)
        cloud.session_started(link, record, HELLO)
        cloud.describe_received(link, {"f": ["setArg"], "v": {"counter": 2, "temp": 9, "odd": 77}})
        assert await cloud.call_function(record.id, "setArg", "hello") == 5
        with pytest.raises(UnknownFunctionError):
            await cloud.call_function(record.id, "nosuch", "")
        assert await cloud.read_variable(record.id, "counter") == (b"\x00\x00\x00\x07", 7)
        with pytest.raises(UnknownVariableError):
            await cloud.read_variable(record.id, "odd")
        live = cloud.live(record.id)
        assert live is not None
        assert [v.type for v in live.variables] == ["int32", "double"]
        await cloud.signal(record.id, True)

        # A session resumed with no Describe (UDP): its link knows no types, the record's last Describe does.
        typeless = FakeLink(record.id, value=None)
        cloud.session_started(typeless, live, HELLO)
        assert await cloud.read_variable(record.id, "counter") == (b"\x00\x00\x00\x07", 7)

    _run(check)


def test_writes_survive_a_database_outage() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        store.fail_with = "database is locked"
        attempt = ConnectionAttempt(NOW, "127.0.0.1:1", AttemptOutcome.FAILED, "nonce", "nonce_mismatch")
        cloud.record_attempt(attempt)
        await asyncio.sleep(0.05)  # the writer tried, failed, and keeps the record for its next try
        store.fail_with = None
        await asyncio.wait_for(cloud.flush(), timeout=5)
        assert [a.reason for a in await store.attempts.recent()] == ["nonce_mismatch"]

    _run(check)


def test_a_quarantined_client_gets_nothing_and_the_device_itself_replaces_it() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        record = _record("aa" * 12)
        impostor = FakeLink(record.id, "203.0.113.9:1", fingerprint="SHA256:other")
        cloud.session_started(impostor, record, HELLO, quarantined=True)
        assert cloud.quarantined(record.id)
        assert not await cloud.connected(record.id)
        with pytest.raises(DeviceQuarantinedError):
            await cloud.call_function(record.id, "f", "")
        cloud.event_from_device(impostor, "temp", b"1", 60, True)  # goes nowhere
        device = FakeLink(record.id, fingerprint=record.key_fingerprint)
        cloud.session_started(device, record, HELLO)
        assert impostor.closed
        assert await cloud.connected(record.id)
        assert not cloud.quarantined(record.id)

    _run(check)


def test_approving_a_key_gives_its_quarantined_session_access_and_closes_the_old_key() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        record = _record("aa" * 12)
        old = FakeLink(record.id, fingerprint=record.key_fingerprint)
        cloud.session_started(old, record, HELLO)
        new = FakeLink(record.id, "127.0.0.1:2", fingerprint="SHA256:new")
        cloud.session_started(new, _record("aa" * 12), HELLO, quarantined=True)
        cloud.subscription_from_device(new, "temp", SubscriptionScope.MY_DEVICES, None)
        await cloud.key_approved(record.id, "SHA256:new")
        assert old.closed
        assert not new.closed
        assert cloud.device_link(record.id) is new
        cloud.publish("temp/x", "1", owner="alice")
        assert new.events == [("temp/x", "1", 60, True)]  # the subscription held in quarantine took effect

    _run(check)


def test_rejecting_a_key_closes_only_its_quarantined_session() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        record = _record("aa" * 12)
        held = FakeLink(record.id, fingerprint="SHA256:new")
        cloud.session_started(held, record, HELLO, quarantined=True)
        await cloud.key_rejected(record.id, "SHA256:another")
        assert not held.is_closed()
        await cloud.key_rejected(record.id, "SHA256:new")
        assert held.is_closed()
        assert not cloud.quarantined(record.id)

    _run(check)


def test_closing_a_devices_sessions_can_keep_one_key() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        record = _record("aa" * 12)
        link = FakeLink(record.id, fingerprint=record.key_fingerprint)
        cloud.session_started(link, record, HELLO)
        await cloud.close_sessions(record.id, keep_key=record.key_fingerprint)
        assert not link.closed
        await cloud.close_sessions(record.id)
        assert link.closed

    _run(check)


def test_unproven_attempts_raise_one_signal_not_the_devices_health_alerts() -> None:
    alerts = LoggingAlerts()

    async def check() -> None:
        store = MemoryStore()
        await store.open()
        cloud = Cloud(store, InProcessBus(), clock=lambda: NOW, alerts=alerts, loop_threshold=3)
        await cloud.start()
        try:
            record = _record("aa" * 12)
            cloud.session_started(FakeLink(record.id, fingerprint=record.key_fingerprint), record, HELLO)
            for n in range(20):  # someone hammers with wrong keys while the device is connected
                attempt = ConnectionAttempt(
                    NOW + timedelta(seconds=n),
                    f"203.0.113.9:{n}",
                    AttemptOutcome.FAILED,
                    "identity",
                    "key_mismatch",
                    device_id=record.id,
                    presented_fingerprint="SHA256:attacker",
                    proven=False,
                )
                cloud.record_attempt(attempt)
            kinds = [a.kind for a in alerts.recent]
            assert kinds == ["impersonation_attempts"]  # one, aggregated: no key_refused, no handshake_loop
            assert alerts.recent[0].details["connected"] is True
            assert "do not approve" in alerts.recent[0].summary
            # An hour later, the next one carries the count since.
            late = dataclasses.replace(attempt, started_at=NOW + timedelta(hours=1, seconds=30))
            cloud.record_attempt(late)
            assert [a.kind for a in alerts.recent] == ["impersonation_attempts"] * 2
            assert alerts.recent[1].details["attempts"] == 20
            # A device's own trouble (not connected, its key accepted, then no Hello) is its health.
            other = _record("bb" * 12)
            for n in range(3):
                cloud.record_attempt(
                    ConnectionAttempt(
                        NOW + timedelta(seconds=n),
                        "198.51.100.1:1",
                        AttemptOutcome.FAILED,
                        "hello",
                        "hello_timeout",
                        device_id=other.id,
                        proven=False,
                    )
                )
            assert alerts.recent[-1].kind == "handshake_loop"
            assert alerts.recent[-1].device_id == other.id
        finally:
            await cloud.stop()

    asyncio.run(check())


@pytest.mark.parametrize("reason", ["overloaded", "rate_limited"])
def test_connections_refused_for_the_servers_own_limits_raise_no_alert(reason: str) -> None:
    # The handshake bound, or an address's share of new connections: many devices behind one address.
    alerts = LoggingAlerts()

    async def check() -> None:
        store = MemoryStore()
        await store.open()
        cloud = Cloud(store, InProcessBus(), clock=lambda: NOW, alerts=alerts, loop_threshold=3)
        await cloud.start()
        try:
            for n in range(10):  # a fleet behind one address, refused while the server was at its bound
                cloud.record_attempt(
                    ConnectionAttempt(
                        NOW + timedelta(seconds=n), f"198.51.100.7:{n}", AttemptOutcome.FAILED, "nonce", reason
                    )
                )
            assert list(alerts.recent) == []
        finally:
            await cloud.stop()

    asyncio.run(check())


def test_bus_drops_oldest_for_a_slow_reader() -> None:
    async def check() -> None:
        bus = InProcessBus(capacity=3)
        slow = bus.subscribe("x")
        for i in range(5):
            bus.publish(CloudEvent(f"x/{i}", None, 60, NOW, None, None))
        assert slow.dropped == 2
        got = [await slow.get() for _ in range(3)]
        assert [e.name for e in got if e] == ["x/2", "x/3", "x/4"]
        slow.close()
        assert await slow.get() is None
        assert bus.subscriber_count == 0

    asyncio.run(check())


LEGACY_HELLO = Hello(6, 0xFFFF, HelloFlag(0), 6)  # 0.6.x and 0.7.x say nothing of their system version
#: A Photon on 0.6.1 in its system Describe (protocol.md §6.7): two system parts of one version.
PHOTON_MODULES = [
    {"s": 16384, "l": "m", "vc": 30, "vv": 30, "f": "b", "n": "0", "v": 11, "d": []},
    {"s": 262144, "l": "m", "vc": 30, "vv": 30, "f": "s", "n": "1", "v": 105, "d": []},
    {"s": 262144, "l": "m", "vc": 30, "vv": 30, "f": "s", "n": "2", "v": 105, "d": [{"f": "s", "n": "1", "v": 105}]},
    {"s": 131072, "l": "m", "vc": 30, "vv": 30, "u": "ab" * 32, "f": "u", "n": "1", "v": 4, "d": []},
]


def test_the_handshake_time_and_the_system_version_a_legacy_device_describes() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        now = [NOW]
        cloud._clock = lambda: now[0]
        await store.devices.add(_record("bb" * 12))
        link = FakeLink("bb" * 12)
        cloud.session_started(link, _record("bb" * 12), LEGACY_HELLO)
        now[0] = NOW + timedelta(minutes=5)
        cloud.heard_from(link)
        # Nonsense in a module list changes nothing: only a system part's whole version counts.
        for modules in ("x", [{"f": "s", "v": "105"}], [{"f": "s", "v": True}], [{"f": "s", "v": 2**40}], [7]):
            cloud.describe_received(link, {"p": 6, "m": modules})
        await cloud.flush()
        saved = await store.devices.get("bb" * 12)
        assert saved is not None
        assert (saved.last_handshake_at, saved.last_heard, saved.system_version) == (
            NOW,
            NOW + timedelta(minutes=5),
            None,
        )
        cloud.describe_received(link, {"f": [], "v": {}, "p": 6, "m": PHOTON_MODULES})
        await cloud.flush()
        saved = await store.devices.get("bb" * 12)
        assert saved is not None
        assert saved.system_version == 105

    _run(check)
