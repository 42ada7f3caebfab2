"""The Gen 2 message catalogue: builders for every message either side sends, and payload codecs.

Every builder returns a `coap.Message` laid out exactly as protocol.md §6–§8 gives it. The layout is
what keeps real firmware alive, because it parses server requests at fixed offsets (§6.1, §13):

* server requests carry exactly one token byte (functions and variables fail without it, §6.1);
* events to a device carry no token and no option other than the name and Max-Age (§6.4);
* acknowledgements from the server are empty (0.00); 2.05 is only ever the time response (§6.1);
* a function call always carries its argument option, empty or not (§6.5);
* the Chunk's CRC and index options are each shorter than 13 bytes (§7.1).

Builders check sizes against the device's limits (§10) and raise `ValueError` with the limit named.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from .coap import Code, Message, MessageType, Option

__all__ = [
    "DEFAULT_EVENT_TTL",
    "MAX_EVENT_DATA",
    "MAX_EVENT_NAME",
    "MAX_FUNCTION_ARGUMENT",
    "MAX_NAME",
    "MAX_SUBSCRIPTION_PREFIX",
    "CloudDisconnectReason",
    "DescribeFlags",
    "Goodbye",
    "Hello",
    "HelloFlag",
    "OtaOption",
    "SubscriptionScope",
    "VariableType",
    "chunk",
    "chunk_missed",
    "chunk_received",
    "content_response",
    "decode_describe",
    "decode_goodbye",
    "decode_metrics",
    "decode_variable",
    "describe_post",
    "describe_request",
    "device_event",
    "device_hello",
    "device_update_done",
    "empty_ack",
    "encode_goodbye",
    "encode_metrics",
    "encode_variable",
    "event",
    "function_ack",
    "function_call",
    "function_return",
    "goodbye",
    "json_object_or_none",
    "parse_chunk_missed",
    "parse_hello",
    "piggybacked_response",
    "ping",
    "server_hello",
    "signal",
    "signal_ack",
    "subscribe",
    "time_request",
    "time_response",
    "uint_option",
    "update_ack",
    "update_begin",
    "update_chunk",
    "update_done",
    "update_finish",
    "update_ready",
    "update_start",
    "variable_request",
]

#: Event names are truncated by the firmware at 63 (legacy) / 64 (new) bytes (§6.4, §10).
MAX_EVENT_NAME = 64
#: Event data: 255 bytes on the legacy stack, 622 on the new (§6.4, §10).
MAX_EVENT_DATA = 622
#: Function and variable names: 12 bytes legacy, 64 new (§6.5, §10).
MAX_NAME = 64
#: Function argument: < 64 bytes legacy, ≤ 622 new (§6.5).
MAX_FUNCTION_ARGUMENT = 622
MAX_SUBSCRIPTION_PREFIX = 63
DEFAULT_EVENT_TTL = 60
_MAX_TTL = 0xFFFFFF


def _path(segment: str) -> tuple[int, bytes]:
    return (Option.URI_PATH, segment.encode())


def _check_range(what: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{what} {value} does not fit its {bits}-bit field")


def _token(token: int) -> bytes:
    if not 0 <= token <= 0xFF:
        raise ValueError(f"token {token} does not fit the 1 byte the firmware reads (§6.1)")
    return bytes((token,))


def _check_name(kind: str, name: bytes, limit: int) -> None:
    if not name:
        raise ValueError(f"{kind} name is empty")
    if len(name) > limit:
        raise ValueError(f"{kind} name is {len(name)} bytes; devices take at most {limit}")


# -- Hello (§5) -------------------------------------------------------------------------------------


class HelloFlag(enum.IntFlag):
    OTA_SUCCEEDED = 0x01
    DIAGNOSTICS = 0x02
    IMMEDIATE_UPDATES = 0x04
    HANDSHAKE_COMPLETE = 0x08
    GOODBYE = 0x10
    DEVICE_INITIATED_DESCRIBE = 0x20
    COMPRESSED_OTA = 0x40
    #: Gen 3 and P2 from Device OS 3.0: updates only by OTA protocol v3 (udp-dtls.md §1.5).
    OTA_PROTOCOL_V3 = 0x80


@dataclass(frozen=True, slots=True)
class Hello:
    """The device Hello's payload (§5). Fields after `platform_id` exist on Device OS 3.x only."""

    product_id: int
    product_version: int
    flags: HelloFlag
    platform_id: int
    system_version: int | None = None
    max_message_size: int | None = None
    max_binary_size: int | None = None
    ota_chunk_size: int | None = None

    def encode(self) -> bytes:
        for what, value, bits in (
            ("product id", self.product_id, 16),
            ("product version", self.product_version, 16),
            ("flags", int(self.flags), 8),
            ("platform id", self.platform_id, 16),
            ("system version", self.system_version or 0, 16),
            ("maximum message size", self.max_message_size or 0, 16),
            ("maximum binary size", self.max_binary_size or 0, 32),
            ("OTA chunk size", self.ota_chunk_size or 0, 16),
        ):
            _check_range(what, value, bits)
        out = struct.pack(">HHBBH", self.product_id, self.product_version, 0, self.flags, self.platform_id)
        if self.system_version is not None:
            out += struct.pack(
                ">HHHIH",
                0,  # device-id length: TCP builds never send the id here (§5)
                self.system_version,
                self.max_message_size or 0,
                self.max_binary_size or 0,
                self.ota_chunk_size or 0,
            )
        return out


