"""A fleet reconnecting at once: `cyan serve` killed with N simulated devices connected, and started again.

    .venv/bin/python bench/storm.py [--devices 5000] [--sim-processes 2] [--keys-dir /tmp/bench-keys]

The N devices run in --sim-processes simulator processes (connections.py's), each from its own loopback
address, with the firmware's reconnect backoff (§8.3: 1 s after each of the first five failures, then 2 s...).
Beside them, --honest devices run in this process, owned by a user, with a function. Measured in one run:

1. With every device connected: function calls through the API, one at a time over one keep-alive
   connection, to half of the honest devices, and the round trips of the other half's keep-alive pings (every
   --ping-interval seconds), while a client lists `GET /v1/devices` every 2 s (the baselines' p50/p99); then
   the steady handshake rate: this process's load generator (bench/handshakes.py's, 64 at a time) against
   the same server, with the fleet connected.
2. `kill -9` of the server, and `cyan serve` again on the same port and database. The storm: every device
   reconnects at once; the server runs at most `max_handshakes` at a time and holds the others in its queue,
   newest served first, closing the ones that wait 15 s before its nonce (they retry on their backoff; the
   table counts them as refused). Timed from the new server's port listening to every device
   connected again, against the ideal: all the devices divided by the steady rate. Meanwhile the honest
   devices that are back are called and ping as in 1 (their p99 against the baseline's), the client lists
   `GET /v1/devices` every 2 s, and the server's memory is sampled.
3. SIGINT to the server with the fleet connected and the lists going: its log must hold no traceback.

The server's processes time their full garbage collections (bench/gc_probe, on their PYTHONPATH): the table
shows those of the baseline's calls and of the storm, which hold the event loop while they run.

The client that lists runs in a process of its own, as a dashboard would be another machine: read in this
process, each 5,000-device answer held up the honest devices and the calls beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import CYAN, RawHttp, cyan_serve, device_id, keys, register, rss_bytes, server_pids, table
from connections import Simulators
from handshakes import load

from cyan.protocol import DeviceConfig
from cyan.sim import AppSpec, Fleet, SimConfig, VirtualDevice, ensure_file_limit, load_or_create_keys

USER, PASSWORD = "bench@example.com", "bench password"
#: Ids of the honest devices and of the load generator's, apart from the simulated fleet's.
HONEST_BASE, LOAD_BASE = 1_000_000, 2_000_000


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)]


async def token(api_port: int) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client:
        login = await client.post(
            "/oauth/token", data={"grant_type": "password", "username": USER, "password": PASSWORD}
        )
        login.raise_for_status()
        return str(login.json()["access_token"])


async def calls(
    api_port: int, bearer: str, honest: Fleet, *, count: int, until: asyncio.Event | None = None
) -> tuple[list[float], int]:
    """Function calls to the called half of the honest devices, those connected, in turn: `count` of them, or
    until `until` is set. The other half only ping: a device pings after a while without hearing from the
    server, which the calls would not leave it."""
    raw = await RawHttp.connect("127.0.0.1", api_port)
    latencies: list[float] = []
    failed = n = 0
    try:
        while (until is None and len(latencies) < count) or (until is not None and not until.is_set()):
            back = [d for d in called(honest) if d.connected.is_set()]
            if not back:
                await asyncio.sleep(0.05)
                continue
            device = back[n % len(back)]
            n += 1
            started = time.perf_counter()
            status, _ = await raw.request("POST", f"/v1/devices/{device.device_id}/setArg", bearer, b'{"args":"x"}')
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                failed += 1  # it went away between the check and the call (its session was being replaced)
            await asyncio.sleep(0.01)
    finally:
        await raw.close()
    return latencies, failed


#: The client that lists the devices, as a dashboard would: `GET /v1/devices` every 2 s; prints each status.
LISTER = """
import sys, time, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
while True:
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()
            print(answer.status, flush=True)
    except (OSError, urllib.error.URLError):
        print("failed", flush=True)  # the server is stopping
    time.sleep(2.0)
