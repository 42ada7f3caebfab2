"""Unit tests of the CoAP codec, the message catalogue and the session framing (protocol.md §4–§7, §A).

Expected bytes are protocol.md's examples, or written out by hand from its byte layouts; none is computed
with the code under test.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import padding as symmetric_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from cyan.protocol import messages as m
from cyan.protocol.coap import CoapDecodeError, Code, Message, MessageType, Option, decode, format_code
from cyan.protocol.framing import (
    DEVICE_MAX_FRAME_LENGTH_NEW,
    MAX_CIPHERTEXT_TO_DEVICE,
    SERVER_MAX_FRAME_LENGTH,
    FrameDecoder,
    FrameEncoder,
    FramingError,
    SessionCredentials,
)

# ---------------------------------------------------------------------------------------------------
# Message builders, byte for byte
# ---------------------------------------------------------------------------------------------------

#: The 3.1.0 Hello payload of §5: product 3, version FFFF, reserved, flags 36, platform 3, id length 0,
#: system version 3103, max message 960, max binary 102400, OTA chunk 512.
HELLO_3_1_0 = "0003ffff00360003" + "0000" + "0c1f" + "03c0" + "00019000" + "0200"
#: §A.6: the 512-byte chunk (00..ff twice) whose CRC the appendix lists.
CHUNK_DATA = bytes(range(256)) * 2

BUILDERS = [
    # §5 and §A.6
    pytest.param(lambda: m.server_hello(0x1234, 0x01), "5102123401b168", id="server-hello"),
    pytest.param(
        lambda: m.device_hello(0xAB22, m.Hello(0xFFFF, 0xFFFF, m.HelloFlag(0x16), 6)),
        "5002ab22b168ffffffffff00160006",
        id="device-hello-2.x",
    ),
    pytest.param(
        lambda: m.device_hello(0x0042, m.Hello(3, 0xFFFF, m.HelloFlag(0x36), 3, 3103, 960, 102400, 512)),
        "50020042b168ff" + HELLO_3_1_0,
        id="device-hello-3.1.0",
    ),
    # §6.1, §6.8, §6.10, §A.6
    pytest.param(lambda: m.ping(0xAB24), "4000ab24", id="ping"),
    pytest.param(lambda: m.empty_ack(0xAB24), "6000ab24", id="empty-ack"),
    pytest.param(lambda: m.time_request(0xAB23, 0x07), "4101ab2307b174", id="time-request"),
    pytest.param(lambda: m.time_response(0xAB23, b"\x07", 0x6553F100), "6145ab2307ff6553f100", id="time-response"),
    pytest.param(
        lambda: m.time_response(0xAB23, b"\x07", 0x1_0000_0001), "6145ab2307ff00000001", id="time-response-wraps"
    ),
    # §6.4 and §A.6
    pytest.param(
        lambda: m.event(0x002A, "temperature", "21.5"),
        "5002002ab1450b74656d7065726174757265ff32312e35",
        id="event-private",
    ),
    pytest.param(
        lambda: m.device_event(0x002A, "temperature", b"21.5"),
        "5002002ab1450b74656d7065726174757265ff32312e35",
        id="device-event-private",
    ),
    pytest.param(
        lambda: m.event(0x002B, "some/longer/event-name", "x", ttl=3600, private=False),
        "5002002bb1650d09736f6d652f6c6f6e6765722f6576656e742d6e616d6533000e10ff78",
        id="event-22-char-name-max-age",
    ),
    pytest.param(
        lambda: m.device_event(0x002B, "some/longer/event-name", "x", ttl=3600, private=False),
        "5002002bb1650d09736f6d652f6c6f6e6765722f6576656e742d6e616d6533000e10ff78",
        id="device-event-22-char-name-max-age",
    ),
    pytest.param(lambda: m.event(0x0001, "a", None, ttl=0), "50020001b1450161" + "33000000", id="event-ttl-0"),
    pytest.param(lambda: m.event(0x0001, "a", ""), "50020001b1450161", id="event-empty-data-no-marker"),
    pytest.param(lambda: m.device_event(0x0001, "a", ""), "50020001b1450161ff", id="device-event-empty-data-bare-ff"),
    pytest.param(lambda: m.device_event(0x0001, "a", None), "50020001b1450161", id="device-event-no-data"),
    pytest.param(
        lambda: m.device_event(0x0001, "a", "1", confirmable=True), "40020001b1450161ff31", id="device-event-with-ack"
    ),
    pytest.param(lambda: m.subscribe(0x0031, "spark"), "40010031b16505737061726b4175", id="subscribe-my-devices"),
    pytest.param(
        lambda: m.subscribe(0x0031, "spark", m.SubscriptionScope.ALL_DEVICES),
        "40010031b16505737061726b",
        id="subscribe-firehose",
    ),
    pytest.param(
        lambda: m.subscribe(0x0031, "", m.SubscriptionScope.DEVICE, "0123"),
        "40010031b165ff30313233",
        id="subscribe-one-device",
    ),
    pytest.param(lambda: m.subscribe(0x0031, ""), "40010031b1654175", id="subscribe-empty-filter-u"),
    # §6.5 and §A.6
    pytest.param(lambda: m.function_call(0x1235, 0x02, "led", "on"), "4102123502b166036c6564426f6e", id="function"),
    pytest.param(lambda: m.function_call(0x1235, 0x02, "led", b""), "4102123502b166036c656440", id="function-no-arg"),
    pytest.param(lambda: m.function_ack(0x1235), "60001235", id="function-ack"),
    pytest.param(lambda: m.function_ack(0x1235, argument_too_long=True), "60801235", id="function-ack-4.00"),
    pytest.param(lambda: m.function_return(0x3CD1, b"\x02", 11), "51443cd102ff0000000b", id="function-return"),
    pytest.param(lambda: m.function_return(0x3CD1, b"\x02", -1), "51443cd102ffffffffff", id="function-return-neg"),
    # §6.6 and §A.6
    pytest.param(lambda: m.variable_request(0x1236, 0x03, "temp"), "4101123603b1760474656d70", id="variable"),
    pytest.param(
        lambda: m.piggybacked_response(0x1236, b"\x03", Code.CONTENT, bytes.fromhex("0000000000803540")),
        "6145123603ff0000000000803540",
        id="variable-piggybacked",
    ),
    pytest.param(
        lambda: m.content_response(0x3000, b"\x03", Code.CONTENT, b"none"),
        "5145300003ff6e6f6e65",
        id="variable-separate",
    ),
    pytest.param(
        lambda: m.content_response(0x3000, b"\x03", Code.NOT_FOUND, None), "5184300003", id="variable-not-found"
    ),
    # §6.7
    pytest.param(lambda: m.describe_request(0x1239, 0x06), "4101123906b164", id="describe"),
    pytest.param(lambda: m.describe_request(0x1239, 0x06, 3), "4101123906b1644103", id="describe-flags"),
    pytest.param(
        lambda: m.describe_post(0x0010, 2, b'{"f":[]}'),
        "40020010b1644102ff" + b'{"f":[]}'.hex(),
        id="describe-post",
    ),
    pytest.param(
        lambda: m.content_response(0x3001, b"\x06", Code.CONTENT, b"{}", confirmable=True),
        "4145300106ff7b7d",
        id="describe-reply-con",
    ),
    # §6.9
    pytest.param(lambda: m.signal(0x1240, 0x08, True), "4103124008b1734101", id="signal-on"),
    pytest.param(lambda: m.signal(0x1240, 0x08, False), "4103124008b1734100", id="signal-off"),
    pytest.param(lambda: m.signal_ack(0x3CD2, b"\x08"), "61443cd208", id="signal-ack"),
    # §7, §7.3 and §A.6
    pytest.param(
        lambda: m.update_begin(0x1237, 0x04, fast=True, chunk_size=512, file_size=4196),
        "4102123704b175ff010200000010640000000000",
        id="update-begin-fast",
    ),
    pytest.param(
        lambda: m.update_begin(0x0010, 0x07, fast=False, chunk_size=512, file_size=0x10000),
        "4102001007b175ff000200000100000000000000",
        id="update-begin-7.3",
    ),
    pytest.param(lambda: m.update_ready(0xAB30, b"\x07", fast=False), "5144ab3007ff00", id="update-ready"),
    pytest.param(lambda: m.update_ready(0xAB30, b"\x07", fast=True), "5144ab3007ff01", id="update-ready-fast"),
    pytest.param(
        lambda: m.chunk(0x0011, 0x08, crc=0x01020304, data=b"ab"), "4102001108b1634401020304ff6162", id="chunk"
    ),
    pytest.param(lambda: m.chunk_received(0xAB31, b"\x08", ok=True), "5144ab3108", id="chunk-received"),
    pytest.param(lambda: m.chunk_received(0xAB31, b"\x08", ok=False), "5180ab3108", id="chunk-received-bad"),
    pytest.param(
        lambda: m.chunk_missed(0xAB32, [3, 0x102], confirmable=False), "5001ab32b163ff00030102", id="chunk-missed"
    ),
    pytest.param(lambda: m.chunk_missed(0xAB32, [3], confirmable=True), "4001ab32b163ff0003", id="chunk-missed-legacy"),
    pytest.param(lambda: m.update_done(0x0091, 0x09), "4103009109b175", id="update-done"),
    pytest.param(
        lambda: m.piggybacked_response(0x0091, b"\x09", Code.CHANGED, b'{"r":0}'),
        "6144009109ff7b2272223a307d",
        id="update-done-ack",
    ),
    pytest.param(lambda: m.device_update_done(0xAB33, None), "5003ab33b175", id="device-update-done"),
    pytest.param(lambda: m.device_update_done(0xAB33, b"{}"), "5003ab33b175ff7b7d", id="device-update-done-json"),
    # §6.10
    pytest.param(lambda: m.goodbye(0x3CD3, m.Goodbye(cloud_reason=2)), "50023cd3b178d0eaff0102", id="goodbye"),
    pytest.param(lambda: m.goodbye(0x3CD3, m.Goodbye()), "50023cd3b178d0eaff00", id="goodbye-empty"),
]


@pytest.mark.parametrize(("build", "expected"), BUILDERS)
def test_builder_bytes(build: Callable[[], Message], expected: str) -> None:
    message = build()
    assert message.encode().hex() == expected
    assert decode(bytes.fromhex(expected)) == message


def test_hello_3_1_0_constant_is_the_spec_text() -> None:
    spec = "00 03 | ff ff | 00 | 36 | 00 03 | 00 00 | 0c 1f | 03 c0 | 00 01 90 00 | 02 00"
    assert bytes.fromhex(spec.replace("|", "")).hex() == HELLO_3_1_0
    assert len(bytes.fromhex(HELLO_3_1_0)) == 20


def test_chunk_frame_of_appendix_a() -> None:
    """§A.6 chunk #7 and the §A.4 arithmetic: 528 CoAP bytes (fast) / 525 (non-fast)."""
    assert zlib.crc32(CHUNK_DATA) == 0x1C613576
    fast = m.chunk(0x1238, 0x05, crc=zlib.crc32(CHUNK_DATA), data=CHUNK_DATA, index=7).encode()
    assert fast[:16].hex() == "4102123805b163441c613576020007ff"
    assert fast[16:] == CHUNK_DATA
    assert len(fast) == 528
    slow = m.chunk(0x1238, 0x05, crc=zlib.crc32(CHUNK_DATA), data=CHUNK_DATA).encode()
    assert slow[:13].hex() == "4102123805b163441c613576ff"
    assert len(slow) == 525
    credentials = SessionCredentials.from_bytes(bytes(40))
    assert len(FrameEncoder(credentials).encode(fast)) == 546
    assert len(FrameEncoder(credentials).encode(slow)) == 530
    # Both fit what a device takes in one frame (§4).
    assert MAX_CIPHERTEXT_TO_DEVICE >= 546 - 2


