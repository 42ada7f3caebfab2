"""Shared pieces of the benchmarks: a `cyan serve` subprocess, registered devices, process CPU time."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cyan.cloud.models import DeviceRecord
from cyan.keys import fingerprint, generate_device_key, load_public_key, public_key_der, udp_public_key_der
from cyan.store import SqliteStore

CYAN = Path(sys.executable).with_name("cyan")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def _stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU time from a /proc stat file (a process's or a thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def user_system_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def server_pids(pid: int) -> list[int]:
    """The server process and its children (its device processes, with --device-processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def server_cpu_seconds(pid: int) -> float:
    """CPU time of the server process and its children."""
    return sum(cpu_seconds(p) for p in server_pids(pid))


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU time of each thread of a process, summed by role: the event loop (the main
    thread), the key workers (threads named cyan-key-*), and the rest (the database driver's thread...)."""
    roles: dict[str, float] = {"event loop": 0.0, "key workers": 0.0, "other threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds = _stat_cpu_seconds(task / "stat")
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        role = (
            "event loop" if task.name == str(pid) else "key workers" if name.startswith("cyan-key") else "other threads"
        )
        roles[role] += seconds
    return roles


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    data_dir: Path
    device_port: int
    api_port: int
    public_key: rsa.RSAPublicKey

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def cyan_serve(
    *extra: str,
    wrap: tuple[str, ...] = (),
    start_timeout: float = 30.0,
    data_dir: Path | None = None,
    device_port: int = 0,
    log_path: Path | None = None,
) -> Iterator[Server]:
    """`cyan serve` on loopback with a fresh data directory (or `data_dir`), stopped with SIGINT at the end
    unless it has ended already. `wrap` runs it under another program (valgrind), which then must `exec` it,
    keeping the pid. Its output goes to `log_path` when given, kept after the server ends."""
    with tempfile.TemporaryDirectory(prefix="cyan-bench-") as tmp:
        data = data_dir or Path(tmp) / "data"
        log = open(log_path or Path(tmp) / "serve.log", "w+b")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [
                *wrap,
                *((sys.executable,) if wrap else ()),
                str(CYAN),
                "serve",
                "--data-dir",
                str(data),
                "--device-host",
                "127.0.0.1",
                "--device-port",
                str(device_port),
                "--api-host",
                "127.0.0.1",
                "--api-port",
                "0",
                "--public-address",
                "127.0.0.1",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # The whole simulated fleet connects from loopback: lift the per-address connection limit, which
            # is for real networks (docs/security.md).
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "CYAN_ADDRESS_BURST": "1000000",
                "CYAN_ADDRESS_RATE": "1000000",
                # UDP 5684 is one per machine: another server (or another benchmark) may hold it.
                "CYAN_DEVICE_UDP_PORT": os.environ.get("CYAN_DEVICE_UDP_PORT", "0"),
            },
        )
        try:
            deadline = time.monotonic() + start_timeout
            text = ""
            while time.monotonic() < deadline:
                log.seek(0)
                text = log.read().decode(errors="replace")
                device = re.search(r"Devices connect to 127\.0\.0\.1:(\d+)", text)
                api = re.search(r"apiUrl http://127\.0\.0\.1:(\d+)", text)
                if device and api:
                    break
                if process.poll() is not None:
                    raise RuntimeError(f"cyan serve exited: {text}")
                time.sleep(0.05)
            else:
                raise RuntimeError(f"cyan serve did not start: {text}")
            public = load_public_key((data / "server_public_key.der").read_bytes())
            yield Server(process, data, int(device.group(1)), int(api.group(1)), public)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                process.wait(start_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()


def device_id(n: int) -> str:
    return f"{0xBE4C000000 + n:024x}"


def register(
    data_dir: Path,
    keys: Sequence[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey],
    owner: str | None = None,
    ids: list[str] | None = None,
) -> list[str]:
    """Register one device per key in the server's database (RSA: a TCP device; P-256: a UDP one); returns
    their ids."""
    ids = ids or [device_id(n) for n in range(len(keys))]

    async def run() -> None:
        async with SqliteStore(data_dir / "cyan.db") as store:
            records = []
            for device, key in zip(ids, keys, strict=True):
                der = (
                    udp_public_key_der(key)
                    if isinstance(key, ec.EllipticCurvePrivateKey)
                    else public_key_der(key.public_key())
                )
                records.append(
                    DeviceRecord(
                        id=device,
                        owner=owner,
                        public_key_der=der,
                        key_fingerprint=fingerprint(der),
                        created_at=datetime.now(UTC),
                    )
                )
            for start in range(0, len(records), 5000):
                await store.devices.add_many(records[start : start + 5000])

    asyncio.run(run())
    return ids


def user_with_token(data_dir: Path, user: str, password: str) -> str:
    """Add a user to the server's database and return a new access token of theirs."""
    subprocess.run([str(CYAN), "users", "add", user, "--password", password, "--data-dir", str(data_dir)], check=True)
    return subprocess.run(
        [str(CYAN), "tokens", "create", user, "--data-dir", str(data_dir)], check=True, capture_output=True, text=True
    ).stdout.strip()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def keys(count: int) -> list[rsa.RSAPrivateKey]:
    return [generate_device_key() for _ in range(count)]


def table(title: str, rows: list[tuple[str, str, str]]) -> str:
    """A plain table: measure, measured, compared with."""
    header = ("measure", "measured", "compared with")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    line = "  ".join("-" * w for w in widths)
    out = [title, line, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    out.append(line)
    return "\n".join(out)


class RawHttp:
    """A minimal keep-alive HTTP/1.1 client over one asyncio connection, for timing the API.

    Each request goes out in one write and asyncio sets TCP_NODELAY, so the figures are the server's,
    not a client's Nagle/delayed-ACK interplay (measured at ~45 ms per request with httpx here, 1 ms
    with curl).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader, self._writer, self._host = reader, writer, host

    @classmethod
    async def connect(cls, host: str, port: int) -> RawHttp:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def request(self, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode() + body)
        status_line = await self._reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


class Callgrind:
    """`cyan serve` under `valgrind --tool=callgrind`, counting instructions only inside `counting()` blocks.

    A count does not move with the other work on a shared machine, as CPU time does. It leaves out the
    kernel (system calls) and weighs every instruction alike."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.wrap = (
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={directory / 'callgrind.out'}",
        )
        self._on = False
        self.pid = 0

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count what the block makes the server do: a dump of its own (instrumentation stays on from the first
        block: switching it off and on between blocks left some dumps with wrapped-around totals)."""
        if not self._on:
            self._control("--instr=on")
            self._on = True
        self._control("--zero")
        try:
            yield
        finally:
            self._control("--dump")

    def _control(self, command: str) -> None:
        subprocess.run(["callgrind_control", command, str(self.pid)], check=True, capture_output=True)

    def annotated(self, index: int) -> str:
        """callgrind_annotate's inclusive listing of the `index`-th counted block (from 1)."""
        dump = self.directory / f"callgrind.out.{index}"
        return subprocess.run(
            ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(dump)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    @staticmethod
    def total(annotated: str) -> int:
        match = re.search(r"^\s*([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", annotated, re.MULTILINE)
        if match is None:
            raise RuntimeError("callgrind's output has no totals")
        return int(match.group(1).replace(",", ""))

    @staticmethod
    def inclusive(annotated: str, function: str) -> int:
        """The instructions in `function` and what it called; 0 if it did not run."""
        match = re.search(rf"^\s*([\d,]+) .*\b{function} ", annotated, re.MULTILINE)
        return int(match.group(1).replace(",", "")) if match else 0