"""


class Lister:
    """`GET /v1/devices` every 2 s from a process of its own, until `stop`; how many were answered."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls, api_port: int, bearer: str) -> Lister:
        url = f"http://127.0.0.1:{api_port}/v1/devices"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LISTER, url, bearer, stdout=asyncio.subprocess.PIPE
        )
        return cls(process)

    async def stop(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        out, _ = await self._process.communicate()
        return sum(line == b"200" for line in out.splitlines())


#: Where the server's processes find bench/gc_probe's sitecustomize, and where they write their collections.
GC_PROBE = Path(__file__).resolve().parent / "gc_probe"


def full_collections(log: Path, pids: list[int], since: float, until: float) -> list[float]:
    """The lengths (ms) of the full collections the processes `pids` ran between `since` and `until`."""
    lengths: list[float] = []
    for pid in pids:
        path = log.with_name(f"{log.name}.{pid}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            ended, length = (float(field) for field in line.split())
            if since <= ended <= until:
                lengths.append(length)
    return lengths


def collections_row(what: str, lengths: list[float]) -> tuple[str, str, str]:
    longest = f"longest {max(lengths):.1f} ms, " if lengths else ""
    return (
        f"the server's full garbage collections, {what}",
        f"{len(lengths)}",
        f"{longest}{sum(lengths):.0f} ms in all",
    )


def called(honest: Fleet) -> list[VirtualDevice]:
    """The honest devices the calls go to (the first half); the others ping."""
    return honest.devices[: max(1, len(honest.devices) // 2)]


def ping_trips(honest: Fleet) -> list[float]:
    """The honest devices' ping round trips recorded since the last call, which forgets them."""
    trips: list[float] = []
    for device in honest.devices:
        if device.ping_round_trips:
            trips += device.ping_round_trips
            device.ping_round_trips.clear()
    return trips


def overloaded_refusals(database: Path) -> int:
    """Connections closed before the nonce for the handshake bound, from the attempt records (runs of identical
    failures are summed into one record whose detail counts them)."""
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT detail FROM connection_attempts WHERE reason = 'overloaded'").fetchall()
    total = 0
    for (detail,) in rows:
        match = re.match(r"(\d+) more attempt", detail or "")
        total += 1 + int(match.group(1)) if match else 1
    return total


async def run(args: argparse.Namespace) -> None:
    total = args.devices
    key_count = min(args.keys or total, total)
    pool = [key for _, key in load_or_create_keys(args.keys_dir, key_count)]
    load_keys = keys(50)
    load_ids = [device_id(LOAD_BASE + n) for n in range(len(load_keys))]
    honest_ids = [device_id(HONEST_BASE + n) for n in range(args.honest)]
    work = Path(tempfile.mkdtemp(prefix="cyan-storm-"))
    data = work / "data"
    gc_log = work / "gc"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GC_PROBE), os.environ.get("PYTHONPATH")]))
    os.environ["CYAN_BENCH_GC_LOG"] = str(gc_log)
    rows: list[tuple[str, str, str]] = []
    serving = ("--device-processes", str(args.device_processes)) if args.device_processes else ()
    with cyan_serve(*serving, data_dir=data, log_path=work / "first.log") as first:
        port = first.device_port
        subprocess.run(
            [str(CYAN), "users", "add", USER, "--password", PASSWORD, "--data-dir", str(data)],
            check=True,
            capture_output=True,
        )
        # register() runs its own event loop: in a thread, beside this one.
        await asyncio.to_thread(register, data, [pool[i % key_count] for i in range(total)])
        honest_keys = [pool[i % key_count] for i in range(args.honest)]
        await asyncio.to_thread(register, data, honest_keys, USER, honest_ids)
        await asyncio.to_thread(register, data, load_keys, None, load_ids)
        honest = Fleet(
            Fleet.make_specs(list(zip(honest_ids, pool, strict=False)), app=AppSpec(periodic=(), call_event=None)),
            first.public_key,
            config=SimConfig(
                goodbye_on_stop=False,
                device_config=DeviceConfig(ping_interval=args.ping_interval),
                record_pings=True,
            ),
        )
        sims = Simulators(
            processes=args.sim_processes,
            total=total,
            keys_dir=args.keys_dir,
            key_count=key_count,
            port=port,
            server_key=first.public_key,
            ramp=args.ramp,
            nice=args.sim_nice,
        )
        try:
            sims.wait_ready()
            sims.grow_to(total)
            honest.start("127.0.0.1", port)
            began = time.monotonic()
            while sims.connected_count() < total or not all(d.connected.is_set() for d in honest.devices):
                if time.monotonic() - began > 1800:
                    raise RuntimeError(f"only {sims.connected_count():,} of {total:,} devices connected")
                await asyncio.sleep(0.5)
            await asyncio.sleep(3.0)
            connected_rss = sum(rss_bytes(p) for p in server_pids(first.pid))
            bearer = await token(first.api_port)
            lister = await Lister.start(first.api_port, bearer) if not args.no_lists else None
            ping_trips(honest)
            calls_began = time.monotonic()
            baseline, _ = await calls(first.api_port, bearer, honest, count=args.calls)
            baseline_pings = ping_trips(honest)
            baseline_collections = full_collections(gc_log, server_pids(first.pid), calls_began, time.monotonic())
            if lister is not None:
                await lister.stop()
            wall = time.perf_counter()
            done, _, _ = await load(
                port, load_ids, load_keys, first.public_key, seconds=args.rate_seconds, concurrency=64
            )
            rate = done / (time.perf_counter() - wall)
            # The crash: no goodbye, no close; every device finds its connection gone at once (its device
            # processes too, if it has them).
            for pid in server_pids(first.pid):
                os.kill(pid, signal.SIGKILL)
            first.process.wait()
            killed = time.monotonic()
            storm_rows, second_log = await storm(
                serving=serving,
                data=data,
                port=port,
                work=work,
                sims=sims,
                honest=honest,
                total=total,
                rate=rate,
                baseline=baseline,
                baseline_pings=baseline_pings,
                baseline_collections=baseline_collections,
                gc_log=gc_log,
                connected_rss=connected_rss,
                killed=killed,
                list_devices=not args.no_lists,
            )
            rows += storm_rows
        finally:
            await honest.stop()
            sims.stop()
    text = second_log.read_text(errors="replace")
    tracebacks = text.count("Traceback")
    graceful = "graceful shutdown exceeded" in text
    rows += [
        (
            "shutdown with the fleet connected and lists going",
            "clean" if not tracebacks and not graceful else f"{tracebacks} traceback(s)",
            "no traceback, no 'timeout graceful shutdown exceeded'",
        ),
        ("connections closed before the nonce (overloaded)", f"{overloaded_refusals(data / 'cyan.db'):,}", ""),
    ]
    print(
        table(
            f"Reconnect storm: {total:,} simulated devices in {args.sim_processes} processes + {args.honest} honest "
            f"devices, cyan serve killed and started again ({os.cpu_count()} cores shared with the simulators"
            f"{f', at nice {args.sim_nice}' if args.sim_nice else ''})",
            rows,
        )
    )
    # Kept when the run fails part-way: its two servers' logs are there.
    shutil.rmtree(work, ignore_errors=True)


