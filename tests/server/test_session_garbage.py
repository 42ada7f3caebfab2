"""A device's connection is freed by its reference counts when it ends, without the cyclic garbage collector.

A serving process freezes what survives its slow full collections (`cyan.limits.CollectorPolicy`): a frozen
connection caught in a reference cycle would be held until the next whole-heap collection, hours later. So
the objects of a session (its protocol, the protocol core's connection, its transport) must form no cycle
that outlives it: these tests run a session's life with the collector off and find none of them left."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from cyan.protocol import ServerConnection
from cyan.server.device_server import DeviceProtocol, DeviceServer
from cyan.sim import VirtualDevice
from device_server_support import registered_device, served_server, shut, wait_until

DEVICE = "ef" * 12


@contextmanager
def _collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def _run_sessions(life: Callable[[DeviceServer, VirtualDevice], Awaitable[None]], *, registered: bool = True) -> None:
    async def scenario() -> None:
        app, cloud, server = await served_server(max_handshakes=4)
        device = await registered_device(app, DEVICE, register=registered)
        try:
            before = _alive(DeviceProtocol), _alive(ServerConnection)
            for _ in range(3):  # three sessions: what one leaves, three leave three times
                await life(server, device)
                await device.stop()
                await wait_until(lambda: server.connection_count == 0, "the server's end of the connection")
                for _ in range(5):
                    await asyncio.sleep(0)  # the transport's own close runs on the next passes
            assert (_alive(DeviceProtocol), _alive(ServerConnection)) == before
        finally:
            await device.stop()
            await shut(app, cloud, server)

    with _collector_off():
        asyncio.run(scenario())


def test_a_session_with_a_call_leaves_nothing_for_the_cycle_collector() -> None:
    async def life(server: DeviceServer, device: VirtualDevice) -> None:
        device.start("127.0.0.1", server.port)
        await asyncio.wait_for(device.connected.wait(), 10)
        [link] = [server.connection(i) for i in list(server._connections)]
        assert link is not None
        assert isinstance(await asyncio.wait_for(link.call_function("setArg", "x", 5), 10), int)

    _run_sessions(life)


def test_a_refused_device_leaves_nothing_for_the_cycle_collector() -> None:
    async def life(server: DeviceServer, device: VirtualDevice) -> None:
        failed = device.failure_count
        device.start("127.0.0.1", server.port)
        await wait_until(lambda: device.failure_count > failed, "a refused handshake")

    _run_sessions(life, registered=False)