def parse_hello(payload: bytes) -> Hello:
    """Parse what is there and ignore anything beyond (§5). Raises `ValueError` under 8 bytes."""
    if len(payload) < 8:
        raise ValueError(f"Hello payload of {len(payload)} bytes; it has at least 8")
    product_id, product_version, _reserved, flags, platform_id = struct.unpack_from(">HHBBH", payload)
    extra: dict[str, int] = {}
    if len(payload) >= 20:
        id_length = int.from_bytes(payload[8:10], "big")
        at = 10 + id_length
        if len(payload) >= at + 10:
            system_version, max_message, max_binary, chunk_size = struct.unpack_from(">HHIH", payload, at)
            extra = {
                "system_version": system_version,
                "max_message_size": max_message,
                "max_binary_size": max_binary,
                "ota_chunk_size": chunk_size,
            }
    return Hello(product_id, product_version, HelloFlag(flags), platform_id, **extra)


def device_hello(message_id: int, hello: Hello) -> Message:
    return Message(MessageType.NON, Code.POST, message_id, options=(_path("h"),), payload=hello.encode())


def server_hello(message_id: int, token: int) -> Message:
    """NON POST h with a 1-byte token (§5: ``51 02 MID TK B1 68``)."""
    return Message(MessageType.NON, Code.POST, message_id, _token(token), (_path("h"),))


# -- acknowledgements, ping, time (§6.1, §6.8, §6.10) ---------------------------------------------


def empty_ack(message_id: int) -> Message:
    """The only acknowledgement the server sends (besides the time response): ``60 00 MID``."""
    return Message.empty(MessageType.ACK, message_id)


def ping(message_id: int) -> Message:
    return Message.empty(MessageType.CON, message_id)


def time_request(message_id: int, token: int) -> Message:
    return Message(MessageType.CON, Code.GET, message_id, _token(token), (_path("t"),))


def time_response(message_id: int, token: bytes, unix_time: int) -> Message:
    """ACK 2.05 echoing the request's id and token; the device reads the time at bytes 6..9 (§6.8)."""
    if len(token) != 1:
        raise ValueError("the time response must echo the request's 1-byte token (§6.8)")
    return Message(
        MessageType.ACK, Code.CONTENT, message_id, token, payload=(unix_time & 0xFFFFFFFF).to_bytes(4, "big")
    )


# -- describe (§6.7) --------------------------------------------------------------------------------


class DescribeFlags(enum.IntFlag):
    SYSTEM = 1
    APPLICATION = 2
    METRICS = 4


def describe_request(message_id: int, token: int, flags: int | None = None) -> Message:
    options = [_path("d")]
    if flags is not None:
        _check_range("describe flags", flags, 8)
        options.append((Option.URI_QUERY, bytes((flags,))))
    return Message(MessageType.CON, Code.GET, message_id, _token(token), tuple(options))


