"""Device keys as the Gen 2 firmware stores and reads them (protocol.md §2.2, §A.3)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ._codec import check_device_public_key
from ._der import outer_sequence, parse_pkcs1_private
from ._errors import DEVICE_KEY_BITS, PUBLIC_EXPONENT, SERVER_KEY_BITS, KeyFormatError

__all__ = [
    "DeviceKeyFields",
    "device_public_key_der_from_private",
    "encode_device_private_key",
    "firmware_parse_device_key",
    "generate_device_key",
    "generate_server_key",
    "is_firmware_parsable",
]

_MODULUS_BYTES = DEVICE_KEY_BITS // 8  # 128
_HALF_BYTES = _MODULUS_BYTES // 2  # 64: P, Q, DP, DQ, QP

# Fixed header the firmware assumes in front of the modulus: SEQUENCE with a 2-byte length, version 0,
# then the modulus INTEGER as 02 81 81 00 (protocol.md §2.2).
_SEQUENCE_PREFIX = b"\x30\x82"
_VERSION = b"\x02\x01\x00"
_MODULUS_HEADER = b"\x02\x81\x81\x00"
_MODULUS_OFFSET = 11
_EXPONENT = b"\x02\x03\x01\x00\x01"
_EXPONENT_OFFSET = _MODULUS_OFFSET + _MODULUS_BYTES  # 139

# The handshake public key is rebuilt from this prefix, the modulus at private-key bytes 11..138 and the
# exponent (protocol.md §2.2, handshake.cpp extract_public_rsa_key).
_HANDSHAKE_SPKI_PREFIX = bytes.fromhex("30819f300d06092a864886f70d010101050003818d0030818902818100")

# Size of the firmware's own fixed-width encoding: 4 (SEQUENCE) + 3 (version) + 2 * 132 (N, D)
# + 5 (exponent) + 5 * 67 (CRT values) = 611 bytes (protocol.md §2.2).
FIXED_WIDTH_DEVICE_KEY_BYTES = 611

# generate_device_key retries when the standard encoding would trip the firmware parser. A key fails with
# probability of roughly 2% (protocol.md §A.3), so this bound is never reached in practice.
_MAX_GENERATE_ATTEMPTS = 64


@dataclass(frozen=True)
class DeviceKeyFields:
    """The RSA numbers of a device key as the firmware reads them.

    ``e`` is always 65537: the firmware never reads the exponent (protocol.md §2.2).
    """

    n: int
    e: int
    d: int
    p: int
    q: int
    dp: int
    dq: int
    qp: int

    def to_private_key(self) -> rsa.RSAPrivateKey:
        """Build the key from these numbers; :class:`KeyFormatError` if they do not form a valid key."""
        numbers = rsa.RSAPrivateNumbers(
            p=self.p,
            q=self.q,
            d=self.d,
            dmp1=self.dp,
            dmq1=self.dq,
            iqmp=self.qp,
            public_numbers=rsa.RSAPublicNumbers(e=self.e, n=self.n),
        )
        try:
            return numbers.private_key()
        except ValueError as exc:
            raise KeyFormatError(f"the device key numbers do not form a valid RSA key ({exc})") from None


def generate_server_key() -> rsa.RSAPrivateKey:
    """A new RSA-2048 key with e=65537, the only server key the firmware can use (protocol.md §2.3)."""
    return rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=SERVER_KEY_BITS)


def generate_device_key() -> rsa.RSAPrivateKey:
    """A new RSA-1024 key with e=65537 that the firmware's fixed-offset parser reads correctly.

    :func:`encode_device_private_key` output always parses. The key is also regenerated until its
    standard minimal-DER encoding parses (protocol.md §A.3), so it stays usable even when it is written
    to a device by tools that re-encode it, such as ``openssl rsa -outform DER``.
    """
    for _ in range(_MAX_GENERATE_ATTEMPTS):
        key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=DEVICE_KEY_BITS)
        minimal = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        if is_firmware_parsable(minimal):
            return key
    raise RuntimeError(
        f"no firmware-parsable RSA-1024 key in {_MAX_GENERATE_ATTEMPTS} attempts; the random source is suspect"
    )


def _fixed_integer(value: int, width: int, header: bytes, name: str) -> bytes:
    if value.bit_length() > width * 8:
        raise KeyFormatError(
            f"device key {name} needs {(value.bit_length() + 7) // 8} bytes; the firmware layout has room "
            f"for {width} (protocol.md §2.2)"
        )
    return header + value.to_bytes(width, "big")


def encode_device_private_key(key: rsa.RSAPrivateKey) -> bytes:
    """The device private key in the firmware's own fixed-width PKCS#1 layout (611 bytes).

    N and D are written as 129-byte INTEGERs and P, Q, DP, DQ, QP as 65-byte INTEGERs, each with a leading
    00 (protocol.md §2.2). The firmware parser always accepts this form. It is not strict DER, so
    ``cryptography`` cannot load it; :func:`load_private_key` can.

    The firmware's writer (``dsakeygen.cpp``) emits only the significant bytes of each number after the
    fixed header, so it yields this layout only when no number has a zero top byte; here every value is
    zero-padded to its full width.
    """
    check_device_public_key(key)
    numbers = key.private_numbers()
    big = b"\x02\x81\x81\x00"
    half = b"\x02\x41\x00"
    body = b"".join(
        (
            _VERSION,
            _fixed_integer(numbers.public_numbers.n, _MODULUS_BYTES, big, "N"),
            _EXPONENT,
            _fixed_integer(numbers.d, _MODULUS_BYTES, big, "D"),
            _fixed_integer(numbers.p, _HALF_BYTES, half, "P"),
            _fixed_integer(numbers.q, _HALF_BYTES, half, "Q"),
            _fixed_integer(numbers.dmp1, _HALF_BYTES, half, "DP"),
            _fixed_integer(numbers.dmq1, _HALF_BYTES, half, "DQ"),
            _fixed_integer(numbers.iqmp, _HALF_BYTES, half, "QP"),
        )
    )
    return _SEQUENCE_PREFIX + len(body).to_bytes(2, "big") + body


def _mis_parse(offset: int, field: str, problem: str) -> KeyFormatError:
    return KeyFormatError(
        f"offset {offset} ({field}): {problem}; the firmware reads the device key at fixed offsets and would "
        "mis-parse it (protocol.md §2.2, §A.3)"
    )


def _expect(der: bytes, offset: int, expected: bytes, field: str) -> None:
    _need(der, offset, len(expected), field)
    found = der[offset : offset + len(expected)]
    if found != expected:
        raise _mis_parse(offset, field, f"expected {expected.hex(' ')}, found {found.hex(' ')}")


def _need(der: bytes, offset: int, count: int, field: str) -> None:
    if offset + count > len(der):
        raise KeyFormatError(
            f"device key is truncated: {field} needs bytes {offset}..{offset + count - 1} "
            f"but the data has only {len(der)} bytes"
        )


def _walk_value(der: bytes, i: int, width: int, field: str) -> tuple[int, int]:
    """One step of the firmware walk; ``i`` is the offset of the field's length byte.

    Returns the value and the offset of the next field's length byte.
    """
    short = width < 0x80
    if short:
        _expect(der, i - 1, b"\x02", f"{field} tag")
    else:
        _expect(der, i - 2, b"\x02\x81", f"{field} tag")
    _need(der, i, 1, f"{field} length")
    length = der[i]
    if length not in (width, width + 1):
        raise _mis_parse(
            i,
            f"{field} length",
            f"found 0x{length:02x}, but the firmware needs exactly {width} value bytes "
            f"(length 0x{width:02x}, or 0x{width + 1:02x} with a leading 00)",
        )
    # The firmware tests only the low bit of the length byte to decide whether a leading 00 is present.
    if length & 1:
        i += 1
        _need(der, i, 1, f"{field} leading zero")
        if der[i] != 0:
            raise _mis_parse(i, field, f"length 0x{length:02x} needs a leading 00, found 0x{der[i]:02x}")
    i += 1
    _need(der, i, width, field)
    value = int.from_bytes(der[i : i + width], "big")
    # handshake.cpp then adds width + 1: past the value and the next field's tag byte.
    return value, i + width + 1


def firmware_parse_device_key(der: bytes) -> DeviceKeyFields:
    """Read a device private key exactly as the firmware does, or say where it would go wrong.

    The firmware (``handshake.cpp`` private-key initialisation, protocol.md §2.2) does no ASN.1 parsing.
    It takes the modulus from bytes 11..138, assuming ``30 82 LL LL 02 01 00 02 81 81 00``, skips the
    exponent assuming ``02 03 01 00 01``, then reads D (length byte 0x80, or 0x81 plus a leading 00) and
    P, Q, DP, DQ, QP (length 0x40, or 0x41 plus a leading 00) at positions derived only from the low bit of
    each length byte. Any other byte in those places makes it read wrong numbers; this function raises
    :class:`KeyFormatError` naming the offset and field instead. Bytes after QP are ignored, as on the device.
    """
    if not der:
        raise KeyFormatError("device private key is empty")
    if der[0] == 0xFF:
        raise KeyFormatError(
            "device private key area is blank (first byte 0xFF, erased flash); "
            "the firmware would generate a new key at boot (protocol.md §12.1)"
        )
    _expect(der, 0, _SEQUENCE_PREFIX, "SEQUENCE header")
    _expect(der, 4, _VERSION, "version")
    _expect(der, 7, _MODULUS_HEADER, "modulus header")
    # handshake.cpp starts at byte 9 (the modulus length byte), skips the leading zero when the low bit
    # is set and reads 128 bytes; with the header checked above that is always offset 11.
    n, _ = _walk_value(der, 9, _MODULUS_BYTES, "N")
    # The exponent is skipped, not read: a key with another exponent is silently treated as e=65537.
    _expect(der, _EXPONENT_OFFSET, _EXPONENT, "publicExponent")
    i = _EXPONENT_OFFSET + len(_EXPONENT) + 2  # 146: the length byte of D, after "02 81"
    d, i = _walk_value(der, i, _MODULUS_BYTES, "D")
    # After D, ``i`` points one byte past the next tag, i.e. at P's length byte (handshake.cpp ``i + 129``).
    halves: list[int] = []
    for field in ("P", "Q", "DP", "DQ", "QP"):
        value, i = _walk_value(der, i, _HALF_BYTES, field)
        halves.append(value)
    p, q, dp, dq, qp = halves
    return DeviceKeyFields(n=n, e=PUBLIC_EXPONENT, d=d, p=p, q=q, dp=dp, dq=dq, qp=qp)


def is_firmware_parsable(der: bytes) -> bool:
    """True if the firmware's offset walk reads exactly the numbers a real ASN.1 parse finds.

    A minimal-DER key whose D or a CRT value has a zero top byte comes out False (protocol.md §A.3), as
    does anything that is not a two-prime PKCS#1 RSA private key at all.
    """
    try:
        walked = firmware_parse_device_key(der)
        true = parse_pkcs1_private(outer_sequence(der, "device private key"))
    except KeyFormatError:
        return False
    return walked == DeviceKeyFields(
        n=true["modulus"],
        e=true["publicExponent"],
        d=true["privateExponent"],
        p=true["prime1"],
        q=true["prime2"],
        dp=true["exponent1"],
        dq=true["exponent2"],
        qp=true["coefficient"],
    )


def device_public_key_der_from_private(der: bytes) -> bytes:
    """The 162-byte public key the firmware sends in the handshake, built from its private key bytes.

    Like the firmware, this copies private-key bytes 11..138 behind a fixed 29-byte SPKI prefix and appends
    ``02 03 01 00 01`` without looking at anything else (protocol.md §2.2). For a well-formed RSA-1024 key
    the result equals :func:`public_key_der`; for anything else it is what the device would really send.
    """
    if der[:1] == b"\xff":
        raise KeyFormatError(
            "device private key area is blank (first byte 0xFF); the firmware would generate a new key at boot "
            "instead of sending this one (protocol.md §12.1)"
        )
    _need(der, _MODULUS_OFFSET, _MODULUS_BYTES, "the modulus")
    return _HANDSHAKE_SPKI_PREFIX + der[_MODULUS_OFFSET:_EXPONENT_OFFSET] + _EXPONENT
