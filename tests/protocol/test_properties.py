"""Property tests: CoAP and message-builder round trips, and the fuzz invariant of both connection roles.

The fuzz invariant (after h11's): whatever a peer sends, `receive_data`, `receive_eof` and `handle_timer`
only ever queue events from `cyan.protocol.events` or raise `RemoteProtocolError`, never anything else.
Both roles are checked raw at the handshake and, once a session is up, with arbitrary bytes and with
well-framed frames carrying arbitrary plaintext, encrypted with the session's own credentials.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    Application,
    ConnectionClosed,
    ConnectionFailed,
    DeviceConnection,
    DeviceIdentified,
    Event,
    Firmware,
    HelloReceived,
    LocalProtocolError,
    Platform,
    Reason,
    RemoteProtocolError,
    ServerConnection,
    ServerHelloReceived,
    SessionStarted,
    Subscription,
    VariableType,
)
from cyan.protocol import events as events_module
from cyan.protocol import messages as m
from cyan.protocol.coap import CoapDecodeError, Code, Message, MessageType, Option, decode
from cyan.protocol.framing import (
    DEVICE_MAX_FRAME_LENGTH_NEW,
    MAX_PLAINTEXT_TO_DEVICE,
    SERVER_MAX_FRAME_LENGTH,
    FrameDecoder,
    FrameEncoder,
    SessionCredentials,
)
from cyan.protocol.handshake import (
    IDENTITY_MESSAGE_SIZE,
    SESSION_KEY_MESSAGE_SIZE,
    build_identity_message,
    build_session_key_message,
)
from cyan.testing import ScriptedRandom, drain, fixed_device_key, fixed_server_key

FUZZ = settings(max_examples=200)
T = TypeVar("T")

# ---------------------------------------------------------------------------------------------------
# CoAP round trips
# ---------------------------------------------------------------------------------------------------

_MAX_DELTA = 0xFFFF + 269


@st.composite
def options(draw: st.DrawFn) -> tuple[tuple[int, bytes], ...]:
    deltas = draw(
        st.lists(
            st.one_of(
                st.integers(0, 14), st.integers(0, 300), st.sampled_from([12, 13, 268, 269]), st.integers(0, _MAX_DELTA)
            ),
            max_size=6,
        )
    )
    result = []
    number = 0
    for delta in deltas:
        number += delta
        value = draw(st.one_of(st.binary(max_size=14), st.binary(max_size=300)))
        result.append((number, value))
    return tuple(result)


messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    code=st.integers(0, 0xFF),
    message_id=st.integers(0, 0xFFFF),
    token=st.binary(max_size=8),
    options=options(),
    payload=st.one_of(st.none(), st.binary(max_size=300)),
)


@given(messages)
def test_coap_round_trip(message: Message) -> None:
    encoded = message.encode()
    assert decode(encoded) == message
    assert decode(encoded).encode() == encoded


#: Bytes that start like a CoAP message (version 1, a legal token length) so decoding gets deep.
coap_like_bytes = st.tuples(
    st.integers(0, 3), st.integers(0, 8), st.binary(min_size=3, max_size=3), st.binary(max_size=60)
).map(lambda t: bytes((0x40 | t[0] << 4 | t[1],)) + t[2] + t[3])


@given(st.one_of(st.binary(max_size=80), coap_like_bytes))
@example(bytes.fromhex("40010001d0"))
@example(bytes.fromhex("40010001ff"))
def test_coap_decode_any_bytes(data: bytes) -> None:
    try:
        message = decode(data)
    except CoapDecodeError:
        return
    # The encoding is canonical, so whatever decodes re-encodes to the very same bytes.
    assert message.encode() == data
    assert decode(message.encode()) == message


# ---------------------------------------------------------------------------------------------------
# Message builders through the decoder
# ---------------------------------------------------------------------------------------------------


def _text_of_at_most(limit: int, *, min_size: int = 0) -> st.SearchStrategy[str]:
    """Text whose UTF-8 form is at most `limit` bytes (the builders count bytes, §10)."""
    return (
        st.text(max_size=limit)
        .map(lambda s: s.encode()[:limit].decode("utf-8", "ignore"))
        .filter(lambda s: len(s) >= min_size)
    )


names = _text_of_at_most(64, min_size=1)
message_ids = st.integers(0, 0xFFFF)
tokens = st.integers(0, 0xFF)


@given(message_ids, tokens, names, st.one_of(_text_of_at_most(622), st.binary(max_size=622)))
def test_function_call_round_trip(message_id: int, token: int, name: str, argument: str | bytes) -> None:
    message = decode(m.function_call(message_id, token, name, argument).encode())
    assert (message.type, message.code, message.message_id) == (MessageType.CON, Code.POST, message_id)
    assert message.token == bytes((token,))
    assert message.uri_path == (b"f", name.encode())
    assert message.uri_query == [argument.encode() if isinstance(argument, str) else argument]
    assert message.payload is None


@given(message_ids, tokens, names)
def test_variable_request_round_trip(message_id: int, token: int, name: str) -> None:
    message = decode(m.variable_request(message_id, token, name).encode())
    assert (message.type, message.code, message.token) == (MessageType.CON, Code.GET, bytes((token,)))
    assert message.uri_path == (b"v", name.encode())
    assert message.uri_query == []
    assert message.payload is None


event_data = st.one_of(st.none(), _text_of_at_most(622), st.binary(max_size=622))
ttls = st.one_of(st.just(m.DEFAULT_EVENT_TTL), st.integers(0, 0xFFFFFF))


def _check_event_options(message: Message, name: str, ttl: int, private: bool) -> None:
    assert message.token == b""
    assert message.uri_path == (b"E" if private else b"e", name.encode())
    max_age = message.option_values(Option.MAX_AGE)
    # Max-Age only when ttl != 60, and then always 3 bytes (§6.4); no other options.
    assert max_age == ([] if ttl == m.DEFAULT_EVENT_TTL else [ttl.to_bytes(3, "big")])
    assert {number for number, _ in message.options} <= {Option.URI_PATH, Option.MAX_AGE}


@given(message_ids, names, event_data, ttls, st.booleans())
def test_server_event_round_trip(message_id: int, name: str, data: str | bytes | None, ttl: int, private: bool) -> None:
    message = decode(m.event(message_id, name, data, ttl=ttl, private=private).encode())
    assert (message.type, message.code) == (MessageType.NON, Code.POST)
    _check_event_options(message, name, ttl, private)
    raw = data.encode() if isinstance(data, str) else data
    assert message.payload == (raw or None)


@given(message_ids, names, event_data, ttls, st.booleans(), st.booleans())
def test_device_event_round_trip(
    message_id: int, name: str, data: str | bytes | None, ttl: int, private: bool, confirmable: bool
) -> None:
    built = m.device_event(message_id, name, data, ttl=ttl, private=private, confirmable=confirmable)
    message = decode(built.encode())
    assert message.type is (MessageType.CON if confirmable else MessageType.NON)
    _check_event_options(message, name, ttl, private)
    assert message.payload == (data.encode() if isinstance(data, str) else data)


@given(message_ids, _text_of_at_most(63), st.sampled_from(m.SubscriptionScope), _text_of_at_most(24, min_size=1))
def test_subscribe_round_trip(message_id: int, prefix: str, scope: m.SubscriptionScope, device_id: str) -> None:
    if not prefix and scope is m.SubscriptionScope.ALL_DEVICES:
        with pytest.raises(ValueError, match="empty subscription prefix"):
            m.subscribe(message_id, prefix, scope, device_id)
        return
    message = decode(m.subscribe(message_id, prefix, scope, device_id).encode())
    assert (message.type, message.code, message.token) == (MessageType.CON, Code.GET, b"")
    assert message.uri_path == ((b"e", prefix.encode()) if prefix else (b"e",))
    assert message.uri_query == ([b"u"] if scope is m.SubscriptionScope.MY_DEVICES else [])
    assert message.payload == (device_id.encode() if scope is m.SubscriptionScope.DEVICE else None)


@given(message_ids, st.integers(0, 0xFF), st.binary(max_size=700))
def test_describe_post_round_trip(message_id: int, flags: int, document: bytes) -> None:
    message = decode(m.describe_post(message_id, flags, document).encode())
    assert (message.type, message.code, message.token) == (MessageType.CON, Code.POST, b"")
    assert message.uri_path == (b"d",)
    assert message.uri_query == [bytes((flags,))]
    assert message.payload == document


@given(
    message_ids,
    tokens,
    st.booleans(),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFFFFFF),
)
def test_update_begin_round_trip(
    message_id: int, token: int, fast: bool, chunk_size: int, file_size: int, store: int, address: int
) -> None:
    built = m.update_begin(
        message_id, token, fast=fast, chunk_size=chunk_size, file_size=file_size, store=store, address=address
    )
    raw = built.encode()
    message = decode(raw)
    assert (message.type, message.code, message.token) == (MessageType.CON, Code.POST, bytes((token,)))
    assert message.uri_path == (b"u",)
    assert message.payload is not None
    assert struct.unpack(">BHIBI", message.payload) == (int(fast), chunk_size, file_size, store, address)
    # The device reads the payload only at offset 8, after FF at offset 7 (§7.1).
    assert raw[7] == 0xFF
    assert len(raw) == 20


@given(
    message_ids,
    tokens,
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=600),
    st.one_of(st.none(), st.integers(0, 0xFFFF)),
)
def test_chunk_round_trip(message_id: int, token: int, crc: int, data: bytes, index: int | None) -> None:
    message = decode(m.chunk(message_id, token, crc=crc, data=data, index=index).encode())
    assert (message.type, message.code, message.token) == (MessageType.CON, Code.POST, bytes((token,)))
    assert message.uri_path == (b"c",)
    expected = [crc.to_bytes(4, "big")] + ([] if index is None else [index.to_bytes(2, "big")])
    assert message.uri_query == expected
    assert message.payload == data
    # The device reads only length nibbles here, so each option must stay under 13 bytes (§7.1).
    assert all(len(value) < 13 for _, value in message.options)


optional_varint = st.one_of(st.none(), st.integers(0, 2**64 - 1))


@given(message_ids, st.builds(m.Goodbye, optional_varint, optional_varint, optional_varint, optional_varint))
def test_goodbye_round_trip(message_id: int, goodbye: m.Goodbye) -> None:
    raw = m.goodbye(message_id, goodbye).encode()
    assert raw[4:8] == bytes.fromhex("b178d0ea")  # 'x', then No-Response with length 0 (§6.10)
    message = decode(raw)
    assert (message.type, message.code, message.token) == (MessageType.NON, Code.POST, b"")
    assert message.uri_path == (b"x",)
    assert message.option_values(Option.NO_RESPONSE) == [b""]
    assert message.payload is not None
    assert m.decode_goodbye(message.payload) == goodbye


@given(
    st.builds(
        m.Hello,
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFF).map(m.HelloFlag),
        st.integers(0, 0xFFFF),
    ),
    st.one_of(
        st.none(),
        st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF)),
    ),
    st.binary(max_size=8),
)
def test_hello_round_trip(hello: m.Hello, system: tuple[int, int, int, int] | None, trailing: bytes) -> None:
    if system is not None:
        hello = m.Hello(hello.product_id, hello.product_version, hello.flags, hello.platform_id, *system)
    message = decode(m.device_hello(1, hello).encode())
    assert message.uri_path == (b"h",)
    assert message.payload == hello.encode()
    # Bytes beyond what the parser knows are ignored (§5); 8 + 8 stays short of the 3.x fields.
    assert m.parse_hello(message.payload + trailing) == hello


@given(
    st.sampled_from(VariableType),
    st.one_of(st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text()),
)
def test_variable_values_round_trip(kind: VariableType, value: bool | int | float | str) -> None:
    try:
        raw = m.encode_variable(kind, value)
    except TypeError:
        assert (kind is VariableType.INT and not isinstance(value, int)) or (
            kind is VariableType.DOUBLE and isinstance(value, str)
        )
        return
    decoded = m.decode_variable(kind, raw)
    if kind is VariableType.BOOL:
        assert decoded is bool(value)
    elif kind is VariableType.INT:
        assert isinstance(value, int)
        assert decoded == (value + 2**31) % 2**32 - 2**31
    elif kind is VariableType.DOUBLE:
        assert not isinstance(value, str)
        number = float(value)
        if number != number:
            assert decoded == "nan"
        elif number in (float("inf"), float("-inf")):
            assert decoded == str(number)
        else:
            assert decoded == number
    else:
        assert decoded == str(value)


# ---------------------------------------------------------------------------------------------------
# The fuzz invariant: shared plumbing
# ---------------------------------------------------------------------------------------------------

NONCE = bytes(range(1, 41))
#: The Appendix A session credentials; any 40 bytes would do.
CREDENTIALS = bytes.fromhex("9d17abed065d15038d099935ec1b0d8c109574afaebcaa149e741853c0c372f721abd046c4047104")
DEVICE_ID = bytes.fromhex("0123456789abcdef01234567")
#: The server's message ids start after 0x1000 and its tokens after 0x20 (scripted below): the Hello
#: takes 0x1001 and 0x21, requests and events the next ones.
SERVER_IDS = range(0x1001, 0x100E)
SERVER_TOKENS = range(0x21, 0x2C)
DESCRIBE = b'{"f":["led"],"v":{"temp":9,"on":1,"n":2,"s":4}}'


@dataclass(frozen=True)
class Raw:
    """Bytes straight onto the wire, whatever the framing."""

    data: bytes


@dataclass(frozen=True)
class Frame:
    """A well-framed frame in the session's key and IV chain, fed in pieces of `chunk` bytes."""

    plaintext: bytes
    chunk: int


