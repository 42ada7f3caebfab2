"""A device process of `cyan serve --device-processes N`: the device server, with the cloud in the parent.

Each device process listens on the shared device port (SO_REUSEPORT: the kernel spreads new connections
over the processes) and runs the protocol core, the handshakes' RSA work and the sockets of its devices.
Everything the cloud decides or keeps (key policy, records, sessions, events, updates) stays in the parent
`cyan serve` process: `RelayCloud` forwards the device server's calls to it over a `Channel`, and the
parent's commands (call a function, read a variable, send an update...) come back to the device's
connection here. One process holds as many devices as its open-file limit allows, so N of them hold N
times that (design §6).

    python -m cyan.server.relay FD     # started by cyan serve, with FD one end of its socketpair
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from cyan.cloud.keypolicy import Decision
from cyan.cloud.models import ConnectionAttempt, DeviceRecord
from cyan.keys import load_private_key
from cyan.limits import CollectorPolicy, ensure_file_limit, freeze_startup_objects
from cyan.protocol import Hello, SubscriptionScope
from cyan.tasks import TaskSet

from . import _messages as msg
from ._ipc import Channel
from .device_server import DeviceProtocol, DeviceServer

__all__ = ["RelayCloud", "main"]

log = logging.getLogger("cyan.server.relay")

#: How often the devices heard from are reported to the parent (it keeps `last_heard`; seconds).
HEARD_INTERVAL = 1.0


class RelayCloud:
    """The cloud as the device server in this process sees it: every call goes to the parent."""

    def __init__(self) -> None:
        self.channel: Channel | None = None
        self.server: DeviceServer | None = None
        self._replies: dict[int, asyncio.Future[msg.KeyDecision]] = {}
        self._request_ids = itertools.count(1)
        self._heard: set[int] = set()
        self._tasks = TaskSet(log, "cyan-relay")

    def _send(self, message: msg.Message) -> None:
        assert self.channel is not None
        self.channel.send(message)

    # -- what the device server calls (cyan.server.device_server.CloudPort) ------------------------

    async def authorize(
        self, device_id: str, presented_der: bytes | None, peer_address: str = ""
    ) -> tuple[Decision, DeviceRecord | None]:
        request = next(self._request_ids)
        future: asyncio.Future[msg.KeyDecision] = asyncio.get_running_loop().create_future()
        self._replies[request] = future
        self._send(msg.Authorize(request, device_id, presented_der, peer_address))
        try:
            answer = await future
        finally:
            self._replies.pop(request, None)
        if answer.error is not None:  # the parent could not decide (its database...)
            raise answer.error
        decision = Decision(
            answer.trusted_key_der,
            answer.reason,
            answer.detail,
            answer.presented_fingerprint,
            answer.stored_fingerprint,
            answer.quarantined,
            answer.record,
        )
        return decision, answer.record

    def record_attempt(self, attempt: ConnectionAttempt) -> None:
        self._send(msg.AttemptRecorded(attempt))

    def session_started(
        self, link: DeviceProtocol, record: DeviceRecord, hello: Hello, *, quarantined: bool = False
    ) -> None:
        self._send(
            msg.SessionStarted(
                link.connection_id,
                link.device_id,
                link.peer_address,
                link.key_fingerprint,
                record,
                hello,
                link.max_binary_size,
                quarantined,
            )
        )

    def session_ended(self, link: DeviceProtocol) -> None:
        self._heard.discard(link.connection_id)
        self._send(msg.SessionEnded(link.connection_id))

    def heard_from(self, link: DeviceProtocol) -> None:
        self._heard.add(link.connection_id)  # reported in batches (`report_heard`)

    def describe_received(self, link: DeviceProtocol, document: dict[str, Any]) -> None:
        self._send(msg.DescribeReceived(link.connection_id, document))

    def metrics_received(self, link: DeviceProtocol, values: dict[int, int]) -> None:
        self._send(msg.MetricsReceived(link.connection_id, values))

    def event_from_device(self, link: DeviceProtocol, name: str, data: bytes | None, ttl: int, private: bool) -> None:
        self._send(msg.EventPublished(link.connection_id, name, data, ttl, private, link.max_binary_size))

    def subscription_from_device(
        self, link: DeviceProtocol, prefix: str, scope: SubscriptionScope, device_id: str | None
    ) -> None:
        self._send(msg.SubscriptionRequested(link.connection_id, prefix, scope, device_id))

    async def report_heard(self) -> None:
        while True:
            await asyncio.sleep(HEARD_INTERVAL)
            if self._heard:
                heard, self._heard = self._heard, set()
                self._send(msg.Heard(list(heard)))

    # -- what the parent sends --------------------------------------------------------------------

    def on_message(self, message: msg.Message) -> None:
        if isinstance(message, msg.KeyDecision):
            future = self._replies.get(message.request)
            if future is not None and not future.done():
                future.set_result(message)
            return
        server = self.server
        if isinstance(message, msg.SendEvent | msg.Close):
            link = None if server is None else server.connection(message.connection_id)
            if link is None:
                return
            if isinstance(message, msg.SendEvent):
                link.send_event(message.name, message.data, message.ttl, message.private)
            else:
                link.close()
            return
        if not isinstance(
            message,
            msg.CallFunction | msg.ReadVariable | msg.Signal | msg.SystemDescribe | msg.Diagnose | msg.UpdateFirmware,
        ):
            log.error("the parent process sent an unexpected %s", type(message).__name__)
            return
        link = None if server is None else server.connection(message.connection_id)
        if link is None:
            self._send(msg.CommandResult(message.request, False, ConnectionError("the device disconnected")))
            return
        self._run(message.request, self._command(link, message))

    def _command(
        self,
        link: DeviceProtocol,
        message: msg.CallFunction
        | msg.ReadVariable
        | msg.Signal
        | msg.SystemDescribe
        | msg.Diagnose
        | msg.UpdateFirmware,
    ) -> Awaitable[Any]:
        if isinstance(message, msg.CallFunction):
            return link.call_function(message.name, message.argument, message.timeout)
        if isinstance(message, msg.ReadVariable):
            return link.read_variable(message.name, message.timeout)
        if isinstance(message, msg.Signal):
            return link.signal(message.on, message.timeout)
        if isinstance(message, msg.SystemDescribe):
            return link.system_describe(message.timeout)
        if isinstance(message, msg.Diagnose):
            return link.diagnose(message.timeout)
        return link.update_firmware(message.image, fast=message.fast, progress=self._progress(message.request))

    def _progress(self, request: int) -> Callable[[int, int], None]:
        def report(delivered: int, total: int) -> None:
            self._send(msg.CommandProgress(request, delivered, total))

        return report

    def _run(self, request: int, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                result = await work
            except Exception as exc:  # the caller in the parent gets the same exception
                self._send(msg.CommandResult(request, False, exc))
            else:
                self._send(msg.CommandResult(request, True, result))

        self._tasks.spawn(run(), f"run request {request}")


async def _serve(fd: int) -> None:
    loop = asyncio.get_running_loop()
    relay = RelayCloud()
    stopped = asyncio.Event()
    configured: asyncio.Future[msg.Configure] = loop.create_future()

    def first(message: msg.Message) -> None:
        if isinstance(message, msg.Configure) and not configured.done():
            configured.set_result(message)
        else:
            relay.on_message(message)

    sock = socket.socket(fileno=fd)
    _, channel = await loop.create_connection(lambda: Channel(first, stopped.set), sock=sock)
    relay.channel = channel
    setup = await configured
    logging.getLogger().setLevel(setup.log_level)  # the parent's (--debug)
    key = load_private_key(setup.key_path.read_bytes())
    ensure_file_limit()
    server = DeviceServer(
        relay,
        key,
        host=setup.host,
        port=setup.port,
        config=setup.config,
        ota_config=setup.ota_config,
        key_workers=setup.key_workers,
        reuse_port=True,
        address_limits=setup.address_limits,
        max_handshakes=setup.max_handshakes,
    )
    relay.server = server
    freeze_startup_objects()  # before the port opens, as `cyan serve` does (cyan.service)
    await server.start()
    async with CollectorPolicy().serving():
        channel.send(msg.Ready(server.port))
        heard = relay._tasks.spawn(relay.report_heard(), "report the devices heard from")
        for signum in (signal.SIGTERM, signal.SIGINT):
            # The parent decides when to stop (it closes the channel, or sends SIGTERM); Ctrl-C in a terminal
            # reaches the whole process group, and the parent's own shutdown ends this one.
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stopped.set if signum == signal.SIGTERM else lambda: None)
        try:
            await stopped.wait()
        finally:
            heard.cancel()
            await server.stop()
            channel.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(int(args[0])))


if __name__ == "__main__":
    main()
