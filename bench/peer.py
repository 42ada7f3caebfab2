"""Server CPU per function call, variable read and event: Cyan against spark-server (Node.js), same run.

    .venv/bin/python bench/peer.py --peer /tmp/peer/spark-server [--devices 1000] [--ops 1000] [--rounds 2]

The same workload against each server, one after the other, `--rounds` times (the order alternates from
one round to the next): `--devices` simulated devices (`cyan.sim`, Device OS 3.1.0, the same keys for both)
connected to it, then `--ops` function calls (`POST /v1/devices/:id/setArg`) and `--ops` variable reads
(`GET /v1/devices/:id/lastArg`) to the devices in turn, one at a time over one keep-alive HTTP connection,
then `--ops` public events published by the devices in turn, each to one open SSE stream
(`GET /v1/events/benchpeer`), the next published once the last has arrived. (spark-server's device events
reach only that stream, the public one: its streams of a user's events wait for names prefixed with the
user's id, which its devices' events never have.) Every call and read must be answered with 200 and the
device's value, every event must arrive, in order, or the run stops.

Printed for each workload and server: the server's CPU per operation (user + system time of its process and
children, from /proc, before and after the workload, 10 ms ticks), p50 / p99 latency, and the ratio
Cyan / spark-server. Both log as they do by default, to a file: spark-server writes a few lines per request.

`--peer` is an installed particle-iot/spark-server (docs/benchmarks.md says how to install one). Each run
copies it to a temporary directory (its modules linked, its spark-protocol copied with `FIXES` applied,
unless `--as-installed`) with fresh data: a server key, the devices' public keys, a user and its token.
spark-server's device port is fixed at 5683: it must be free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import httpx
from _common import CYAN, RawHttp, cyan_serve, register, server_cpu_seconds
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.sim import AppSpec, Fleet, SimConfig, VirtualDevice, ensure_file_limit, load_or_create_keys

USER, PASSWORD = "bench@example.com", "bench password"
EVENT = "benchpeer"
PEER_DEVICE_PORT = 5683  # spark-protocol's settings.js
WORKLOADS = ("function call", "variable read", "event to SSE")


#: What spark-server needs to keep a session on the Node.js of today, applied to its spark-protocol
#: (file, the text as published, the text fixed, and the text of a file fixed already, left alone):
FIXES = (
    # Node >= 0.12: a decipher's last `read()` in 'readable' returns null; without this check the message's
    # decryption throws. spark-protocol's own fix (github.com/particle-iot/spark-protocol/pull/14), not in
    # the npm release 0.1.6.
    (
        "lib/CryptoStream.js",
        "var chunk = cipher.read();\n\n        if (!ciphertext) {",
        "var chunk = cipher.read();\n        if (!chunk) { return; }\n\n        if (!ciphertext) {",
        "if(chunk){",  # the pull request's form, in its git history after 0.1.6
    ),
    # Node >= 10: once the handshake has piped the socket into the decryption pipeline, `onSocketData` (the
    # socket's 'readable' listener) still writes what it reads into the same pipeline; since Node 10 the data
    # read in a 'readable' listener is emitted as 'data' too, so the pipe writes it as well and every
    # message goes in twice (the sessions end at once: "Invalid CoAP version", "Bad Counter"). The pipe's
    # copy is enough.
    (
        "lib/Handshake.js",
        "            else {\n                if (this.useChunkingStream && this.chunkingIn) {",
        "            else if (this.socket.listenerCount('data') > 0) {\n                // the pipe has written it\n"
        "            }\n            else {\n                if (this.useChunkingStream && this.chunkingIn) {",
        "// the pipe has written it",
    ),
)


def apply_fixes(protocol: Path) -> None:
    for name, published, fixed, done in FIXES:
        path = protocol / name
        text = path.read_text()
        if fixed in text or done in text:
            continue
        if text.count(published) != 1:
            raise RuntimeError(f"{path}: not the published spark-protocol, the fix does not apply")
        path.write_text(text.replace(published, fixed))


@dataclass
class Target:
    """A running server: where devices and the API connect, its key, a token, the pid to measure."""

    name: str
    pid: int
    device_port: int
    api_port: int
    public_key: rsa.RSAPublicKey
    token: str


@dataclass
class Result:
    """One workload on one server in one round: latencies (s) and the server's CPU per operation (s)."""

    latencies: list[float]
    cpu: float