def test_function_call_argument_lengths_use_the_extended_forms() -> None:
    """§6.5: ``4L arg`` (< 13), ``4D (L-13) arg`` (< 269), ``4E (L-269)_BE16 arg``."""
    for length, header in [(12, "4c"), (13, "4d00"), (268, "4dff"), (269, "4e0000"), (622, "4e0161")]:
        encoded = m.function_call(1, 1, "f", b"a" * length).encode()
        assert encoded[:9].hex() == "4102000101b1660166"
        assert encoded[9:].hex() == header + "61" * length


def test_event_name_of_64_bytes_fits_one_option() -> None:
    name = "n" * 64
    encoded = m.event(1, name, None).encode()
    assert encoded.hex() == "50020001b1450d33" + name.encode().hex()


def test_update_begin_payload_sits_at_offset_8() -> None:
    """§7.1: the device uses the payload only if byte 7 is FF and the message is ≥ 20 bytes."""
    encoded = m.update_begin(1, 2, fast=True, chunk_size=0x0102, file_size=0x03040506, store=128, address=0x0708090A)
    raw = encoded.encode()
    assert raw[7] == 0xFF
    assert len(raw) == 20
    assert raw[8:].hex() == "01" + "0102" + "03040506" + "80" + "0708090a"


# ---------------------------------------------------------------------------------------------------
# Builder limits
# ---------------------------------------------------------------------------------------------------

