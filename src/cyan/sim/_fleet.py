"""Fleets: many virtual devices in one event loop, started on a ramp, counted, stopped cleanly."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.keys import (
    KeyFormatError,
    ServerAddress,
    encode_public_key_pem,
    fingerprint,
    load_public_key,
    parse_server_key_file,
    read_firmware_server_key,
)
from cyan.protocol import DEVICE_OS_3_1_0, Firmware

from ._device import DeviceState, FunctionHandler, VirtualDevice
from ._faults import corrupt_device_key
from ._keystore import generate_device_keys, load_or_create_keys
from ._spec import AppSpec, Fault, SimConfig, VirtualDeviceSpec, derive_device_id

__all__ = [
    "Fleet",
    "FleetStats",
    "read_server_key",
    "registered_public_key",
    "resolve_host",
    "write_provisioning",
]

#: How often the start ramp wakes up to start the devices that are due.
_RAMP_TICK = 0.01


@dataclass(frozen=True, slots=True)
class FleetStats:
    """A snapshot of a fleet. `failures` counts failed attempts (not connected) by outcome: a protocol
    reason (closed_by_peer, decrypt_failed, hello_timeout, ...) or connect_failed / connect_timeout."""

    devices: int
    connected: int
    #: Opening the socket or in the handshake.
    connecting: int
    #: Waiting for the ramp or the backoff (§8.3).
    waiting: int
    stopped: int
    attempts: int
    connects: int
    failures: dict[str, int] = field(default_factory=dict)
    published: int = 0

    def __str__(self) -> str:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failures.items())) or "none"
        return (
            f"{self.connected}/{self.devices} connected, {self.connecting} connecting, {self.waiting} waiting; "
            f"{self.attempts} attempts, {self.connects} connects, failures: {failed}"
        )


def _cycle_firmware(firmware: Firmware | Sequence[Firmware], index: int) -> Firmware:
    if isinstance(firmware, Firmware):
        return firmware
    if not firmware:
        raise ValueError("at least one firmware is needed")
    return firmware[index % len(firmware)]


class Fleet:
    """Virtual devices sharing one event loop and one server key."""

    def __init__(
        self,
        specs: Sequence[VirtualDeviceSpec],
        server_public_key: rsa.RSAPublicKey,
        *,
        config: SimConfig | None = None,
        function_handler: FunctionHandler | None = None,
    ) -> None:
        ids = [spec.device_id for spec in specs]
        if len(set(ids)) != len(ids):
            raise ValueError("two devices of the fleet share a device id")
        self.config = config or SimConfig()
        self.server_public_key = server_public_key
        sources = self.config.source_addresses
        self.devices = [
            VirtualDevice(
                spec,
                server_public_key,
                config=self.config,
                function_handler=function_handler,
                source_address=sources[i % len(sources)] if sources else None,
            )
            for i, spec in enumerate(specs)
        ]
        self._by_id = {device.device_id: device for device in self.devices}
        self._ramp_handle: asyncio.TimerHandle | None = None
        self._pending: list[VirtualDevice] = []

    # -- construction ------------------------------------------------------------------------------

    @staticmethod
    def make_specs(
        keys: Sequence[tuple[str, rsa.RSAPrivateKey]],
        *,
        firmware: Firmware | Sequence[Firmware] = DEVICE_OS_3_1_0,
        app: AppSpec | None = None,
        fault: Fault | None = None,
        name_prefix: str = "sim-",
        drop_after: float = 5.0,
        byte_delay: float = 0.001,
    ) -> list[VirtualDeviceSpec]:
        """Specs for (device id, key) pairs; a sequence of firmwares is cycled over the devices."""
        application = app or AppSpec()
        return [
            VirtualDeviceSpec(
                device_id=device_id,
                private_key=key,
                firmware=_cycle_firmware(firmware, index),
                app=application,
                fault=fault,
                name=f"{name_prefix}{index}",
                drop_after=drop_after,
                byte_delay=byte_delay,
            )
            for index, (device_id, key) in enumerate(keys)
        ]

    @classmethod
    def create(
        cls,
        count: int,
        server_public_key: rsa.RSAPublicKey,
        *,
        seed: str = "cyan-sim",
        prefix: str = "",
        firmware: Firmware | Sequence[Firmware] = DEVICE_OS_3_1_0,
        app: AppSpec | None = None,
        fault: Fault | None = None,
        config: SimConfig | None = None,
        workers: int | None = None,
        drop_after: float = 5.0,
        byte_delay: float = 0.001,
    ) -> Fleet:
        """`count` devices with fresh keys held in memory only (see `load_or_create` to keep them)."""
        keys = generate_device_keys(count, workers=workers)
        pairs = [(derive_device_id(i, seed=seed, prefix=prefix), key) for i, key in enumerate(keys)]
        specs = cls.make_specs(
            pairs, firmware=firmware, app=app, fault=fault, drop_after=drop_after, byte_delay=byte_delay
        )
        return cls(specs, server_public_key, config=config)

    @classmethod
    def load_or_create(
        cls,
        directory: str | os.PathLike[str],
        count: int,
        server_public_key: rsa.RSAPublicKey,
        *,
        seed: str = "cyan-sim",
        prefix: str = "",
        firmware: Firmware | Sequence[Firmware] = DEVICE_OS_3_1_0,
        app: AppSpec | None = None,
        fault: Fault | None = None,
        config: SimConfig | None = None,
        workers: int | None = None,
        drop_after: float = 5.0,
        byte_delay: float = 0.001,
    ) -> Fleet:
        """`count` devices whose keys live in `directory` (`<device id>.pem` and `fleet.json`): created on
        the first run, reused on the next ones, so the server's registrations stay valid."""
        pairs = load_or_create_keys(directory, count, seed=seed, prefix=prefix, workers=workers)
        specs = cls.make_specs(
            pairs, firmware=firmware, app=app, fault=fault, drop_after=drop_after, byte_delay=byte_delay
        )
        return cls(specs, server_public_key, config=config)

    def __len__(self) -> int:
        return len(self.devices)

    def __getitem__(self, device_id: str) -> VirtualDevice:
        return self._by_id[device_id]

    # -- running -------------------------------------------------------------------------------------

    def start(self, host: str, port: int, *, ramp: float | None = None) -> None:
        """Start connecting every device; with `ramp`, at most that many new devices per second.
        Returns at once; needs a running loop. `host` should be an address (see `run`)."""
        loop = asyncio.get_running_loop()
        if ramp is None or ramp <= 0:
            for device in self.devices:
                device.start(host, port)
            return
        self._pending = list(reversed(self.devices))
        began = loop.time()

        def tick() -> None:
            due = int((loop.time() - began) * ramp) + 1
            started = len(self.devices) - len(self._pending)
            while self._pending and started < due:
                self._pending.pop().start(host, port)
                started += 1
            self._ramp_handle = loop.call_later(_RAMP_TICK, tick) if self._pending else None

        tick()

    async def run(
        self,
        host: str,
        port: int,
        *,
        ramp: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> FleetStats:
        """Resolve `host` once (not once per device and attempt), start the fleet, and run until `stop` is
        set (or forever, until cancelled); then stop every device cleanly and return the final stats."""
        address = await resolve_host(host, port)
        self.start(address, port, ramp=ramp)
        try:
            if stop is None:
                await asyncio.Event().wait()
            else:
                await stop.wait()
        finally:
            await self.stop()
        return self.stats()

    async def wait_connected(self, count: int | None = None, *, timeout: float | None = None) -> bool:
        """Wait until `count` devices (default: all) are connected at the same time; False on timeout."""
        wanted = len(self.devices) if count is None else count

        async def poll() -> None:
            while sum(d.connected.is_set() for d in self.devices) < wanted:
                await asyncio.sleep(0.02)

        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop every device: Goodbye where the firmware has one, close every socket, cancel every timer."""
        if self._ramp_handle is not None:
            self._ramp_handle.cancel()
            self._ramp_handle = None
        self._pending = []
        waiters = [waiter for device in self.devices for waiter in device._begin_stop()]
        if waiters:
            await asyncio.wait(waiters)
        for device in self.devices:
            device._stopped()

    def stats(self) -> FleetStats:
        states = dict.fromkeys(DeviceState, 0)
        failures: dict[str, int] = {}
        attempts = connects = published = 0
        for device in self.devices:
            states[device.state] += 1
            attempts += device.attempt_count
            connects += device.connect_count
            published += device.published_count
            for outcome, n in device.failures_by_outcome.items():
                failures[outcome] = failures.get(outcome, 0) + n
        return FleetStats(
            devices=len(self.devices),
            connected=states[DeviceState.CONNECTED],
            connecting=states[DeviceState.CONNECTING] + states[DeviceState.HANDSHAKE],
            # Devices the ramp has not started yet are stopped, but about to start.
            waiting=states[DeviceState.WAITING] + len(self._pending),
            stopped=states[DeviceState.STOPPED] - len(self._pending),
            attempts=attempts,
            connects=connects,
            failures=failures,
            published=published,
        )


async def resolve_host(host: str, port: int) -> str:
    """One IPv4/IPv6 address for `host`, resolved once for the whole fleet."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"{host} does not resolve")
    address = infos[0][4][0]
    assert isinstance(address, str)
    return address


# -- provisioning ------------------------------------------------------------------------------------


def registered_public_key(spec: VirtualDeviceSpec) -> rsa.RSAPublicKey:
    """The public key a server should hold for the device.

    The spec's key, whatever the fault: an AMNESIA device was registered before it lost its key (§12.2),
    a WRONG_SERVER_KEY device is refused before keys matter. Except CORRUPT_KEY: its firmware rebuilds
    its public key from the damaged bytes at every boot (§2.2, and DCT 1250 from it, §11), so that is
    what `particle keys send` registers; the handshake then fails only at the device's decryption.
    """
    if spec.fault is Fault.CORRUPT_KEY:
        return corrupt_device_key(spec.private_key).public_key()
    return spec.private_key.public_key()


def write_provisioning(fleet: Fleet | Sequence[VirtualDeviceSpec], path: str | os.PathLike[str]) -> int:
    """Write what a server needs to register the fleet: device id, name, public key PEM and fingerprint.

    ``.json`` gives a list of objects; ``.csv`` a header row ``device_id,name,fingerprint,public_key_pem``
    (the PEM quoted, with its line breaks). Returns the number of devices written.
    """
    specs = [d.spec for d in fleet.devices] if isinstance(fleet, Fleet) else list(fleet)
    rows = []
    for spec in specs:
        key = registered_public_key(spec)
        rows.append(
            {
                "device_id": spec.device_id,
                "name": spec.name,
                "fingerprint": fingerprint(key),
                "public_key_pem": encode_public_key_pem(key).decode("ascii"),
            }
        )
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".json":
        text = json.dumps(rows, indent=1) + "\n"
    elif suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["device_id", "name", "fingerprint", "public_key_pem"])
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        raise ValueError(f"{target.name}: provisioning files are .json or .csv")
    target.write_text(text)
    return len(rows)


# -- helpers for the command line ------------------------------------------------------------------


def read_server_key(data: bytes) -> tuple[rsa.RSAPublicKey, ServerAddress | None]:
    """The server public key a device would use, and the address stored with it, from the bytes of a
    `--server-key` file: a server-key file as ``particle keys server`` writes it (512 or 2048 bytes, or
    a 768-byte DCT dump), or any public or private key form `cyan.keys.load_public_key` reads.

    From a server-key file the key is what the firmware reads (the modulus at offset 33, §2.3), so a
    badly stored key gives the same wrong key the device would use. A blank key slot is refused: such a
    device talks to Particle's cloud with its built-in key (§12.1).
    """
    if len(data) in (512, 768, 2048) and data[:1] in (b"\x30", b"\xff"):
        parsed = parse_server_key_file(data)
        if parsed.key_state == "blank":
            raise KeyFormatError(f"the server-key file's key slot is blank: {parsed.key_problem}")
        key = parsed.public_key or read_firmware_server_key(parsed.key_der)
        assert isinstance(key, rsa.RSAPublicKey)  # these sizes are the TCP layouts
        return key, parsed.address
    return load_public_key(data), None
