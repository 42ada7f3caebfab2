"""Server role and device role over an in-memory wire: every message kind and every failure reason.

Each conversation is run whole, one byte at a time, and in odd-sized pieces (`CHUNKINGS`).
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    Application,
    ChunkAcknowledged,
    ChunksMissed,
    ConnectionClosed,
    ConnectionFailed,
    DescribeReceived,
    DeviceConfig,
    DeviceConnection,
    DeviceIdentified,
    EventPublished,
    EventReceived,
    Firmware,
    FunctionCalled,
    FunctionFailed,
    FunctionReturned,
    Goodbye,
    GoodbyeReceived,
    HelloReceived,
    LocalProtocolError,
    MessageIgnored,
    PingAcknowledged,
    PingReceived,
    PublishAcknowledged,
    Reason,
    RemoteProtocolError,
    RequestTimedOut,
    ServerConfig,
    ServerConnection,
    ServerHelloReceived,
    SessionStarted,
    SignalAcknowledged,
    SignalReceived,
    State,
    Step,
    Subscription,
    SubscriptionRequested,
    SubscriptionScope,
    TimeReceived,
    TimeRequested,
    UpdateDoneAcknowledged,
    UpdateFinishedByDevice,
    UpdateReady,
    UpdateRefused,
    VariableRead,
    VariableReadFailed,
    VariableRequested,
    VariableType,
)
from cyan.protocol import messages as m
from cyan.protocol.coap import Code, Message, MessageType
from cyan.protocol.handshake import _raw_public_encrypt
from cyan.testing import ConnectionPair, ScriptedRandom, drain, fixed_device_key, fixed_server_key

DEVICE_ID = bytes.fromhex("0123456789abcdef01234567")
CHUNKINGS = [None, 1, 5]
NOW = 1_700_000_000.0


def _application() -> Application:
    return Application(
        functions=["setArg", "led"],
        variables={
            "counter": (VariableType.INT, -7),
            "temp": (VariableType.DOUBLE, 21.5),
            "name": (VariableType.STRING, "vdev"),
            "on": (VariableType.BOOL, True),
        },
        subscriptions=[Subscription("vdev/ping"), Subscription("all/", SubscriptionScope.ALL_DEVICES)],
    )


def _pair(
    firmware: Firmware = DEVICE_OS_3_1_0,
    *,
    server_key: rsa.RSAPrivateKey | None = None,
    device_holds: rsa.RSAPublicKey | None = None,
    config: ServerConfig | None = None,
    device_config: DeviceConfig | None = None,
    seed: int = 0,
) -> ConnectionPair:
    key = server_key or fixed_server_key()
    server = ServerConnection(key, NOW, config=config, rng=ScriptedRandom(seed=seed))
    device = DeviceConnection(
        DEVICE_ID,
        fixed_device_key(),
        device_holds or key.public_key(),
        NOW,
        firmware=firmware,
        application=_application(),
        config=device_config,
        rng=ScriptedRandom(seed=seed + 1),
    )
    return ConnectionPair(server, device)


def _connect(firmware: Firmware = DEVICE_OS_3_1_0, chunk: int | None = None, **kwargs: object) -> ConnectionPair:
    pair = _pair(firmware, **kwargs)  # type: ignore[arg-type]
    pair.pump(NOW, chunk=chunk)
    (identified,) = pair.take_server_events()
    assert isinstance(identified, DeviceIdentified)
    assert identified.public_key is not None
    pair.server.accept(identified.public_key, NOW)
    pair.pump(NOW, chunk=chunk)
    assert pair.server.state is State.CONNECTED
    assert pair.device.state is State.CONNECTED
    return pair


def _established() -> ConnectionPair:
    pair = _connect()
    pair.take_server_events()
    pair.take_device_events()
    return pair


# -- the happy path, both personalities ---------------------------------------------------------


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_new_stack_session_start(chunk: int | None) -> None:
    pair = _pair(DEVICE_OS_3_1_0)
    pair.pump(NOW, chunk=chunk)
    (identified,) = pair.take_server_events()
    assert isinstance(identified, DeviceIdentified)
    assert identified.device_id == DEVICE_ID.hex()
    assert identified.public_key is not None
    assert identified.public_key.public_numbers() == fixed_device_key().public_key().public_numbers()
    pair.server.accept(identified.public_key, NOW)
    pair.pump(NOW, chunk=chunk)
    events = pair.take_server_events()
    assert [type(e) for e in events[:3]] == [SessionStarted, HelloReceived, DescribeReceived]
    hello = events[1]
    assert isinstance(hello, HelloReceived)
    assert hello.hello.system_version == 3103
    assert events[2:] == [
        DescribeReceived(1, b'{"p":6,"m":[]}', {"p": 6, "m": []}),
        EventPublished("particle/device/updates/enabled", b"true", 60, True, False),
        EventPublished("particle/device/updates/forced", b"false", 60, True, False),
        TimeRequested(int(NOW)),
        DescribeReceived(
            2,
            b'{"f":["setArg","led"],"v":{"counter":2,"temp":9,"name":4,"on":1}}',
            {"f": ["setArg", "led"], "v": {"counter": 2, "temp": 9, "name": 4, "on": 1}},
        ),
        SubscriptionRequested("particle", SubscriptionScope.MY_DEVICES),
        SubscriptionRequested("spark", SubscriptionScope.MY_DEVICES),
        SubscriptionRequested("vdev/ping", SubscriptionScope.MY_DEVICES),
        SubscriptionRequested("all/", SubscriptionScope.ALL_DEVICES),
    ]
    assert pair.take_device_events() == [SessionStarted(), ServerHelloReceived(), TimeReceived(int(NOW))]
    # A device that describes itself is never asked to (§13.1 #6).
    assert pair.server.get_timer() == NOW + pair.server.config.idle_timeout


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_legacy_session_start_and_describe_request(chunk: int | None) -> None:
    pair = _connect(DEVICE_OS_0_6_1, chunk)
    events = pair.take_server_events()
    assert [type(e) for e in events] == [
        SessionStarted,
        HelloReceived,
        EventPublished,
        EventPublished,
        SubscriptionRequested,
        TimeRequested,
        SubscriptionRequested,
        SubscriptionRequested,
    ]
    assert events[2] == EventPublished("spark/hardware/max_binary", b"262144", 60, True, False)
    assert events[4] == SubscriptionRequested("spark", SubscriptionScope.ALL_DEVICES)
    # The legacy stack never describes itself: the server asks after describe_delay (§13.1 #6).
    assert pair.server.get_timer() == NOW + 3.0
    pair.server.handle_timer(NOW + 3.0)
    pair.pump(NOW + 3.0, chunk=chunk)
    (describe,) = pair.take_server_events()
    assert isinstance(describe, DescribeReceived)
    assert describe.request_id == 1
    assert describe.document == {
        "f": ["setArg", "led"],
        "v": {"counter": 2, "temp": 9, "name": 4, "on": 1},
        "p": 6,
        "m": [],
    }


@pytest.mark.parametrize("firmware", [DEVICE_OS_3_1_0, DEVICE_OS_0_6_1, Firmware((1, 4, 4)), Firmware((2, 1, 0))])
def test_variables_of_every_type(firmware: Firmware) -> None:
    pair = _connect(firmware)
    pair.take_server_events()
    pair.server.request_describe(NOW, flags=2)
    pair.pump(NOW)
    pair.take_server_events()
    ids = {name: pair.server.read_variable(name, NOW) for name in ("counter", "temp", "name", "on")}
    pair.pump(NOW)
    assert pair.take_server_events() == [
        VariableRead(ids["counter"], "counter", b"\xff\xff\xff\xf9", -7, VariableType.INT),
        VariableRead(ids["temp"], "temp", bytes.fromhex("0000000000803540"), 21.5, VariableType.DOUBLE),
        VariableRead(ids["name"], "name", b"vdev", "vdev", VariableType.STRING),
        VariableRead(ids["on"], "on", b"\x01", True, VariableType.BOOL),
    ]
    assert [e for e in pair.take_device_events() if isinstance(e, VariableRequested)] == [
        VariableRequested(name, True) for name in ("counter", "temp", "name", "on")
    ]


def test_unknown_variable_new_stack_is_not_found() -> None:
    pair = _connect(DEVICE_OS_3_1_0)
    pair.take_server_events()
    request = pair.server.read_variable("nosuch", NOW)
    pair.pump(NOW)
    assert pair.take_server_events() == [
        VariableReadFailed(request, "nosuch", Code.NOT_FOUND, "the device has no such name (4.04)")
    ]


def test_unknown_variable_legacy_reads_address_zero() -> None:
    """Legacy firmware answers an unknown name with 4 bytes read from address 0 (§6.6)."""
    pair = _connect(DEVICE_OS_0_6_1)
    pair.take_server_events()
    request = pair.server.read_variable("nosuch", NOW)
    pair.pump(NOW)
    assert pair.take_server_events() == [VariableRead(request, "nosuch", b"\x00\x00\x00\x00", None, None)]


@pytest.mark.parametrize("firmware", [DEVICE_OS_3_1_0, DEVICE_OS_0_6_1])
@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_function_call_with_and_without_argument(firmware: Firmware, chunk: int | None) -> None:
    pair = _connect(firmware, chunk)
    pair.take_server_events()
    pair.take_device_events()
    first = pair.server.call_function("setArg", "hello world", NOW)
    second = pair.server.call_function("led", "", NOW)
    pair.pump(NOW, chunk=chunk)
    calls = pair.take_device_events()
    assert [(c.name, c.argument) for c in calls if isinstance(c, FunctionCalled)] == [
        ("setArg", b"hello world"),
        ("led", b""),
    ]
    for call in calls:
        assert isinstance(call, FunctionCalled)
        pair.device.respond_function(call.request, -len(call.argument))
    pair.pump(NOW, chunk=chunk)
    assert pair.take_server_events() == [
        FunctionReturned(first, "setArg", -11),
        FunctionReturned(second, "led", 0),
    ]


def test_unknown_function_is_acknowledged_then_times_out() -> None:
    pair = _established()
    request = pair.server.call_function("nosuch", "x", NOW, timeout=5.0)
    pair.pump(NOW)
    assert pair.take_server_events() == []
    assert pair.take_device_events() == []
    assert pair.server.get_timer() == NOW + 5.0
    pair.server.handle_timer(NOW + 5.0)
    assert drain(pair.server) == [RequestTimedOut(request, "function", "nosuch")]


def test_legacy_refuses_a_long_argument() -> None:
    """Legacy takes arguments under 64 bytes; a longer one is ACKed 4.00 (§6.5)."""
    pair = _connect(DEVICE_OS_0_6_1)
    pair.take_server_events()
    request = pair.server.call_function("setArg", "x" * 64, NOW)
    pair.pump(NOW)
    assert pair.take_server_events() == [
        FunctionFailed(request, "setArg", Code.BAD_REQUEST, "the device refused the request (4.00)")
    ]


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_events_both_ways(chunk: int | None) -> None:
    pair = _connect(DEVICE_OS_3_1_0, chunk)
    pair.take_server_events()
    pair.take_device_events()
    pair.server.send_event("vdev/ping", "data", ttl=3600, private=False)
    pair.server.send_event("other/event", "ignored by the device's filters")
    pair.server.send_event("all/empty", None)
    pair.pump(NOW, chunk=chunk)
    assert pair.take_device_events() == [EventReceived("vdev/ping", b"data"), EventReceived("all/empty", b"")]
    pair.device.publish("vdev/temp", "21.5", NOW)
    pair.device.publish("vdev/public", "", NOW, private=False, ttl=3600)
    acked = pair.device.publish("vdev/acked", None, NOW, with_ack=True)
    pair.pump(NOW, chunk=chunk)
    assert pair.take_server_events() == [
        EventPublished("vdev/temp", b"21.5", 60, True, False),
        EventPublished("vdev/public", None, 3600, False, False),
        EventPublished("vdev/acked", None, 60, True, True),
    ]
    assert pair.take_device_events() == [PublishAcknowledged(acked or 0)]


def test_device_publish_rate_limit() -> None:
    """At most 4 user events within a second; system events are exempt (§6.4)."""
    pair = _connect()
    results = [pair.device.publish("user/e", str(i), NOW + i * 0.1) for i in range(6)]
    assert [r is not None for r in results] == [True, True, True, True, False, False]
    assert pair.device.publish("user/e", "later", NOW + 1.05) is not None
    assert pair.device.publish("spark/x", "system", NOW + 1.06) is not None


def test_subscription_scopes_and_late_subscribe() -> None:
    pair = _connect()
    pair.take_server_events()
    pair.device.subscribe(Subscription("one/", SubscriptionScope.DEVICE, "0123456789abcdef01234567"))
    pair.device.subscribe(Subscription("", SubscriptionScope.MY_DEVICES))
    pair.pump(NOW)
    assert pair.take_server_events() == [
        SubscriptionRequested("one/", SubscriptionScope.DEVICE, "0123456789abcdef01234567"),
        SubscriptionRequested("", SubscriptionScope.MY_DEVICES),
    ]


@pytest.mark.parametrize("firmware", [DEVICE_OS_3_1_0, DEVICE_OS_0_6_1])
def test_signal_and_server_ping(firmware: Firmware) -> None:
    pair = _connect(firmware)
    pair.take_server_events()
    pair.take_device_events()
    on = pair.server.signal(True, NOW)
    off = pair.server.signal(False, NOW)
    pair.server.ping()
    pair.pump(NOW)
    # The new stack ACKs ping and signal with fresh ids (§6.1): matched by token, or proof of life only.
    assert pair.take_server_events() == [SignalAcknowledged(on, True), SignalAcknowledged(off, False)]
    assert pair.take_device_events() == [SignalReceived(True), SignalReceived(False)]


def test_device_ping_timing_and_answer() -> None:
    """The device pings 15 s after it last received anything, and fails 10 s later without an answer."""
    pair = _connect()
    pair.take_server_events()
    device = pair.device
    assert device.get_timer() == NOW + 15.0
    device.handle_timer(NOW + 15.0)
    pair.pump(NOW + 15.0)
    assert pair.take_server_events() == [PingReceived()]
    assert device.get_timer() == NOW + 30.0
    device.handle_timer(NOW + 30.0)
    device.data_to_send()  # the server never hears this one
    assert device.get_timer() == NOW + 40.0
    device.handle_timer(NOW + 40.0)
    assert drain(device) == [
        ConnectionFailed(Step.SESSION, Reason.PING_TIMEOUT, "the server did not answer the keep-alive ping")
    ]


def test_the_device_times_its_ping_from_sending_it_to_its_acknowledgement() -> None:
    pair = _connect()
    pair.take_device_events()
    device = pair.device
    device.handle_timer(NOW + 15.0)
    ping = device.data_to_send()
    pair.server.receive_data(ping, NOW + 15.25)
    ack = pair.server.data_to_send()
    device.receive_data(ack, NOW + 15.5)
    assert drain(device) == [PingAcknowledged(0.5)]
    # The next ping is timed from its own sending.
    device.handle_timer(NOW + 30.5)
    pair.server.receive_data(device.data_to_send(), NOW + 30.5)
    device.receive_data(pair.server.data_to_send(), NOW + 30.75)
    assert drain(device) == [PingAcknowledged(0.25)]


def test_time_sync_is_one_request_at_a_time() -> None:
    pair = _connect()
    pair.take_device_events()
    pair.device.sync_time()
    pair.device.sync_time()
    pair.pump(NOW + 5)
    assert pair.take_device_events() == [TimeReceived(int(NOW + 5))]


def test_metrics_describe_and_key_change() -> None:
    pair = _connect()
    pair.take_server_events()
    request = pair.server.request_describe(NOW, flags=4)
    # A KeyChange is never needed on TCP (§6.10); the new stack ACKs it with a fresh id and nothing else.
    pair.server._send(Message(MessageType.CON, Code.PUT, 0x1234, b"\x01", ((11, b"k"), (15, b"\x01"))))
    pair.pump(NOW)
    assert pair.take_server_events() == [DescribeReceived(4, b"\x00\x04\x00\x02\x00\x04\x00", None, request_id=request)]


def test_goodbye() -> None:
    pair = _connect()
    pair.take_server_events()
    pair.device.goodbye(Goodbye(cloud_reason=m.CloudDisconnectReason.SLEEP, sleep_duration=300))
    pair.pump(NOW)
    assert pair.take_server_events() == [GoodbyeReceived(Goodbye(cloud_reason=6, sleep_duration=300))]
    pair.server.receive_eof(NOW)
    assert drain(pair.server) == [ConnectionClosed()]
    legacy = _connect(DEVICE_OS_0_6_1)
    with pytest.raises(LocalProtocolError, match="no Goodbye"):
        legacy.device.goodbye(Goodbye(cloud_reason=2))


# -- OTA messages on the server (the device side is answered by hand here) ----------------------


def _hand_answered(pair: ConnectionPair, monkeypatch: pytest.MonkeyPatch) -> ConnectionPair:
    """The device decrypts what the server sends (keeping the IV chain, §4) but leaves the answering to
    the test (tests/protocol/test_ota_*.py run the device role's own OTA)."""
    monkeypatch.setattr(pair.device, "_on_message", lambda raw, message, now: None)
    return pair


def _device_sends(pair: ConnectionPair, *messages: Message) -> list[object]:
    for message in messages:
        pair.device._send(message)
    pair.pump(NOW)
    return list(pair.take_server_events())


def _sent_token(pair: ConnectionPair) -> bytes:
    return bytes((pair.server._token,))


def test_ota_messages_non_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = _hand_answered(_connect(), monkeypatch)
    pair.take_server_events()
    begin = pair.server.begin_update(file_size=1024, now=NOW)
    pair.device.data_to_send()
    token = _sent_token(pair)
    assert pair.server.get_timer() == NOW + pair.server.config.request_timeout  # no idle timeout now
    assert _device_sends(pair, m.empty_ack(0), m.update_ready(0x9000, token, fast=False)) == [UpdateReady(begin, False)]
    first = pair.server.send_chunk(b"\x01" * 512, 0, now=NOW)
    token = _sent_token(pair)
    assert _device_sends(pair, m.chunk_received(0x9001, token, ok=False)) == [ChunkAcknowledged(first, False)]
    done = pair.server.finish_update(NOW)
    token = _sent_token(pair)
    result = _device_sends(pair, m.piggybacked_response(0, token, Code.CHANGED, b'{"r":0}'))
    assert result == [UpdateDoneAcknowledged(done, True, {"r": 0})]
    assert pair.server.get_timer() == NOW + pair.server.config.idle_timeout


def test_ota_messages_fast_with_missed_chunks_legacy_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = _hand_answered(_connect(), monkeypatch)
    pair.take_server_events()
    pair.server.begin_update(file_size=2048, fast=True, now=NOW)
    pair.server.send_chunk(b"\x02" * 512, 1, index=0, now=NOW)
    assert len(pair.server._requests) == 1  # fast chunks await no answer
    done = pair.server.finish_update(NOW)
    token = _sent_token(pair)
    events = _device_sends(
        pair,
        m.piggybacked_response(0, token, Code.BAD_REQUEST, None),
        m.chunk_missed(0x9002, [1, 3], confirmable=False),
        m.device_update_done(0x9003, b'{"r":"ok"}'),
    )
    assert events == [
        UpdateDoneAcknowledged(done, False, None),
        ChunksMissed((1, 3)),
        UpdateFinishedByDevice({"r": "ok"}),
    ]


def test_ota_refused_both_stacks(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = _hand_answered(_connect(), monkeypatch)
    pair.take_server_events()
    begin = pair.server.begin_update(file_size=10, now=NOW)
    token = _sent_token(pair)
    assert _device_sends(pair, m.piggybacked_response(0, token, Code.SERVICE_UNAVAILABLE, None)) == [
        UpdateRefused(begin, Code.SERVICE_UNAVAILABLE)
    ]
    begin = pair.server.begin_update(file_size=10, now=NOW)
    mid = pair.server._message_id
    # Legacy refuses with ACK 4.00 and no token: matched by message id.
    assert _device_sends(pair, Message(MessageType.ACK, Code.BAD_REQUEST, mid)) == [UpdateRefused(begin, 0x80)]


def test_reset_fails_a_request_and_strays_are_recorded() -> None:
    pair = _connect()
    pair.take_server_events()
    call = pair.server.call_function("setArg", "a", NOW)
    mid = pair.server._message_id
    events = _device_sends(
        pair,
        Message(MessageType.RST, Code.EMPTY, mid),
        m.content_response(0x9100, b"\x77", Code.CONTENT, b"late", confirmable=True),
        Message(MessageType.ACK, Code.CHANGED, 0x4242),
        Message(MessageType.CON, Code.GET, 0x9101, options=((11, b"zz"),)),
        Message(MessageType.NON, Code.POST, 0x9102, options=((11, b"e"),), payload=b"nameless"),
        m.describe_post(0x9103, 2, b"not json"),
        Message(MessageType.CON, Code.GET, 0x9104, options=((11, b"t"),)),
    )
    assert events[0] == FunctionFailed(call, "setArg", Code.INTERNAL_SERVER_ERROR, "the device reset the request")
    assert [type(e) for e in events[1:]] == [MessageIgnored] * 4 + [DescribeReceived, MessageIgnored]
    describe = events[5]
    assert isinstance(describe, DescribeReceived)
    assert describe.document is None
    assert describe.error is not None
    assert describe.error.startswith("describe payload is not JSON")


# -- failures, each with its step and reason ---------------------------------------------------


def test_nonce_mismatch_when_the_device_holds_another_server_key() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pair = _pair(device_holds=other.public_key())
    with pytest.raises(RemoteProtocolError) as caught:
        pair.pump(NOW)
    assert (caught.value.step, caught.value.reason) == (Step.NONCE, Reason.NONCE_MISMATCH)
    assert pair.server.closed
    with pytest.raises(LocalProtocolError):
        pair.server.receive_data(b"x", NOW)


def _identity_message(server: ServerConnection, plaintext_after_nonce: bytes) -> bytes:
    return _raw_public_encrypt(
        fixed_server_key().public_key(), server._nonce + plaintext_after_nonce, ScriptedRandom(seed=3)
    )


@pytest.mark.parametrize(
    ("after_nonce", "message"),
    [
        (b"short", "at least 52"),
        (DEVICE_ID + b"\x30\x03garbage", "not valid DER"),
    ],
)
def test_malformed_identity(after_nonce: bytes, message: str) -> None:
    server = ServerConnection(fixed_server_key(), NOW)
    with pytest.raises(RemoteProtocolError, match=message) as caught:
        server.receive_data(_identity_message(server, after_nonce), NOW)
    assert caught.value.reason is Reason.MALFORMED_IDENTITY


def test_identity_with_a_key_of_the_wrong_size() -> None:
    big = rsa.generate_private_key(public_exponent=3, key_size=1024).public_key()
    der = big.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    server = ServerConnection(fixed_server_key(), NOW)
    with pytest.raises(RemoteProtocolError, match="RSA-1024 with e=65537") as caught:
        server.receive_data(_identity_message(server, DEVICE_ID + der), NOW)
    assert caught.value.reason is Reason.MALFORMED_IDENTITY


def test_core_52_byte_identity() -> None:
    pair = _pair(device_config=DeviceConfig(send_public_key=False))
    pair.pump(NOW)
    assert pair.take_server_events() == [DeviceIdentified(DEVICE_ID.hex(), None, None)]


@pytest.mark.parametrize("reason", [Reason.UNKNOWN_DEVICE, Reason.KEY_MISMATCH, Reason.KEY_REJECTED])
def test_rejection_reasons(reason: Reason) -> None:
    pair = _pair()
    pair.pump(NOW)
    pair.server.reject(reason)
    assert drain(pair.server) == [ConnectionFailed(Step.IDENTITY, reason, f"rejected: {reason.value}")]
    assert pair.server.data_to_send() == b""
    pair.device.receive_eof(NOW)
    assert drain(pair.device) == [
        ConnectionFailed(
            Step.SESSION_KEY, Reason.CLOSED_BY_PEER, "the server closed the connection in the session_key step"
        )
    ]


def test_session_key_to_the_wrong_device_key() -> None:
    """The server trusts a stale key: the device cannot decrypt (DECRYPTION_ERROR) and closes."""
    pair = _pair()
    pair.pump(NOW)
    pair.take_server_events()
    pair.server.accept(fixed_device_key(1).public_key(), NOW)
    with pytest.raises(RemoteProtocolError) as caught:
        pair.pump(NOW)
    assert (caught.value.step, caught.value.reason) == (Step.SESSION_KEY, Reason.DECRYPT_FAILED)
    pair.server.receive_eof(NOW)
    failure = drain(pair.server)[-1]
    assert isinstance(failure, ConnectionFailed)
    assert (failure.step, failure.reason) == (Step.HELLO, Reason.SESSION_KEY_REJECTED)


def test_signature_invalid() -> None:
    pair = _pair()
    pair.pump(NOW)
    pair.take_server_events()
    pair.server.accept(fixed_device_key().public_key(), NOW)
    answer = bytearray(pair.server.data_to_send())
    answer[-1] ^= 0x01
    with pytest.raises(RemoteProtocolError) as caught:
        pair.device.receive_data(bytes(answer), NOW)
    assert (caught.value.step, caught.value.reason) == (Step.SESSION_KEY, Reason.SIGNATURE_INVALID)


def test_identity_followed_by_early_bytes_is_kept_until_accepted() -> None:
    pair = _pair()
    pair.server.data_to_send()
    pair.device.receive_data(pair.server._nonce, NOW)
    identity = pair.device.data_to_send()
    pair.server.receive_data(identity + b"\x00\x10", NOW)  # 2 stray bytes: a length with no body yet
    (identified,) = drain(pair.server)
    assert isinstance(identified, DeviceIdentified)
    assert identified.public_key is not None
    pair.server.accept(identified.public_key, NOW)
    with pytest.raises(RemoteProtocolError) as caught:
        pair.server.receive_data(b"\x00" * 16, NOW)  # the stray frame is garbage
    assert caught.value.step is Step.HELLO
    assert caught.value.reason in (Reason.DECRYPT_FAILED, Reason.MALFORMED_MESSAGE, Reason.UNEXPECTED_MESSAGE)


def test_flood_before_the_decision() -> None:
    pair = _pair(config=ServerConfig(max_frame_length=64))
    pair.pump(NOW)
    with pytest.raises(RemoteProtocolError) as caught:
        pair.server.receive_data(b"\x00" * 65, NOW)
    assert (caught.value.step, caught.value.reason) == (Step.IDENTITY, Reason.UNEXPECTED_MESSAGE)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\x00\x05abcde", Reason.BAD_FRAME_LENGTH),
        (b"\x00\x00", Reason.BAD_FRAME_LENGTH),
        (b"\x40\x00", Reason.BAD_FRAME_LENGTH),  # 16384: over the cap, refused before buffering
    ],
)
def test_bad_frame_length(wire: bytes, reason: Reason) -> None:
    pair = _established()
    with pytest.raises(RemoteProtocolError) as caught:
        pair.server.receive_data(wire, NOW)
    assert (caught.value.step, caught.value.reason) == (Step.SESSION, reason)


