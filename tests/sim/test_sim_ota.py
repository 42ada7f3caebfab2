"""Virtual devices receiving updates over real loopback sockets: they check each chunk's CRC and the image,
apply it, reset and come back with the new version; OTA faults drop chunks or the connection
(protocol.md §7, OTA README)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import pytest
from sim_support import MiniServer, device_keys, wait_until

from cyan.protocol import DEVICE_OS_0_6_1, DEVICE_OS_3_1_0, Firmware, HelloFlag, build_module, parse_module
from cyan.protocol.binary import ModuleFunction
from cyan.sim import (
    Fault,
    SimConfig,
    VirtualDevice,
    VirtualDeviceSpec,
    check_image,
    derive_device_id,
    describe_modules,
    factory_image,
    registered_public_key,
)

FAST = SimConfig(backoff_scale=0.02, disconnect_timeout=1.0)
HOST = "127.0.0.1"
FIRMWARES = [pytest.param(DEVICE_OS_3_1_0, id="3.1.0"), pytest.param(DEVICE_OS_0_6_1, id="0.6.1")]


def _image(firmware: Firmware, *, size: int = 20_000, version: int = 2, platform: int | None = None) -> bytes:
    body = hashlib.sha256(b"%d" % version).digest() * (size // 32)
    return build_module(
        body,
        platform_id=firmware.platform if platform is None else platform,
        product_id=4242,
        product_version=version,
    )


def _spec(firmware: Firmware, fault: Fault | None = None, **extra: float) -> VirtualDeviceSpec:
    return VirtualDeviceSpec(
        device_id=derive_device_id(0, seed="test-sim-ota"),
        private_key=device_keys(1)[0],
        firmware=firmware,
        fault=fault,
        name="vdev",
        **extra,  # type: ignore[arg-type]
    )


async def _started(spec: VirtualDeviceSpec) -> tuple[MiniServer, VirtualDevice]:
    server = MiniServer()
    port = await server.start()
    server.register(spec.device_id, registered_public_key(spec))
    device = VirtualDevice(spec, server.key.public_key(), config=FAST)
    device.start(HOST, port)
    await asyncio.wait_for(device.connected.wait(), 5)
    await wait_until(lambda: spec.device_id in server.sessions, what="the session")
    return server, device


async def _reconnected(server: MiniServer, device: VirtualDevice, sessions: int) -> None:
    await wait_until(lambda: device.connect_count >= sessions and device.connected.is_set(), 5, "the reconnect")
    await wait_until(lambda: device.device_id in server.sessions, what="the new session")


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize("fast", [None, True, False], ids=["auto", "fast", "non-fast"])
def test_an_update_is_applied_and_the_device_returns_with_it(firmware: Firmware, fast: bool | None) -> None:
    async def scenario() -> None:
        spec = _spec(firmware)
        server, device = await _started(spec)
        try:
            before = device.image
            image = _image(firmware)
            outcome = await server.update(spec.device_id, image, fast=fast)
            assert outcome.complete, outcome
            await _reconnected(server, device, 2)
            assert device.updates_applied == 1
            assert device.image == image != before
            hello = server.sessions[spec.device_id].record.hello
            assert hello is not None
            # The new application's PRODUCT_ID/PRODUCT_VERSION in the Hello (§5), and "OTA succeeded" (§7.2).
            assert (hello.product_id, hello.product_version) == (4242, 2)
            assert hello.flags & HelloFlag.OTA_SUCCEEDED
            last = device.last_attempt
            assert last is not None
            assert last.outcome == "reset_update"
        finally:
            await device.stop()
            await server.close()

    asyncio.run(scenario())


def test_the_system_describe_reports_the_running_image() -> None:
    """The user part's SHA-256 ("u", §6.7) is how the server tells which image a device runs."""

    async def scenario() -> None:
        spec = _spec(DEVICE_OS_3_1_0)
        server, device = await _started(spec)
        try:
            first = server.sessions[spec.device_id].record
            await wait_until(lambda: bool(first.describes), what="the system describe")
            modules = first.describes[-1]["m"]
            assert isinstance(modules, list)
            factory = parse_module(factory_image(DEVICE_OS_3_1_0))
            assert modules[-1]["u"] == factory.module_sha256
            image = _image(DEVICE_OS_3_1_0, version=7)
            assert (await server.update(spec.device_id, image)).complete
            await _reconnected(server, device, 2)
            record = server.sessions[spec.device_id].record
            await wait_until(lambda: bool(record.describes), what="the new system describe")
            modules = record.describes[-1]["m"]
            assert isinstance(modules, list)
            system, user = modules
            assert user == {
                "s": 131072,
                "l": "m",
                "vc": 30,
                "vv": 30,
                "u": parse_module(image).module_sha256,
                "f": "u",
                "n": "1",
                "v": 6,
                "d": [{"f": "s", "n": "1", "v": 3103, "d": []}],
            }
            assert (system["f"], system["v"]) == ("s", 3103)
        finally:
            await device.stop()
            await server.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("firmware", FIRMWARES)
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "non-fast"])
def test_dropped_chunks_are_sent_again(firmware: Firmware, fast: bool) -> None:
    async def scenario() -> None:
        spec = _spec(firmware, Fault.OTA_DROP_CHUNKS, ota_drop_every=7)
        server, device = await _started(spec)
        try:
            image = _image(firmware)
            outcome = await server.update(spec.device_id, image, fast=fast)
            assert outcome.complete, outcome
            assert outcome.chunks_resent >= len(image) // 512 // 7
            await _reconnected(server, device, 2)
            assert device.image == image
        finally:
            await device.stop()
            await server.close()

    asyncio.run(scenario())


