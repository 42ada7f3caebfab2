"""Errors of the protocol core, and the vocabulary every failure is reported in.

Who is at fault decides the class (as in h11): `LocalProtocolError` when our caller misused the API,
`RemoteProtocolError` when the peer sent something we cannot accept. Every failure also carries the
`Step` of the connection it happened in and a machine-readable `Reason`: those two words are what
connection-attempt records, diagnostics and the dashboard show to people.
"""

from __future__ import annotations

import enum

__all__ = [
    "LocalProtocolError",
    "ProtocolError",
    "Reason",
    "RemoteProtocolError",
    "Step",
]


class Step(enum.StrEnum):
    """Where in its life a connection was (protocol.md §3, §5, §8)."""

    #: Server: nonce sent, waiting for the device's 256-byte RSA message. Device: waiting for the nonce.
    NONCE = "nonce"
    #: Server only: the device named itself; waiting for the caller to accept or reject its key.
    IDENTITY = "identity"
    #: Device only: waiting for the server's 384-byte session key and signature.
    SESSION_KEY = "session_key"
    #: Server: session key sent, waiting for the device Hello. Device: Hello sent, waiting for the server's.
    HELLO = "hello"
    #: The session is established.
    SESSION = "session"


class Reason(enum.StrEnum):
    """Machine-readable failure reasons. The values are stable: they are stored and shown."""

    # Handshake, server side (protocol.md §3 "S2 checks").
    NONCE_MISMATCH = "nonce_mismatch"
    """The device's message did not decrypt to our nonce: it holds another server key (§9.3)."""
    MALFORMED_IDENTITY = "malformed_identity"
    """The decrypted handshake message is too short, or its public key is not a usable RSA-1024 key."""
    UNKNOWN_DEVICE = "unknown_device"
    """The device id is not registered (decided by the caller)."""
    KEY_MISMATCH = "key_mismatch"
    """The device presented a public key other than the one we hold (decided by the caller)."""
    KEY_REJECTED = "key_rejected"
    """The caller's key policy refused the device for another reason."""
    SESSION_KEY_REJECTED = "session_key_rejected"
    """The device closed the connection after our session key: it could not decrypt it with its private key,
    so the public key we trusted is not the device's (the device logs DECRYPTION_ERROR, §3)."""

    # Handshake, device side (protocol.md §3 "S3 checks").
    SIGNATURE_INVALID = "signature_invalid"
    """The server's signature did not verify with the server key the device holds (AUTHENTICATION_ERROR 8)."""

    # Framing and messages (protocol.md §4, §6).
    BAD_FRAME_LENGTH = "bad_frame_length"
    DECRYPT_FAILED = "decrypt_failed"
    MALFORMED_MESSAGE = "malformed_message"
    UNEXPECTED_MESSAGE = "unexpected_message"
    MISSING_REQUEST_TOKEN = "missing_request_token"
    """A server request without the 1-byte token the firmware requires (MISSING_REQUEST_TOKEN 28, §6.1)."""
    UNSUPPORTED_CODE = "unsupported_code"
    """A legacy-stack device got a code it does not understand and drops the connection (§6.1)."""

    SERVER_ERROR = "server_error"
    """The server could not do its own part of the handshake (its private-key workers or its database failed)."""

    # Timers (protocol.md §3 "Timeouts", §5, §8).
    NONCE_TIMEOUT = "nonce_timeout"
    IDENTITY_TIMEOUT = "identity_timeout"
    SESSION_KEY_TIMEOUT = "session_key_timeout"
    HELLO_TIMEOUT = "hello_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    PING_TIMEOUT = "ping_timeout"

    # The peer went away.
    CLOSED_BY_PEER = "closed_by_peer"


class ProtocolError(Exception):
    """Base class of the protocol core's errors."""


class LocalProtocolError(ProtocolError):
    """Our own caller asked for something the protocol or the connection's state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol. `step` and `reason` say where and what; the message says the details."""

    def __init__(self, message: str, *, step: Step, reason: Reason) -> None:
        super().__init__(message)
        self.step = step
        self.reason = reason

    def __repr__(self) -> str:
        return f"RemoteProtocolError({str(self)!r}, step={self.step.value!r}, reason={self.reason.value!r})"