def test_decrypt_failed_and_malformed_message() -> None:
    pair = _established()
    with pytest.raises(RemoteProtocolError) as caught:
        pair.server.receive_data(b"\x00\x10" + bytes(16), NOW)
    assert caught.value.reason is Reason.DECRYPT_FAILED
    pair = _established()
    pair.device._outgoing += pair.device._encoder.encode(b"\x80\x00")  # type: ignore[union-attr]
    with pytest.raises(RemoteProtocolError) as caught:
        pair.pump(NOW)
    assert (caught.value.step, caught.value.reason) == (Step.SESSION, Reason.MALFORMED_MESSAGE)


def test_frames_before_a_bad_frame_are_delivered() -> None:
    pair = _established()
    pair.device.publish("first", "kept", NOW)
    wire = pair.device.data_to_send() + b"\x00\x03abc"
    with pytest.raises(RemoteProtocolError):
        pair.server.receive_data(wire, NOW)
    assert drain(pair.server) == [EventPublished("first", b"kept", 60, True, False)]


def _after_session_key(**kwargs: object) -> ConnectionPair:
    pair = _pair(**kwargs)  # type: ignore[arg-type]
    pair.pump(NOW)
    (identified,) = pair.take_server_events()
    assert isinstance(identified, DeviceIdentified)
    assert identified.public_key is not None
    pair.server.accept(identified.public_key, NOW)
    return pair


