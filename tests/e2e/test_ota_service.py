"""Update jobs in `cyan serve`'s service over loopback, with simulated devices of both firmware generations:
uploads, refusals, single updates, a rollout with faults, retries, and success judged by what each
device reports after its reset (protocol.md §6.7, §7)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cyan.app import Actor
from cyan.cloud.errors import InvalidInputError
from cyan.cloud.models import DeviceRecord, FirmwareRecord, JobState, UpdateJob
from cyan.cloud.ota import (
    FirmwareRejectedError,
    UpdateConfig,
    UpdateConflictError,
    UpdateNotFoundError,
    firmware_record,
    judge,
)
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    DeviceConfig,
    Firmware,
    Hello,
    HelloFlag,
    ServerConfig,
    parse_module,
)
from cyan.protocol.binary import ModuleFunction, build_module
from cyan.service import Service
from cyan.sim import Fault, Fleet, SimConfig, VirtualDeviceSpec, registered_public_key
from cyan.testing import fixed_device_key
from serve_support import jobs_finished, run_with_service

FAST = ServerConfig(identity_timeout=2.0, hello_timeout=2.0, describe_delay=0.2, request_timeout=2.0)
SIM = SimConfig(backoff_scale=0.05)
UPDATES = UpdateConfig(start_delay=0.05, retry_delay=0.1, reconnect_timeout=10.0, describe_timeout=4.0)


def _id(n: int) -> str:
    return f"{n:024x}"


#: Built against Device OS 0.6.1's system part (module version 105): it runs on 0.6.1 and on 3.1.0.
DEPENDS_ON_0_6_1 = ((ModuleFunction.SYSTEM_PART, 1, 105),)


def _image(platform: int = 6, *, size: int = 12_000, version: int = 2, product: int | None = 4242) -> bytes:
    body = hashlib.sha256(b"app %d" % version).digest() * (size // 32)
    return build_module(
        body,
        platform_id=platform,
        product_id=0xFFFF if product is None else product,
        product_version=0xFFFF if product is None else version,
        dependencies=DEPENDS_ON_0_6_1,
    )


async def _register(service: Service, spec: VirtualDeviceSpec, owner: str = "alice@example.com") -> None:
    der = public_key_der(registered_public_key(spec))
    record = DeviceRecord(
        id=spec.device_id,
        owner=owner,
        public_key_der=der,
        key_fingerprint=fingerprint(der),
        created_at=datetime.now(UTC),
    )
    await service.store.devices.add(record)


async def _create(
    service: Service,
    devices: list[str],
    firmware: FirmwareRecord,
    *,
    mode: str = "auto",
    concurrency: int | None = None,
    max_attempts: int | None = None,
) -> list[UpdateJob]:
    """Start updates as the operator would (`cyan.app.updates`): the devices checked, the jobs stored and audited."""
    updates = service.app.updates
    assert updates is not None
    operator = Actor.operator()
    records = await updates.targets(operator, devices=devices)
    return await updates.flash(
        operator, records, firmware, mode=mode, concurrency=concurrency, max_attempts=max_attempts
    )


def _spec(n: int, firmware: Firmware = DEVICE_OS_3_1_0, fault: Fault | None = None) -> VirtualDeviceSpec:
    return VirtualDeviceSpec(_id(n), fixed_device_key(n % 4), firmware=firmware, fault=fault, name=f"sim-{n}")


def _run(tmp_path: Path, scenario: Callable[[Service], Awaitable[None]], *, processes: int = 0) -> None:
    """`processes`: serve the devices from that many device processes (`cyan serve --device-processes`)."""

    def prepare(service: Service) -> None:
        service.updates.config = UPDATES

    run_with_service(tmp_path / "data", scenario, prepare=prepare, device_processes=processes, protocol=FAST)


async def _fleet(
    service: Service, specs: list[VirtualDeviceSpec], config: SimConfig = SIM, *, register: bool = True
) -> Fleet:
    for spec in specs if register else []:
        await _register(service, spec)
    fleet = Fleet(specs, service.keys.private_key.public_key(), config=config)
    fleet.start("127.0.0.1", service.device_server.port)
    assert await fleet.wait_connected(timeout=15)
    return fleet


@pytest.mark.parametrize("processes", [0, 2], ids=["one process", "device processes"])
def test_one_update_per_personality(tmp_path: Path, processes: int) -> None:
    async def scenario(service: Service) -> None:
        specs = [_spec(1), _spec(2, DEVICE_OS_0_6_1)]
        fleet = await _fleet(service, specs)
        try:
            image = _image()
            firmware = await service.updates.library.add(image, "app.bin", "alice@example.com")
            assert (firmware.platform_id, firmware.product_version, firmware.size) == (6, 2, len(image))
            jobs = []
            for spec in specs:
                jobs += await _create(service, [spec.device_id], firmware)
            assert [job.rollout for job in jobs] == [None, None]
            for job in await jobs_finished(service, jobs):
                assert job.state is JobState.SUCCEEDED, job
                assert job.verification == "hash"
                assert (job.attempts, job.bytes_sent, job.total_bytes) == (1, len(image), len(image))
                assert job.transfer_seconds is not None
            for spec in specs:
                device = fleet[spec.device_id]
                assert device.image == image
                record = (await service.app.devices.get(Actor.operator(), spec.device_id)).record
                assert record.product_version == 2  # the Hello of the new application (§5)
            stored = await service.store.updates.list_jobs(device_id=specs[0].device_id)
            assert [job.state for job in stored] == [JobState.SUCCEEDED]
        finally:
            await fleet.stop()

    _run(tmp_path, scenario, processes=processes)


@pytest.mark.parametrize("processes", [0, 2], ids=["one process", "device processes"])
def test_a_rollout_with_dropped_chunks_and_a_disconnect(tmp_path: Path, processes: int) -> None:
    """20 devices of both generations, some losing chunks, one losing its connection mid-update: every one
    ends up running the image; the cut-off one needed a second attempt."""

    async def scenario(service: Service) -> None:
        specs = []
        for n in range(20):
            fault = Fault.OTA_DROP_CHUNKS if n % 4 == 1 else Fault.OTA_DISCONNECT if n == 6 else None
            specs.append(_spec(n + 10, DEVICE_OS_0_6_1 if n % 5 == 0 else DEVICE_OS_3_1_0, fault))
        specs = [dataclasses.replace(s, ota_drop_every=5) for s in specs]
        fleet = await _fleet(service, specs)
        try:
            image = _image(size=40_000, version=3)
            firmware = await service.updates.library.add(image, "app-v3.bin", "alice@example.com")
            jobs = await _create(service, [s.device_id for s in specs], firmware, concurrency=8)
            rollout = jobs[0].rollout
            assert rollout is not None
            assert {job.rollout for job in jobs} == {rollout}
            finished = await jobs_finished(service, jobs, timeout=60)
            by_device = {job.device_id: job for job in finished}
            assert all(job.state is JobState.SUCCEEDED for job in finished), [
                (j.device_id, j.state, j.reason, j.detail) for j in finished if j.state is not JobState.SUCCEEDED
            ]
            assert by_device[_id(16)].attempts == 2  # the disconnect
            assert by_device[_id(16)].reason is None
            assert {job.attempts for job in finished if job.device_id != _id(16)} == {1}
            assert all(fleet[s.device_id].image == image for s in specs)
            assert len(await service.updates.list(rollout=rollout)) == 20
        finally:
            await fleet.stop()

    _run(tmp_path, scenario, processes=processes)


def test_refusals_never_reach_a_device(tmp_path: Path) -> None:
    """A binary for another platform, a corrupt or truncated one, or one larger than the device takes is
    refused with a clear error, and nothing is sent."""

    async def scenario(service: Service) -> None:
        small = Firmware(version=(3, 1, 0), module_version=3103, max_binary_size=8192)
        specs = [_spec(1), _spec(2, small), _spec(3, DEVICE_OS_0_6_1)]
        fleet = await _fleet(service, specs)
        library = service.updates.library
        try:
            good = _image()
            corrupt = bytearray(good)
            corrupt[500] ^= 0xFF
            for data, reason, words in (
                (bytes(corrupt), "crc_mismatch", "corrupt: the CRC-32"),
                (good[:-2000], "truncated", "truncated"),
                (b"\x7fELF" + bytes(5000), "not_a_module", "not a firmware binary"),
            ):
                with pytest.raises(FirmwareRejectedError, match=words) as caught:
                    await library.add(data, "bad.bin", None)
                assert caught.value.reason == reason
            p1 = await library.add(_image(platform=8), "p1.bin", None)
            with pytest.raises(FirmwareRejectedError, match=r"built for P1 \(platform 8\), the device is a Photon"):
                await _create(service, [_id(1)], p1)
            firmware = await library.add(good, "app.bin", None)
            # The 3.x Hello says how much the device takes (§5).
            with pytest.raises(FirmwareRejectedError, match="the device takes at most 8192") as too_large:
                await _create(service, [_id(2)], firmware)
            assert too_large.value.reason == "too_large"
            with pytest.raises(InvalidInputError, match="mode"):
                await _create(service, [_id(1)], firmware, mode="warp")
            # Built against 3.1.0 (system part 3103) for a device running 0.6.1 (105): it would boot into
            # safe mode (field-failures C15).
            newer = await library.add(build_module(b"x" * 4000, platform_id=6), "needs-3.1.bin", None)
            while not (
                (await service.app.devices.get(Actor.operator(), _id(3))).record
            ).functions:  # it has described itself
                await asyncio.sleep(0.05)
            with pytest.raises(
                FirmwareRejectedError, match=r"needs system part 1 version 3103 or later, the device"
            ) as dep:
                await _create(service, [_id(3)], newer)
            assert dep.value.reason == "dependency"
            assert await service.store.updates.list_jobs() == []
            await asyncio.sleep(0.3)
            for device in fleet.devices:
                assert device.updates_applied == 0
                assert device.update_failures == {}
                assert device.connect_count == 1
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_an_offline_device_is_updated_when_it_connects(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        spec = _spec(1)
        await _register(service, spec)
        firmware = await service.updates.library.add(_image(), "app.bin", None)
        (job,) = await _create(service, [spec.device_id], firmware)
        await asyncio.sleep(0.2)
        assert (await service.updates.get(job.id or 0)).state is JobState.QUEUED
        fleet = await _fleet(service, [spec], register=False)
        try:
            (done,) = await jobs_finished(service, [job])
            assert done.state is JobState.SUCCEEDED
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_what_is_learned_when_the_device_connects_is_checked_before_sending(tmp_path: Path) -> None:
    """An offline device of unknown platform and modules: the job waits; once the device is connected and
    has described itself, an image it cannot run fails the job without a byte sent."""

    async def scenario(service: Service) -> None:
        spec = _spec(1, DEVICE_OS_0_6_1)
        await _register(service, spec)
        needs_3_1 = await service.updates.library.add(build_module(b"x" * 4000, platform_id=6), "app.bin", None)
        (job,) = await _create(service, [spec.device_id], needs_3_1)
        fleet = await _fleet(service, [spec], register=False)
        try:
            (done,) = await jobs_finished(service, [job])
            assert (done.state, done.reason, done.attempts) == (JobState.FAILED, "dependency", 0)
            assert done.detail is not None
            assert done.detail.startswith("nothing was sent: unmet dependency")
            device = fleet[spec.device_id]
            assert (device.updates_applied, device.update_failures, device.connect_count) == (0, {}, 1)
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_a_device_that_updates_only_by_ota_protocol_v3_is_updated_by_it(tmp_path: Path) -> None:
    """A device whose Hello says OTA protocol v3 (flag 0x80; Gen 3 and P2 from Device OS 3.0) drops the legacy
    UpdateBegin: it is sent UpdateStart, windowed chunks and UpdateFinish instead, one connected at the
    request and one queued while away, and both run the image. Over TCP a chunk is what a frame holds to the
    device, 752 bytes (a Gen 3 device's UDP records hold 1,024: tests/server/test_udp_ota_v3.py)."""

    async def scenario(service: Service) -> None:
        gen3 = Firmware(version=(3, 1, 0), module_version=3103, ota_protocol_v3=True)
        connected, away = _spec(1, gen3), _spec(2, gen3)
        await _register(service, away)
        fleet = await _fleet(service, [connected])
        try:
            image = _image(size=30_000, version=5)
            firmware = await service.updates.library.add(image, "app.bin", None)
            jobs = await _create(service, [connected.device_id], firmware)
            jobs += await _create(service, [away.device_id], firmware)
            later = await _fleet(service, [away], register=False)
            try:
                for done in await jobs_finished(service, jobs):
                    assert (done.state, done.reason, done.attempts) == (JobState.SUCCEEDED, None, 1), done
                    assert done.bytes_sent == len(image)
                for device in [*fleet.devices, *later.devices]:
                    assert device.image == image
                    assert (device.updates_applied, device.update_failures) == (1, {})
            finally:
                await later.stop()
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_an_image_the_device_rejects_is_not_sent_again(tmp_path: Path) -> None:
    """The simulated Photon runs applications only: a system part passes the server's checks, is sent, and
    the device's validation rejects it (`{"r":-1320}`, §7.1). Sending it again would not help."""

    async def scenario(service: Service) -> None:
        fleet = await _fleet(service, [_spec(1)])
        try:
            system_part = build_module(
                b"s" * 5000, platform_id=6, function=ModuleFunction.SYSTEM_PART, start_address=0x08020000
            )
            firmware = await service.updates.library.add(system_part, "system-part1.bin", None)
            (job,) = await _create(service, [_id(1)], firmware)
            (done,) = await jobs_finished(service, [job])
            assert (done.state, done.reason, done.attempts) == (JobState.FAILED, "rejected", 1)
            assert done.detail is not None
            assert "-1320" in done.detail
            assert fleet[_id(1)].update_failures == {"update_error": 1}
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_a_device_that_does_not_come_back_fails_its_job(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        service.updates.config = dataclasses.replace(UPDATES, reconnect_timeout=1.0)
        slow_reboot = dataclasses.replace(SIM, reboot_delay=5.0)
        fleet = await _fleet(service, [_spec(1)], slow_reboot)
        try:
            firmware = await service.updates.library.add(_image(), "app.bin", None)
            (job,) = await _create(service, [_id(1)], firmware, max_attempts=1)
            (done,) = await jobs_finished(service, [job])
            assert (done.state, done.reason) == (JobState.FAILED, "no_reconnect")
            assert fleet[_id(1)].updates_applied == 1  # it did apply it; it just did not say so in time
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_a_device_that_refuses_updates_fails_after_its_attempts(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        refusing = dataclasses.replace(SIM, device_config=DeviceConfig(updates_enabled=False))
        fleet = await _fleet(service, [_spec(1)], refusing)
        try:
            firmware = await service.updates.library.add(_image(), "app.bin", None)
            (job,) = await _create(service, [_id(1)], firmware, max_attempts=2)
            (done,) = await jobs_finished(service, [job])
            assert done.state is JobState.FAILED
            assert done.reason == "refused"
            assert done.attempts == 2
            assert done.detail is not None
            assert "after 2 attempts" in done.detail
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_a_new_update_supersedes_a_waiting_one_and_jobs_resume(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        spec = _spec(1)
        await _register(service, spec)
        library = service.updates.library
        first = await library.add(_image(version=2), "v2.bin", None)
        second = await library.add(_image(version=3), "v3.bin", None)
        (old,) = await _create(service, [spec.device_id], first)
        (new,) = await _create(service, [spec.device_id], second)
        replaced = await service.updates.get(old.id or 0)
        assert (replaced.state, replaced.reason) == (JobState.FAILED, "superseded")
        # A restart finds the queued job and resumes it; a transfer it cut off is queued again.
        await service.updates.stop()
        stored = await service.store.updates.get_job(new.id or 0)
        assert stored is not None
        stored.state = JobState.SENDING
        await service.store.updates.save_job(stored)
        await service.updates.start()
        assert (await service.updates.get(new.id or 0)).state is JobState.QUEUED
        fleet = await _fleet(service, [spec], register=False)
        try:
            (done,) = await jobs_finished(service, [new])
            assert done.state is JobState.SUCCEEDED
            assert fleet[spec.device_id].image == _image(version=3)
            with pytest.raises(UpdateNotFoundError):
                await service.updates.get(999)
            with pytest.raises(UpdateNotFoundError):
                await library.get("00" * 32)
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_a_device_being_sent_an_update_takes_no_other(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        fleet = await _fleet(service, [_spec(1)])
        try:
            firmware = await service.updates.library.add(_image(size=200_000), "big.bin", None)
            (job,) = await _create(service, [_id(1)], firmware, mode="non_fast")

            async def sending() -> None:
                while (await service.updates.get(job.id or 0)).state is not JobState.SENDING:
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(sending(), 10)
            with pytest.raises(UpdateConflictError, match="right now"):
                await _create(service, [_id(1)], firmware)
            (done,) = await jobs_finished(service, [job])
            assert done.state is JobState.SUCCEEDED
        finally:
            await fleet.stop()

    _run(tmp_path, scenario)


def test_judging_what_a_device_runs() -> None:
    """Success is the device's own report: the user part's hash, a module's version, or the product
    version of its Hello; with none of them, nothing can be told."""
    image = _image(version=5)
    info = parse_module(image)
    record = _record_of(image)
    hello = Hello(4242, 5, HelloFlag(0x36), 6)
    runs = judge(record, {"m": [{"f": "u", "u": info.module_sha256.upper(), "n": "1", "v": 6}]}, None)
    assert (runs.runs_it, runs.how) == (True, "hash")
    other = judge(record, {"m": [{"f": "u", "u": "00" * 32}]}, hello)
    assert (other.runs_it, other.how) == (False, "hash")
    assert judge(record, {"m": []}, hello).how == "product_version"
    assert judge(record, None, Hello(4242, 4, HelloFlag(0), 6)).runs_it is False
    plain = dataclasses.replace(record, product_version=None)
    assert (judge(plain, {"m": "junk"}, hello).runs_it, judge(plain, None, hello).how) == (None, "unverified")
    system = dataclasses.replace(record, module_function=int(ModuleFunction.SYSTEM_PART), module_version=3103)
    assert judge(system, {"m": [{"f": "s", "n": "1", "v": 3103}]}, None).how == "module_version"
    assert judge(system, {"m": [{"f": "s", "n": "1", "v": 3000}]}, None).runs_it is False


def _record_of(image: bytes) -> FirmwareRecord:
    return firmware_record(
        parse_module(image), sha256=hashlib.sha256(image).hexdigest(), filename="x.bin", uploaded_at=datetime.now(UTC)
    )
