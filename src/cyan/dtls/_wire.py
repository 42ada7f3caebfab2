"""The wire formats: DTLS 1.2 records (RFC 6347 §4.1), Particle's record variants (udp-dtls.md §1.3, §1.4) and
the handshake messages of the one profile (RFC 5246 §7.4, RFC 4492, RFC 7250, draft-ietf-tls-dtls-connection-id-05).

Parsers check every length before slicing and raise `DecodeError`; the endpoints turn that into a discarded
record or a `RemoteDtlsError` with the step they were in. Nothing here holds state.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

__all__ = [
    "CIPHER_SUITE",
    "DTLS_1_0",
    "DTLS_1_2",
    "RECORD_HEADER_SIZE",
    "AlertDescription",
    "CertificateRequest",
    "ClientHello",
    "ContentType",
    "DecodeError",
    "Extension",
    "HandshakeFragment",
    "HandshakeType",
    "Reader",
    "Record",
    "ServerHello",
    "ServerKeyExchange",
    "decode_certificate_verify",
    "decode_client_hello",
    "decode_client_key_exchange",
    "decode_raw_public_key_certificate",
    "decode_server_hello",
    "decode_server_key_exchange",
    "encode_certificate_request",
    "encode_certificate_verify",
    "encode_client_hello",
    "encode_client_key_exchange",
    "encode_handshake",
    "encode_hello_verify_request",
    "encode_raw_public_key_certificate",
    "encode_record",
    "encode_server_hello",
    "encode_server_key_exchange",
    "parse_handshake_fragments",
    "parse_records",
    "split_move_trailer",
]

#: DTLS versions on the wire are the one's complement of TLS's (RFC 6347 §4.1): 1.2 is {254, 253}.
DTLS_1_2 = 0xFEFD
#: HelloVerifyRequest carries 1.0 whatever is negotiated (RFC 6347 §4.2.1).
DTLS_1_0 = 0xFEFF
#: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (RFC 7251 §2), the only suite Device OS offers (udp-dtls.md §1.1).
CIPHER_SUITE = 0xC0AE
#: TLS_EMPTY_RENEGOTIATION_INFO_SCSV (RFC 5746 §3.3); mbedtls always adds it (MT `ssl_cli.c`).
RENEGOTIATION_SCSV = 0x00FF
#: secp256r1 in supported_groups (RFC 4492 §5.1.1) and the named_curve ECParameters type (§5.4).
SECP256R1 = 23
NAMED_CURVE = 3
#: (hash, signature) = (sha256, ecdsa): the only pair the profile uses (RFC 5246 §7.4.1.4.1).
SHA256_ECDSA = (4, 3)
#: ClientCertificateType ecdsa_sign (RFC 4492 §5.5).
ECDSA_SIGN = 64
#: RFC 7250 §3: CertificateType RawPublicKey.
RAW_PUBLIC_KEY = 2
RECORD_HEADER_SIZE = 13
HANDSHAKE_HEADER_SIZE = 12


class ContentType(enum.IntEnum):
    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23
    #: tls12_cid of draft-ietf-tls-dtls-connection-id-05, as MT `ssl.h` MBEDTLS_SSL_MSG_CID (udp-dtls.md §1.3).
    CID = 25
    #: Device OS ≥ 4.0 rewrites the first byte of a CID record to 253 while `move_session` is set, after
    #: encryption: the additional data still says 25 (DO `dtls_message_channel.cpp` ALT_CID_CONTENT_TYPE).
    ALT_CID = 253
    #: Device OS ≤ 2.x rewrites an application-data record to 254 and appends the device id and its length
    #: (DO v2.3.1 `dtls_message_channel.cpp` `send`); the additional data still says 23.
    MOVE_SESSION = 254


class HandshakeType(enum.IntEnum):
    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20


class Extension(enum.IntEnum):
    SUPPORTED_GROUPS = 10
    EC_POINT_FORMATS = 11
    SIGNATURE_ALGORITHMS = 13
    CLIENT_CERTIFICATE_TYPE = 19
    SERVER_CERTIFICATE_TYPE = 20
    #: The draft-05 code point Particle's mbedtls uses ("TBD" in MT `ssl.h`), not RFC 9146's 54.
    CONNECTION_ID = 254
    RENEGOTIATION_INFO = 0xFF01


class AlertDescription(enum.IntEnum):
    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    HANDSHAKE_FAILURE = 40
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    ILLEGAL_PARAMETER = 47
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INTERNAL_ERROR = 80


class DecodeError(ValueError):
    """Bytes that do not parse as the structure expected."""


class Reader:
    """Bounds-checked reading of TLS vectors (RFC 5246 §4.3)."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, count: int) -> bytes:
        if count < 0 or self._pos + count > len(self._data):
            raise DecodeError(f"needs {count} bytes at offset {self._pos}, has {self.remaining}")
        chunk = self._data[self._pos : self._pos + count]
        self._pos += count
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int, minimum: int = 0, maximum: int | None = None) -> bytes:
        length = self.uint(length_size)
        if length < minimum or (maximum is not None and length > maximum):
            raise DecodeError(f"vector of {length} bytes outside {minimum}..{maximum}")
        return self.take(length)

    def rest(self) -> bytes:
        return self.take(self.remaining)

    def done(self) -> None:
        if self.remaining:
            raise DecodeError(f"{self.remaining} trailing bytes")