def _drop_device_hello(pair: ConnectionPair) -> None:
    """Let the device take the session key, then withhold its Hello and rewind its IV register."""
    pair.device.receive_data(pair.server.data_to_send(), NOW)
    pair.device.data_to_send()
    assert pair.device._encoder is not None
    assert pair.server._decoder is not None
    pair.device._encoder._iv = pair.server._decoder._iv


def test_first_message_must_be_hello() -> None:
    pair = _after_session_key()
    _drop_device_hello(pair)
    pair.device._send(m.ping(1))
    with pytest.raises(RemoteProtocolError, match="not the device Hello") as caught:
        pair.server.receive_data(pair.device.data_to_send(), NOW)
    assert (caught.value.step, caught.value.reason) == (Step.HELLO, Reason.UNEXPECTED_MESSAGE)


def test_malformed_hello() -> None:
    pair = _after_session_key()
    _drop_device_hello(pair)
    pair.device._send(Message(MessageType.NON, Code.POST, 1, options=((11, b"h"),), payload=b"\x00\x06"))
    with pytest.raises(RemoteProtocolError) as caught:
        pair.server.receive_data(pair.device.data_to_send(), NOW)
    assert (caught.value.step, caught.value.reason) == (Step.HELLO, Reason.MALFORMED_MESSAGE)


