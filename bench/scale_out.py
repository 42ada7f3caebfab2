"""The scale-out engines: transactions and writes per second on PostgreSQL from one and two nodes (beside
SQLite), and the Redis bus's event, request and presence latencies between two nodes.

    .venv/bin/python bench/scale_out.py [--seconds 3] [--concurrency 8]
        [--postgres postgresql://postgres@127.0.0.1/test] [--redis redis://127.0.0.1:6379/0]

Each node is a process of its own with its own PostgresStore (pool of 10). A fresh database is created for
the run on the --postgres server and dropped afterwards; Redis keys go under a prefix of their own.

- "handshake transaction": what `session_proven` does on every connection that proves its key: in a
  transaction, read the device and its re-key window, write nothing.
- "read-modify-write transaction": read a device, save it, add an audit entry.
- "attempt, one statement": record one connection attempt (a write outside transactions, holding the
  cluster's write lock shared) against the same insert made inside a transaction (holding it exclusively).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from _common import table
from sqlalchemy import URL, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from cyan.bus import RedisBus, RedisOptions
from cyan.cloud.models import AttemptOutcome, AuditEntry, CloudEvent, ConnectionAttempt, DeviceRecord
from cyan.cloud.ports import Store
from cyan.store import open_store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEVICES = 1000


def _attempt(device_id: str) -> ConnectionAttempt:
    return ConnectionAttempt(T0, "192.0.2.1:1234", AttemptOutcome.CONNECTED, "session", None, None, device_id)


async def _handshake(store: Store, device_id: str) -> None:
    async with store.transaction() as tx:
        await tx.keys.get_rekey(device_id)
        await tx.devices.get(device_id)


async def _read_modify_write(store: Store, device_id: str) -> None:
    async with store.transaction() as tx:
        device = await tx.devices.get(device_id)
        assert device is not None
        device.hello_flags = (device.hello_flags or 0) + 1
        await tx.devices.save(device)
        await tx.audit.add(AuditEntry(T0, device_id, "bench", "bench"))


async def _attempt_alone(store: Store, device_id: str) -> None:
    await store.attempts.add([_attempt(device_id)])


async def _attempt_in_transaction(store: Store, device_id: str) -> None:
    async with store.transaction() as tx:
        await tx.attempts.add([_attempt(device_id)])


WORK: dict[str, Callable[[Store, str], Awaitable[None]]] = {
    "handshake transaction": _handshake,
    "read-modify-write transaction": _read_modify_write,
    "attempt, one statement": _attempt_alone,
    "attempt, in a transaction": _attempt_in_transaction,
}


async def _node(location: str, work: str, seconds: float, concurrency: int, node: int) -> int:
    store = open_store(location)
    await store.open()
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(index: int) -> None:
        nonlocal done
        n = index
        while time.monotonic() < deadline:
            # Each node works on devices of its own, as nodes hold different devices.
            await WORK[work](store, f"{(node * 500 + n % 500) % DEVICES:024x}")
            done += 1
            n += concurrency

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        await store.close()
    return done


def _run_node(args: tuple[str, str, float, int, int]) -> int:
    return asyncio.run(_node(*args))


async def _fill(location: str) -> None:
    store = open_store(location)
    await store.open()
    try:
        await store.devices.add_many([DeviceRecord(id=f"{n:024x}", hello_flags=0) for n in range(DEVICES)])
    finally:
        await store.close()


def per_second(location: str, work: str, nodes: int, seconds: float, concurrency: int) -> float:
    with multiprocessing.get_context("spawn").Pool(nodes) as pool:
        counts = pool.map(_run_node, [(location, work, seconds, concurrency, n) for n in range(nodes)])
    return sum(counts) / seconds


async def _admin(url: URL, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def stores(postgres: str, seconds: float, concurrency: int) -> list[tuple[str, str, str]]:
    admin = make_url(postgres).set(drivername="postgresql+asyncpg")
    name = f"cyan_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    rows = []
    try:
        pg = admin.set(database=name).render_as_string(hide_password=False)
        with tempfile.TemporaryDirectory() as directory:
            lite = str(Path(directory) / "cyan.db")
            asyncio.run(_fill(pg))
            asyncio.run(_fill(lite))
            for work in WORK:
                sqlite = per_second(lite, work, 1, seconds, concurrency)
                one = per_second(pg, work, 1, seconds, concurrency)
                two = per_second(pg, work, 2, seconds, concurrency)
                rows.append((f"{work}, PostgreSQL, 1 node", f"{one:,.0f}/s", f"SQLite, 1 process: {sqlite:,.0f}/s"))
                rows.append((f"{work}, PostgreSQL, 2 nodes", f"{two:,.0f}/s", f"1 node: {one:,.0f}/s"))
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return rows


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return f"{statistics.median(ordered) * 1000:.2f} / {p99 * 1000:.2f} ms"


async def bus(url: str, count: int) -> list[tuple[str, str, str]]:
    burst = 5000  # within the publisher's outbox (10,000) and the subscriber's queue: nothing is dropped
    options = RedisOptions(prefix=f"cyan-bench-{secrets.token_hex(4)}:", capacity=max(count, burst) + 10)
    a, b = RedisBus(url, node_id="a", options=options), RedisBus(url, node_id="b", options=options)
    await asyncio.gather(a.start(), b.start())
    rows = []
    try:
        heard = b.subscribe("bench/")
        latencies = []
        for n in range(count):
            sent = time.perf_counter()
            a.publish(CloudEvent(f"bench/{n}", "x" * 64, 60, T0, None, "alice", True))
            await heard.get()
            latencies.append(time.perf_counter() - sent)
        rows.append(("event, node a to a subscriber on b (p50 / p99)", _ms(latencies), "one round trip to Redis"))

        async def answer(message: object) -> object:
            return message

        b.serve(answer)
        await a.request("b", "warm-up", timeout=5)
        latencies = []
        for n in range(count):
            sent = time.perf_counter()
            await a.request("b", n, timeout=5)
            latencies.append(time.perf_counter() - sent)
        rows.append(("request a -> b and its reply (p50 / p99)", _ms(latencies), "two round trips and a pop"))
        for name in ("claim", "holder"):
            latencies = []
            for n in range(count):
                sent = time.perf_counter()
                if name == "claim":
                    await a.claim(f"{n:024x}", "s")
                else:
                    await b.holder(f"{n:024x}")
                latencies.append(time.perf_counter() - sent)
            rows.append((f"presence: {name} (p50 / p99)", _ms(latencies), "one script run"))
        started = time.perf_counter()
        for n in range(burst):
            a.publish(CloudEvent(f"bench/{n}", "x" * 64, 60, T0, None, "alice", True))
        for _ in range(burst):
            await heard.get()
        rate = burst / (time.perf_counter() - started)
        rows.append(
            ("events through Redis, a burst", f"{rate:,.0f}/s", f"unsent: {a.unsent}, dropped: {heard.dropped}")
        )
    finally:
        await a.close()
        await b.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement of the stores")
    parser.add_argument("--concurrency", type=int, default=8, help="tasks per node")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--events", type=int, default=2000, help="events, requests and claims timed on the bus")
    args = parser.parse_args()
    print(table("Stores: operations per second", stores(args.postgres, args.seconds, args.concurrency)))
    print()
    print(table("Redis bus, two nodes in one process", asyncio.run(bus(args.redis, args.events))))


if __name__ == "__main__":
    main()
