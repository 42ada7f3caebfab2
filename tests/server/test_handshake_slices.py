"""The handshakes' work runs in slices of the event loop (`HANDSHAKE_SLICE`), after what the connected devices
and the API have ready: a fleet reconnecting at once no longer makes the passes of the loop that a call to a
device already back waits for. A handshake's inputs keep their order, and nothing that must see them (the
device's answer against its timer, the end of the stream) runs before them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cyan.app import Actor, NewDevice
from cyan.cloud.models import AttemptOutcome
from cyan.keys import public_key_der
from cyan.server import device_server
from cyan.server.device_server import DeviceProtocol, DeviceServer
from cyan.sim import SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.testing import fixed_device_key, fixed_server_key
from device_server_support import cloud_on_memory, registered_device, served_server, shut, wait_until


class _Link:
    """What a slice asks of a connection: run its queued inputs (each takes `cost` of the fake clock)."""

    def __init__(self, name: str, ran: list[str], clock: list[float], cost: float) -> None:
        self.name, self._ran, self._clock, self._cost = name, ran, clock, cost
        self.connection_id, self.peer_address = 0, "test"

    def run_deferred(self) -> None:
        self._ran.append(self.name)
        self._clock[0] += self._cost

    def close(self) -> None:
        self._ran.append(f"closed {self.name}")


def test_a_slice_stops_at_its_time_and_lets_the_ready_callbacks_run_before_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(device_server, "_now", lambda: clock[0])

    async def scenario() -> list[str]:
        app, cloud = await cloud_on_memory()
        assert app.gateway is not None
        server = DeviceServer(app.gateway, fixed_server_key())
        ran: list[str] = []
        # Five handshakes' inputs of 0.8 ms each: a slice of 2 ms runs three (it stops once past its time).
        for n in range(5):
            server.defer(_Link(f"h{n}", ran, clock, 0.0008))  # type: ignore[arg-type]
        asyncio.get_running_loop().call_soon(ran.append, "a connected device's read")
        for _ in range(5):
            await asyncio.sleep(0)
        await cloud.stop()
        await app.store.close()
        return ran

    assert asyncio.run(scenario()) == ["h0", "h1", "h2", "a connected device's read", "h3", "h4"]


def test_a_slice_that_raises_closes_that_connection_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    class _Failing(_Link):
        def run_deferred(self) -> None:
            raise RuntimeError("a bug in one handshake's step")

    async def scenario() -> list[str]:
        app, cloud = await cloud_on_memory()
        assert app.gateway is not None
        server = DeviceServer(app.gateway, fixed_server_key())
        ran: list[str] = []
        clock = [0.0]
        server.defer(_Failing("bad", ran, clock, 0.0))  # type: ignore[arg-type]
        server.defer(_Link("good", ran, clock, 0.0))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        await cloud.stop()
        await app.store.close()
        return ran

    assert asyncio.run(scenario()) == ["closed bad", "good"]


def _protocol_with_queued(order: list[str]) -> DeviceProtocol:
    """A TCP connection's protocol with one input queued for a slice, as during its handshake."""

    class _Host:
        cloud: Any = None

    protocol = DeviceProtocol(_Host())  # type: ignore[arg-type]
    protocol._deferred = [lambda: order.append("the queued input")]
    return protocol


@pytest.mark.parametrize(
    ("what", "act"),
    [
        ("the timer", lambda p: p._on_timer()),
        ("the end of the stream", lambda p: p.eof_received()),
        ("the connection's loss", lambda p: p.connection_lost(None)),
    ],
)
def test_the_inputs_queued_for_a_slice_are_acted_on_before(what: str, act: Callable[[DeviceProtocol], Any]) -> None:
    # A device that answered in time is not timed out while its answer waits for a slice, and an answer
    # followed by a close is read before the close.
    order: list[str] = []
    protocol = _protocol_with_queued(order)

    class _Forget:
        def forget(self, link: DeviceProtocol) -> None:
            order.append(what)

    protocol._server = _Forget()  # type: ignore[assignment]
    act(protocol)
    assert order[0] == "the queued input"
    assert protocol._deferred is None


