"""The records the cloud keeps: devices and connection attempts."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "FLEET",
    "AccessToken",
    "AttemptOutcome",
    "AuditEntry",
    "ClaimCode",
    "CloudEvent",
    "ConnectionAttempt",
    "DeviceRecord",
    "FirmwareRecord",
    "HookDelivery",
    "Integration",
    "JobState",
    "KeyPolicy",
    "KeyPolicyMode",
    "LinkDiagnostics",
    "PendingKey",
    "RekeyWindow",
    "Role",
    "UdpSession",
    "UpdateJob",
    "User",
    "Variable",
    "VitalsRecord",
    "iso_time",
]


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
    #: SubjectPublicKeyInfo DER of the device's public key (RSA-1024, or EC P-256 for a UDP device); None until
    #: provisioned.
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
    #: The owner's notes about the device (`PUT /v1/devices/:id` with `notes`).
    notes: str | None = None
    #: When its last session started (a handshake completed), as Particle's `last_handshake_at`.
    last_handshake_at: datetime | None = None


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
    #: The id the client claimed; None when it could not even say (another server key, damaged data).
    device_id: str | None = None
    presented_fingerprint: str | None = None
    stored_fingerprint: str | None = None
    #: Seconds from accept to the end of the handshake (connected) or to the failure.
    duration: float | None = None
    #: Whether the client proved it is `device_id`: only a session started with the device's registered key
    #: does. False for every failure and for a quarantined session (it proved a key, not the device);
    #: None for an unidentified attempt. Unproven attempts never count against the device they name
    #: (docs/keys.md "Unproven attempts").
    proven: bool | None = None
    id: int | None = None


class Role(enum.StrEnum):
    """What an account may do beyond its own devices (docs/keys.md "Who may do what")."""

    #: Operates the cloud: registers devices, claims and provisions ownerless ones, acts on any device,
    #: manages users and reads what belongs to no account (unidentified attempts).
    ADMIN = "admin"
    #: Owns devices: acts on its own, and on nothing else.
    USER = "user"


@dataclass(slots=True)
class User:
    """A person or program that owns devices and holds access tokens."""

    username: str  # an e-mail address, as the Particle CLI logs in with
    #: `hashlib.scrypt` parameters and digest, in the form written by `cyan.cloud.auth.hash_password`.
    password_hash: str
    created_at: datetime
    role: Role = Role.USER


@dataclass(slots=True)
class RefreshToken:
    """An OAuth refresh token: exchanged once for a new access token (and a new refresh token). Only its
    SHA-256 is stored. A spent one is kept, marked, until it expires: presented again, it gives away that
    someone holds a copy, and its whole family is revoked (RFC 9700 §4.14.2)."""

    token_hash: str
    username: str
    client_id: str
    created_at: datetime
    expires_at: datetime
    #: The chain of rotations it belongs to: drawn at the login that started it, kept by every refresh.
    family: str
    #: When it was exchanged for new tokens; None while it is unused.
    spent_at: datetime | None = None


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
    #: The refresh-token family it was issued with (`RefreshToken.family`), revoked with it; None for a token
    #: issued without a refresh token.
    family: str | None = None


class KeyPolicyMode(enum.StrEnum):
    """What happens when a known device presents a key other than its registered one (protocol.md §12.3)."""

    #: Refuse the connection; remember the key as pending so an operator can approve it.
    STRICT = "strict"
    #: Let the device connect, but grant it nothing (no functions, variables, events or updates) until an
    #: operator approves the new key.
    QUARANTINE = "quarantine"


#: The scope of the fleet-wide policy; any other scope is a device id.
FLEET = "*"


@dataclass(slots=True)
class KeyPolicy:
    scope: str
    mode: KeyPolicyMode = KeyPolicyMode.STRICT
    #: Register an unknown device with the key it presents (off by default: anyone can claim an id).
    trust_on_first_use: bool = False
    updated_at: datetime | None = None
    updated_by: str = "default"
    #: Fleet only: any account may register a device id the cloud has never seen through the API (it
    #: becomes the owner). Off by default: registering new ids is an admin's act.
    self_registration: bool = False


@dataclass(slots=True)
class RekeyWindow:
    """An operator's "this device lost its key: accept the one new key it presents, until this time".

    The window stays armed until `until`. The first new key presented is accepted at once (`accepted_*`),
    and the key it replaced is kept (`previous_*`): if the previous key connects again (the device had not
    lost it) or a second, different new key appears before the window ends, the change is undone and every
    key seen is held for an operator's approval (docs/keys.md "Re-key windows")."""

    device_id: str
    until: datetime
    armed_by: str
    armed_at: datetime
    accepted_fingerprint: str | None = None
    accepted_at: datetime | None = None
    previous_key_der: bytes | None = None
    previous_fingerprint: str | None = None

    def open_at(self, now: datetime) -> bool:
        return now < self.until


