"""What the listener does before any per-peer state exists: the stateless cookie exchange (RFC 6347 §4.2.1)
and finding the association a datagram belongs to (udp-dtls.md §1.3, §1.4).

An address that has not returned a valid cookie gets nothing larger than a HelloVerifyRequest, which is
smaller than the ClientHello that caused it: the server cannot be used to amplify traffic to a spoofed
address, and holds no state for it.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from ._errors import Reason
from ._wire import (
    ContentType,
    DecodeError,
    HandshakeType,
    decode_client_hello,
    encode_client_hello,
    encode_handshake,
    encode_hello_verify_request,
    encode_record,
    parse_handshake_fragments,
    parse_records,
    split_move_trailer,
)

__all__ = ["CookieCheck", "CookieVerifier", "connection_id_of", "is_client_hello", "move_device_id_of"]

_MAC_SIZE = 16


@dataclass(frozen=True, slots=True)
class CookieCheck:
    """The verdict on one datagram from an address with no association.

    `verified`: a ClientHello carrying a cookie we issued to this address: create a `ServerEndpoint` and feed
    it the datagram. Otherwise `reply` is the HelloVerifyRequest to send (or None: send nothing) and
    `reason` says why."""

    verified: bool
    reply: bytes | None
    #: The session id the ClientHello names (empty: none), to find a session for an abbreviated handshake.
    session_id: bytes
    reason: Reason | None
    #: The ClientHello's random: equal to an existing endpoint's `client_random`, the datagram is that
    #: handshake's retransmission, for that endpoint; otherwise a new handshake (RFC 6347 §4.2.8).
    client_random: bytes = b""


class CookieVerifier:
    """Stateless cookies: HMAC-SHA256(secret, time ‖ address ‖ ClientHello without cookie), as RFC 6347
    §4.2.1 suggests, with the issue time in clear so that old cookies expire.

    `secret` comes from the caller's randomness; pass the previous one as `previous_secret` while rotating."""

    __slots__ = ("_lifetime", "_secrets")

    def __init__(self, secret: bytes, *, lifetime: float = 60.0, previous_secret: bytes | None = None) -> None:
        if len(secret) < 16:
            raise ValueError("a cookie secret needs at least 16 bytes")
        self._secrets = [secret] + ([previous_secret] if previous_secret else [])
        self._lifetime = lifetime

    def _mac(self, secret: bytes, issued: bytes, address: bytes, hello_without_cookie: bytes) -> bytes:
        message = issued + struct.pack(">H", len(address)) + address + hello_without_cookie
        return hmac.digest(secret, message, "sha256")[:_MAC_SIZE]

    def check(self, datagram: bytes, address: bytes, now: float) -> CookieCheck:
        """`address`: the peer's address in any stable byte form (IP and port)."""
        records, _ = parse_records(datagram, 0, max_fragment=2048)
        if not records:
            return CookieCheck(False, None, b"", Reason.BAD_RECORD)
        record = records[0]
        if record.wire_type != ContentType.HANDSHAKE or record.epoch != 0:
            return CookieCheck(False, None, b"", Reason.UNEXPECTED_MESSAGE)
        try:
            fragments = parse_handshake_fragments(record.fragment)
        except DecodeError:
            return CookieCheck(False, None, b"", Reason.MALFORMED_MESSAGE)
        first = fragments[0] if fragments else None
        # Like mbedtls, only an unfragmented ClientHello is answered: reassembly would need state.
        if (
            first is None
            or first.msg_type != HandshakeType.CLIENT_HELLO
            or first.offset != 0
            or len(first.body) != first.length
        ):
            return CookieCheck(False, None, b"", Reason.UNEXPECTED_MESSAGE)
        try:
            hello = decode_client_hello(first.body)
        except DecodeError:
            return CookieCheck(False, None, b"", Reason.MALFORMED_MESSAGE)
        bare = encode_client_hello(
            type(hello)(
                hello.version,
                hello.random,
                hello.session_id,
                b"",
                hello.cipher_suites,
                hello.compression_methods,
                hello.extensions,
            )
        )
        cookie = hello.cookie
        if len(cookie) == 4 + _MAC_SIZE:
            (issued,) = struct.unpack(">I", cookie[:4])
            fresh = now - self._lifetime <= issued <= now + 1
            if fresh and any(
                hmac.compare_digest(cookie[4:], self._mac(s, cookie[:4], address, bare)) for s in self._secrets
            ):
                return CookieCheck(True, None, hello.session_id, None, hello.random)
        issued_bytes = struct.pack(">I", int(now) & 0xFFFFFFFF)
        new_cookie = issued_bytes + self._mac(self._secrets[0], issued_bytes, address, bare)
        # RFC 6347 §4.2.1: the reply copies the ClientHello's record sequence number and message_seq.
        body = encode_hello_verify_request(new_cookie)
        reply = encode_record(
            ContentType.HANDSHAKE,
            0,
            record.sequence,
            encode_handshake(HandshakeType.HELLO_VERIFY_REQUEST, first.message_seq, body),
        )
        return CookieCheck(False, reply, hello.session_id, Reason.BAD_COOKIE if cookie else None, hello.random)


def is_client_hello(datagram: bytes) -> bool:
    """Whether a datagram starts with an epoch-0 ClientHello: a new handshake, even from a known address
    (RFC 6347 §4.2.8), for the listener to pass to `CookieVerifier.check`."""
    return (
        len(datagram) > 25
        and datagram[0] == ContentType.HANDSHAKE
        and datagram[3:5] == b"\x00\x00"
        and datagram[13] == HandshakeType.CLIENT_HELLO
    )


def connection_id_of(datagram: bytes, cid_length: int = 8) -> bytes | None:
    """The CID of a type-25 or type-253 record, to find its association whatever the source address
    (draft-05; udp-dtls.md §1.3). Unauthenticated: the endpoint still has to open the record."""
    if len(datagram) < 11 + cid_length + 2 or datagram[0] not in (ContentType.CID, ContentType.ALT_CID):
        return None
    return datagram[11 : 11 + cid_length]


def move_device_id_of(datagram: bytes) -> bytes | None:
    """The device id of a Device OS ≤ 2.x type-254 datagram (udp-dtls.md §1.4), to find the session it
    resumes. Unauthenticated: the endpoint still has to open the record."""
    split = split_move_trailer(datagram)
    return None if split is None else split[1]