def describe_post(message_id: int, flags: int, document: bytes) -> Message:
    """A device-initiated Describe, Device OS 2.0+ (§6.7): ``40 02 MID B1 'd' 41 FLAGS FF json``."""
    return Message(
        MessageType.CON,
        Code.POST,
        message_id,
        options=(_path("d"), (Option.URI_QUERY, bytes((flags,)))),
        payload=document,
    )


def decode_describe(payload: bytes) -> dict[str, Any]:
    """Describe JSON into a dict; raises `ValueError` with the reason when it is not a JSON object."""
    try:
        document = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # Peer input (§6.7 "Parse as JSON"): besides JSONDecodeError and UnicodeDecodeError, deep nesting
        # raises RecursionError and an over-long integer a plain ValueError; all mean "not JSON" here.
        raise ValueError(f"describe payload is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"describe payload is JSON {type(document).__name__}, not an object")
    return document


#: The metrics Describe's header (§6.7, §16 #16): a 0 byte (binary, not JSON), the flags (4) as uint16, then the
#: size of an id (2) and of a value (4), each a uint16; little-endian like everything after it.
_METRICS_HEADER = struct.pack("<BHHH", 0, DescribeFlags.METRICS, 2, 4)
_METRIC = struct.Struct("<Hi")
#: A device registers a few dozen diagnostic sources; more than this in one reply is not a device.
MAX_METRICS = 256


def encode_metrics(values: dict[int, int]) -> bytes:
    """The device's answer to a metrics Describe: the header, then (uint16 id, int32 value) per source."""
    if len(values) > MAX_METRICS:
        raise ValueError(f"{len(values)} diagnostic sources; a device reports at most {MAX_METRICS}")
    out = bytearray(_METRICS_HEADER)
    for source, value in values.items():
        _check_range("diagnostic source id", source, 16)
        if not -(1 << 31) <= value < 1 << 31:
            raise ValueError(f"diagnostic value {value} does not fit its int32 field")
        out += _METRIC.pack(source, value)
    return bytes(out)


def decode_metrics(payload: bytes) -> dict[int, int]:
    """A metrics Describe (§6.7) into source id -> int32 value; `ValueError` with the reason for anything
    else (peer input: the header, the sizes and the length are all checked)."""
    if len(payload) < len(_METRICS_HEADER):
        raise ValueError(f"a metrics describe is at least {len(_METRICS_HEADER)} bytes, got {len(payload)}")
    marker, flags, id_size, value_size = struct.unpack_from("<BHHH", payload)
    if marker != 0 or flags != DescribeFlags.METRICS:
        raise ValueError(f"not a metrics describe: header {payload[:3].hex()}")
    if (id_size, value_size) != (2, 4):
        raise ValueError(f"metrics with {id_size}-byte ids and {value_size}-byte values are not understood")
    body = payload[len(_METRICS_HEADER) :]
    if len(body) % _METRIC.size:
        raise ValueError(f"metrics body of {len(body)} bytes is not a whole number of {_METRIC.size}-byte entries")
    if len(body) // _METRIC.size > MAX_METRICS:
        raise ValueError(f"more than {MAX_METRICS} diagnostic sources")
    return dict(_METRIC.iter_unpack(body))


def json_object_or_none(payload: bytes | None) -> dict[str, Any] | None:
    """A JSON object payload, such as an update's result (§7.1), or None for no payload or anything else."""
    if not payload:
        return None
    try:
        return decode_describe(payload)
    except ValueError:
        return None


def piggybacked_response(message_id: int, token: bytes, code: int, payload: bytes | None) -> Message:
    """Device reply in the ACK itself (legacy stack and early new stack, §6.2)."""
    return Message(MessageType.ACK, code, message_id, token, payload=payload)


def content_response(
    message_id: int, token: bytes, code: int, payload: bytes | None, *, confirmable: bool = False
) -> Message:
    """Device reply sent separately after an empty ACK (new stack, §6.2)."""
    kind = MessageType.CON if confirmable else MessageType.NON
    return Message(kind, code, message_id, token, payload=payload)


# -- functions and variables (§6.5, §6.6) ------------------------------------------------------------


def function_call(message_id: int, token: int, name: str, argument: str | bytes) -> Message:
    raw_name = name.encode()
    raw_arg = argument.encode() if isinstance(argument, str) else argument
    _check_name("function", raw_name, MAX_NAME)
    if len(raw_arg) > MAX_FUNCTION_ARGUMENT:
        raise ValueError(f"function argument is {len(raw_arg)} bytes; devices take at most 622")
    # The argument option is always present, empty or not: without it the firmware reads the next
    # byte as a length and passes garbage (§6.5).
    return Message(
        MessageType.CON,
        Code.POST,
        message_id,
        _token(token),
        (_path("f"), (Option.URI_PATH, raw_name), (Option.URI_QUERY, raw_arg)),
    )


def function_ack(message_id: int, *, argument_too_long: bool = False) -> Message:
    code = Code.BAD_REQUEST if argument_too_long else Code.EMPTY
    return Message(MessageType.ACK, code, message_id)


def function_return(message_id: int, token: bytes, value: int) -> Message:
    """NON 2.04 with the request's token and the int32 result, big-endian (§6.5)."""
    return Message(MessageType.NON, Code.CHANGED, message_id, token, payload=struct.pack(">i", _int32(value)))


def _int32(value: int) -> int:
    return (value + 0x80000000) % 0x100000000 - 0x80000000


def variable_request(message_id: int, token: int, name: str) -> Message:
    raw_name = name.encode()
    _check_name("variable", raw_name, MAX_NAME)
    return Message(MessageType.CON, Code.GET, message_id, _token(token), (_path("v"), (Option.URI_PATH, raw_name)))


class VariableType(enum.IntEnum):
    """Type codes of Describe's "v" map and the encodings of their values (§6.6)."""

    BOOL = 1
    INT = 2
    STRING = 4
    DOUBLE = 9

    @property
    def api_name(self) -> str:
        """The name the Particle Cloud API uses for this type."""
        return _API_NAMES[self]


_API_NAMES = {
    VariableType.BOOL: "bool",
    VariableType.INT: "int32",
    VariableType.STRING: "string",
    VariableType.DOUBLE: "double",
}


def encode_variable(kind: VariableType, value: bool | int | float | str | bytes) -> bytes:
    if kind is VariableType.BOOL:
        return b"\x01" if value else b"\x00"
    if kind is VariableType.INT:
        if not isinstance(value, int):
            raise TypeError("an int variable needs an int value")
        return struct.pack(">i", _int32(value))
    if kind is VariableType.DOUBLE:
        if isinstance(value, str | bytes):
            raise TypeError("a double variable needs a number")
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"{value} is too large for a double variable") from None
        return struct.pack("<d", number)  # native little-endian memcpy on the device (§6.6)
    return value if isinstance(value, bytes) else str(value).encode()


