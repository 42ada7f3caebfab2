"""Virtual devices: from one to tens of thousands of simulated Photons, P1s and Cores in one process.

Each device is a real TCP client of a device server that runs the protocol core's `DeviceConnection`
(the device role, faithful to real firmware byte for byte), with a firmware personality (Device OS 0.6.1,
legacy stack, or 3.1.0, new stack; §0.1), a small user application, the firmware's reconnect backoff
(§8.3), and optionally one injected `Fault`. Typical use::

    fleet = Fleet.load_or_create("sim-keys", 1000, server_key, firmware=firmware_for("3.1.0"))
    write_provisioning(fleet, "fleet.csv")          # register these with the server
    await fleet.run("127.0.0.1", 5683, ramp=200, stop=stop_event)
"""

from cyan.limits import ensure_file_limit

from ._device import (
    ConnectedFlag,
    DeviceState,
    FunctionHandler,
    ReceivedEvent,
    SimAttempt,
    VirtualDevice,
    backoff_delay,
)
from ._faults import CorruptedDeviceKey, corrupt_device_key, wrong_server_key
from ._fleet import (
    Fleet,
    FleetStats,
    read_server_key,
    registered_public_key,
    resolve_host,
    write_provisioning,
)
from ._images import check_image, describe_modules, factory_image
from ._keystore import INDEX_FILE, generate_device_keys, load_or_create_keys
from ._spec import (
    FIRMWARES,
    AppSpec,
    Fault,
    PeriodicEvent,
    SimConfig,
    VirtualDeviceSpec,
    derive_device_id,
    firmware_for,
)
from ._udp import ARGON_4, ELECTRON_2, UdpFaults, UdpPersonality, UdpVirtualDevice, default_udp_application

__all__ = [
    "ARGON_4",
    "ELECTRON_2",
    "FIRMWARES",
    "INDEX_FILE",
    "AppSpec",
    "ConnectedFlag",
    "CorruptedDeviceKey",
    "DeviceState",
    "Fault",
    "Fleet",
    "FleetStats",
    "FunctionHandler",
    "PeriodicEvent",
    "ReceivedEvent",
    "SimAttempt",
    "SimConfig",
    "UdpFaults",
    "UdpPersonality",
    "UdpVirtualDevice",
    "VirtualDevice",
    "VirtualDeviceSpec",
    "backoff_delay",
    "check_image",
    "corrupt_device_key",
    "default_udp_application",
    "derive_device_id",
    "describe_modules",
    "ensure_file_limit",
    "factory_image",
    "firmware_for",
    "generate_device_keys",
    "load_or_create_keys",
    "read_server_key",
    "registered_public_key",
    "resolve_host",
    "write_provisioning",
    "wrong_server_key",
]
