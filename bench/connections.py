"""Connected devices held by one `cyan serve`: memory and CPU per idle device, and the simulator's own cost.

    .venv/bin/python bench/connections.py [--sizes 1000,10000] [--keys-dir /tmp/bench-keys] [--idle 30]
    .venv/bin/python bench/connections.py --sizes 1000,10000,100000 --device-processes 6 --sim-processes 6

The simulator runs in --sim-processes worker processes (each connecting from its own loopback addresses,
127.0.W.2, 127.0.W.3, ..., at most 5,000 devices on each), connects the devices with a ramp and keeps them
idle: each pings 15 s after it last heard from the server (protocol.md §8.1). For each size, once it is
reached and has settled:

- the server's resident memory (from /proc; with --device-processes, the parent's and its children's)
  against its memory before the first device, read after the idle window, when every device has pinged;
- the server's CPU over an idle window, per ping answered, against a bare asyncio echo server answering
  as many small messages a second (bench/_echo.py: the event loop, the socket calls and loopback TCP that
  any Python server pays), and against the protocol core alone answering the same pings in this process
  (one decrypt, one encrypt, CoAP both ways), both measured in the same run;
- the simulator's memory per device and CPU per connection, so it is known not to be the bottleneck.

Every process may hold only as many sockets as its open-file limit allows: a size above it needs device
processes on the server's side and simulator processes on this side. Device keys come from --keys-dir
(created there on the first run, reused after); with more devices than keys, the keys are used again
under new device ids.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import queue
import resource
import time
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

from _common import Server, cyan_serve, device_id, register, rss_bytes, server_cpu_seconds, server_pids, table
from _echo import echo_cpu_per_message
from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.keys import load_public_key, public_key_der
from cyan.protocol import DEVICE_OS_3_1_0, DeviceConnection, DeviceIdentified, ServerConnection
from cyan.protocol.device import DeviceConfig
from cyan.sim import AppSpec, Fleet, SimConfig, ensure_file_limit, load_or_create_keys
from cyan.testing import ConnectionPair, fixed_device_key, fixed_server_key

PING_INTERVAL = 15.0
#: Devices connected from one loopback address at most. Linux picks a connect's port from the even half of
#: its ephemeral range (14,000 of 28,000 ports by default) before the odd half, so past about 14,000
#: connections from one address to the server's port every connect scans the whole even half (measured: 83%
#: of a simulator process's CPU in connect() with about 15,000 devices on its one address).
DEVICES_PER_ADDRESS = 5_000
#: The echo floor's connections at most (one process's sockets), sending the size's whole ping rate.
ECHO_CONNECTIONS = 10_000


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


def server_rss(pid: int) -> int:
    return sum(rss_bytes(p) for p in server_pids(pid))


# -- the simulator's worker processes -----------------------------------------------------------------


def source_addresses(worker: int, devices: int) -> tuple[str, ...]:
    """Loopback addresses for a simulator process's devices, at most `DEVICES_PER_ADDRESS` on each: 127.0.W.2,
    127.0.W.3, ... for worker W - 1."""
    count = max(1, -(-devices // DEVICES_PER_ADDRESS))
    return tuple(f"127.0.{worker + 1}.{2 + n}" for n in range(count))


@dataclass(frozen=True)
class WorkerPlan:
    """What one simulator process runs: devices by index (keys cycled from the key directory)."""

    index: int
    indices: list[int]
    keys_dir: Path
    key_count: int
    port: int
    server_der: bytes
    ramp: float
    ping_interval: float = PING_INTERVAL
    #: Added to the process's niceness: the devices of a real fleet run on machines of their own, and here
    #: they would otherwise take the server's CPU turns whenever they are busy (bench/storm.py).
    nice: int = 0


def sim_worker(
    plan: WorkerPlan,
    commands: multiprocessing.Queue[int | None],
    figures: tuple[Synchronized[int], Synchronized[int], Synchronized[float]],
) -> None:
    """Connect from `source_addresses`; grow to the sizes the parent sends; report connected/RSS/CPU."""
    connected, rss, cpu = figures
    os.nice(plan.nice)
    ensure_file_limit()
    pool = [key for _, key in load_or_create_keys(plan.keys_dir, plan.key_count)]
    specs = Fleet.make_specs(
        [(device_id(i), pool[i % len(pool)]) for i in plan.indices], firmware=DEVICE_OS_3_1_0, app=AppSpec.minimal()
    )
    fleet = Fleet(
        specs,
        load_public_key(plan.server_der),
        config=SimConfig(
            goodbye_on_stop=False,
            source_addresses=source_addresses(plan.index, len(plan.indices)),
            device_config=DeviceConfig(ping_interval=plan.ping_interval),
        ),
    )
    ramp, port = plan.ramp, plan.port

    async def run() -> None:
        loop = asyncio.get_running_loop()
        started = 0
        devices = fleet.devices
        connected.value = 0  # keys loaded, fleet built: ready (the parent waits for every worker)
        while True:
            rss.value = rss_bytes(os.getpid())
            cpu.value = time.process_time()
            connected.value = sum(d.connected.is_set() for d in devices[:started])
            try:
                target = await loop.run_in_executor(None, commands.get, True, 0.5)
            except queue.Empty:
                continue
            if target is None:
                break
            for n, device in enumerate(devices[started:target]):
                device.start("127.0.0.1", port, delay=n / ramp)
            started = max(started, target)
        await fleet.stop()

    asyncio.run(run())


class Simulators:
    """K simulator processes sharing the fleet; the parent only commands and reads their figures."""

    def __init__(
        self,
        *,
        processes: int,
        total: int,
        keys_dir: Path,
        key_count: int,
        port: int,
        server_key: rsa.RSAPublicKey,
        ramp: float,
        ping_interval: float = PING_INTERVAL,
        nice: int = 0,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.commands = [context.Queue() for _ in range(processes)]
        self.connected = [context.Value("q", -1) for _ in range(processes)]  # -1: still loading keys
        self.rss = [context.Value("q", 0) for _ in range(processes)]
        self.cpu = [context.Value("d", 0.0) for _ in range(processes)]
        self.slices = [list(range(n, total, processes)) for n in range(processes)]
        plans = [
            WorkerPlan(
                n,
                self.slices[n],
                keys_dir,
                key_count,
                port,
                public_key_der(server_key),
                ramp / processes,
                ping_interval,
                nice,
            )
            for n in range(processes)
        ]
        self.workers = [
            context.Process(
                target=sim_worker, args=(plans[n], self.commands[n], (self.connected[n], self.rss[n], self.cpu[n]))
            )
            for n in range(processes)
        ]
        for worker in self.workers:
            worker.start()

    def grow_to(self, size: int) -> None:
        for n, commands in enumerate(self.commands):
            commands.put(sum(1 for i in self.slices[n] if i < size))

    def connected_count(self) -> int:
        return sum(max(v.value, 0) for v in self.connected)

    def wait_ready(self) -> None:
        while any(v.value < 0 for v in self.connected):
            if not all(worker.is_alive() for worker in self.workers):
                raise RuntimeError("a simulator process ended while loading its keys")
            time.sleep(0.2)

    def memory(self) -> int:
        return sum(v.value for v in self.rss)

    def cpu_time(self) -> float:
        return float(sum(v.value for v in self.cpu))

    def stop(self) -> None:
        for commands in self.commands:
            commands.put(None)
        for worker in self.workers:
            worker.join(60)
            if worker.is_alive():
                worker.kill()


def measure(
    server: Server,
    sims: Simulators,
    sizes: list[int],
    *,
    idle: float,
    core_ping: float,
    floors: dict[int, float],
    ping_interval: float = PING_INTERVAL,
) -> list[tuple[str, str, str]]:
    sims.wait_ready()
    time.sleep(1.0)
    baseline = server_rss(server.pid)
    parent_baseline = rss_bytes(server.pid)
    sim_baseline = sims.memory()
    rows = [("server memory, no device", f"{baseline / 2**20:.1f} MiB", f"{len(server_pids(server.pid))} processes")]
    previous = 0
    for size in sizes:
        begin = time.monotonic()
        sim_cpu = sims.cpu_time()
        sims.grow_to(size)
        while (count := sims.connected_count()) < size:
            if time.monotonic() - begin > 1800:
                raise RuntimeError(f"only {count:,} of {size:,} devices connected")
            time.sleep(0.5)
        took = time.monotonic() - begin
        sim_cpu = sims.cpu_time() - sim_cpu
        time.sleep(3.0)  # let the writes and the allocator settle
        before, sim_before = server_cpu_seconds(server.pid), sims.cpu_time()
        time.sleep(idle)
        server_idle = server_cpu_seconds(server.pid) - before
        sim_idle = sims.cpu_time() - sim_before
        # Measured once the fleet is idle: with --idle at least the ping interval, every device has pinged.
        per_device = (server_rss(server.pid) - baseline) / size
        in_parent = (rss_bytes(server.pid) - parent_baseline) / size
        sim_per_device = (sims.memory() - sim_baseline) / size
        pings = size * idle / ping_interval
        added = size - previous
        previous = size
        rows += [
            (
                f"server memory per connected device at {size:,}",
                f"{per_device / 1024:.1f} KB",
                "goal under 16 KB, aim under 8 KB"
                + (
                    f"; the parent {in_parent / 1024:.1f} KB, "
                    f"the device processes {(per_device - in_parent) / 1024:.1f} KB"
                    if len(server_pids(server.pid)) > 1
                    else ""
                ),
            ),
            (
                f"server CPU per idle ping at {size:,} ({size / ping_interval:,.0f} pings/s)",
                f"{server_idle / pings * 1e6:.0f} µs",
                f"{server_idle / pings / floors[size]:.2f}x a bare asyncio echo server's {floors[size] * 1e6:.0f} µs "
                f"per message at that rate; the protocol core alone {core_ping * 1e6:.0f} µs",
            ),
            (
                f"server CPU for {size:,} idle devices",
                f"{server_idle / idle * 100:.1f}% of a core",
                f"{server_idle / idle * 100 * 10_000 / size:.1f}% of a core per 10,000 devices",
            ),
            (f"time to connect the devices up to {size:,}", f"{took:.1f} s", ""),
            (f"simulator memory per device at {size:,}", f"{sim_per_device / 1024:.1f} KB", ""),
            (f"simulator CPU per connection (last {added:,})", f"{sim_cpu / added * 1000:.2f} ms", ""),
            (f"simulator CPU per idle ping at {size:,}", f"{sim_idle / pings * 1e6:.0f} µs", ""),
        ]
        # What is measured so far, in case a larger size does not fit the machine.
        print(table(f"So far (up to {size:,} devices)", rows), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--keys-dir", type=Path, default=Path("sim-keys-bench"))
    parser.add_argument("--keys", type=int, default=None, help="how many distinct device keys [one per device]")
    parser.add_argument("--ramp", type=float, default=400.0, help="connections per second, all simulators")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measured per size")
    parser.add_argument("--device-processes", type=int, default=0, help="cyan serve --device-processes")
    parser.add_argument("--sim-processes", type=int, default=1, help="simulator processes")
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=PING_INTERVAL,
        help="seconds between a device's pings [the firmware's 15]",
    )
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    total = max(sizes)
    key_count = min(args.keys or total, total)
    core_ping = core_cost_per_ping()
    # The floor under a ping on these cores, before any device connects: loop, read, write, loopback TCP.
    floors = {size: echo_cpu_per_message(min(size, ECHO_CONNECTIONS), size / args.ping_interval) for size in sizes}
    limit = ensure_file_limit()
    load_or_create_keys(args.keys_dir, key_count)  # created once, here, before the simulators load them
    extra = ("--device-processes", str(args.device_processes)) if args.device_processes else ()
    with cyan_serve(*extra) as server:
        pool = [key for _, key in load_or_create_keys(args.keys_dir, key_count)]
        # Registered as device_id(0), device_id(1)..., the ids the simulators present.
        register(server.data_dir, [pool[i % key_count] for i in range(total)])
        sims = Simulators(
            processes=args.sim_processes,
            total=total,
            keys_dir=args.keys_dir,
            key_count=key_count,
            port=server.device_port,
            server_key=server.public_key,
            ramp=args.ramp,
            ping_interval=args.ping_interval,
        )
        try:
            rows = measure(
                server,
                sims,
                sizes,
                idle=args.idle,
                core_ping=core_ping,
                floors=floors,
                ping_interval=args.ping_interval,
            )
        finally:
            sims.stop()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    print(
        table(
            f"Idle connected devices, one cyan serve ({args.device_processes or 'no'} device processes), "
            f"{args.sim_processes} simulator processes, {key_count:,} device keys, open-file limit {limit:,} "
            f"(hard {hard:,}) per process",
            rows,
        )
    )


if __name__ == "__main__":
    main()
