"""Self-healing under the key policy: the amnesia drill (protocol.md §12), end to end over loopback.

A fleet whose devices regenerated their keys (same ids, new keys) comes back without USB when a re-key
window is armed, waits for approval under quarantine, and stays out under the strict default, reported.
An impersonator (a new key for a known id, no window) never gets a session with the device's data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from cyan.cloud.alerts import LoggingAlerts
from cyan.cloud.errors import DeviceQuarantinedError
from cyan.cloud.models import FLEET, DeviceRecord, KeyPolicyMode
from cyan.config import Settings
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import ServerConfig
from cyan.service import Service, ensure_server_keys
from cyan.sim import Fault, Fleet, SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.testing import fixed_device_key

OWNER, PASSWORD = "ops@example.com", "drill password"
SIM = SimConfig(backoff_scale=0.02)


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
    for spec in specs:
        # Registered before the key loss: the old key.
        der = public_key_der(spec.private_key.public_key())
        await service.store.add_device(
            DeviceRecord(id=spec.device_id, owner=OWNER, public_key_der=der, key_fingerprint=fingerprint(der))
        )


def _run(tmp_path: Path, scenario: Callable[[Service], Awaitable[None]], *, processes: int = 0) -> None:
    """`processes`: serve the devices from that many device processes (`cyan serve --device-processes`)."""

    async def main() -> None:
        settings = Settings(
            data_dir=tmp_path / "data",
            device_host="127.0.0.1",
            device_port=0,
            api_host="127.0.0.1",
            api_port=0,
            device_processes=processes,
        )
        service = Service(settings, ensure_server_keys(settings), protocol=ServerConfig(request_timeout=2.0))
        await service.start()
        try:
            await service.accounts.create_user(OWNER, PASSWORD)
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
                return len(await service.store.list_pending_keys()) == 4

            await _eventually(all_pending)
            alerts = service.cloud.alerts
            assert isinstance(alerts, LoggingAlerts)
            await _eventually(lambda: any(a.kind == "handshake_loop" for a in alerts.recent))
            assert not any(service.cloud.online(s.device_id) for s in specs)
            await service.cloud.flush()
            attempts = await service.store.list_attempts(specs[0].device_id, limit=1000)
            assert attempts
            assert {(a.step, a.reason) for a in attempts} == {("identity", "key_mismatch")}
            assert attempts[0].presented_fingerprint != attempts[0].stored_fingerprint
            # Each new key is refused and audited once, not once per attempt.
            audit = await service.store.list_audit(specs[0].device_id)
            assert [e.action for e in audit] == ["refused"]
            assert (audit[0].old_fingerprint, audit[0].new_fingerprint) == (
                attempts[0].stored_fingerprint,
                attempts[0].presented_fingerprint,
            )
            assert {a.kind for a in alerts.recent} >= {"key_refused", "handshake_loop"}
            # An operator approves one device's new key: it comes back at its next attempt, without USB.
            await service.cloud.approve_pending_key(specs[0].device_id, "ops")
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
            await service.cloud.arm_rekey(spec.device_id, 600, "ops")
        started = time.monotonic()
        fleet = Fleet(specs, service.keys.private_key.public_key(), config=SIM)
        fleet.start("127.0.0.1", service.device_server.port)
        try:
            assert await fleet.wait_connected(timeout=15)
            recovery = time.monotonic() - started
            assert recovery < 15
            await service.cloud.flush()
            for spec in specs:
                stored = await service.store.get_device(spec.device_id)
                assert stored is not None
                assert stored.key_fingerprint != fingerprint(public_key_der(spec.private_key.public_key()))
                assert await service.store.get_rekey(spec.device_id) is None  # one key per window
                actions = [e.action for e in await service.store.list_audit(spec.device_id)]
                assert actions == ["rekey_used", "rekey_armed"]
            assert await service.cloud.call_function(specs[3].device_id, "setArg", "hello") == 5
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


@pytest.mark.parametrize("processes", [0, 2], ids=["one process", "device processes"])
def test_quarantine_lets_devices_in_with_nothing_until_approved(tmp_path: Path, processes: int) -> None:
    async def scenario(service: Service) -> None:
        await service.cloud.set_policy(FLEET, KeyPolicyMode.QUARANTINE, False, "ops")
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
                assert keys["pending_key"]["fingerprint"] != keys["key_fingerprint"]
                assert keys["policy"]["mode"] == "quarantine"
                # Approved: access at once, on the same connection.
                approved = await client.post(f"/v1/devices/{first}/keys/approve", headers=auth)
                assert approved.json()["key_fingerprint"] == keys["pending_key"]["fingerprint"]
                called = await client.post(f"/v1/devices/{first}/setArg", json={"args": "hello"}, headers=auth)
                assert called.json()["return_value"] == 5
                # Rejected: the connection is closed; the device stays out until a decision changes.
                assert (await client.post(f"/v1/devices/{second}/keys/reject", headers=auth)).json()["ok"]
                assert (
                    await client.post(f"/v1/devices/{third}/keys/rekey", data={"seconds": "60"}, headers=auth)
                ).json()["ok"]
                audit = {
                    e["action"] for e in (await client.get(f"/v1/devices/{first}/keys", headers=auth)).json()["audit"]
                }
                assert audit == {"quarantined", "approved"}
            assert service.cloud.online(first)
        finally:
            await fleet.stop()

    _run(tmp_path, scenario, processes=processes)


def test_an_impersonator_never_gets_the_devices_session(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        await service.cloud.set_policy(FLEET, KeyPolicyMode.QUARANTINE, False, "ops")
        real = VirtualDeviceSpec(_id(40), fixed_device_key(40))
        await _register(service, [real])
        server_key = service.keys.private_key.public_key()
        device = VirtualDevice(real, server_key, config=SIM)
        device.start("127.0.0.1", service.device_server.port)
        impostor = VirtualDevice(VirtualDeviceSpec(_id(40), fixed_device_key(41)), server_key, config=SIM)
        try:
            await device.connected.wait()
            impostor.start("127.0.0.1", service.device_server.port)
            await _eventually(lambda: service.cloud.quarantined(_id(40)))
            # The owner's calls still reach the real device; events go to it, never to the impostor.
            assert await service.cloud.call_function(_id(40), "setArg", "mine") == 4
            service.cloud.publish("vdev/ping", "private", owner=OWNER)
            await _eventually(lambda: any(e.data == b"private" for e in device.received_events))
            await asyncio.sleep(0.2)
            assert not any(e.data == b"private" for e in impostor.received_events)
            stored = await service.store.get_device(_id(40))
            assert stored is not None
            assert stored.key_fingerprint == fingerprint(public_key_der(fixed_device_key(40).public_key()))
        finally:
            await impostor.stop()
            await device.stop()

    _run(tmp_path, scenario)


def test_trust_on_first_use_and_the_key_error_report(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        await service.cloud.set_policy(FLEET, KeyPolicyMode.STRICT, True, "ops")
        spec = VirtualDeviceSpec(_id(50), fixed_device_key(50))
        device = VirtualDevice(spec, service.keys.private_key.public_key(), config=SIM)
        device.start("127.0.0.1", service.device_server.port)
        try:
            await device.connected.wait()
            stored = await service.store.get_device(_id(50))
            assert stored is not None
            assert stored.key_fingerprint == fingerprint(public_key_der(fixed_device_key(50).public_key()))
            # The firmware's report of a blank server key (protocol.md §12.1).
            device.publish("spark/device/key/error", "5")
            alerts = service.cloud.alerts
            assert isinstance(alerts, LoggingAlerts)
            await _eventually(lambda: len([e for e in alerts.recent if e.kind == "key_error_reported"]) == 1)
            await service.cloud.flush()
            audit = await service.store.list_audit(_id(50))
            assert [e.action for e in audit] == ["key_error_reported", "trusted_on_first_use"]
            assert audit[0].detail == "flags 5: server public key blank, server address blank"
        finally:
            await device.stop()

    _run(tmp_path, scenario)
