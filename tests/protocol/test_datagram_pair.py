"""The message layer over UDP in both roles, over an in-memory wire with a fake clock: the device role
(`DatagramDeviceConnection`, the simulator's Argon) and the server's, with seeded loss, duplication and
reordering. Calls, reads and events arrive exactly once, whatever the wire does, by retransmission and
deduplication alone (udp-dtls.md §1.5)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from cyan.protocol import (
    DeviceIdentified,
    DeviceReset,
    EventPublished,
    FunctionCalled,
    FunctionReturned,
    OtaSender,
    ServerHelloReceived,
    VariableRead,
)
from cyan.protocol.datagram import DatagramConfig, DatagramDeviceConnection, DatagramServerConnection
from cyan.protocol.events import Event
from cyan.sim import default_udp_application

DEVICE_ID = bytes.fromhex("0123456789abcdef01234567")


@dataclass
class Pair:
    seed: int
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    now: float = 0.0
    chance: random.Random = field(init=False)
    device: DatagramDeviceConnection = field(init=False)
    server: DatagramServerConnection = field(init=False)
    to_server: list[bytes] = field(default_factory=list)
    to_device: list[bytes] = field(default_factory=list)
    server_events: list[Event] = field(default_factory=list)
    device_events: list[Event] = field(default_factory=list)
    #: An update under way: the server's events go to it too, and its timer runs with the others'.
    sender: OtaSender | None = None

    def __post_init__(self) -> None:
        self.chance = random.Random(self.seed)
        rng = random.Random(self.seed + 1).randbytes
        config = DatagramConfig(describe_delay=None, request_timeout=300.0)
        self.server = DatagramServerConnection(b"key", self.now, config=config, rng=rng)
        self.device = DatagramDeviceConnection(DEVICE_ID, self.now, application=default_udp_application(), rng=rng)
        self.device.start(self.now)

    def _carry(self, messages: list[bytes], queue: list[bytes]) -> None:
        for message in messages:
            if self.chance.random() < self.loss:
                continue
            copies = 2 if self.chance.random() < self.duplicate else 1
            for _ in range(copies):
                if queue and self.chance.random() < self.reorder:
                    queue.insert(len(queue) - 1, message)
                else:
                    queue.append(message)

    def _drain(self) -> None:
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)
            if self.sender is not None:
                self.sender.handle_event(event, self.now)
            if isinstance(event, DeviceIdentified):
                self.server.accept_device(self.now)
        while (device_event := self.device.next_event()) is not None:
            self.device_events.append(device_event)
            if isinstance(device_event, FunctionCalled):
                self.device.respond_function(device_event.request, len(device_event.argument))

    def step(self) -> None:
        """Carry what both sides queued, deliver it, act on the events."""
        for _ in range(100):
            self._carry(self.device.messages_to_send(self.now), self.to_server)
            self._carry(self.server.messages_to_send(self.now), self.to_device)
            if not self.to_server and not self.to_device:
                return
            to_server, self.to_server = self.to_server, []
            to_device, self.to_device = self.to_device, []
            for message in to_server:
                if not self.server.closed:
                    self.server.receive_message(message, self.now)
            for message in to_device:
                if not self.device.closed:
                    self.device.receive_message(message, self.now)
            self._drain()

    def run_until(self, until: float) -> None:
        """Advance the clock from timer to timer, carrying everything in between."""
        self.step()
        for _ in range(100_000):
            sender_due = None if self.sender is None else self.sender.get_timer()
            timers = [t for t in (self.server.get_timer(), self.device.get_timer(), sender_due) if t is not None]
            due = min(timers, default=None)
            if due is None or due > until:
                self.now = until
                return
            self.now = max(self.now, due)
            self.server.handle_timer(self.now)
            self.device.handle_timer(self.now)
            if self.sender is not None:
                self.sender.handle_timer(self.now)
            self._drain()
            self.step()
        raise AssertionError(f"the timers keep firing at {self.now}: nothing moves on")


def test_a_clean_wire_connects_and_serves() -> None:
    pair = Pair(seed=1)
    pair.run_until(1.0)
    assert any(isinstance(e, ServerHelloReceived) for e in pair.device_events)
    request = pair.server.read_variable("temp", pair.now)
    pair.run_until(2.0)
    (read,) = [e for e in pair.server_events if isinstance(e, VariableRead)]
    assert (read.request_id, read.value) == (request, 21.5)


@pytest.mark.parametrize("seed", range(8))
def test_calls_and_events_arrive_once_through_loss_duplication_and_reordering(seed: int) -> None:
    pair = Pair(seed=seed, loss=0.05, duplicate=0.05, reorder=0.05)
    pair.run_until(30.0)
    assert any(isinstance(e, ServerHelloReceived) for e in pair.device_events)
    calls = {}
    for i in range(20):
        calls[pair.server.call_function("setArg", f"call {i}", pair.now)] = len(f"call {i}")
        pair.device.publish("reading", str(i), pair.now, with_ack=True)
        pair.run_until(pair.now + 10.0)
    pair.run_until(pair.now + 120.0)
    returned = {e.request_id: e.return_value for e in pair.server_events if isinstance(e, FunctionReturned)}
    # Each call reached the application once and answered once; each event was published once. (Not always in
    # order: a call whose first transmissions were lost can arrive after the next one, as CoAP allows.)
    assert returned == calls
    called = [e.argument for e in pair.device_events if isinstance(e, FunctionCalled)]
    assert sorted(called) == sorted(f"call {i}".encode() for i in range(20))
    readings = [e.data or b"" for e in pair.server_events if isinstance(e, EventPublished) and e.name == "reading"]
    assert sorted(readings) == sorted(str(i).encode() for i in range(20))


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_an_update_over_udp_every_chunk_confirmable(loss: float) -> None:
    pair = Pair(seed=11, loss=loss, duplicate=loss, reorder=loss)
    pair.run_until(30.0)
    image = bytes((i * 7 + i // 256) % 256 for i in range(20 * 512 + 100))
    # Over UDP the chunks are confirmable and acknowledged one by one: never the fast mode (docs/dtls.md).
    pair.sender = OtaSender(pair.server, image, pair.now, fast=False)
    pair.run_until(pair.now + 600.0)
    assert pair.sender.finished
    assert pair.sender.outcome is not None
    assert pair.sender.outcome.complete, pair.sender.outcome
    (reset,) = [e for e in pair.device_events if isinstance(e, DeviceReset)]
    assert reset.image == image