@pytest.mark.parametrize(
    ("advance", "step", "reason"),
    [
        ("nothing", Step.NONCE, Reason.NONCE_TIMEOUT),
        ("identity", Step.IDENTITY, Reason.IDENTITY_TIMEOUT),
        ("accepted", Step.HELLO, Reason.HELLO_TIMEOUT),
        ("connected", Step.SESSION, Reason.IDLE_TIMEOUT),
    ],
)
def test_server_timeouts(advance: str, step: Step, reason: Reason) -> None:
    pair = _pair()
    if advance != "nothing":
        pair.device.receive_data(pair.server.data_to_send(), NOW)
        pair.server.receive_data(pair.device.data_to_send(), NOW)
        (identified,) = drain(pair.server)
        assert isinstance(identified, DeviceIdentified)
        if advance in ("accepted", "connected"):
            assert identified.public_key is not None
            pair.server.accept(identified.public_key, NOW)
            if advance == "connected":
                pair.pump(NOW)
    drain(pair.server)
    due = pair.server.get_timer()
    assert due is not None
    pair.server.handle_timer(due - 0.001)
    assert drain(pair.server) == []
    pair.server.handle_timer(due)
    (failure,) = drain(pair.server)
    assert isinstance(failure, ConnectionFailed)
    assert (failure.step, failure.reason) == (step, reason)
    assert pair.server.get_timer() is None


