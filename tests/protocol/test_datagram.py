"""The message layer over UDP: the confirmable Hello with the device id, the key decision, ACKs,
retransmission on the firmware's timers, deduplication by message id, keep-alive and resumption."""

from __future__ import annotations

import struct

import pytest

from cyan.protocol import (
    ConnectionFailed,
    DeviceIdentified,
    EventPublished,
    FunctionReturned,
    HelloReceived,
    LocalProtocolError,
    PingReceived,
    Reason,
    RemoteProtocolError,
    RequestTimedOut,
    State,
    VariableRead,
)
from cyan.protocol import (
    messages as m,
)
from cyan.protocol.coap import Code, Message, MessageType, Option, decode
from cyan.protocol.datagram import (
    DatagramConfig,
    DatagramServerConnection,
    hello_device_id,
    keepalive_interval,
)
from cyan.protocol.events import Event

DEVICE_ID = bytes.fromhex("0123456789abcdef01234567")
KEY_DER = b"\x30" + bytes(90)  # the connection only carries the key along; DTLS checked it


def udp_hello(message_id: int = 0x10, platform_id: int = 12, device_id: bytes = DEVICE_ID) -> bytes:
    """A Hello as DO 4.0.2 `Messages::hello` lays it out (confirmable, the device id inside)."""
    payload = struct.pack(">HHHHBB", 12, 3, 0x0022, platform_id, 0, len(device_id)) + device_id
    payload += struct.pack(">HHIH", 4006, 960, 1048576, 512)
    return Message(MessageType.CON, Code.POST, message_id, options=((Option.URI_PATH, b"h"),), payload=payload).encode()


def rng(n: int) -> bytes:
    return bytes(range(1, n + 1))


def events(conn: DatagramServerConnection) -> list[Event]:
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def connected(now: float = 0.0) -> DatagramServerConnection:
    conn = DatagramServerConnection(KEY_DER, now, rng=rng, config=DatagramConfig(describe_delay=None))
    conn.receive_message(udp_hello(), now)
    conn.accept_device(now)
    conn.messages_to_send(now)
    events(conn)
    return conn


def test_hello_device_id_is_read_where_device_os_writes_it() -> None:
    payload = decode(udp_hello()).payload
    assert payload is not None
    assert hello_device_id(payload) == DEVICE_ID
    assert hello_device_id(payload[:15]) is None
    assert hello_device_id(m.Hello(1, 2, m.HelloFlag(0), 6, 3000, 1, 2, 3).encode()) is None  # a TCP Hello


def test_the_confirmable_hello_names_the_device_and_its_ack_alone_completes_it() -> None:
    conn = DatagramServerConnection(KEY_DER, 0.0, rng=rng)
    assert conn.messages_to_send(0.0) == []  # no nonce: DTLS did the handshake
    conn.receive_message(udp_hello(0x4242), 0.5)
    (identified,) = events(conn)
    assert identified == DeviceIdentified(DEVICE_ID.hex(), KEY_DER, None)
    assert conn.state is State.AWAIT_DECISION
    assert conn.messages_to_send(0.5) == []  # nothing before the decision
    conn.accept_device(1.0)
    (hello,) = events(conn)
    assert isinstance(hello, HelloReceived)
    assert hello.hello.platform_id == 12
    assert hello.hello.system_version == 4006
    # An empty ACK with the Hello's id, and no server Hello (no REQUIRE_HELLO_RESPONSE on UDP).
    assert conn.messages_to_send(1.0) == [bytes.fromhex("60004242")]
    assert conn.state.value == State.CONNECTED.value  # (mypy narrowed the state above)


def test_reject_closes_with_the_reason() -> None:
    conn = DatagramServerConnection(KEY_DER, 0.0, rng=rng)
    conn.receive_message(udp_hello(), 0.0)
    events(conn)
    conn.reject(Reason.KEY_MISMATCH, "another key is registered")
    (failed,) = events(conn)
    assert isinstance(failed, ConnectionFailed)
    assert failed.reason is Reason.KEY_MISMATCH
    assert conn.closed


