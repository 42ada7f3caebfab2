"""EC P-256 keys of the UDP fleet (Electron, Gen 3, P2) and their 320-byte server-key file (udp-dtls.md §1.2).

The device key is an EC P-256 key (Device OS derives its public key as MBEDTLS_PK_ECKEY); ``particle keys
new`` stores it as SEC1 DER (``openssl ecparam -name prime256v1``), which is also what the gcc virtual
device reads from ``device_key.der``. The server key is a P-256 SubjectPublicKeyInfo, written to the device
with the address block after it, as particle-cli's ``udpServerKey`` spec lays it out.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ._errors import KeyFormatError

__all__ = [
    "UDP_SERVER_KEY_ADDRESS_OFFSET",
    "UDP_SERVER_KEY_FILE_SIZE",
    "UDP_SERVER_KEY_PORT_OFFSET",
    "encode_ec_private_key_der",
    "encode_ec_private_key_pem",
    "generate_ec_key",
    "is_ec_key",
    "load_ec_private_key",
    "load_ec_public_key",
    "udp_public_key_der",
]

#: particle-cli ``src/lib/keys-specs.js`` ``udpServerKey``: DCT 3298, 320 bytes, address at 192, port at 258
#: (192 + 66, where Device OS reads it: ``hal/shared/parse_server_address.h``).
UDP_SERVER_KEY_FILE_SIZE = 320
UDP_SERVER_KEY_ADDRESS_OFFSET = 192
UDP_SERVER_KEY_PORT_OFFSET = 258

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


def _check_curve(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey, what: str) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise KeyFormatError(
            f"{what} is on curve {key.curve.name}; UDP devices use P-256 (secp256r1) only (udp-dtls.md §1.1)"
        )


def _ders(data: bytes) -> list[bytes]:
    """The DER bodies of `data`: each PEM block's, or the bytes themselves (a key file or a dump, whose DER
    is followed by 0xFF fill: the outer SEQUENCE's length says where the key ends)."""
    if b"-----BEGIN " in data:
        blocks = []
        for match in _PEM.finditer(data):
            body = b"".join(line for line in match.group(2).splitlines() if b":" not in line)
            try:
                blocks.append(base64.b64decode(body, validate=False))
            except binascii.Error:
                continue
        return blocks
    if len(data) >= 2 and data[0] == 0x30:
        # DER length: short form, or 0x81/0x82 long forms (a P-256 key is at most ~140 bytes).
        if data[1] < 0x80:
            return [data[: 2 + data[1]]]
        if data[1] == 0x81 and len(data) >= 3:
            return [data[: 3 + data[2]]]
        if data[1] == 0x82 and len(data) >= 4:
            return [data[: 4 + int.from_bytes(data[2:4], "big")]]
    return [data]


def load_ec_private_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from SEC1 or PKCS#8, PEM or DER (with 0xFF fill after it, as a DCT dump has)."""
    for der in _ders(data):
        try:
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        if isinstance(key, ec.EllipticCurvePrivateKey):
            _check_curve(key, "the private key")
            return key
    raise KeyFormatError("not an EC private key (SEC1 'EC PRIVATE KEY' or PKCS#8, PEM or DER)")


def load_ec_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from a SubjectPublicKeyInfo (PEM or DER, a 320-byte server-key file included)
    or from any private key `load_ec_private_key` reads."""
    for der in _ders(data):
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, UnsupportedAlgorithm):
            continue
        if isinstance(key, ec.EllipticCurvePublicKey):
            _check_curve(key, "the public key")
            return key
    try:
        return load_ec_private_key(data).public_key()
    except KeyFormatError:
        raise KeyFormatError("not an EC P-256 public or private key (PEM or DER)") from None


def is_ec_key(data: bytes) -> bool:
    """Whether `data` holds an EC key of any curve (public or private), to choose the loader and the
    error message."""
    for der in _ders(data):
        for loader in (serialization.load_der_public_key, _private_loader):
            try:
                key = loader(der)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                continue
            if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
                return True
    return False


def _private_loader(der: bytes) -> object:
    return serialization.load_der_private_key(der, password=None)


def udp_public_key_der(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> bytes:
    """The 91-byte SubjectPublicKeyInfo DER: what the device presents in DTLS, and what is stored."""
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    _check_curve(public, "the key")
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def encode_ec_private_key_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    """SEC1 DER ("EC PRIVATE KEY"): the form ``particle keys new`` writes and the device reads."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def encode_ec_private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
