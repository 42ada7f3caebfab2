"""Fleets: many devices in one loop against one server, key directories, provisioning files."""

from __future__ import annotations

import asyncio
import csv
import json
import stat
import time
from pathlib import Path

import pytest
from sim_support import MiniServer, device_keys, server_key, wait_until

from cyan.keys import fingerprint, load_public_key
from cyan.protocol import DEVICE_OS_0_6_1, DEVICE_OS_3_1_0, Reason
from cyan.sim import (
    INDEX_FILE,
    AppSpec,
    Fault,
    Fleet,
    SimConfig,
    VirtualDeviceSpec,
    derive_device_id,
    generate_device_keys,
    load_or_create_keys,
    registered_public_key,
    write_provisioning,
)

HOST = "127.0.0.1"


def _specs(count: int, *, seed: str = "fleet") -> list[VirtualDeviceSpec]:
    # Ten keys shared round-robin: generating 200 would cost more than the whole test. The server
    # registers each id with its key, so sharing changes nothing on the wire.
    keys = device_keys(10)
    pairs = [(derive_device_id(i, seed=seed), keys[i % len(keys)]) for i in range(count)]
    return Fleet.make_specs(pairs, firmware=[DEVICE_OS_3_1_0, DEVICE_OS_0_6_1], app=AppSpec.minimal())


def test_a_fleet_of_200_connects_quickly_and_stops_cleanly() -> None:
    fleet = Fleet(_specs(200), server_key().public_key(), config=SimConfig(backoff_scale=0.05, disconnect_timeout=2.0))
    timings: dict[str, float] = {}

    async def main() -> MiniServer:
        server = MiniServer(server_key())
        port = await server.start()
        for device in fleet.devices:
            server.register(device.device_id, registered_public_key(device.spec))
        stop = asyncio.Event()
        began = time.monotonic()
        runner = asyncio.create_task(fleet.run(HOST, port, ramp=2000, stop=stop))
        assert await fleet.wait_connected(timeout=8)
        timings["connect"] = time.monotonic() - began
        await wait_until(lambda: len(server.sessions) == 200, what="200 server sessions")
        stats = fleet.stats()
        assert (stats.devices, stats.connected, stats.connecting, stats.waiting) == (200, 200, 0, 0)
        assert stats.failures == {}
        assert stats.connects == 200
        stop.set()
        await runner
        await server.close()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        live = [h for h in getattr(asyncio.get_running_loop(), "_scheduled", []) if not h.cancelled()]
        assert live == []
        return server

    server = asyncio.run(main())
    assert timings["connect"] < 8
    stats = fleet.stats()
    assert (stats.stopped, stats.connected, stats.attempts) == (200, 0, 200)
    assert len(server.records) == 200
    assert all(r.connected and r.reason is None and r.closed_by_device for r in server.records)
    # 3.1.0 devices say Goodbye before closing; 0.6.1 has no Goodbye (§6.10).
    assert sum(r.goodbye for r in server.records) == 100
    assert all(d.attempts[0].outcome == "stopped" for d in fleet.devices)


def test_the_ramp_limits_how_fast_devices_start() -> None:
    specs = _specs(20, seed="ramp")
    fleet = Fleet(specs, server_key().public_key(), config=SimConfig(disconnect_timeout=1.0))

    async def main() -> float:
        server = MiniServer(server_key())
        port = await server.start()
        for spec in specs:
            server.register(spec.device_id, registered_public_key(spec))
        began = time.monotonic()
        fleet.start(HOST, port, ramp=100)
        early = fleet.stats()
        assert early.waiting >= 18  # one started at once, the rest wait for the ramp
        assert early.stopped == 0
        assert await fleet.wait_connected(timeout=3)
        took = time.monotonic() - began
        await fleet.stop()
        await server.close()
        return took

    took = asyncio.run(main())
    assert took >= 0.18  # 20 devices at 100 per second
    assert fleet.stats().stopped == 20