LIMITS = [
    pytest.param(lambda: m.event(1, "n" * 65, None), r"at most 64", id="event-name"),
    pytest.param(lambda: m.device_event(1, "n" * 65, None), r"at most 64", id="device-event-name"),
    pytest.param(lambda: m.event(1, "é" * 33, None), r"66 bytes; devices take at most 64", id="event-name-bytes"),
    pytest.param(lambda: m.event(1, "", None), r"event name is empty", id="event-name-empty"),
    pytest.param(lambda: m.device_event(1, "", "x"), r"event name is empty", id="device-event-name-empty"),
    pytest.param(lambda: m.event(1, "n", "d" * 623), r"623 bytes; devices take at most 622", id="event-data"),
    pytest.param(lambda: m.device_event(1, "n", b"d" * 623), r"at most 622", id="device-event-data"),
    pytest.param(lambda: m.event(1, "n", None, ttl=-1), r"0\.\.16777215", id="ttl-negative"),
    pytest.param(lambda: m.event(1, "n", None, ttl=0x1000000), r"0\.\.16777215", id="ttl-too-big"),
    pytest.param(lambda: m.device_event(1, "n", None, ttl=0x1000000), r"0\.\.16777215", id="device-ttl-too-big"),
    pytest.param(lambda: m.function_call(1, 1, "f", "a" * 623), r"at most 622", id="function-arg"),
    pytest.param(lambda: m.function_call(1, 1, "f", b"a" * 623), r"at most 622", id="function-arg-bytes"),
    pytest.param(lambda: m.function_call(1, 1, "", "x"), r"function name is empty", id="function-name-empty"),
    pytest.param(lambda: m.function_call(1, 1, "f" * 65, "x"), r"at most 64", id="function-name"),
    pytest.param(lambda: m.variable_request(1, 1, ""), r"variable name is empty", id="variable-name-empty"),
    pytest.param(lambda: m.variable_request(1, 1, "v" * 65), r"at most 64", id="variable-name"),
    pytest.param(lambda: m.server_hello(1, 256), r"token 256 .*1 byte", id="token-hello"),
    pytest.param(lambda: m.server_hello(1, -1), r"token -1 .*1 byte", id="token-negative"),
    pytest.param(lambda: m.function_call(1, 256, "f", ""), r"1 byte", id="token-function"),
    pytest.param(lambda: m.variable_request(1, 256, "v"), r"1 byte", id="token-variable"),
    pytest.param(lambda: m.time_request(1, 256), r"1 byte", id="token-time"),
    pytest.param(lambda: m.describe_request(1, 256), r"1 byte", id="token-describe"),
    pytest.param(lambda: m.signal(1, 256, True), r"1 byte", id="token-signal"),
    pytest.param(
        lambda: m.update_begin(1, 256, fast=False, chunk_size=512, file_size=1), r"1 byte", id="token-update-begin"
    ),
    pytest.param(lambda: m.chunk(1, 256, crc=0, data=b""), r"1 byte", id="token-chunk"),
    pytest.param(lambda: m.update_done(1, 256), r"1 byte", id="token-update-done"),
    pytest.param(lambda: m.time_response(1, b"", 0), r"1-byte token", id="time-response-no-token"),
    pytest.param(lambda: m.time_response(1, b"\x01\x02", 0), r"1-byte token", id="time-response-long-token"),
    pytest.param(lambda: m.subscribe(1, "p" * 64), r"64 bytes; devices send at most 63", id="subscription-prefix"),
    pytest.param(
        lambda: m.subscribe(1, "spark", m.SubscriptionScope.DEVICE), r"needs the device id", id="subscription-no-id"
    ),
    pytest.param(
        lambda: m.subscribe(1, "spark", m.SubscriptionScope.DEVICE, ""),
        r"needs the device id",
        id="subscription-empty-id",
    ),
]