def decode_variable(kind: VariableType, raw: bytes) -> bool | int | float | str:
    """Decode a variable value; raises `ValueError` when the size does not fit the type."""
    if kind is VariableType.BOOL:
        if len(raw) != 1:
            raise ValueError(f"a bool variable is 1 byte, got {len(raw)}")
        return raw != b"\x00"
    if kind is VariableType.INT:
        if len(raw) != 4:
            raise ValueError(f"an int variable is 4 bytes, got {len(raw)}")
        return int(struct.unpack(">i", raw)[0])
    if kind is VariableType.DOUBLE:
        if len(raw) != 8:
            raise ValueError(f"a double variable is 8 bytes, got {len(raw)}")
        number = float(struct.unpack("<d", raw)[0])
        return number if math.isfinite(number) else str(number)
    return raw.decode("utf-8", errors="replace")


# -- events and subscriptions (§6.4) -----------------------------------------------------------------


def _event_options(name: str, ttl: int, private: bool) -> tuple[tuple[int, bytes], ...]:
    raw_name = name.encode()
    _check_name("event", raw_name, MAX_EVENT_NAME)
    if not 0 <= ttl <= _MAX_TTL:
        raise ValueError(f"event ttl {ttl} is outside 0..16777215")
    options = [_path("E" if private else "e"), (Option.URI_PATH, raw_name)]
    if ttl != DEFAULT_EVENT_TTL:
        # Max-Age is always written as 3 bytes by the firmware (§6.4).
        options.append((Option.MAX_AGE, ttl.to_bytes(3, "big")))
    return tuple(options)