def test_devices_connect_with_slices_of_one_step_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of nothing still run one connection's inputs each pass: every handshake completes, in order."""
    monkeypatch.setattr(device_server, "HANDSHAKE_SLICE", 0.0)
    count = 12

    async def scenario() -> None:
        app, cloud, server = await served_server(max_handshakes=count)
        ids = [f"{n:024x}" for n in range(1, count + 1)]
        await app.devices.register(
            Actor.operator("ops"), [NewDevice(d, public_key_der(fixed_device_key(1).public_key())) for d in ids]
        )
        devices = [
            VirtualDevice(
                VirtualDeviceSpec(d, fixed_device_key(1)), fixed_server_key().public_key(), config=SimConfig()
            )
            for d in ids
        ]
        try:
            for device in devices:
                device.start("127.0.0.1", server.port)
            await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 30)
        finally:
            for device in devices:
                await device.stop()
            attempts = await shut(app, cloud, server)
        assert sorted(a.device_id or "" for a in attempts if a.outcome is AttemptOutcome.CONNECTED) == ids
        assert not [a for a in attempts if a.outcome is not AttemptOutcome.CONNECTED]

    asyncio.run(scenario())


def test_a_session_past_its_start_is_served_at_once_not_in_a_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_server, "SETTLING", 0.0)

    async def scenario() -> None:
        app, cloud, server = await served_server(max_handshakes=4)
        device = await registered_device(app, "ab" * 12)
        deferred: list[DeviceProtocol] = []
        try:
            device.start("127.0.0.1", server.port)
            await asyncio.wait_for(device.connected.wait(), 10)
            [link] = [server.connection(i) for i in list(server._connections)]
            assert link is not None
            await wait_until(lambda: link._deferred is None, "its start's inputs acted on")
            monkeypatch.setattr(server, "defer", deferred.append)
            # A function call: the device's answer is read as it comes, with no slice in between.
            value = await asyncio.wait_for(link.call_function("setArg", "x", 5), 10)
            assert isinstance(value, int)
            assert deferred == []
        finally:
            await device.stop()
            await shut(app, cloud, server)

    asyncio.run(scenario())


def test_a_handshake_waits_for_a_slice_in_the_order_its_inputs_came() -> None:
    async def scenario() -> None:
        app, cloud, server = await served_server(max_handshakes=4)
        device = await registered_device(app, "cd" * 12)
        queued: list[int] = []
        original = server.defer

        def counting(link: DeviceProtocol) -> None:
            queued.append(link.connection_id)
            original(link)

        server.defer = counting  # type: ignore[method-assign]
        try:
            device.start("127.0.0.1", server.port)
            await asyncio.wait_for(device.connected.wait(), 10)
        finally:
            await device.stop()
            attempts = await shut(app, cloud, server)
        # The handshake's inputs went through slices: the identity, the key decision, the RSA results, the Hello.
        assert len(queued) >= 3
        assert len(set(queued)) == 1
        [attempt] = attempts
        assert attempt.outcome is AttemptOutcome.CONNECTED

    asyncio.run(scenario())


def _nice(tid: int) -> int:
    # Field 19 of /proc/<pid>/task/<tid>/stat, after the command name in parentheses (which may hold spaces).
    stat = Path(f"/proc/self/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread priorities are read from Linux's /proc")
def test_the_key_workers_run_below_the_event_loops_priority() -> None:
    """The RSA work can wait for a core; the event loop, which the connected devices' calls wait for, should not."""

    loop_nice = _nice(threading.get_native_id())
    lowered = min(19, loop_nice + device_server.KEY_WORKER_NICENESS)

    def workers() -> dict[str, int]:
        return {
            f"{t.name} {t.native_id}": _nice(t.native_id)
            for t in threading.enumerate()
            if t.name.startswith("cyan-key-") and t.native_id is not None
        }

    async def scenario() -> dict[str, int]:
        app, cloud = await cloud_on_memory()
        assert app.gateway is not None
        server = DeviceServer(app.gateway, fixed_server_key(), host="127.0.0.1", port=0, key_workers=2)
        await server.start()
        try:
            # Each worker lowers its own priority as it starts.
            await wait_until(lambda: list(workers().values()) == [lowered] * 2, "the workers' priority")
            return workers()
        finally:
            await server.stop()
            await cloud.stop()
            await app.store.close()

    assert list(asyncio.run(scenario()).values()) == [lowered] * 2
    assert _nice(threading.get_native_id()) == loop_nice  # the loop's own priority is left as it was