def test_a_new_session_must_start_with_the_hello() -> None:
    conn = DatagramServerConnection(KEY_DER, 0.0, rng=rng)
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_message(m.ping(7).encode(), 0.0)
    assert caught.value.reason is Reason.UNEXPECTED_MESSAGE
    conn = DatagramServerConnection(KEY_DER, 0.0, rng=rng)
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_message(udp_hello(device_id=b""), 0.0)
    assert caught.value.reason is Reason.MALFORMED_IDENTITY


def test_no_hello_in_time_fails_at_the_hello_step() -> None:
    conn = DatagramServerConnection(KEY_DER, 0.0, rng=rng)
    timer = conn.get_timer()
    assert timer is not None
    conn.handle_timer(timer)
    (failed,) = events(conn)
    assert isinstance(failed, ConnectionFailed)
    assert failed.reason is Reason.HELLO_TIMEOUT


def test_the_stream_api_is_refused() -> None:
    conn = DatagramServerConnection(KEY_DER, 0.0, rng=rng)
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x", 0.0)
    with pytest.raises(LocalProtocolError):
        conn.data_to_send()
    conn.receive_message(udp_hello(), 0.0)
    with pytest.raises(LocalProtocolError):
        conn.accept(object(), 0.0)


def test_a_retransmitted_hello_during_the_decision_is_taken_once_and_acked_after() -> None:
    conn = DatagramServerConnection(KEY_DER, 0.0, rng=rng)
    conn.receive_message(udp_hello(5), 0.0)
    conn.receive_message(udp_hello(5), 4.5)
    assert len(events(conn)) == 1
    conn.accept_device(5.0)
    assert conn.messages_to_send(5.0) == [bytes.fromhex("60000005")]
    conn.receive_message(udp_hello(5), 9.0)  # the ACK was lost: the same ACK again, no second Hello
    assert conn.messages_to_send(9.0) == [bytes.fromhex("60000005")]
    assert [type(e) for e in events(conn)] == [HelloReceived]


def test_a_retransmitted_event_is_acked_again_and_published_once() -> None:
    conn = connected()
    event = m.device_event(0x99, "temp", b"21", private=True, confirmable=True).encode()
    conn.receive_message(event, 1.0)
    first = conn.messages_to_send(1.0)
    conn.receive_message(event, 5.0)
    assert conn.messages_to_send(5.0) == first == [bytes.fromhex("60000099")]
    assert [type(e) for e in events(conn)] == [EventPublished]


def test_a_message_id_is_forgotten_after_the_exchange_lifetime() -> None:
    conn = connected()
    event = m.device_event(0x99, "temp", b"21", private=True, confirmable=True).encode()
    conn.receive_message(event, 1.0)
    conn.receive_message(event, 1.0 + DatagramConfig().exchange_lifetime + 1)
    assert [type(e) for e in events(conn)] == [EventPublished, EventPublished]


def test_remembered_ids_are_bounded() -> None:
    conn = connected()
    limit = DatagramConfig().max_remembered
    for i in range(limit * 3):
        conn.receive_message(m.ping(1000 + i).encode(), 1.0)
    assert len(conn._seen) <= limit
    assert len([e for e in events(conn) if isinstance(e, PingReceived)]) == limit * 3


def test_our_requests_are_retransmitted_on_the_firmware_timers_until_acked() -> None:
    conn = connected()
    conn.call_function("setArg", "x", 10.0, timeout=200.0)
    (call,) = conn.messages_to_send(10.0)
    sent_at = []
    now = 10.0
    while (due := conn.get_timer()) is not None:  # until the idle timeout ends the session
        now = due
        conn.handle_timer(now)
        resent = conn.messages_to_send(now)
        if resent:
            assert resent == [call]
            sent_at.append(now)
    # ACK_TIMEOUT 4 s stretched by up to half, doubled each time; MAX_RETRANSMIT 3.
    assert len(sent_at) == 3
    assert conn.failure is not None
    assert conn.failure.reason is Reason.IDLE_TIMEOUT
    waits = [b - a for a, b in zip([10.0, *sent_at], sent_at, strict=False)]
    for wait, base in zip(waits, (4.0, 8.0, 16.0), strict=True):
        assert base <= wait <= base * 1.5


