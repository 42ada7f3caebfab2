"""Self-healing under the key policy: the amnesia drill (protocol.md §12), end to end over loopback.

A fleet whose devices regenerated their keys (same ids, new keys) comes back without USB when a re-key
window is armed, waits for approval under quarantine, and stays out under the strict default, reported once
per device, never as the devices' own health. An impersonator (a new key for a known id) never gets a session,
and a device connected with its registered key is not touched by one. Approving names the key the owner saw.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from cyan.app import Actor, NewDevice
from cyan.cloud.alerts import LoggingAlerts
from cyan.cloud.errors import DeviceQuarantinedError
from cyan.cloud.models import KeyPolicyMode
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import ServerConfig
from cyan.service import Service, ensure_server_keys
from cyan.sim import Fault, Fleet, SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.testing import fixed_device_key, loopback_settings

OWNER, PASSWORD = "ops@example.com", "drill password"
SIM = SimConfig(backoff_scale=0.02)
OPS = Actor.operator("ops")


def _id(n: int) -> str:
    return f"{n:024x}"


async def _eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _register(service: Service, specs: list[VirtualDeviceSpec]) -> None:
    # Registered before the key loss: the old key.
    new = [NewDevice(s.device_id, public_key_der(s.private_key.public_key()), owner=OWNER) for s in specs]
    await service.app.devices.register(OPS, new)


def _run(tmp_path: Path, scenario: Callable[[Service], Awaitable[None]], *, processes: int = 0) -> None:
    """`processes`: serve the devices from that many device processes (`cyan serve --device-processes`)."""

    async def main() -> None:
        settings = loopback_settings(tmp_path / "data", device_processes=processes)
        service = Service(settings, ensure_server_keys(settings), protocol=ServerConfig(request_timeout=2.0))
        await service.start()
        try:
            await service.app.accounts.create_user(Actor.operator(), OWNER, PASSWORD)
            await scenario(service)
        finally:
            await service.stop()

    asyncio.run(main())


def _amnesiac_fleet(count: int, first: int = 1) -> list[VirtualDeviceSpec]:
    return [VirtualDeviceSpec(_id(n), fixed_device_key(n), fault=Fault.AMNESIA) for n in range(first, first + count)]


def test_strict_keeps_the_fleet_out_and_reports_it(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        specs = _amnesiac_fleet(4)
        await _register(service, specs)
        fleet = Fleet(specs, service.keys.private_key.public_key(), config=SIM)
        fleet.start("127.0.0.1", service.device_server.port)
        try:

            async def all_pending() -> bool:
                return len(await service.store.keys.list_pending_keys()) == 4

            await _eventually(all_pending)
            alerts = service.cloud.alerts
            assert isinstance(alerts, LoggingAlerts)
            ids = {s.device_id for s in specs}
            await _eventually(lambda: {a.device_id for a in alerts.recent if a.kind == "impersonation_attempts"} == ids)
            assert not any(service.cloud.online(s.device_id) for s in specs)

            # The key is refused (pending key, alert) while the connection is still open; its attempt is
            # recorded when the connection has closed, which may come after.
            async def recorded() -> bool:
                await service.cloud.flush()
                return bool(await service.store.attempts.recent(specs[0].device_id, limit=1))

            await _eventually(recorded)
            attempts = await service.store.attempts.recent(specs[0].device_id, limit=1000)
            assert {(a.step, a.reason, a.proven) for a in attempts} == {("identity", "key_mismatch", False)}
            assert attempts[0].presented_fingerprint != attempts[0].stored_fingerprint
            # Each new key is refused and audited once, not once per attempt; the attempts prove nothing of the
            # devices, so they raise one signal each and none of the devices' own health alerts.
            audit = await service.store.audit.recent(specs[0].device_id)
            assert [e.action for e in audit] == ["refused", "registered"]
            assert (audit[0].old_fingerprint, audit[0].new_fingerprint) == (
                attempts[0].stored_fingerprint,
                attempts[0].presented_fingerprint,
            )
            assert {a.kind for a in alerts.recent if a.device_id in ids} == {"impersonation_attempts"}
            # The owner approves one device's new key, by the fingerprint seen: it comes back without USB.
            await service.app.keys.approve(OPS, specs[0].device_id, attempts[0].presented_fingerprint or "")
            await _eventually(lambda: service.cloud.online(specs[0].device_id))
            assert await service.cloud.call_function(specs[0].device_id, "setArg", "back") == 4
            assert not service.cloud.online(specs[1].device_id)
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_a_rekey_window_brings_the_fleet_back(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        specs = _amnesiac_fleet(8)
        await _register(service, specs)
        for spec in specs:
            await service.app.keys.arm_rekey(OPS, spec.device_id, 600)
        started = time.monotonic()
        fleet = Fleet(specs, service.keys.private_key.public_key(), config=SIM)
        fleet.start("127.0.0.1", service.device_server.port)
        try:
            assert await fleet.wait_connected(timeout=15)
            recovery = time.monotonic() - started
            assert recovery < 15
            await service.cloud.flush()
            for spec in specs:
                stored = await service.store.devices.get(spec.device_id)
                assert stored is not None
                assert stored.key_fingerprint != fingerprint(public_key_der(spec.private_key.public_key()))
                # The window stays armed to its end, remembering the one key it took and the key it replaced.
                window = await service.store.keys.get_rekey(spec.device_id)
                assert window is not None
                assert window.accepted_fingerprint == stored.key_fingerprint
                assert window.previous_fingerprint == fingerprint(public_key_der(spec.private_key.public_key()))
                actions = [e.action for e in await service.store.audit.recent(spec.device_id)]
                assert actions == ["rekey_used", "rekey_armed", "registered"]
            assert await service.cloud.call_function(specs[3].device_id, "setArg", "hello") == 5
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


@pytest.mark.parametrize("processes", [0, 2], ids=["one process", "device processes"])
def test_quarantine_lets_devices_in_with_nothing_until_approved(tmp_path: Path, processes: int) -> None:
    async def scenario(service: Service) -> None:
        await service.app.keys.set_fleet_policy(OPS, mode=KeyPolicyMode.QUARANTINE)
        specs = _amnesiac_fleet(3)
        await _register(service, specs)
        events = service.bus.subscribe("vdev/")
        fleet = Fleet(specs, service.keys.private_key.public_key(), config=SIM)
        fleet.start("127.0.0.1", service.device_server.port)
        base = f"http://127.0.0.1:{service.api_port}"
        try:
            await _eventually(lambda: all(service.cloud.quarantined(s.device_id) for s in specs))
            first, second, third = (s.device_id for s in specs)
            with pytest.raises(DeviceQuarantinedError):
                await service.cloud.call_function(first, "setArg", "x")
            # What a quarantined device publishes goes nowhere; what is published does not reach it.
            fleet[first].publish("vdev/leak", "secret")
            service.cloud.publish("vdev/ping", "to everyone", owner=OWNER)
            await asyncio.sleep(0.3)
            assert events.dropped == 0
            got = []
            while (event := await asyncio.wait_for(events.get(), 0.2) if events._queue else None) is not None:
                got.append(event.name)
            assert got == ["vdev/ping"]
            async with httpx.AsyncClient(base_url=base) as client:
                login = await client.post(
                    "/oauth/token", data={"grant_type": "password", "username": OWNER, "password": PASSWORD}
                )
                auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
                listed = {d["id"]: d["status"] for d in (await client.get("/v1/devices", headers=auth)).json()}
                assert set(listed.values()) == {"quarantined"}
                refused = await client.post(f"/v1/devices/{first}/setArg", json={"args": "x"}, headers=auth)
                assert (refused.status_code, refused.json()["error"]) == (403, "Device quarantined")
                keys = (await client.get(f"/v1/devices/{first}/keys", headers=auth)).json()
                assert keys["quarantined"] is True
                (pending,) = keys["pending_keys"]
                assert pending["fingerprint"] != keys["key_fingerprint"]
                assert keys["policy"]["mode"] == "quarantine"
                # Approving names the key: without it, nothing is approved.
                unnamed = await client.post(f"/v1/devices/{first}/keys/approve", headers=auth)
                assert (unnamed.status_code, unnamed.json()["field"]) == (400, "fingerprint")
                # Approved: access at once, on the same connection.
                approved = await client.post(
                    f"/v1/devices/{first}/keys/approve", json={"fingerprint": pending["fingerprint"]}, headers=auth
                )
                assert approved.json()["key_fingerprint"] == pending["fingerprint"]
                called = await client.post(f"/v1/devices/{first}/setArg", json={"args": "hello"}, headers=auth)
                assert called.json()["return_value"] == 5
                # Rejected: the connection is closed; the device stays out until a decision changes.
                second_keys = (await client.get(f"/v1/devices/{second}/keys", headers=auth)).json()
                rejected = await client.post(
                    f"/v1/devices/{second}/keys/reject",
                    json={"fingerprint": second_keys["pending_keys"][0]["fingerprint"]},
                    headers=auth,
                )
                assert rejected.json()["ok"]
                assert (
                    await client.post(f"/v1/devices/{third}/keys/rekey", data={"seconds": "60"}, headers=auth)
                ).json()["ok"]
                audit = [
                    e["action"] for e in (await client.get(f"/v1/devices/{first}/keys", headers=auth)).json()["audit"]
                ]
                assert audit == ["approved", "quarantined", "registered"]
            assert service.cloud.online(first)
        finally:
            await fleet.stop()

    _run(tmp_path, scenario, processes=processes)


def test_an_impersonator_changes_nothing_of_a_connected_device(tmp_path: Path) -> None:
    """Someone who only knows a connected device's id, hammering with other keys even under the quarantine
    policy: refused, recorded as unproven, one signal for the owner, and the device shows as it is."""

    async def scenario(service: Service) -> None:
        await service.app.keys.set_fleet_policy(OPS, mode=KeyPolicyMode.QUARANTINE)
        real = VirtualDeviceSpec(_id(40), fixed_device_key(40))
        await _register(service, [real])
        server_key = service.keys.private_key.public_key()
        device = VirtualDevice(real, server_key, config=SIM)
        device.start("127.0.0.1", service.device_server.port)
        impostor = VirtualDevice(VirtualDeviceSpec(_id(40), fixed_device_key(41)), server_key, config=SIM)
        alerts = service.cloud.alerts
        assert isinstance(alerts, LoggingAlerts)
        try:
            await device.connected.wait()
            impostor.start("127.0.0.1", service.device_server.port)

            async def hammered() -> bool:
                await service.cloud.flush()
                tried = await service.store.attempts.recent(_id(40), limit=100)
                return len([a for a in tried if a.reason == "key_mismatch"]) >= 5

            await _eventually(hammered)
            assert not service.cloud.quarantined(_id(40))
            assert impostor.connected.is_set() is False
            # Nothing of the device changed: no pending key, its status normal, its calls and events its own.
            assert await service.store.keys.list_pending_keys(_id(40)) == []
            view = await service.app.devices.get(OPS, _id(40))
            assert (view.online, view.quarantined) == (True, False)
            assert await service.cloud.call_function(_id(40), "setArg", "mine") == 4
            service.cloud.publish("vdev/ping", "private", owner=OWNER)
            await _eventually(lambda: any(e.data == b"private" for e in device.received_events))
            stored = await service.store.devices.get(_id(40))
            assert stored is not None
            assert stored.key_fingerprint == fingerprint(public_key_der(fixed_device_key(40).public_key()))
            # One aggregated signal says what happened; none of the device's own health alerts.
            mine = [a for a in alerts.recent if a.device_id == _id(40)]
            assert [a.kind for a in mine] == ["impersonation_attempts"]
            assert mine[0].details["connected"] is True
            # The doctor does not advise approving the impostor's key.
            report = (await service.app.diagnostics.doctor(OPS, _id(40))).to_json()
            todo = " ".join(report["todo"]).lower()
            assert "approve the pending key" not in todo
            assert "do not approve a key presented this way" in todo
            status = await service.app.keys.status(OPS, _id(40))
            assert status.unproven.count >= 5
            assert status.unproven.keys == {
                fingerprint(public_key_der(fixed_device_key(41).public_key())): status.unproven.count
            }
        finally:
            await impostor.stop()
            await device.stop()

    _run(tmp_path, scenario)


def test_approval_names_the_key_the_owner_saw(tmp_path: Path) -> None:
    """The approval race: between the owner reading the pending fingerprint and approving it, another client
    presents a different key. The owner's approval takes the key they saw, never the newcomer's; naming a key
    that is not pending approves nothing (409 with the fingerprints)."""

    async def scenario(service: Service) -> None:
        lost = VirtualDeviceSpec(_id(60), fixed_device_key(60), fault=Fault.AMNESIA)
        await _register(service, [lost])
        server_key = service.keys.private_key.public_key()
        device = VirtualDevice(lost, server_key, config=SIM)
        device.start("127.0.0.1", service.device_server.port)
        attacker = VirtualDevice(VirtualDeviceSpec(_id(60), fixed_device_key(61)), server_key, config=SIM)
        base = f"http://127.0.0.1:{service.api_port}"
        try:

            async def pending_count(n: int) -> bool:
                return len(await service.store.keys.list_pending_keys(_id(60))) == n

            await _eventually(lambda: pending_count(1))
            async with httpx.AsyncClient(base_url=base) as client:
                login = await client.post(
                    "/oauth/token", data={"grant_type": "password", "username": OWNER, "password": PASSWORD}
                )
                auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
                seen = (await client.get(f"/v1/devices/{_id(60)}/keys", headers=auth)).json()["pending_keys"][0]
                attacker.start("127.0.0.1", service.device_server.port)  # the race
                await _eventually(lambda: pending_count(2))
                stale = await client.post(
                    f"/v1/devices/{_id(60)}/keys/approve", json={"fingerprint": "SHA256:" + "0" * 64}, headers=auth
                )
                assert stale.status_code == 409
                assert seen["fingerprint"] in stale.json()["pending_fingerprints"]
                approved = await client.post(
                    f"/v1/devices/{_id(60)}/keys/approve", json={"fingerprint": seen["fingerprint"]}, headers=auth
                )
                assert approved.json()["key_fingerprint"] == seen["fingerprint"]
            await attacker.stop()
            await asyncio.wait_for(device.connected.wait(), 10)
            stored = await service.store.devices.get(_id(60))
            assert stored is not None
            assert (
                stored.key_fingerprint
                == seen["fingerprint"]
                != fingerprint(public_key_der(fixed_device_key(61).public_key()))
            )
        finally:
            await attacker.stop()
            await device.stop()

    _run(tmp_path, scenario)


def test_trust_on_first_use_and_the_key_error_report(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        await service.app.keys.set_fleet_policy(OPS, trust_on_first_use=True)
        spec = VirtualDeviceSpec(_id(50), fixed_device_key(50))
        device = VirtualDevice(spec, service.keys.private_key.public_key(), config=SIM)
        device.start("127.0.0.1", service.device_server.port)
        try:
            await device.connected.wait()
            stored = await service.store.devices.get(_id(50))
            assert stored is not None
            assert stored.key_fingerprint == fingerprint(public_key_der(fixed_device_key(50).public_key()))
            # The firmware's report of a blank server key (protocol.md §12.1).
            device.publish("spark/device/key/error", "5")
            alerts = service.cloud.alerts
            assert isinstance(alerts, LoggingAlerts)
            await _eventually(lambda: len([e for e in alerts.recent if e.kind == "key_error_reported"]) == 1)
            await service.gateway.drain()
            audit = await service.store.audit.recent(_id(50))
            assert [e.action for e in audit] == ["key_error_reported", "trusted_on_first_use"]
            assert audit[0].detail == "flags 5: server public key blank, server address blank"
        finally:
            await device.stop()

    _run(tmp_path, scenario)


def test_a_rekey_window_takes_no_key_when_two_new_ones_race_for_it(tmp_path: Path) -> None:
    """The device that lost its key and someone who knows its id both present a new key during the window. The
    intruder is first and even connects; when the device's own new key comes, neither is accepted: the
    intruder's session is closed, both keys wait for the owner, who is told."""

    async def scenario(service: Service) -> None:
        lost = VirtualDeviceSpec(_id(70), fixed_device_key(70), fault=Fault.AMNESIA)
        await _register(service, [lost])
        await service.app.keys.arm_rekey(OPS, _id(70), 600)
        server_key = service.keys.private_key.public_key()
        device = VirtualDevice(lost, server_key, config=SIM)
        intruder = VirtualDevice(VirtualDeviceSpec(_id(70), fixed_device_key(71)), server_key, config=SIM)
        alerts = service.cloud.alerts
        assert isinstance(alerts, LoggingAlerts)
        intruder.start("127.0.0.1", service.device_server.port)
        try:
            await asyncio.wait_for(intruder.connected.wait(), 10)
            assert service.cloud.online(_id(70))  # the window took the intruder's key
            device.start("127.0.0.1", service.device_server.port)

            async def both_held() -> bool:
                return len(await service.store.keys.list_pending_keys(_id(70))) == 2

            await _eventually(both_held)
            stored = await service.store.devices.get(_id(70))
            assert stored is not None
            assert stored.key_fingerprint == fingerprint(public_key_der(fixed_device_key(70).public_key()))
            assert await service.store.keys.get_rekey(_id(70)) is None
            actions = [e.action for e in await service.store.audit.recent(_id(70))]
            assert actions[:2] == ["rekey_conflict", "rekey_used"]
            await _eventually(lambda: any(a.kind == "rekey_conflict" for a in alerts.recent))
            await _eventually(lambda: not service.cloud.online(_id(70)))
            assert intruder.connect_count == 1  # closed, and refused since
        finally:
            await intruder.stop()
            await device.stop()

    _run(tmp_path, scenario)
