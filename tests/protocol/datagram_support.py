"""An in-memory wire with a fake clock between the two UDP roles: the server's `DatagramServerConnection` and
the simulator's device (`DatagramDeviceConnection`), with seeded loss, duplication and reordering, and an
update sender driven beside them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cyan.protocol import DeviceIdentified, FunctionCalled, OtaSender, OtaV3Sender
from cyan.protocol.datagram import ARGON_4_0_2, DatagramConfig, DatagramDeviceConnection, DatagramServerConnection
from cyan.protocol.device import DeviceConfig, UpdateCheck
from cyan.protocol.events import Event
from cyan.protocol.firmware import Firmware
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
    firmware: Firmware = ARGON_4_0_2
    device_config: DeviceConfig | None = None
    check_update: UpdateCheck | None = None
    #: An update under way: the server's events go to it too, and its timer runs with the others'.
    sender: OtaSender | OtaV3Sender | None = None
    #: Messages carried each way, in order, after the faults: what a test may inspect.
    carried_to_device: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.chance = random.Random(self.seed)
        rng = random.Random(self.seed + 1).randbytes
        config = DatagramConfig(describe_delay=None, request_timeout=300.0)
        self.server = DatagramServerConnection(b"key", self.now, config=config, rng=rng)
        check = self.check_update
        self.device = DatagramDeviceConnection(
            DEVICE_ID,
            self.now,
            firmware=self.firmware,
            application=default_udp_application(),
            config=self.device_config,
            rng=rng,
            check_update=None if check is None else (lambda image: check),
        )
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
            from_server = self.server.messages_to_send(self.now)
            self.carried_to_device += from_server
            self._carry(from_server, self.to_device)
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