def test_an_ack_stops_retransmission_and_the_answer_completes_the_call() -> None:
    conn = connected()
    request_id = conn.call_function("setArg", "hello", 10.0)
    (call,) = conn.messages_to_send(10.0)
    request = decode(call)
    assert request.type is MessageType.CON
    conn.receive_message(m.empty_ack(request.message_id).encode(), 10.1)
    assert conn.get_timer() == pytest.approx(10.0 + DatagramConfig().request_timeout)
    # Device OS answers a function with a separate confirmable 2.04 on UDP.
    answer = Message(MessageType.CON, Code.CHANGED, 0x77, request.token, payload=struct.pack(">i", 5))
    conn.receive_message(answer.encode(), 10.2)
    conn.receive_message(answer.encode(), 14.0)  # its retransmission: acked, not delivered again
    assert conn.messages_to_send(14.0) == [bytes.fromhex("60000077")] * 2
    assert events(conn) == [FunctionReturned(request_id, "setArg", 5)]


def test_a_piggybacked_variable_answer() -> None:
    conn = connected()
    request_id = conn.read_variable("temp", 1.0)
    request = decode(conn.messages_to_send(1.0)[0])
    conn.receive_message(
        Message(MessageType.ACK, Code.CONTENT, request.message_id, request.token, payload=b"x").encode(), 1.1
    )
    (read,) = events(conn)
    assert isinstance(read, VariableRead)
    assert read.request_id == request_id
    assert read.raw == b"x"
    timer = conn.get_timer()
    assert timer is not None
    assert timer > 50


def test_an_unanswered_request_times_out() -> None:
    conn = connected()
    conn.read_variable("temp", 1.0, timeout=5.0)
    conn.messages_to_send(1.0)
    conn.handle_timer(6.0)
    assert any(isinstance(e, RequestTimedOut) for e in events(conn))


def test_keepalive_follows_the_platform() -> None:
    assert keepalive_interval(12) == 25.0
    assert keepalive_interval(13) == 23 * 60.0
    argon = connected()
    argon.receive_message(m.ping(3).encode(), 100.0)
    assert argon.messages_to_send(100.0) == [bytes.fromhex("60000003")]
    assert argon.get_timer() == 100.0 + 80.0
    boron = DatagramServerConnection(KEY_DER, 0.0, rng=rng, config=DatagramConfig(describe_delay=None))
    boron.receive_message(udp_hello(platform_id=13), 0.0)
    boron.accept_device(0.0)
    assert boron.get_timer() == 2 * 23 * 60.0 + 30.0
    boron.handle_timer(81.0)
    assert not boron.closed
    argon.handle_timer(181.0)
    assert argon.closed
    assert argon.failure is not None
    assert argon.failure.reason is Reason.IDLE_TIMEOUT


def test_a_resumed_session_without_a_hello_starts_on_its_first_message() -> None:
    stored = m.Hello(12, 3, m.HelloFlag(0x22), 12, 4006, 960, 1048576, 512)
    conn = DatagramServerConnection(KEY_DER, 0.0, rng=rng, resumed_device_id=DEVICE_ID.hex(), resumed_hello=stored)
    conn.receive_message(m.ping(0x300).encode(), 0.1)
    (identified,) = events(conn)
    assert identified == DeviceIdentified(DEVICE_ID.hex(), KEY_DER, None)
    conn.accept_device(0.2)
    hello, ping = events(conn)
    assert hello == HelloReceived(DEVICE_ID.hex(), stored)
    assert isinstance(ping, PingReceived)
    assert conn.messages_to_send(0.2) == [bytes.fromhex("60000300")]
    assert conn.resumed


def test_a_resumed_session_refuses_a_hello_for_another_device() -> None:
    conn = DatagramServerConnection(KEY_DER, 0.0, rng=rng, resumed_device_id="ff" * 12)
    with pytest.raises(RemoteProtocolError) as caught:
        conn.receive_message(udp_hello(), 0.0)
    assert caught.value.reason is Reason.KEY_MISMATCH


def test_a_hello_within_a_session_is_acked_and_reported() -> None:
    conn = connected()
    conn.receive_message(udp_hello(0x55), 3.0)
    assert conn.messages_to_send(3.0) == [bytes.fromhex("60000055")]
    assert [type(e) for e in events(conn)] == [HelloReceived]