@dataclass
class Totals:
    """Every round's results, by server then workload."""

    rounds: dict[str, dict[str, list[Result]]] = field(default_factory=dict)

    def add(self, server: str, results: dict[str, Result]) -> None:
        for workload, result in results.items():
            self.rounds.setdefault(server, {}).setdefault(workload, []).append(result)


@contextmanager
def cyan_target(fleet_specs: list[tuple[str, rsa.RSAPrivateKey]]) -> Iterator[Target]:
    with cyan_serve() as server:
        subprocess.run(
            [str(CYAN), "users", "add", USER, "--password", PASSWORD, "--data-dir", str(server.data_dir)],
            check=True,
            capture_output=True,
        )
        register(server.data_dir, [key for _, key in fleet_specs], owner=USER, ids=[i for i, _ in fleet_specs])
        response = httpx.post(
            f"http://127.0.0.1:{server.api_port}/oauth/token",
            data={"grant_type": "password", "username": USER, "password": PASSWORD},
            timeout=30,
        )
        response.raise_for_status()
        yield Target(
            "cyan", server.pid, server.device_port, server.api_port, server.public_key, response.json()["access_token"]
        )


def free_port() -> int:
    """A port free on every address, as node listens (on `::`, which takes IPv4 too)."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::", 0))
        port: int = probe.getsockname()[1]
        return port


def read(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")


def accepts(port: int) -> bool:
    """Whether something listens on `port` of loopback."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_node(home: Path, log: IO[bytes]) -> tuple[subprocess.Popen[bytes], int]:
    """`node main.js` in `home`, its API on a free port: the process and the port once both ports accept.

    The port is free when chosen but may be taken before node listens (the machine's other connections
    draw from the same range): then node is started again on another."""
    for _ in range(3):
        api_port = free_port()
        log.seek(0)
        log.truncate()
        process = subprocess.Popen(
            ["node", "main.js"],
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NODE_PORT": str(api_port)},
        )
        deadline = time.monotonic() + 30
        while not ("server started" in (text := read(log)) and accepts(api_port)):
            if "EADDRINUSE" in text and str(api_port) in text:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                raise RuntimeError(f"spark-server did not start: {text}")
            time.sleep(0.05)
        else:
            return process, api_port
        stop(process)
    raise RuntimeError(f"spark-server found no free port: {text}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def peer_target(
    peer: Path, fleet_specs: list[tuple[str, rsa.RSAPrivateKey]], *, fix: bool = True, log_path: Path | None = None
) -> Iterator[Target]:
    """spark-server (`node main.js`) in a copy of `peer` with fresh data: its server key `default_key.pem`
    (in the working directory, where spark-protocol reads it), each device's public key as
    `core_keys/<id>.pub.pem`, and a user with a token in `users/`; its spark-protocol with `FIXES` applied
    unless `fix` is False."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as node does: connections may linger
        try:
            probe.bind(("0.0.0.0", PEER_DEVICE_PORT))
        except OSError as error:
            raise RuntimeError(f"spark-server needs port {PEER_DEVICE_PORT}, which is taken: {error}") from None
    with tempfile.TemporaryDirectory(prefix="cyan-bench-peer-") as tmp:
        home = Path(tmp) / "spark-server"
        shutil.copytree(peer, home, ignore=shutil.ignore_patterns("node_modules", "core_keys", "users", "*.pem"))
        (home / "node_modules").mkdir()
        for module in (peer / "node_modules").iterdir():
            if module.name == "spark-protocol" and fix:
                shutil.copytree(module, home / "node_modules" / module.name)
                apply_fixes(home / "node_modules" / module.name)
            else:
                (home / "node_modules" / module.name).symlink_to(module.resolve())
        server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (home / "default_key.pem").write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (home / "users").mkdir()
        # Its `POST /v1/users` hashes the password with crypto.pbkdf2 without a digest, which Node >= 8 refuses
        # (the request is never answered): the user is written as its RolesController stores one, with a
        # token, which each request then presents (the same lookup as a token from `POST /oauth/token`).
        token, user_id = secrets.token_hex(20), secrets.token_hex(12)
        user = {
            "username": USER,
            "_id": user_id,
            "access_tokens": [
                {"user_id": user_id, "client_id": "spark", "token": token, "expires": None, "_id": token}
            ],
        }
        (home / "users" / f"{USER}.json").write_text(json.dumps(user))
        (home / "core_keys").mkdir()
        for device_id, key in fleet_specs:
            (home / "core_keys" / f"{device_id}.pub.pem").write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        with open(log_path or Path(tmp) / "peer.log", "w+b") as log:
            process, api_port = start_node(home, log)
            try:
                yield Target("spark-server", process.pid, PEER_DEVICE_PORT, api_port, server_key.public_key(), token)
            finally:
                stop(process)


async def workloads(target: Target, devices: list[VirtualDevice], ops: int, warmup: int) -> dict[str, Result]:
    """Connect the devices, warm up, then the three workloads; the devices are stopped at the end."""
    for index, device in enumerate(devices):
        device.start("127.0.0.1", target.device_port, delay=index / 400)
    connected = time.monotonic() + 120
    while sum(d.connected.is_set() for d in devices) < len(devices):
        if time.monotonic() > connected:
            raise RuntimeError(f"{target.name}: {sum(d.connected.is_set() for d in devices)} devices connected")
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)  # the sessions' own start (Describe, subscriptions) settles
    raw = await RawHttp.connect("127.0.0.1", target.api_port)
    results: dict[str, Result] = {}

    async def requests(method: str, path: str, body: bytes, count: int, *, field: str, value: object) -> Result:
        """`count` requests one at a time, each to the next device: 200 and `value` in the answer's `field`."""
        latencies = []
        cpu = server_cpu_seconds(target.pid)
        for n in range(count):
            device = devices[n % len(devices)]
            started = time.perf_counter()
            status, answer = await raw.request(method, path.format(device.device_id), target.token, body)
            latencies.append(time.perf_counter() - started)
            if status != 200 or json.loads(answer).get(field) != value:
                raise RuntimeError(f"{target.name}: {method} {path}: {status} {answer!r}")
        return Result(latencies, (server_cpu_seconds(target.pid) - cpu) / count)

    call = b'{"args":"x"}'
    # setArg returns the argument's length (1); lastArg then holds "x" on every device.
    await requests("POST", "/v1/devices/{}/setArg", call, warmup, field="return_value", value=1)
    await requests("GET", "/v1/devices/{}/lastArg", b"", warmup, field="result", value="x")
    results["function call"] = await requests("POST", "/v1/devices/{}/setArg", call, ops, field="return_value", value=1)
    results["variable read"] = await requests("GET", "/v1/devices/{}/lastArg", b"", ops, field="result", value="x")
    await raw.close()

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{target.api_port}", timeout=30) as client:
        arrived: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
        ready = asyncio.Event()

        async def listen() -> None:
            headers = {"Authorization": f"Bearer {target.token}"}
            async with client.stream("GET", f"/v1/events/{EVENT}", headers=headers, timeout=None) as stream:
                if stream.status_code != 200:
                    raise RuntimeError(f"{target.name}: the event stream answered {stream.status_code}")
                ready.set()
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        arrived.put_nowait((json.loads(line[6:])["data"], time.perf_counter()))

        listener = asyncio.create_task(listen())
        await asyncio.wait_for(ready.wait(), 10)
        await asyncio.sleep(0.2)

        async def events(count: int, offset: int) -> Result:
            """`count` events one at a time: each published by the next device, timed to its arrival."""
            latencies = []
            cpu = server_cpu_seconds(target.pid)
            for n in range(count):
                device = devices[n % len(devices)]
                key = f"e{offset + n}"
                started = time.perf_counter()
                if not device.publish(EVENT, key, private=False):
                    raise RuntimeError(f"{target.name}: the simulated firmware refused a publish (rate limit)")
                data, at = await asyncio.wait_for(arrived.get(), 10)
                if data != key:
                    raise RuntimeError(f"{target.name}: event {data!r} arrived, {key!r} was published")
                latencies.append(at - started)
            return Result(latencies, (server_cpu_seconds(target.pid) - cpu) / count)

        # The firmware allows 4 events a second per device: one round over the fleet at most every 0.25 s.
        await events(min(warmup, len(devices)), 0)
        await asyncio.sleep(1.1)
        measured: list[Result] = []
        for start in range(0, ops, len(devices)):
            began = time.monotonic()
            measured.append(await events(min(len(devices), ops - start), warmup + start))
            if start + len(devices) < ops:
                await asyncio.sleep(max(0.0, 1.1 - (time.monotonic() - began)))
        results["event to SSE"] = Result(
            [s for r in measured for s in r.latencies],
            sum(r.cpu * len(r.latencies) for r in measured) / ops,
        )
        listener.cancel()
        with suppress(asyncio.CancelledError):
            await listener
    return results


