"""Key policies, re-key windows, pending keys and the key audit trail in SQLite."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cyan.cloud.models import KeyAuditEntry, KeyPolicy, KeyPolicyMode, PendingKey, RekeyWindow
from cyan.store import SqliteStore

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DEVICE = "ab" * 12


def test_key_policy_records_round_trip(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SqliteStore(tmp_path / "keys.db") as store:
            assert await store.get_policy("*") is None
            await store.set_policy(KeyPolicy("*", KeyPolicyMode.QUARANTINE, True, T0, "ops"))
            await store.set_policy(KeyPolicy(DEVICE.upper(), KeyPolicyMode.STRICT, False, T0, "alice"))
            await store.set_policy(KeyPolicy("*", KeyPolicyMode.STRICT, False, T0 + timedelta(1), "ops"))
            assert await store.list_policies() == [
                KeyPolicy("*", KeyPolicyMode.STRICT, False, T0 + timedelta(1), "ops"),
                KeyPolicy(DEVICE, KeyPolicyMode.STRICT, False, T0, "alice"),
            ]
            assert await store.remove_policy(DEVICE)
            assert not await store.remove_policy(DEVICE)

            window = RekeyWindow(DEVICE, T0 + timedelta(hours=1), "alice", T0)
            await store.arm_rekey(window)
            await store.arm_rekey(RekeyWindow(DEVICE, T0 + timedelta(hours=2), "bob", T0))
            assert await store.get_rekey(DEVICE.upper()) == RekeyWindow(DEVICE, T0 + timedelta(hours=2), "bob", T0)
            assert len(await store.list_rekeys()) == 1
            assert await store.remove_rekey(DEVICE)
            assert await store.get_rekey(DEVICE) is None

            pending = PendingKey(DEVICE, b"der", "SHA256:new", "SHA256:old", T0, T0, 1, "10.0.0.1:5000")
            await store.save_pending_key(pending)
            pending.attempts, pending.last_seen = 3, T0 + timedelta(minutes=5)
            await store.save_pending_key(pending)
            assert await store.get_pending_key(DEVICE) == pending
            assert await store.list_pending_keys() == [pending]
            assert await store.remove_pending_key(DEVICE)
            assert await store.list_pending_keys() == []

            for minute, action in enumerate(["refused", "approved"]):
                await store.add_audit(
                    KeyAuditEntry(T0 + timedelta(minutes=minute), DEVICE, action, "alice", "SHA256:old", "SHA256:new")
                )
            await store.add_audit(KeyAuditEntry(T0, "cd" * 12, "registered", "tofu"))
            entries = await store.list_audit(DEVICE)
            assert [e.action for e in entries] == ["approved", "refused"]
            assert entries[0].id is not None
            assert len(await store.list_audit(limit=2)) == 2

    asyncio.run(scenario())
