"""`cyan serve --device-processes N`: the device connections in N child processes, the cloud in this one.

Each child (`cyan.server.relay`) listens on the device port with SO_REUSEPORT and serves its devices; this
process keeps the cloud, the store, the API and every decision. A device in a child appears to the cloud as a
`RemoteLink`, which carries the cloud's commands to it over the child's channel. A child that exits ends
its devices' sessions (they reconnect to the others) and is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from cyan.cloud.keypolicy import Decision
from cyan.cloud.models import ConnectionAttempt, DeviceRecord, LinkDiagnostics
from cyan.cloud.service import DeviceLink, VariableValue
from cyan.protocol import Hello, OtaConfig, OtaOutcome, ServerConfig, SubscriptionScope
from cyan.tasks import TaskSet

from . import _messages as msg
from ._ipc import Channel
from .device_server import DEFAULT_MAX_HANDSHAKES, AddressLimits

__all__ = ["DeviceProcesses", "ParentCloud", "RemoteLink"]

log = logging.getLogger("cyan.server.processes")

#: Seconds a child gets to start listening, and to stop before it is killed.
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
#: Seconds before a child that exited is started again.
_RESTART_DELAY = 1.0


class ParentCloud(Protocol):
    """What the device processes' sessions are reported to (`cyan.app.handshake.DeviceGateway`): the device
    server's `CloudPort`, over links that stand for the devices in the children."""

    def authorize(
        self, device_id: str, presented_der: bytes | None, peer_address: str = ""
    ) -> Awaitable[tuple[Decision, DeviceRecord | None]]: ...

    def record_attempt(self, attempt: ConnectionAttempt) -> None: ...

    def session_started(
        self, link: DeviceLink, record: DeviceRecord, hello: Hello, *, quarantined: bool = False
    ) -> None: ...

    def session_ended(self, link: DeviceLink) -> None: ...

    def heard_from(self, link: DeviceLink) -> None: ...

    def describe_received(self, link: DeviceLink, document: dict[str, Any]) -> None: ...

    def metrics_received(self, link: DeviceLink, values: dict[int, int]) -> None: ...

    def event_from_device(self, link: DeviceLink, name: str, data: bytes | None, ttl: int, private: bool) -> None: ...

    def subscription_from_device(
        self, link: DeviceLink, prefix: str, scope: SubscriptionScope, device_id: str | None
    ) -> None: ...


class RemoteLink:
    """A device served by a device process (`cyan.cloud.service.DeviceLink`)."""

    # One per connected device in the parent: slots keep it to its fields (a dict each would add ~300 bytes).
    __slots__ = (
        "_process",
        "connection_id",
        "device_id",
        "hello",
        "key_fingerprint",
        "max_binary_size",
        "peer_address",
    )

    def __init__(self, process: _DeviceProcess, started: msg.SessionStarted) -> None:
        self._process = process
        self.connection_id = started.connection_id
        self.device_id = started.device_id
        self.peer_address = started.peer_address
        self.key_fingerprint = started.key_fingerprint
        self.hello: Hello | None = started.hello
        self.max_binary_size: int | None = started.max_binary_size

    def call_function(self, name: str, argument: str, timeout: float) -> asyncio.Future[int]:
        return self._process.request(lambda r: msg.CallFunction(r, self.connection_id, name, argument, timeout))

    def read_variable(self, name: str, timeout: float) -> asyncio.Future[tuple[bytes, VariableValue | None]]:
        return self._process.request(lambda r: msg.ReadVariable(r, self.connection_id, name, timeout))

    def send_event(self, name: str, data: str | None, ttl: int, private: bool) -> None:
        self._process.send(msg.SendEvent(self.connection_id, name, data, ttl, private))

    def signal(self, on: bool, timeout: float) -> asyncio.Future[None]:
        return self._process.request(lambda r: msg.Signal(r, self.connection_id, on, timeout))

    def close(self) -> None:
        self._process.send(msg.Close(self.connection_id))

    def system_describe(self, timeout: float) -> asyncio.Future[dict[str, Any] | None]:
        return self._process.request(lambda r: msg.SystemDescribe(r, self.connection_id, timeout))

    def diagnose(self, timeout: float) -> asyncio.Future[LinkDiagnostics]:
        return self._process.request(lambda r: msg.Diagnose(r, self.connection_id, timeout))

    def update_firmware(
        self, image: bytes, *, fast: bool | None, progress: Callable[[int, int], None] | None = None
    ) -> asyncio.Future[OtaOutcome]:
        return self._process.request(
            lambda r: msg.UpdateFirmware(r, self.connection_id, image, fast), progress=progress
        )


