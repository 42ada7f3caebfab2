"""Assembling Cyan: the store, the bus, the cloud, the use cases, the device server and the API.

The composition root: the one module that knows every adapter. `Service` is one `cyan serve` process.
What the command line needs without serving (the server keys, the use cases over the database, the schema's
status) is in `cyan.data`, re-exported here for the callers that start a service beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import uvicorn

from cyan import __version__
from cyan.api import ApiContext, create_app
from cyan.app import Application, LoginLimits
from cyan.bus import open_bus
from cyan.cloud.alerts import WebhookAlerts
from cyan.cloud.ota import FirmwareLibrary, UpdateManager
from cyan.cloud.service import Cloud
from cyan.cloud.vitals import VitalsCollector
from cyan.cloud.webhook_http import HttpSender
from cyan.cloud.webhooks import AddressPolicy, WebhookDispatcher
from cyan.cloud.writer import RecordLimits
from cyan.config import Settings
from cyan.data import (
    SchemaStatus,
    ServerKeys,
    database_status,
    ensure_server_keys,
    open_application,
    prepare_data_directory,
    settle_server_key,
    upgrade_database,
    write_server_key_file,
    write_udp_server_key_file,
)
from cyan.limits import CollectorPolicy, freeze_startup_objects
from cyan.protocol import ServerConfig
from cyan.protocol.datagram import DatagramConfig
from cyan.server import DeviceProcesses, DeviceServer
from cyan.server.datagram_server import DatagramServer
from cyan.server.device_server import AddressLimits
from cyan.store import FirmwareFiles, open_store

__all__ = [
    "PortUnavailableError",
    "SchemaStatus",
    "ServerKeys",
    "Service",
    "database_status",
    "ensure_server_keys",
    "open_application",
    "prepare_data_directory",
    "settle_server_key",
    "upgrade_database",
    "write_server_key_file",
    "write_udp_server_key_file",
]

log = logging.getLogger("cyan")

#: Seconds between two readings of the webhooks from the store, on a node of several (docs/scale-out.md).
_HOOKS_RELOAD_CLUSTERED = 5.0


class PortUnavailableError(OSError):
    """A port this server was to listen on is taken, or not this user's to take."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        return str(self.args[0])


