"""DTLS handshakes of `cyan serve` for UDP devices, its CPU per handshake against the bare P-256 cost, and the
memory an idle UDP device costs it.

    .venv/bin/python bench/udp_handshakes.py [--seconds 10] [--concurrency 32] [--devices 200] [--idle 10000]

A load generator (this process) runs the device side with the DTLS core and the datagram device role
(`cyan.sim.UdpVirtualDevice`): cookie exchange, full handshake with a raw public key and a connection id,
the confirmable Hello and its ACK; then the next one. Measured in the same run: the server's CPU time per
handshake (from /proc), and the bare cost of the server's two P-256 private operations per handshake (one
ECDHE key agreement with a fresh key, one ECDSA signature) done directly with OpenSSL. Then `--idle` devices
connect and stay (each with its own socket): the server's resident memory before and after, per device.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path

from _common import cyan_serve, free_udp_port, rss_bytes, server_cpu_seconds, table
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from cyan.cloud.models import DeviceRecord
from cyan.keys import fingerprint, load_ec_public_key, udp_public_key_der
from cyan.sim import UdpVirtualDevice
from cyan.store import SqliteStore


def bare_p256_per_handshake(rounds: int = 2000) -> float:
    """ECDHE (a fresh key and the agreement) plus one ECDSA-SHA256 signature: the server's private-key work
    in one handshake, by OpenSSL through `cryptography`."""
    server = ec.generate_private_key(ec.SECP256R1())
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    data = os.urandom(200)
    start = time.process_time()
    for _ in range(rounds):
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        ephemeral.exchange(ec.ECDH(), peer)
        server.sign(data, ec.ECDSA(hashes.SHA256()))
    return (time.process_time() - start) / rounds


def device_id(n: int) -> bytes:
    return (0xDE7C000000 + n).to_bytes(12, "big")


def register(data_dir: Path, count: int) -> list[ec.EllipticCurvePrivateKey]:
    device_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(count)]

    async def run() -> None:
        async with SqliteStore(data_dir / "cyan.db") as store:
            records = []
            for n, key in enumerate(device_keys):
                der = udp_public_key_der(key)
                records.append(
                    DeviceRecord(id=device_id(n).hex(), public_key_der=der, key_fingerprint=fingerprint(der))
                )
            for start in range(0, len(records), 5000):
                await store.devices.add_many(records[start : start + 5000])

    asyncio.run(run())
    return device_keys


async def one_handshake(port: int, n: int, key: ec.EllipticCurvePrivateKey, server: ec.EllipticCurvePublicKey) -> float:
    started = time.perf_counter()
    device = UdpVirtualDevice(device_id(n), key, server)
    await device.start("127.0.0.1", port)
    try:
        await asyncio.wait_for(device.connected.wait(), 30)
    finally:
        await device.stop()
    return time.perf_counter() - started


async def load(
    port: int,
    device_keys: list[ec.EllipticCurvePrivateKey],
    server: ec.EllipticCurvePublicKey,
    seconds: float,
    width: int,
) -> tuple[int, int, list[float]]:
    done = failed = 0
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done, failed
        n = offset
        while time.monotonic() < stop:
            index = n % len(device_keys)
            try:
                latencies.append(await one_handshake(port, index, device_keys[index], server))
                done += 1
            except (OSError, TimeoutError):
                failed += 1
            n += width

    await asyncio.gather(*(worker(i) for i in range(width)))
    return done, failed, latencies


async def idle_fleet(
    port: int, device_keys: list[ec.EllipticCurvePrivateKey], server: ec.EllipticCurvePublicKey, width: int
) -> list[UdpVirtualDevice]:
    devices = [UdpVirtualDevice(device_id(n), key, server) for n, key in enumerate(device_keys)]
    gate = asyncio.Semaphore(width)

    async def connect(device: UdpVirtualDevice) -> None:
        async with gate:
            await device.start("127.0.0.1", port)
            await asyncio.wait_for(device.connected.wait(), 120)

    await asyncio.gather(*(connect(d) for d in devices))
    return devices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--idle", type=int, default=10000)
    args = parser.parse_args()

    bare = bare_p256_per_handshake()
    port = free_udp_port()
    with cyan_serve("--device-udp-port", str(port)) as server:
        public = load_ec_public_key((server.data_dir / "udp_server_public_key.der").read_bytes())
        device_keys = register(server.data_dir, max(args.devices, args.idle))
        asyncio.run(load(port, device_keys[: args.devices], public, 1.0, 4))  # warm up
        cpu_before = server_cpu_seconds(server.pid)
        load_before = time.process_time()
        wall = time.perf_counter()
        done, failed, latencies = asyncio.run(
            load(port, device_keys[: args.devices], public, args.seconds, args.concurrency)
        )
        wall = time.perf_counter() - wall
        server_cpu = server_cpu_seconds(server.pid) - cpu_before
        load_cpu = time.process_time() - load_before

        rss_before = rss_bytes(server.pid)

        async def hold() -> tuple[int, int]:
            devices = await idle_fleet(port, device_keys[: args.idle], public, args.concurrency)
            await asyncio.sleep(2.0)  # the records written behind, the sessions settled
            connected = sum(d.connected.is_set() for d in devices)
            rss = rss_bytes(server.pid)
            for device in devices:
                await device.stop()
            return connected, rss

        idle_started = time.perf_counter()
        connected, rss_after = asyncio.run(hold()) if args.idle else (0, rss_before)
        idle_wall = time.perf_counter() - idle_started
    per_handshake = server_cpu / max(done, 1)
    cores = os.cpu_count() or 1
    latencies.sort()
    rows = [
        ("handshakes per second", f"{done / wall:,.0f}", f"{cores} cores shared with the load generator"),
        (
            "server CPU per handshake",
            f"{per_handshake * 1000:.2f} ms",
            f"bare P-256 (ECDHE + ECDSA sign) {bare * 1000:.3f} ms",
        ),
        ("server CPU / bare P-256", f"{per_handshake / bare:.1f}x", ""),
        ("load generator CPU per handshake", f"{load_cpu / max(done, 1) * 1000:.2f} ms", "the device side in Python"),
        (
            "latency p50 / p99",
            f"{statistics.median(latencies) * 1000:.1f} / {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms",
            "cookie, handshake, Hello and its ACK",
        ),
    ]
    if args.idle:
        rows.append(
            (
                f"server memory per idle UDP device ({connected:,} connected)",
                f"{(rss_after - rss_before) / max(connected, 1) / 1024:.1f} KiB",
                f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB; connected in {idle_wall:.0f} s",
            )
        )
    print(
        table(
            f"UDP (DTLS 1.2) handshakes: {done} in {wall:.1f} s, {failed} failed, concurrency {args.concurrency}",
            rows,
        )
    )


if __name__ == "__main__":
    main()
