"""`cyan serve --device-processes N`: devices served by child processes, the cloud in the parent.

Everything a user relies on must work the same as in one process: both firmware generations, calls,
variables, signals, events both ways and between devices, the key policy's refusals with their records,
and a child that dies must cost its devices one reconnection, never the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cyan.app import Actor
from cyan.cloud.errors import DeviceTimeoutError, UnknownVariableError
from cyan.cloud.models import AttemptOutcome
from cyan.protocol import DEVICE_OS_0_6_1, DEVICE_OS_3_1_0
from cyan.server import DeviceProcesses
from cyan.service import Service
from cyan.sim import AppSpec, Fleet, VirtualDeviceSpec
from cyan.testing import fixed_device_key
from serve_support import FAST, SIM, register, run_with_service

SPECS = [
    VirtualDeviceSpec(f"{n:024x}", fixed_device_key(n), firmware=DEVICE_OS_3_1_0 if n % 2 else DEVICE_OS_0_6_1)
    for n in range(1, 7)
]


def _run(tmp_path: Path, scenario: Callable[[Service], Awaitable[None]], *, processes: int = 2) -> None:
    run_with_service(tmp_path / "data", scenario, device_processes=processes, protocol=FAST)


async def _eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_devices_in_child_processes_are_served_like_local_ones(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        servers = service.device_server
        assert isinstance(servers, DeviceProcesses)
        assert len(servers.pids) == 2
        await register(service, SPECS)
        pongs = service.bus.subscribe("vdev/pong")
        fleet = Fleet(SPECS, service.keys.private_key.public_key(), config=SIM)
        fleet.start("127.0.0.1", servers.port)
        try:
            await fleet.wait_connected(timeout=20)
            await _eventually(lambda: servers.connection_count == len(SPECS))

            async def described() -> bool:
                found = [(await service.app.devices.get(Actor.operator(), spec.device_id)).record for spec in SPECS]
                return all(record.functions == ["setArg"] for record in found)

            # The values are decoded with the variable types of the device's Describe (§6.6).
            deadline = asyncio.get_running_loop().time() + 10
            while not await described():
                assert asyncio.get_running_loop().time() < deadline, "no Describe from every device"
                await asyncio.sleep(0.05)
            for spec in SPECS:
                device = spec.device_id
                assert await service.cloud.call_function(device, "setArg", "hi there") == 8
                assert await service.cloud.read_variable(device, "lastArg") == (b"hi there", "hi there")
                await service.cloud.signal(device, True)
            try:
                await service.cloud.read_variable(SPECS[0].device_id, "nosuch")
            except UnknownVariableError:
                pass
            else:
                raise AssertionError("an unknown variable must be refused")
            # An event from the API reaches every device, whichever process serves it; each answers.
            service.cloud.publish("vdev/ping", "to all", owner=None)
            answers = {(e.device_id, e.data) for e in [await pongs.get() for _ in SPECS] if e is not None}
            assert answers == {(spec.device_id, "to all") for spec in SPECS}
            # Device to device, across the processes.
            fleet[SPECS[0].device_id].publish("vdev/ping", "from a device")
            answers = {(e.device_id, e.data) for e in [await pongs.get() for _ in SPECS] if e is not None}
            assert answers == {(spec.device_id, "from a device") for spec in SPECS}
            record = (await service.app.devices.get(Actor.operator(), SPECS[0].device_id)).record
            assert record.online
            assert record.functions == ["setArg"]
            # Vitals across the processes: asked of a 3.1.0 and a 0.6.1 device, and posted by one unasked.
            new, legacy = SPECS[0].device_id, SPECS[1].device_id
            for device in (new, legacy):
                measured = await service.vitals.collect(device)
                assert measured is not None
                assert measured.payload["service"]["coap"]["round_trip"] >= 0
            new_record, legacy_record = await service.store.vitals.last(new), await service.store.vitals.last(legacy)
            assert new_record is not None
            assert legacy_record is not None
            assert new_record.payload["device"]["cloud"]["connection"]["status"] == "connected"
            assert "device" not in legacy_record.payload
            assert fleet[new].publish_vitals()
            deadline = asyncio.get_running_loop().time() + 10
            while len(history := await service.store.vitals.history(new)) < 2:
                assert asyncio.get_running_loop().time() < deadline, "the posted vitals were not recorded"
                await asyncio.sleep(0.05)
            assert history[-1].payload["device"]["system"]["uptime"] >= 0
            assert "coap" not in history[-1].payload["service"]  # posted: nothing was measured
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_a_device_side_error_reaches_the_caller_whole(tmp_path: Path) -> None:
    """A device whose Describe lists no functions is sent the call; the firmware acknowledges an unknown
    function and never answers (protocol.md §6.5): the child's timeout error crosses to the parent."""
    silent = dataclasses.replace(SPECS[0], app=AppSpec.minimal())

    async def scenario(service: Service) -> None:
        await register(service, [silent])
        fleet = Fleet([silent], service.keys.private_key.public_key(), config=SIM)
        fleet.start("127.0.0.1", service.device_server.port)
        try:
            await fleet.wait_connected(timeout=20)
            await _eventually(lambda: service.device_server.connection_count == 1)
            with pytest.raises(DeviceTimeoutError, match=f"device {silent.device_id} did not answer the call of 'led'"):
                await service.cloud.call_function(silent.device_id, "led", "on", timeout=0.5)
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_refusals_are_recorded_and_a_dead_process_costs_one_reconnection(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        servers = service.device_server
        assert isinstance(servers, DeviceProcesses)
        known, unknown = SPECS[:4], SPECS[4:]
        await register(service, known)
        fleet = Fleet(SPECS, service.keys.private_key.public_key(), config=SIM)
        fleet.start("127.0.0.1", servers.port)
        try:
            await _eventually(lambda: servers.connection_count == len(known))
            # The unknown devices' refusals come from the children in their own time: a known device may be
            # connected before an unknown one has even sent its identity, so wait for every unknown device.
            unknown_ids = {s.device_id for s in unknown}
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                await service.cloud.flush()
                refused = [
                    a
                    for a in await service.store.attempts.recent(limit=1000)
                    if a.outcome is AttemptOutcome.FAILED and a.device_id in unknown_ids
                ]
                if {a.device_id for a in refused} == unknown_ids:
                    break
                assert asyncio.get_running_loop().time() < deadline, "not every unknown device was refused"
                await asyncio.sleep(0.05)
            assert {(a.step, a.reason) for a in refused} == {("identity", "unknown_device")}

            before = servers.pids
            os.kill(before[0], signal.SIGKILL)
            await _eventually(lambda: before[0] not in servers.pids)
            # Its devices reconnect through the other process at once, and the dead one is started again.
            await _eventually(lambda: servers.connection_count == len(known) and len(servers.pids) == 2, 20)
            assert before[0] not in servers.pids
            assert before[1] in servers.pids
            for spec in known:
                assert await service.cloud.call_function(spec.device_id, "setArg", "back") == 4
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_each_child_holds_the_bound_on_handshakes_under_way(tmp_path: Path) -> None:
    """CYAN_MAX_HANDSHAKES reaches the device processes: with a bound of 1, a second connection waits unserved
    (no nonce, no RSA work) while a first handshake is under way, and is served once that one ends."""

    async def scenario(service: Service) -> None:
        servers = service.device_server
        assert isinstance(servers, DeviceProcesses)
        first_reader, first = await asyncio.open_connection("127.0.0.1", servers.port)
        assert len(await asyncio.wait_for(first_reader.readexactly(40), 10)) == 40
        second_reader, second = await asyncio.open_connection("127.0.0.1", servers.port)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(second_reader.readexactly(40), 0.5)
            first.close()
            assert len(await asyncio.wait_for(second_reader.readexactly(40), 10)) == 40
        finally:
            second.close()

    run_with_service(tmp_path / "data", scenario, device_processes=1, protocol=FAST, max_handshakes=1)
