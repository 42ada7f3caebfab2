"""Events the connections emit: facts, in the past tense (h11 `_events.py`, aioquic `quic/events.py`).

`next_event()` returns them one at a time. Events of both roles live here; each says which role emits it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import rsa

from ._errors import Reason, Step
from .coap import Message
from .messages import Goodbye, Hello, SubscriptionScope, VariableType

__all__ = [
    "ChunkAcknowledged",
    "ChunkStored",
    "ChunksMissed",
    "ConnectionClosed",
    "ConnectionFailed",
    "DescribeReceived",
    "DeviceIdentified",
    "DeviceReset",
    "Event",
    "EventPublished",
    "EventReceived",
    "FunctionCalled",
    "FunctionFailed",
    "FunctionReturned",
    "GoodbyeReceived",
    "HelloReceived",
    "MessageIgnored",
    "PingAcknowledged",
    "PingAnswered",
    "PingReceived",
    "PrivateKeyOperationNeeded",
    "PublishAcknowledged",
    "RequestTimedOut",
    "ServerHelloReceived",
    "SessionStarted",
    "SignalAcknowledged",
    "SignalReceived",
    "SubscriptionRequested",
    "TimeReceived",
    "TimeRequested",
    "UpdateChunkRefused",
    "UpdateChunksAcknowledged",
    "UpdateDoneAcknowledged",
    "UpdateFinishAccepted",
    "UpdateFinishedByDevice",
    "UpdateReady",
    "UpdateRefused",
    "UpdateRequestFailed",
    "UpdateStartAccepted",
    "UpdateStarted",
    "VariableRead",
    "VariableReadFailed",
    "VariableRequested",
]


class Event:
    """Base class of all connection events."""

    __slots__ = ()


# -- both roles -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionFailed(Event):
    """The connection ended because of a failure found by a timer, the peer closing early, or a rejection.

    (Malformed input is raised as `RemoteProtocolError` from `receive_data` instead, carrying the same
    step and reason.)
    """

    step: Step
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed an established session (EOF), the normal way a session ends (§8.4)."""


@dataclass(frozen=True, slots=True)
class SessionStarted(Event):
    """Both: the RSA handshake is done and the AES session is set up (Hello exchange still to come)."""


# -- server role ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrivateKeyOperationNeeded(Event):
    """Server built without the server key: run this RSA-2048 private-key operation with it, then call
    `private_key_done(result)` (or `private_key_failed`). Lets the caller do the two costly operations of a
    handshake on other cores (protocol.md §3 S2/S3, design §6).

    `decrypt`: PKCS#1 v1.5 decryption of the device's 256-byte message; the result is None when its padding
    does not decrypt. `sign`: a PKCS#1 v1.5 type-1 signature over the 20-byte digest, with no DigestInfo.
    """

    operation: Literal["decrypt", "sign"]
    data: bytes


@dataclass(frozen=True, slots=True)
class DeviceIdentified(Event):
    """Server: the device's handshake message decrypted and carried our nonce.

    The connection now waits for the caller's `accept(trusted_key)` or `reject(reason)`; the key policy
    is the caller's, not the protocol's (design §2, protocol.md §12.3).
    """

    device_id: str
    #: The SubjectPublicKeyInfo the device presented (None: the 52-byte variant of old Core firmware).
    public_key_der: bytes | None
    public_key: rsa.RSAPublicKey | None


@dataclass(frozen=True, slots=True)
class HelloReceived(Event):
    """Server: the device's Hello arrived and was answered; the session is established."""

    device_id: str
    hello: Hello


@dataclass(frozen=True, slots=True)
class DescribeReceived(Event):
    """Server: a Describe, posted by the device or answering `request_describe` (then `request_id`)."""

    flags: int
    raw: bytes
    #: The parsed JSON object, or None for the binary metrics form or a payload that is not JSON.
    document: dict[str, Any] | None
    error: str | None = None
    request_id: int | None = None


@dataclass(frozen=True, slots=True)
class EventPublished(Event):
    """Server: the device published an event (§6.4)."""

    name: str
    data: bytes | None
    ttl: int
    private: bool
    confirmable: bool


@dataclass(frozen=True, slots=True)
class SubscriptionRequested(Event):
    """Server: the device subscribed to a prefix (§6.4)."""

    prefix: str
    scope: SubscriptionScope
    device_id: str | None = None


@dataclass(frozen=True, slots=True)
class TimeRequested(Event):
    """Server: the device asked for the time and was answered with `unix_time` (§6.8)."""

    unix_time: int


@dataclass(frozen=True, slots=True)
class PingReceived(Event):
    """Server: a device keep-alive ping, already acknowledged (§8.1)."""


@dataclass(frozen=True, slots=True)
class PingAnswered(Event):
    """Server: the device acknowledged the server's ping (§8.1): the round trip, in the caller's `now` units."""

    round_trip: float


@dataclass(frozen=True, slots=True)
class FunctionReturned(Event):
    request_id: int
    name: str
    return_value: int


@dataclass(frozen=True, slots=True)
class FunctionFailed(Event):
    """The device refused the call: 4.00 (argument too long for it, §6.5) or a reset."""

    request_id: int
    name: str
    code: int
    detail: str


@dataclass(frozen=True, slots=True)
class VariableRead(Event):
    request_id: int
    name: str
    raw: bytes
    #: The decoded value when the variable's type is known from Describe, else None.
    value: bool | int | float | str | None
    type: VariableType | None