@dataclass(frozen=True)
class Wait:
    """Let time pass, then call `handle_timer`; `to_due` jumps to the connection's own timer first."""

    seconds: float
    to_due: bool


@dataclass(frozen=True)
class Eof:
    pass


Action = Raw | Frame | Wait | Eof


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _check_events(connection: ServerConnection | DeviceConnection) -> list[Event]:
    events = drain(connection)
    for event in events:
        assert isinstance(event, Event)
        assert type(event).__module__ == events_module.__name__
        if isinstance(event, ConnectionFailed):
            assert connection.closed
            assert isinstance(event.reason, Reason)
    return events


def _check_remote_error(
    connection: ServerConnection | DeviceConnection,
    error: RemoteProtocolError,
    reasons: frozenset[Reason] | None = None,
) -> None:
    """A peer's breach closes the connection and records the same step and reason as the error."""
    assert connection.closed
    assert isinstance(error.reason, Reason)
    if reasons is not None:
        assert error.reason in reasons
    assert connection.failure == ConnectionFailed(error.step, error.reason, str(error))


def _apply(
    connection: ServerConnection | DeviceConnection, encoder: FrameEncoder | None, action: Action, now: float
) -> float:
    """Run one action; returns the new time. Only `RemoteProtocolError` may come out of the connection."""
    try:
        if isinstance(action, Raw):
            connection.receive_data(action.data, now)
        elif isinstance(action, Frame):
            assert encoder is not None
            for piece in _pieces(encoder.encode(action.plaintext), action.chunk):
                if connection.closed:
                    break
                connection.receive_data(piece, now)
        elif isinstance(action, Wait):
            due = connection.get_timer()
            if action.to_due and due is not None:
                now = max(now, due)
            now += action.seconds
            connection.handle_timer(now)
        else:
            connection.receive_eof(now)
    except RemoteProtocolError as error:
        _check_remote_error(connection, error)
    _check_events(connection)
    return now


