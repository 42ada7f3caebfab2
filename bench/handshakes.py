"""Handshake throughput of `cyan serve`, and its CPU per handshake against the bare RSA cost.

    .venv/bin/python bench/handshakes.py [--seconds 10] [--concurrency 64] [--devices 200]

A load generator (this process) opens connections that each run the device side of the handshake with the
protocol core (nonce, 256-byte identity, 384-byte answer, Hello, server Hello) and close. Measured in the
same run: the server's CPU time per handshake (from /proc) and the bare cost of its two RSA-2048 private
operations (decrypt the identity message, sign the session key) done directly with OpenSSL.

    .venv/bin/python bench/handshakes.py --callgrind 200

The same handshakes counted in instructions instead of timed: `cyan serve --workers 0` runs under
`valgrind --tool=callgrind`, counting only while the handshakes run, and the count per handshake is set beside
the count of its own two RSA private operations (OpenSSL's EVP_PKEY_decrypt and EVP_PKEY_sign) in the same
run. A count does not move with the other work on a shared machine, so this is the figure to compare a change
by. It leaves out the kernel's share (the sockets' system calls) and counts an instruction of the
interpreter the same as one of the big-number code, which does more per cycle: the CPU-time ratio above is
the larger one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import (
    Callgrind,
    cyan_serve,
    keys,
    register,
    server_cpu_seconds,
    table,
    thread_cpu_seconds,
    user_system_seconds,
)
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo

from cyan.keys import generate_server_key
from cyan.protocol import DeviceConnection, ServerHelloReceived
from cyan.protocol.handshake import build_identity_message

#: /proc counts CPU time in clock ticks (10 ms): the split by thread is coarser than the total.
CLOCK_NOTE = "10 ms ticks"


def bare_rsa_per_handshake(rounds: int = 400) -> float:
    key = generate_server_key()
    message = build_identity_message(key.public_key(), os.urandom(40), os.urandom(12), None, os.urandom)
    digest = os.urandom(20)
    start = time.process_time()
    for _ in range(rounds):
        key.decrypt(message, padding.PKCS1v15())
        key.sign(digest, padding.PKCS1v15(), NoDigestInfo())
    return (time.process_time() - start) / rounds


async def one_handshake(
    port: int, device_id: str, device_key: rsa.RSAPrivateKey, server_key: rsa.RSAPublicKey
) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = DeviceConnection(bytes.fromhex(device_id), device_key, server_key, time.time())
    try:
        while True:
            data = await reader.read(4096)
            if not data:
                raise ConnectionError("closed during the handshake")
            conn.receive_data(data, time.time())
            out = conn.data_to_send()
            if out:
                writer.write(out)
            while (event := conn.next_event()) is not None:
                if isinstance(event, ServerHelloReceived):
                    return time.perf_counter() - started
    finally:
        writer.close()


async def load(
    port: int,
    ids: list[str],
    device_keys: list[rsa.RSAPrivateKey],
    server_key: rsa.RSAPublicKey,
    *,
    seconds: float,
    concurrency: int,
) -> tuple[int, int, list[float]]:
    done = failed = 0
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        nonlocal done, failed
        n = offset
        while time.monotonic() < stop:
            index = n % len(ids)
            try:
                latencies.append(await one_handshake(port, ids[index], device_keys[index], server_key))
                done += 1
            except (OSError, ConnectionError):
                failed += 1
            n += concurrency

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done, failed, latencies


async def sequential(
    port: int, ids: list[str], keys_: list[rsa.RSAPrivateKey], server_key: rsa.RSAPublicKey, n: int
) -> int:
    """`n` handshakes, two at a time (the server under valgrind runs ~50x slower than it does natively)."""
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        for index in range(offset, n, 2):
            await one_handshake(port, ids[index % len(ids)], keys_[index % len(keys_)], server_key)
            done += 1

    await asyncio.gather(worker(0), worker(1))
    return done


def callgrind(handshakes: int, device_keys: list[rsa.RSAPrivateKey]) -> None:
    with tempfile.TemporaryDirectory(prefix="cyan-callgrind-") as tmp:
        counter = Callgrind(Path(tmp))
        with cyan_serve("--workers", "0", wrap=counter.wrap, start_timeout=300) as server:
            counter.pid = server.pid
            ids = register(server.data_dir, device_keys)
            # Warm up uncounted (imports, caches), then count only the measured handshakes.
            asyncio.run(sequential(server.device_port, ids, device_keys, server.public_key, 20))
            with counter.counting():
                done = asyncio.run(sequential(server.device_port, ids, device_keys, server.public_key, handshakes))
        annotated = counter.annotated(1)
    total = counter.total(annotated)
    rsa_ops = counter.inclusive(annotated, "EVP_PKEY_decrypt") + counter.inclusive(annotated, "EVP_PKEY_sign")
    if not rsa_ops:
        raise RuntimeError("callgrind's output has no RSA private operations")
    print(
        table(
            f"Handshakes counted by callgrind: {done}, cyan serve --workers 0 (user-space instructions)",
            [
                ("server instructions per handshake", f"{total / done / 1e6:.2f} M", ""),
                ("of which its two RSA private operations", f"{rsa_ops / done / 1e6:.2f} M", "same run"),
                ("the rest (Python, asyncio, records, SQLite)", f"{(total - rsa_ops) / done / 1e6:.2f} M", ""),
                ("server instructions / its RSA operations", f"{total / rsa_ops:.2f}x", "goal at most 1.6x"),
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None, help="cyan serve --workers (default: its own)")
    parser.add_argument("--device-processes", type=int, default=0, help="cyan serve --device-processes")
    parser.add_argument(
        "--server-cores", default="", help="run cyan serve on these cores only (taskset -c), e.g. 0 or 0,1"
    )
    parser.add_argument(
        "--callgrind", type=int, default=0, metavar="N", help="count N handshakes' instructions instead (valgrind)"
    )
    args = parser.parse_args()

    if args.callgrind:
        callgrind(args.callgrind, keys(20))
        return
    device_keys = keys(args.devices)
    bare = bare_rsa_per_handshake()
    extra: tuple[str, ...] = () if args.workers is None else ("--workers", str(args.workers))
    if args.device_processes:
        extra += ("--device-processes", str(args.device_processes))
    wrap = ("taskset", "-c", args.server_cores) if args.server_cores else ()
    with cyan_serve(*extra, wrap=wrap) as server:
        ids = register(server.data_dir, device_keys)
        # Warm up (imports, caches, the database), then measure.
        asyncio.run(load(server.device_port, ids, device_keys, server.public_key, seconds=1.0, concurrency=8))
        cpu_before = server_cpu_seconds(server.pid)
        threads_before = thread_cpu_seconds(server.pid)
        user_before, system_before = user_system_seconds(server.pid)
        load_before = time.process_time()
        wall = time.perf_counter()
        done, failed, latencies = asyncio.run(
            load(
                server.device_port,
                ids,
                device_keys,
                server.public_key,
                seconds=args.seconds,
                concurrency=args.concurrency,
            )
        )
        wall = time.perf_counter() - wall
        server_cpu = server_cpu_seconds(server.pid) - cpu_before
        threads_after = thread_cpu_seconds(server.pid)
        user_after, system_after = user_system_seconds(server.pid)
        load_cpu = time.process_time() - load_before
    per_handshake = server_cpu / max(done, 1)
    load_per_handshake = load_cpu / max(done, 1)
    cores = os.cpu_count() or 1
    workers = "its default" if args.workers is None else str(args.workers)
    split = " / ".join(
        f"{(threads_after[role] - threads_before[role]) / max(done, 1) * 1000:.2f}" for role in threads_after
    )
    latencies.sort()
    print(
        table(
            f"Handshakes: {done} in {wall:.1f} s, {failed} failed, concurrency {args.concurrency}, "
            f"cyan serve --workers {workers} --device-processes {args.device_processes}"
            f"{' on cores ' + args.server_cores if args.server_cores else ''}, "
            f"{cores} cores shared with this load generator",
            [
                (
                    "handshakes per second",
                    f"{done / wall:,.0f}",
                    "goal 2,500/s; 430/s original Node.js server; 3/s maintained fork",
                ),
                ("server CPU per handshake", f"{per_handshake * 1000:.2f} ms", f"bare RSA {bare * 1000:.2f} ms"),
                ("server CPU / bare RSA", f"{per_handshake / bare:.2f}x", "goal at most 1.6x"),
                (
                    "server CPU per handshake, user / system",
                    f"{(user_after - user_before) / max(done, 1) * 1000:.2f} / "
                    f"{(system_after - system_before) / max(done, 1) * 1000:.2f} ms",
                    "the system share is the sockets' (the kernel's)",
                ),
                (
                    "server CPU per handshake by thread",
                    f"{split} ms",
                    " / ".join(threads_after) + f" ({CLOCK_NOTE})",
                ),
                (
                    "load generator CPU per handshake",
                    f"{load_per_handshake * 1000:.2f} ms",
                    f"server {per_handshake * 1000:.2f} ms",
                ),
                (
                    f"bound of {cores} cores for server + load",
                    f"{cores / (per_handshake + load_per_handshake):,.0f}/s",
                    f"bare RSA alone {cores / bare:,.0f}/s",
                ),
                (
                    "latency p50 / p99",
                    f"{statistics.median(latencies) * 1000:.1f} / "
                    f"{latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms",
                    "",
                ),
            ],
        )
    )


if __name__ == "__main__":
    main()
