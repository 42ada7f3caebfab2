"""The keys repository's contract: policies, re-key windows, pending keys (several per device) and claim codes;
and the audit repository's."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from cyan.cloud.models import AuditEntry, ClaimCode, DeviceRecord, KeyPolicy, KeyPolicyMode, PendingKey, RekeyWindow
from store_support import StoreFactory, run

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DEVICE = "ab" * 12
OTHER = "cd" * 12


def test_key_policies_round_trip_by_scope(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            assert await store.keys.get_policy("*") is None
            await store.keys.set_policy(KeyPolicy("*", KeyPolicyMode.QUARANTINE, True, T0, "ops", True))
            await store.keys.set_policy(KeyPolicy(DEVICE.upper(), KeyPolicyMode.STRICT, False, T0, "alice"))
            await store.keys.set_policy(KeyPolicy("*", KeyPolicyMode.STRICT, False, T0 + timedelta(1), "ops"))
            assert await store.keys.list_policies() == [
                KeyPolicy("*", KeyPolicyMode.STRICT, False, T0 + timedelta(1), "ops", False),
                KeyPolicy(DEVICE, KeyPolicyMode.STRICT, False, T0, "alice"),
            ]
            await store.keys.set_policy(KeyPolicy("*", KeyPolicyMode.STRICT, True, T0, "ops", True))
            fleet = await store.keys.get_policy("*")
            assert fleet is not None
            assert (fleet.trust_on_first_use, fleet.self_registration) == (True, True)
            assert await store.keys.remove_policy(DEVICE)
            assert not await store.keys.remove_policy(DEVICE)

    run(scenario())


def test_a_rekey_window_keeps_what_it_accepted(make: StoreFactory) -> None:
    armed = RekeyWindow(DEVICE, T0 + timedelta(hours=1), "alice", T0)
    used = dataclasses.replace(
        armed,
        accepted_fingerprint="SHA256:new",
        accepted_at=T0 + timedelta(minutes=5),
        previous_key_der=b"\x30old",
        previous_fingerprint="SHA256:old",
    )

    async def scenario() -> None:
        async with make() as store:
            await store.keys.save_rekey(armed)
            assert await store.keys.get_rekey(DEVICE.upper()) == armed
            await store.keys.save_rekey(used)
        async with make() as store:  # from the file, not from any cache
            assert await store.keys.get_rekey(DEVICE) == used
            await store.keys.save_rekey(RekeyWindow(OTHER, T0 + timedelta(minutes=30), "bob", T0))
            assert [w.device_id for w in await store.keys.list_rekeys()] == [OTHER, DEVICE]  # by their end
            assert await store.keys.remove_rekey(DEVICE)
            assert not await store.keys.remove_rekey(DEVICE)
            assert await store.keys.get_rekey(DEVICE) is None

    run(scenario())


def test_a_device_may_have_several_pending_keys_each_by_fingerprint(make: StoreFactory) -> None:
    first = PendingKey(DEVICE, b"der-1", "SHA256:one", "SHA256:old", T0, T0, 1, "10.0.0.1:5000")
    second = PendingKey(DEVICE, b"der-2", "SHA256:two", "SHA256:old", T0 + timedelta(1), T0 + timedelta(1), 1)
    elsewhere = PendingKey(OTHER, b"der-3", "SHA256:one", None, T0 + timedelta(2), T0 + timedelta(2), 1)

    async def scenario() -> None:
        async with make() as store:
            for pending in (first, second, elsewhere):
                await store.keys.save_pending_key(pending)
            seen_again = dataclasses.replace(first, attempts=3, last_seen=T0 + timedelta(minutes=5))
            await store.keys.save_pending_key(seen_again)  # the same key again: replaced, not added
            assert await store.keys.list_pending_keys(DEVICE.upper()) == [seen_again, second]
            assert await store.keys.list_pending_keys() == [seen_again, second, elsewhere]  # oldest first
            assert await store.keys.remove_pending_key(DEVICE, "SHA256:one") == 1
            assert await store.keys.list_pending_keys(DEVICE) == [second]
            assert await store.keys.list_pending_keys(OTHER) == [elsewhere]
            await store.keys.save_pending_key(first)
            assert await store.keys.remove_pending_key(DEVICE) == 2  # every pending key of the device
            assert await store.keys.remove_pending_key(DEVICE) == 0
            assert await store.keys.list_pending_keys() == [elsewhere]

    run(scenario())


def test_a_claim_code_is_taken_once_and_expired_ones_go(make: StoreFactory) -> None:
    for_device = ClaimCode("aa" * 32, "admin", T0, T0 + timedelta(hours=24), device_id=DEVICE.upper())
    for_account = ClaimCode("BB" * 32, "bob", T0, T0 + timedelta(hours=1), claimant="Bob@Example.com")

    async def scenario() -> None:
        async with make() as store:
            await store.keys.add_claim_code(for_device)
            await store.keys.add_claim_code(for_account)
            taken = await store.keys.take_claim_code("AA" * 32)
            assert taken == dataclasses.replace(for_device, device_id=DEVICE)
            assert await store.keys.take_claim_code("aa" * 32) is None  # used once
            assert await store.keys.remove_expired_claim_codes(T0 + timedelta(minutes=59)) == 0
            assert await store.keys.remove_expired_claim_codes(T0 + timedelta(hours=1)) == 1
            assert await store.keys.take_claim_code("bb" * 32) is None
            with pytest.raises(ValueError, match="now must be an aware datetime"):
                await store.keys.remove_expired_claim_codes(datetime(2026, 1, 1))

    run(scenario())


def test_removing_a_device_removes_what_is_kept_about_it(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            for device_id in (DEVICE, OTHER):
                await store.devices.add(DeviceRecord(id=device_id))
                await store.keys.set_policy(KeyPolicy(device_id, KeyPolicyMode.QUARANTINE, False, T0, "alice"))
                await store.keys.save_rekey(RekeyWindow(device_id, T0 + timedelta(hours=1), "alice", T0))
                await store.keys.save_pending_key(PendingKey(device_id, b"der", "SHA256:x", None, T0, T0, 1))
                await store.keys.add_claim_code(
                    ClaimCode(f"{device_id}{'0' * 40}", "admin", T0, T0 + timedelta(1), device_id=device_id)
                )
                await store.updates.add_to_group("porch", [device_id])
                await store.audit.add(AuditEntry(T0, device_id, "registered", "admin"))
            assert await store.devices.remove(DEVICE)
            assert [p.scope for p in await store.keys.list_policies()] == [OTHER]
            assert [w.device_id for w in await store.keys.list_rekeys()] == [OTHER]
            assert [p.device_id for p in await store.keys.list_pending_keys()] == [OTHER]
            assert await store.keys.take_claim_code(f"{DEVICE}{'0' * 40}") is None
            assert await store.updates.list_group("porch") == [OTHER]
            # What happened to it stays on record.
            assert [e.action for e in await store.audit.recent(DEVICE)] == ["registered"]

    run(scenario())


def test_audit_entries_by_device_by_subject_and_newest_first(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            for minute, action in enumerate(["refused", "approved"]):
                entry = AuditEntry(
                    T0 + timedelta(minutes=minute), DEVICE.upper(), action, "alice", "SHA256:a", "SHA256:b"
                )
                assert await store.audit.add(entry) == entry.id
                assert entry.id is not None
            earlier = T0 - timedelta(minutes=1)
            await store.audit.add(
                AuditEntry(earlier, None, "user_created", "operator", detail="role user", subject="bob")
            )
            await store.audit.add(AuditEntry(T0 - timedelta(1), OTHER, "registered", "tofu"))
            entries = await store.audit.recent(DEVICE)
            assert [(e.action, e.device_id) for e in entries] == [("approved", DEVICE), ("refused", DEVICE)]
            assert [e.action for e in await store.audit.recent(subject="bob")] == ["user_created"]
            everything = await store.audit.recent()
            assert [e.action for e in everything] == ["approved", "refused", "user_created", "registered"]
            assert [e.action for e in await store.audit.recent(limit=2)] == ["approved", "refused"]
            with pytest.raises(ValueError, match="limit"):
                await store.audit.recent(limit=-1)
            with pytest.raises(ValueError, match="at must be an aware datetime"):
                await store.audit.add(AuditEntry(datetime(2026, 1, 1), None, "x", "y"))

    run(scenario())
