"""Loading, checking, encoding and fingerprinting RSA keys.

The loaders accept what operators actually have on disk: PEM or DER, PKCS#1 or PKCS#8, the firmware's own
fixed-width private key layout, and raw dumps of the device's key areas with trailing fill bytes. Everything
else fails with a :class:`KeyFormatError` that says what was found.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ._der import outer_sequence, parse_pkcs1_private
from ._ecc import is_ec_key, load_ec_public_key, udp_public_key_der
from ._errors import DEVICE_KEY_BITS, PUBLIC_EXPONENT, SERVER_KEY_BITS, KeyFormatError

__all__ = [
    "check_device_public_key",
    "check_server_public_key",
    "device_public_key_der",
    "encode_private_key_pem",
    "encode_public_key_pem",
    "fingerprint",
    "load_private_key",
    "load_public_key",
    "public_key_der",
]

_ERASED = 0xFF

# A block is a BEGIN line, then everything up to the first END line. Found with two searches rather than one
# pattern with a lazy body: that pattern scans to the end of the data from every BEGIN that has no END, which
# is quadratic (8000 BEGIN lines, 144 KB, took 6 s).
_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n")
_PEM_END = re.compile(rb"-----END ([A-Z0-9 ]+)-----")
_PRIVATE_LABELS = frozenset({"RSA PRIVATE KEY", "PRIVATE KEY"})
_PUBLIC_LABELS = frozenset({"PUBLIC KEY", "RSA PUBLIC KEY"})
_ENCRYPTED_LABEL = "ENCRYPTED PRIVATE KEY"


@dataclass(frozen=True)
class _PemBlock:
    label: str
    headers: tuple[str, ...]
    der: bytes


def _kind(key: object) -> str:
    """A short human name for a ``cryptography`` key object, e.g. "EC" or "Ed25519"."""
    name = type(key).__name__
    return name.removesuffix("PrivateKey").removesuffix("PublicKey") or name


def _check_not_blank(data: bytes, what: str) -> None:
    """Reject erased flash with a message that says so.

    The firmware treats a key area whose first byte is 0xFF as blank (protocol.md §11, §12.1).
    """
    if not data:
        raise KeyFormatError(f"{what} is empty")
    if data[0] == _ERASED:
        if data.count(_ERASED) == len(data):
            raise KeyFormatError(
                f"{what} is blank: all {len(data)} bytes are 0xFF (erased flash); "
                "there is no key in this area (protocol.md §12.1)"
            )
        raise KeyFormatError(
            f"{what} starts with 0xFF, which the firmware treats as a blank (erased) key area (protocol.md §12.1)"
        )


def _pem_blocks(data: bytes) -> list[_PemBlock]:
    blocks: list[_PemBlock] = []
    position = 0
    while (begin := _PEM_BEGIN.search(data, position)) is not None:
        end = _PEM_END.search(data, begin.end())
        if end is None:
            break  # no END after this BEGIN, so none after any later one either
        position = end.end()
        label = begin.group(1).decode("ascii")
        if end.group(1).decode("ascii") != label:
            raise KeyFormatError(f"PEM block 'BEGIN {label}' ends with 'END {end.group(1).decode('ascii')}'")
        headers: list[str] = []
        body: list[bytes] = []
        for raw_line in data[begin.end() : end.start()].splitlines():
            line = raw_line.strip()
            if b":" in line:
                headers.append(line.decode("ascii", errors="replace"))
            elif line:
                body.append(line)
        try:
            der = base64.b64decode(b"".join(body), validate=True)
        except binascii.Error as exc:
            raise KeyFormatError(f"PEM block '{label}' is not valid base64: {exc}") from None
        blocks.append(_PemBlock(label=label, headers=tuple(headers), der=der))
    if not blocks:
        raise KeyFormatError("data contains '-----BEGIN' but no complete PEM block (missing END line?)")
    return blocks


def _pick_block(blocks: list[_PemBlock], wanted: frozenset[str], expected: str) -> _PemBlock:
    for block in blocks:
        if block.label in wanted:
            if any("ENCRYPTED" in header.upper() for header in block.headers):
                raise KeyFormatError(
                    f"PEM block '{block.label}' is encrypted (Proc-Type ENCRYPTED) and no password can be "
                    "given; decrypt it first, e.g. with 'openssl rsa'"
                )
            return block
    labels = ", ".join(f"'{block.label}'" for block in blocks)
    if any(block.label == _ENCRYPTED_LABEL for block in blocks):
        raise KeyFormatError(
            f"the PEM data holds an encrypted private key ('{_ENCRYPTED_LABEL}') and no password can be given; "
            "decrypt it first, e.g. with 'openssl pkey'"
        )
    raise KeyFormatError(f"expected {expected}, but the PEM data holds {labels}")


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


def _private_from_der(data: bytes, what: str) -> rsa.RSAPrivateKey:
    der = outer_sequence(data, what)
    try:
        key = serialization.load_der_private_key(der, password=None)
    except TypeError:
        # cryptography signals "encrypted but no password" with TypeError.
        raise KeyFormatError(
            f"{what} is an encrypted PKCS#8 key and no password can be given; decrypt it first"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if key is not None:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise KeyFormatError(
                f"{what} is not an RSA key (found {_kind(key)}); devices and servers use RSA (protocol.md §2)"
            )
        return key
    # cryptography refuses non-minimal INTEGERs, but the firmware's own key writer produces them
    # (protocol.md §2.2), so parse PKCS#1 ourselves.
    try:
        numbers = parse_pkcs1_private(der)
    except KeyFormatError as exc:
        raise KeyFormatError(f"{what} is not a usable RSA private key: {exc}") from None
    public = rsa.RSAPublicNumbers(e=numbers["publicExponent"], n=numbers["modulus"])
    private = rsa.RSAPrivateNumbers(
        p=numbers["prime1"],
        q=numbers["prime2"],
        d=numbers["privateExponent"],
        dmp1=numbers["exponent1"],
        dmq1=numbers["exponent2"],
        iqmp=numbers["coefficient"],
        public_numbers=public,
    )
    try:
        return private.private_key()
    except ValueError as exc:
        raise KeyFormatError(
            f"{what} is well-formed DER but its RSA numbers are inconsistent ({exc}); the key is corrupt"
        ) from None


def load_private_key(data: bytes) -> rsa.RSAPrivateKey:
    """Load an unencrypted RSA private key.

    Accepted: PEM ("RSA PRIVATE KEY" or "PRIVATE KEY") or DER, PKCS#1 or PKCS#8, including the firmware's
    fixed-width PKCS#1 layout (protocol.md §2.2) and a raw dump of the DCT key area, where the firmware reads
    612 bytes from DCT offset 34 and ignores what follows the DER (protocol.md §11).
    """
    what = "private key"
    if _is_pem(data):
        block = _pick_block(_pem_blocks(data), _PRIVATE_LABELS, "a private key ('RSA PRIVATE KEY' or 'PRIVATE KEY')")
        return _private_from_der(block.der, f"PEM '{block.label}'")
    _check_not_blank(data, what)
    return _private_from_der(data, what)


def _public_from_der(data: bytes, what: str) -> rsa.RSAPublicKey:
    der = outer_sequence(data, what)
    try:
        # SubjectPublicKeyInfo or PKCS#1 RSAPublicKey.
        key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if key is not None:
        if not isinstance(key, rsa.RSAPublicKey):
            raise KeyFormatError(
                f"{what} is not an RSA key (found {_kind(key)}); devices and servers use RSA (protocol.md §2)"
            )
        return key
    try:
        return _private_from_der(der, what).public_key()
    except KeyFormatError as exc:
        raise KeyFormatError(f"{what} is neither an RSA public key nor an RSA private key: {exc}") from None


def load_public_key(data: bytes) -> rsa.RSAPublicKey:
    """Load an RSA public key from whatever ``particle keys send`` would accept, and server-key files.

    Accepted: PEM or DER SubjectPublicKeyInfo ("PUBLIC KEY"), PKCS#1 RSAPublicKey ("RSA PUBLIC KEY"), any
    private key :func:`load_private_key` accepts (the public half is returned), and a server-key file or DCT
    dump where the key DER is followed by 0xFF fill and the address block (protocol.md §11).
    """
    what = "public key"
    if _is_pem(data):
        block = _pick_block(
            _pem_blocks(data),
            _PUBLIC_LABELS | _PRIVATE_LABELS,
            "an RSA key ('PUBLIC KEY', 'RSA PUBLIC KEY', 'RSA PRIVATE KEY' or 'PRIVATE KEY')",
        )
        return _public_from_der(block.der, f"PEM '{block.label}'")
    _check_not_blank(data, what)
    return _public_from_der(data, what)


def public_key_der(key: rsa.RSAPublicKey) -> bytes:
    """SubjectPublicKeyInfo DER: 162 bytes for RSA-1024, 294 bytes for RSA-2048 (protocol.md §2.2-§2.3)."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _as_public(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> rsa.RSAPublicKey:
    return key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key


