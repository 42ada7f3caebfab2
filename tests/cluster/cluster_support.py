"""A cloud of `cyan serve` nodes as processes behind HAProxy (deploy/haproxy.cfg), on loopback, and the private
PostgreSQL and Redis servers the tests that restart them start and stop.

Everything is polled for with a deadline; nothing waits a fixed time to let something happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec

from cyan.cloud.models import DeviceRecord
from cyan.keys import (
    encode_ec_private_key_pem,
    encode_private_key_pem,
    fingerprint,
    generate_device_key,
    public_key_der,
    write_private_key_file,
)
from cyan.sim import AppSpec, Fleet, SimConfig, VirtualDeviceSpec
from cyan.testing import fixed_server_key

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def poll(condition: Callable[[], bool], what: str, *, timeout: float = 30.0, interval: float = 0.05) -> float:
    """Wait for `condition`; how long it took. Fails naming `what` after `timeout` seconds."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"still not {what} after {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - start


async def apoll(condition: Callable[[], Any], what: str, *, timeout: float = 30.0, interval: float = 0.05) -> float:
    """`poll` in a running loop; `condition` may be a coroutine function."""
    start = time.monotonic()
    while True:
        outcome = condition()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"still not {what} after {timeout:g} s")
        await asyncio.sleep(interval)


def _cyan() -> list[str]:
    script = Path(sys.executable).with_name("cyan")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from cyan.cli import main; sys.exit(main(sys.argv[1:]))"]


def require_haproxy() -> str:
    """HAProxy from Debian's package; installed here when missing and the tests may (root, apt-get)."""
    found = shutil.which("haproxy")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "haproxy"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            check=False,
            timeout=300,
        )
        found = shutil.which("haproxy")
    if found is None:
        message = "HAProxy is not installed: apt-get install haproxy (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