@dataclass(slots=True)
class PendingKey:
    """A key a known device presented that is not its registered one, awaiting a decision. A device may
    have several (each by its fingerprint): approving names the one the owner saw."""

    device_id: str
    public_key_der: bytes
    fingerprint: str
    stored_fingerprint: str | None
    first_seen: datetime
    last_seen: datetime
    attempts: int = 1
    peer_address: str | None = None


@dataclass(slots=True)
class AuditEntry:
    """One change of, or decision about, a device, its key, its owner, an account or the server key: who,
    when, what, and the fingerprints before and after where a key is concerned. Written in the transaction
    that makes the change (docs/keys.md "Audit")."""

    at: datetime
    #: The device concerned; None for account and server actions.
    device_id: str | None
    #: What happened, a word from `cyan.app.audit.ACTIONS` (registered, provisioned, claimed, approved, ...).
    action: str
    #: Who: a username, "operator" (the command line on the server's data), "policy" or "device".
    actor: str
    old_fingerprint: str | None = None
    new_fingerprint: str | None = None
    detail: str | None = None
    #: What else it concerns: a username for account actions, a token's client for token actions.
    subject: str | None = None
    id: int | None = None


@dataclass(slots=True)
class ClaimCode:
    """A secret that lets its holder take an ownerless device (Particle's claim codes are the model).

    Two kinds: a code an admin issues for one device (`device_id`), which whoever holds it may use to claim
    or provision that device through the API; and a code an account issues for itself (`claimant`), which
    a device presents after connecting (the `spark/device/claim/code` event, protocol.md §5.1) to be claimed
    by that account. Only the code's SHA-256 is kept; a code is used once."""

    code_hash: str
    issued_by: str
    created_at: datetime
    expires_at: datetime
    device_id: str | None = None
    claimant: str | None = None


@dataclass(frozen=True, slots=True)
class FirmwareRecord:
    """An uploaded firmware binary: what its module header and suffix say (Device OS `module_info.h`).

    The file itself is kept on disk, named by `sha256`."""

    #: SHA-256 of the whole file, lowercase hex: its identity here.
    sha256: str
    size: int
    platform_id: int
    #: 2 bootloader, 3 monolithic, 4 system part, 5 user part.
    module_function: int
    module_index: int
    module_version: int
    #: PRODUCT_ID / PRODUCT_VERSION of a product build; None otherwise.
    product_id: int | None
    product_version: int | None
    #: The SHA-256 in the module suffix: what a device running it reports in its Describe ("u", §6.7).
    module_sha256: str
    crc32: int
    filename: str
    uploaded_at: datetime
    uploaded_by: str | None = None


class JobState(enum.StrEnum):
    """Where an update of one device is (see `cyan.cloud.ota`)."""

    #: Waiting for the device to connect, or for a free slot.
    QUEUED = "queued"
    #: The image is being sent (protocol.md §7).
    SENDING = "sending"
    #: Sent; waiting for the device to reset, reconnect and report what it runs.
    WAITING = "waiting_for_reconnect"
    #: Held by someone before its transfer started; nothing is sent until it is resumed (queued again).
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED)


@dataclass(slots=True)
class UpdateJob:
    """An update of one device to one firmware: its state, attempts and outcome."""

    device_id: str
    firmware: str  # FirmwareRecord.sha256
    created_at: datetime
    state: JobState = JobState.QUEUED
    #: The rollout (one request over many devices) it belongs to; None for a single device.
    rollout: str | None = None
    created_by: str | None = None
    #: "auto", "fast" or "non_fast" (protocol.md §7.1).
    mode: str = "auto"
    attempts: int = 0
    max_attempts: int = 3
    #: Bytes of the image sent (fast) or acknowledged (non-fast) in the current or last attempt.
    bytes_sent: int = 0
    total_bytes: int = 0
    #: Why it failed, or why the last attempt failed (machine-readable: refused, disconnected, ...).
    reason: str | None = None
    detail: str | None = None
    #: How success was established: "hash" (the Describe's user-part SHA-256), "product_version" (the
    #: Hello), "module_version" (a system part's version) or "unverified" (neither is reported).
    verification: str | None = None
    #: Seconds the successful transfer took.
    transfer_seconds: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    id: int | None = None


