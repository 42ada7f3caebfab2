"""The device server on its own: a real socket, the protocol core, and the cloud behind the gateway over the
in-memory store. What a session's records say, and that its deadlines do not move with the wall clock."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from cyan import coarse_timers
from cyan.app import Actor, Application, NewDevice
from cyan.bus import InProcessBus
from cyan.cloud.models import AttemptOutcome, KeyPolicyMode
from cyan.cloud.service import Cloud
from cyan.keys import public_key_der
from cyan.protocol import ServerConfig
from cyan.protocol.device import DeviceConfig
from cyan.server import DeviceServer, device_server
from cyan.server.device_server import DeviceProtocol
from cyan.sim import SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.sim import _device as sim_device
from cyan.store import MemoryStore
from cyan.testing import fixed_device_key, fixed_server_key

DEVICE = "ab" * 12
OPS = Actor.operator("ops")
SIM = SimConfig(backoff_scale=0.05)


async def _with_server(
    work: Callable[[DeviceServer, Application, Cloud], Awaitable[None]], config: ServerConfig | None = None
) -> None:
    store = MemoryStore()
    await store.open()
    cloud = Cloud(store, InProcessBus())
    app = Application(store, cloud=cloud)
    assert app.gateway is not None
    await cloud.start()
    server = DeviceServer(app.gateway, fixed_server_key(), host="127.0.0.1", port=0, config=config or ServerConfig())
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
            armed = protocol.armed_deadline
            assert armed is not None
            before = armed - time.monotonic()
            real = time.time
            for step in (-3600.0, 3600.0):
                monkeypatch.setattr(time, "time", lambda step=step: real() + step)
                _rearm(protocol)
                armed = protocol.armed_deadline
                assert armed is not None
                remaining = armed - time.monotonic()
                assert abs(remaining - before) < 1.0, (step, remaining, before)
            monkeypatch.setattr(time, "time", real)
            assert await cloud.call_function(DEVICE, "setArg", "still here") == 10
            assert device.connect_count == 1
        finally:
            await device.stop()

    asyncio.run(_with_server(work))


def test_far_deadlines_on_the_coarse_timers_keep_a_pinging_session_and_end_a_silent_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The idle timeout and a device's next ping go on the loop's coarse timers when far off (here scaled
    down: "far" is 0.3 s, a grain 0.05 s). Pings keep moving the server's deadline there; a device that stops
    pinging is closed for it, and a device's own pings are fired from there too."""
    monkeypatch.setattr(device_server, "_FAR", 0.3)
    monkeypatch.setattr(sim_device, "_FAR", 0.3)
    monkeypatch.setattr(coarse_timers, "GRAIN", 0.05)
    pinging = SimConfig(backoff_scale=0.05, device_config=DeviceConfig(ping_interval=0.4))
    silent = SimConfig(backoff_scale=0.05, device_config=DeviceConfig(ping_interval=60.0))

    async def work(server: DeviceServer, app: Application, cloud: Cloud) -> None:
        server_key = fixed_server_key().public_key()
        device = VirtualDevice(VirtualDeviceSpec(DEVICE, fixed_device_key(1)), server_key, config=pinging)
        device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), 10)
            protocol = _session(server)
            began = time.monotonic()
            while time.monotonic() - began < 4.0:  # two idle timeouts' worth, answered by pings
                await asyncio.sleep(0.1)
                assert protocol._coarse
            assert device.connect_count == 1
        finally:
            await device.stop()
        await app.devices.register(OPS, [NewDevice("cd" * 12, public_key_der(fixed_device_key(2).public_key()))])
        quiet = VirtualDevice(VirtualDeviceSpec("cd" * 12, fixed_device_key(2)), server_key, config=silent)
        quiet.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(quiet.connected.wait(), 10)
            began = time.monotonic()
            while quiet.connect_count < 2:
                assert time.monotonic() - began < 10, "the silent session was never closed"
                await asyncio.sleep(0.05)
            # Closed for its silence: no sooner than the idle timeout.
            assert time.monotonic() - began >= 2.0
            assert "session ended: idle_timeout" in caplog.text
        finally:
            await quiet.stop()

    with caplog.at_level(logging.INFO, logger="cyan.server"):
        asyncio.run(_with_server(work, ServerConfig(idle_timeout=2.0)))


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