def _vector(length_size: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_size, "big") + data


# -- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One record as parsed. `wire_type` is the byte on the wire (25, 253 and 254 included); `fragment`
    is what follows the header: plaintext in epoch 0, explicit nonce + ciphertext + tag after."""

    wire_type: int
    version: int
    epoch: int
    sequence: int
    cid: bytes
    fragment: bytes
    #: Device id from a type-254 trailer (udp-dtls.md §1.4), else empty.
    device_id: bytes = b""

    @property
    def is_cid(self) -> bool:
        return self.wire_type in (ContentType.CID, ContentType.ALT_CID)

    @property
    def aad_type(self) -> int:
        """The type the sender authenticated: 253 and 254 are rewritten after encryption (udp-dtls.md §1.4)."""
        if self.wire_type == ContentType.ALT_CID:
            return int(ContentType.CID)
        if self.wire_type == ContentType.MOVE_SESSION:
            return int(ContentType.APPLICATION_DATA)
        return self.wire_type


def encode_record(
    content_type: int, epoch: int, sequence: int, fragment: bytes, *, cid: bytes = b"", version: int = DTLS_1_2
) -> bytes:
    header = struct.pack(">BHH", content_type, version, epoch) + sequence.to_bytes(6, "big")
    return header + cid + struct.pack(">H", len(fragment)) + fragment


def split_move_trailer(datagram: bytes) -> tuple[bytes, bytes] | None:
    """A type-254 datagram of Device OS ≤ 2.x: (the record, the device id), or None when it is not one.

    The device appends the 12-byte id and then its length to the whole record (DO v2.3.1
    `DTLSMessageChannel::send`), so the trailer is read from the end."""
    if len(datagram) < RECORD_HEADER_SIZE + 2 or datagram[0] != ContentType.MOVE_SESSION:
        return None
    id_length = datagram[-1]
    if id_length == 0 or len(datagram) < RECORD_HEADER_SIZE + id_length + 1:
        return None
    return datagram[: -(id_length + 1)], datagram[-(id_length + 1) : -1]


def parse_records(datagram: bytes, cid_length: int, *, max_fragment: int) -> tuple[list[Record], str | None]:
    """The records of one datagram (RFC 6347 §4.1.1: several may share it), and why parsing stopped early.

    `cid_length` is our own connection id's length: draft-05 CID records carry no length byte, so only the
    receiver knows where the CID ends (MT `ssl_msg.c` reads `conf->cid_len`)."""
    records: list[Record] = []
    device_id = b""
    if datagram[:1] == bytes([ContentType.MOVE_SESSION]):
        split = split_move_trailer(datagram)
        if split is None:
            return records, "a type-254 datagram without its device-id trailer"
        datagram, device_id = split
    pos = 0
    while pos < len(datagram):
        if len(datagram) - pos < RECORD_HEADER_SIZE:
            return records, f"{len(datagram) - pos} bytes left, shorter than a record header"
        wire_type, version, epoch = struct.unpack_from(">BHH", datagram, pos)
        sequence = int.from_bytes(datagram[pos + 5 : pos + 11], "big")
        pos += 11
        cid = b""
        if wire_type in (ContentType.CID, ContentType.ALT_CID):
            if cid_length == 0:
                return records, "a connection-id record where none was negotiated"
            if len(datagram) - pos < cid_length + 2:
                return records, "a connection-id record cut short"
            cid = datagram[pos : pos + cid_length]
            pos += cid_length
        (length,) = struct.unpack_from(">H", datagram, pos)
        pos += 2
        if length > max_fragment:
            return records, f"a record of {length} bytes, above the {max_fragment}-byte bound"
        if len(datagram) - pos < length:
            return records, f"a record of {length} bytes with {len(datagram) - pos} left in the datagram"
        if version >> 8 != 0xFE:
            return records, f"record version {version:#06x} is not DTLS"
        fragment = datagram[pos : pos + length]
        pos += length
        moved = device_id if wire_type == ContentType.MOVE_SESSION else b""
        records.append(Record(wire_type, version, epoch, sequence, cid, fragment, moved))
        if wire_type == ContentType.MOVE_SESSION and pos != len(datagram):
            return records, "a type-254 record followed by more records"
    return records, None


# -- handshake framing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeFragment:
    msg_type: int
    length: int
    message_seq: int
    offset: int
    body: bytes


def parse_handshake_fragments(payload: bytes) -> list[HandshakeFragment]:
    """The handshake fragments of one record (RFC 6347 §4.2.2); a record may hold several."""
    fragments = []
    reader = Reader(payload)
    while reader.remaining:
        msg_type = reader.uint(1)
        length = reader.uint(3)
        message_seq = reader.uint(2)
        offset = reader.uint(3)
        body = reader.vector(3)
        if offset + len(body) > length:
            raise DecodeError(f"fragment {offset}+{len(body)} past the message length {length}")
        fragments.append(HandshakeFragment(msg_type, length, message_seq, offset, body))
    return fragments


def encode_handshake(msg_type: int, message_seq: int, body: bytes, offset: int = 0, total: int | None = None) -> bytes:
    """One handshake fragment; with the defaults, the whole message as the transcript hashes it
    (RFC 6347 §4.2.6: as if sent in one fragment)."""
    length = len(body) if total is None else total
    return (
        bytes([msg_type])
        + length.to_bytes(3, "big")
        + message_seq.to_bytes(2, "big")
        + offset.to_bytes(3, "big")
        + len(body).to_bytes(3, "big")
        + body
    )


# -- hello messages -----------------------------------------------------------------------------------


def _parse_extensions(reader: Reader) -> dict[int, bytes]:
    extensions: dict[int, bytes] = {}
    if not reader.remaining:
        return extensions  # RFC 5246 §7.4.1.2: the extensions block may be absent
    block = Reader(reader.vector(2))
    while block.remaining:
        ext_type = block.uint(2)
        data = block.vector(2)
        if ext_type in extensions:
            # RFC 5246 §7.4.1.4: "There MUST NOT be more than one extension of the same type."
            raise DecodeError(f"extension {ext_type} appears twice")
        extensions[ext_type] = data
    return extensions


def _encode_extensions(extensions: dict[int, bytes]) -> bytes:
    if not extensions:
        return b""
    block = b"".join(struct.pack(">HH", t, len(d)) + d for t, d in extensions.items())
    return _vector(2, block)


@dataclass(frozen=True, slots=True)
class ClientHello:
    version: int
    random: bytes
    session_id: bytes
    cookie: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: dict[int, bytes] = field(default_factory=dict)


def decode_client_hello(body: bytes) -> ClientHello:
    reader = Reader(body)
    version = reader.uint(2)
    random = reader.take(32)
    session_id = reader.vector(1, 0, 32)
    cookie = reader.vector(1, 0, 255)
    suites_raw = reader.vector(2, 2)
    if len(suites_raw) % 2:
        raise DecodeError("odd cipher-suite list")
    suites = tuple(struct.unpack(f">{len(suites_raw) // 2}H", suites_raw))
    compression = reader.vector(1, 1)
    extensions = _parse_extensions(reader)
    reader.done()
    return ClientHello(version, random, session_id, cookie, suites, compression, extensions)


def encode_client_hello(hello: ClientHello) -> bytes:
    suites = b"".join(struct.pack(">H", s) for s in hello.cipher_suites)
    return (
        struct.pack(">H", hello.version)
        + hello.random
        + _vector(1, hello.session_id)
        + _vector(1, hello.cookie)
        + _vector(2, suites)
        + _vector(1, hello.compression_methods)
        + _encode_extensions(hello.extensions)
    )


def encode_hello_verify_request(cookie: bytes) -> bytes:
    return struct.pack(">H", DTLS_1_0) + _vector(1, cookie)


def decode_hello_verify_request(body: bytes) -> bytes:
    reader = Reader(body)
    version = reader.uint(2)
    if version not in (DTLS_1_0, DTLS_1_2):
        raise DecodeError(f"HelloVerifyRequest version {version:#06x}")
    cookie = reader.vector(1)
    reader.done()
    return cookie


@dataclass(frozen=True, slots=True)
class ServerHello:
    version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    compression_method: int
    extensions: dict[int, bytes] = field(default_factory=dict)


def decode_server_hello(body: bytes) -> ServerHello:
    reader = Reader(body)
    version = reader.uint(2)
    random = reader.take(32)
    session_id = reader.vector(1, 0, 32)
    suite = reader.uint(2)
    compression = reader.uint(1)
    extensions = _parse_extensions(reader)
    reader.done()
    return ServerHello(version, random, session_id, suite, compression, extensions)


def encode_server_hello(hello: ServerHello) -> bytes:
    return (
        struct.pack(">H", hello.version)
        + hello.random
        + _vector(1, hello.session_id)
        + struct.pack(">HB", hello.cipher_suite, hello.compression_method)
        + _encode_extensions(hello.extensions)
    )


def decode_uint8_list(data: bytes) -> bytes:
    """A `<1..2^8-1>` list of one-byte items: point formats, certificate types (RFC 7250 §3)."""
    reader = Reader(data)
    items = reader.vector(1, 1)
    reader.done()
    return items


def decode_uint16_list(data: bytes) -> tuple[int, ...]:
    """A `<2..2^16-2>` list of two-byte items: supported groups, signature algorithms."""
    reader = Reader(data)
    raw = reader.vector(2, 2)
    reader.done()
    if len(raw) % 2:
        raise DecodeError("odd list of two-byte items")
    return tuple(struct.unpack(f">{len(raw) // 2}H", raw))


def decode_connection_id(data: bytes) -> bytes:
    """draft-ietf-tls-dtls-connection-id-05 §3: `opaque cid<0..2^8-1>`."""
    reader = Reader(data)
    cid = reader.vector(1)
    reader.done()
    return cid


# -- key exchange and authentication ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerKeyExchange:
    curve: int
    point: bytes
    #: The signed part: ServerECDHParams (RFC 4492 §5.4).
    params: bytes
    hash_sig: tuple[int, int]
    signature: bytes


def encode_server_key_exchange_params(point: bytes) -> bytes:
    return struct.pack(">BH", NAMED_CURVE, SECP256R1) + _vector(1, point)


def encode_server_key_exchange(params: bytes, signature: bytes) -> bytes:
    return params + bytes(SHA256_ECDSA) + _vector(2, signature)


def decode_server_key_exchange(body: bytes) -> ServerKeyExchange:
    reader = Reader(body)
    curve_type = reader.uint(1)
    if curve_type != NAMED_CURVE:
        raise DecodeError(f"ECParameters curve type {curve_type}, not named_curve")
    curve = reader.uint(2)
    point = reader.vector(1, 1)
    params = body[: 4 + len(point)]
    hash_sig = (reader.uint(1), reader.uint(1))
    signature = reader.vector(2, 1)
    reader.done()
    return ServerKeyExchange(curve, point, params, hash_sig, signature)


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    certificate_types: bytes
    signature_algorithms: tuple[tuple[int, int], ...]


def encode_certificate_request() -> bytes:
    # No certificate_authorities: the key, not a CA, identifies a device (udp-dtls.md §1.3).
    return _vector(1, bytes([ECDSA_SIGN])) + _vector(2, bytes(SHA256_ECDSA)) + _vector(2, b"")


def decode_certificate_request(body: bytes) -> CertificateRequest:
    reader = Reader(body)
    types = reader.vector(1, 1)
    raw = reader.vector(2, 2)
    if len(raw) % 2:
        raise DecodeError("odd signature-algorithm list")
    reader.vector(2)  # certificate_authorities: nothing to choose from, one key
    reader.done()
    return CertificateRequest(types, tuple((raw[i], raw[i + 1]) for i in range(0, len(raw), 2)))


def encode_raw_public_key_certificate(spki_der: bytes) -> bytes:
    """RFC 7250 §3: with RawPublicKey the Certificate is one `ASN.1_subjectPublicKeyInfo<1..2^24-1>`,
    as Particle's mbedtls writes it (MT `ssl_tls.c` `mbedtls_ssl_write_certificate`)."""
    return _vector(3, spki_der)


