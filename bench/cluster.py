"""One node against three, in one run: `cyan serve` processes on PostgreSQL and Redis, the three behind HAProxy
(deploy/haproxy.cfg), driven by simulated devices from this process over loopback.

    .venv/bin/python bench/cluster.py [--devices 1000] [--samples 200]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/0]

Measured for one node (devices connect to it directly) and for three (devices connect through HAProxy):

- handshakes per second: every device connecting at once, from the first connection to the last session;
- function call p50/p99 through the API: to the node that holds the device (same node) and, with three, to
  another node (cross node: the call travels over Redis to the holder and back);
- event publish -> SSE: a device publishes, a stream on another node (with one node: the same node) receives;
- recovery, three nodes: `kill -9` of one node, until every device has a session again through the other two,
  beside the time those two took for as many handshakes in the first measurement.

Each configuration gets a fresh database on the --postgres server (dropped afterwards) and its own Redis key
prefix. The device side's RSA work runs here, on the same cores as the nodes, PostgreSQL and Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis
from _common import table
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from cyan.app import Actor, Application
from cyan.cloud.models import DeviceRecord, Role
from cyan.keys import (
    encode_ec_private_key_pem,
    encode_private_key_pem,
    fingerprint,
    generate_device_key,
    generate_ec_key,
    generate_server_key,
    load_private_key,
    public_key_der,
    write_private_key_file,
)
from cyan.sim import AppSpec, Fleet, SimConfig, VirtualDeviceSpec
from cyan.store import open_store

CYAN = Path(sys.executable).with_name("cyan")
HAPROXY_CFG = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.cfg"
OWNER = "bench@example.com"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"still not {what} after {timeout:g} s")
        time.sleep(0.05)


@dataclass
class Node:
    index: int
    data_dir: Path
    database: str
    bus: str
    device_port: int = field(default_factory=_free_port)
    api_port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def node_id(self) -> str:
        return f"node{self.index}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        env = {**os.environ, "CYAN_ADDRESS_BURST": "1000000", "CYAN_ADDRESS_RATE": "1000000"}
        argv = [str(CYAN), "serve", "--data-dir", str(self.data_dir), "--device-host", "127.0.0.1"]
        argv += ["--device-port", str(self.device_port), "--api-host", "127.0.0.1", "--api-port", str(self.api_port)]
        argv += ["--database", self.database, "--bus", self.bus, "--node-id", self.node_id]
        argv += ["--public-address", "127.0.0.1"]
        with (self.data_dir / "serve.log").open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise SystemExit(f"{self.node_id} exited: {(self.data_dir / 'serve.log').read_text()[-2000:]}")
        return _accepts(self.api_port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(180)
            except subprocess.TimeoutExpired:
                # Said, not hidden: a node that does not stop in time is itself a figure of the run.
                print(f"{self.node_id} did not stop within 180 s of SIGTERM; killed", file=sys.stderr)
                self.process.kill()
                self.process.wait(30)


@contextmanager
def _database(admin_url: str) -> Iterator[str]:
    admin = make_url(admin_url).set(drivername="postgresql+asyncpg")
    name = f"cyan_bench_{secrets.token_hex(4)}"

    async def run(statement: str) -> None:
        engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _specs(count: int) -> list[VirtualDeviceSpec]:
    # A few keys shared by the fleet: making thousands of RSA keys is not what is measured.
    keys = [generate_device_key() for _ in range(8)]
    app = AppSpec(periodic=())
    return [VirtualDeviceSpec(device_id=f"be{i:022x}", private_key=keys[i % len(keys)], app=app) for i in range(count)]


async def _register(database: str, specs: list[VirtualDeviceSpec]) -> str:
    store = open_store(database)
    await store.open()
    try:
        app = Application(store)
        await app.accounts.create_user(Actor.operator(), OWNER, "correct horse battery", role=Role.ADMIN)
        token = (await app.accounts.create_token(Actor.operator(), OWNER)).token
        now = datetime.now(UTC)
        records = []
        for spec in specs:
            der = public_key_der(spec.private_key.public_key())
            records.append(
                DeviceRecord(
                    id=spec.device_id, owner=OWNER, public_key_der=der, key_fingerprint=fingerprint(der), created_at=now
                )
            )
        for start in range(0, len(records), 1000):
            await store.devices.add_many(records[start : start + 1000])
        return token
    finally:
        await store.close()


def _holders(redis_url: str, prefix: str) -> dict[str, str]:
    client = redis.Redis.from_url(redis_url)
    try:
        found = {}
        keys = list(client.scan_iter(match=f"{prefix}presence:*", count=5000))
        for key, value in zip(keys, client.mget(keys) if keys else [], strict=True):
            device = key.decode().removeprefix(f"{prefix}presence:")
            if value is not None and "/" not in device:
                found[device] = str(json.loads(value)[0])
        return found
    finally:
        client.close()


@dataclass
class Figures:
    handshakes: float = 0.0
    call_same: tuple[float, float] = (0.0, 0.0)
    call_cross: tuple[float, float] = (0.0, 0.0)
    event: tuple[float, float] = (0.0, 0.0)
    #: Seconds until every device had a session again, and how many devices the killed node held.
    recovery: tuple[float, int] = (0.0, 0)


def _p50_p99(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000


async def _connect_all(fleet: Fleet, port: int) -> float:
    started = time.perf_counter()
    fleet.start("127.0.0.1", port)
    if not await fleet.wait_connected(timeout=600):
        raise SystemExit("the fleet did not connect within 10 minutes")
    return len(fleet.devices) / (time.perf_counter() - started)


async def _calls(client: httpx.AsyncClient, api: str, token: str, devices: list[str], count: int) -> list[float]:
    samples = []
    headers = {"Authorization": f"Bearer {token}"}
    for n in range(count):
        device = devices[n % len(devices)]
        started = time.perf_counter()
        answer = await client.post(f"{api}/v1/devices/{device}/setArg", data={"arg": "x"}, headers=headers)
        samples.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise SystemExit(f"call failed: {answer.status_code} {answer.text}")
    return samples


async def _event_latency(fleet: Fleet, api: str, token: str, devices: list[str], count: int) -> list[float]:
    """A device publishes, the stream on `api` receives; one event at a time, each from the next device (the
    firmware sends at most one event a second)."""
    arrived: asyncio.Queue[float] = asyncio.Queue()
    opened = asyncio.Event()

    async def read() -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client,
            client.stream("GET", f"{api}/v1/devices/events/bench", headers={"Authorization": f"Bearer {token}"}) as r,
        ):
            async for line in r.aiter_lines():
                if line.startswith(":ok"):
                    opened.set()
                elif line.startswith("data: "):
                    sent = float(json.loads(line[6:])["data"])
                    arrived.put_nowait(time.perf_counter() - sent)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        await asyncio.wait_for(opened.wait(), 10)
        samples = []
        for n in range(count):
            device = fleet[devices[n % len(devices)]]
            if not device.publish("bench", repr(time.perf_counter())):
                continue
            samples.append(await asyncio.wait_for(arrived.get(), 10))
        return samples
    finally:
        reader.cancel()
        with suppress(asyncio.CancelledError, httpx.HTTPError):
            await reader


@contextmanager
def _cloud(args: argparse.Namespace, count: int, root: Path) -> Iterator[tuple[list[Node], str, str]]:
    prefix = f"cyan-bench-{secrets.token_hex(4)}:"
    bus = f"{args.redis}?prefix={prefix}&lease=5"
    pem = encode_private_key_pem(generate_server_key())
    udp_pem = encode_ec_private_key_pem(generate_ec_key())  # every node presents the same keys
    with _database(args.postgres) as database:
        nodes = []
        for index in range(1, count + 1):
            data = root / f"{count}-node{index}"
            data.mkdir(parents=True)
            write_private_key_file(data / "server_key.pem", pem)
            write_private_key_file(data / "udp_server_key.pem", udp_pem)
            nodes.append(Node(index, data, database, bus))
        try:
            nodes[0].start()
            _wait(nodes[0].ready, "node1 serving")
            for node in nodes[1:]:
                node.start()
            for node in nodes[1:]:
                _wait(node.ready, f"{node.node_id} serving")
            yield nodes, database, prefix
        finally:
            for node in nodes:
                node.stop()
            client = redis.Redis.from_url(args.redis)
            keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
            if keys:
                client.delete(*keys)
            client.close()


@contextmanager
def _haproxy(nodes: list[Node], root: Path) -> Iterator[int]:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        raise SystemExit("HAProxy is not installed: apt-get install haproxy")
    device_port, api_port = _free_port(), _free_port()
    env = {**os.environ, "CYAN_LB_DEVICE": f"127.0.0.1:{device_port}", "CYAN_LB_API": f"127.0.0.1:{api_port}"}
    for node in nodes:
        env[f"CYAN_NODE{node.index}_DEVICE"] = f"127.0.0.1:{node.device_port}"
        env[f"CYAN_NODE{node.index}_API"] = f"127.0.0.1:{node.api_port}"
        env[f"CYAN_NODE{node.index}_API_PORT"] = str(node.api_port)
    with (root / "haproxy.log").open("ab") as log:
        process = subprocess.Popen([haproxy, "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=log, stderr=log)
    try:
        _wait(lambda: _accepts(device_port), "HAProxy listening", 20)
        yield device_port
    finally:
        process.terminate()
        process.wait(10)


async def _measure(
    args: argparse.Namespace, nodes: list[Node], device_port: int, database: str, prefix: str
) -> Figures:
    specs = _specs(args.devices)
    token = await _register(database, specs)
    fleet = Fleet(specs, _server_public(nodes[0]), config=SimConfig(backoff_scale=0.2))
    results = Figures()
    try:
        results.handshakes = await _connect_all(fleet, device_port)
        deadline = time.monotonic() + 60
        while len(held := _holders(args.redis, prefix)) < len(specs) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        by_node: dict[str, list[str]] = {}
        for device, node in held.items():
            by_node.setdefault(node, []).append(device)
        first = nodes[0]
        local = by_node.get(first.node_id, [])[: args.samples]
        async with httpx.AsyncClient(timeout=30) as client:
            await _calls(client, first.api, token, local, 10)  # warm-up
            results.call_same = _p50_p99(await _calls(client, first.api, token, local, args.samples))
            if len(nodes) > 1:
                remote = by_node.get(nodes[1].node_id, [])[: args.samples]
                await _calls(client, first.api, token, remote, 10)
                results.call_cross = _p50_p99(await _calls(client, first.api, token, remote, args.samples))
        # Events from devices held by the last node, to a stream on the first (the same node with one).
        publishers = by_node.get(nodes[-1].node_id, [])
        results.event = _p50_p99(await _event_latency(fleet, first.api, token, publishers, args.samples))
        if len(nodes) > 1:
            victim = nodes[-1]
            moved = len(by_node.get(victim.node_id, []))
            started = time.perf_counter()
            victim.stop(signal.SIGKILL)
            survivors = {n.node_id for n in nodes[:-1]}
            while True:
                if all(d.connected.is_set() for d in fleet.devices):
                    held = _holders(args.redis, prefix)
                    if len(held) >= len(specs) and set(held.values()) <= survivors:
                        break
                await asyncio.sleep(0.1)
            results.recovery = (time.perf_counter() - started, moved)
    finally:
        await fleet.stop()
    return results


def _server_public(node: Node) -> rsa.RSAPublicKey:
    return load_private_key((node.data_dir / "server_key.pem").read_bytes()).public_key()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200, help="calls and events timed per measure")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cyan-bench-cluster-"))
    try:
        with _cloud(args, 1, root) as (nodes, database, prefix):
            one = asyncio.run(_measure(args, nodes, nodes[0].device_port, database, prefix))
        with _cloud(args, 3, root) as (nodes, database, prefix), _haproxy(nodes, root) as port:
            three = asyncio.run(_measure(args, nodes, port, database, prefix))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def ms(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.2f} / {pair[1]:.2f} ms"

    seconds, moved = three.recovery
    needed = moved / three.handshakes
    rows = [
        (
            "handshakes per second, 3 nodes behind HAProxy",
            f"{three.handshakes:,.0f}/s",
            f"1 node: {one.handshakes:,.0f}/s",
        ),
        ("function call, same node, p50 / p99", ms(three.call_same), f"1 node: {ms(one.call_same)}"),
        ("function call, cross node, p50 / p99", ms(three.call_cross), f"same node: {ms(three.call_same)}"),
        ("event publish -> SSE on another node, p50 / p99", ms(three.event), f"1 node, same node: {ms(one.event)}"),
        (
            f"recovery after kill -9 of a node holding {moved} of {args.devices}",
            f"{seconds:.1f} s",
            f"{moved} handshakes at the 3-node rate: {needed:.1f} s",
        ),
    ]
    print(table(f"bench/cluster.py: {args.devices} devices, {args.samples} samples", rows))


if __name__ == "__main__":
    main()
