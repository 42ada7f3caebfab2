"""The messages between `cyan serve` and its device processes (`cyan.server.relay`, `cyan.server.processes`).

Frozen dataclasses, one per kind, matched by type on arrival; the channel prefixes each with `VERSION`, and a
process that receives another version (a child started by an older or newer install) stops with a clear error
instead of misreading fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyan.cloud.models import ConnectionAttempt, DeviceRecord
from cyan.protocol import Hello, OtaConfig, Reason, ServerConfig, SubscriptionScope

from .device_server import AddressLimits

__all__ = [
    "VERSION",
    "AttemptRecorded",
    "Authorize",
    "CallFunction",
    "Close",
    "CommandProgress",
    "CommandResult",
    "Configure",
    "DescribeReceived",
    "Diagnose",
    "EventPublished",
    "Heard",
    "KeyDecision",
    "Message",
    "MetricsReceived",
    "ReadVariable",
    "Ready",
    "SendEvent",
    "SessionEnded",
    "SessionStarted",
    "Signal",
    "SubscriptionRequested",
    "SystemDescribe",
    "UpdateFirmware",
]

#: Bumped whenever a message changes shape.
VERSION = 4


# -- parent -> device process ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Configure:
    key_path: Path
    host: str
    port: int
    config: ServerConfig
    ota_config: OtaConfig
    key_workers: int
    log_level: int
    address_limits: AddressLimits
    #: Each child's own bound on handshakes under way (`DeviceServer.max_handshakes`).
    max_handshakes: int


@dataclass(frozen=True, slots=True)
class KeyDecision:
    """The answer to `Authorize`: accept with `trusted_key_der`, or reject with `reason`; or `error` when the
    parent could not decide (its database...), which the child reports as server_error."""

    request: int
    trusted_key_der: bytes | None = None
    reason: Reason | None = None
    detail: str = ""
    presented_fingerprint: str | None = None
    stored_fingerprint: str | None = None
    quarantined: bool = False
    record: DeviceRecord | None = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class SendEvent:
    connection_id: int
    name: str
    data: str | None
    ttl: int
    private: bool


@dataclass(frozen=True, slots=True)
class Close:
    connection_id: int


@dataclass(frozen=True, slots=True)
class CallFunction:
    request: int
    connection_id: int
    name: str
    argument: str
    timeout: float


@dataclass(frozen=True, slots=True)
class ReadVariable:
    request: int
    connection_id: int
    name: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Signal:
    request: int
    connection_id: int
    on: bool
    timeout: float


@dataclass(frozen=True, slots=True)
class SystemDescribe:
    request: int
    connection_id: int
    timeout: float


@dataclass(frozen=True, slots=True)
class Diagnose:
    request: int
    connection_id: int
    timeout: float


@dataclass(frozen=True, slots=True)
class UpdateFirmware:
    request: int
    connection_id: int
    image: bytes
    fast: bool | None


# -- device process -> parent ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    port: int


@dataclass(frozen=True, slots=True)
class Authorize:
    request: int
    device_id: str
    presented_der: bytes | None
    peer_address: str


@dataclass(frozen=True, slots=True)
class AttemptRecorded:
    attempt: ConnectionAttempt


@dataclass(frozen=True, slots=True)
class SessionStarted:
    connection_id: int
    device_id: str
    peer_address: str
    key_fingerprint: str | None
    record: DeviceRecord
    hello: Hello
    max_binary_size: int | None
    quarantined: bool


@dataclass(frozen=True, slots=True)
class SessionEnded:
    connection_id: int


@dataclass(frozen=True, slots=True)
class Heard:
    connection_ids: list[int]


@dataclass(frozen=True, slots=True)
class DescribeReceived:
    connection_id: int
    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MetricsReceived:
    connection_id: int
    values: dict[int, int]


@dataclass(frozen=True, slots=True)
class EventPublished:
    connection_id: int
    name: str
    data: bytes | None
    ttl: int
    private: bool
    max_binary_size: int | None


@dataclass(frozen=True, slots=True)
class SubscriptionRequested:
    connection_id: int
    prefix: str
    scope: SubscriptionScope
    device_id: str | None


@dataclass(frozen=True, slots=True)
class CommandResult:
    request: int
    ok: bool
    value: Any


@dataclass(frozen=True, slots=True)
class CommandProgress:
    request: int
    delivered: int
    total: int


Message = (
    Configure
    | KeyDecision
    | SendEvent
    | Close
    | CallFunction
    | ReadVariable
    | Signal
    | SystemDescribe
    | Diagnose
    | UpdateFirmware
    | Ready
    | Authorize
    | AttemptRecorded
    | SessionStarted
    | SessionEnded
    | Heard
    | DescribeReceived
    | MetricsReceived
    | EventPublished
    | SubscriptionRequested
    | CommandResult
    | CommandProgress
)