@pytest.mark.parametrize(("build", "message"), LIMITS)
def test_builder_limits(build: Callable[[], Message], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


AT_THE_LIMIT = [
    pytest.param(lambda: m.event(1, "n" * 64, "d" * 622, ttl=0xFFFFFF), id="event"),
    pytest.param(lambda: m.device_event(1, "é" * 32, b"d" * 622, ttl=0), id="device-event"),
    pytest.param(lambda: m.function_call(1, 255, "f" * 64, "a" * 622), id="function"),
    pytest.param(lambda: m.variable_request(1, 0, "v" * 64), id="variable"),
    pytest.param(lambda: m.subscribe(1, "p" * 63), id="subscribe"),
    pytest.param(lambda: m.time_response(1, b"\xff", 0), id="time-response"),
]


@pytest.mark.parametrize("build", AT_THE_LIMIT)
def test_builders_accept_values_at_the_limit(build: Callable[[], Message]) -> None:
    message = build()
    assert decode(message.encode()) == message


def test_limit_constants_match_the_spec() -> None:
    """§10 limits summary, new stack."""
    assert (m.MAX_EVENT_NAME, m.MAX_EVENT_DATA, m.MAX_NAME) == (64, 622, 64)
    assert (m.MAX_FUNCTION_ARGUMENT, m.MAX_SUBSCRIPTION_PREFIX, m.DEFAULT_EVENT_TTL) == (622, 63, 60)


# ---------------------------------------------------------------------------------------------------
# coap.decode and Message
# ---------------------------------------------------------------------------------------------------

MALFORMED = [
    pytest.param("", "shorter than the 4-byte", id="empty"),
    pytest.param("40", "shorter than the 4-byte", id="1-byte"),
    pytest.param("400000", "shorter than the 4-byte", id="3-byte"),
    pytest.param("00000000", "version 0", id="version-0"),
    pytest.param("80000000", "version 2", id="version-2"),
    pytest.param("c0000000", "version 3", id="version-3"),
    *[
        pytest.param(f"4{tkl:x}000000" + "00" * tkl, f"token length {tkl} is reserved", id=f"tkl-{tkl}")
        for tkl in range(9, 16)
    ],
    pytest.param("42000001aa", "inside its 2-byte token", id="truncated-token"),
    pytest.param("48000001" + "01020304050607", "inside its 8-byte token", id="truncated-8-byte-token"),
    pytest.param("40010001b36162", "claims 3 bytes but only 2 remain", id="option-past-end"),
    pytest.param("40010001" + "0d00" + "61" * 12, "claims 13 bytes but only 12 remain", id="option-13-past-end"),
    pytest.param("40010001" + "0e0000" + "61" * 268, "claims 269 bytes", id="option-14-past-end"),
    pytest.param("40010001d0", "inside an extended option delta", id="delta-13-truncated"),
    pytest.param("40010001e000", "inside an extended option delta", id="delta-14-truncated"),
    pytest.param("40010001e0", "inside an extended option delta", id="delta-14-missing"),
    pytest.param("400100010d", "inside an extended option length", id="length-13-truncated"),
    pytest.param("400100010e01", "inside an extended option length", id="length-14-truncated"),
    pytest.param("40010001dd00", "inside an extended option length", id="delta-ok-length-13-truncated"),
    pytest.param("40010001f0", "delta nibble 15", id="delta-nibble-15"),
    pytest.param("40010001f1", "delta nibble 15", id="delta-nibble-15-length-1"),
    pytest.param("400100010f", "length nibble 15", id="length-nibble-15"),
    pytest.param("40010001b1650f", "length nibble 15", id="length-nibble-15-second-option"),
]


@pytest.mark.parametrize(("hex_data", "reason"), MALFORMED)
def test_decode_rejects_malformed(hex_data: str, reason: str) -> None:
    with pytest.raises(CoapDecodeError, match=reason):
        decode(bytes.fromhex(hex_data))


def test_coap_decode_error_is_a_value_error() -> None:
    assert issubclass(CoapDecodeError, ValueError)


@pytest.mark.parametrize(
    ("length", "header"),
    [(0, "b0"), (12, "bc"), (13, "bd00"), (268, "bdff"), (269, "be0000"), (1000, "be02db"), (65804, "beffff")],
)
def test_option_length_extensions_round_trip(length: int, header: str) -> None:
    message = Message(MessageType.CON, Code.POST, 7, options=((Option.URI_PATH, b"z" * length),))
    encoded = message.encode()
    assert encoded[4 : 4 + len(header) // 2].hex() == header
    assert len(encoded) == 4 + len(header) // 2 + length
    assert decode(encoded) == message


@pytest.mark.parametrize(
    ("number", "header"),
    [(12, "c0"), (13, "d000"), (258, "d0f5"), (268, "d0ff"), (269, "e00000"), (1000, "e002db"), (65804, "e0ffff")],
)
def test_option_delta_extensions_round_trip(number: int, header: str) -> None:
    message = Message(MessageType.NON, Code.POST, 7, options=((number, b""),), payload=b"p")
    encoded = message.encode()
    assert encoded[4:].hex() == header + "ff70"
    assert decode(encoded) == message


def test_option_deltas_accumulate() -> None:
    message = Message(
        MessageType.CON,
        Code.GET,
        1,
        options=((11, b"a"), (11, b"b"), (14, b"\x0e\x10"), (15, b"q"), (258, b""), (258 + 300, b"x")),
    )
    encoded = message.encode()
    assert encoded[4:].hex() == "b161" + "0162" + "320e10" + "1171" + "d0e6" + "e1001f78"
    decoded = decode(encoded)
    assert decoded == message
    assert decoded.uri_path == (b"a", b"b")
    assert decoded.uri_query == [b"q"]
    assert decoded.option_values(Option.MAX_AGE) == [b"\x0e\x10"]
    assert decoded.option_values(Option.NO_RESPONSE) == [b""]


def test_payload_none_and_empty_are_distinct() -> None:
    without = Message(MessageType.NON, Code.POST, 1, options=((11, b"e"),))
    bare = Message(MessageType.NON, Code.POST, 1, options=((11, b"e"),), payload=b"")
    assert without.encode().hex() == "50020001b165"
    assert bare.encode().hex() == "50020001b165ff"
    assert decode(bytes.fromhex("50020001b165")).payload is None
    assert decode(bytes.fromhex("50020001b165ff")).payload == b""
    assert decode(bytes.fromhex("50020001b165ff00ff")).payload == b"\x00\xff"
    assert decode(bytes.fromhex("40000001ff")).payload == b""


def test_decode_reads_the_header_fields() -> None:
    message = decode(bytes.fromhex("78451234" + "0102030405060708" + "ff090a"))
    assert message.type is MessageType.RST
    assert message.code == Code.CONTENT
    assert message.message_id == 0x1234
    assert message.token == bytes.fromhex("0102030405060708")
    assert message.options == ()
    assert message.payload == b"\x09\x0a"


def test_is_empty() -> None:
    assert m.ping(1).is_empty
    assert m.empty_ack(1).is_empty
    assert not Message(MessageType.ACK, Code.EMPTY, 1, payload=b"").is_empty
    assert not Message(MessageType.ACK, Code.EMPTY, 1, options=((11, b"h"),)).is_empty
    assert not m.function_ack(1, argument_too_long=True).is_empty


BAD_MESSAGES = [
    pytest.param({"message_id": -1}, "message id -1", id="id-negative"),
    pytest.param({"message_id": 0x10000}, "message id 65536", id="id-too-big"),
    pytest.param({"code": -1}, "code -1", id="code-negative"),
    pytest.param({"code": 256}, "code 256", id="code-too-big"),
    pytest.param({"token": b"\x00" * 9}, "token of 9 bytes", id="token-9"),
    pytest.param({"options": ((15, b""), (11, b""))}, "option 11 after option 15", id="options-decreasing"),
    pytest.param({"options": ((-1, b""),)}, "option -1 after option 0", id="option-negative"),
    pytest.param({"options": ((11, b"\x00" * 65805),)}, "65805 bytes is too long", id="option-value-too-long"),
    pytest.param({"options": ((11, b""), (11 + 65805, b""))}, "delta", id="option-delta-too-big"),
]


@pytest.mark.parametrize(("fields", "message"), BAD_MESSAGES)
def test_message_rejects_bad_fields(fields: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"type": MessageType.CON, "code": Code.GET, "message_id": 1, **fields}
    with pytest.raises(ValueError, match=message):
        Message(**arguments)  # type: ignore[arg-type]


def test_message_accepts_the_extremes() -> None:
    message = Message(
        MessageType.RST,
        0xFF,
        0xFFFF,
        b"\xff" * 8,
        ((0, b""), (0, b""), (65804, b"\x00" * 65804)),
        b"",
    )
    assert decode(message.encode()) == message


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x00, "0.00"),
        (0x01, "0.01"),
        (0x02, "0.02"),
        (0x03, "0.03"),
        (0x44, "2.04"),
        (0x45, "2.05"),
        (0x80, "4.00"),
        (0x84, "4.04"),
        (0xA0, "5.00"),
        (0xA3, "5.03"),
        (0xFF, "7.31"),
    ],
)
def test_format_code(code: int, text: str) -> None:
    assert format_code(code) == text


def test_code_values_are_class_and_detail() -> None:
    for code in Code:
        klass, detail = format_code(code).split(".")
        assert code == int(klass) << 5 | int(detail)


# ---------------------------------------------------------------------------------------------------
# Payload codecs
# ---------------------------------------------------------------------------------------------------

VT = m.VariableType