def _event_data(data: bytes | str | None) -> bytes | None:
    raw = data.encode() if isinstance(data, str) else data
    if raw is not None and len(raw) > MAX_EVENT_DATA:
        raise ValueError(f"event data is {len(raw)} bytes; devices take at most 622")
    return raw


def event(
    message_id: int,
    name: str,
    data: bytes | str | None,
    *,
    ttl: int = DEFAULT_EVENT_TTL,
    private: bool = True,
) -> Message:
    """Server → device event: NON, no token, the whole name in one Uri-Path option (§6.4).

    The legacy stack looks for the name at fixed offset 6, which holds only with no token.
    """
    raw = _event_data(data)
    return Message(
        MessageType.NON,
        Code.POST,
        message_id,
        options=_event_options(name, ttl, private),
        payload=raw if raw else None,
    )


def device_event(
    message_id: int,
    name: str,
    data: bytes | str | None,
    *,
    ttl: int = DEFAULT_EVENT_TTL,
    private: bool = True,
    confirmable: bool = False,
) -> Message:
    """Device publish (§6.4). Empty data is a bare payload marker, as the firmware sends it."""
    return Message(
        MessageType.CON if confirmable else MessageType.NON,
        Code.POST,
        message_id,
        options=_event_options(name, ttl, private),
        payload=_event_data(data),
    )


class SubscriptionScope(enum.Enum):
    ALL_DEVICES = "all_devices"  # the legacy "firehose": no query, no device id
    MY_DEVICES = "my_devices"  # Uri-Query "u"
    DEVICE = "device"  # payload: the one device's id


def subscribe(
    message_id: int,
    prefix: str,
    scope: SubscriptionScope = SubscriptionScope.MY_DEVICES,
    device_id: str | None = None,
) -> Message:
    raw = prefix.encode()
    if len(raw) > MAX_SUBSCRIPTION_PREFIX:
        raise ValueError(f"subscription prefix is {len(raw)} bytes; devices send at most 63")
    if not raw and scope is SubscriptionScope.ALL_DEVICES:
        raise ValueError("an empty subscription prefix needs the MY_DEVICES scope or a device id (§6.4)")
    options = [_path("e")]
    if raw:
        options.append((Option.URI_PATH, raw))
    payload = None
    if scope is SubscriptionScope.MY_DEVICES:
        options.append((Option.URI_QUERY, b"u"))
    elif scope is SubscriptionScope.DEVICE:
        if not device_id:
            raise ValueError("a single-device subscription needs the device id")
        payload = device_id.encode()
    return Message(MessageType.CON, Code.GET, message_id, options=tuple(options), payload=payload)


# -- signal (§6.9) ----------------------------------------------------------------------------------


def signal(message_id: int, token: int, on: bool) -> Message:
    return Message(
        MessageType.CON,
        Code.PUT,
        message_id,
        _token(token),
        (_path("s"), (Option.URI_QUERY, b"\x01" if on else b"\x00")),
    )


def signal_ack(message_id: int, token: bytes) -> Message:
    return Message(MessageType.ACK, Code.CHANGED, message_id, token)


# -- OTA (§7) ---------------------------------------------------------------------------------------


def update_begin(
    message_id: int,
    token: int,
    *,
    fast: bool,
    chunk_size: int,
    file_size: int,
    store: int = 0,
    address: int = 0,
) -> Message:
    """UpdateBegin with its 12-byte payload at offset 8 (TKL 1 puts it there, §7.1)."""
    _check_range("chunk size", chunk_size, 16)
    _check_range("file size", file_size, 32)
    _check_range("store", store, 8)
    _check_range("address", address, 32)
    payload = struct.pack(">BHIBI", 1 if fast else 0, chunk_size, file_size, store, address)
    return Message(MessageType.CON, Code.POST, message_id, _token(token), (_path("u"),), payload=payload)


