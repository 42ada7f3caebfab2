"""Connected devices held by one `cyan serve`: server memory per idle connected device.

    .venv/bin/python bench/connections.py [--sizes 1000,5000] [--keys-dir sim-keys-bench]

The simulator (this process) connects the devices with a ramp and keeps them idle (each pings every 15 s);
the server's resident memory is read from /proc before the first device and after each size is reached
and has settled. Device keys are kept in --keys-dir so later runs skip generating them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from _common import Server, cyan_serve, register, rss_bytes, table

from cyan.sim import AppSpec, Fleet, SimConfig, ensure_file_limit


async def run(server: Server, fleet: Fleet, sizes: list[int], ramp: float) -> list[tuple[str, str, str]]:
    baseline = rss_bytes(server.pid)
    rows = [("server memory, no device", f"{baseline / 2**20:.1f} MiB", "")]
    devices = fleet.devices
    started = 0
    try:
        for size in sizes:
            begin = time.monotonic()
            for index, device in enumerate(devices[started:size]):
                device.start("127.0.0.1", server.device_port, delay=index / ramp)
            started = size
            while sum(d.connected.is_set() for d in devices[:size]) < size:
                if time.monotonic() - begin > 600:
                    raise RuntimeError(f"only part of {size} devices connected: {fleet.stats()}")
                await asyncio.sleep(0.2)
            took = time.monotonic() - begin
            await asyncio.sleep(3.0)  # let the writes and the allocator settle
            per_device = (rss_bytes(server.pid) - baseline) / size
            rows.append(
                (
                    f"memory per connected device at {size:,}",
                    f"{per_device / 1024:.1f} KB",
                    "goal under 16 KB, aim under 8 KB",
                )
            )
            rows.append((f"time to connect the devices up to {size:,}", f"{took:.1f} s", f"ramp {ramp:g}/s"))
    finally:
        await fleet.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--keys-dir", type=Path, default=Path("sim-keys-bench"))
    parser.add_argument("--ramp", type=float, default=400.0, help="connections per second")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    ensure_file_limit(max(sizes) + 200)
    with cyan_serve() as server:
        fleet = Fleet.load_or_create(
            args.keys_dir, max(sizes), server.public_key, app=AppSpec.minimal(), config=SimConfig(goodbye_on_stop=False)
        )
        specs = [device.spec for device in fleet.devices]
        register(server.data_dir, [s.private_key for s in specs], ids=[s.device_id for s in specs])
        rows = asyncio.run(run(server, fleet, sizes, args.ramp))
    print(table("Idle connected devices, one cyan serve process", rows))


if __name__ == "__main__":
    main()
