"""A small, strict DER reader for the few structures this package needs.

``cryptography`` rejects INTEGERs with redundant leading zero bytes, but that is exactly how the firmware's
own key writer lays out a device private key (protocol.md §2.2: N and D as 129-byte INTEGERs, the CRT values
as 65-byte INTEGERs, each with a leading 00). This reader accepts that one relaxation and is strict about
everything else: definite, minimally encoded lengths, correct tags, no value running past its enclosing
SEQUENCE, non-negative integers. Every read is bounds-checked and fails with :class:`KeyFormatError` naming
the offset and the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import KeyFormatError

TAG_INTEGER = 0x02
TAG_SEQUENCE = 0x30

# Four length bytes already allow 4 GiB; nothing in this package comes close, so more is certainly garbage.
_MAX_LENGTH_BYTES = 4

PKCS1_PRIVATE_FIELDS = (
    "version",
    "modulus",
    "publicExponent",
    "privateExponent",
    "prime1",
    "prime2",
    "exponent1",
    "exponent2",
    "coefficient",
)


@dataclass(frozen=True)
class Tlv:
    """Position of one DER element inside a byte string."""

    tag: int
    offset: int
    value_offset: int
    length: int

    @property
    def end(self) -> int:
        return self.value_offset + self.length


def read_tlv(data: bytes, offset: int, what: str, *, limit: int | None = None) -> Tlv:
    """Read the tag and length of the element at ``offset``; the value must end at or before ``limit``."""
    end_limit = len(data) if limit is None else limit
    if offset >= end_limit:
        raise KeyFormatError(f"DER is truncated: {what} should start at offset {offset} but the data ends there")
    tag = data[offset]
    pos = offset + 1
    if pos >= end_limit:
        raise KeyFormatError(f"DER is truncated: {what} at offset {offset} has no length byte")
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise KeyFormatError(f"{what} at offset {offset} uses an indefinite length, which DER does not allow")
    else:
        count = first & 0x7F
        if count > _MAX_LENGTH_BYTES:
            raise KeyFormatError(f"{what} at offset {offset} declares a {count}-byte length field; too long")
        if pos + count > end_limit:
            raise KeyFormatError(f"DER is truncated: the length of {what} at offset {offset} is cut off")
        length = int.from_bytes(data[pos : pos + count], "big")
        if data[pos] == 0 or length < 0x80:
            raise KeyFormatError(f"{what} at offset {offset} has a non-minimal length encoding, which DER forbids")
        pos += count
    if pos + length > end_limit:
        raise KeyFormatError(
            f"DER is truncated: {what} at offset {offset} declares {length} value bytes "
            f"but only {max(end_limit - pos, 0)} are available"
        )
    return Tlv(tag=tag, offset=offset, value_offset=pos, length=length)


def outer_sequence(data: bytes, what: str) -> bytes:
    """Return the first DER SEQUENCE of ``data``; anything after it is ignored.

    Trailing bytes are normal: the firmware reads a fixed 612-byte area from DCT offset 34 and a 512-byte
    server-key area from 2082, and parses only the DER at the start (protocol.md §11).
    """
    if not data:
        raise KeyFormatError(f"{what} is empty")
    if data[0] != TAG_SEQUENCE:
        raise KeyFormatError(f"{what} is not DER: expected a SEQUENCE (0x30) at offset 0, found 0x{data[0]:02x}")
    tlv = read_tlv(data, 0, f"the {what} SEQUENCE")
    return data[: tlv.end]


def read_integer(data: bytes, offset: int, what: str, *, limit: int) -> tuple[int, int]:
    """Read a non-negative INTEGER at ``offset``; return its value and the offset just after it.

    Redundant leading zero bytes are accepted on purpose: the firmware's fixed-width key layout uses them.
    """
    tlv = read_tlv(data, offset, f"INTEGER {what}", limit=limit)
    if tlv.tag != TAG_INTEGER:
        raise KeyFormatError(f"expected INTEGER {what} (tag 0x02) at offset {offset}, found tag 0x{tlv.tag:02x}")
    if tlv.length == 0:
        raise KeyFormatError(f"INTEGER {what} at offset {offset} is empty")
    value = data[tlv.value_offset : tlv.end]
    if value[0] & 0x80:
        raise KeyFormatError(f"INTEGER {what} at offset {offset} is negative; RSA key numbers are positive")
    return int.from_bytes(value, "big"), tlv.end


def parse_pkcs1_private(data: bytes) -> dict[str, int]:
    """Parse a PKCS#1 ``RSAPrivateKey`` (two-prime, version 0) into its nine numbers, by field name.

    ``data`` must start with the SEQUENCE; bytes after the SEQUENCE are ignored.
    """
    der = outer_sequence(data, "RSA private key")
    seq = read_tlv(der, 0, "the RSA private key SEQUENCE")
    values: dict[str, int] = {}
    pos = seq.value_offset
    for name in PKCS1_PRIVATE_FIELDS:
        values[name], pos = read_integer(der, pos, name, limit=seq.end)
    if values["version"] != 0:
        raise KeyFormatError(
            f"RSA private key has version {values['version']}; only version 0 (two-prime) keys are supported"
        )
    if pos != seq.end:
        raise KeyFormatError(
            f"RSA private key has {seq.end - pos} unexpected bytes after the coefficient at offset {pos}"
        )
    return values
