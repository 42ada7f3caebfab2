"""The asyncio device server: a thin adapter that moves bytes between sockets and the protocol core, in
this process (`DeviceServer`) or in several (`DeviceProcesses`, with `relay` in each child)."""

from .device_server import DeviceServer
from .processes import DeviceProcesses

__all__ = ["DeviceProcesses", "DeviceServer"]