def test_idle_timeout_is_suspended_during_an_update() -> None:
    pair = _established()
    pair.server.suspend_idle_timeout(True)
    assert pair.server.get_timer() is None
    pair.server.handle_timer(NOW + 1000)
    assert not pair.server.closed


@pytest.mark.parametrize(
    ("advance", "step", "reason"),
    [
        ("nothing", Step.NONCE, Reason.NONCE_TIMEOUT),
        ("nonce", Step.SESSION_KEY, Reason.SESSION_KEY_TIMEOUT),
        ("session_key", Step.HELLO, Reason.HELLO_TIMEOUT),
    ],
)
def test_device_timeouts(advance: str, step: Step, reason: Reason) -> None:
    pair = _pair(DEVICE_OS_0_6_1)
    expected_wait = 20.0
    if advance != "nothing":
        pair.device.receive_data(pair.server.data_to_send(), NOW)
        if advance == "session_key":
            pair.server.receive_data(pair.device.data_to_send(), NOW)
            (identified,) = drain(pair.server)
            assert isinstance(identified, DeviceIdentified)
            assert identified.public_key is not None
            pair.server.accept(identified.public_key, NOW)
            pair.device.receive_data(pair.server.data_to_send(), NOW)
            expected_wait = 2.0  # the legacy stack waits only 2 s for the server Hello (§5)
    assert pair.device.get_timer() == NOW + expected_wait
    pair.device.handle_timer(NOW + expected_wait)
    failure = drain(pair.device)[-1]
    assert isinstance(failure, ConnectionFailed)
    assert (failure.step, failure.reason) == (step, reason)


