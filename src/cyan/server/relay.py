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
from cyan.keys import load_private_key, load_public_key
from cyan.limits import ensure_file_limit
from cyan.protocol import Hello, SubscriptionScope

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
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._request_ids = itertools.count(1)
        self._heard: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def _send(self, *message: Any) -> None:
        assert self.channel is not None
        self.channel.send(*message)

    # -- what the device server calls (cyan.server.device_server.CloudPort) ------------------------

    async def authorize(
        self, device_id: str, presented_der: bytes | None, peer_address: str = ""
    ) -> tuple[Decision, DeviceRecord | None]:
        request = next(self._request_ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[request] = future
        self._send("authorize", request, device_id, presented_der, peer_address)
        try:
            trusted_der, reason, detail, presented, stored, quarantined, record = await future
        finally:
            self._replies.pop(request, None)
        trusted = None if trusted_der is None else load_public_key(trusted_der)
        return Decision(trusted, reason, detail, presented, stored, quarantined, record), record

    def record_attempt(self, attempt: ConnectionAttempt) -> None:
        self._send("attempt", attempt)

    def session_started(
        self, link: DeviceProtocol, record: DeviceRecord, hello: Hello, *, quarantined: bool = False
    ) -> None:
        self._send(
            "started",
            link.connection_id,
            link.device_id,
            link.peer_address,
            record,
            hello,
            link.max_binary_size,
            quarantined,
        )

    def session_ended(self, link: DeviceProtocol) -> None:
        self._heard.discard(link.connection_id)
        self._send("ended", link.connection_id)

    def heard_from(self, link: DeviceProtocol) -> None:
        self._heard.add(link.connection_id)  # reported in batches (`report_heard`)

    def describe_received(self, link: DeviceProtocol, document: dict[str, Any]) -> None:
        self._send("describe", link.connection_id, document)

    def event_from_device(self, link: DeviceProtocol, name: str, data: bytes | None, ttl: int, private: bool) -> None:
        self._send("event", link.connection_id, name, data, ttl, private, link.max_binary_size)

    def subscription_from_device(
        self, link: DeviceProtocol, prefix: str, scope: SubscriptionScope, device_id: str | None
    ) -> None:
        self._send("subscribe", link.connection_id, prefix, scope, device_id)

    async def report_heard(self) -> None:
        while True:
            await asyncio.sleep(HEARD_INTERVAL)
            if self._heard:
                heard, self._heard = self._heard, set()
                self._send("heard", list(heard))

    # -- what the parent sends --------------------------------------------------------------------

    def on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "decision":
            future = self._replies.get(message[1])
            if future is not None and not future.done():
                if isinstance(message[2], Exception):  # the parent could not decide (its database...)
                    future.set_exception(message[2])
                else:
                    future.set_result(message[2:])
            return
        server = self.server
        # ("send_event" | "close", connection, ...) or (command, request, connection, *arguments)
        connection_id = message[1] if kind in ("send_event", "close") else message[2]
        link = None if server is None else server.connection(connection_id)
        if kind == "send_event":
            if link is not None:
                link.send_event(*message[2:])
        elif kind == "close":
            if link is not None:
                link.close()
        else:
            request = message[1]
            if link is None:
                self._send("result", request, False, ConnectionError("the device disconnected"))
                return
            self._run(request, self._command(link, kind, request, message[3:]))

    def _command(self, link: DeviceProtocol, kind: str, request: int, args: tuple[Any, ...]) -> Awaitable[Any]:
        if kind == "call":
            return link.call_function(*args)
        if kind == "read":
            return link.read_variable(*args)
        if kind == "signal":
            return link.signal(*args)
        if kind == "system_describe":
            return link.system_describe(*args)
        if kind == "update":
            image, fast = args
            return link.update_firmware(image, fast=fast, progress=self._progress(request))
        raise ValueError(f"unknown command {kind!r} from the parent process")

    def _progress(self, request: int) -> Callable[[int, int], None]:
        def report(delivered: int, total: int) -> None:
            self._send("progress", request, delivered, total)

        return report

    def _run(self, request: int, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                result = await work
            except Exception as exc:  # the caller in the parent gets the same exception
                self._send("result", request, False, exc)
            else:
                self._send("result", request, True, result)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _serve(fd: int) -> None:
    loop = asyncio.get_running_loop()
    relay = RelayCloud()
    stopped = asyncio.Event()
    configured: asyncio.Future[tuple[Any, ...]] = loop.create_future()

    def first(message: tuple[Any, ...]) -> None:
        if message[0] == "configure" and not configured.done():
            configured.set_result(message[1:])
        else:
            relay.on_message(message)

    sock = socket.socket(fileno=fd)
    _, channel = await loop.create_connection(lambda: Channel(first, stopped.set), sock=sock)
    relay.channel = channel
    key_path, host, port, config, ota_config, key_workers, log_level = await configured
    logging.getLogger().setLevel(log_level)  # the parent's (--debug)
    key = load_private_key(key_path.read_bytes())
    ensure_file_limit()
    server = DeviceServer(
        relay,
        key,
        host=host,
        port=port,
        config=config,
        ota_config=ota_config,
        key_workers=key_workers,
        reuse_port=True,
    )
    relay.server = server
    await server.start()
    channel.send("ready", server.port)
    heard = loop.create_task(relay.report_heard())
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
