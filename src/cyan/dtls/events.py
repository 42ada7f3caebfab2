"""Events the DTLS endpoints emit: facts, in the past tense (as `cyan.protocol.events`).

`next_event()` returns them one at a time. Peer faults that end a handshake are raised as `RemoteDtlsError`
from `receive_datagram` (and kept as the endpoint's `failure`); timers, rejections and alerts arrive here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import Reason, Step
from .session import Session

__all__ = [
    "AlertReceived",
    "ApplicationDataReceived",
    "ConnectionClosed",
    "ConnectionFailed",
    "DeviceKeyPresented",
    "Event",
    "HandshakeCompleted",
    "RecordDiscarded",
]


class Event:
    """Base class of all DTLS endpoint events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class DeviceKeyPresented(Event):
    """Server: the device sent its raw public key and proved it holds the private half (CertificateVerify
    and Finished both verified). The endpoint waits for the caller's `accept()` or `reject(reason)`.

    DTLS does not name the device: its id arrives later in the CoAP Hello (udp-dtls.md §1.3 "Identity comes
    later"), so the caller either finds the device by this key or accepts it and checks the Hello's id
    against the key it holds."""

    public_key_der: bytes


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    """Both: the handshake finished. `connection_id` is the server-assigned CID (empty when none was
    negotiated); `session` is the state to persist for a later resumption (udp-dtls.md §1.4)."""

    peer_public_key_der: bytes
    connection_id: bytes
    session: Session
    resumed: bool = False


@dataclass(frozen=True, slots=True)
class ApplicationDataReceived(Event):
    """One application-data record. `moved`: it came as type 253 or 254, the device resuming a saved
    session, maybe from a new address (udp-dtls.md §1.4)."""

    data: bytes
    moved: bool = False


@dataclass(frozen=True, slots=True)
class AlertReceived(Event):
    """The peer sent an alert (RFC 5246 §7.2). A fatal one is followed by `ConnectionFailed`, a
    close_notify by `ConnectionClosed`."""

    level: int
    description: int


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed the session with close_notify."""


@dataclass(frozen=True, slots=True)
class ConnectionFailed(Event):
    """The association ended: a timer, a rejection, or a fatal alert from the peer."""

    step: Step
    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class RecordDiscarded(Event):
    """A record was dropped without ending anything (RFC 6347 §4.1.2.7): it did not authenticate, was a
    replay, or did not parse. Kept for diagnostics: a run of `decrypt_failed` after a server restart means
    the device resumes a session this server does not hold."""

    step: Step
    reason: Reason
    detail: str