def fingerprint(
    key: rsa.RSAPublicKey | rsa.RSAPrivateKey | ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey | bytes,
) -> str:
    """Stable identifier of a public key: ``"SHA256:"`` + 64 lowercase hex digits.

    The digest is SHA-256 over the SubjectPublicKeyInfo DER of the public key (the same bytes
    :func:`public_key_der` returns), so a private key, its public key and every file form of either have
    the same fingerprint. ``bytes`` are first loaded with :func:`load_public_key`, or as an EC P-256 key
    (the UDP fleet's, udp-dtls.md §1.2) when they hold one.
    """
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        der = udp_public_key_der(key)
    elif isinstance(key, bytes):
        try:
            der = public_key_der(load_public_key(key))
        except KeyFormatError:
            if not is_ec_key(key):
                raise
            der = udp_public_key_der(load_ec_public_key(key))
    else:
        der = public_key_der(_as_public(key))
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def device_public_key_der(data: bytes) -> bytes:
    """The SubjectPublicKeyInfo DER of a device key any Particle device can hold: RSA-1024 with e=65537
    (Gen 2 over TCP, protocol.md §2.2) or EC P-256 (the Electron and Gen 3 over UDP, udp-dtls.md §1.2), from
    any public or private key form the loaders read. Raises :class:`KeyFormatError` otherwise."""
    if is_ec_key(data):
        return udp_public_key_der(load_ec_public_key(data))
    public = load_public_key(data)
    check_device_public_key(public)
    return public_key_der(public)