async def run_on(target: Target, fleet: Fleet, ops: int, warmup: int) -> dict[str, Result]:
    try:
        return await workloads(target, fleet.devices, ops, warmup)
    finally:
        await fleet.stop()


def milliseconds(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000


def span(values: list[float], digits: int = 0) -> str:
    """`low–high`, or one figure when both round alike."""
    low, high = (f"{value:,.{digits}f}" for value in (min(values), max(values)))
    return low if low == high else f"{low}–{high}"


def report(totals: Totals, title: str) -> str:
    header = ("workload", "server", "CPU per op (µs)", "p50 / p99 (ms)", "CPU Cyan / spark-server")
    rows: list[tuple[str, ...]] = []
    for workload in WORKLOADS:
        cyan, peer = totals.rounds["cyan"][workload], totals.rounds["spark-server"][workload]
        ratios = [c.cpu / p.cpu for c, p in zip(cyan, peer, strict=True) if p.cpu > 0]
        for name, results in (("cyan", cyan), ("spark-server", peer)):
            p50s, p99s = zip(*(milliseconds(r.latencies) for r in results), strict=True)
            rows.append(
                (
                    workload,
                    name,
                    span([r.cpu * 1e6 for r in results]),
                    f"{span(list(p50s), 2)} / {span(list(p99s), 2)}",
                    (span(ratios, 2) + "x" if ratios else "-") if name == "cyan" else "1x",
                )
            )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    rounds = len(next(iter(totals.rounds["cyan"].values())))
    out = [
        f"{title}; {rounds} round(s): ranges over the rounds, the ratio is per round",
        line,
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        line,
        *("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows),
        line,
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", type=Path, required=True, help="an installed particle-iot/spark-server")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--ops", type=int, default=1000, help="calls, reads and events, each")
    parser.add_argument("--warmup", type=int, default=200, help="calls and reads (and events) before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="each server once per round, order alternating")
    parser.add_argument(
        "--as-installed", action="store_true", help="run spark-server without FIXES (its sessions fail on Node >= 10)"
    )
    parser.add_argument("--peer-log", type=Path, help="keep spark-server's output in this file")
    parser.add_argument("--keys-dir", type=Path, default=Path("sim-keys-bench"))
    args = parser.parse_args()
    if not (args.peer / "main.js").is_file() or not (args.peer / "node_modules").is_dir():
        parser.error(f"{args.peer} is not an installed spark-server (main.js and node_modules)")
    ensure_file_limit(args.devices + 200)
    app = replace(AppSpec(), periodic=(), call_event=None)
    config = SimConfig(goodbye_on_stop=False)
    specs = load_or_create_keys(args.keys_dir, args.devices)
    node = subprocess.run(["node", "--version"], check=True, capture_output=True, text=True).stdout.strip()
    totals = Totals()
    for index in range(args.rounds):
        order = ("cyan", "spark-server") if index % 2 == 0 else ("spark-server", "cyan")
        for name in order:
            server = (
                cyan_target(specs)
                if name == "cyan"
                else peer_target(args.peer, specs, fix=not args.as_installed, log_path=args.peer_log)
            )
            with server as target:
                fleet = Fleet.load_or_create(args.keys_dir, args.devices, target.public_key, app=app, config=config)
                results = asyncio.run(run_on(target, fleet, args.ops, args.warmup))
            totals.add(name, results)
            figures = (
                f"{w} {r.cpu * 1e6:.0f} µs, p50 {milliseconds(r.latencies)[0]:.2f} ms" for w, r in results.items()
            )
            print(f"round {index + 1}, {name}: {'; '.join(figures)}", flush=True)
    peer = f"spark-server on Node {node}" + (" as installed" if args.as_installed else ", with FIXES")
    print(report(totals, f"{args.devices:,} devices, {args.ops:,} of each operation, {peer}"))


if __name__ == "__main__":
    main()