ENCODED_VARIABLES = [
    pytest.param(VT.BOOL, True, "01", id="bool-true"),
    pytest.param(VT.BOOL, False, "00", id="bool-false"),
    pytest.param(VT.INT, 0, "00000000", id="int-0"),
    pytest.param(VT.INT, 11, "0000000b", id="int-11"),
    pytest.param(VT.INT, -1, "ffffffff", id="int-minus-1"),
    pytest.param(VT.INT, -2, "fffffffe", id="int-minus-2"),
    pytest.param(VT.INT, 2**31 - 1, "7fffffff", id="int-max"),
    pytest.param(VT.INT, -(2**31), "80000000", id="int-min"),
    pytest.param(VT.INT, 2**31, "80000000", id="int-wraps-up"),
    pytest.param(VT.INT, 2**32 + 5, "00000005", id="int-wraps-32"),
    pytest.param(VT.INT, -(2**31) - 1, "7fffffff", id="int-wraps-down"),
    pytest.param(VT.DOUBLE, 21.5, "0000000000803540", id="double-little-endian"),
    pytest.param(VT.DOUBLE, 1, "000000000000f03f", id="double-from-int"),
    pytest.param(VT.DOUBLE, -0.0, "0000000000000080", id="double-negative-zero"),
    pytest.param(VT.DOUBLE, math.inf, "000000000000f07f", id="double-inf"),
    pytest.param(VT.STRING, "none", "6e6f6e65", id="string"),
    pytest.param(VT.STRING, "é", "c3a9", id="string-utf8"),
    pytest.param(VT.STRING, b"\x00\xff", "00ff", id="string-bytes"),
    pytest.param(VT.STRING, "", "", id="string-empty"),
]


@pytest.mark.parametrize(("kind", "value", "expected"), ENCODED_VARIABLES)
def test_encode_variable(kind: m.VariableType, value: bool | int | float | str | bytes, expected: str) -> None:
    assert m.encode_variable(kind, value).hex() == expected


DECODED_VARIABLES = [
    pytest.param(VT.BOOL, "00", False, id="bool-false"),
    pytest.param(VT.BOOL, "01", True, id="bool-true"),
    pytest.param(VT.BOOL, "02", True, id="bool-nonzero"),
    pytest.param(VT.INT, "0000000b", 11, id="int"),
    pytest.param(VT.INT, "ffffffff", -1, id="int-negative"),
    pytest.param(VT.INT, "80000000", -(2**31), id="int-min"),
    pytest.param(VT.INT, "7fffffff", 2**31 - 1, id="int-max"),
    pytest.param(VT.DOUBLE, "0000000000803540", 21.5, id="double"),
    pytest.param(VT.DOUBLE, "000000000000f0bf", -1.0, id="double-negative"),
    pytest.param(VT.DOUBLE, "000000000000f07f", "inf", id="double-inf"),
    pytest.param(VT.DOUBLE, "000000000000f0ff", "-inf", id="double-minus-inf"),
    pytest.param(VT.DOUBLE, "000000000000f87f", "nan", id="double-nan"),
    pytest.param(VT.STRING, "6e6f6e65", "none", id="string"),
    pytest.param(VT.STRING, "", "", id="string-empty"),
    pytest.param(VT.STRING, "61ff62", "a\ufffdb", id="string-invalid-utf8"),
]


@pytest.mark.parametrize(("kind", "raw", "expected"), DECODED_VARIABLES)
def test_decode_variable(kind: m.VariableType, raw: str, expected: bool | int | float | str) -> None:
    value = m.decode_variable(kind, bytes.fromhex(raw))
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("kind", "size", "message"),
    [
        (VT.BOOL, 0, "1 byte, got 0"),
        (VT.BOOL, 2, "1 byte, got 2"),
        (VT.INT, 3, "4 bytes, got 3"),
        (VT.INT, 5, "4 bytes, got 5"),
        (VT.DOUBLE, 4, "8 bytes, got 4"),
        (VT.DOUBLE, 9, "8 bytes, got 9"),
    ],
)
def test_decode_variable_size_errors(kind: m.VariableType, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        m.decode_variable(kind, bytes(size))


def test_encode_variable_type_errors() -> None:
    with pytest.raises(TypeError, match="int value"):
        m.encode_variable(VT.INT, "1")
    with pytest.raises(TypeError, match="int value"):
        m.encode_variable(VT.INT, 1.5)
    with pytest.raises(TypeError, match="number"):
        m.encode_variable(VT.DOUBLE, "1.0")
    with pytest.raises(TypeError, match="number"):
        m.encode_variable(VT.DOUBLE, b"\x00" * 8)


def test_variable_type_codes_and_api_names() -> None:
    """Type codes of §6.6 and the names the cloud API uses."""
    assert {kind.value: kind.api_name for kind in VT} == {1: "bool", 2: "int32", 4: "string", 9: "double"}


def test_double_matches_struct_little_endian() -> None:
    for value in (0.1, -123.456, 1e300, 5e-324):
        assert m.encode_variable(VT.DOUBLE, value) == struct.pack("<d", value)
        assert m.decode_variable(VT.DOUBLE, struct.pack("<d", value)) == value


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_int_variable_round_trip(value: int) -> None:
    assert m.decode_variable(VT.INT, m.encode_variable(VT.INT, value)) == value


@given(st.integers())
def test_int_variable_wraps_like_int32(value: int) -> None:
    decoded = m.decode_variable(VT.INT, m.encode_variable(VT.INT, value))
    assert isinstance(decoded, int)
    assert -(2**31) <= decoded < 2**31
    assert (decoded - value) % 2**32 == 0


GOODBYES = [
    pytest.param(m.Goodbye(), "00", id="none"),
    pytest.param(m.Goodbye(cloud_reason=2), "0102", id="cloud"),
    pytest.param(m.Goodbye(reset_reason=140), "028c01", id="reset-two-bytes"),
    pytest.param(m.Goodbye(sleep_duration=300), "04ac02", id="sleep-two-bytes"),
    pytest.param(m.Goodbye(network_reason=3), "0803", id="network"),
    pytest.param(m.Goodbye(cloud_reason=1, reset_reason=140), "03018c01", id="cloud-reset"),
    pytest.param(m.Goodbye(6, 20, 3600, 5), "0f0614901c05", id="all"),
    pytest.param(m.Goodbye(sleep_duration=2**35), "04808080808001", id="sleep-six-bytes"),
    pytest.param(m.Goodbye(sleep_duration=2**64 - 1), "04ffffffffffffffffff01", id="sleep-64-bit"),
    pytest.param(m.Goodbye(sleep_duration=0), "0400", id="sleep-zero"),
]


@pytest.mark.parametrize(("goodbye", "expected"), GOODBYES)
def test_goodbye_varints(goodbye: m.Goodbye, expected: str) -> None:
    assert m.encode_goodbye(goodbye).hex() == expected
    assert m.decode_goodbye(bytes.fromhex(expected)) == goodbye


@pytest.mark.parametrize("flags", range(16))
def test_goodbye_every_flag_combination(flags: int) -> None:
    values = [m.CloudDisconnectReason.SLEEP, 130, 86400, 7]
    fields = [values[bit] if flags & (1 << bit) else None for bit in range(4)]
    goodbye = m.Goodbye(*fields)
    encoded = m.encode_goodbye(goodbye)
    assert encoded[0] == flags
    assert m.decode_goodbye(encoded) == goodbye
    message = decode(m.goodbye(0x0101, goodbye).encode())
    assert message.payload == encoded


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param("", m.Goodbye(), id="empty-payload"),
        pytest.param("0301", m.Goodbye(cloud_reason=1, reset_reason=None), id="missing-field"),
        pytest.param("01820000", m.Goodbye(cloud_reason=2), id="non-minimal-and-trailing"),
        pytest.param("10", m.Goodbye(), id="unknown-flag"),
    ],
)
def test_goodbye_decoding_tolerates(payload: str, expected: m.Goodbye) -> None:
    assert m.decode_goodbye(bytes.fromhex(payload)) == expected


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param("80", "ends inside a varint", id="truncated-flags"),
        pytest.param("0180", "ends inside a varint", id="truncated-field"),
        pytest.param("04ffffffffffffffffff", "ends inside a varint", id="truncated-long"),
        pytest.param("04" + "80" * 10 + "01", "longer than 64 bits", id="too-long"),
    ],
)
def test_goodbye_decoding_errors(payload: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        m.decode_goodbye(bytes.fromhex(payload))


def test_goodbye_reason_values() -> None:
    """§6.10 cloud-disconnect reasons."""
    assert [int(r) for r in m.CloudDisconnectReason] == [1, 2, 3, 4, 5, 6, 7]
    assert m.CloudDisconnectReason.SLEEP.name == "SLEEP"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(None, []), (b"", []), (b"\x00\x03", [3]), (b"\x00\x03\x01\x02\xff\xff", [3, 258, 65535])],
)
def test_parse_chunk_missed(payload: bytes | None, expected: list[int]) -> None:
    assert m.parse_chunk_missed(payload) == expected


