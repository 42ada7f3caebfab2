"""Function call round trips through the HTTP API, and device event to SSE subscriber latency.

    .venv/bin/python bench/latency.py [--devices 1000] [--calls 500] [--events 500]

With --devices simulated devices connected to one `cyan serve`: `POST /v1/devices/:id/setArg` round trips
(HTTP in, protocol out to the device, its answer back) to devices chosen in turn, one at a time; then
events published by devices, timed from the device's publish to the arrival on an open
`GET /v1/devices/events` stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import httpx
from _common import CYAN, RawHttp, Server, cyan_serve, register, table

from cyan.sim import AppSpec, Fleet, SimConfig, ensure_file_limit

USER, PASSWORD = "bench@example.com", "bench password"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return f"{statistics.median(ordered) * 1000:.2f} / {p99 * 1000:.2f} / {ordered[-1] * 1000:.2f} ms"


async def measure(server: Server, fleet: Fleet, calls: int, events: int) -> list[tuple[str, str, str]]:
    for index, device in enumerate(fleet.devices):
        device.start("127.0.0.1", server.device_port, delay=index / 400)
    if not await fleet.wait_connected(timeout=600):
        raise RuntimeError(f"not all devices connected: {fleet.stats()}")
    await asyncio.sleep(2.0)
    devices = fleet.devices
    base = f"http://127.0.0.1:{server.api_port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        login = await client.post(
            "/oauth/token", data={"grant_type": "password", "username": USER, "password": PASSWORD}
        )
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        raw = await RawHttp.connect("127.0.0.1", server.api_port)
        token = auth["Authorization"].split()[1]
        round_trips = []
        for n in range(calls):
            device = devices[n % len(devices)]
            started = time.perf_counter()
            status, answer = await raw.request("POST", f"/v1/devices/{device.device_id}/setArg", token, b'{"args":"x"}')
            round_trips.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"call failed: {status} {answer!r}")
        await raw.close()

        arrivals: dict[str, float] = {}
        ready = asyncio.Event()

        async def listen() -> None:
            async with client.stream("GET", "/v1/devices/events/bench", headers=auth, timeout=None) as stream:
                ready.set()
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        arrivals[json.loads(line[6:])["data"]] = time.perf_counter()
                        if len(arrivals) == events:
                            return

        listener = asyncio.create_task(listen())
        await ready.wait()
        await asyncio.sleep(0.2)
        sent: dict[str, float] = {}
        for n in range(events):
            device = devices[n % len(devices)]
            key = f"e{n}"
            sent[key] = time.perf_counter()
            if not device.publish("bench/latency", key):
                raise RuntimeError("the simulated firmware refused a publish (its rate limit)")
            # The firmware allows 4 events a second per device: spread them over the fleet.
            await asyncio.sleep(max(0.002, 0.3 / len(devices)))
        await asyncio.wait_for(listener, 30)
        event_latency = [arrivals[k] - sent[k] for k in sent if k in arrivals]
    await fleet.stop()
    return [
        (f"function call round trip p50 / p99 / max ({calls} calls)", percentiles(round_trips), "goal p99 under 10 ms"),
        (
            f"event to subscriber p50 / p99 / max ({len(event_latency)} events)",
            percentiles(event_latency),
            "goal p99 under 5 ms",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--keys-dir", type=Path, default=Path("sim-keys-bench"))
    args = parser.parse_args()
    ensure_file_limit(args.devices + 200)
    with cyan_serve() as server:
        subprocess.run(
            [str(CYAN), "users", "add", USER, "--password", PASSWORD, "--data-dir", str(server.data_dir)],
            check=True,
            capture_output=True,
        )
        fleet = Fleet.load_or_create(
            args.keys_dir,
            args.devices,
            server.public_key,
            app=replace(AppSpec(), periodic=(), call_event=None),
            config=SimConfig(goodbye_on_stop=False),
        )
        specs = [device.spec for device in fleet.devices]
        register(server.data_dir, [s.private_key for s in specs], owner=USER, ids=[s.device_id for s in specs])
        rows = asyncio.run(measure(server, fleet, args.calls, args.events))
    print(table(f"Latency with {args.devices:,} devices connected, one cyan serve process", rows))


if __name__ == "__main__":
    main()
