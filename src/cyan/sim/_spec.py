"""What a virtual device is: its identity, firmware personality, user application and injected fault."""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.keys import check_device_public_key
from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    DeviceConfig,
    Firmware,
    Subscription,
    SubscriptionScope,
    VariableType,
)

__all__ = [
    "FIRMWARES",
    "AppSpec",
    "Fault",
    "PeriodicEvent",
    "SimConfig",
    "VirtualDeviceSpec",
    "derive_device_id",
    "firmware_for",
]

_DEVICE_ID = re.compile(r"[0-9a-f]{24}")
_HEX = re.compile(r"[0-9a-f]*")

#: The personalities recorded from real firmware (tests/vectors): the legacy stack and the new one
#: (protocol.md §0.1). Keys are what `cyan sim --firmware` takes.
FIRMWARES: Mapping[str, Firmware] = {"0.6.1": DEVICE_OS_0_6_1, "3.1.0": DEVICE_OS_3_1_0}


def firmware_for(version: str) -> Firmware:
    """The `Firmware` for a Device OS version string: "0.6.1", "3.1.0", or any other "x.y.z".

    Other versions get the behaviour the core derives from the version number (Hello flags, reply shapes,
    §0.1); only the two recorded ones are known to match real firmware byte for byte.
    """
    text = version.strip().removeprefix("v")
    if text in FIRMWARES:
        return FIRMWARES[text]
    parts = text.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        known = ", ".join(FIRMWARES)
        raise ValueError(f"firmware version {version!r} is not x.y.z (recorded personalities: {known})")
    major, minor, patch = (int(part) for part in parts)
    return Firmware(version=(major, minor, patch))


class Fault(enum.StrEnum):
    """A misbehaviour injected into a virtual device, each one a failure seen in the field."""

    #: The device holds another server public key (§2.3, §9.3): the server's decryption of its
    #: 256-byte message does not yield the nonce, so the server closes (nonce_mismatch).
    WRONG_SERVER_KEY = "wrong_server_key"
    #: The device lost its private key and made a new one at boot, keeping its id (§12.1): the server
    #: holds the old public key and refuses the new one (key_mismatch with a strict policy, §12.3).
    AMNESIA = "amnesia"
    #: Bits of the stored private key's modulus are damaged (§12.1: not detected by the firmware). The
    #: device rebuilds its handshake public key from the damaged bytes (§2.2), so the server encrypts the
    #: session key to a key the device cannot decrypt with: DECRYPT_FAILED on the device,
    #: session_key_rejected on the server.
    CORRUPT_KEY = "corrupt_key"
    #: The handshake completes but the Hello never leaves the device: the server's Hello timer fires.
    NO_HELLO = "no_hello"
    #: Every write goes out one byte at a time with a short pause, to exercise the server's reassembly.
    BYTE_BY_BYTE = "byte_by_byte"
    #: The device reads the nonce and never answers: the server's nonce timer fires.
    STALL_HANDSHAKE = "stall_handshake"
    #: The device connects, then after `VirtualDeviceSpec.drop_after` seconds drops the socket with a
    #: reset and no Goodbye (power loss, Wi-Fi loss).
    DROP_MID_SESSION = "drop_mid_session"
    #: During an update, every `VirtualDeviceSpec.ota_drop_every`-th chunk arrives damaged the first time
    #: it is sent (a bad CRC, §7.1): ChunkReceived 4.00 in non-fast mode, ChunkMissed in fast mode.
    OTA_DROP_CHUNKS = "ota_drop_chunks"
    #: The first update is cut off: once `VirtualDeviceSpec.ota_disconnect_at` of the image has arrived, the
    #: socket drops with a reset (Wi-Fi lost mid-update). Later updates go through.
    OTA_DISCONNECT = "ota_disconnect"

    @classmethod
    def parse(cls, text: str) -> Fault:
        """A fault from its value, case-insensitive, with '-' or '_' ("drop-mid-session")."""
        key = text.strip().lower().replace("-", "_")
        try:
            return cls(key)
        except ValueError:
            choices = ", ".join(f.value for f in cls)
            raise ValueError(f"unknown fault {text!r}; choose one of {choices}") from None


@dataclass(frozen=True, slots=True)
class PeriodicEvent:
    """An event the application publishes every `interval` seconds while connected.

    `data` is a `str.format` template; it may use ``{counter}`` (the device's counter, incremented
    before each periodic publish, as the recorded app's heartbeat does), ``{device_id}`` and ``{name}``.
    """

    name: str
    interval: float
    data: str = "{counter}"
    private: bool = True

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError(f"periodic event {self.name!r} needs a positive interval")
        try:
            self.render(0, "0" * 24, "name")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"periodic event {self.name!r}: data template {self.data!r} may use only "
                "{counter}, {device_id} and {name}"
            ) from exc

    def render(self, counter: int, device_id: str, name: str) -> str:
        return self.data.format(counter=counter, device_id=device_id, name=name)


