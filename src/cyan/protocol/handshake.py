"""The RSA handshake's cryptography, both roles (protocol.md §3, Appendix A).

Pure functions over bytes and keys; the connections in `connection.py` sequence them. Randomness comes
from the caller (`rng(n) -> n bytes`) so every handshake can be replayed byte for byte.

The public-key operations (the device's encryption under the server key, the server's encryption of the
session credentials under the device key) are done as raw RSA on hand-built PKCS#1 v1.5 type-2 blocks
so that their padding string comes from the injected randomness; they cost little (e = 65537). The
server's private operations (decrypting the device's message, signing) go through OpenSSL.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo

from ._errors import Reason

__all__ = [
    "CREDENTIALS_SIZE",
    "DEVICE_ID_SIZE",
    "IDENTITY_MESSAGE_SIZE",
    "NONCE_SIZE",
    "SESSION_KEY_MESSAGE_SIZE",
    "HandshakeError",
    "Identity",
    "Rng",
    "build_identity_message",
    "build_session_key_message",
    "decrypt_identity_message",
    "open_session_key_message",
    "parse_identity_plaintext",
    "private_decrypt",
    "private_sign",
    "session_key_digest",
]

Rng = Callable[[int], bytes]

NONCE_SIZE = 40
DEVICE_ID_SIZE = 12
IDENTITY_MESSAGE_SIZE = 256
CREDENTIALS_SIZE = 40
SESSION_KEY_MESSAGE_SIZE = 384
_ENCRYPTED_CREDENTIALS_SIZE = 128
#: The shortest identity plaintext: nonce and device id, as the original Core firmware sent it (§3 S2).
_MIN_IDENTITY_PLAINTEXT = NONCE_SIZE + DEVICE_ID_SIZE


class HandshakeError(ValueError):
    """A handshake message that fails its checks; `reason` is the `Reason` to record."""

    def __init__(self, message: str, reason: Reason) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """What the device's 256-byte message said, once decrypted and checked against our nonce."""

    device_id: bytes
    #: The SubjectPublicKeyInfo DER the device presented, or None for the 52-byte variant (old Core firmware).
    public_key_der: bytes | None
    public_key: rsa.RSAPublicKey | None


# -- PKCS#1 v1.5 helpers ------------------------------------------------------------------------------


def _nonzero_random(rng: Rng, count: int) -> bytes:
    out = bytearray()
    while len(out) < count:
        out += bytes(b for b in rng(count - len(out)) if b)
    return bytes(out)


def _raw_public_encrypt(key: rsa.RSAPublicKey, message: bytes, rng: Rng) -> bytes:
    size = (key.key_size + 7) // 8
    if len(message) > size - 11:
        raise ValueError(f"{len(message)} bytes do not fit a {key.key_size}-bit PKCS#1 v1.5 block")
    if rng is os.urandom:
        # The system's randomness either way: OpenSSL builds the same block 5x faster. Injected randomness
        # (replays of recordings, tests) takes the hand-built path so the padding is reproducible.
        return key.encrypt(message, padding.PKCS1v15())
    numbers = key.public_numbers()
    block = b"\x00\x02" + _nonzero_random(rng, size - 3 - len(message)) + b"\x00" + message
    value = pow(int.from_bytes(block, "big"), numbers.e, numbers.n)
    return value.to_bytes(size, "big")


def _raw_private_decrypt(key: rsa.RSAPrivateKey, ciphertext: bytes) -> bytes | None:
    """PKCS#1 v1.5 type-2 decryption that *reports* bad padding, as the firmware's mbedTLS does.

    OpenSSL 3.2+ answers bad padding with pseudo-random plaintext (implicit rejection); the device role
    must instead fail the way real firmware fails (DECRYPTION_ERROR, §3), so it checks the block itself.
    """
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    size = (key.key_size + 7) // 8
    c = int.from_bytes(ciphertext, "big")
    if len(ciphertext) != size or c >= n:
        return None
    # Chinese remainder theorem, as any RSA implementation does it.
    m1 = pow(c, numbers.dmp1, numbers.p)
    m2 = pow(c, numbers.dmq1, numbers.q)
    m = m2 + numbers.q * ((numbers.iqmp * (m1 - m2)) % numbers.p)
    block = m.to_bytes(size, "big")
    separator = block.find(b"\x00", 2)
    if block[:2] != b"\x00\x02" or separator < 10:
        return None
    return block[separator + 1 :]