def update_ready(message_id: int, token: bytes, *, fast: bool) -> Message:
    return Message(MessageType.NON, Code.CHANGED, message_id, token, payload=b"\x01" if fast else b"\x00")


def chunk(message_id: int, token: int, *, crc: int, data: bytes, index: int | None = None) -> Message:
    """Chunk: CRC (4 bytes) and, in fast mode only, the index (2 bytes), as Uri-Query options (§7.1)."""
    _check_range("chunk CRC", crc, 32)
    if index is not None:
        _check_range("chunk index", index, 16)
    options = [_path("c"), (Option.URI_QUERY, crc.to_bytes(4, "big"))]
    if index is not None:
        options.append((Option.URI_QUERY, index.to_bytes(2, "big")))
    return Message(MessageType.CON, Code.POST, message_id, _token(token), tuple(options), payload=data)


def chunk_received(message_id: int, token: bytes, *, ok: bool) -> Message:
    return Message(MessageType.NON, Code.CHANGED if ok else Code.BAD_REQUEST, message_id, token)


def chunk_missed(message_id: int, indexes: list[int], *, confirmable: bool) -> Message:
    """ChunkMissed: GET c with big-endian 16-bit indexes; CON on legacy, NON on new (§7.1)."""
    for index in indexes:
        _check_range("chunk index", index, 16)
    payload = b"".join(i.to_bytes(2, "big") for i in indexes)
    kind = MessageType.CON if confirmable else MessageType.NON
    return Message(kind, Code.GET, message_id, options=(_path("c"),), payload=payload)


def parse_chunk_missed(payload: bytes | None) -> list[int]:
    raw = payload or b""
    if len(raw) % 2:
        raise ValueError(f"ChunkMissed payload of {len(raw)} bytes is not a list of 16-bit indexes")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def update_done(message_id: int, token: int) -> Message:
    return Message(MessageType.CON, Code.PUT, message_id, _token(token), (_path("u"),))


def device_update_done(message_id: int, payload: bytes | None) -> Message:
    """The legacy stack's own UpdateDone after ChunkMissed: NON PUT u (§7.1)."""
    return Message(MessageType.NON, Code.PUT, message_id, options=(_path("u"),), payload=payload)


# -- OTA protocol v3 (Gen 3 and P2 from Device OS 3.0; DO communication/src/firmware_update.cpp) --------


class OtaOption(enum.IntEnum):
    """The CoAP options of OTA protocol v3, each an unsigned integer but the hash and the two flags."""

    CHUNK_INDEX = 2049
    WINDOW_SIZE = 2053
    FILE_SIZE = 2057
    FILE_SHA256 = 2061
    CHUNK_SIZE = 2065
    DISCARD_DATA = 2069
    CANCEL_UPDATE = 2073


#: The device's chunk size bounds: at least 512, a multiple of 4, and with the 14 bytes of CoAP around it no
#: larger than its largest record (`MIN_OTA_CHUNK_SIZE`, `MAX_OTA_CHUNK_SIZE`, DO `firmware_update.h`).
MIN_OTA_V3_CHUNK = 512
OTA_V3_CHUNK_OVERHEAD = 14


def uint_option(value: int) -> bytes:
    """An unsigned option value as CoAP writes it: big-endian with no leading zero bytes (0 is empty)."""
    _check_range("option value", value, 32)
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def option_uint(message: Message, number: int) -> int | None:
    """The first `number` option as an unsigned integer; None when absent. Raises `ValueError` past 4 bytes."""
    values = message.option_values(number)
    if not values:
        return None
    if len(values[0]) > 4:
        raise ValueError(f"option {number} of {len(values[0])} bytes is not a 32-bit unsigned integer")
    return int.from_bytes(values[0], "big")


