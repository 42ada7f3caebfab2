from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cyan.app import Application

__all__ = ["ApiContext"]


@dataclass(frozen=True, slots=True)
class ApiContext:
    app: Application
    #: Seconds between keep-alive comments on event streams. particle-api-js gives up on a stream that is
    #: silent for 13 s and reconnects 2 s later, losing what was published meanwhile: stay well under.
    keepalive: float = 9.0
    #: The key file devices need (server key and address, protocol.md §11), once the device port is known.
    server_key_file: Callable[[], Path | None] = lambda: None