# -- device role ------------------------------------------------------------------------------------


def build_identity_message(
    server_public_key: rsa.RSAPublicKey,
    nonce: bytes,
    device_id: bytes,
    device_public_key_der: bytes | None,
    rng: Rng,
) -> bytes:
    """S2: the 256 bytes a device sends after the nonce (protocol.md §3).

    `device_public_key_der` None gives the 52-byte plaintext of the original Core firmware.
    """
    if len(nonce) != NONCE_SIZE or len(device_id) != DEVICE_ID_SIZE:
        raise ValueError("nonce must be 40 bytes and device id 12 bytes")
    plaintext = nonce + device_id + (device_public_key_der or b"")
    return _raw_public_encrypt(server_public_key, plaintext, rng)


def open_session_key_message(
    device_key: rsa.RSAPrivateKey, server_public_key: rsa.RSAPublicKey, message: bytes
) -> bytes:
    """S3 checks on the device: decrypt the credentials, verify the server's signature (§3).

    Returns the 40 credential bytes, or raises `HandshakeError` with DECRYPT_FAILED (the device would log
    DECRYPTION_ERROR 6) or SIGNATURE_INVALID (AUTHENTICATION_ERROR 8).
    """
    if len(message) != SESSION_KEY_MESSAGE_SIZE:
        raise ValueError(f"the session key message is 384 bytes, got {len(message)}")
    encrypted = message[:_ENCRYPTED_CREDENTIALS_SIZE]
    signature = message[_ENCRYPTED_CREDENTIALS_SIZE:]
    try:
        recovered = server_public_key.recover_data_from_signature(signature, padding.PKCS1v15(), None)
    except InvalidSignature:
        recovered = b""
    # Fast path: OpenSSL decrypts in a tenth of the time of the padding-checking decryption below. Its
    # answer is trusted only when the server's signature then verifies over it; anything else is decided
    # by the firmware-faithful path, so a failure is reported exactly as before.
    try:
        fast = device_key.decrypt(encrypted, padding.PKCS1v15())
    except Exception:  # a damaged key may fail in any way; the slow path judges it
        fast = b""
    if len(fast) == CREDENTIALS_SIZE and hmac.compare_digest(recovered, hmac.digest(fast, encrypted, hashlib.sha1)):
        return fast
    credentials = _raw_private_decrypt(device_key, encrypted)
    if credentials is None or len(credentials) != CREDENTIALS_SIZE:
        raise HandshakeError(
            "the session credentials do not decrypt with the device key: the server encrypted them "
            "to another public key",
            Reason.DECRYPT_FAILED,
        )
    expected = hmac.digest(credentials, encrypted, hashlib.sha1)
    if not hmac.compare_digest(recovered, expected):
        raise HandshakeError(
            "the server's signature does not verify with the server key the device holds",
            Reason.SIGNATURE_INVALID,
        )
    return credentials


# -- server role ------------------------------------------------------------------------------------


def private_decrypt(server_key: rsa.RSAPrivateKey, message: bytes) -> bytes | None:
    """The server's first private-key operation (§3 S2): PKCS#1 v1.5 decryption, None on bad padding."""
    try:
        return server_key.decrypt(message, padding.PKCS1v15())
    except ValueError:
        return None