@pytest.mark.parametrize("size", [1, 3, 5])
def test_parse_chunk_missed_odd_length(size: int) -> None:
    with pytest.raises(ValueError, match=f"{size} bytes is not a list of 16-bit indexes"):
        m.parse_chunk_missed(bytes(size))


def test_chunk_missed_round_trip() -> None:
    indexes = [0, 1, 40, 511, 65535]
    message = decode(m.chunk_missed(9, indexes, confirmable=False).encode())
    assert m.parse_chunk_missed(message.payload) == indexes


# -- Hello payloads (§5) ----------------------------------------------------------------------------


def test_parse_hello_3_1_0() -> None:
    hello = m.parse_hello(bytes.fromhex(HELLO_3_1_0))
    assert hello == m.Hello(
        product_id=3,
        product_version=0xFFFF,
        flags=m.HelloFlag(0x36),
        platform_id=3,
        system_version=3103,
        max_message_size=960,
        max_binary_size=102400,
        ota_chunk_size=512,
    )
    assert hello.flags == (
        m.HelloFlag.DIAGNOSTICS
        | m.HelloFlag.IMMEDIATE_UPDATES
        | m.HelloFlag.GOODBYE
        | m.HelloFlag.DEVICE_INITIATED_DESCRIBE
    )
    assert hello.encode().hex() == HELLO_3_1_0


def test_parse_hello_legacy_8_bytes() -> None:
    hello = m.parse_hello(bytes.fromhex("0006ffff00010006"))
    assert hello == m.Hello(6, 0xFFFF, m.HelloFlag.OTA_SUCCEEDED, 6)
    assert (hello.system_version, hello.max_message_size, hello.max_binary_size, hello.ota_chunk_size) == (None,) * 4
    assert hello.encode().hex() == "0006ffff00010006"


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param("00", id="1-byte"),
        pytest.param("000c" + "ab" * 10, id="device-id-extension-cut-short"),
        pytest.param("000c" + "ab" * 12, id="device-id-extension"),
        pytest.param("ffff" + "00" * 10, id="absurd-id-length"),
    ],
)
def test_parse_hello_ignores_bytes_it_cannot_use(extra: str) -> None:
    hello = m.parse_hello(bytes.fromhex("0008000500040008" + extra))
    assert hello == m.Hello(8, 5, m.HelloFlag.IMMEDIATE_UPDATES, 8)


def test_parse_hello_with_device_id_extension_then_system_info() -> None:
    payload = bytes.fromhex("0006ffff00360006" + "000c" + "ab" * 12 + "0fa6" + "03c0" + "00a00000" + "0200")
    hello = m.parse_hello(payload)
    assert (hello.system_version, hello.max_message_size, hello.max_binary_size, hello.ota_chunk_size) == (
        4006,
        960,
        0x00A00000,
        512,
    )


def test_parse_hello_ignores_trailing_bytes_after_3_x_fields() -> None:
    hello = m.parse_hello(bytes.fromhex(HELLO_3_1_0 + "deadbeef"))
    assert hello == m.parse_hello(bytes.fromhex(HELLO_3_1_0))


def test_parse_hello_keeps_unknown_flag_bits() -> None:
    hello = m.parse_hello(bytes.fromhex("00060000" + "00" + "ff" + "0006"))
    assert int(hello.flags) == 0xFF


@pytest.mark.parametrize("size", range(8))
def test_parse_hello_too_short(size: int) -> None:
    with pytest.raises(ValueError, match=f"Hello payload of {size} bytes; it has at least 8"):
        m.parse_hello(bytes(size))


# -- Describe (§6.7) --------------------------------------------------------------------------------