def test_a_disconnect_mid_update_leaves_the_old_image_and_the_retry_works() -> None:
    async def scenario() -> None:
        spec = _spec(DEVICE_OS_3_1_0, Fault.OTA_DISCONNECT, ota_disconnect_at=0.4)
        server, device = await _started(spec)
        try:
            before = device.image
            image = _image(DEVICE_OS_3_1_0)
            first = await server.update(spec.device_id, image, fast=False)
            assert first.reason == "disconnected"
            assert 0.4 * len(image) <= first.bytes_delivered < len(image)
            await _reconnected(server, device, 2)
            assert device.image == before
            assert device.updates_applied == 0
            second = await server.update(spec.device_id, image)
            assert second.complete
            await _reconnected(server, device, 3)
            assert device.image == image
        finally:
            await device.stop()
            await server.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("make", "result"),
    [
        (lambda: _image(DEVICE_OS_3_1_0, platform=8), -1360),
        (lambda: _image(DEVICE_OS_3_1_0)[:-1] + b"\x00", -1330),
        (lambda: b"not a module at all" * 100, -1330),
        (
            lambda: build_module(
                b"x" * 100, platform_id=6, function=ModuleFunction.SYSTEM_PART, start_address=0x8020000
            ),
            -1320,
        ),
    ],
    ids=["platform", "crc", "garbage", "system-part"],
)
def test_the_device_refuses_an_invalid_image(make: object, result: int) -> None:
    """What a server should never send, sent anyway: the device validates, refuses and keeps its image."""

    async def scenario() -> None:
        spec = _spec(DEVICE_OS_3_1_0)
        server, device = await _started(spec)
        try:
            before = device.image
            outcome = await server.update(spec.device_id, make())  # type: ignore[operator]
            assert outcome.reason == "rejected"
            assert outcome.result == {"r": result}
            await _reconnected(server, device, 2)
            assert device.image == before
            assert device.update_failures == {"update_error": 1}
        finally:
            await device.stop()
            await server.close()

    asyncio.run(scenario())


def test_images_and_modules() -> None:
    assert describe_modules(dataclasses.replace(DEVICE_OS_3_1_0, platform=3), None) == []
    assert len(describe_modules(DEVICE_OS_3_1_0, None)) == 1
    check = check_image(DEVICE_OS_3_1_0)
    assert check(factory_image(DEVICE_OS_3_1_0)).error == 0
    with pytest.raises(ValueError, match="ota_drop_every"):
        _spec(DEVICE_OS_3_1_0, ota_drop_every=0)