def test_unknown_devices_are_counted_as_failures() -> None:
    specs = _specs(4, seed="unknown")
    fleet = Fleet(specs, server_key().public_key(), config=SimConfig(backoff_scale=0.02))

    async def main() -> MiniServer:
        server = MiniServer(server_key())
        port = await server.start()
        for spec in specs[:2]:
            server.register(spec.device_id, registered_public_key(spec))
        fleet.start(HOST, port)
        try:
            assert await fleet.wait_connected(2, timeout=3)
            await wait_until(lambda: fleet.stats().failures.get("closed_by_peer", 0) >= 4, what="rejections")
            stats = fleet.stats()
            assert stats.connected == 2
            assert stats.connecting + stats.waiting == 2
        finally:
            await fleet.stop()
            await server.close()
        return server

    server = asyncio.run(main())
    rejected = {r.device_id for r in server.records if r.reason is Reason.UNKNOWN_DEVICE}
    assert rejected == {specs[2].device_id, specs[3].device_id}
    for device in fleet.devices[2:]:
        assert device.last_failure is Reason.CLOSED_BY_PEER
        assert device.failure_count >= 2
        assert not any(a.connected for a in device.attempts)


def test_key_directory_is_created_then_reused_and_extended(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    first = load_or_create_keys(keys_dir, 3, seed="dir")
    assert [device_id for device_id, _ in first] == [derive_device_id(i, seed="dir") for i in range(3)]
    for device_id, _ in first:
        mode = stat.S_IMODE((keys_dir / f"{device_id}.pem").stat().st_mode)
        assert mode == 0o600
    index = json.loads((keys_dir / INDEX_FILE).read_text())
    assert [entry["fingerprint"] for entry in index["devices"]] == [fingerprint(k) for _, k in first]

    again = load_or_create_keys(keys_dir, 5, seed="dir")
    assert [fingerprint(k) for _, k in again[:3]] == [fingerprint(k) for _, k in first]
    assert len({fingerprint(k) for _, k in again}) == 5
    fewer = load_or_create_keys(keys_dir, 2, seed="dir")
    assert [fingerprint(k) for _, k in fewer] == [fingerprint(k) for _, k in first[:2]]
    assert len(json.loads((keys_dir / INDEX_FILE).read_text())["devices"]) == 5

    with pytest.raises(ValueError, match="seed"):
        load_or_create_keys(keys_dir, 1, seed="other")

    fleet = Fleet.load_or_create(keys_dir, 4, server_key().public_key(), seed="dir", fault=Fault.NO_HELLO)
    assert [d.device_id for d in fleet.devices] == [device_id for device_id, _ in again[:4]]
    assert all(d.spec.fault is Fault.NO_HELLO for d in fleet.devices)
    assert fleet[again[1][0]].spec.name == "sim-1"


def test_an_in_memory_fleet_mixes_firmwares() -> None:
    fleet = Fleet.create(3, server_key().public_key(), prefix="c0ffee", firmware=[DEVICE_OS_0_6_1, DEVICE_OS_3_1_0])
    assert [d.device_id for d in fleet.devices] == [derive_device_id(i, prefix="c0ffee") for i in range(3)]
    assert [d.spec.firmware for d in fleet.devices] == [DEVICE_OS_0_6_1, DEVICE_OS_3_1_0, DEVICE_OS_0_6_1]
    assert len(fleet) == 3
    assert fleet.stats().stopped == 3


def test_keys_can_be_generated_in_worker_processes() -> None:
    keys = generate_device_keys(3, workers=2)
    assert len({fingerprint(k) for k in keys}) == 3
    assert all(k.key_size == 1024 for k in keys)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_provisioning_lists_ids_keys_and_fingerprints(tmp_path: Path, suffix: str) -> None:
    keys = device_keys(3)
    specs = [
        VirtualDeviceSpec(derive_device_id(0, seed="prov"), keys[0], name="plain"),
        VirtualDeviceSpec(derive_device_id(1, seed="prov"), keys[1], fault=Fault.AMNESIA),
        VirtualDeviceSpec(derive_device_id(2, seed="prov"), keys[2], fault=Fault.CORRUPT_KEY),
    ]
    fleet = Fleet(specs, server_key().public_key())
    path = tmp_path / f"fleet{suffix}"
    assert write_provisioning(fleet, path) == 3
    if suffix == ".csv":
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = json.loads(path.read_text())
    assert [row["device_id"] for row in rows] == [s.device_id for s in specs]
    assert rows[0]["name"] == "plain"
    for row, spec in zip(rows, specs, strict=True):
        key = load_public_key(row["public_key_pem"].encode())
        assert fingerprint(key) == row["fingerprint"] == fingerprint(registered_public_key(spec))
    # The amnesiac device was registered with the key it lost; the corrupt one with what it presents.
    assert rows[1]["fingerprint"] == fingerprint(keys[1])
    assert rows[2]["fingerprint"] != fingerprint(keys[2])
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        write_provisioning(specs, tmp_path / "fleet.txt")