def iso_time(moment: datetime) -> str:
    """Particle's time format, as events and their payloads carry it: UTC, milliseconds, Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """An event as the cloud carries it: from a device, from the API, or from the cloud itself."""

    name: str
    data: str | None
    ttl: int
    published_at: datetime
    #: The device that published it, or None for events published through the API.
    device_id: str | None
    #: Whose devices may see it (MY_DEVICES scope); None for devices without an owner.
    owner: str | None
    private: bool = True


@dataclass(slots=True)
class Integration:
    """A webhook: which of its owner's events trigger it, and the request it makes (Particle's integration of
    type Webhook; docs/api.md "Webhooks"). The templates are kept as their owner gave them and rendered per
    event (`cyan.cloud.templates`)."""

    id: str  # 24 lowercase hex digits, as Particle's
    owner: str
    #: The prefix of the event names that trigger it.
    event: str
    #: A template: the event's variables may appear in it; only http and https are sent.
    url: str
    created_at: datetime
    #: GET, POST, PUT, PATCH or DELETE.
    request_type: str = "POST"
    #: Only this device's events trigger it (None: any of the owner's).
    device_id: str | None = None
    name: str | None = None
    disabled: bool = False
    #: Leave out the default fields (event, data, published_at, coreid).
    no_defaults: bool = False
    #: Verify the receiver's TLS certificate.
    reject_unauthorized: bool = True
    #: Particle's legacy switch; kept and shown, but only the owner's events ever trigger a hook here.
    my_devices: bool = True
    #: The request templates, each as given: "json" (object, array or string), "form", "query", "headers"
    #: (objects), "body" (string), "auth" ({"username", "password"}), and for the answer "responseTemplate",
    #: "responseTopic" and "errorResponseTopic" (strings).
    templates: dict[str, Any] = field(default_factory=dict)
    updated_at: datetime | None = None


@dataclass(slots=True)
class HookDelivery:
    """One attempt to deliver an event to an integration, or an event that was not attempted (dropped)."""

    integration_id: str
    #: When the attempt started (or the event was dropped).
    at: datetime
    event_name: str
    device_id: str | None
    #: 1 for the first attempt, 2 for the first retry, ...
    attempt: int
    #: "success", "failure" (retried or not), "dropped" (never sent: a full queue, the server stopping).
    outcome: str
    #: The receiver's HTTP status, None when there was no answer.
    status: int | None = None
    #: Seconds from the request to its answer or failure.
    duration: float | None = None
    error: str | None = None
    id: int | None = None


@dataclass(slots=True)
class VitalsRecord:
    """A device's vitals at one moment, in Particle's payload shape (`cyan.cloud.vitals`)."""

    device_id: str
    updated_at: datetime
    payload: dict[str, Any]
    id: int | None = None


@dataclass(slots=True)
class UdpSession:
    """A UDP device's DTLS session, kept so that the device resumes it with no handshake, after a restart of
    the server too (docs/dtls.md): Device OS may resume with no Hello, so who it was is kept with it."""

    #: The key: the 8-byte connection id the server assigned. A device that takes no connection id (Device OS
    #: ≤ 2.x) still gets 8 random bytes of the server's as its session's key, never sent on the wire; it is
    #: found by its `device_id` (`UdpSessionRepository.of_device`).
    connection_id: bytes
    #: `cyan.dtls.Session.encode()`: keys, counters, the replay window, the device's public key.
    session: bytes
    updated_at: datetime
    device_id: str | None = None
    #: The payload of the Hello the device last said (`cyan.protocol.messages.Hello.encode()`).
    hello: bytes | None = None
    #: Every write sequence number a node may have used in this session is below it (the nodes reserve blocks
    #: of them, see `UdpSessionRepository.reserve`), so that no AES-CCM nonce repeats when the session moves to
    #: another node. None: a session saved before there were blocks.
    sequence_limit: int | None = None


@dataclass(frozen=True, slots=True)
class LinkDiagnostics:
    """What a live session measured when asked (`DeviceLink.diagnose`): the round trip of a server ping, and
    the diagnostics the device reported (Device OS source id -> value); None for what did not come."""

    round_trip: float | None
    metrics: dict[int, int] | None
    #: Why something did not come (the device did not answer, or reports no diagnostics).
    error: str | None = None
