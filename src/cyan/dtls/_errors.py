"""Errors of the DTLS core and the vocabulary every failure is reported in.

As in `cyan.protocol`: `LocalDtlsError` when our caller misused the API, `RemoteDtlsError` when the peer sent
something we cannot accept. Every failure carries the `Step` the handshake or session was in and a
machine-readable `Reason`; those two words are what connection-attempt records and diagnostics show.
"""

from __future__ import annotations

import enum

__all__ = ["DtlsError", "LocalDtlsError", "Reason", "RemoteDtlsError", "Step"]


class Step(enum.StrEnum):
    """What the endpoint was waiting for or processing (RFC 6347 §4.2.4 flights, udp-dtls.md §1.3)."""

    #: Listener: the stateless HelloVerifyRequest exchange (RFC 6347 §4.2.1).
    COOKIE = "cookie"
    #: Server: processing the ClientHello. Client: ClientHello sent, waiting for the server's answer.
    CLIENT_HELLO = "client_hello"
    #: Client: ServerHello .. ServerHelloDone (or, resuming, ServerHello .. Finished).
    SERVER_FLIGHT = "server_flight"
    #: Server: waiting for the device's raw-public-key Certificate (RFC 7250 §3).
    CERTIFICATE = "certificate"
    CLIENT_KEY_EXCHANGE = "client_key_exchange"
    CERTIFICATE_VERIFY = "certificate_verify"
    #: Server: the device proved its key; the caller must accept or reject it.
    DECISION = "decision"
    #: Either side: waiting for the peer's ChangeCipherSpec and Finished.
    FINISHED = "finished"
    #: The session is established: the record layer.
    RECORD = "record"


class Reason(enum.StrEnum):
    """Machine-readable failure reasons. The values are stable: they are stored and shown."""

    BAD_COOKIE = "bad_cookie"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_SUITE = "unsupported_suite"
    """The peer does not offer TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 with null compression (udp-dtls.md §1.1)."""
    UNSUPPORTED_CURVE = "unsupported_curve"
    UNSUPPORTED_CERTIFICATE_TYPE = "unsupported_certificate_type"
    """The device did not offer raw public keys (RFC 7250), so it would expect a server Certificate."""
    UNSUPPORTED_EXTENSION = "unsupported_extension"
    BAD_CERTIFICATE = "bad_certificate"
    """The raw public key is not a P-256 SubjectPublicKeyInfo."""
    BAD_KEY_EXCHANGE = "bad_key_exchange"
    """An ECDHE point is not an uncompressed point on P-256."""
    BAD_SIGNATURE = "bad_signature"
    """ServerKeyExchange (device side: the server holds another key) or CertificateVerify did not verify."""
    BAD_FINISHED = "bad_finished"
    MALFORMED_MESSAGE = "malformed_message"
    UNEXPECTED_MESSAGE = "unexpected_message"
    TOO_LARGE = "too_large"
    """A message or record above the configured bound, refused before buffering."""

    # Record layer: these discard a record, never end a session (RFC 6347 §4.1.2.7).
    BAD_RECORD = "bad_record"
    DECRYPT_FAILED = "decrypt_failed"
    REPLAYED = "replayed"
    UNKNOWN_CONNECTION_ID = "unknown_connection_id"
    UNEXPECTED_EPOCH = "unexpected_epoch"

    # The caller's decision on the device key (cyan.protocol's key policy words).
    KEY_REJECTED = "key_rejected"
    UNKNOWN_DEVICE = "unknown_device"
    KEY_MISMATCH = "key_mismatch"

    # Timers.
    TIMEOUT = "timeout"
    """The peer's next flight never came, after every retransmission (RFC 6347 §4.2.4.1)."""
    DECISION_TIMEOUT = "decision_timeout"

    # The peer ended it.
    ALERT_RECEIVED = "alert_received"
    CLOSED_BY_PEER = "closed_by_peer"


class DtlsError(Exception):
    """Base class of the DTLS core's errors."""


class LocalDtlsError(DtlsError):
    """Our own caller asked for something the protocol or the endpoint's state does not allow."""


class RemoteDtlsError(DtlsError):
    """The peer broke the protocol. `step` and `reason` say where and what; the message says the details."""

    def __init__(self, message: str, *, step: Step, reason: Reason) -> None:
        super().__init__(message)
        self.step = step
        self.reason = reason

    def __repr__(self) -> str:
        return f"RemoteDtlsError({str(self)!r}, step={self.step.value!r}, reason={self.reason.value!r})"
