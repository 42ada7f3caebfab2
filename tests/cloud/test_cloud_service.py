"""The cloud domain with an in-memory store and fake device links."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from cyan.bus import CloudEvent, InProcessBus
from cyan.cloud.errors import DeviceNotFoundError, DeviceOfflineError, UnknownFunctionError, UnknownVariableError
from cyan.cloud.models import (
    AccessToken,
    AttemptOutcome,
    ConnectionAttempt,
    DeviceRecord,
    KeyAuditEntry,
    KeyPolicy,
    PendingKey,
    RekeyWindow,
    User,
)
from cyan.cloud.ports import StoreUnavailableError
from cyan.cloud.service import Cloud
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import Hello, HelloFlag, OtaOutcome, Reason, SubscriptionScope
from cyan.testing import fixed_device_key

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


class MemoryStore:
    def __init__(self) -> None:
        self.devices: dict[str, DeviceRecord] = {}
        self.attempts: list[ConnectionAttempt] = []
        self.failures = 0  # the next N writes fail as if the database were down
        self.policies: dict[str, KeyPolicy] = {}
        self.rekeys: dict[str, RekeyWindow] = {}
        self.pending: dict[str, PendingKey] = {}
        self.audit: list[KeyAuditEntry] = []

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailableError("database is locked")

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        return self.devices.get(device_id)

    async def find_device(self, id_or_name: str) -> DeviceRecord | None:
        found = self.devices.get(id_or_name.lower())
        return found or next((d for d in self.devices.values() if d.name == id_or_name), None)

    async def list_devices(self, owner: str | None = None) -> list[DeviceRecord]:
        return [d for d in self.devices.values() if owner is None or d.owner == owner]

    async def add_device(self, device: DeviceRecord) -> None:
        self.devices[device.id] = device

    async def save_device(self, device: DeviceRecord) -> None:
        self._maybe_fail()
        self.devices[device.id] = device

    async def update_device_state(self, device: DeviceRecord) -> bool:
        self._maybe_fail()
        stored = self.devices.get(device.id)
        if stored is None:
            return False
        for name in ("platform_id", "product_id", "product_version", "system_version", "hello_flags"):
            setattr(stored, name, getattr(device, name))
        stored.functions, stored.variables = list(device.functions), list(device.variables)
        stored.online, stored.last_heard, stored.last_address = device.online, device.last_heard, device.last_address
        return True

    async def update_device_states(self, devices: list[DeviceRecord]) -> None:
        self._maybe_fail()
        for device in devices:
            await self.update_device_state(device)

    async def record_attempts(self, attempts: list[ConnectionAttempt]) -> None:
        self._maybe_fail()
        self.attempts.extend(attempts)

    async def remove_device(self, device_id: str) -> bool:
        return self.devices.pop(device_id, None) is not None

    # Users and tokens are not used by these tests.
    async def add_user(self, user: User) -> None:
        raise NotImplementedError

    async def get_user(self, username: str) -> User | None:
        return None

    async def list_users(self) -> list[User]:
        return []

    async def remove_user(self, username: str) -> bool:
        return False

    async def add_token(self, token: AccessToken) -> None:
        raise NotImplementedError

    async def get_token(self, token_hash: str) -> AccessToken | None:
        return None

    async def list_tokens(self, username: str) -> list[AccessToken]:
        return []

    async def remove_token(self, token_hash: str) -> bool:
        return False

    async def remove_expired_tokens(self, now: datetime) -> int:
        return 0

    # Key policy: the defaults (no policy, no window, nothing pending) unless a test sets them.
    async def get_policy(self, scope: str) -> KeyPolicy | None:
        return self.policies.get(scope)

    async def set_policy(self, policy: KeyPolicy) -> None:
        self.policies[policy.scope] = policy

    async def remove_policy(self, scope: str) -> bool:
        return self.policies.pop(scope, None) is not None

    async def list_policies(self) -> list[KeyPolicy]:
        return list(self.policies.values())

    async def arm_rekey(self, window: RekeyWindow) -> None:
        self.rekeys[window.device_id] = window

    async def get_rekey(self, device_id: str) -> RekeyWindow | None:
        return self.rekeys.get(device_id)

    async def remove_rekey(self, device_id: str) -> bool:
        return self.rekeys.pop(device_id, None) is not None

    async def list_rekeys(self) -> list[RekeyWindow]:
        return list(self.rekeys.values())

    async def save_pending_key(self, pending: PendingKey) -> None:
        self.pending[pending.device_id] = pending

    async def get_pending_key(self, device_id: str) -> PendingKey | None:
        return self.pending.get(device_id)

    async def remove_pending_key(self, device_id: str) -> bool:
        return self.pending.pop(device_id, None) is not None

    async def list_pending_keys(self) -> list[PendingKey]:
        return list(self.pending.values())

    async def add_audit(self, entry: KeyAuditEntry) -> int:
        self.audit.append(entry)
        return len(self.audit)

    async def list_audit(self, device_id: str | None = None, *, limit: int = 100) -> list[KeyAuditEntry]:
        return [e for e in reversed(self.audit) if device_id in (None, e.device_id)][:limit]

    async def mark_all_offline(self) -> None:
        for device in self.devices.values():
            device.online = False

    async def record_attempt(self, attempt: ConnectionAttempt) -> int:
        self._maybe_fail()
        self.attempts.append(attempt)
        return len(self.attempts)

    async def list_attempts(self, device_id: str | None = None, **_: Any) -> list[ConnectionAttempt]:
        return [a for a in reversed(self.attempts) if device_id is None or a.device_id == device_id]


@dataclass
class FakeLink:
    device_id: str
    peer_address: str = "127.0.0.1:40000"
    events: list[tuple[str, str | None, int, bool]] = field(default_factory=list)
    closed: bool = False
    answer: Callable[[str, str], Awaitable[int]] | None = None

    async def call_function(self, name: str, argument: str, timeout: float) -> int:
        assert self.answer is not None
        return await self.answer(name, argument)

    async def read_variable(self, name: str, timeout: float) -> tuple[bytes, Any]:
        return b"\x00\x00\x00\x07", 7

    def send_event(self, name: str, data: str | None, ttl: int, private: bool) -> None:
        self.events.append((name, data, ttl, private))

    async def signal(self, on: bool, timeout: float) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    # Firmware updates: not used by these tests (tests/cloud/test_cloud_ota.py has a link for them).
    hello: Hello | None = None
    max_binary_size: int | None = None

    async def system_describe(self, timeout: float) -> dict[str, Any] | None:
        return None

    async def update_firmware(
        self, image: bytes, *, fast: bool | None, progress: Callable[[int, int], None] | None = None
    ) -> OtaOutcome:
        raise ConnectionError("no updates here")


HELLO = Hello(6, 0xFFFF, HelloFlag(0x36), 6, 3103, 960, 262144, 512)


def _record(device_id: str, owner: str | None = "alice", name: str | None = None) -> DeviceRecord:
    der = public_key_der(fixed_device_key().public_key())
    return DeviceRecord(id=device_id, name=name, owner=owner, public_key_der=der, key_fingerprint=fingerprint(der))


def _run(test: Callable[[Cloud, MemoryStore, InProcessBus], Awaitable[None]]) -> None:
    async def main() -> None:
        store = MemoryStore()
        bus = InProcessBus()
        cloud = Cloud(store, bus, clock=lambda: NOW)
        await cloud.start()
        try:
            await test(cloud, store, bus)
        finally:
            await cloud.stop()

    asyncio.run(main())


def test_strict_key_policy() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        presented = public_key_der(fixed_device_key().public_key())
        decision, record = await cloud.authorize("aa" * 12, presented)
        assert (decision.reason, record) == (Reason.UNKNOWN_DEVICE, None)
        assert decision.presented_fingerprint == fingerprint(presented)
        store.devices["aa" * 12] = _record("aa" * 12)
        decision, record = await cloud.authorize("aa" * 12, presented)
        assert decision.accepted
        assert record is store.devices["aa" * 12]
        other = public_key_der(fixed_device_key(1).public_key())
        decision, _ = await cloud.authorize("aa" * 12, other)
        assert decision.reason is Reason.KEY_MISMATCH
        assert (decision.presented_fingerprint, decision.stored_fingerprint) == (
            fingerprint(other),
            fingerprint(presented),
        )
        assert "new key" in decision.detail
        decision, _ = await cloud.authorize("aa" * 12, None)  # the 52-byte Core identity: stored key
        assert decision.accepted
        store.devices["bb" * 12] = DeviceRecord(id="bb" * 12)
        decision, _ = await cloud.authorize("bb" * 12, presented)
        assert decision.reason is Reason.KEY_REJECTED

    _run(check)


def test_sessions_status_events_and_replacement() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        stream = bus.subscribe("spark/status")
        record = _record("aa" * 12)
        store.devices[record.id] = _record("aa" * 12)
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
        saved = store.devices["aa" * 12]
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
        store.devices[record.id] = record
        with pytest.raises(DeviceOfflineError):
            await cloud.call_function("kitchen", "f", "")
        with pytest.raises(DeviceNotFoundError):
            await cloud.call_function("nobody", "f", "")
        with pytest.raises(DeviceNotFoundError):
            await cloud.read_variable("kitchen", "v", owner="bob")

        async def answer(name: str, argument: str) -> int:
            return len(argument)

        link = FakeLink(record.id, answer=answer)
        cloud.session_started(link, record, HELLO)
        cloud.describe_received(link, {"f": ["setArg"], "v": {"counter": 2, "temp": 9, "odd": 77}})
        assert await cloud.call_function("kitchen", "setArg", "hello", owner="alice") == 5
        with pytest.raises(UnknownFunctionError):
            await cloud.call_function("kitchen", "nosuch", "")
        assert await cloud.read_variable(record.id.upper(), "counter") == (b"\x00\x00\x00\x07", 7)
        with pytest.raises(UnknownVariableError):
            await cloud.read_variable("kitchen", "odd")
        found = await cloud.find_device("kitchen")
        assert [v.type for v in found.variables] == ["int32", "double"]
        await cloud.signal("kitchen", True)

    _run(check)


def test_writes_survive_a_database_outage() -> None:
    async def check(cloud: Cloud, store: MemoryStore, bus: InProcessBus) -> None:
        store.failures = 2
        attempt = ConnectionAttempt(NOW, "127.0.0.1:1", AttemptOutcome.FAILED, "nonce", "nonce_mismatch")
        cloud.record_attempt(attempt)
        await asyncio.wait_for(cloud.flush(), timeout=5)
        assert store.attempts == [attempt]

    _run(check)


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
