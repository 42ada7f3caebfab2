"""Function call round trips through the HTTP API, and device event to SSE subscriber latency.

    .venv/bin/python bench/latency.py [--devices 1000] [--calls 500] [--events 500]

With --devices simulated devices connected to one `cyan serve`: `POST /v1/devices/:id/setArg` round trips
(HTTP in, protocol out to the device, its answer back) to devices chosen in turn, one at a time over one
keep-alive connection; then as many variable reads (`GET /v1/devices/:id/lastArg`); then events published
by devices, timed from the device's publish to the arrival on an open `GET /v1/devices/events` stream.

The server's CPU per call and per read (from /proc), and where a call's CPU goes, from requests that stop
at each stage, in the same run: the same call without a token (refused with 401: HTTP, routing and the
error), then with a token to a device that is not registered (404: adds the body's validation, the token's
and its user's lookups and the device's), then the whole call (adds the cloud's session lookup and the
device's round trip: the protocol core, both sockets, the answer's future). In one process a call does not
cross the bus; with several nodes it would (docs/scale-out.md).

    .venv/bin/python bench/latency.py --devices 50 --calls 300 --callgrind

The same stages counted in instructions (`cyan serve` under valgrind's callgrind, counting only while each
stage's requests run): a figure the other work on a shared machine does not move, for comparing changes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
from _common import CYAN, Callgrind, RawHttp, Server, cyan_serve, register, server_cpu_seconds, table

from cyan.sim import AppSpec, Fleet, SimConfig, ensure_file_limit

USER, PASSWORD = "bench@example.com", "bench password"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return f"{statistics.median(ordered) * 1000:.2f} / {p99 * 1000:.2f} / {ordered[-1] * 1000:.2f} ms"


async def measure(
    server: Server, fleet: Fleet, calls: int, events: int, counter: Callgrind | None = None
) -> list[tuple[str, str, str]]:
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

        async def timed(method: str, path: str, bearer: str, body: bytes, expect: int) -> tuple[list[float], float]:
            """`calls` requests one at a time (`path` formatted with each device's id): latencies, CPU each."""
            latencies = []
            cpu = server_cpu_seconds(server.pid)
            with counter.counting() if counter is not None and expect != 0 else contextlib.nullcontext():
                for n in range(calls):
                    device = devices[n % len(devices)]
                    started = time.perf_counter()
                    status, answer = await raw.request(method, path.format(device.device_id), bearer, body)
                    latencies.append(time.perf_counter() - started)
                    if status != (expect or 200):
                        raise RuntimeError(f"{method} {path}: {status} {answer!r}, not {expect}")
            return latencies, (server_cpu_seconds(server.pid) - cpu) / calls

        call = b'{"args":"x"}'
        await timed("POST", "/v1/devices/{}/setArg", token, call, 0)  # warm-up (0: never counted)
        round_trips, call_cpu = await timed("POST", "/v1/devices/{}/setArg", token, call, 200)
        reads, read_cpu = await timed("GET", "/v1/devices/{}/lastArg", token, b"", 200)
        _, http_cpu = await timed("POST", "/v1/devices/{}/setArg", "", call, 401)
        _, lookup_cpu = await timed("POST", "/v1/devices/{}/setArg".replace("{}", "0" * 24), token, call, 404)
        await raw.close()
        if counter is not None:
            await fleet.stop()
            return instruction_rows(counter, calls)

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
        (
            f"function call round trip p50 / p99 / max ({calls} calls)",
            percentiles(round_trips),
            "goal p50 1 ms, p99 3 ms",
        ),
        (f"variable read p50 / p99 / max ({calls} reads)", percentiles(reads), "goal p50 1 ms, p99 3 ms"),
        ("server CPU per call / per read", f"{call_cpu * 1e6:.0f} / {read_cpu * 1e6:.0f} µs", "10 ms ticks"),
        ("  HTTP, routing, the 401 (no token)", f"{http_cpu * 1e6:.0f} µs", f"{http_cpu / call_cpu:.0%} of a call"),
        (
            "  + body, token, user and device lookups (404)",
            f"{(lookup_cpu - http_cpu) * 1e6:.0f} µs",
            f"{(lookup_cpu - http_cpu) / call_cpu:.0%} of a call",
        ),
        (
            "  + session, device round trip, the answer (200)",
            f"{(call_cpu - lookup_cpu) * 1e6:.0f} µs",
            f"{(call_cpu - lookup_cpu) / call_cpu:.0%} of a call; no bus in one process",
        ),
        (
            f"event to subscriber p50 / p99 / max ({len(event_latency)} events)",
            percentiles(event_latency),
            "goal p99 under 5 ms",
        ),
    ]


def instruction_rows(counter: Callgrind, requests: int) -> list[tuple[str, str, str]]:
    call, read, refused, missing = (counter.total(counter.annotated(n)) / requests for n in (1, 2, 3, 4))
    return [
        ("server instructions per call / per read", f"{call / 1e3:,.0f} / {read / 1e3:,.0f} k", "callgrind"),
        ("  HTTP, routing, the 401 (no token)", f"{refused / 1e3:,.0f} k", f"{refused / call:.0%} of a call"),
        (
            "  + body, token, user and device lookups (404)",
            f"{(missing - refused) / 1e3:,.0f} k",
            f"{(missing - refused) / call:.0%} of a call",
        ),
        (
            "  + session, device round trip, the answer (200)",
            f"{(call - missing) / 1e3:,.0f} k",
            f"{(call - missing) / call:.0%} of a call; no bus in one process",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--keys-dir", type=Path, default=Path("sim-keys-bench"))
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead (valgrind)")
    args = parser.parse_args()
    ensure_file_limit(args.devices + 200)
    with contextlib.ExitStack() as stack:
        counter = None
        if args.callgrind:
            counter = Callgrind(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cyan-callgrind-"))))
        rows = run(args, counter)
    print(table(f"Latency with {args.devices:,} devices connected, one cyan serve process", rows))


def run(args: argparse.Namespace, counter: Callgrind | None) -> list[tuple[str, str, str]]:
    with cyan_serve(wrap=counter.wrap if counter else (), start_timeout=300 if counter else 30) as server:
        if counter is not None:
            counter.pid = server.pid
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
        return asyncio.run(measure(server, fleet, args.calls, args.events, counter))


if __name__ == "__main__":
    main()