async def storm(
    *,
    serving: tuple[str, ...],
    list_devices: bool,
    data: Path,
    port: int,
    work: Path,
    sims: Simulators,
    honest: Fleet,
    total: int,
    rate: float,
    baseline: list[float],
    baseline_pings: list[float],
    baseline_collections: list[float],
    gc_log: Path,
    connected_rss: int,
    killed: float,
) -> tuple[list[tuple[str, str, str]], Path]:
    log_path = work / "second.log"
    with cyan_serve(*serving, data_dir=data, device_port=port, log_path=log_path) as second:
        listening = time.monotonic()
        back = asyncio.Event()
        bearer = await token(second.api_port)
        lister = await Lister.start(second.api_port, bearer) if list_devices else None
        ping_trips(honest)  # none can be from before the kill: those pings went unanswered
        during = asyncio.create_task(calls(second.api_port, bearer, honest, count=0, until=back))
        peak = 0
        while True:
            peak = max(peak, sum(rss_bytes(p) for p in server_pids(second.pid)))
            if sims.connected_count() >= total and all(d.connected.is_set() for d in honest.devices):
                break
            if time.monotonic() - listening > 1800:
                raise RuntimeError(f"only {sims.connected_count():,} of {total:,} devices back")
            await asyncio.sleep(0.25)
        took = time.monotonic() - listening
        back.set()
        storm_collections = full_collections(gc_log, server_pids(second.pid), listening, listening + took)
        storm_pings = ping_trips(honest)
        storm_calls, storm_failed = await during
        await asyncio.sleep(2.0)
        settled = sum(rss_bytes(p) for p in server_pids(second.pid))
        # The clean stop, with the fleet connected and the lists going.
        second.process.send_signal(signal.SIGINT)
        stopping = time.monotonic()
        second.process.wait(60)
        stopped = time.monotonic() - stopping
        listed = await lister.stop() if lister is not None else 0
    ideal = (total + len(honest.devices)) / rate
    base50, base99 = percentiles(baseline)
    rows = [
        ("steady handshake rate (load generator, 64 at a time)", f"{rate:,.0f}/s", "same server, fleet connected"),
        (
            "every device back, from the new server's port listening",
            f"{took:.1f} s",
            f"ideal {ideal:.1f} s (all devices / steady rate); {listening - killed:.1f} s from the kill to listening",
        ),
        ("time back / ideal", f"{took / ideal:.2f}x", "goal at most 1.25x"),
        (
            "call p50 / p99, fleet connected",
            f"{base50 * 1000:.2f} / {base99 * 1000:.2f} ms",
            f"{len(baseline)} calls{', GET /v1/devices every 2 s' if list_devices else ''}",
        ),
    ]
    if storm_calls:
        s50, s99 = percentiles(storm_calls)
        rows += [
            (
                "call p50 / p99 to honest devices back, during the storm",
                f"{s50 * 1000:.2f} / {s99 * 1000:.2f} ms",
                f"{len(storm_calls)} calls, {storm_failed} to a device gone meanwhile",
            ),
            ("call p99 during the storm / fleet connected", f"{s99 / base99:.2f}x", "goal at most 2x"),
        ]
    if baseline_pings and storm_pings:
        b50, b99 = percentiles(baseline_pings)
        s50, s99 = percentiles(storm_pings)
        rows += [
            (
                "honest devices' ping p50 / p99, fleet connected",
                f"{b50 * 1000:.2f} / {b99 * 1000:.2f} ms",
                f"{len(baseline_pings)} pings",
            ),
            ("the same during the storm", f"{s50 * 1000:.2f} / {s99 * 1000:.2f} ms", f"{len(storm_pings)} pings"),
            ("ping p99 during the storm / fleet connected", f"{s99 / b99:.2f}x", "goal at most 2x"),
        ]
    rows += [
        collections_row("fleet connected, during the baseline's calls", baseline_collections),
        collections_row("during the storm", storm_collections),
        (
            "server memory: peak during the storm / settled after",
            f"{peak / 2**20:.0f} / {settled / 2**20:.0f} MiB",
            f"{connected_rss / 2**20:.0f} MiB with the fleet connected before the kill",
        ),
        ("GET /v1/devices answered during the storm and the stop", f"{listed}", "one every 2 s"),
        ("shutdown took", f"{stopped:.1f} s", ""),
    ]
    return rows, log_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--honest", type=int, default=20)
    parser.add_argument("--keys-dir", type=Path, default=Path("sim-keys-bench"))
    parser.add_argument("--keys", type=int, default=None, help="how many distinct device keys [one per device]")
    parser.add_argument("--ramp", type=float, default=400.0, help="first connection of the fleet, per second")
    parser.add_argument("--sim-processes", type=int, default=2)
    parser.add_argument("--calls", type=int, default=300, help="baseline calls")
    parser.add_argument("--rate-seconds", type=float, default=5.0)
    parser.add_argument("--no-lists", action="store_true", help="no client listing GET /v1/devices")
    parser.add_argument(
        "--ping-interval", type=float, default=0.25, help="seconds between the honest devices' keep-alive pings"
    )
    parser.add_argument(
        "--sim-nice",
        type=int,
        default=0,
        help="niceness added to the simulator processes, whose devices would be other machines in a real fleet",
    )
    parser.add_argument(
        "--device-processes", type=int, default=0, help="cyan serve --device-processes (past one process's files)"
    )
    args = parser.parse_args()
    ensure_file_limit(args.devices + 1000)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
