"""The asyncio device server: a thin adapter that moves bytes between sockets and the protocol core."""

from .device_server import DeviceServer

__all__ = ["DeviceServer"]
