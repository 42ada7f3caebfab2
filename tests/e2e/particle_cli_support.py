"""Harness for driving the real Particle CLI (npm particle-cli 3.43.1) against a `cyan serve` subprocess.

What is here and why (see particle_cli_contract.md beside this file for what the CLI needs from the API):

* `require_particle_cli` finds `.particle-cli/node_modules/.bin/particle` (installed by
  scripts/install-particle-cli); without it the tests skip, except under CI (env CI set), where they fail.
* `ParticleCli` is one CLI "user": a HOME of its own holding `.particle/particle.config.json`, which is the
  only way to point 3.43.1 at another cloud (it reads no environment variable for the API URL).
* `CyanServer`, `SimFleet`: `cyan serve` and `cyan sim` as subprocesses whose output goes to files (a pipe
  nobody reads would fill and stall them), stopped with SIGINT as a person would with Ctrl-C.
* `read_store`: what changed on the server, read straight from the SQLite store.

Every process here is started by this module and ended by its own handle (never by name).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cyan.cloud.models import DeviceRecord
from cyan.cloud.ports import Store
from cyan.config import Settings
from cyan.store import open_store

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
PARTICLE_CLI_VERSION = "3.43.1"
PARTICLE_BIN = REPO / ".particle-cli" / "node_modules" / ".bin" / "particle"
#: The `cyan` console script of the environment running the tests (.venv/bin/cyan under scripts/test).
CYAN_BIN = Path(sys.executable).with_name("cyan")

#: CSI sequences: the CLI's spinners clear their line (ESC[2K ESC[1G) even when stdout is not a terminal.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
#: Variables that would send the CLI's legacy HTTP client (`request`) through a proxy, even to 127.0.0.1.
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")

API_URL_LINE = re.compile(r"particle config set apiUrl (http://127\.0\.0\.1:(\d+))\b")
DEVICE_LINE = re.compile(r"Devices connect to 127\.0\.0\.1:(\d+)\b")


def require_particle_cli() -> Path:
    """The CLI's executable; skips the test without it, or fails under CI, which must install it."""
    if PARTICLE_BIN.exists():
        return PARTICLE_BIN
    reason = f"the Particle CLI is not installed at {PARTICLE_BIN}: run scripts/install-particle-cli"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it before the tests)")
    pytest.skip(reason)


def clean(text: str) -> str:
    """Output without terminal control sequences and carriage returns."""
    return _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "")


def token_hash(token: str) -> str:
    """How the store keys an access token (cyan.cloud.models.AccessToken: SHA-256, lowercase hex)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Completed:
    """A finished command: exit status and its output, cleaned of control sequences."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def lines(self) -> list[str]:
        """Non-blank stdout lines, stripped."""
        return [line.strip() for line in self.stdout.splitlines() if line.strip()]

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.args)}\n-> exit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def _base_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARIABLES}
    env.update(overrides)
    return env


# -- the Particle CLI --------------------------------------------------------------------------------