@dataclass(frozen=True, slots=True)
class VariableReadFailed(Event):
    """The device answered 4.04 (unknown variable) or another error code (§6.6)."""

    request_id: int
    name: str
    code: int
    detail: str


@dataclass(frozen=True, slots=True)
class SignalAcknowledged(Event):
    request_id: int
    on: bool


@dataclass(frozen=True, slots=True)
class RequestTimedOut(Event):
    """No answer in time. For an unknown function this is the only outcome: the device ACKs and then
    never returns (§6.5)."""

    request_id: int
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class UpdateReady(Event):
    """Server: the device accepted UpdateBegin; `fast` says whether it agreed to fast OTA (§7.1)."""

    request_id: int
    fast: bool


@dataclass(frozen=True, slots=True)
class UpdateRefused(Event):
    request_id: int
    code: int


@dataclass(frozen=True, slots=True)
class ChunkAcknowledged(Event):
    """Server: ChunkReceived in non-fast mode; `ok` False means a bad CRC, resend the chunk (§7.1)."""

    request_id: int
    ok: bool


@dataclass(frozen=True, slots=True)
class ChunksMissed(Event):
    """Server: the device listed chunks it lacks (fast mode, §7.1); resend them with their index.

    `confirmable`: sent CON, as only the legacy stack does; that stack then finishes by itself."""

    indexes: tuple[int, ...]
    confirmable: bool = False


@dataclass(frozen=True, slots=True)
class UpdateDoneAcknowledged(Event):
    """Server: the answer to UpdateDone. `complete` False (4.00) means chunks are missing (§7.1)."""

    request_id: int
    complete: bool
    result: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class UpdateFinishedByDevice(Event):
    """Server: a legacy device's own UpdateDone after resent chunks (§7.1)."""

    result: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class UpdateStartAccepted(Event):
    """Server, OTA v3: the device took UpdateStart. `window`: chunks it takes beyond those it holds in order;
    `offset`: bytes of the file it holds already (a resumed transfer), where chunk 1 starts."""

    request_id: int
    window: int
    offset: int


@dataclass(frozen=True, slots=True)
class UpdateChunksAcknowledged(Event):
    """Server, OTA v3: UpdateAck. The device holds chunks 1..`index` in order, and beyond them those `bitmap`
    marks (bit k of the little-endian 32-bit words: chunk `index` + 1 + k)."""

    index: int
    bitmap: bytes


@dataclass(frozen=True, slots=True)
class UpdateChunkRefused(Event):
    """Server, OTA v3: the device reset (RST) a chunk: it has no update in progress."""

    message_id: int


@dataclass(frozen=True, slots=True)
class UpdateFinishAccepted(Event):
    """Server, OTA v3: the device validated the file (2.04 to UpdateFinish, with its transfer statistics). It
    applies it, and resets, once it has our acknowledgement of this answer."""

    request_id: int
    stats: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class UpdateRequestFailed(Event):
    """Server, OTA v3: the device answered UpdateStart or UpdateFinish (`kind` "start" or "finish") with an
    error: its code, and the system error and message it reported (``{"code": -N, "message": "..."}``)."""

    request_id: int
    kind: str
    code: int
    error: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class GoodbyeReceived(Event):
    """Server: the device said why it is disconnecting (Device OS 2.x, §6.10)."""

    goodbye: Goodbye


@dataclass(frozen=True, slots=True)
class MessageIgnored(Event):
    """A well-formed message that has no meaning here (an unknown request, a late reply); kept for records."""

    description: str
    message: Message


# -- device role ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerHelloReceived(Event):
    """Device: the server answered the Hello; the device is connected (breathing cyan)."""


@dataclass(frozen=True, slots=True)
class FunctionCalled(Event):
    """Device: the server called a function; answer with `respond_function(event.request, value)`."""

    request: int
    name: str
    argument: bytes


@dataclass(frozen=True, slots=True)
class VariableRequested(Event):
    """Device: the server read a variable (already answered from the connection's variables)."""

    name: str
    found: bool


@dataclass(frozen=True, slots=True)
class EventReceived(Event):
    """Device: an event arrived from the cloud."""

    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class TimeReceived(Event):
    unix_time: int


@dataclass(frozen=True, slots=True)
class SignalReceived(Event):
    on: bool


@dataclass(frozen=True, slots=True)
class PingAcknowledged(Event):
    """Device: the server acknowledged the device's keep-alive ping (§8.1): the round trip, in `now` units."""

    round_trip: float


@dataclass(frozen=True, slots=True)
class PublishAcknowledged(Event):
    """Device: the server acknowledged a confirmable (WITH_ACK) publish."""

    message_id: int


@dataclass(frozen=True, slots=True)
class UpdateStarted(Event):
    """Device: the server's UpdateBegin was accepted and UpdateReady sent (§7.1)."""

    file_size: int
    chunk_size: int
    fast: bool


@dataclass(frozen=True, slots=True)
class ChunkStored(Event):
    """Device: a chunk passed its CRC check and was written at `index` × chunk size (§7.1)."""

    index: int
    size: int


@dataclass(frozen=True, slots=True)
class DeviceReset(Event):
    """Device: the system resets, which ends the connection without a Goodbye (OTA README D6).

    `reason` is a reset reason of §6.10: ``update`` (the image was valid and is applied: `image` holds
    it), ``update_error`` (it failed validation, the old firmware stays) or ``update_timeout`` (30 s
    without a chunk written, §7.2).
    """

    reason: str
    image: bytes | None = None