@dataclass(frozen=True, slots=True)
class AppSpec:
    """The user application running on a virtual device. The default is the application of the
    real-firmware recordings (tests/vectors/device-os-3.1.0/README.md):

    * function ``setArg``: stores its argument in the string variable ``lastArg``, publishes
      ``vdev/called`` with it and returns its length;
    * variables ``counter`` (int), ``lastArg`` (string), ``temp`` (double 21.5);
    * subscribes to ``vdev/ping`` and answers each with ``vdev/pong`` carrying the same data;
    * every 10 s increments ``counter`` and publishes ``vdev/heartbeat`` with it.
    """

    #: Function names; each is answered by the default handler unless the device has its own.
    functions: tuple[str, ...] = ("setArg",)
    #: (name, type, initial value) of every variable.
    variables: tuple[tuple[str, VariableType, bool | int | float | str], ...] = (
        ("counter", VariableType.INT, 0),
        ("lastArg", VariableType.STRING, "none"),
        ("temp", VariableType.DOUBLE, 21.5),
    )
    subscriptions: tuple[Subscription, ...] = (Subscription("vdev/ping", SubscriptionScope.MY_DEVICES),)
    periodic: tuple[PeriodicEvent, ...] = (PeriodicEvent("vdev/heartbeat", 10.0),)
    #: (prefix, reply): an event whose name starts with prefix is answered by publishing reply with its data.
    echo: tuple[tuple[str, str], ...] = (("vdev/ping", "vdev/pong"),)
    #: The string variable the default function handler stores the argument in (None: not stored).
    argument_variable: str | None = "lastArg"
    #: The int variable that mirrors the periodic counter (None: not mirrored).
    counter_variable: str | None = "counter"
    #: Published with the argument on every call by the default handler (None: nothing published).
    call_event: str | None = "vdev/called"

    @classmethod
    def minimal(cls) -> AppSpec:
        """No functions, variables, subscriptions or periodic events: only the system's own traffic."""
        return cls(
            functions=(),
            variables=(),
            subscriptions=(),
            periodic=(),
            echo=(),
            argument_variable=None,
            counter_variable=None,
            call_event=None,
        )


@dataclass(frozen=True, slots=True)
class VirtualDeviceSpec:
    """Everything that makes one virtual device what it is. The server public key it holds is given to
    `VirtualDevice` (or `Fleet`) separately: the whole fleet usually holds the same one."""

    #: 24 lowercase hex digits (§2.1).
    device_id: str
    #: The RSA-1024 key the device has (and the server should hold, see `registered_public_key`).
    private_key: rsa.RSAPrivateKey
    firmware: Firmware = DEVICE_OS_3_1_0
    app: AppSpec = field(default_factory=AppSpec)
    fault: Fault | None = None
    name: str = ""
    #: DROP_MID_SESSION: seconds from the server Hello to the dropped socket.
    drop_after: float = 5.0
    #: BYTE_BY_BYTE: pause between two 1-byte writes.
    byte_delay: float = 0.001
    #: OTA_DROP_CHUNKS: every n-th chunk of an update (indexes n-1, 2n-1, ...) is damaged once.
    ota_drop_every: int = 50
    #: OTA_DISCONNECT: the share of the image received when the socket drops.
    ota_disconnect_at: float = 0.5

    def __post_init__(self) -> None:
        if not _DEVICE_ID.fullmatch(self.device_id):
            raise ValueError(f"device id {self.device_id!r} is not 24 lowercase hex digits (protocol.md §2.1)")
        check_device_public_key(self.private_key)
        if self.drop_after < 0 or self.byte_delay < 0:
            raise ValueError("drop_after and byte_delay cannot be negative")
        if self.ota_drop_every < 1 or not 0 <= self.ota_disconnect_at < 1:
            raise ValueError("ota_drop_every is at least 1 and ota_disconnect_at within [0, 1)")

    @property
    def label(self) -> str:
        return self.name or self.device_id


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Knobs shared by every device of a simulation, with the firmware's values as defaults."""

    #: Multiplies the reconnect backoff of §8.3 (1 s x 2^min(7, (n-1) div 5)); tests shrink it.
    backoff_scale: float = 1.0
    #: The Photon gives up a TCP connect after 5 s (§1).
    connect_timeout: float = 5.0
    #: A normal disconnect waits up to 5 s for the server to close after the device's half-close (§8.4).
    disconnect_timeout: float = 5.0
    #: Send Goodbye on a normal stop (Device OS 2.0+, §6.10, §8.4).
    goodbye_on_stop: bool = True
    #: The core's timers (handshake steps, ping interval and timeout, §8).
    device_config: DeviceConfig = field(default_factory=DeviceConfig)
    #: How many received events each device keeps (the oldest go first).
    received_events_limit: int = 32
    #: How many attempt records each device keeps (counters keep the totals).
    attempt_history: int = 32
    #: Local addresses to connect from, spread over the devices: one address gives about 28,000 ports
    #: (Linux's default ephemeral range), so larger fleets on one host need several (127.0.0.2, ...). Linux
    #: tries the even half of them first, and connects slow down past about 14,000 from one address.
    source_addresses: tuple[str, ...] = ()
    #: Seconds from a reset (after an update, §7.1) to the next connection attempt: the reboot.
    reboot_delay: float = 0.0
    #: Each device keeps the round trip of every keep-alive ping the server acknowledged
    #: (`VirtualDevice.ping_round_trips`): what a benchmark times the server's answer to a device by.
    record_pings: bool = False


def derive_device_id(index: int, *, seed: str = "cyan-sim", prefix: str = "") -> str:
    """A deterministic device id for the `index`-th device of a fleet.

    With a hex `prefix` (at most 16 digits) the id is the prefix followed by the index in hex, which reads
    well in logs (``c0ffee00000000000000002a``); otherwise it is the first 24 hex digits of
    SHA-256(seed:index), which looks like a real STM32 id and never collides in practice.
    """
    if index < 0:
        raise ValueError("the device index cannot be negative")
    if prefix:
        if not _HEX.fullmatch(prefix) or len(prefix) > 16:
            raise ValueError(f"device id prefix {prefix!r} must be at most 16 lowercase hex digits")
        width = 24 - len(prefix)
        if index >= 16**width:
            raise ValueError(f"index {index} does not fit after the prefix {prefix!r}")
        return f"{prefix}{index:0{width}x}"
    return hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:24]