def _check(key: rsa.RSAPublicKey | rsa.RSAPrivateKey, role: str, bits: int, section: str) -> None:
    public = _as_public(key)
    numbers = public.public_numbers()
    requirement = f"devices need RSA-{bits} with e={PUBLIC_EXPONENT} ({section})"
    if public.key_size != bits:
        raise KeyFormatError(f"{role} key is {public.key_size} bits; {requirement}")
    if numbers.e != PUBLIC_EXPONENT:
        raise KeyFormatError(f"{role} key has public exponent {numbers.e}; {requirement}")


def check_server_public_key(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> None:
    """Raise :class:`KeyFormatError` unless ``key`` is RSA-2048 with e=65537.

    The firmware reads the 256-byte modulus at a fixed offset of the stored key and assumes e=65537
    (protocol.md §2.3); any other key silently turns into a wrong key on the device.
    """
    _check(key, "server", SERVER_KEY_BITS, "protocol.md §2.3")


def check_device_public_key(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> None:
    """Raise :class:`KeyFormatError` unless ``key`` is RSA-1024 with e=65537.

    The firmware reads the 128-byte modulus at fixed offsets of its private key and never reads the
    exponent, assuming 65537 (protocol.md §2.2).
    """
    _check(key, "device", DEVICE_KEY_BITS, "protocol.md §2.2")


def encode_private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """Unencrypted PKCS#1 PEM ("BEGIN RSA PRIVATE KEY"), the form the Particle CLI's OpenSSL calls write."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def encode_public_key_pem(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> bytes:
    """SubjectPublicKeyInfo PEM ("BEGIN PUBLIC KEY") of ``key`` (or of its public half)."""
    return _as_public(key).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