def test_eof_during_the_handshake() -> None:
    server = ServerConnection(fixed_server_key(), NOW)
    server.receive_eof(NOW)
    assert drain(server) == [
        ConnectionFailed(Step.NONCE, Reason.CLOSED_BY_PEER, "the device closed the connection during the handshake")
    ]
    server.receive_eof(NOW)  # idempotent
    assert drain(server) == []


def test_new_stack_drops_a_function_call_without_token() -> None:
    """TKL 0 on a function call: MISSING_REQUEST_TOKEN, the firmware closes (§6.1, §16 #13)."""
    pair = _established()
    pair.server._send(Message(MessageType.CON, Code.POST, 7, b"", ((11, b"f"), (11, b"setArg"), (15, b""))))
    with pytest.raises(RemoteProtocolError) as caught:
        pair.pump(NOW)
    assert caught.value.reason is Reason.MISSING_REQUEST_TOKEN


@pytest.mark.parametrize(
    "message",
    [
        Message(MessageType.ACK, Code.CHANGED, 9),
        Message(MessageType.NON, Code.CHANGED, 9, b"\x01"),
        Message(MessageType.CON, Code.GET, 9, b"\x01", ((11, b"q"),)),
    ],
)
def test_legacy_drops_on_codes_it_does_not_know(message: Message) -> None:
    pair = _connect(DEVICE_OS_0_6_1)
    pair.server._send(message)
    with pytest.raises(RemoteProtocolError) as caught:
        pair.pump(NOW)
    assert caught.value.reason is Reason.UNSUPPORTED_CODE


