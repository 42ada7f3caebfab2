"""Virtual devices against a real loopback server on the protocol core: sessions, application, faults,
reconnect backoff (protocol.md §3, §5, §8.3, §12, §13.2)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sim_support import MiniServer, ServerRecord, device_keys, server_key, wait_until

from cyan.keys import build_server_key_file, device_public_key_der_from_private, encode_public_key_pem, public_key_der
from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    DeviceConfig,
    Firmware,
    FunctionReturned,
    HelloFlag,
    Reason,
    ServerConfig,
    Step,
    VariableRead,
)
from cyan.sim import (
    AppSpec,
    CorruptedDeviceKey,
    DeviceState,
    Fault,
    PeriodicEvent,
    SimConfig,
    VirtualDevice,
    VirtualDeviceSpec,
    backoff_delay,
    derive_device_id,
    firmware_for,
    read_server_key,
    registered_public_key,
)

FIRMWARES = [pytest.param(DEVICE_OS_3_1_0, id="3.1.0"), pytest.param(DEVICE_OS_0_6_1, id="0.6.1")]
FAST = SimConfig(backoff_scale=0.02, disconnect_timeout=1.0)
HOST = "127.0.0.1"


def _spec(
    firmware: Firmware, *, fault: Fault | None = None, app: AppSpec | None = None, **extra: Any
) -> VirtualDeviceSpec:
    return VirtualDeviceSpec(
        device_id=derive_device_id(0, seed="test-sim-device"),
        private_key=device_keys(1)[0],
        firmware=firmware,
        app=app or AppSpec(),
        fault=fault,
        name="vdev",
        **extra,
    )


async def _with_device(
    spec: VirtualDeviceSpec,
    body: Callable[[MiniServer, VirtualDevice], Awaitable[None]],
    *,
    server_config: ServerConfig | None = None,
    config: SimConfig = FAST,
) -> tuple[MiniServer, VirtualDevice]:
    """Run `body` with a server that holds the device's registered key and the device started; then stop
    both and check that nothing is left behind."""
    server = MiniServer(config=server_config)
    port = await server.start()
    server.register(spec.device_id, registered_public_key(spec))
    device = VirtualDevice(spec, server.key.public_key(), config=config)
    device.start(HOST, port)
    try:
        await body(server, device)
    finally:
        await device.stop()
        await server.close()
    assert device.state is DeviceState.STOPPED
    assert not device.connected.is_set()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    return server, device


# -- pure helpers --------------------------------------------------------------------------------------


def test_backoff_follows_the_firmware_formula() -> None:
    # 1 s for failures 1-5, 2 s for 6-10, 4 s for 11-15, ... capped at 128 s from 36 (§8.3).
    assert [backoff_delay(n) for n in (1, 5, 6, 10, 11, 15, 16, 35, 36, 200, 255, 300)] == [
        1.0,
        1.0,
        2.0,
        2.0,
        4.0,
        4.0,
        8.0,
        64.0,
        128.0,
        128.0,
        128.0,
        128.0,
    ]
    assert backoff_delay(0) == 0.0


def test_device_ids_are_deterministic() -> None:
    first = derive_device_id(7, seed="a")
    assert first == derive_device_id(7, seed="a")
    assert first != derive_device_id(7, seed="b") != derive_device_id(8, seed="a")
    assert len(first) == 24
    assert int(first, 16) >= 0
    assert derive_device_id(42, prefix="c0ffee") == "c0ffee00000000000000002a"
    with pytest.raises(ValueError, match="hex"):
        derive_device_id(1, prefix="xyz")


def test_fault_and_firmware_names() -> None:
    assert Fault.parse("Drop-Mid-Session") is Fault.DROP_MID_SESSION
    assert len(Fault) == 9
    with pytest.raises(ValueError, match="choose one of"):
        Fault.parse("gremlins")
    assert firmware_for("3.1.0") is DEVICE_OS_3_1_0
    assert firmware_for("v0.6.1") is DEVICE_OS_0_6_1
    assert firmware_for("2.3.1").hello_flags == 0x36
    with pytest.raises(ValueError, match=r"x\.y\.z"):
        firmware_for("latest")


def test_spec_checks_its_identity() -> None:
    with pytest.raises(ValueError, match="24 lowercase hex"):
        VirtualDeviceSpec(device_id="ABC", private_key=device_keys(1)[0])


def test_corrupt_key_presents_the_key_rebuilt_from_damaged_bytes() -> None:
    spec = _spec(DEVICE_OS_3_1_0, fault=Fault.CORRUPT_KEY)
    device = VirtualDevice(spec, server_key().public_key())
    key = device.device_key
    assert isinstance(key, CorruptedDeviceKey)
    presented = device.presented_public_key_der
    # What the firmware sends: the fixed prefix and the modulus bytes of the damaged key (§2.2) ...
    assert presented == device_public_key_der_from_private(key.stored)
    assert presented == public_key_der(key.public_key())
    # ... which is not the device's own key, but is what gets registered (read back from the device).
    assert presented != public_key_der(spec.private_key.public_key())
    assert public_key_der(registered_public_key(spec)) == presented


def test_amnesia_and_wrong_server_key_change_what_the_device_holds() -> None:
    server_public = server_key().public_key()
    amnesiac = VirtualDevice(_spec(DEVICE_OS_3_1_0, fault=Fault.AMNESIA), server_public)
    assert amnesiac.presented_public_key_der != public_key_der(amnesiac.spec.private_key.public_key())
    assert amnesiac.presented_public_key_der == amnesiac.presented_public_key_der  # made once
    plain = VirtualDevice(_spec(DEVICE_OS_3_1_0), server_public)
    assert plain.presented_public_key_der == public_key_der(plain.spec.private_key.public_key())


def test_read_server_key_takes_key_files_and_pem() -> None:
    public = server_key().public_key()
    key, address = read_server_key(build_server_key_file(public, "10.0.0.5", 5684))
    assert public_key_der(key) == public_key_der(public)
    assert address is not None
    assert (address.host, address.effective_port) == ("10.0.0.5", 5684)
    key, address = read_server_key(encode_public_key_pem(public))
    assert public_key_der(key) == public_key_der(public)
    assert address is None


# -- sessions --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_device_connects_and_answers_functions_variables_and_events(firmware: Firmware) -> None:
    spec = _spec(firmware)
    device_id = spec.device_id

    async def body(server: MiniServer, device: VirtualDevice) -> None:
        await asyncio.wait_for(device.connected.wait(), 3)
        await wait_until(lambda: device_id in server.sessions, what="the server session")
        hello = server.sessions[device_id].record.hello
        assert hello is not None
        assert hello.flags == firmware.hello_flags
        assert hello.platform_id == firmware.platform

        returned = await server.call_function(device_id, "setArg", "hello world")
        assert isinstance(returned, FunctionReturned)
        assert (returned.name, returned.return_value) == ("setArg", 11)
        value = await server.read_variable(device_id, "lastArg")
        assert isinstance(value, VariableRead)
        assert value.raw == b"hello world"
        temp = await server.read_variable(device_id, "temp")
        assert isinstance(temp, VariableRead)
        assert temp.raw == bytes.fromhex("0000000000803540")  # 21.5, little-endian (§6.6)
        assert any(e.name == "vdev/called" and e.data == b"hello world" for _, e in server.published)

        # The recorded app answers vdev/ping with vdev/pong carrying the same data.
        server.send_event(device_id, "vdev/ping", "42")
        await wait_until(
            lambda: any(e.name == "vdev/pong" and e.data == b"42" for _, e in server.published), what="vdev/pong"
        )
        assert [(e.name, e.data) for e in device.received_events] == [("vdev/ping", b"42")]
        assert device.publish("sim/manual", "x")
        await wait_until(lambda: any(e.name == "sim/manual" for _, e in server.published), what="sim/manual")

    server, device = asyncio.run(_with_device(spec, body))
    (record,) = server.records
    assert record.connected
    assert record.reason is None
    assert record.closed_by_device  # the device's EOF ended the session (§8.4)
    assert record.goodbye == bool(firmware.hello_flags & HelloFlag.GOODBYE)
    (attempt,) = device.attempts
    assert attempt.connected
    assert attempt.outcome == "stopped"
    assert not attempt.failed
    assert device.connect_count == 1
    assert device.failure_count == 0


def test_periodic_events_arrive_with_the_counter() -> None:
    app = AppSpec(periodic=(PeriodicEvent("sim/tick", 0.3, "n={counter} {name}"),))
    spec = _spec(DEVICE_OS_3_1_0, app=app)
    ticks: list[bytes | None] = []

    async def body(server: MiniServer, device: VirtualDevice) -> None:
        await asyncio.wait_for(device.connected.wait(), 3)

        def seen() -> bool:
            ticks[:] = [e.data for _, e in server.published if e.name == "sim/tick"]
            return len(ticks) >= 2

        await wait_until(seen, what="two periodic events")
        counter = await server.read_variable(spec.device_id, "counter")
        assert isinstance(counter, VariableRead)
        assert int.from_bytes(counter.raw, "big") == device.counter >= 2

    asyncio.run(_with_device(spec, body))
    assert ticks[:2] == [b"n=1 vdev", b"n=2 vdev"]


def test_keepalive_pings_follow_the_core_timer() -> None:
    # A short ping interval (Particle.keepAlive, §8.1) shows the one call_at timer driving the core.
    config = SimConfig(backoff_scale=0.02, disconnect_timeout=1.0, device_config=DeviceConfig(ping_interval=0.15))
    spec = _spec(DEVICE_OS_3_1_0, app=AppSpec.minimal())

    async def body(server: MiniServer, device: VirtualDevice) -> None:
        await asyncio.wait_for(device.connected.wait(), 3)
        await wait_until(
            lambda: spec.device_id in server.sessions and server.sessions[spec.device_id].record.pings >= 2,
            what="two keep-alive pings",
        )

    server, device = asyncio.run(_with_device(spec, body, config=config))
    assert server.records[0].pings >= 2
    assert device.attempts[0].outcome == "stopped"  # answered pings keep the session up
    assert device.ping_round_trips is None  # kept only when asked for


def test_a_device_keeps_its_pings_round_trips_when_asked() -> None:
    config = SimConfig(
        backoff_scale=0.02, disconnect_timeout=1.0, device_config=DeviceConfig(ping_interval=0.15), record_pings=True
    )
    spec = _spec(DEVICE_OS_3_1_0, app=AppSpec.minimal())

    async def body(server: MiniServer, device: VirtualDevice) -> None:
        await asyncio.wait_for(device.connected.wait(), 3)
        await wait_until(lambda: len(device.ping_round_trips or ()) >= 2, what="two pings acknowledged")

    server, device = asyncio.run(_with_device(spec, body, config=config))
    assert device.ping_round_trips is not None
    assert len(device.ping_round_trips) <= server.records[0].pings
    assert all(0 < trip < 3 for trip in device.ping_round_trips)


def test_custom_function_handler_and_its_failures() -> None:
    calls: list[tuple[str, bytes]] = []

    def handler(device: VirtualDevice, name: str, argument: bytes) -> int:
        calls.append((name, argument))
        if argument == b"boom":
            raise RuntimeError("handler bug")
        return 7

    spec = _spec(DEVICE_OS_3_1_0, app=AppSpec(functions=("led",)))

    async def main() -> None:
        server = MiniServer()
        port = await server.start()
        server.register(spec.device_id, registered_public_key(spec))
        device = VirtualDevice(spec, server.key.public_key(), config=FAST, function_handler=handler)
        device.start(HOST, port)
        try:
            with pytest.raises(RuntimeError, match="already running"):
                device.start(HOST, port)
            await asyncio.wait_for(device.connected.wait(), 3)
            await wait_until(lambda: spec.device_id in server.sessions)
            ok = await server.call_function(spec.device_id, "led", "on")
            assert isinstance(ok, FunctionReturned)
            assert ok.return_value == 7
            failed = await server.call_function(spec.device_id, "led", "boom")
            assert isinstance(failed, FunctionReturned)
            assert failed.return_value == -1
            assert device.connected.is_set()
        finally:
            await device.stop()
            await server.close()

    asyncio.run(main())
    assert calls == [("led", b"on"), ("led", b"boom")]


def test_run_until_stopped_and_the_publish_rate_limit() -> None:
    spec = _spec(DEVICE_OS_3_1_0, app=AppSpec.minimal())

    async def main() -> VirtualDevice:
        server = MiniServer()
        port = await server.start()
        server.register(spec.device_id, registered_public_key(spec))
        device = VirtualDevice(spec, server.key.public_key(), config=FAST)
        stop = asyncio.Event()
        runner = asyncio.create_task(device.run(HOST, port, stop=stop))
        await asyncio.wait_for(device.connected.wait(), 3)
        # The firmware refuses a 5th user event within one second (§6.4); it never reaches the wire.
        assert [device.publish("sim/burst", str(i)) for i in range(5)] == [True, True, True, True, False]
        assert device.rate_limited_count == 1
        await wait_until(lambda: sum(e.name == "sim/burst" for _, e in server.published) == 4, what="4 events")
        stop.set()
        await runner
        await server.close()
        assert not device.publish("sim/late")
        return device

    device = asyncio.run(main())
    assert device.state is DeviceState.STOPPED


def test_stop_at_any_point_of_connecting_leaves_nothing_behind() -> None:
    spec = _spec(DEVICE_OS_3_1_0)

    async def main() -> list[VirtualDevice]:
        server = MiniServer()
        port = await server.start()
        server.register(spec.device_id, registered_public_key(spec))
        devices = []
        # Stop after 0..7 loop iterations: waiting, connect task created, connecting, handshake.
        for iterations in range(8):
            device = VirtualDevice(spec, server.key.public_key(), config=FAST)
            device.start(HOST, port)
            for _ in range(iterations):
                await asyncio.sleep(0)
            await device.stop()
            devices.append(device)
        await server.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return devices

    for device in asyncio.run(main()):
        assert device.state is DeviceState.STOPPED
        assert not device.connected.is_set()
        assert all(a.outcome == "stopped" and not a.failed for a in device.attempts)


def test_a_connect_that_outlasts_the_timeout_fails() -> None:
    spec = _spec(DEVICE_OS_3_1_0)

    async def main() -> VirtualDevice:
        server = MiniServer()
        port = await server.start()
        # A connect that outlasts the device's timeout (5 s on a Photon, §1) is a failed attempt.
        device = VirtualDevice(spec, server.key.public_key(), config=SimConfig(connect_timeout=0.0))
        device.start(HOST, port)
        await wait_until(lambda: device.failure_count >= 1, what="a connect timeout")
        await device.stop()
        await server.close()
        return device

    device = asyncio.run(main())
    timeout = device.attempts[0]
    assert (timeout.outcome, timeout.step, timeout.reason) == ("connect_timeout", None, None)
    assert timeout.failed
    assert device.failures_by_outcome == {"connect_timeout": device.failure_count}


def test_periodic_template_is_checked() -> None:
    with pytest.raises(ValueError, match="may use only"):
        PeriodicEvent("x", 1.0, "{temperature}")
    with pytest.raises(ValueError, match="positive"):
        PeriodicEvent("x", 0.0)


# -- faults -----------------------------------------------------------------------------------------------

SHORT = ServerConfig(identity_timeout=0.3, hello_timeout=0.3, describe_delay=None)

# fault -> (server reason, server step, device step, device reason)
FAULTS = {
    # The server cannot find its nonce in the device's message (§3 S2 checks, §9.3).
    Fault.WRONG_SERVER_KEY: (Reason.NONCE_MISMATCH, Step.NONCE, Step.SESSION_KEY, Reason.CLOSED_BY_PEER),
    # Strict policy: the presented key is not the registered one; the device sees a close (§12.2).
    Fault.AMNESIA: (Reason.KEY_MISMATCH, Step.IDENTITY, Step.SESSION_KEY, Reason.CLOSED_BY_PEER),
    # The device cannot decrypt the session key and closes; the server reads that as a rejection (§3).
    Fault.CORRUPT_KEY: (Reason.SESSION_KEY_REJECTED, Step.HELLO, Step.SESSION_KEY, Reason.DECRYPT_FAILED),
    Fault.NO_HELLO: (Reason.HELLO_TIMEOUT, Step.HELLO, Step.HELLO, Reason.CLOSED_BY_PEER),
    Fault.STALL_HANDSHAKE: (Reason.NONCE_TIMEOUT, Step.NONCE, Step.SESSION_KEY, Reason.CLOSED_BY_PEER),
}


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_handshake_faults_fail_on_both_sides(fault: Fault, firmware: Firmware) -> None:
    server_reason, server_step, device_step, device_reason = FAULTS[fault]
    spec = _spec(firmware, fault=fault)

    async def body(server: MiniServer, device: VirtualDevice) -> None:
        await wait_until(lambda: device.attempt_count >= 1 and len(server.records) >= 1, what="a failed attempt")

    server, device = asyncio.run(_with_device(spec, body, server_config=SHORT))
    record = server.records[0]
    assert (record.reason, record.step) == (server_reason, server_step)
    assert not record.connected
    assert record.eof == (fault is Fault.CORRUPT_KEY)  # only there does the device close first
    attempt = device.attempts[0]
    assert (attempt.step, attempt.reason, attempt.outcome) == (device_step, device_reason, device_reason.value)
    assert attempt.failed
    assert not attempt.connected
    assert device.last_failure is device_reason
    assert device.failures_by_outcome[device_reason.value] >= 1
    assert device.connect_count == 0


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_byte_by_byte_device_connects_normally(firmware: Firmware) -> None:
    spec = _spec(firmware, fault=Fault.BYTE_BY_BYTE, byte_delay=0.0005)

    async def body(server: MiniServer, device: VirtualDevice) -> None:
        await asyncio.wait_for(device.connected.wait(), 4)
        returned = await server.call_function(spec.device_id, "setArg", "abc")
        assert isinstance(returned, FunctionReturned)
        assert returned.return_value == 3

    server, _ = asyncio.run(_with_device(spec, body))
    (record,) = server.records
    assert record.connected
    assert record.reason is None
    # 256 handshake bytes and every frame after them came a byte at a time (§4: servers must reassemble).
    assert record.reads > 256


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_drop_mid_session_resets_without_goodbye_and_reconnects(firmware: Firmware) -> None:
    spec = _spec(firmware, fault=Fault.DROP_MID_SESSION, drop_after=0.2)

    async def body(server: MiniServer, device: VirtualDevice) -> None:
        await wait_until(lambda: len(server.records) >= 1 and device.connect_count >= 2, what="a drop and a reconnect")

    server, device = asyncio.run(_with_device(spec, body))
    first: ServerRecord = server.records[0]
    assert first.connected
    assert first.reset or first.closed_by_device
    assert not first.goodbye
    dropped = device.attempts[0]
    assert dropped.connected
    assert dropped.outcome == "dropped"
    assert not dropped.failed  # a session that ended does not back off (§8.3)
    assert device.attempts[1].connected


# -- reconnecting -----------------------------------------------------------------------------------------


def test_device_backs_off_while_the_server_is_down_and_reconnects() -> None:
    scale = 0.05
    spec = _spec(DEVICE_OS_3_1_0)
    config = SimConfig(backoff_scale=scale, disconnect_timeout=1.0)

    async def main() -> VirtualDevice:
        server = MiniServer()
        port = await server.start()
        server.register(spec.device_id, registered_public_key(spec))
        device = VirtualDevice(spec, server.key.public_key(), config=config)
        device.start(HOST, port)
        replacement = MiniServer(server.key)
        try:
            await asyncio.wait_for(device.connected.wait(), 3)
            await server.close()  # stop listening and close the session: a server restart
            await wait_until(lambda: device.failure_count >= 7, timeout=3, what="seven refused connects")
            replacement.register(spec.device_id, registered_public_key(spec))
            await replacement.start(port)
            await wait_until(lambda: device.connect_count == 2, timeout=3, what="the reconnect")
        finally:
            await device.stop()
            await replacement.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        return device

    device = asyncio.run(main())
    attempts = device.attempts
    assert attempts[0].connected
    assert attempts[0].outcome == "closed_by_peer"
    failed = [a for a in attempts if a.failed]
    assert len(failed) >= 7
    assert {a.outcome for a in failed} == {"connect_failed"}
    assert all(a.step is None for a in failed)
    # The waits follow §8.3, scaled: 1 unit after failures 1-5, 2 units after the 6th.
    gaps = [later.started_at - earlier.started_at for earlier, later in itertools.pairwise(failed)]
    assert all(gap >= scale * 0.9 for gap in gaps[:5])
    assert gaps[5] >= 2 * scale * 0.9
    assert attempts[-1].connected
    assert attempts[-1].outcome == "stopped"
    assert device.state is DeviceState.STOPPED