@contextlib.contextmanager
def _naming_the_port(what: str, host: str, port: int, flag: str) -> Iterator[None]:
    """An address in use says which port, for what, and how to choose another."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortUnavailableError(
                f"port {port} on {host or '*'} (for {what}) is in use by another program",
                f"stop the other program (ss -ltnp 'sport = :{port}' names it), or choose another port with "
                f"{flag} (or CYAN_{flag[2:].upper().replace('-', '_')})",
            ) from exc
        if exc.errno == errno.EACCES:
            raise PortUnavailableError(
                f"port {port} on {host or '*'} (for {what}) is not this user's to listen on",
                f"ports below 1024 need privileges: choose one from 1024 up with {flag}, or forward to it",
            ) from exc
        raise


class _ApiServer(uvicorn.Server):
    """uvicorn on our loop; the service, not uvicorn, owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Service:
    """One `cyan serve` process: store, bus, cloud, use cases and device server on one event loop."""

    def __init__(self, settings: Settings, keys: ServerKeys, *, protocol: ServerConfig | None = None) -> None:
        self.settings = settings
        self.keys = keys
        self.store = open_store(settings.database_location)
        self.bus = open_bus(settings.bus_url, node_id=settings.node_id)
        protocol = protocol or ServerConfig()
        alerts = WebhookAlerts(settings.alert_webhook) if settings.alert_webhook else None
        records = RecordLimits(
            max_age=timedelta(days=settings.attempts_max_age_days), max_count=settings.attempts_max_count
        )
        self.cloud = Cloud(
            self.store,
            self.bus,
            request_timeout=protocol.request_timeout,
            alerts=alerts,
            records=records,
            clustered=bool(settings.bus_url.strip()),
        )
        address_limits = AddressLimits(settings.address_burst, float(settings.address_rate))
        library = FirmwareLibrary(self.store.updates, FirmwareFiles(settings.firmware_dir))
        self.updates = UpdateManager(self.cloud, self.store.updates, library)
        logins = LoginLimits(
            per_account=settings.login_failures_per_account,
            per_address=settings.login_failures_per_address,
            window=settings.login_window_minutes * 60.0,
        )
        # Webhooks act on the events this process's devices and API callers publish; their HTTP goes only where
        # the address policy lets it (docs/security.md).
        self.hook_sender = HttpSender(
            AddressPolicy.parse(settings.hook_allowed_networks), user_agent=f"Cyan/{__version__} (webhooks)"
        )
        # One of several nodes: a webhook created or changed through another node is read from the store within
        # seconds (each node keeps the hooks in memory, to offer every event without a query).
        self.hooks = WebhookDispatcher(
            self.store,
            self.bus,
            self.hook_sender,
            device=self.cloud.live,
            reload_interval=_HOOKS_RELOAD_CLUSTERED if self.cloud.clustered else 60.0,
        )
        self.cloud.origin_listeners.append(self.hooks.offer)
        self.vitals = VitalsCollector(self.cloud, self.store, timeout=protocol.request_timeout)
        self.app = Application(
            self.store,
            cloud=self.cloud,
            updates=self.updates,
            login_limits=logins,
            hooks=self.hooks,
            vitals=self.vitals,
        )
        gateway = self.app.gateway
        assert gateway is not None
        self.gateway = gateway
        self.device_server: DeviceServer | DeviceProcesses
        if settings.device_processes:
            self.device_server = DeviceProcesses(
                gateway,
                settings.server_key_path,
                settings.device_processes,
                host=settings.device_host,
                port=settings.device_port,
                config=protocol,
                address_limits=address_limits,
                max_handshakes=settings.max_handshakes,
            )
        else:
            self.device_server = DeviceServer(
                gateway,
                keys.private_key,
                host=settings.device_host,
                port=settings.device_port,
                config=protocol,
                key_workers=settings.workers,
                address_limits=address_limits,
                max_handshakes=settings.max_handshakes,
            )
        self.udp_server: DatagramServer | None = None
        if settings.device_udp_port >= 0 and keys.udp_private_key is not None:
            self.udp_server = DatagramServer(
                gateway,
                keys.udp_private_key,
                host=settings.device_host,
                port=settings.device_udp_port,
                config=DatagramConfig(request_timeout=protocol.request_timeout),
                address_limits=address_limits,
                sessions=gateway,
            )
        self.server_key_file: Path | None = None
        self.udp_server_key_file: Path | None = None
        self.api = create_app(ApiContext(self.app, server_key_file=lambda: self.server_key_file))
        self.api_port = settings.api_port
        self._api: _ApiServer | None = None
        self._api_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start everything, or nothing: a part that fails (a port in use, a database that cannot be
        opened, a Redis that does not answer) stops the parts already started, so no socket or connection is
        left behind.

        The node joins the bus before it serves anything: its first session can replace one another node
        holds, and its first request reach another node."""
        try:
            await self.store.open()
            await settle_server_key(self.settings, self.keys, self.app)
            await self.bus.start()
            await self.cloud.start()
            await self.hooks.start()
            self.vitals.start()
            with _naming_the_port("devices", self.settings.device_host, self.settings.device_port, "--device-port"):
                await self.device_server.start()
            if self.udp_server is not None:
                with _naming_the_port(
                    "UDP devices", self.settings.device_host, self.settings.device_udp_port, "--device-udp-port"
                ):
                    await self.udp_server.start()
                assert self.keys.udp_private_key is not None
                self.udp_server_key_file = write_udp_server_key_file(
                    self.settings, self.keys.udp_private_key.public_key(), self.udp_server.port
                )
            await self.updates.start()
            self.server_key_file = write_server_key_file(
                self.settings, self.keys.private_key.public_key(), self.device_server.port
            )
            await self._start_api()
        except BaseException:
            await self.stop()
            raise

    async def _start_api(self) -> None:
        family = socket.AF_INET6 if ":" in self.settings.api_host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose protocol says
        # TCP, and uvicorn writes a response's head and body separately; with Nagle on, every response
        # waited ~40 ms for the client's delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            with _naming_the_port("the Cloud API", self.settings.api_host, self.settings.api_port, "--api-port"):
                sock.bind((self.settings.api_host, self.settings.api_port))
        except OSError:
            sock.close()
            raise
        sock.listen(1024)
        sock.setblocking(False)
        self.api_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.api,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
            access_log=False,
        )
        self._api = _ApiServer(config)
        self._api_task = asyncio.create_task(self._api.serve(sockets=[sock]), name="cyan-api")
        while not self._api.started:
            if self._api_task.done():
                await self._api_task  # re-raises what stopped it
                raise RuntimeError("the HTTP API stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._api is not None and self._api_task is not None:
            self.bus.close_all()  # ends the event streams, so the API can shut down promptly
            self._api.should_exit = True
            await self._api_task
            self._api = self._api_task = None
        await self.updates.stop()
        await self.device_server.stop()
        if self.udp_server is not None:
            await self.udp_server.stop()
        await self.gateway.drain()
        await self.vitals.stop()
        await self.hooks.stop()
        await self.hook_sender.aclose()
        await self.cloud.stop()
        if self.settings.bus_url:
            await self.bus.close()  # leaves the cloud: its presences go (the in-process bus has no one to tell)
        await self.store.close()

    async def run(self, on_ready: Callable[[Service], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM, then shut down cleanly."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        # Frozen before the ports open, so that the first full collections of a fleet reconnecting at once do
        # not walk the modules too; again once started (`CollectorPolicy.serving`), for what starting made.
        freeze_startup_objects()
        await self.start()
        try:
            async with CollectorPolicy().serving():
                if on_ready is not None:
                    on_ready(self)
                await stop.wait()
        finally:
            log.info("shutting down")
            await self.stop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(signum)