def private_sign(server_key: rsa.RSAPrivateKey, digest: bytes) -> bytes:
    """The server's second private-key operation (§3 S3): PKCS#1 v1.5 type-1 over the raw digest."""
    return server_key.sign(digest, padding.PKCS1v15(), NoDigestInfo())


def decrypt_identity_message(server_key: rsa.RSAPrivateKey, message: bytes, nonce: bytes) -> Identity:
    """S2 checks on the server (protocol.md §3 "S2 checks", §13.1 #2): decrypt, then check."""
    if len(message) != IDENTITY_MESSAGE_SIZE:
        raise ValueError(f"the identity message is 256 bytes, got {len(message)}")
    return parse_identity_plaintext(private_decrypt(server_key, message), nonce)


def parse_identity_plaintext(plaintext: bytes | None, nonce: bytes) -> Identity:
    """The S2 checks on the decrypted identity message (None: its padding did not decrypt).

    A device holding another server key cannot be told from one sending garbage: both decrypt to
    something that does not start with our nonce (OpenSSL 3.2+ does not even report the bad padding).
    That is NONCE_MISMATCH. A plaintext that starts with the nonce but is too short, or carries a public
    key that is not RSA-1024 with e = 65537, is MALFORMED_IDENTITY.
    """
    if plaintext is None:
        raise HandshakeError(
            "the device's handshake message does not decrypt with this server's key: the device holds "
            "another server public key",
            Reason.NONCE_MISMATCH,
        )
    if not hmac.compare_digest(plaintext[:NONCE_SIZE], nonce):
        raise HandshakeError(
            "the device's handshake message does not carry our nonce: the device encrypted it with "
            "another server public key",
            Reason.NONCE_MISMATCH,
        )
    if len(plaintext) < _MIN_IDENTITY_PLAINTEXT:
        raise HandshakeError(
            f"the handshake plaintext has {len(plaintext)} bytes; a device id needs at least 52",
            Reason.MALFORMED_IDENTITY,
        )
    device_id = plaintext[NONCE_SIZE:_MIN_IDENTITY_PLAINTEXT]
    der = plaintext[_MIN_IDENTITY_PLAINTEXT:]
    if not der:
        return Identity(device_id=device_id, public_key_der=None, public_key=None)
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # Bytes 52.. are the device's to choose (§3 S2 checks #5): a key type or curve `cryptography`
        # does not know raises UnsupportedAlgorithm, which is as malformed as bad DER.
        raise HandshakeError(
            f"the public key the device sent ({len(der)} bytes) is not valid DER: {exc}",
            Reason.MALFORMED_IDENTITY,
        ) from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != 1024 or key.public_numbers().e != 65537:
        raise HandshakeError("the public key the device sent is not RSA-1024 with e=65537", Reason.MALFORMED_IDENTITY)
    return Identity(device_id=device_id, public_key_der=der, public_key=key)


def build_session_key_message(
    server_key: rsa.RSAPrivateKey,
    device_public_key: rsa.RSAPublicKey,
    credentials: bytes,
    rng: Rng,
) -> bytes:
    """S3: encrypted credentials (128) ‖ signature (256) (protocol.md §3 "S3 construction").

    The signature is PKCS#1 v1.5 type-1 padding over the raw 20-byte HMAC-SHA1, with no DigestInfo.
    """
    encrypted, digest = session_key_digest(device_public_key, credentials, rng)
    return encrypted + private_sign(server_key, digest)


def session_key_digest(device_public_key: rsa.RSAPublicKey, credentials: bytes, rng: Rng) -> tuple[bytes, bytes]:
    """The public half of S3: the credentials encrypted to the device key, and the HMAC-SHA1 to sign."""
    if len(credentials) != CREDENTIALS_SIZE:
        raise ValueError(f"session credentials are 40 bytes, got {len(credentials)}")
    encrypted = _raw_public_encrypt(device_public_key, credentials, rng)
    return encrypted, hmac.digest(credentials, encrypted, hashlib.sha1)