def _check_closed_for_good(connection: ServerConnection | DeviceConnection, now: float) -> None:
    assert connection.get_timer() is None
    connection.handle_timer(now + 1000)
    connection.receive_eof(now + 1000)
    assert drain(connection) == []
    with pytest.raises(LocalProtocolError):
        connection.receive_data(b"\x00", now)


def _run(
    connection: ServerConnection | DeviceConnection,
    encoder: FrameEncoder | None,
    actions: list[Action],
    now: float,
    check_output: Iterator[None] | None = None,
) -> None:
    for action in actions:
        if connection.closed:
            break
        now = _apply(connection, encoder, action, now)
        if check_output is not None:
            next(check_output)
    if connection.closed:
        _check_closed_for_good(connection, now)


def _weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """Pick among strategies with the given weights (`st.one_of` would weigh its flattened branches)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


def _waits() -> st.SearchStrategy[Action]:
    """Mostly short pauses, so replies can still meet their requests; sometimes a long one or a jump to
    the connection's next timer (request 20 s, idle 45 s, describe 3 s, handshake steps)."""
    return _weighted(
        (3, st.builds(Wait, st.floats(0, 2, allow_nan=False), st.just(False))),
        (1, st.builds(Wait, st.floats(0, 60, allow_nan=False), st.booleans())),
    )


