"""The console's device list over a fleet of 10,000 registered devices: GET /v1/fleet/devices (one page of 50,
filtered, sorted and counted by the database) and GET /v1/fleet, through `cyan serve`'s service on loopback
with SQLite, as an admin. Prints the median and 95th percentile of each request over `--runs` requests.

Then Particle's own list of every device (GET /v1/devices?all=true), from a client in another thread, with the
longest the server's event loop went without a turn during each request: beside the request's time, the share
of it that the devices the same loop serves (pings, calls, handshakes) would have waited.

    python bench/fleet_list.py [--devices 10000] [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from cyan.app import Actor
from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, DeviceRecord, PendingKey, Role
from cyan.limits import freeze_startup_objects
from cyan.service import Service, ensure_server_keys
from cyan.testing import loopback_settings

QUERIES = [
    ("first page, by id", "/v1/fleet/devices?limit=50"),
    ("page 100, by id", "/v1/fleet/devices?limit=50&offset=5000"),
    ("by last seen, newest", "/v1/fleet/devices?limit=50&sort=last_heard&order=desc"),
    ("search text", "/v1/fleet/devices?limit=50&q=unit-12"),
    ("online, P1, Device OS 3103", "/v1/fleet/devices?limit=50&status=online&platform_id=8&system_version=3103"),
    ("failing now", "/v1/fleet/devices?limit=50&status=failing"),
    ("group of 1,000", "/v1/fleet/devices?limit=50&group=porch"),
    ("fleet summary", "/v1/fleet"),
]


async def main(devices: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = loopback_settings(Path(tmp))
        service = Service(settings, ensure_server_keys(settings))
        await service.start()
        try:
            now = datetime.now(UTC)
            owners = ["alice@example.com", "bob@example.com", None]
            records = [
                DeviceRecord(
                    id=f"{n:024x}",
                    name=f"unit-{n}",
                    owner=owners[n % 3],
                    platform_id=6 if n % 2 else 8,
                    product_version=n % 7,
                    system_version=3103 if n % 3 else 1201,
                    online=n % 4 == 0,
                    last_heard=now - timedelta(seconds=n),
                    created_at=now,
                )
                for n in range(devices)
            ]
            await service.store.devices.add_many(records)
            # A day of records: every device connected once; a tenth of them now failing a few times.
            attempts = [
                ConnectionAttempt(
                    now - timedelta(hours=2), "198.51.100.7:1000", AttemptOutcome.CONNECTED, "session", device_id=r.id
                )
                for r in records
            ] + [
                ConnectionAttempt(
                    now - timedelta(minutes=k),
                    "198.51.100.7:1000",
                    AttemptOutcome.FAILED,
                    "S5",
                    reason="key_mismatch",
                    device_id=r.id,
                )
                for r in records[1::10]
                for k in range(1, 4)
            ]
            await service.store.attempts.add(attempts)
            for r in records[::500]:
                await service.store.keys.save_pending_key(PendingKey(r.id, b"k", f"SHA256:{r.id}", None, now, now))
            await service.store.updates.add_to_group("porch", [r.id for r in records[::10]])
            admin = "ops@example.com"
            await service.app.accounts.create_user(Actor.operator(), admin, "correct horse", role=Role.ADMIN)
            token = (await service.app.accounts.create_token(Actor.operator(), admin)).token
            url = f"http://127.0.0.1:{service.api_port}"
            print(f"{devices} devices, {len(attempts)} attempts; {runs} requests each, over HTTP on loopback\n")
            print(f"{'request':32} {'matches':>8} {'median ms':>10} {'p95 ms':>8}")
            async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
                for label, path in QUERIES:
                    timings = []
                    body = {}
                    for _ in range(runs):
                        started = time.perf_counter()
                        response = await client.get(path)
                        timings.append((time.perf_counter() - started) * 1000)
                        response.raise_for_status()
                        body = response.json()
                    timings.sort()
                    p95 = timings[max(0, int(len(timings) * 0.95) - 1)]
                    matches = body.get("total", body.get("devices", ""))
                    print(f"{label:32} {matches!s:>8} {statistics.median(timings):10.1f} {p95:8.1f}")
            print()
            await _full_list(url, token, devices, max(5, runs // 5))
        finally:
            await service.stop()


async def _full_list(url: str, token: str, devices: int, runs: int) -> None:
    """The whole list, in rounds alternating between the start-up objects frozen out of the garbage collector's
    sight (as `cyan serve` does once serving, `cyan.limits.freeze_startup_objects`) and not."""
    loop = asyncio.get_running_loop()
    stalls: list[float] = []

    async def watch() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(0.001)
            stalls.append(loop.time() - before - 0.001)

    watcher = asyncio.create_task(watch())
    headers = {"Authorization": f"Bearer {token}"}
    rows: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
    try:
        for run in range(2 * runs):
            frozen = run % 2 == 0
            if frozen:
                freeze_startup_objects()
            else:
                gc.unfreeze()
            await asyncio.sleep(0.05)  # the watcher's pass over the freeze's own collection ends before the count
            stalls.clear()
            started = time.perf_counter()
            response = await asyncio.to_thread(httpx.get, f"{url}/v1/devices?all=true", headers=headers, timeout=60)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            rows[frozen].append((elapsed * 1000, max(stalls, default=0.0) * 1000, len(response.content)))
    finally:
        watcher.cancel()
        freeze_startup_objects()
    assert len(response.json()) == devices
    size = rows[True][0][2] / 1e6
    print(f"GET /v1/devices?all=true: {devices} devices, {size:.1f} MB, median of {runs} requests each way")
    figures = {}
    for frozen, label in ((False, "start-up objects collected"), (True, "start-up objects frozen (cyan serve)")):
        took = statistics.median(r[0] for r in rows[frozen])
        stall = statistics.median(r[1] for r in rows[frozen])
        figures[frozen] = stall
        print(f"  {label}: request {took:.1f} ms; longest stall of the loop {stall:.1f} ms = {stall / took:.2f}x of it")
    print(f"  longest stall frozen / collected: {figures[True] / figures[False]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.devices, arguments.runs))
