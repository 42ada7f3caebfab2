"""The device server on its own: a real socket, the protocol core, and the cloud behind the gateway over the
in-memory store. What a session's records say, and that its deadlines do not move with the wall clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from cyan.app import Actor, Application, NewDevice
from cyan.bus import InProcessBus
from cyan.cloud.models import AttemptOutcome, KeyPolicyMode
from cyan.cloud.service import Cloud
from cyan.keys import public_key_der
from cyan.protocol import ServerConfig
from cyan.server import DeviceServer
from cyan.server.device_server import DeviceProtocol
from cyan.sim import SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.store import MemoryStore
from cyan.testing import fixed_device_key, fixed_server_key

DEVICE = "ab" * 12
OPS = Actor.operator("ops")
SIM = SimConfig(backoff_scale=0.05)


async def _with_server(work: Callable[[DeviceServer, Application, Cloud], Awaitable[None]]) -> None:
    store = MemoryStore()
    await store.open()
    cloud = Cloud(store, InProcessBus())
    app = Application(store, cloud=cloud)
    assert app.gateway is not None
    await cloud.start()
    server = DeviceServer(app.gateway, fixed_server_key(), host="127.0.0.1", port=0, config=ServerConfig())
    await server.start()
    await app.devices.register(OPS, [NewDevice(DEVICE, public_key_der(fixed_device_key(1).public_key()))])
    try:
        await work(server, app, cloud)
    finally:
        await server.stop()
        await app.gateway.drain()
        await cloud.stop()


def _session(server: DeviceServer) -> DeviceProtocol:
    (protocol,) = [p for p in server._connections.values() if p.device_id == DEVICE]
    return protocol


def _rearm(protocol: DeviceProtocol) -> None:
    """Arm the session's timer from scratch, as any new deadline would."""
    if protocol._timer is not None:
        protocol._timer.cancel()
        protocol._timer = None
    protocol._arm_timer()


def test_a_step_of_the_wall_clock_moves_no_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """NTP or an operator steps the wall clock: a session's timers keep their time. On the wall clock, an hour
    back would have delayed every idle and request timeout by an hour, and an hour forward would have taken
    every device for silent since then and closed it."""

    async def work(server: DeviceServer, app: Application, cloud: Cloud) -> None:
        device = VirtualDevice(
            VirtualDeviceSpec(DEVICE, fixed_device_key(1)), fixed_server_key().public_key(), config=SIM
        )
        device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), 10)
            protocol = _session(server)
            loop = asyncio.get_running_loop()
            assert protocol._timer is not None
            before = protocol._timer.when() - loop.time()
            real = time.time
            for step in (-3600.0, 3600.0):
                monkeypatch.setattr(time, "time", lambda step=step: real() + step)
                _rearm(protocol)
                timer = protocol._timer
                assert timer is not None
                remaining = timer.when() - loop.time()
                assert abs(remaining - before) < 1.0, (step, remaining, before)
            monkeypatch.setattr(time, "time", real)
            assert await cloud.call_function(DEVICE, "setArg", "still here") == 10
            assert device.connect_count == 1
        finally:
            await device.stop()

    asyncio.run(_with_server(work))


def test_the_attempt_records_say_whether_the_device_proved_its_identity() -> None:
    async def work(server: DeviceServer, app: Application, cloud: Cloud) -> None:
        await app.keys.set_fleet_policy(OPS, mode=KeyPolicyMode.QUARANTINE)
        server_key = fixed_server_key().public_key()
        device = VirtualDevice(VirtualDeviceSpec(DEVICE, fixed_device_key(1)), server_key, config=SIM)
        device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), 10)
        finally:
            await device.stop()
        # Another key while the device is away: quarantined, which proves a key, not the device.
        stranger = VirtualDevice(VirtualDeviceSpec(DEVICE, fixed_device_key(2)), server_key, config=SIM)
        stranger.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(stranger.connected.wait(), 10)
            assert cloud.quarantined(DEVICE)
        finally:
            await stranger.stop()
        unknown = VirtualDevice(VirtualDeviceSpec("cd" * 12, fixed_device_key(3)), server_key, config=SIM)
        unknown.start("127.0.0.1", server.port)
        for _ in range(200):
            await cloud.flush()
            if await app.store.attempts.recent("cd" * 12):
                break
            await asyncio.sleep(0.02)
        await unknown.stop()
        await cloud.flush()
        mine = await app.store.attempts.recent(DEVICE)
        connected = [
            (a.presented_fingerprint != a.stored_fingerprint, a.proven)
            for a in mine
            if a.outcome is AttemptOutcome.CONNECTED
        ]
        assert sorted(connected) == [(False, True), (True, False)]
        # The unknown device retries until it is stopped: its attempts are refusals, or cut short by the stop.
        attempts = await app.store.attempts.recent("cd" * 12)
        assert "unknown_device" in {a.reason for a in attempts}
        assert {a.proven for a in attempts} == {False}

    asyncio.run(_with_server(work))


def test_a_decision_that_fails_ends_the_attempt_as_a_server_error() -> None:
    async def work(server: DeviceServer, app: Application, cloud: Cloud) -> None:
        store = app.store
        assert isinstance(store, MemoryStore)
        store.fail_with = "the database went away"
        device = VirtualDevice(
            VirtualDeviceSpec(DEVICE, fixed_device_key(1)), fixed_server_key().public_key(), config=SIM
        )
        device.start("127.0.0.1", server.port)
        try:
            for _ in range(200):
                if device.failure_count:
                    break
                await asyncio.sleep(0.02)
            assert not device.connected.is_set()
        finally:
            await device.stop()
            store.fail_with = None
        await cloud.flush()
        attempts = await store.attempts.recent(DEVICE)
        assert attempts
        assert {(a.reason, a.proven) for a in attempts} == {("server_error", False)}
        assert "the database went away" in (attempts[0].detail or "")

    asyncio.run(_with_server(work))