def test_decode_describe() -> None:
    document = m.decode_describe(b'{"f":["fn1"],"v":{"var1":2,"var2":9},"p":6,"m":[]}')
    assert document == {"f": ["fn1"], "v": {"var1": 2, "var2": 9}, "p": 6, "m": []}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(b"", "not JSON", id="empty"),
        pytest.param(b"{", "not JSON", id="truncated"),
        pytest.param(b"\xff{}", "not JSON", id="not-utf8"),
        pytest.param(b"[1]", "JSON list, not an object", id="list"),
        pytest.param(b"3", "JSON int, not an object", id="number"),
        pytest.param(b"[" * 5000, "not JSON", id="deeply-nested"),
        pytest.param(b'{"a":' * 3000, "not JSON", id="deeply-nested-objects"),
        pytest.param(b'{"v":' + b"1" * 5000 + b"}", "not JSON", id="integer-over-digit-limit"),
    ],
)
def test_decode_describe_errors(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        m.decode_describe(payload)


def test_describe_flags() -> None:
    assert [int(f) for f in m.DescribeFlags] == [1, 2, 4]


# ---------------------------------------------------------------------------------------------------
# Framing (§4, §A.6)
# ---------------------------------------------------------------------------------------------------

APPENDIX_CREDENTIALS = SessionCredentials.from_bytes(
    bytes.fromhex("9d17abed065d15038d099935ec1b0d8c109574afaebcaa149e741853c0c372f721abd046c4047104")
)
#: (plaintext, frame) per direction, in the order they were sent.
APPENDIX_DEVICE_FRAMES = [
    ("5002ab22b168ffffffffff00160006", "0010648c439aabcd7e16106e732d0f7041ed"),
    ("4101ab2307b174", "0010ff266673baf36a6558fe03416d45ae55"),
    ("4000ab24", "0010dc1f42e7d3508d30ad9023ad3ce311e8"),
]
APPENDIX_SERVER_FRAMES = [
    ("5102123401b168", "00100130ffaa5beeea337649925cb9331b26"),
    ("6145ab2307ff6553f100", "00109ad09197dec750161a02e6cf6280712d"),
    ("6000ab24", "0010b159b7faa2bb02b126dc394efec1d6f8"),
]
DIRECTIONS = [
    pytest.param(APPENDIX_DEVICE_FRAMES, id="device-to-server"),
    pytest.param(APPENDIX_SERVER_FRAMES, id="server-to-device"),
]


def _reference_frame(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """A frame made with `cryptography`'s own PKCS#7 padder and CBC mode."""
    padder = symmetric_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return len(ciphertext).to_bytes(2, "big") + ciphertext


def _reference_ciphertext(key: bytes, iv: bytes, padded: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def _decode_all(decoder: FrameDecoder, data: bytes, chunk: int | None) -> list[bytes]:
    plaintexts = []
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        decoder.feed(piece)
        while (plaintext := decoder.next_frame()) is not None:
            plaintexts.append(plaintext)
    return plaintexts


@pytest.mark.parametrize("frames", DIRECTIONS)
def test_appendix_frames_encode_exactly(frames: list[tuple[str, str]]) -> None:
    encoder = FrameEncoder(APPENDIX_CREDENTIALS)
    for plaintext, frame in frames:
        assert encoder.encode(bytes.fromhex(plaintext)).hex() == frame


@pytest.mark.parametrize("frames", DIRECTIONS)
@pytest.mark.parametrize("chunk", [None, 1, 5, 18, 19], ids=["whole", "1", "5", "18", "19"])
def test_appendix_frames_decode_exactly(frames: list[tuple[str, str]], chunk: int | None) -> None:
    decoder = FrameDecoder(APPENDIX_CREDENTIALS, max_length=SERVER_MAX_FRAME_LENGTH)
    wire = b"".join(bytes.fromhex(frame) for _, frame in frames)
    assert _decode_all(decoder, wire, chunk) == [bytes.fromhex(plaintext) for plaintext, _ in frames]
    assert decoder.buffered == 0


def test_appendix_iv_chain() -> None:
    """§A.2 #3: a direction's second frame uses the first 16 ciphertext bytes of its first frame as IV,
    and each direction starts from credentials[16..31]."""
    key, iv = APPENDIX_CREDENTIALS.key, APPENDIX_CREDENTIALS.iv
    assert iv.hex() == "109574afaebcaa149e741853c0c372f7"
    for frames in (APPENDIX_DEVICE_FRAMES, APPENDIX_SERVER_FRAMES):
        register = iv
        for plaintext, frame in frames:
            assert _reference_frame(key, register, bytes.fromhex(plaintext)).hex() == frame
            register = bytes.fromhex(frame)[2:18]


def test_appendix_plaintexts_are_the_builders_output() -> None:
    built = [
        m.device_hello(0xAB22, m.Hello(0xFFFF, 0xFFFF, m.HelloFlag(0x16), 6)),
        m.time_request(0xAB23, 0x07),
        m.ping(0xAB24),
        m.server_hello(0x1234, 0x01),
        m.time_response(0xAB23, b"\x07", 0x6553F100),
        m.empty_ack(0xAB24),
    ]
    expected = [plaintext for plaintext, _ in APPENDIX_DEVICE_FRAMES + APPENDIX_SERVER_FRAMES]
    assert [message.encode().hex() for message in built] == expected


def test_decoder_keeps_the_start_of_the_next_frame() -> None:
    (_, first), (second_plaintext, second) = APPENDIX_SERVER_FRAMES[:2]
    wire = bytes.fromhex(first) + bytes.fromhex(second)
    decoder = FrameDecoder(APPENDIX_CREDENTIALS, max_length=DEVICE_MAX_FRAME_LENGTH_NEW)
    decoder.feed(wire[:23])
    assert decoder.next_frame() == bytes.fromhex("5102123401b168")
    assert decoder.next_frame() is None
    assert decoder.buffered == 5
    decoder.feed(wire[23:])
    assert decoder.next_frame() == bytes.fromhex(second_plaintext)
    assert decoder.next_frame() is None
    assert decoder.buffered == 0


def test_decoder_waits_for_the_length() -> None:
    decoder = FrameDecoder(APPENDIX_CREDENTIALS, max_length=SERVER_MAX_FRAME_LENGTH)
    assert decoder.next_frame() is None
    decoder.feed(b"\x00")
    assert decoder.next_frame() is None
    decoder.feed(b"\x10" + b"\x00" * 15)
    assert decoder.next_frame() is None
    assert decoder.buffered == 17


def test_every_length_matches_cbc() -> None:
    """Plaintexts of 0..100 bytes and OTA chunk sizes (§A.4) in one chain: PKCS#7 always adds 1..16 bytes and
    the IV rule holds."""
    key, iv = bytes(range(16)), bytes(range(16, 32))
    credentials = SessionCredentials(key, iv, bytes(8))
    encoder = FrameEncoder(credentials)
    decoder = FrameDecoder(credentials, max_length=SERVER_MAX_FRAME_LENGTH)
    register = iv
    for length in [*range(101), 127, 128, 129, 453, 525, 528, 767]:
        plaintext = bytes((length + i) & 0xFF for i in range(length))
        frame = encoder.encode(plaintext)
        assert frame == _reference_frame(key, register, plaintext)
        assert int.from_bytes(frame[:2], "big") == (length // 16 + 1) * 16
        register = frame[2:18]
        decoder.feed(frame)
        assert decoder.next_frame() == plaintext


@given(
    key=st.binary(min_size=16, max_size=16),
    iv=st.binary(min_size=16, max_size=16),
    plaintexts=st.lists(st.binary(max_size=100), max_size=6),
    chunk=st.integers(min_value=1, max_value=40),
)
def test_framing_matches_cryptography_cbc(key: bytes, iv: bytes, plaintexts: list[bytes], chunk: int) -> None:
    credentials = SessionCredentials(key, iv, bytes(8))
    encoder = FrameEncoder(credentials)
    register = iv
    reference = bytearray()
    for plaintext in plaintexts:
        frame = _reference_frame(key, register, plaintext)
        register = frame[2:18]
        assert encoder.encode(plaintext) == frame
        reference += frame
    decoder = FrameDecoder(credentials, max_length=SERVER_MAX_FRAME_LENGTH)
    assert _decode_all(decoder, bytes(reference), chunk) == plaintexts


@pytest.mark.parametrize(
    ("length", "max_length"),
    [
        (0, SERVER_MAX_FRAME_LENGTH),
        (1, SERVER_MAX_FRAME_LENGTH),
        (15, SERVER_MAX_FRAME_LENGTH),
        (17, SERVER_MAX_FRAME_LENGTH),
        (4095, SERVER_MAX_FRAME_LENGTH),
        (4112, SERVER_MAX_FRAME_LENGTH),
        (0xFFFF, SERVER_MAX_FRAME_LENGTH),
        (0xFFF0, SERVER_MAX_FRAME_LENGTH),
        (782, DEVICE_MAX_FRAME_LENGTH_NEW),
        (784, DEVICE_MAX_FRAME_LENGTH_NEW),
    ],
)
def test_bad_frame_length_is_refused_before_the_body(length: int, max_length: int) -> None:
    decoder = FrameDecoder(APPENDIX_CREDENTIALS, max_length=max_length)
    decoder.feed(length.to_bytes(2, "big"))
    with pytest.raises(FramingError, match=f"frame length {length} ") as caught:
        decoder.next_frame()
    assert caught.value.reason == "bad_frame_length"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("length", "max_length"), [(16, 16), (768, DEVICE_MAX_FRAME_LENGTH_NEW), (4096, 4096)])
def test_largest_frame_length_is_accepted(length: int, max_length: int) -> None:
    decoder = FrameDecoder(APPENDIX_CREDENTIALS, max_length=max_length)
    decoder.feed(length.to_bytes(2, "big"))
    assert decoder.next_frame() is None  # waits for the body instead of refusing


def _frame_with_padding(credentials: SessionCredentials, body: bytes) -> bytes:
    """A frame whose decrypted block(s) are exactly `body` (whatever the padding bytes say)."""
    assert len(body) % 16 == 0
    ciphertext = _reference_ciphertext(credentials.key, credentials.iv, body)
    return len(ciphertext).to_bytes(2, "big") + ciphertext


BAD_PADDINGS = [
    pytest.param(b"abcdefghijklmno" + b"\x00", False, id="pad-0"),
    pytest.param(b"abcdefghijklmno" + b"\x11", False, id="pad-17"),
    pytest.param(b"abcdefghijklmno" + b"\xff", False, id="pad-255"),
    pytest.param(b"abcdefghijklmn" + b"\x01\x02", True, id="pad-2-inconsistent"),
    pytest.param(b"a" + b"\x10" * 15, True, id="pad-16-inconsistent"),
    pytest.param(b"abcdefghijklmnop" + b"abcdefghijklm" + b"\x07\x03\x03", True, id="two-blocks"),
]


@pytest.mark.parametrize(("body", "lenient_ok"), BAD_PADDINGS)
def test_bad_padding(body: bytes, lenient_ok: bool) -> None:
    credentials = APPENDIX_CREDENTIALS
    frame = _frame_with_padding(credentials, body)
    strict = FrameDecoder(credentials, max_length=SERVER_MAX_FRAME_LENGTH)
    strict.feed(frame)
    with pytest.raises(FramingError, match="PKCS#7") as caught:
        strict.next_frame()
    assert caught.value.reason == "decrypt_failed"

    lenient = FrameDecoder(credentials, max_length=SERVER_MAX_FRAME_LENGTH, strict_padding=False)
    lenient.feed(frame)
    if lenient_ok:
        # The new stack just drops `last byte` bytes (§4).
        assert lenient.next_frame() == body[: -body[-1]]
    else:
        with pytest.raises(FramingError) as caught:
            lenient.next_frame()
        assert caught.value.reason == "decrypt_failed"


def test_lenient_decoder_takes_valid_padding_too() -> None:
    decoder = FrameDecoder(APPENDIX_CREDENTIALS, max_length=SERVER_MAX_FRAME_LENGTH, strict_padding=False)
    wire = b"".join(bytes.fromhex(frame) for _, frame in APPENDIX_DEVICE_FRAMES)
    assert _decode_all(decoder, wire, None) == [bytes.fromhex(p) for p, _ in APPENDIX_DEVICE_FRAMES]


def test_iv_advances_even_when_a_frame_fails() -> None:
    """§4: the receiver takes CT[0:16] before decrypting, whether or not the padding is good."""
    credentials = APPENDIX_CREDENTIALS
    bad = _frame_with_padding(credentials, b"x" * 15 + b"\x00")
    good = _reference_frame(credentials.key, bad[2:18], b"after")
    decoder = FrameDecoder(credentials, max_length=SERVER_MAX_FRAME_LENGTH)
    decoder.feed(bad + good)
    with pytest.raises(FramingError):
        decoder.next_frame()
    assert decoder.next_frame() == b"after"


def test_directions_are_independent() -> None:
    """§A.2 #3: the server's first frame uses the initial IV however many frames the device sent."""
    encoder = FrameEncoder(APPENDIX_CREDENTIALS)
    first = encoder.encode(b"anything")
    assert first == FrameEncoder(APPENDIX_CREDENTIALS).encode(b"anything")
    assert encoder.encode(b"anything") != first


def test_session_credentials_split() -> None:
    raw = bytes(range(40))
    credentials = SessionCredentials.from_bytes(raw)
    assert credentials.key == raw[:16]
    assert credentials.iv == raw[16:32]
    assert credentials.salt == raw[32:]
    assert credentials.to_bytes() == raw


@pytest.mark.parametrize("size", [0, 39, 41])
def test_session_credentials_size(size: int) -> None:
    with pytest.raises(ValueError, match=f"40 bytes, got {size}"):
        SessionCredentials.from_bytes(bytes(size))


def test_session_credentials_repr_hides_the_key() -> None:
    credentials = APPENDIX_CREDENTIALS
    for text in (repr(credentials), str(credentials), f"{credentials}", repr([credentials])):
        assert "<40 bytes>" in text
        for secret in (credentials.key, credentials.iv, credentials.salt):
            assert secret.hex() not in text
            assert repr(secret) not in text
            assert repr(secret)[2:10] not in text
