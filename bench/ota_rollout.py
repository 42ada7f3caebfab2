"""A firmware rollout: one image to many simulated devices at once, through `cyan serve`'s API.

    .venv/bin/python bench/ota_rollout.py [--devices 100] [--size 1048576] [--legacy 20] [--droppers 10]

One `cyan serve` subprocess; in this process, --devices virtual Photons (3.1.0, and --legacy of them 0.6.1),
each advertising a 2 MiB OTA area (a real Photon's is 256 KiB, §10: the image size here is the issue's
1 MB, for the transport's sake). --droppers of them damage every 100th chunk once (OTA_DROP_CHUNKS) and
one loses its connection half-way through its first update (OTA_DISCONNECT). The image (a user part with
a valid module header) is uploaded with `POST /v1/firmware` and rolled out to every device with
`POST /v1/updates` (all at once); the jobs are followed until each has succeeded or failed.

Reported: the total time from the rollout request to the last job's end, each device's transfer rate
(image bytes over the successful transfer's seconds: fast OTA on 3.1.0, non-fast on 0.6.1), the outcomes,
attempts and how success was established, and the server's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import time
from dataclasses import replace

import httpx
from _common import Server, cpu_seconds, cyan_serve, device_id, register, table, user_with_token

from cyan.protocol import DEVICE_OS_0_6_1, DEVICE_OS_3_1_0
from cyan.protocol.binary import ModuleFunction, build_module
from cyan.sim import AppSpec, Fault, Fleet, SimConfig, VirtualDeviceSpec, ensure_file_limit, generate_device_keys

USER, PASSWORD = "bench@example.com", "bench password"
AREA = 2 * 1024 * 1024


def image_of(size: int) -> bytes:
    """A Photon user part of `size` bytes in all, with PRODUCT_VERSION(2)."""
    body_size = size - 24 - 40 - 4
    seed = hashlib.sha256(b"bench image").digest()
    body = (seed * (body_size // 32 + 1))[:body_size]
    # Built against 0.6.1's system part (module version 105): it runs on both generations of the fleet.
    return build_module(
        body,
        platform_id=6,
        product_id=4242,
        product_version=2,
        dependencies=((ModuleFunction.SYSTEM_PART, 1, 105),),
    )


def specs(count: int, legacy: int, droppers: int) -> list[VirtualDeviceSpec]:
    keys = generate_device_keys(count)
    new = replace(DEVICE_OS_3_1_0, max_binary_size=AREA)
    old = replace(DEVICE_OS_0_6_1, max_binary_size=AREA)
    out = []
    for n, key in enumerate(keys):
        fault = Fault.OTA_DROP_CHUNKS if 0 < n <= droppers else Fault.OTA_DISCONNECT if n == count - 1 else None
        out.append(
            VirtualDeviceSpec(
                device_id(n),
                key,
                firmware=old if n % max(1, count // max(1, legacy)) == 0 and legacy else new,
                app=AppSpec.minimal(),
                fault=fault,
                name=f"ota-{n}",
                ota_drop_every=100,
            )
        )
    return out


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def rollout(server: Server, fleet: Fleet, token: str, image: bytes) -> list[tuple[str, str, str]]:
    fleet.start("127.0.0.1", server.device_port, ramp=200)
    if not await fleet.wait_connected(timeout=300):
        raise RuntimeError(f"not all devices connected: {fleet.stats()}")
    await asyncio.sleep(2.0)  # every device's start-up burst is over
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.api_port}", headers=headers, timeout=60) as api:
        uploaded = await api.post("/v1/firmware", files={"file": ("bench.bin", image)})
        uploaded.raise_for_status()
        sha = uploaded.json()["sha256"]
        cpu_before = cpu_seconds(server.pid)
        started = time.monotonic()
        response = await api.post("/v1/updates", json={"firmware": sha, "all": True})
        response.raise_for_status()
        rollout_id = response.json()["rollout"]
        while True:
            jobs = (await api.get("/v1/updates", params={"rollout": rollout_id, "limit": 100000})).json()
            if all(job["state"] in ("succeeded", "failed") for job in jobs):
                break
            await asyncio.sleep(0.25)
        total = time.monotonic() - started
        cpu = cpu_seconds(server.pid) - cpu_before
    await asyncio.sleep(1.0)
    kinds = {d.device_id: ("0.6.1 non-fast" if d.spec.firmware.legacy else "3.1.0 fast") for d in fleet.devices}
    rates: dict[str, list[float]] = {}
    for job in jobs:
        if job["state"] == "succeeded" and job["transfer_seconds"]:
            rates.setdefault(kinds[job["device_id"]], []).append(job["total_bytes"] / job["transfer_seconds"])
    states: dict[str, int] = {}
    for job in jobs:
        key = job["state"] if job["state"] == "succeeded" else f"{job['state']} ({job['reason']})"
        states[key] = states.get(key, 0) + 1
    attempts: dict[int, int] = {}
    for job in jobs:
        attempts[job["attempts"]] = attempts.get(job["attempts"], 0) + 1
    verified = {job["verification"] for job in jobs if job["verification"]}
    running = sum(d.image == image for d in fleet.devices)
    mb = len(image) * len(jobs) / 1e6
    rows = [
        ("devices, image", f"{len(jobs)} x {len(image):,} bytes", ""),
        ("total time, request to last job's end", f"{total:.1f} s", "SP gives one transfer 600 s"),
        ("aggregate", f"{mb / total:.2f} MB/s", ""),
    ]
    for kind, values in sorted(rates.items()):
        rows.append(
            (
                f"per-device rate, {kind} (n={len(values)})",
                f"p50 {statistics.median(values) / 1e3:.1f} / min {min(values) / 1e3:.1f} kB/s",
                f"p10 {percentile(values, 0.1) / 1e3:.1f}, max {max(values) / 1e3:.1f} kB/s",
            )
        )
    rows += [
        ("outcomes", ", ".join(f"{n} {s}" for s, n in sorted(states.items())), "all succeeded"),
        ("attempts per device", ", ".join(f"{n} x {a}" for a, n in sorted(attempts.items())), "the cut-off one: 2"),
        ("success established by", ", ".join(sorted(verified)), "the Describe's user-part SHA-256"),
        ("devices running the image (simulator's view)", f"{running}/{len(fleet.devices)}", ""),
        ("server CPU during the rollout", f"{cpu:.1f} s ({cpu / mb:.2f} s per MB sent)", ""),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--size", type=int, default=1024 * 1024, help="image bytes")
    parser.add_argument("--legacy", type=int, default=20, help="how many run 0.6.1 (non-fast OTA)")
    parser.add_argument("--droppers", type=int, default=10, help="how many damage every 100th chunk once")
    args = parser.parse_args()
    ensure_file_limit(args.devices * 2 + 100)
    image = image_of(args.size)
    with cyan_serve() as server:
        token = user_with_token(server.data_dir, USER, PASSWORD)
        device_specs = specs(args.devices, args.legacy, args.droppers)
        register(
            server.data_dir, [s.private_key for s in device_specs], owner=USER, ids=[s.device_id for s in device_specs]
        )
        fleet = Fleet(device_specs, server.public_key, config=SimConfig(backoff_scale=0.2))

        async def run() -> list[tuple[str, str, str]]:
            try:
                return await rollout(server, fleet, token, image)
            finally:
                await fleet.stop()

        rows = asyncio.run(run())
    legacy = sum(s.firmware.legacy for s in device_specs)
    title = (
        f"OTA rollout: {args.devices} devices ({legacy} on 0.6.1), {args.droppers} damaging every 100th chunk, "
        "1 cut off mid-update"
    )
    print(table(title, rows))


if __name__ == "__main__":
    main()
