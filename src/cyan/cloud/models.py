"""The records the cloud keeps: devices and connection attempts."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["AccessToken", "AttemptOutcome", "ConnectionAttempt", "DeviceRecord", "User", "Variable"]


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    #: The Particle Cloud API type name: "int32", "double", "string" or "bool".
    type: str


@dataclass(slots=True)
class DeviceRecord:
    """A registered device and what the cloud last learned about it."""

    id: str  # 24 lowercase hex characters (protocol.md §2.1)
    name: str | None = None
    owner: str | None = None
    #: SubjectPublicKeyInfo DER of the device's RSA-1024 public key; None until provisioned.
    public_key_der: bytes | None = None
    #: `cyan.keys.fingerprint` of that key.
    key_fingerprint: str | None = None
    platform_id: int | None = None
    product_id: int | None = None
    product_version: int | None = None
    #: The system module version from a Device OS 3.x Hello (e.g. 3103), when known.
    system_version: int | None = None
    #: "legacy" or "new" protocol stack as the Hello flags suggest (protocol.md §0.1).
    hello_flags: int | None = None
    functions: list[str] = field(default_factory=list)
    variables: list[Variable] = field(default_factory=list)
    online: bool = False
    last_heard: datetime | None = None
    last_address: str | None = None
    created_at: datetime | None = None


class AttemptOutcome(enum.StrEnum):
    CONNECTED = "connected"
    FAILED = "failed"


@dataclass(slots=True)
class ConnectionAttempt:
    """One TCP connection to the device port and how far it got (protocol.md §3, §9.3).

    A failed attempt carries the step and the reason from `cyan.protocol.Step` / `Reason`. A device that
    holds another server key cannot be identified: its attempts have no device id, only an address.
    """

    started_at: datetime
    peer_address: str
    outcome: AttemptOutcome
    #: The `cyan.protocol.Step` reached (where it failed, or "session" when connected).
    step: str
    reason: str | None = None
    detail: str | None = None
    device_id: str | None = None
    presented_fingerprint: str | None = None
    stored_fingerprint: str | None = None
    #: Seconds from accept to the end of the handshake (connected) or to the failure.
    duration: float | None = None
    id: int | None = None


@dataclass(slots=True)
class User:
    """A person or program that owns devices and holds access tokens."""

    username: str  # an e-mail address, as the Particle CLI logs in with
    #: `hashlib.scrypt` parameters and digest, in the form written by `cyan.cloud.auth.hash_password`.
    password_hash: str
    created_at: datetime


@dataclass(slots=True)
class AccessToken:
    """An API access token. Only its SHA-256 is stored: a database leak gives no usable token."""

    token_hash: str  # lowercase hex SHA-256 of the token
    username: str
    #: The OAuth client that asked for it ("CLI2", "user", "particle", ...).
    client_id: str
    created_at: datetime
    #: None: never expires.
    expires_at: datetime | None