class ParticleCli:
    """The real `particle` command with a HOME of its own, configured for one cloud and one account."""

    def __init__(self, binary: Path, home: Path, api_url: str) -> None:
        self.binary = binary
        self.home = home
        self.api_url = api_url
        (home / ".particle").mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():
            self.write_config({"apiUrl": api_url})

    @property
    def config_path(self) -> Path:
        return self.home / ".particle" / "particle.config.json"

    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.config_path.read_text())
        return data

    def write_config(self, values: Mapping[str, Any]) -> None:
        self.config_path.write_text(json.dumps(dict(values)))

    @property
    def token(self) -> str:
        token = self.config().get("access_token")
        assert isinstance(token, str), f"no access token in {self.config_path}: {self.config()}"
        assert token, f"empty access token in {self.config_path}"
        return token

    def env(self) -> dict[str, str]:
        # FORCE_COLOR=0: chalk 2 (supports-color 5) then never colours, not even on the pty.
        return _base_env(HOME=str(self.home), PARTICLE_DISABLE_UPDATE="true", FORCE_COLOR="0")

    def run(self, *args: str, timeout: float = 30.0) -> Completed:
        """Run a command with no standard input (so a prompt cannot wait for one)."""
        argv = (str(self.binary), *args)
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self.env(),
                cwd=self.home,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = clean(_text(exc.stdout))
            err = clean(_text(exc.stderr))
            raise AssertionError(
                f"particle {' '.join(args)} did not finish in {timeout} s\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
            ) from None
        return Completed(("particle", *args), done.returncode, clean(done.stdout), clean(done.stderr))

    def run_with_password(self, args: Sequence[str], password: str, *, timeout: float = 30.0) -> Completed:
        """Run a command that prompts for the account password (`token create`)."""
        return self.run_answering(args, {"Please enter your password:": password}, timeout=timeout)

    def run_answering(self, args: Sequence[str], answers: Mapping[str, str], *, timeout: float = 30.0) -> Completed:
        """Run a command that asks questions (inquirer needs a terminal): it runs on a pseudo-terminal (python
        `os.openpty`) and each answer is typed, with Enter, once its prompt appears. stdout and stderr are both
        the terminal: everything is in `stdout`."""
        master, slave = os.openpty()
        try:
            proc = subprocess.Popen(
                [str(self.binary), *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=self.env(),
                cwd=self.home,
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        os.close(slave)
        received = bytearray()
        pending = dict(answers)
        deadline = time.monotonic() + timeout
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    proc.kill()
                    proc.wait()
                    raise AssertionError(
                        f"particle {' '.join(args)} did not finish in {timeout} s; it printed:\n"
                        + clean(received.decode(errors="replace"))
                    )
                ready, _, _ = select.select([master], [], [], min(remaining, 0.2))
                if ready:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:  # EIO: the child closed the terminal
                        chunk = b""
                    if not chunk:
                        break
                    received += chunk
                    shown = clean(received.decode(errors="replace"))
                    for prompt in [p for p in pending if p in shown]:
                        os.write(master, pending.pop(prompt).encode() + b"\r")
                elif proc.poll() is not None:
                    break
            returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            os.close(master)
        return Completed(("particle", *args), returncode, clean(received.decode(errors="replace")), "")

    def start(self, *args: str) -> BackgroundCommand:
        """Start a long-running command (`subscribe`); its output goes to files that can be read meanwhile."""
        stamp = f"{time.monotonic_ns()}"
        out_path = self.home / f"bg-{stamp}.out"
        err_path = self.home / f"bg-{stamp}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [str(self.binary), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env(),
                cwd=self.home,
            )
        return BackgroundCommand(("particle", *args), proc, out_path, err_path)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


@dataclass(slots=True)
class BackgroundCommand:
    """A command running in the background, its output collected in files."""

    args: tuple[str, ...]
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stdout(self) -> str:
        return clean(self.stdout_path.read_bytes().decode(errors="replace"))

    def stderr(self) -> str:
        return clean(self.stderr_path.read_bytes().decode(errors="replace"))

    def wait_for(self, pattern: str | re.Pattern[str], *, timeout: float = 20.0) -> re.Match[str]:
        """Wait until stdout matches `pattern`; fails if the command ends first or time runs out."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.stdout())
            if found:
                return found
            if self.process.poll() is not None:
                raise AssertionError(f"{self.describe()}\nended before printing {regex.pattern!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.describe()}\ndid not print {regex.pattern!r} in {timeout} s")
            time.sleep(0.05)

    def wait(self, timeout: float = 20.0) -> Completed:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.describe()}\ndid not end in {timeout} s") from None
        return self.completed()

    def completed(self) -> Completed:
        code = self.process.returncode
        return Completed(self.args, -1 if code is None else code, self.stdout(), self.stderr())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def describe(self) -> str:
        code = self.process.poll()
        state = "running" if code is None else f"exit {code}"
        return f"$ {' '.join(self.args)} ({state})\n--- stdout ---\n{self.stdout()}\n--- stderr ---\n{self.stderr()}"


def subscribe_header_done(max_events: int) -> str:
    """The pattern of `subscribe --max N`'s output once the stream is open: the CLI prints its header, and a
    newline when the server has answered 200 (src/cmd/subscribe.js 60-68)."""
    return rf"This command will exit after receiving {max_events} event\(s\)\.\.\.\n\n"


def event_lines(stdout: str) -> list[dict[str, Any]]:
    """The events `particle subscribe` printed: one JSON object a line (src/cmd/subscribe.js 82)."""
    events = []
    for line in stdout.splitlines():
        text = line.strip()
        if text.startswith("{") and text.endswith("}"):
            events.append(json.loads(text))
    return events


# -- cyan ----------------------------------------------------------------------------------------------


def run_cyan(*args: str, timeout: float = 60.0) -> Completed:
    done = subprocess.run(
        [str(CYAN_BIN), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_base_env(PYTHONUNBUFFERED="1"),
        timeout=timeout,
        check=False,
    )
    return Completed(("cyan", *args), done.returncode, done.stdout, done.stderr)


@dataclass(slots=True)
class _Logged:
    """A `cyan` subprocess whose stdout and stderr go to files."""

    name: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @classmethod
    def start(cls, name: str, args: Sequence[str], log_dir: Path, env: Mapping[str, str] | None = None) -> _Logged:
        log_dir.mkdir(parents=True, exist_ok=True)
        out_path = log_dir / f"{name}.out"
        err_path = log_dir / f"{name}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [str(CYAN_BIN), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=_base_env(PYTHONUNBUFFERED="1", **(env or {})),
            )
        return cls(name, proc, out_path, err_path)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self, tail: int = 4000) -> str:
        code = self.process.poll()
        state = "running" if code is None else f"exit {code}"
        return (
            f"{self.name} ({state}, pid {self.process.pid})\n--- stdout ---\n{self.stdout()[-tail:]}"
            f"\n--- stderr ---\n{self.stderr()[-tail:]}"
        )

    def interrupt(self, timeout: float = 20.0) -> int:
        """Ctrl-C: SIGINT, then wait; kills and fails when it does not stop in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise AssertionError(f"{self.describe()}\ndid not stop within {timeout} s of SIGINT") from None
        return self.process.returncode


@dataclass(slots=True)
class CyanServer:
    """`cyan serve` on loopback with ephemeral ports, as its banner tells them."""

    data_dir: Path
    api_url: str
    api_port: int
    device_port: int
    proc: _Logged

    @classmethod
    def start(
        cls,
        data_dir: Path,
        log_dir: Path,
        *,
        timeout: float = 30.0,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> CyanServer:
        """`env`: CYAN_* settings given as the environment (those that have no flag)."""
        args = [
            "serve",
            "--data-dir",
            str(data_dir),
            "--device-host",
            "127.0.0.1",
            "--device-port",
            "0",
            "--api-host",
            "127.0.0.1",
            "--api-port",
            "0",
            "--public-address",
            "127.0.0.1",
            *extra,
        ]
        proc = _Logged.start("serve", args, log_dir, env)
        deadline = time.monotonic() + timeout
        try:
            while True:
                out = proc.stdout()
                api = API_URL_LINE.search(out)
                device = DEVICE_LINE.search(out)
                if api and device:
                    break
                if proc.process.poll() is not None:
                    raise AssertionError(f"cyan serve ended before printing its banner\n{proc.describe()}")
                if time.monotonic() > deadline:
                    missing = [
                        what
                        for what, found in (("'particle config set apiUrl ...'", api), ("'Devices connect to'", device))
                        if not found
                    ]
                    raise AssertionError(
                        f"cyan serve printed no {' nor '.join(missing)} line in {timeout} s\n{proc.describe()}"
                    )
                time.sleep(0.05)
            api_port, device_port = int(api.group(2)), int(device.group(1))
            assert api_port > 0, f"the banner shows the configured API port 0, not the bound one\n{proc.describe()}"
            assert device_port > 0, f"the banner shows device port 0, not the bound one\n{proc.describe()}"
        except BaseException:
            proc.interrupt()
            raise
        return cls(data_dir, api.group(1), api_port, device_port, proc)

    def stop(self) -> int:
        return self.proc.interrupt()

    def describe(self) -> str:
        return self.proc.describe()


@dataclass(slots=True)
class SimFleet:
    """`cyan sim --owner`: N virtual Photons owned by one user, named sim-0, sim-1, ..."""

    owner: str
    count: int
    proc: _Logged
    #: name -> id of the fleet's devices, as registered.
    ids: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, server: CyanServer, owner: str, count: int, keys_dir: Path, log_dir: Path) -> SimFleet:
        args = [
            "sim",
            "-n",
            str(count),
            "--server",
            f"127.0.0.1:{server.device_port}",
            "--data-dir",
            str(server.data_dir),
            "--keys-dir",
            str(keys_dir),
            "--owner",
            owner,
        ]
        return cls(owner, count, _Logged.start(f"sim-{owner.split('@', maxsplit=1)[0]}", args, log_dir))

    def wait_online(self, data_dir: Path, *, timeout: float = 60.0) -> dict[str, str]:
        """Wait until the store shows `count` devices of the owner online; returns name -> id."""
        deadline = time.monotonic() + timeout
        devices: list[DeviceRecord] = []
        while time.monotonic() < deadline:
            if self.proc.process.poll() is not None:
                raise AssertionError(f"cyan sim ended\n{self.proc.describe()}")
            devices = read_store(data_dir, lambda store: store.devices.all(owner=self.owner))
            if len(devices) >= self.count and all(d.online for d in devices):
                self.ids = {d.name or d.id: d.id for d in devices}
                return self.ids
            time.sleep(0.2)
        seen = [(d.name, d.id, d.online) for d in devices]
        raise AssertionError(
            f"{self.count} devices of {self.owner} not online in {timeout} s: {seen}\n{self.proc.describe()}"
        )

    def stop(self) -> int:
        return self.proc.interrupt()


def read_store(data_dir: Path, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run `work` on the server's SQLite store (WAL: safe while `cyan serve` runs)."""

    async def run() -> T:
        store = open_store(Settings(data_dir=data_dir).database_path)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def wait_until(check: Callable[[], bool], what: str, *, timeout: float = 10.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {timeout} s")
        time.sleep(interval)


@contextmanager
def background(commands: list[BackgroundCommand]) -> Iterator[list[BackgroundCommand]]:
    """Kill whatever background commands are still running on the way out."""
    try:
        yield commands
    finally:
        for command in commands:
            command.stop()
