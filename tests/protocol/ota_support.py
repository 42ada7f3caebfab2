"""Driving an update between the two roles over an in-memory wire, on a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cyan.protocol import (
    DEVICE_OS_3_1_0,
    Application,
    DeviceConfig,
    DeviceConnection,
    DeviceIdentified,
    Firmware,
    OtaConfig,
    OtaSender,
    ServerConfig,
    ServerConnection,
    State,
    UpdateCheck,
)
from cyan.protocol.events import Event
from cyan.testing import ConnectionPair, ScriptedRandom, drain, fixed_device_key, fixed_server_key

NOW = 1_700_000_000.0
DEVICE_ID = bytes.fromhex("0123456789abcdef01234567")


def image_of(size: int, seed: int = 3) -> bytes:
    return bytes((i * seed + i // 256) % 256 for i in range(size))


def connect(
    firmware: Firmware = DEVICE_OS_3_1_0,
    *,
    device_config: DeviceConfig | None = None,
    check_update: Callable[[bytes], UpdateCheck] | None = None,
    damage_chunk: Callable[[int], bool] | None = None,
    server_config: ServerConfig | None = None,
    application: Application | None = None,
) -> ConnectionPair:
    key = fixed_server_key()
    server = ServerConnection(key, NOW, config=server_config, rng=ScriptedRandom(seed=1))
    device = DeviceConnection(
        DEVICE_ID,
        fixed_device_key(),
        key.public_key(),
        NOW,
        firmware=firmware,
        application=application,
        config=device_config,
        rng=ScriptedRandom(seed=2),
        check_update=check_update,
        damage_chunk=damage_chunk,
    )
    pair = ConnectionPair(server, device)
    pair.pump(NOW)
    (identified,) = pair.take_server_events()
    assert isinstance(identified, DeviceIdentified)
    assert identified.public_key is not None
    server.accept(identified.public_key, NOW)
    pair.pump(NOW)
    assert server.state is State.CONNECTED
    assert device.state is State.CONNECTED
    pair.take_server_events()
    pair.take_device_events()
    return pair


def damage_once(indexes: set[int]) -> Callable[[int], bool]:
    """Each listed chunk arrives damaged the first time only (a bad CRC, §7.1)."""
    pending = set(indexes)

    def damaged(index: int) -> bool:
        if index in pending:
            pending.discard(index)
            return True
        return False

    return damaged


@dataclass
class Run:
    """An update driven to its end: what each side saw, and when it ended."""

    pair: ConnectionPair
    sender: OtaSender
    now: float
    server_events: list[Event] = field(default_factory=list)
    device_events: list[Event] = field(default_factory=list)

    def device_events_of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.device_events if isinstance(e, kind)]


def run_update(
    pair: ConnectionPair,
    image: bytes,
    *,
    fast: bool | None = None,
    config: OtaConfig | None = None,
    until: float = 120.0,
    backlog: Callable[[float], int] | None = None,
) -> Run:
    """Start an update and step both sides and the sender until it ends and the device has reset (or
    nothing is due before `until` seconds)."""
    now = NOW + 0.5
    sender = OtaSender(pair.server, image, now, fast=fast, config=config)
    run = Run(pair, sender, now)
    server, device = pair.server, pair.device
    while True:
        # Move bytes until both sides are quiet: what the sender queues in answer goes out at once.
        while True:
            pair.pump(now)
            run.device_events += pair.take_device_events()
            events = pair.take_server_events()
            if device.closed and not server.closed:
                server.receive_eof(now)  # the reset: after what the device wrote before it
                events += drain(server)
            for event in events:
                run.server_events.append(event)
                sender.handle_event(event, now)
            if not events:
                pair.pump(now)
                break
        run.device_events += pair.take_device_events()
        if sender.finished and (device.closed or server.closed):
            break
        dues = [t for t in (server.get_timer(), device.get_timer(), sender.get_timer()) if t is not None]
        if not dues or min(dues) > NOW + until:
            break
        now = max(now, min(dues))
        server.handle_timer(now)
        if not device.closed:
            device.handle_timer(now)
        sender.handle_timer(now, backlog=backlog(now) if backlog else 0)
    run.now = now
    return run
