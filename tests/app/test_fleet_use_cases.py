"""The fleet's read use cases over the in-memory store: what each caller sees, and each device's status as the
records say it (docs/console.md)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from cyan.app import Actor, Application
from cyan.cloud.alerts import Alert
from cyan.cloud.errors import InvalidInputError
from cyan.cloud.models import AttemptOutcome, CloudEvent, ConnectionAttempt, DeviceRecord, PendingKey, Role
from cyan.cloud.queries import DeviceQuery, DeviceStatus
from cyan.store import MemoryStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ALICE, BOB = "alice@example.com", "bob@example.com"
alice, bob = Actor.account(ALICE, Role.USER), Actor.account(BOB, Role.USER)
admin = Actor.account("ops@example.com", Role.ADMIN)


def _id(n: int) -> str:
    return f"{n:024x}"


async def _app() -> Application:
    store = MemoryStore()
    await store.open()
    app = Application(store, clock=lambda: NOW)
    await store.devices.add_many(
        [
            DeviceRecord(id=_id(1), name="online", owner=ALICE, online=True),
            DeviceRecord(id=_id(2), name="failing", owner=ALICE),
            DeviceRecord(id=_id(3), name="pending", owner=ALICE),
            DeviceRecord(id=_id(4), name="quiet", owner=ALICE),
            DeviceRecord(id=_id(5), name="bobs", owner=BOB),
        ]
    )
    failed = ConnectionAttempt(NOW - timedelta(minutes=1), "192.0.2.1:1", AttemptOutcome.FAILED, "S5", "key_mismatch")
    old = ConnectionAttempt(NOW - timedelta(hours=3), "192.0.2.1:1", AttemptOutcome.FAILED, "S5", "key_mismatch")
    unidentified = ConnectionAttempt(NOW, "192.0.2.9:1", AttemptOutcome.FAILED, "S3", "nonce_mismatch")
    failed.device_id, old.device_id = _id(2), _id(4)
    await store.attempts.add([failed, old, unidentified])
    await store.keys.save_pending_key(PendingKey(_id(3), b"k", "SHA256:new", None, NOW, NOW))
    await store.keys.save_pending_key(PendingKey(_id(5), b"k", "SHA256:bob", None, NOW, NOW))
    app.context.alerts.send(Alert("key_change", _id(5), NOW, "bob's device changed key", {}))
    app.context.alerts.send(Alert("handshake_loop", _id(2), NOW, "alice's device loops", {}))
    return app


def test_each_device_status_and_what_alice_sees() -> None:
    async def scenario() -> None:
        app = await _app()
        page = await app.fleet.devices(alice, DeviceQuery())
        assert page.total == 4
        assert [(r.record.name, r.status) for r in page.rows] == [
            ("online", "online"),
            ("failing", "failing"),
            ("pending", "pending"),
            ("quiet", "offline"),
        ]
        assert page.rows[2].pending_keys == 1
        # Another owner asked for: still only her own.
        assert (await app.fleet.devices(alice, DeviceQuery(owner=BOB))).total == 4
        failing = await app.fleet.devices(alice, DeviceQuery(status=DeviceStatus.FAILING))
        assert [r.record.name for r in failing.rows] == ["failing"]
        with pytest.raises(InvalidInputError):
            await app.fleet.devices(alice, DeviceQuery(limit=501))

    asyncio.run(scenario())


def test_the_summary_counts_only_what_the_caller_sees() -> None:
    async def scenario() -> None:
        app = await _app()
        mine = await app.fleet.summary(alice)
        assert (mine.total, mine.online, mine.offline, mine.failing) == (4, 1, 3, 1)
        assert (mine.pending_devices, mine.pending_keys, mine.unidentified_failures) == (1, 1, None)
        assert [r.record.name for r in mine.failing_devices] == ["failing"]
        assert [a.summary for a in mine.alerts] == ["alice's device loops"]
        fleet = await app.fleet.summary(admin)
        assert (fleet.total, fleet.pending_keys, fleet.unidentified_failures) == (5, 2, 1)
        assert [a.kind for a in fleet.alerts] == ["handshake_loop", "key_change"]  # newest first

    asyncio.run(scenario())


def test_groups_and_event_streams_name_nothing_of_others() -> None:
    async def scenario() -> None:
        app = await _app()
        await app.store.updates.add_to_group("porch", [_id(1), _id(5)])
        await app.store.updates.add_to_group("bobs-only", [_id(5)])
        assert await app.fleet.groups(alice) == {"porch": 1}
        assert await app.fleet.groups(admin) == {"bobs-only": 1, "porch": 2}
        event = CloudEvent("temp", "21", 60, NOW, _id(5), BOB)
        assert not app.fleet.event_filter(alice)(event)
        assert app.fleet.event_filter(bob)(event)
        assert app.fleet.event_filter(admin)(event)

    asyncio.run(scenario())