class _DeviceProcess:
    """One child: its process, its channel, its devices and the requests waiting for its answers."""

    def __init__(self, owner: DeviceProcesses, index: int) -> None:
        self.owner = owner
        self.index = index
        self.cloud = owner.cloud
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.links: dict[int, RemoteLink] = {}
        self._requests = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], Callable[[int, int], None] | None]] = {}
        self._ready: asyncio.Future[int] | None = None
        self._tasks = TaskSet(log, f"cyan-device-process-{index}")
        self.exited = asyncio.Event()

    async def start(self, port: int) -> int:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cyan.server.relay",
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child.close()
        self.exited.clear()
        self._ready = loop.create_future()
        # Read by `start` unless a stop cancelled it: never left as an unretrieved failure.
        self._ready.add_done_callback(lambda ready: ready.cancelled() or ready.exception())
        _, self.channel = await loop.create_connection(lambda: Channel(self._on_message, self._on_lost), sock=parent)
        owner = self.owner
        self.send(
            msg.Configure(
                owner.key_path,
                owner.host,
                port,
                owner.config,
                owner.ota_config,
                owner.key_workers,
                logging.getLogger().getEffectiveLevel(),
                owner.address_limits,
                owner.max_handshakes,
            )
        )
        try:
            return await asyncio.wait_for(self._ready, _START_TIMEOUT)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                log.error("device process %d did not stop in %g s; killing it", self.index, _STOP_TIMEOUT)
                process.kill()
                await process.wait()
        if self.channel is not None:
            self.channel.close()

    # -- to the child -------------------------------------------------------------------------------

    def send(self, message: msg.Message) -> None:
        if self.channel is not None:
            self.channel.send(message)

    def request(
        self, build: Callable[[int], msg.Message], *, progress: Callable[[int, int], None] | None = None
    ) -> asyncio.Future[Any]:
        """Send the command `build(request_id)` makes; the future gets the child's result."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.channel is None or self.channel.closed:
            future.set_exception(ConnectionError("the device's process is gone"))
            return future
        request = next(self._requests)
        self._pending[request] = (future, progress)
        self.send(build(request))
        return future

    # -- from the child -------------------------------------------------------------------------------

    def _on_message(self, message: msg.Message) -> None:
        cloud = self.cloud
        if isinstance(message, msg.Authorize):
            self._tasks.spawn(self._authorize(message), f"decide on device {message.device_id}")
        elif isinstance(message, msg.AttemptRecorded):
            cloud.record_attempt(message.attempt)
        elif isinstance(message, msg.SessionStarted):
            link = RemoteLink(self, message)
            self.links[message.connection_id] = link
            cloud.session_started(link, message.record, message.hello, quarantined=message.quarantined)
        elif isinstance(message, msg.SessionEnded):
            ended = self.links.pop(message.connection_id, None)
            if ended is not None:
                cloud.session_ended(ended)
        elif isinstance(message, msg.Heard):
            for connection_id in message.connection_ids:
                if (known := self.links.get(connection_id)) is not None:
                    cloud.heard_from(known)
        elif isinstance(message, msg.DescribeReceived):
            if (known := self.links.get(message.connection_id)) is not None:
                cloud.describe_received(known, message.document)
        elif isinstance(message, msg.MetricsReceived):
            if (known := self.links.get(message.connection_id)) is not None:
                cloud.metrics_received(known, message.values)
        elif isinstance(message, msg.EventPublished):
            if (known := self.links.get(message.connection_id)) is not None:
                known.max_binary_size = message.max_binary_size
                cloud.event_from_device(known, message.name, message.data, message.ttl, message.private)
        elif isinstance(message, msg.SubscriptionRequested):
            if (known := self.links.get(message.connection_id)) is not None:
                cloud.subscription_from_device(known, message.prefix, message.scope, message.device_id)
        elif isinstance(message, msg.CommandResult):
            waiting = self._pending.pop(message.request, None)
            if waiting is not None and not waiting[0].done():
                if message.ok:
                    waiting[0].set_result(message.value)
                else:
                    waiting[0].set_exception(message.value)
        elif isinstance(message, msg.CommandProgress):
            waiting = self._pending.get(message.request)
            if waiting is not None and waiting[1] is not None:
                waiting[1](message.delivered, message.total)
        elif isinstance(message, msg.Ready):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message.port)
        else:
            log.error("device process %d sent an unexpected %s", self.index, type(message).__name__)

    async def _authorize(self, request: msg.Authorize) -> None:
        try:
            decision, record = await self.cloud.authorize(
                request.device_id, request.presented_der, request.peer_address
            )
        except Exception as exc:  # the child rejects the device with server_error, naming the cause
            self.send(msg.KeyDecision(request.request, error=exc))
            return
        self.send(
            msg.KeyDecision(
                request.request,
                decision.trusted_key_der,
                decision.reason,
                decision.detail,
                decision.presented_fingerprint,
                decision.stored_fingerprint,
                decision.quarantined,
                record,
            )
        )

    def _on_lost(self) -> None:
        # The child is gone (or stopping): its devices' sessions end here; they reconnect to the others.
        for link in list(self.links.values()):
            self.cloud.session_ended(link)
        self.links.clear()
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the device's process exited"))
        self._pending.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RuntimeError(f"device process {self.index} exited while starting"))
        self.exited.set()
        self.owner.lost(self)


class DeviceProcesses:
    """N device processes sharing the device port; the drop-in for `DeviceServer` in `Service`."""

    def __init__(
        self,
        cloud: ParentCloud,
        key_path: Path,
        count: int,
        *,
        host: str = "0.0.0.0",
        port: int = 5683,
        config: ServerConfig | None = None,
        ota_config: OtaConfig | None = None,
        key_workers: int = 0,
        address_limits: AddressLimits | None = None,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    ) -> None:
        if count < 1:
            raise ValueError(f"device processes: at least 1, not {count}")
        if max_handshakes < 1:
            raise ValueError(f"max_handshakes is 1 or more, not {max_handshakes}")
        self.max_handshakes = max_handshakes
        self.cloud = cloud
        self.key_path = key_path
        self.host = host
        self.port = port
        self.config = config or ServerConfig()
        self.ota_config = ota_config or OtaConfig()
        self.key_workers = key_workers
        # Each process keeps its own buckets: an address's connections spread over the processes by the
        # kernel, so each takes its share of the limit.
        limits = address_limits or AddressLimits()
        self.address_limits = AddressLimits(max(1, limits.burst // count), max(limits.per_second / count, 1e-3))
        self._processes = [_DeviceProcess(self, index) for index in range(count)]
        self._stopping = False
        self._restarts = TaskSet(log, "cyan-device-processes")

    async def start(self) -> None:
        try:
            for process in self._processes:
                # The first binds the configured port (0: any); the others share the one it got.
                self.port = await process.start(self.port)
        except BaseException:
            await self.stop()
            raise
        log.info("%d device processes listening on %s:%d", len(self._processes), self.host, self.port)

    async def stop(self) -> None:
        self._stopping = True
        await self._restarts.cancel()
        await asyncio.gather(*(process.stop() for process in self._processes))

    def lost(self, process: _DeviceProcess) -> None:
        if self._stopping:
            return

        async def restart() -> None:
            status = None if process.process is None else await process.process.wait()
            log.error(
                "device process %d exited (status %s): its devices reconnect to the other processes; "
                "starting it again in %g s",
                process.index,
                status,
                _RESTART_DELAY,
            )
            await asyncio.sleep(_RESTART_DELAY)
            await process.start(self.port)

        self._restarts.spawn(restart(), f"start device process {process.index} again")

    @property
    def connection_count(self) -> int:
        return sum(len(process.links) for process in self._processes)

    @property
    def pids(self) -> list[int]:
        return [p.process.pid for p in self._processes if p.process is not None and p.process.returncode is None]
