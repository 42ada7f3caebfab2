"""A device server on a memory store, in the test's own event loop: what the device server's tests start,
wait on and shut down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cyan.app import Actor, Application, NewDevice
from cyan.bus import InProcessBus
from cyan.cloud.models import ConnectionAttempt
from cyan.cloud.service import Cloud
from cyan.cloud.writer import RecordLimits
from cyan.keys import public_key_der
from cyan.protocol import ServerConfig
from cyan.server import DeviceServer
from cyan.server.device_server import AddressLimits
from cyan.sim import SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.store import MemoryStore
from cyan.testing import fixed_device_key, fixed_server_key


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def cloud_on_memory(records: RecordLimits | None = None) -> tuple[Application, Cloud]:
    """An application and its cloud on a memory store, started."""
    store = MemoryStore()
    await store.open()
    cloud = Cloud(store, InProcessBus(), records=records)
    app = Application(store, cloud=cloud)
    await cloud.start()
    return app, cloud


async def served_server(
    *, address_limits: AddressLimits | None = None, records: RecordLimits | None = None, **limits: float
) -> tuple[Application, Cloud, DeviceServer]:
    app, cloud = await cloud_on_memory(records)
    assert app.gateway is not None
    server = DeviceServer(
        app.gateway,
        fixed_server_key(),
        host="127.0.0.1",
        port=0,
        config=ServerConfig(),
        max_handshakes=int(limits.get("max_handshakes", 2)),
        max_queued=int(limits["max_queued"]) if "max_queued" in limits else None,
        max_wait=limits.get("max_wait", 15.0),
        key_workers=int(limits.get("key_workers", 0)),
        address_limits=address_limits,
    )
    await server.start()
    return app, cloud, server


async def shut(app: Application, cloud: Cloud, server: DeviceServer) -> list[ConnectionAttempt]:
    await server.stop()
    assert app.gateway is not None
    await app.gateway.drain()
    await cloud.stop()
    attempts = await app.store.attempts.recent(limit=100)
    await app.store.close()
    return attempts


async def registered_device(app: Application, device_id: str, *, register: bool = True) -> VirtualDevice:
    """A simulated device with `fixed_device_key(1)`, registered with the operator's authority unless not
    `register`, that reconnects quickly (a twentieth of the firmware's backoff)."""
    if register:
        await app.devices.register(
            Actor.operator("ops"), [NewDevice(device_id, public_key_der(fixed_device_key(1).public_key()))]
        )
    return VirtualDevice(
        VirtualDeviceSpec(device_id, fixed_device_key(1)),
        fixed_server_key().public_key(),
        config=SimConfig(backoff_scale=0.05),
    )
