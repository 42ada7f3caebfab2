"""The store's firmware records, update jobs and device groups, and the firmware files on disk."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from cyan.cloud.models import FirmwareRecord, JobState, UpdateJob
from store_support import DEVICE_ID, OTHER_ID, T0, StoreFactory, run

FIRMWARE = FirmwareRecord(
    sha256="ab" * 32,
    size=2076,
    platform_id=6,
    module_function=5,
    module_index=1,
    module_version=6,
    product_id=4242,
    product_version=3,
    module_sha256="cd" * 32,
    crc32=0xFEDCBA98,
    filename="app.bin",
    uploaded_at=T0,
    uploaded_by="alice@example.com",
)


def test_firmware_records_are_kept_once(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            assert await store.updates.get_firmware(FIRMWARE.sha256) is None
            await store.updates.save_firmware(FIRMWARE)
            await store.updates.save_firmware(dataclasses.replace(FIRMWARE, filename="again.bin"))
            assert await store.updates.get_firmware(FIRMWARE.sha256.upper()) == FIRMWARE
            plain = dataclasses.replace(FIRMWARE, sha256="ef" * 32, product_id=None, product_version=None)
            await store.updates.save_firmware(plain)
            assert await store.updates.get_firmware("ef" * 32) == plain

    run(scenario())


def test_update_jobs(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            first = UpdateJob(DEVICE_ID.upper(), FIRMWARE.sha256, T0, rollout="r1", total_bytes=2076)
            assert await store.updates.add_job(first) == first.id == 1
            second = UpdateJob(OTHER_ID, FIRMWARE.sha256, T0, rollout="r1", created_by="alice", mode="fast")
            await store.updates.add_job(second)
            third = UpdateJob(DEVICE_ID, FIRMWARE.sha256, T0 + timedelta(seconds=1))
            await store.updates.add_job(third)
            stored = await store.updates.get_job(1)
            assert stored is not None
            assert stored.device_id == DEVICE_ID
            assert stored.state is JobState.QUEUED
            first.device_id = DEVICE_ID
            first.state = JobState.SUCCEEDED
            first.attempts, first.bytes_sent, first.verification, first.transfer_seconds = 2, 2076, "hash", 1.5
            first.started_at, first.finished_at, first.updated_at = T0, T0 + timedelta(seconds=9), T0
            first.reason, first.detail = "disconnected", "the first attempt was cut off"
            await store.updates.save_job(first)
            assert await store.updates.get_job(1) == first
            assert await store.updates.get_job(99) is None
            assert [j.id for j in await store.updates.list_jobs()] == [3, 2, 1]
            assert [j.id for j in await store.updates.list_jobs(device_id=DEVICE_ID.upper())] == [3, 1]
            assert [j.id for j in await store.updates.list_jobs(rollout="r1")] == [2, 1]
            assert [j.id for j in await store.updates.list_jobs(unfinished=True, limit=1)] == [3]
            with pytest.raises(ValueError, match="negative"):
                await store.updates.list_jobs(limit=-1)
            with pytest.raises(ValueError, match="no id"):
                await store.updates.save_job(UpdateJob(DEVICE_ID, FIRMWARE.sha256, T0))

    run(scenario())


def test_device_groups(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with make() as store:
            assert await store.updates.add_to_group("kitchen", [DEVICE_ID.upper(), OTHER_ID]) == 2
            assert await store.updates.add_to_group("kitchen", [DEVICE_ID]) == 0
            assert await store.updates.add_to_group("garage", [OTHER_ID]) == 1
            assert await store.updates.list_group("kitchen") == [DEVICE_ID, OTHER_ID]
            assert await store.updates.list_groups() == {"garage": 1, "kitchen": 2}
            assert await store.updates.remove_from_group("kitchen", [OTHER_ID, "00" * 12]) == 1
            assert await store.updates.list_group("kitchen") == [DEVICE_ID]
            assert await store.updates.list_group("nowhere") == []

    run(scenario())