def _eof() -> st.SearchStrategy[Action]:
    return st.just(Eof())


# ---------------------------------------------------------------------------------------------------
# Server role
# ---------------------------------------------------------------------------------------------------


@cache
def _device_public_der() -> bytes:
    return (
        fixed_device_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@cache
def _identity_message(der: bytes | None) -> bytes:
    """What a device holding the right server key sends after our scripted nonce (§3 S2)."""
    return build_identity_message(fixed_server_key().public_key(), NONCE, DEVICE_ID, der, ScriptedRandom(seed=12))


def _new_server(now: float) -> ServerConnection:
    # nonce, first message id (0x1000), token seed (0x20), then the session credentials (§3 S3).
    rng = ScriptedRandom(NONCE, b"\x10\x00", b"\x20", CREDENTIALS, seed=11)
    server = ServerConnection(fixed_server_key(), now, rng=rng)
    assert server.data_to_send() == NONCE
    return server


def _server_output_checker(server: ServerConnection) -> Iterator[None]:
    """Decrypts everything the server sends in the session and checks it is what a device can take."""
    decoder = FrameDecoder(SessionCredentials.from_bytes(CREDENTIALS), max_length=DEVICE_MAX_FRAME_LENGTH_NEW)
    while True:
        decoder.feed(server.data_to_send())
        while (plaintext := decoder.next_frame()) is not None:
            assert len(plaintext) <= MAX_PLAINTEXT_TO_DEVICE
            message = decode(plaintext)
            # The legacy stack drops the connection on any other code (§6.1) ...
            assert message.code in (Code.EMPTY, Code.GET, Code.POST, Code.PUT, Code.CONTENT)
            if message.code == Code.CONTENT:
                # ... and takes any 2.05 as the time, read at bytes 6..9 (§6.1, §6.8).
                assert message.type is MessageType.ACK
                assert len(message.token) == 1
                assert message.payload is not None
                assert len(message.payload) == 4
            elif message.code != Code.EMPTY:
                if message.uri_path[:1] in ((b"e",), (b"E",)):
                    # Events: NON and no token (§6.4).
                    assert (message.type, message.token) == (MessageType.NON, b"")
                else:
                    # Every other server request carries exactly one token byte (§6.1).
                    assert len(message.token) == 1
        yield


REQUESTS = ["variable", "variable-untyped", "function", "describe", "signal", "update", "chunk", "fast-chunk", "done"]


def _server_in_session(
    now: float, hello_flags: int, requests: list[str], *, with_hello: bool = True
) -> tuple[ServerConnection, FrameEncoder]:
    """A server past the handshake and (`with_hello`) the Hello, with the given requests outstanding."""
    server = _new_server(now)
    server.receive_data(_identity_message(_device_public_der()), now)
    (identified,) = drain(server)
    assert isinstance(identified, DeviceIdentified)
    assert identified.public_key is not None
    server.accept(identified.public_key, now)
    assert len(server.data_to_send()) == SESSION_KEY_MESSAGE_SIZE
    encoder = FrameEncoder(SessionCredentials.from_bytes(CREDENTIALS))
    if not with_hello:
        assert drain(server) == [SessionStarted()]
        return server, encoder
    hello = m.Hello(6, 0xFFFF, m.HelloFlag(hello_flags), 6)
    server.receive_data(encoder.encode(m.device_hello(0x0001, hello).encode()), now)
    server.receive_data(encoder.encode(m.describe_post(0x0002, 2, DESCRIBE).encode()), now)
    assert [type(e) for e in drain(server)][:2] == [SessionStarted, HelloReceived]
    assert server.variable_types["temp"] is VariableType.DOUBLE
    for request in requests:
        if request == "variable":
            server.read_variable("temp", now)
        elif request == "variable-untyped":
            server.read_variable("other", now)
        elif request == "function":
            server.call_function("led", "on", now)
        elif request == "describe":
            server.request_describe(now)
        elif request == "signal":
            server.signal(True, now)
        elif request == "update":
            server.begin_update(file_size=1024, now=now)
        elif request == "chunk":
            server.send_chunk(b"\x00" * 16, 0, now=now)
        elif request == "fast-chunk":
            server.send_chunk(b"\x00" * 16, 0, index=3, now=now)
        else:
            server.finish_update(now)
    server.send_event("spark/device/reset", "reboot")
    server.ping()
    return server, encoder


#: What a device may send, with the shapes the server tells apart (§6.2): paths, request tokens and
#: message ids of the server's requests, JSON and not-quite-JSON payloads.
DEVICE_PATHS = [b"h", b"e", b"E", b"t", b"d", b"c", b"u", b"x", b"f", b"v", b"s", b"k", b"", b"zz"]
PAYLOADS = [
    b'{"r":0}',
    b'{"r":"ok"}',
    DESCRIBE,
    b'{"v":{"temp":"nine","x":true,"y":1.5},"f":3}',
    b"\x00\x04\x00\x02\x00\x04\x00",
    b"[" * 3000,
    b"\x00\x00\x00\x0b",
    b"\x01",
    b"not json",
]


@st.composite
def device_messages(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(MessageType))
    code = draw(st.one_of(st.sampled_from(Code), st.integers(0, 0xFF)))
    token = draw(
        st.one_of(st.just(b""), st.sampled_from(SERVER_TOKENS).map(lambda t: bytes((t,))), st.binary(max_size=8))
    )
    message_id = draw(st.one_of(st.sampled_from(SERVER_IDS), st.integers(0, 0xFFFF)))
    opts: list[tuple[int, bytes]] = []
    if draw(st.booleans()):
        opts.append((Option.URI_PATH, draw(st.sampled_from(DEVICE_PATHS))))
        opts += [(Option.URI_PATH, segment) for segment in draw(st.lists(st.binary(max_size=70), max_size=2))]
    if draw(st.booleans()):
        opts.append((Option.MAX_AGE, draw(st.binary(max_size=4))))
    opts += [(Option.URI_QUERY, query) for query in draw(st.lists(st.binary(max_size=4), max_size=2))]
    if draw(st.booleans()):
        opts.append((Option.NO_RESPONSE, b""))
    payload = draw(st.one_of(st.none(), st.binary(max_size=64), st.sampled_from(PAYLOADS)))
    return Message(kind, code, message_id, token, tuple(opts), payload).encode()


reply_ids = st.sampled_from(SERVER_IDS)
reply_tokens = st.sampled_from(SERVER_TOKENS).map(lambda t: bytes((t,)))
reply_codes = _weighted(
    (2, st.sampled_from([Code.CHANGED, Code.CONTENT])), (1, st.sampled_from(Code)), (1, st.integers(0, 0xFF))
)
reply_payloads = st.one_of(st.none(), st.sampled_from(PAYLOADS), st.binary(max_size=8))
goodbyes = st.builds(
    m.Goodbye,
    *[st.one_of(st.none(), st.integers(0, 2**64 - 1)) for _ in range(4)],
)

#: The device's side of the message catalogue (§6.2, §7.1), answering the server's outstanding requests.
device_replies = st.one_of(
    st.builds(m.empty_ack, reply_ids),
    st.builds(Message, st.just(MessageType.RST), st.just(Code.EMPTY), reply_ids),
    st.builds(m.function_ack, reply_ids, argument_too_long=st.booleans()),
    st.builds(m.function_return, message_ids, reply_tokens, st.integers(-(2**31), 2**31 - 1)),
    st.builds(m.piggybacked_response, reply_ids, reply_tokens, reply_codes, reply_payloads),
    st.builds(m.content_response, message_ids, reply_tokens, reply_codes, reply_payloads, confirmable=st.booleans()),
    st.builds(m.signal_ack, reply_ids, reply_tokens),
    st.builds(m.update_ready, message_ids, reply_tokens, fast=st.booleans()),
    st.builds(m.chunk_received, message_ids, reply_tokens, ok=st.booleans()),
)

device_catalogue = st.one_of(
    st.builds(m.ping, message_ids),
    st.builds(m.time_request, message_ids, tokens),
    st.builds(
        m.device_event,
        message_ids,
        names,
        event_data,
        ttl=ttls,
        private=st.booleans(),
        confirmable=st.booleans(),
    ),
    st.builds(
        m.subscribe,
        message_ids,
        _text_of_at_most(63, min_size=1),
        st.sampled_from(m.SubscriptionScope),
        st.just("0a1b"),
    ),
    st.builds(m.describe_post, message_ids, st.integers(0, 7), st.sampled_from(PAYLOADS)),
    st.builds(m.chunk_missed, message_ids, st.lists(st.integers(0, 0xFFFF), max_size=5), confirmable=st.booleans()),
    st.builds(
        Message,
        st.sampled_from(MessageType),
        st.just(Code.GET),
        message_ids,
        options=st.just(((11, b"c"),)),
        payload=st.binary(min_size=1, max_size=5),
    ),
    st.builds(m.device_update_done, message_ids, reply_payloads),
    st.builds(m.goodbye, message_ids, goodbyes),
    st.builds(
        Message,
        st.sampled_from(MessageType),
        st.just(Code.POST),
        message_ids,
        options=st.just(((11, b"x"),)),
        payload=st.binary(max_size=12),
    ),
)

#: Well-formed CoAP from a device: the catalogue (replies to our requests the most), and catalogue-like
#: shapes in any combination.
well_formed_device_plaintexts = _weighted(
    (2, device_catalogue.map(Message.encode)), (2, device_replies.map(Message.encode)), (1, device_messages())
)

server_session_actions = st.lists(
    _weighted(
        (6, st.builds(Frame, well_formed_device_plaintexts, st.integers(1, 64))),
        (2, st.builds(Frame, st.binary(max_size=200), st.integers(1, 64))),
        (1, st.builds(Raw, st.binary(min_size=1, max_size=40))),
        (2, _waits()),
        (1, _eof()),
    ),
    max_size=12,
)


@FUZZ
@given(
    st.sampled_from([0x00, 0x36]),
    st.lists(st.sampled_from(REQUESTS), max_size=9),
    server_session_actions,
    st.sampled_from([True, True, True, False]),
)
@example(0x36, [], [Frame(m.describe_post(3, 2, b"[" * 3000).encode(), 4096)], True)
# The server Hello took token 0x21 and message id 0x1001, so the first request has 0x22 and 0x1002.
@example(0x36, ["describe"], [Frame(m.content_response(3, b"\x22", Code.CONTENT, b"[" * 3000).encode(), 4096)], True)
@example(
    0x36, ["done"], [Frame(m.piggybacked_response(0x1002, b"\x22", Code.CHANGED, b"[" * 3000).encode(), 4096)], True
)
@example(0x36, [], [Frame(m.device_update_done(3, b"[" * 3000).encode(), 4096)], True)
@example(0x36, ["function", "variable"], [Wait(0.0, True)], True)  # requests time out (no reply in 20 s)
@example(0x36, [], [Frame(m.device_hello(1, m.Hello(6, 0, m.HelloFlag(0), 6)).encode()[:-1], 64)], False)
@example(0x36, [], [Frame(m.time_request(1, 2).encode(), 64)], False)
def test_server_session_fuzz(hello_flags: int, requests: list[str], actions: list[Action], with_hello: bool) -> None:
    """After the handshake: the first frame must be the Hello (§5), later ones anything a device sends."""
    now = 1000.0
    server, encoder = _server_in_session(now, hello_flags, requests, with_hello=with_hello)
    output = _server_output_checker(server)
    next(output)
    _run(server, encoder, actions, now, output)


@FUZZ
@given(
    st.sampled_from([0x00, 0x36]),
    st.lists(st.sampled_from(REQUESTS), max_size=9),
    st.lists(
        _weighted(
            (8, st.builds(Frame, well_formed_device_plaintexts, st.integers(1, 64))),
            (2, _waits()),
        ),
        max_size=16,
    ),
)
# Replies that complete requests: a typed variable value (temp is a double, §6.6), one of the wrong
# size, a function's return value after its empty ACK (§6.5), a reset request.
@example(0x36, ["variable"], [Frame(m.piggybacked_response(0x1002, b"\x22", Code.CONTENT, bytes(8)).encode(), 64)])
@example(0x36, ["variable"], [Frame(m.content_response(9, b"\x22", Code.CONTENT, b"\x00").encode(), 64)])
@example(
    0x36,
    ["variable", "function"],
    [Frame(m.empty_ack(0x1003).encode(), 64), Frame(m.function_return(9, b"\x23", 11).encode(), 64)],
)
@example(0x36, ["function"], [Frame(Message(MessageType.RST, Code.EMPTY, 0x1002).encode(), 64)])
def test_server_session_takes_any_well_formed_message(
    hello_flags: int, requests: list[str], actions: list[Action]
) -> None:
    """In a session the server is a tolerant peer: no well-formed CoAP message closes it (§6.1: unknown
    requests are ignored, replies are matched by token or id and gaps accepted); only timers may."""
    now = 1000.0
    server, encoder = _server_in_session(now, hello_flags, requests)
    output = _server_output_checker(server)
    next(output)
    for action in actions:
        if server.closed:
            break
        if isinstance(action, Frame):
            server.receive_data(encoder.encode(action.plaintext), now)
        else:
            now = _apply(server, encoder, action, now)
        _check_events(server)
        next(output)
    if server.closed:
        assert server.failure is not None
        assert server.failure.reason is Reason.IDLE_TIMEOUT
    else:
        server.receive_eof(now)
        assert _check_events(server)[-1] == ConnectionClosed()


@FUZZ
@given(st.lists(st.one_of(st.builds(Raw, st.binary(min_size=1, max_size=300)), _waits(), _eof()), max_size=6))
@example([Raw(bytes(IDENTITY_MESSAGE_SIZE))])
@example([Raw(b"\xff" * IDENTITY_MESSAGE_SIZE)])
def test_server_handshake_fuzz(actions: list[Action]) -> None:
    """Raw bytes where the 256-byte RSA message belongs (§3 S2)."""
    _run(_new_server(0.0), None, actions, 0.0)


@FUZZ
@given(
    st.integers(1, IDENTITY_MESSAGE_SIZE),
    st.binary(max_size=100),
    st.sampled_from(["accept", "reject", "wait"]),
    st.lists(st.one_of(st.builds(Raw, st.binary(min_size=1, max_size=100)), _waits(), _eof()), max_size=4),
)
@example(IDENTITY_MESSAGE_SIZE, bytes(SERVER_MAX_FRAME_LENGTH + 1), "accept", [])
def test_server_fuzz_after_a_valid_identity(chunk: int, early: bytes, decision: str, actions: list[Action]) -> None:
    """A real identity message in any chunking, then bytes the device should not have sent yet."""
    server = _new_server(0.0)
    data = _identity_message(_device_public_der()) + early
    try:
        for piece in _pieces(data, chunk):
            server.receive_data(piece, 0.0)
    except RemoteProtocolError as error:
        # A device sends nothing until it has our answer (§3); more than a frame's worth is refused.
        _check_remote_error(server, error, frozenset({Reason.UNEXPECTED_MESSAGE}))
        assert [type(e) for e in _check_events(server)] == [DeviceIdentified]
        _check_closed_for_good(server, 0.0)
        return
    events = _check_events(server)
    assert isinstance(events[0], DeviceIdentified)
    try:
        if decision == "accept":
            # The early bytes are taken as frames once the session exists.
            server.accept(fixed_device_key().public_key(), 1.0)
        elif decision == "reject":
            server.reject(Reason.UNKNOWN_DEVICE)
            assert server.closed
    except RemoteProtocolError as error:
        _check_remote_error(server, error)
    _check_events(server)
    _run(server, None, actions, 1.0)


#: SubjectPublicKeyInfo with an unknown key-type OID (1.2.3.4): `cryptography` cannot load it.
UNKNOWN_KEY_TYPE_SPKI = bytes.fromhex(
    "304b300506032a0304034200046c68328eaf52413065544ae497684c80b23b4bc179d4c9ac75dabbbf3fbb4044138cbdf1f768"
    "40b91b67c53c558e48ae4f8947de04ce722f3bf85ee772e7349a"
)
#: An EC P-256 public key: valid DER, but not the RSA-1024 key a device has (§2.2).
EC_SPKI = bytes.fromhex(
    "3059301306072a8648ce3d020106082a8648ce3d030107034200046c68328eaf52413065544ae497684c80b23b4bc179d4c9ac75d"
    "abbbf3fbb4044138cbdf1f76840b91b67c53c558e48ae4f8947de04ce722f3bf85ee772e7349a"
)


@FUZZ
@given(st.binary(max_size=IDENTITY_MESSAGE_SIZE - 11 - 52))
@example(b"")
@example(UNKNOWN_KEY_TYPE_SPKI)
@example(EC_SPKI)
@example(b"\x30\x00")
def test_server_identity_with_any_public_key(der: bytes) -> None:
    """A device that knows our nonce may still present anything as its public key (§3 S2 checks)."""
    server = _new_server(0.0)
    message = build_identity_message(fixed_server_key().public_key(), NONCE, DEVICE_ID, der, ScriptedRandom(seed=3))
    try:
        server.receive_data(message, 0.0)
    except RemoteProtocolError as error:
        _check_remote_error(server, error, frozenset({Reason.MALFORMED_IDENTITY}))
        return
    (identified,) = _check_events(server)
    assert isinstance(identified, DeviceIdentified)
    assert identified.device_id == DEVICE_ID.hex()
    assert identified.public_key_der == (der or None)
    if identified.public_key is not None:
        assert identified.public_key.key_size == 1024


def test_server_identity_with_the_device_key() -> None:
    """The positive case of the property above, so it is known to reach the accept path."""
    server = _new_server(0.0)
    server.receive_data(_identity_message(_device_public_der()), 0.0)
    (identified,) = _check_events(server)
    assert isinstance(identified, DeviceIdentified)
    assert identified.public_key_der == _device_public_der()


# ---------------------------------------------------------------------------------------------------
# Device role
# ---------------------------------------------------------------------------------------------------

FIRMWARES = [
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    Firmware(version=(0, 6, 1), platform=Platform.CORE),
    Firmware(version=(1, 4, 4)),
    Firmware(version=(2, 2, 0)),
]


@cache
def _session_key_message() -> bytes:
    """S3 for the fixed device key, with our credentials (the nonce does not enter into it, §3)."""
    return build_session_key_message(
        fixed_server_key(), fixed_device_key().public_key(), CREDENTIALS, ScriptedRandom(seed=13)
    )


def _new_device(firmware: Firmware, now: float) -> DeviceConnection:
    application = Application(
        functions=["led"],
        variables={
            "temp": (VariableType.DOUBLE, 21.5),
            "on": (VariableType.BOOL, True),
            "n": (VariableType.INT, -5),
            "s": (VariableType.STRING, "text"),
        },
        subscriptions=[Subscription("")],
    )
    return DeviceConnection(
        DEVICE_ID,
        fixed_device_key(),
        fixed_server_key().public_key(),
        now,
        firmware=firmware,
        application=application,
        rng=ScriptedRandom(seed=14),
    )


def _device_output_checker(device: DeviceConnection) -> Iterator[None]:
    """Everything the device sends in the session decrypts and parses on the server."""
    decoder = FrameDecoder(SessionCredentials.from_bytes(CREDENTIALS), max_length=SERVER_MAX_FRAME_LENGTH)
    while True:
        decoder.feed(device.data_to_send())
        while (plaintext := decoder.next_frame()) is not None:
            decode(plaintext)
        yield


@dataclass
class DeviceSession:
    device: DeviceConnection
    #: Encrypts server -> device frames in step with the device's decoder.
    encoder: FrameEncoder
    output: Iterator[None]
    #: The message id of the confirmable publish made once connected (None before the server Hello).
    published: int | None


def _device_in_session(firmware: Firmware, now: float, *, with_hello: bool = True) -> DeviceSession:
    """A device past the handshake and (`with_hello`) the server Hello, with a confirmable publish out."""
    device = _new_device(firmware, now)
    device.receive_data(NONCE, now)
    assert len(device.data_to_send()) == IDENTITY_MESSAGE_SIZE
    device.receive_data(_session_key_message(), now)
    output = _device_output_checker(device)
    next(output)  # the device Hello
    encoder = FrameEncoder(SessionCredentials.from_bytes(CREDENTIALS))
    if not with_hello:
        assert drain(device) == [SessionStarted()]
        return DeviceSession(device, encoder, output, None)
    device.receive_data(encoder.encode(m.server_hello(0x1000, 0x20).encode()), now)
    assert drain(device)[:2] == [SessionStarted(), ServerHelloReceived()]
    published = device.publish("app/acked", "1", now, with_ack=True)
    assert published in DEVICE_IDS
    next(output)  # what the firmware sends by itself after the Hello (§5.1), and the publish
    return DeviceSession(device, encoder, output, published)


@st.composite
def firmware_shaped(draw: st.DrawFn) -> bytes:
    """Header, token, a 1-byte first Uri-Path at 4 + TKL, then anything: what the firmware's fixed-offset
    parser looks at (§6.1)."""
    kind = draw(st.integers(0, 3))
    tkl = draw(st.sampled_from([0, 1, 1, 1, 2, 8]))
    code = draw(st.one_of(st.sampled_from(Code), st.integers(0, 0xFF)))
    head = bytes((0x40 | kind << 4 | tkl, code)) + draw(st.binary(min_size=2 + tkl, max_size=2 + tkl))
    path = draw(st.sampled_from([b"h", b"f", b"v", b"d", b"e", b"E", b"s", b"k", b"u", b"c", b"t", b"x"]))
    return head + b"\xb1" + path + draw(st.binary(max_size=40))


variable_names = st.sampled_from(["temp", "on", "n", "s", "unknown", "t" * 64])
#: The device's own message ids: the salt of CREDENTIALS seeds them at 0x21ab (legacy, big-endian) or
#: 0xab21 (new stack, little-endian) (§3 S3 checks), and a few dozen messages follow.
DEVICE_IDS = [*range(0x21AC, 0x21D0), *range(0xAB22, 0xAB46)]
server_requests = st.one_of(
    st.builds(
        m.function_call,
        message_ids,
        tokens,
        st.sampled_from(["led", "nope", "l" * 64]),
        st.one_of(st.binary(max_size=20), st.binary(min_size=200, max_size=622)),
    ),
    st.builds(m.variable_request, message_ids, tokens, variable_names),
    st.builds(
        m.describe_request,
        message_ids,
        tokens,
        st.one_of(st.none(), st.sampled_from([1, 2, 3, 4, 7]), st.integers(0, 0xFF)),
    ),
    st.builds(m.signal, message_ids, tokens, st.booleans()),
    st.builds(
        Message,
        st.sampled_from([MessageType.CON, MessageType.NON]),
        st.just(Code.PUT),
        message_ids,
        st.binary(min_size=1, max_size=1),
        st.just(((Option.URI_PATH, b"k"), (Option.URI_QUERY, b"\x01"))),
    ),
)
other_server_messages = st.one_of(
    st.builds(m.time_response, message_ids, st.binary(min_size=1, max_size=1), st.integers(0, 0xFFFFFFFF)),
    st.builds(m.empty_ack, message_ids),
    st.builds(m.ping, message_ids),
    st.builds(m.server_hello, message_ids, tokens),
    st.builds(m.update_done, message_ids, tokens),
    st.builds(m.chunk, message_ids, tokens, crc=st.integers(0, 0xFFFFFFFF), data=st.binary(max_size=64)),
    st.builds(
        m.update_begin,
        message_ids,
        tokens,
        fast=st.booleans(),
        chunk_size=st.integers(0, 0xFFFF),
        file_size=st.integers(0, 0xFFFFFFFF),
    ),
    messages,
)

server_messages = _weighted(
    (4, server_requests),
    # The same requests with a token of another length: the new stack closes (§6.1).
    (2, st.builds(dataclasses.replace, server_requests, token=st.one_of(st.just(b""), st.binary(max_size=8)))),
    (2, st.builds(m.event, message_ids, names, event_data, ttl=ttls, private=st.booleans())),
    (1, st.builds(m.empty_ack, st.sampled_from(DEVICE_IDS))),
    (4, other_server_messages),
).map(lambda message: message.encode())


server_plaintexts = st.one_of(server_messages, firmware_shaped(), st.binary(max_size=200), st.binary(max_size=800))

device_session_actions = st.lists(
    _weighted(
        (6, st.builds(Frame, server_plaintexts, st.integers(1, 64))),
        (1, st.builds(Raw, st.binary(min_size=1, max_size=40))),
        (2, _waits()),
        (1, _eof()),
    ),
    max_size=12,
)


@FUZZ
@given(st.sampled_from(FIRMWARES), device_session_actions, st.sampled_from([True, True, True, False]))
# A function call that ends right after its path: the name at offset 7 is missing.
@example(DEVICE_OS_3_1_0, [Frame(bytes.fromhex("4102000101b166"), 64)], True)
# Legacy, no token: the firmware still reads the name at offset 7, here the 'l' (0x6c) of "led", as a
# header claiming 12 bytes that are not there.
@example(DEVICE_OS_0_6_1, [Frame(bytes.fromhex("40020001b166036c656440"), 64)], True)
# An event with an option other than Max-Age after its name: the device loses the data (§6.4).
@example(DEVICE_OS_3_1_0, [Frame(bytes.fromhex("50020001b1450161d1ff7aff6869"), 64)], True)
# Before the server Hello: a request, and the legacy stack's reaction to a code it does not know (§6.1).
@example(DEVICE_OS_3_1_0, [Frame(m.variable_request(1, 2, "temp").encode(), 64)], False)
@example(DEVICE_OS_0_6_1, [Frame(m.chunk_received(1, b"\x01", ok=True).encode(), 64)], False)
def test_device_session_fuzz(firmware: Firmware, actions: list[Action], with_hello: bool) -> None:
    """After the handshake, before and after the server Hello (§5)."""
    now = 1000.0
    session = _device_in_session(firmware, now, with_hello=with_hello)
    _run(session.device, session.encoder, actions, now, session.output)


@FUZZ
@given(
    st.sampled_from(FIRMWARES),
    st.lists(_weighted((6, st.builds(Frame, server_messages, st.integers(1, 64))), (2, _waits())), max_size=16),
    st.booleans(),
)
def test_device_session_any_server_message(firmware: Firmware, actions: list[Action], ack_publish: bool) -> None:
    """Well-formed CoAP the firmware may still refuse (a missing token, a code the legacy stack does not
    know, §6.1): `RemoteProtocolError` then, and nothing else."""
    now = 1000.0
    session = _device_in_session(firmware, now)
    if ack_publish:
        assert session.published is not None
        actions = [Frame(m.empty_ack(session.published).encode(), 64), *actions]
    _run(session.device, session.encoder, actions, now, session.output)


@FUZZ
@given(
    st.sampled_from(FIRMWARES),
    st.lists(st.one_of(st.builds(Raw, st.binary(min_size=1, max_size=450)), _waits(), _eof()), max_size=6),
)
def test_device_handshake_fuzz(firmware: Firmware, actions: list[Action]) -> None:
    """Raw bytes where the nonce and the 384-byte session key belong (§3 S1, S3)."""
    _run(_new_device(firmware, 0.0), None, actions, 0.0)


@FUZZ
@given(st.sampled_from(FIRMWARES), st.integers(0, SESSION_KEY_MESSAGE_SIZE - 1), st.integers(0, 7))
def test_device_rejects_a_tampered_session_key(firmware: Firmware, position: int, bit: int) -> None:
    """Any single flipped bit in S3 fails decryption or the signature check (§3 S3 checks)."""
    device = _new_device(firmware, 0.0)
    device.receive_data(NONCE, 0.0)
    tampered = bytearray(_session_key_message())
    tampered[position] ^= 1 << bit
    with pytest.raises(RemoteProtocolError) as caught:
        device.receive_data(bytes(tampered), 0.0)
    _check_remote_error(device, caught.value, frozenset({Reason.DECRYPT_FAILED, Reason.SIGNATURE_INVALID}))