def decode_raw_public_key_certificate(body: bytes) -> bytes:
    reader = Reader(body)
    spki = reader.vector(3, 1)
    reader.done()
    return spki


def decode_x509_certificate_list(body: bytes) -> list[bytes]:
    """RFC 5246 §7.4.2, for the certificate variant used against stock stacks in tests."""
    reader = Reader(body)
    chain = Reader(reader.vector(3))
    reader.done()
    certificates = []
    while chain.remaining:
        certificates.append(chain.vector(3, 1))
    return certificates


def encode_x509_certificate_list(certificates: list[bytes]) -> bytes:
    return _vector(3, b"".join(_vector(3, c) for c in certificates))


def encode_client_key_exchange(point: bytes) -> bytes:
    """RFC 4492 §5.7: ClientECDiffieHellmanPublic, `opaque point <1..2^8-1>`."""
    return _vector(1, point)


def decode_client_key_exchange(body: bytes) -> bytes:
    reader = Reader(body)
    point = reader.vector(1, 1)
    reader.done()
    return point


def encode_certificate_verify(signature: bytes) -> bytes:
    return bytes(SHA256_ECDSA) + _vector(2, signature)


def decode_certificate_verify(body: bytes) -> tuple[tuple[int, int], bytes]:
    reader = Reader(body)
    hash_sig = (reader.uint(1), reader.uint(1))
    signature = reader.vector(2, 1)
    reader.done()
    return hash_sig, signature


def decode_alert(payload: bytes) -> tuple[int, int]:
    if len(payload) != 2:
        raise DecodeError(f"an alert of {len(payload)} bytes")
    return payload[0], payload[1]
