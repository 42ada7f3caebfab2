"""Connected devices held by one `cyan serve`: memory and CPU per idle device, and the simulator's own cost.

    .venv/bin/python bench/connections.py [--sizes 1000,10000] [--keys-dir /tmp/bench-keys] [--idle 30]

The simulator (this process) connects the devices with a ramp and keeps them idle: each pings 15 s after it
last heard from the server (protocol.md §8.1). For each size, once it is reached and has settled:

- the server's resident memory (from /proc) against its memory before the first device;
- the server's CPU over an idle window, per ping answered, against the protocol core alone answering
  the same pings in this process (one decrypt, one encrypt, CoAP both ways), measured in the same run;
- the simulator's memory per device and CPU per connection, so it is known not to be the bottleneck.

Device keys are kept in --keys-dir so later runs skip generating them. The largest size is bounded by
the open-file limit of each process (one socket per device): the table says what it was.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
from pathlib import Path

from _common import Server, cpu_seconds, cyan_serve, register, rss_bytes, table

from cyan.protocol import DEVICE_OS_3_1_0, DeviceConnection, DeviceIdentified, ServerConnection
from cyan.sim import AppSpec, Fleet, SimConfig, ensure_file_limit
from cyan.testing import ConnectionPair, fixed_device_key, fixed_server_key

PING_INTERVAL = 15.0


def core_cost_per_ping(pings: int = 5000) -> float:
    """Seconds of CPU the server role alone spends on one device ping and its ACK."""
    now = 1_700_000_000.0
    key = fixed_server_key()
    server = ServerConnection(key, now)
    device = DeviceConnection(bytes(12), fixed_device_key(), key.public_key(), now, firmware=DEVICE_OS_3_1_0)
    pair = ConnectionPair(server, device)
    pair.pump(now)
    (identified,) = [e for e in pair.take_server_events() if isinstance(e, DeviceIdentified)]
    assert identified.public_key is not None
    server.accept(identified.public_key, now)
    pair.pump(now)
    spent = 0.0
    for _ in range(pings):
        now += PING_INTERVAL
        device.handle_timer(now)
        frame = device.data_to_send()
        started = time.process_time()
        server.receive_data(frame, now)
        while server.next_event() is not None:
            pass
        answer = server.data_to_send()
        spent += time.process_time() - started
        device.receive_data(answer, now)
        while device.next_event() is not None:
            pass
    return spent / pings


def own_rss() -> int:
    return rss_bytes(os.getpid())


async def run(
    server: Server, fleet: Fleet, sizes: list[int], *, ramp: float, idle: float, core_ping: float
) -> list[tuple[str, str, str]]:
    baseline = rss_bytes(server.pid)
    sim_baseline = own_rss()
    rows = [("server memory, no device", f"{baseline / 2**20:.1f} MiB", "")]
    devices = fleet.devices
    started = 0
    try:
        for size in sizes:
            begin = time.monotonic()
            sim_cpu = time.process_time()
            for index, device in enumerate(devices[started:size]):
                device.start("127.0.0.1", server.device_port, delay=index / ramp)
            added = size - started
            started = size
            while sum(d.connected.is_set() for d in devices[:size]) < size:
                if time.monotonic() - begin > 900:
                    raise RuntimeError(f"only part of {size} devices connected: {fleet.stats()}")
                await asyncio.sleep(0.2)
            took = time.monotonic() - begin
            sim_cpu = time.process_time() - sim_cpu
            await asyncio.sleep(3.0)  # let the writes and the allocator settle
            per_device = (rss_bytes(server.pid) - baseline) / size
            sim_per_device = (own_rss() - sim_baseline) / size
            # Idle window: every device pings once per interval; the server answers each.
            before = cpu_seconds(server.pid)
            await asyncio.sleep(idle)
            server_idle = cpu_seconds(server.pid) - before
            pings = size * idle / PING_INTERVAL
            rows += [
                (
                    f"server memory per connected device at {size:,}",
                    f"{per_device / 1024:.1f} KB",
                    "goal under 16 KB, aim under 8 KB",
                ),
                (
                    f"server CPU per idle ping at {size:,} ({size / PING_INTERVAL:,.0f} pings/s)",
                    f"{server_idle / pings * 1e6:.0f} µs",
                    f"protocol core alone {core_ping * 1e6:.0f} µs",
                ),
                (
                    f"server CPU for {size:,} idle devices",
                    f"{server_idle / idle * 100:.1f}% of a core",
                    "",
                ),
                (
                    f"time to connect the devices up to {size:,}",
                    f"{took:.1f} s",
                    f"ramp {ramp:g}/s",
                ),
                (
                    f"simulator memory per device at {size:,}",
                    f"{sim_per_device / 1024:.1f} KB",
                    f"server {per_device / 1024:.1f} KB",
                ),
                (
                    f"simulator CPU per connection (last {added:,})",
                    f"{sim_cpu / added * 1000:.2f} ms",
                    "",
                ),
            ]
    finally:
        await fleet.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--keys-dir", type=Path, default=Path("sim-keys-bench"))
    parser.add_argument("--ramp", type=float, default=400.0, help="connections per second")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measured per size")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    limit = ensure_file_limit(max(sizes) + 200)
    if limit < max(sizes) + 100:
        raise SystemExit(f"the open-file limit is {limit:,}: too low for {max(sizes):,} devices in one process")
    core_ping = core_cost_per_ping()
    with cyan_serve() as server:
        fleet = Fleet.load_or_create(
            args.keys_dir, max(sizes), server.public_key, app=AppSpec.minimal(), config=SimConfig(goodbye_on_stop=False)
        )
        specs = [device.spec for device in fleet.devices]
        register(server.data_dir, [s.private_key for s in specs], ids=[s.device_id for s in specs])
        rows = asyncio.run(run(server, fleet, sizes, ramp=args.ramp, idle=args.idle, core_ping=core_ping))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    print(table(f"Idle connected devices, one cyan serve process (open-file limit {hard:,} per process)", rows))


if __name__ == "__main__":
    main()
