"""The channel between `cyan serve` and its device processes: length-prefixed messages over a socketpair.

Both ends are this program, started by it and connected by a socketpair it created, so messages are the
typed dataclasses of `cyan.server._messages`, pickled with the version of their shapes (the cloud's
exceptions pass unchanged). Nothing else can reach the socket: it is never bound to an address.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import struct
from collections.abc import Callable

from ._messages import VERSION, Message

__all__ = ["Channel", "ChannelVersionError"]

log = logging.getLogger("cyan.server.ipc")
_LENGTH = struct.Struct(">I")


class ChannelVersionError(RuntimeError):
    """The other end speaks another version of the messages (a process from another install of cyan)."""


class Channel(asyncio.Protocol):
    """One end. `on_message(message)` gets each message; `on_lost()` once the other end is gone."""

    def __init__(self, on_message: Callable[[Message], None], on_lost: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if len(buffer) - offset - 4 < length:
                break
            payload = bytes(buffer[offset + 4 : offset + 4 + length])
            offset += 4 + length
            version, message = pickle.loads(payload)
            if version != VERSION:
                log.error("the other process speaks message version %s, this one %s: closing", version, VERSION)
                self.close()
                raise ChannelVersionError(f"message version {version} received, {VERSION} expected")
            self._on_message(message)
        del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost()

    def send(self, message: Message) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            log.debug("dropped a message for a closed channel: %s", type(message).__name__)
            return
        payload = pickle.dumps((VERSION, message), protocol=pickle.HIGHEST_PROTOCOL)
        transport.write(_LENGTH.pack(len(payload)) + payload)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
