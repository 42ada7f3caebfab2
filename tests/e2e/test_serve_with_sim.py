"""`cyan serve`'s service over loopback with simulated devices of both firmware generations."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cyan.app import Actor
from cyan.bus import CloudEvent
from cyan.cloud.errors import DeviceOfflineError, DeviceTimeoutError, UnknownVariableError
from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, DeviceRecord
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import DEVICE_OS_0_6_1, DEVICE_OS_3_1_0, ServerConfig
from cyan.service import Service
from cyan.sim import Fault, Fleet, SimConfig, VirtualDevice, VirtualDeviceSpec, registered_public_key
from cyan.testing import fixed_device_key
from serve_support import run_with_service

FAST = ServerConfig(identity_timeout=1.0, hello_timeout=1.0, describe_delay=0.2, request_timeout=2.0)
SIM = SimConfig(backoff_scale=0.05)


def _id(n: int) -> str:
    return f"{n:024x}"


async def _register(service: Service, spec: VirtualDeviceSpec, *, name: str | None = None) -> None:
    der = public_key_der(registered_public_key(spec))
    await service.store.devices.add(
        DeviceRecord(
            id=spec.device_id,
            name=name,
            public_key_der=der,
            key_fingerprint=fingerprint(der),
            created_at=datetime.now(UTC),
        )
    )


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _run(tmp_path: Path, scenario: Callable[[Service], Awaitable[None]]) -> None:
    run_with_service(tmp_path / "data", scenario, protocol=FAST)


def test_devices_connect_and_are_reachable(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        port = service.device_server.port
        server_key = service.keys.private_key.public_key()
        specs = [
            VirtualDeviceSpec(_id(1), fixed_device_key(1), firmware=DEVICE_OS_3_1_0, name="new"),
            VirtualDeviceSpec(_id(2), fixed_device_key(2), firmware=DEVICE_OS_0_6_1, name="legacy"),
        ]
        for spec, name in zip(specs, ("kitchen", "garage"), strict=True):
            await _register(service, spec, name=name)
        statuses = service.bus.subscribe("spark/status")
        pongs = service.bus.subscribe("vdev/pong")
        fleet = Fleet(specs, server_key, config=SIM)
        fleet.start("127.0.0.1", port)
        try:
            await fleet.wait_connected(timeout=10)

            async def described() -> bool:
                found = [(await service.app.devices.get(Actor.operator(), s.device_id)).record for s in specs]
                return all(d.functions == ["setArg"] for d in found)

            await _eventually(described)
            kitchen = (await service.app.devices.get(Actor.operator(), "kitchen")).record
            assert kitchen.online
            assert (kitchen.platform_id, kitchen.system_version) == (6, 3103)
            assert {(v.name, v.type) for v in kitchen.variables} == {
                ("counter", "int32"),
                ("lastArg", "string"),
                ("temp", "double"),
            }
            garage = (await service.app.devices.get(Actor.operator(), "garage")).record
            # 0.6.1's Hello has no system version: its system Describe's system part says 105.
            assert (garage.hello_flags, garage.system_version) == (0, 105)

            calls = service.app.calls
            assert calls is not None
            operator = Actor.operator()
            for name, device_id in (("kitchen", _id(1)), ("garage", _id(2))):
                assert await calls.call_function(operator, name, "setArg", "hello world") == (device_id, 11)
                assert await calls.read_variable(operator, name, "lastArg") == (
                    device_id,
                    b"hello world",
                    "hello world",
                )
                assert (await calls.read_variable(operator, name, "temp"))[2] == 21.5
            with pytest.raises(UnknownVariableError):
                await calls.read_variable(operator, "kitchen", "nosuch")

            # An event from the API reaches both devices; each app answers vdev/ping with vdev/pong.
            service.cloud.publish("vdev/ping", "from the API", owner=None)
            got = {(e.device_id, e.data) for e in [await pongs.get(), await pongs.get()] if e}
            assert got == {(_id(1), "from the API"), (_id(2), "from the API")}
            # Device to device: the new-stack device pings, both devices (itself included) answer.
            fleet[_id(1)].publish("vdev/ping", "device to device")
            got = {(e.device_id, e.data) for e in [await pongs.get(), await pongs.get()] if e}
            assert got == {(_id(1), "device to device"), (_id(2), "device to device")}

            # Offline detection: the legacy device goes away; the other stays reachable.
            await fleet[_id(2)].stop()

            async def garage_offline() -> bool:
                return not service.cloud.online(_id(2))

            await _eventually(garage_offline)
            with pytest.raises(DeviceOfflineError):
                await calls.call_function(operator, "garage", "setArg", "x")
            assert await calls.call_function(operator, "kitchen", "setArg", "still here") == (_id(1), 10)
        finally:
            await fleet.stop()
        await service.cloud.flush()
        seen: list[tuple[str | None, str | None]] = []
        while len(seen) < 4:
            event = await asyncio.wait_for(statuses.get(), 2)
            assert isinstance(event, CloudEvent)
            seen.append((event.device_id, event.data))
        assert sorted(seen) == sorted(
            [(_id(1), "online"), (_id(2), "online"), (_id(2), "offline"), (_id(1), "offline")]
        )
        attempts = await service.store.attempts.recent()
        assert {(a.device_id, a.outcome, a.step) for a in attempts} == {
            (_id(1), AttemptOutcome.CONNECTED, "session"),
            (_id(2), AttemptOutcome.CONNECTED, "session"),
        }
        stored = await service.store.devices.get(_id(1))
        assert stored is not None
        assert not stored.online

    _run(tmp_path, scenario)


def test_a_reconnecting_device_replaces_its_session(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        spec = VirtualDeviceSpec(_id(3), fixed_device_key(3), fault=Fault.DROP_MID_SESSION, drop_after=0.3)
        await _register(service, spec)
        device = VirtualDevice(spec, service.keys.private_key.public_key(), config=SIM)
        device.start("127.0.0.1", service.device_server.port)
        try:

            async def reconnected() -> bool:
                return device.connect_count >= 2 and service.cloud.online(_id(3))

            await _eventually(reconnected, timeout=10)
            assert await service.cloud.call_function(_id(3), "setArg", "abc") == 3
        finally:
            await device.stop()

    _run(tmp_path, scenario)


def _attempt_for(attempts: list[ConnectionAttempt], device_id: str | None) -> ConnectionAttempt:
    return next(a for a in attempts if a.device_id == device_id and a.outcome is AttemptOutcome.FAILED)


def test_every_fault_is_recorded_while_others_are_served(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        server_key = service.keys.private_key.public_key()
        good = VirtualDeviceSpec(_id(10), fixed_device_key(10))
        faults = {
            Fault.WRONG_SERVER_KEY: _id(11),
            Fault.AMNESIA: _id(12),
            Fault.CORRUPT_KEY: _id(13),
            Fault.NO_HELLO: _id(14),
            Fault.STALL_HANDSHAKE: _id(15),
            Fault.BYTE_BY_BYTE: _id(16),
        }
        specs = [good] + [
            VirtualDeviceSpec(device_id, fixed_device_key(n), fault=fault)
            for n, (fault, device_id) in enumerate(faults.items(), start=11)
        ]
        for spec in specs:
            await _register(service, spec)
        unknown = VirtualDeviceSpec(_id(99), fixed_device_key(0))
        fleet = Fleet([*specs, unknown], server_key, config=SIM)
        fleet.start("127.0.0.1", service.device_server.port)
        try:

            async def all_recorded() -> bool:
                await service.cloud.flush()
                attempts = await service.store.attempts.recent(limit=1000)
                failed = {a.reason for a in attempts if a.outcome is AttemptOutcome.FAILED}
                return {
                    "nonce_mismatch",
                    "key_mismatch",
                    "session_key_rejected",
                    "hello_timeout",
                    "nonce_timeout",
                    "unknown_device",
                } <= failed and service.cloud.online(_id(16))

            await _eventually(all_recorded, timeout=15)
            # The healthy device was served throughout.
            assert await service.cloud.call_function(_id(10), "setArg", "ok") == 2
            assert await service.cloud.call_function(_id(16), "setArg", "slowly") == 6
        finally:
            await fleet.stop()
        attempts = await service.store.attempts.recent(limit=1000)
        wrong_key = next(a for a in attempts if a.reason == "nonce_mismatch")
        assert (wrong_key.device_id, wrong_key.step) == (None, "nonce")  # it cannot be identified
        amnesia = _attempt_for(attempts, _id(12))
        assert (amnesia.step, amnesia.reason) == ("identity", "key_mismatch")
        assert amnesia.stored_fingerprint == fingerprint(public_key_der(fixed_device_key(12).public_key()))
        assert amnesia.presented_fingerprint not in (None, amnesia.stored_fingerprint)
        corrupt = _attempt_for(attempts, _id(13))
        assert (corrupt.step, corrupt.reason) == ("hello", "session_key_rejected")
        # (Under load the device's own 4 s Hello wait can end an attempt first: then it is closed_by_peer.)
        no_hello = next(a for a in attempts if a.device_id == _id(14) and a.reason == "hello_timeout")
        assert no_hello.step == "hello"
        stalled = next(a for a in attempts if a.reason == "nonce_timeout")
        assert stalled.step == "nonce"
        unknown_attempt = _attempt_for(attempts, _id(99))
        assert (unknown_attempt.step, unknown_attempt.reason) == ("identity", "unknown_device")
        assert unknown_attempt.presented_fingerprint == fingerprint(public_key_der(fixed_device_key(0).public_key()))

    _run(tmp_path, scenario)


def test_a_call_to_an_unknown_function_times_out(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        spec = VirtualDeviceSpec(_id(20), fixed_device_key(20))
        await _register(service, spec)
        device = VirtualDevice(spec, service.keys.private_key.public_key(), config=SIM)
        device.start("127.0.0.1", service.device_server.port)
        try:
            await device.connected.wait()
            # Before Describe arrives the cloud does not know the function list, so the call goes out;
            # the firmware ACKs an unknown function and never answers (protocol.md §6.5).
            record = service.cloud.live(_id(20))
            assert record is not None
            record.functions = []
            with pytest.raises(DeviceTimeoutError, match="did not answer"):
                await service.cloud.call_function(_id(20), "nosuch", "x", timeout=0.5)
        finally:
            await device.stop()

    _run(tmp_path, scenario)