def update_start(message_id: int, token: int, *, file_size: int, file_sha256: bytes, chunk_size: int) -> Message:
    """UpdateStart: CON POST S with the file size, its SHA-256 (which lets a device resume a transfer) and
    the chunk size. The Uri-Path comes first: the firmware reads the path at a fixed offset (§6.1)."""
    if file_size < 1:
        raise ValueError("an update needs a non-empty file")
    if len(file_sha256) != 32:
        raise ValueError("the file's SHA-256 is 32 bytes")
    if chunk_size < MIN_OTA_V3_CHUNK or chunk_size % 4:
        raise ValueError(f"chunk size {chunk_size}: the device takes a multiple of 4 from {MIN_OTA_V3_CHUNK}")
    options = (
        _path("S"),
        (OtaOption.FILE_SIZE, uint_option(file_size)),
        (OtaOption.FILE_SHA256, file_sha256),
        (OtaOption.CHUNK_SIZE, uint_option(chunk_size)),
    )
    return Message(MessageType.CON, Code.POST, message_id, _token(token), options)


def update_chunk(message_id: int, index: int, data: bytes) -> Message:
    """UpdateChunk: NON POST C, no token, the 1-based index as an option, the bytes as the payload."""
    if index < 1:
        raise ValueError("chunk indexes start at 1")
    if not data:
        raise ValueError("a chunk carries at least one byte")
    options = (_path("C"), (OtaOption.CHUNK_INDEX, uint_option(index)))
    return Message(MessageType.NON, Code.POST, message_id, options=options, payload=data)


def update_finish(message_id: int, token: int, *, cancel: bool = False) -> Message:
    """UpdateFinish: CON POST F; with `cancel` the device drops what it received instead of validating it."""
    options: tuple[tuple[int, bytes], ...] = (_path("F"),)
    if cancel:
        options += ((OtaOption.CANCEL_UPDATE, b""),)
    return Message(MessageType.CON, Code.POST, message_id, _token(token), options)


def update_ack(message_id: int, index: int, bitmap: bytes) -> Message:
    """The device's UpdateAck: NON POST A with the number of chunks it holds in order (``index``), and a bitmap
    of those it holds beyond: 32-bit little-endian words, bit k for chunk ``index + 1 + k``."""
    options = (_path("A"), (OtaOption.CHUNK_INDEX, uint_option(index)))
    return Message(MessageType.NON, Code.POST, message_id, options=options, payload=bitmap or None)


# -- Goodbye (§6.10) --------------------------------------------------------------------------------


class CloudDisconnectReason(enum.IntEnum):
    ERROR = 1
    USER = 2
    NETWORK_DISCONNECT = 3
    LISTENING = 4
    SYSTEM_RESET = 5
    SLEEP = 6
    UNKNOWN = 7


@dataclass(frozen=True, slots=True)
class Goodbye:
    cloud_reason: int | None = None
    reset_reason: int | None = None
    sleep_duration: int | None = None
    network_reason: int | None = None


_GOODBYE_FIELDS = ("cloud_reason", "reset_reason", "sleep_duration", "network_reason")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_goodbye(goodbye: Goodbye) -> bytes:
    flags = 0
    body = b""
    for bit, name in enumerate(_GOODBYE_FIELDS):
        value = getattr(goodbye, name)
        if value is not None:
            flags |= 1 << bit
            body += _varint(value)
    return _varint(flags) + body


def decode_goodbye(payload: bytes) -> Goodbye:
    """Unsigned LEB128 varints: flags, then the fields whose flag is set (§6.10)."""
    values: list[int] = []
    offset = 0
    while offset < len(payload):
        value = shift = 0
        while True:
            if offset >= len(payload):
                raise ValueError("Goodbye payload ends inside a varint")
            byte = payload[offset]
            offset += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if value >> 64:
                raise ValueError("Goodbye varint is longer than 64 bits")
            if not byte & 0x80:
                break
        values.append(value)
    if not values:
        return Goodbye()
    flags, fields = values[0], iter(values[1:])
    found: dict[str, int | None] = {}
    for bit, name in enumerate(_GOODBYE_FIELDS):
        if flags & (1 << bit):
            found[name] = next(fields, None)
    return Goodbye(**found)


def goodbye(message_id: int, content: Goodbye) -> Message:
    """NON POST x with a zero-length No-Response option (§6.10)."""
    return Message(
        MessageType.NON,
        Code.POST,
        message_id,
        options=(_path("x"), (Option.NO_RESPONSE, b"")),
        payload=encode_goodbye(content),
    )
