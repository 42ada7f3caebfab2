"""The profile's cryptography, every primitive from `cryptography` or the standard library (design §4).

TLS 1.2 PRF with SHA-256 (RFC 5246 §5), the key schedule (§6.3, §8.1), AES-128-CCM with 8-byte tags and the
4 + 8 byte nonce (RFC 6655 §3, RFC 7251 §2), ECDHE and ECDSA on P-256 (RFC 4492). Nothing here draws
randomness of its own: ephemeral keys come from the caller's bytes, signatures are deterministic (RFC 6979).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

__all__ = [
    "EXPLICIT_NONCE_SIZE",
    "TAG_SIZE",
    "KeyBlock",
    "RandomBytes",
    "RecordProtection",
    "ecdh_shared_secret",
    "ephemeral_key",
    "finished_verify_data",
    "key_block",
    "load_p256_spki",
    "master_secret",
    "point_of",
    "prf",
    "sign_digest",
    "spki_of",
    "verify_digest",
]

RandomBytes = Callable[[int], bytes]

KEY_SIZE = 16  # AES-128
FIXED_IV_SIZE = 4  # RFC 6655 §3: the salt, client_write_IV / server_write_IV
EXPLICIT_NONCE_SIZE = 8  # RFC 6655 §3: nonce_explicit, carried in each record
TAG_SIZE = 8  # CCM_8
#: P-256 group order (SEC 2 §2.4.2), to draw an ephemeral scalar from the caller's bytes.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_DETERMINISTIC_ECDSA = ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True)
_VERIFY_ECDSA = ec.ECDSA(Prehashed(hashes.SHA256()))


def prf(secret: bytes, label: bytes, seed: bytes, size: int) -> bytes:
    """PRF(secret, label, seed) = P_SHA256(secret, label + seed), RFC 5246 §5."""
    seed = label + seed
    out = bytearray()
    a = seed
    while len(out) < size:
        a = hmac.digest(secret, a, "sha256")
        out += hmac.digest(secret, a + seed, "sha256")
    return bytes(out[:size])


def master_secret(pre_master: bytes, client_random: bytes, server_random: bytes) -> bytes:
    """RFC 5246 §8.1 (no extended master secret: Device OS does not compile it, udp-dtls.md §1.1)."""
    return prf(pre_master, b"master secret", client_random + server_random, 48)


@dataclass(frozen=True, slots=True)
class KeyBlock:
    client_key: bytes
    server_key: bytes
    client_iv: bytes
    server_iv: bytes


def key_block(master: bytes, client_random: bytes, server_random: bytes) -> KeyBlock:
    """RFC 5246 §6.3, with no MAC keys for an AEAD suite: 2 × 16 key bytes then 2 × 4 salt bytes."""
    block = prf(master, b"key expansion", server_random + client_random, 2 * (KEY_SIZE + FIXED_IV_SIZE))
    k, i = KEY_SIZE, FIXED_IV_SIZE
    return KeyBlock(block[:k], block[k : 2 * k], block[2 * k : 2 * k + i], block[2 * k + i :])


def finished_verify_data(master: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    """RFC 5246 §7.4.9: 12 bytes of PRF over the handshake hash; label b"client finished"/b"server finished"."""
    return prf(master, label, transcript_hash, 12)


class RecordProtection:
    """AES-128-CCM_8 for one direction of one epoch. The AESCCM object is made once per epoch, not per
    record (design §6: small messages must not allocate cipher objects needlessly)."""

    __slots__ = ("_aead", "_salt")

    def __init__(self, key: bytes, salt: bytes) -> None:
        self._aead = AESCCM(key, tag_length=TAG_SIZE)
        self._salt = salt

    def seal(self, epoch_and_seq: bytes, aad_prefix: bytes, plaintext: bytes, aad_suffix: bytes = b"") -> bytes:
        """explicit nonce ‖ ciphertext ‖ tag. The explicit nonce is the record's epoch and sequence number,
        so it never repeats under one key while sequence numbers do not (RFC 6655 §3, as mbedtls does).

        Additional data (RFC 5246 §6.2.3.3; draft-05 §5 for CID records): `aad_prefix` (seq_num, type,
        version[, cid, cid_length]) then the plaintext length."""
        aad = epoch_and_seq + aad_prefix + aad_suffix + struct.pack(">H", len(plaintext))
        return epoch_and_seq + self._aead.encrypt(self._salt + epoch_and_seq, plaintext, aad)

    def open(self, epoch_and_seq: bytes, aad_prefix: bytes, fragment: bytes, aad_suffix: bytes = b"") -> bytes | None:
        """The plaintext, or None when the record does not authenticate. The nonce is the one the record
        carries, as mbedtls and OpenSSL read it."""
        if len(fragment) < EXPLICIT_NONCE_SIZE + TAG_SIZE:
            return None
        explicit = fragment[:EXPLICIT_NONCE_SIZE]
        body = fragment[EXPLICIT_NONCE_SIZE:]
        length = len(body) - TAG_SIZE
        aad = epoch_and_seq + aad_prefix + aad_suffix + struct.pack(">H", length)
        try:
            return self._aead.decrypt(self._salt + explicit, body, aad)
        except InvalidTag:
            return None


# -- ECDHE and ECDSA on P-256 -------------------------------------------------------------------------


def ephemeral_key(random_bytes: RandomBytes) -> ec.EllipticCurvePrivateKey:
    """An ECDHE key from the caller's randomness: 40 bytes reduced mod n-1, plus 1, which makes the bias
    negligible (FIPS 186-4 §B.4.1, "extra random bits")."""
    scalar = int.from_bytes(random_bytes(40), "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def point_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The uncompressed point (RFC 4492 §5.4: the only format Device OS offers)."""
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def ecdh_shared_secret(key: ec.EllipticCurvePrivateKey, peer_point: bytes) -> bytes | None:
    """The premaster secret (RFC 4492 §5.10: the x coordinate), or None when the peer's point is not an
    uncompressed point on P-256. `from_encoded_point` checks that the point is on the curve."""
    if len(peer_point) != 65 or peer_point[0] != 4:
        return None
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer_point)
        return key.exchange(ec.ECDH(), peer)
    except ValueError:
        return None


def sign_digest(key: ec.EllipticCurvePrivateKey, digest: bytes) -> bytes:
    """A DER ECDSA signature over a SHA-256 digest, deterministic (RFC 6979): no hidden randomness."""
    return key.sign(digest, _DETERMINISTIC_ECDSA)


def verify_digest(key: ec.EllipticCurvePublicKey, signature: bytes, digest: bytes) -> bool:
    try:
        key.verify(signature, digest, _VERIFY_ECDSA)
    except (InvalidSignature, ValueError):
        return False
    return True


def spki_of(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_p256_spki(der: bytes) -> ec.EllipticCurvePublicKey | None:
    """A P-256 SubjectPublicKeyInfo (a device's 91-byte key, udp-dtls.md §1.2), or None for anything else."""
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # UnsupportedAlgorithm: a well-formed key on a curve OpenSSL does not know (found by fuzzing,
        # tests/dtls/fuzz_regressions/server/).
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    return key


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
