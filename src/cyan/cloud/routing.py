"""The requests one node sends another over the bus (`Bus.request`): what to ask the device it holds, and what to
change of the sessions it holds.

Frozen dataclasses of plain fields: the Redis bus rebuilds only these, the domain's errors and plain data from
what arrives (`cyan.bus.redis`), so a forged message cannot run code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "CallFunction",
    "CloseSession",
    "JobsQueued",
    "ReadVariable",
    "SessionChange",
    "SessionChangeKind",
    "Signal",
]


@dataclass(frozen=True, slots=True)
class CallFunction:
    device_id: str
    name: str
    argument: str
    #: The device's own timeout: the holder answers with its `DeviceTimeoutError` after it.
    timeout: float


@dataclass(frozen=True, slots=True)
class ReadVariable:
    device_id: str
    name: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Signal:
    device_id: str
    on: bool


@dataclass(frozen=True, slots=True)
class CloseSession:
    """A newer session of the device started on another node: the one named here is stale."""

    device_id: str
    session_id: str


class SessionChangeKind(enum.StrEnum):
    OWNER = "owner"
    KEY_APPROVED = "key_approved"
    KEY_REJECTED = "key_rejected"
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class SessionChange:
    """A use case changed what a device's session may do (`cyan.cloud.ports.Sessions`); the node holding it
    applies the change as the node where it was made did."""

    kind: SessionChangeKind
    device_id: str
    owner: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class JobsQueued:
    """Update jobs of the device were stored by another node: the node holding it works on them."""

    device_id: str
