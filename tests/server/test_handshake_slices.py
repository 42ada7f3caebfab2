"""The handshakes' work runs in slices of the event loop (`HANDSHAKE_SLICE`), after what the connected devices
and the API have ready: a fleet reconnecting at once no longer makes the passes of the loop that a call to a
device already back waits for. A handshake's inputs keep their order, and nothing that must see them (the
device's answer against its timer, the end of the stream) runs before them."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cyan.app import Actor, NewDevice
from cyan.cloud.models import AttemptOutcome, ConnectionAttempt
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

    def failed_internally(self, exc: Exception) -> None:
        self._ran.append(f"failed {self.name}: {exc}")


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

    assert asyncio.run(scenario()) == ["failed bad: a bug in one handshake's step", "good"]


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


def test_a_handshakes_inputs_and_its_rsa_results_wait_for_a_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The device's messages, the key decision and the results of the key workers' RSA operations all go
    through the slices: none is acted on from another callback of the loop."""
    acted: list[tuple[str, bool]] = []
    in_slice = [False]
    real_slice = DeviceServer._run_slice

    def run_slice(self: DeviceServer) -> None:
        in_slice[0] = True
        try:
            real_slice(self)
        finally:
            in_slice[0] = False

    def watched(name: str) -> Callable[..., None]:
        real = getattr(DeviceProtocol, name)

        def step(self: DeviceProtocol, *args: Any) -> None:
            acted.append((name, in_slice[0]))
            real(self, *args)

        return step

    monkeypatch.setattr(DeviceServer, "_run_slice", run_slice)
    for name in ("_receive", "_private_key_result", "_act_on"):
        monkeypatch.setattr(DeviceProtocol, name, watched(name))

    async def scenario() -> None:
        app, cloud, server = await served_server(max_handshakes=4, key_workers=2)
        device = await registered_device(app, "cd" * 12)
        try:
            device.start("127.0.0.1", server.port)
            await asyncio.wait_for(device.connected.wait(), 10)
        finally:
            await device.stop()
            attempts = await shut(app, cloud, server)
        [attempt] = attempts
        assert attempt.outcome is AttemptOutcome.CONNECTED

    asyncio.run(scenario())
    kinds = [name for name, _ in acted]
    assert kinds.count("_private_key_result") == 2  # the identity's decryption and the session key's signature
    assert kinds.count("_act_on") == 1
    assert kinds.index("_act_on") < kinds.index("_private_key_result", kinds.index("_private_key_result") + 1)
    # Everything up to the end of its start came through a slice (its goodbye, at the stop, may not).
    started = [in_slice for name, in_slice in acted if name != "_receive"]
    assert all(started)
    assert all(in_slice for _, in_slice in acted[: kinds.index("_act_on") + 1])


def test_a_step_that_raises_while_the_connection_is_lost_still_lets_it_go(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure of the server's own (a bug, a cloud that failed) in a queued input ends that connection
    cleanly, recorded as server_error: its place among the handshakes is given back and it is forgotten."""

    async def scenario() -> list[ConnectionAttempt]:
        app, cloud, server = await served_server(max_handshakes=1)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert len(await asyncio.wait_for(reader.readexactly(40), 10)) == 40
            [link] = [server.connection(i) for i in list(server._connections)]
            assert link is not None
            monkeypatch.setattr(server, "defer", lambda _link: None)  # its inputs wait: no slice runs

            def broken() -> None:
                raise RuntimeError("a bug in a step")

            link._defer(broken)
            writer.close()  # the device goes: the queued step runs first, and raises
            await wait_until(lambda: server.connection_count == 0, "the connection forgotten")
            assert server.handshakes == 0
        finally:
            attempts = await shut(app, cloud, server)
        return attempts

    [attempt] = asyncio.run(scenario())
    assert (attempt.outcome, attempt.step, attempt.reason) == (AttemptOutcome.FAILED, "nonce", "server_error")
    assert attempt.detail is not None
    assert "a bug in a step" in attempt.detail


def test_a_client_flooding_its_handshake_is_read_no_further_until_its_turn() -> None:
    class _Transport:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def pause_reading(self) -> None:
            self.calls.append("pause")

        def resume_reading(self) -> None:
            self.calls.append("resume")

        def is_closing(self) -> bool:
            return False

    async def scenario() -> list[str]:
        app, cloud = await cloud_on_memory()
        assert app.gateway is not None
        server = DeviceServer(app.gateway, fixed_server_key())
        server.defer = lambda link: None  # type: ignore[method-assign]
        protocol = DeviceProtocol(server)
        transport = _Transport()
        protocol._transport = transport  # type: ignore[assignment]
        protocol._sliced_until = math.inf  # in its handshake
        for _ in range(device_server._QUEUED_INPUTS_READ + 3):
            protocol.data_received(b"x" * 1000)
        paused = list(transport.calls)
        protocol.run_deferred()
        await cloud.stop()
        await app.store.close()
        return [*paused, "its turn", *transport.calls[len(paused) :]]

    # Paused from the queue's limit on (pausing a paused transport changes nothing), resumed at its turn.
    calls = asyncio.run(scenario())
    assert calls == ["pause"] * 4 + ["its turn", "resume"]


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