def test_new_stack_ignores_unknown_requests() -> None:
    pair = _established()
    pair.server._send(Message(MessageType.CON, Code.GET, 9, b"\x01", ((11, b"q"),)))
    pair.server._send(Message(MessageType.NON, Code.CHANGED, 10, b"\x01"))
    pair.pump(NOW)
    assert [type(e) for e in pair.take_device_events()] == [MessageIgnored, MessageIgnored]
    assert not pair.device.closed


# -- misuse by the caller -------------------------------------------------------------------------


def test_local_protocol_errors() -> None:
    pair = _pair()
    with pytest.raises(LocalProtocolError, match="not connected"):
        pair.server.call_function("f", "", NOW)
    with pytest.raises(LocalProtocolError, match="awaiting a decision"):
        pair.server.accept(fixed_device_key().public_key(), NOW)
    with pytest.raises(LocalProtocolError, match="awaiting a decision"):
        pair.server.reject(Reason.UNKNOWN_DEVICE)
    with pytest.raises(LocalProtocolError, match="not connected"):
        pair.device.publish("e", "d", NOW)
    pair.pump(NOW)
    with pytest.raises(LocalProtocolError, match="RSA-1024"):
        pair.server.accept(fixed_server_key().public_key(), NOW)
    pair.server.close()
    pair.server.close()
    assert pair.server.closed
    assert pair.server.get_timer() is None


def test_token_space_exhaustion() -> None:
    pair = _established()
    for _ in range(256):
        pair.server.read_variable("counter", NOW)
    with pytest.raises(LocalProtocolError, match="token space"):
        pair.server.read_variable("counter", NOW)


def test_oversized_request_is_refused_locally() -> None:
    pair = _established()
    with pytest.raises(ValueError, match="622"):
        pair.server.call_function("setArg", "x" * 700, NOW)


def test_a_late_close_before_the_hello_is_not_a_key_rejection() -> None:
    """A device that gives up waiting (its own Hello wait, a reset) is not one that rejected our key."""
    pair = _after_session_key()
    pair.server.receive_eof(NOW + 2.5)
    failure = drain(pair.server)[-1]
    assert isinstance(failure, ConnectionFailed)
    assert (failure.step, failure.reason) == (Step.HELLO, Reason.CLOSED_BY_PEER)
    assert "2.5 s after our session key" in failure.detail