@dataclass
class Node:
    """One `cyan serve` process."""

    index: int
    data_dir: Path
    database: str
    bus: str
    device_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    #: The firmware directory the nodes share (an update stored by one is sent by another).
    firmware_dir: Path | None = None

    @property
    def node_id(self) -> str:
        return f"node{self.index}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def log(self) -> Path:
        return self.data_dir / "serve.log"

    def start(self, *, wait: bool = True) -> None:
        env = {
            **os.environ,
            # Behind the balancer every device comes from its address: the per-address limits are for the edge.
            "CYAN_ADDRESS_BURST": "100000",
            "CYAN_ADDRESS_RATE": "100000",
            "CYAN_WORKERS": "0",
            "CYAN_PUBLIC_ADDRESS": "127.0.0.1",
        }
        if self.firmware_dir is not None:
            env["CYAN_FIRMWARE_DIR"] = str(self.firmware_dir)
        argv = [
            *_cyan(),
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--device-host",
            "127.0.0.1",
            "--device-port",
            str(self.device_port),
            # HAProxy balances TCP only; each node's UDP port is its own (any free one here).
            "--device-udp-port",
            "0",
            "--api-host",
            "127.0.0.1",
            "--api-port",
            str(self.api_port),
            "--database",
            self.database,
            "--bus",
            self.bus,
            "--node-id",
            self.node_id,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"node {self.node_id} exited ({self.process.returncode}):\n{self.tail()}")
            return _accepts(self.api_port)

        poll(ready, f"node {self.node_id} serving", timeout=timeout)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """`kill -9`: nothing is released, nothing flushed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


@dataclass
class Balancer:
    """HAProxy with the repository's configuration."""

    nodes: list[Node]
    directory: Path
    device_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        haproxy = require_haproxy()
        env = {
            **os.environ,
            "CYAN_LB_DEVICE": f"127.0.0.1:{self.device_port}",
            "CYAN_LB_API": f"127.0.0.1:{self.api_port}",
        }
        for node in self.nodes:
            env[f"CYAN_NODE{node.index}_DEVICE"] = f"127.0.0.1:{node.device_port}"
            env[f"CYAN_NODE{node.index}_API"] = f"127.0.0.1:{node.api_port}"
            env[f"CYAN_NODE{node.index}_API_PORT"] = str(node.api_port)
        with (self.directory / "haproxy.log").open("ab") as log:
            self.process = subprocess.Popen([haproxy, "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=log, stderr=log)

        def listening() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"HAProxy exited: {(self.directory / 'haproxy.log').read_text()}")
            return _accepts(self.device_port) and _accepts(self.api_port)

        poll(listening, "HAProxy listening", timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def prepare_data_dirs(root: Path, count: int) -> list[Path]:
    """A data directory per node, each given the same server key files (the cloud's RSA and P-256 keys)."""
    pem = encode_private_key_pem(fixed_server_key())
    udp_pem = encode_ec_private_key_pem(ec.derive_private_key(0x5E, ec.SECP256R1()))
    dirs = []
    for index in range(1, count + 1):
        data = root / f"node{index}"
        data.mkdir(parents=True)
        write_private_key_file(data / "server_key.pem", pem)
        write_private_key_file(data / "udp_server_key.pem", udp_pem)
        dirs.append(data)
    return dirs


#: A few keys shared by the simulated devices: a key is the device's, but nothing forbids two registrations
#: of one, and making hundreds of RSA keys would be most of the test's time.
_KEYS = 4


def fleet_specs(count: int, *, seed: int = 0) -> list[VirtualDeviceSpec]:
    keys = [generate_device_key() for _ in range(_KEYS)]
    app = AppSpec(periodic=())  # events are published by the test, numbered, not every 10 s
    return [
        VirtualDeviceSpec(
            device_id=f"{seed:04x}{index:020x}", private_key=keys[index % _KEYS], app=app, name=f"d{index}"
        )
        for index in range(count)
    ]


def device_records(specs: list[VirtualDeviceSpec], owner: str) -> list[DeviceRecord]:
    now = datetime.now(UTC)
    records = []
    for spec in specs:
        der = public_key_der(spec.private_key.public_key())
        records.append(
            DeviceRecord(
                id=spec.device_id, owner=owner, public_key_der=der, key_fingerprint=fingerprint(der), created_at=now
            )
        )
    return records


def make_fleet(specs: list[VirtualDeviceSpec]) -> Fleet:
    return Fleet(specs, fixed_server_key().public_key(), config=SimConfig(backoff_scale=0.05))


def presences(redis_url: str, prefix: str) -> dict[str, str]:
    """Device id -> the node its presence names (live or not), read from Redis as an operator would."""
    client = redis.Redis.from_url(redis_url)
    try:
        found = {}
        for key in client.scan_iter(match=f"{prefix}presence:*", count=1000):
            value = client.get(key)
            device = key.decode().removeprefix(f"{prefix}presence:")
            if value is not None and "/" not in device:
                found[device] = str(json.loads(value)[0])
        return found
    finally:
        client.close()


class SseReader:
    """An event stream read in a thread-free task: every event with its name and data, in order."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as client,
            client.stream("GET", self.url, headers={"Authorization": f"Bearer {self.token}"}) as response,
        ):
            assert response.status_code == 200, await response.aread()
            name = None
            async for line in response.aiter_lines():
                if line.startswith(":ok"):
                    self.opened.set()
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name is not None:
                    self.events.append((name, json.loads(line[6:])))
                    name = None

    def named(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        return [(n, d) for n, d in self.events if n.startswith(prefix)]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._task


# -- private servers, for the tests that restart them ---------------------------------------------------


@dataclass
class PrivatePostgres:
    """A PostgreSQL 15 cluster of the test's own (initdb on a temporary directory), to stop and start."""

    directory: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        # initdb and postgres refuse to run as root: as the postgres user, when the tests run as root.
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, check=False, timeout=120, cwd="/")

    def init(self) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.skip(f"PostgreSQL 15 binaries not found in {PG_BIN}")
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            os.chmod(self.directory.parent, 0o755)
        done = self._as_owner(
            [str(PG_BIN / "initdb"), "-D", str(self.directory / "data"), "-U", "postgres", "-A", "trust", "--no-sync"]
        )
        assert done.returncode == 0, done.stderr.decode()

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        done = self._as_owner(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.directory / "data"),
                "-l",
                str(self.directory / "log"),
                "-o",
                options,
                "-w",
                "start",
            ]
        )
        assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()

    def stop(self, mode: str = "fast") -> None:
        self._as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-m", mode, "-w", "stop"])


@dataclass
class PrivateRedis:
    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.directory)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        poll(lambda: _accepts(self.port), "Redis listening", timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


@contextlib.contextmanager
def running(*parts: Node | Balancer | PrivateRedis) -> Iterator[None]:
    try:
        yield
    finally:
        for part in reversed(parts):
            part.stop()
