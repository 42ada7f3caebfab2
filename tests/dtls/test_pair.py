"""A device-role endpoint and a server endpoint over an in-memory wire: the handshake of Particle's profile,
application data both ways, connection ids, resumption, and what loss, duplication and reordering do."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyan.dtls import (
    AlertReceived,
    ApplicationDataReceived,
    ClientConfig,
    ClientEndpoint,
    ConnectionClosed,
    ConnectionFailed,
    DeviceKeyPresented,
    HandshakeCompleted,
    LocalDtlsError,
    MoveSession,
    Reason,
    RecordDiscarded,
    RemoteDtlsError,
    ServerConfig,
    ServerEndpoint,
    State,
    Step,
    connection_id_of,
    is_client_hello,
    move_device_id_of,
    session_opens,
)
from cyan.dtls._crypto import spki_of

from .support import DEVICE_KEY, OTHER_KEY, SERVER_KEY, Faults, Wire, seeded


def exchange(wire: Wire, count: int = 3) -> None:
    """Application data both ways, each record checked on arrival."""
    assert wire.server is not None
    for i in range(count):
        wire.client.send_application_data(b"up %d" % i, wire.now)
        wire.server.send_application_data(b"down %d" % i, wire.now)
    wire.run()
    # Sorted: a reordering wire may swap records; DTLS delivers them as they come (RFC 6347 §4.1.2.6).
    up = sorted(e.data for e in wire.events("s", ApplicationDataReceived))[-count:]
    down = sorted(e.data for e in wire.events("c", ApplicationDataReceived))[-count:]
    assert up == [b"up %d" % i for i in range(count)]
    assert down == [b"down %d" % i for i in range(count)]


def test_full_handshake_with_cookie_raw_keys_and_a_connection_id() -> None:
    wire = Wire()
    wire.handshake()
    assert wire.server is not None
    (presented,) = wire.events("s", DeviceKeyPresented)
    assert presented.public_key_der == spki_of(DEVICE_KEY.public_key())
    (server_done,) = wire.events("s", HandshakeCompleted)
    (client_done,) = wire.events("c", HandshakeCompleted)
    assert server_done.peer_public_key_der == spki_of(DEVICE_KEY.public_key())
    assert client_done.peer_public_key_der == spki_of(SERVER_KEY.public_key())
    # udp-dtls.md §1.3: an 8-byte server-assigned CID, the same on both sides.
    assert len(server_done.connection_id) == 8
    assert client_done.connection_id == server_done.connection_id
    assert server_done.session.master_secret == client_done.session.master_secret
    # The device's first ClientHello had no cookie and got a HelloVerifyRequest: four datagrams to the
    # server in all (ClientHello twice, the client flight, nothing else) and the server made one endpoint.
    assert len(wire.delivered_to_server) == 2
    exchange(wire)


def test_records_to_the_server_carry_the_cid_and_records_to_the_device_none() -> None:
    wire = Wire()
    wire.handshake()
    assert wire.server is not None
    wire.client.send_application_data(b"ping", wire.now)
    wire.server.send_application_data(b"pong", wire.now)
    (up,) = wire.client.datagrams_to_send()
    (down,) = wire.server.datagrams_to_send()
    assert up[0] == 25
    assert connection_id_of(up) == wire.server.connection_id
    assert down[0] == 23  # the device's own CID is empty (CID_IN_LEN_MAX 0)
    wire.server.receive_datagram(up, wire.now)
    wire.client.receive_datagram(down, wire.now)
    assert wire.server.next_event() == ApplicationDataReceived(b"ping")
    assert wire.client.next_event() == ApplicationDataReceived(b"pong")


def test_without_the_cid_extension_records_are_plain_and_a_strict_server_refuses() -> None:
    wire = Wire(client_config=ClientConfig(offer_connection_id=False))
    wire.handshake()
    assert wire.server is not None
    assert wire.server.connection_id == b""
    wire.client.send_application_data(b"x", wire.now)
    assert wire.client.datagrams_to_send()[0][0] == 23

    strict = Wire(
        client_config=ClientConfig(offer_connection_id=False), server_config=ServerConfig(require_connection_id=True)
    )
    strict.run()
    (error,) = strict.server_errors
    assert (error.step, error.reason) == (Step.CLIENT_HELLO, Reason.UNSUPPORTED_EXTENSION)
    assert strict.events("c", AlertReceived)
    assert strict.client.state is State.CLOSED


def test_the_device_rejects_a_server_holding_another_key() -> None:
    wire = Wire(pinned_key=OTHER_KEY.public_key())
    wire.run()
    (error,) = wire.client_errors
    assert (error.step, error.reason) == (Step.SERVER_FLIGHT, Reason.BAD_SIGNATURE)
    assert wire.client.failure is not None
    assert wire.client.failure.reason is Reason.BAD_SIGNATURE
    # The fatal alert reaches the server, which fails too.
    (failed,) = wire.events("s", ConnectionFailed)
    assert failed.reason is Reason.ALERT_RECEIVED


def test_reject_sends_access_denied_and_both_sides_fail() -> None:
    wire = Wire(auto_accept=False)
    wire.run(lambda: wire.server is not None and wire.server.state is State.AWAIT_DECISION)
    assert wire.server is not None
    assert wire.server.state is State.AWAIT_DECISION
    assert wire.server.step is Step.DECISION
    wire.server.reject(Reason.UNKNOWN_DEVICE, wire.now)
    wire.run()
    (failed,) = wire.events("s", ConnectionFailed)
    assert (failed.step, failed.reason) == (Step.DECISION, Reason.UNKNOWN_DEVICE)
    assert wire.events("c", AlertReceived) == [AlertReceived(2, 49)]
    assert wire.events("c", ConnectionFailed)[0].reason is Reason.ALERT_RECEIVED


def test_no_decision_in_time_fails_with_decision_timeout() -> None:
    wire = Wire(auto_accept=False, server_config=ServerConfig(decision_timeout=5.0))
    wire.run(lambda: wire.server is not None and wire.server.state is State.AWAIT_DECISION)
    assert wire.server is not None
    start = wire.now
    wire.run(lambda: wire.server is not None and wire.server.closed)
    (failed,) = wire.events("s", ConnectionFailed)
    assert failed.reason is Reason.DECISION_TIMEOUT
    assert wire.now - start == pytest.approx(5.0)


def test_close_notify_ends_the_session_on_the_other_side() -> None:
    wire = Wire()
    wire.handshake()
    wire.client.close(wire.now)
    wire.run()
    assert wire.server is not None
    assert wire.server.closed
    assert wire.events("s", ConnectionClosed) == [ConnectionClosed()]


def test_tampered_replayed_and_misaddressed_records_are_discarded_not_fatal() -> None:
    wire = Wire()
    wire.handshake()
    server = wire.server
    assert server is not None
    wire.client.send_application_data(b"once", wire.now)
    (record,) = wire.client.datagrams_to_send()
    tampered = record[:-1] + bytes([record[-1] ^ 1])
    other_cid = record[:11] + bytes(8) + record[19:]
    for datagram in (tampered, record, record, other_cid, b"\x19\xfe\xfd" + bytes(30)):
        server.receive_datagram(datagram, wire.now)
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    assert events[1] == ApplicationDataReceived(b"once")
    reasons = [e.reason for e in events if isinstance(e, RecordDiscarded)]
    assert reasons[:3] == [Reason.DECRYPT_FAILED, Reason.REPLAYED, Reason.UNKNOWN_CONNECTION_ID]
    assert all(isinstance(e, RecordDiscarded) for e in events[2:])
    assert len(events) >= 5
    assert server.established


def test_resume_with_no_handshake_from_exported_sessions_alt_cid() -> None:
    """Device OS ≥ 4.0 (udp-dtls.md §1.4): the restored device sends CID records as type 253 until it
    receives data; a server restored from the exported session reads them."""
    wire = Wire()
    wire.handshake()
    exchange(wire, 2)
    assert wire.server is not None
    server_session = wire.server.export_session()
    client_session = wire.client.export_session()
    server = ServerEndpoint.from_session(server_session, SERVER_KEY, now=wire.now, random_bytes=seeded(7))
    client = ClientEndpoint.resume(
        client_session, DEVICE_KEY, now=wire.now, random_bytes=seeded(8), move=MoveSession.ALT_CID
    )
    client.send_application_data(b"I moved", wire.now)
    (datagram,) = client.datagrams_to_send()
    assert datagram[0] == 253
    assert connection_id_of(datagram) == server.connection_id
    server.receive_datagram(datagram, wire.now)
    assert server.next_event() == ApplicationDataReceived(b"I moved", moved=True)
    server.send_application_data(b"welcome back", wire.now)
    for d in server.datagrams_to_send():
        client.receive_datagram(d, wire.now)
    assert client.next_event() == ApplicationDataReceived(b"welcome back")
    client.send_application_data(b"settled", wire.now)
    (datagram,) = client.datagrams_to_send()
    assert datagram[0] == 25  # move_session is cleared by the first data received


def test_resume_with_no_handshake_type_254_for_device_os_2() -> None:
    """Device OS ≤ 2.x has no CID: application data goes as type 254 with the device id appended."""
    wire = Wire(client_config=ClientConfig(offer_connection_id=False))
    wire.handshake()
    assert wire.server is not None
    device_id = bytes.fromhex("e00fce68a1b2c3d4e5f60718")
    server = ServerEndpoint.from_session(wire.server.export_session(), SERVER_KEY, now=wire.now, random_bytes=seeded(7))
    client = ClientEndpoint.resume(
        wire.client.export_session(),
        DEVICE_KEY,
        now=wire.now,
        random_bytes=seeded(8),
        move=MoveSession.DEVICE_ID,
        device_id=device_id,
    )
    client.send_application_data(b"hello again", wire.now)
    (datagram,) = client.datagrams_to_send()
    assert datagram[0] == 254
    assert datagram[-13:] == device_id + b"\x0c"
    assert move_device_id_of(datagram) == device_id
    server.receive_datagram(datagram, wire.now)
    assert server.next_event() == ApplicationDataReceived(b"hello again", moved=True)


def test_a_listener_picks_the_session_a_type_254_record_opens_under_without_changing_it() -> None:
    """A 254 record names a device, not a session: `session_opens` says which session it authenticates under,
    and refuses a forgery, a replay (by the session's saved window) and a session of another handshake."""
    device_id = bytes.fromhex("e00fce68a1b2c3d4e5f60718")
    sessions = []
    for seed in range(2):
        wire = Wire(seed, client_config=ClientConfig(offer_connection_id=False))
        wire.handshake()
        assert wire.server is not None
        sessions.append((wire.server.export_session(), wire.client.export_session(), wire.now))
    (server_session, client_session, now), (other_session, _, _) = sessions
    client = ClientEndpoint.resume(
        client_session, DEVICE_KEY, now=now, random_bytes=seeded(8), move=MoveSession.DEVICE_ID, device_id=device_id
    )
    client.send_application_data(b"moved", now)
    (datagram,) = client.datagrams_to_send()
    assert session_opens(server_session, datagram)
    assert session_opens(server_session, datagram)  # nothing marked: the endpoint still opens it next
    assert not session_opens(other_session, datagram)
    forged = datagram[:30] + bytes([datagram[30] ^ 1]) + datagram[31:]
    assert not session_opens(server_session, forged)
    assert not session_opens(server_session, b"\xfe" + bytes(60) + device_id + b"\x0c")
    # A record the saved window has seen: a replay.
    top = int.from_bytes(datagram[5:11], "big")
    seen = dataclasses.replace(server_session, read_top=top, read_bitmap=1)
    assert not session_opens(seen, datagram)


def test_a_restored_server_continues_sequence_numbers_the_device_accepts() -> None:
    wire = Wire()
    wire.handshake()
    exchange(wire, 3)
    assert wire.server is not None
    server = ServerEndpoint.from_session(wire.server.export_session(), SERVER_KEY, now=wire.now, random_bytes=seeded(7))
    server.send_application_data(b"after restart", wire.now)
    for datagram in server.datagrams_to_send():
        wire.client.receive_datagram(datagram, wire.now)
    assert wire.client.next_event() == ApplicationDataReceived(b"after restart")


def test_abbreviated_handshake_resumes_a_session_with_fresh_keys() -> None:
    first = Wire()
    first.handshake()
    assert first.server is not None
    server_session = first.server.export_session()
    client_session = first.client.export_session()
    wire = Wire(seed=5, client_session=client_session, resumable=server_session)
    wire.handshake()
    (server_done,) = wire.events("s", HandshakeCompleted)
    (client_done,) = wire.events("c", HandshakeCompleted)
    assert server_done.resumed
    assert client_done.resumed
    assert not wire.events("s", DeviceKeyPresented)
    assert server_done.session.master_secret == server_session.master_secret
    assert server_done.session.server_random != server_session.server_random
    assert client_done.peer_public_key_der == spki_of(SERVER_KEY.public_key())
    exchange(wire)


def test_a_session_the_server_does_not_hold_falls_back_to_a_full_handshake() -> None:
    first = Wire()
    first.handshake()
    wire = Wire(seed=6, client_session=first.client.export_session())
    wire.handshake()
    assert not wire.events("c", HandshakeCompleted)[0].resumed
    assert wire.events("s", DeviceKeyPresented)


@pytest.mark.parametrize(("direction", "index"), [("s", 0), ("s", 1), ("s", 2), ("c", 0), ("c", 1), ("c", 2)])
def test_any_single_lost_datagram_is_recovered_by_retransmission(direction: str, index: int) -> None:
    wire = Wire(faults=Faults(drop={(direction, index)}))
    wire.handshake()
    exchange(wire, 1)


def test_lost_final_flight_is_resent_when_the_device_resends_its_own() -> None:
    # Server datagrams: 0 HelloVerifyRequest, 1 server flight, 2 ChangeCipherSpec + Finished.
    wire = Wire(faults=Faults(drop={("s", 2)}))
    wire.run(lambda: wire.server is not None and wire.server.established)
    assert not wire.client.established
    start = wire.now
    wire.handshake()
    assert wire.now - start == pytest.approx(3.0)  # the device's first retransmission timer


def test_an_unanswered_device_gives_up_after_its_retransmissions() -> None:
    client = ClientEndpoint(DEVICE_KEY, SERVER_KEY.public_key(), now=0.0, random_bytes=seeded(1))
    sent_at: list[float] = []
    now = 0.0
    while not client.closed:
        if client.datagrams_to_send():
            sent_at.append(now)
        timer = client.get_timer()
        if timer is None:
            break
        now = timer
        client.handle_timer(now)
    # Device OS: 3 s doubling up to 24 s (udp-dtls.md §1.1); then it gives up.
    assert sent_at == [0.0, 3.0, 9.0, 21.0, 45.0]
    assert now == 69.0
    failed = client.next_event()
    assert isinstance(failed, ConnectionFailed)
    assert (failed.step, failed.reason) == (Step.CLIENT_HELLO, Reason.TIMEOUT)


def test_fragmented_flights_in_any_order() -> None:
    config = ServerConfig(max_datagram_size=90)
    wire = Wire(
        seed=3, server_config=config, client_config=ClientConfig(max_datagram_size=90), faults=Faults(reorder=1.0)
    )
    wire.handshake()
    # Every handshake message is fragmented to fit, except the ClientHello, which never is.
    assert all(len(d) <= 90 for d in wire.delivered_to_server if not is_client_hello(d))
    exchange(wire)


@pytest.mark.parametrize("seed", range(12))
def test_loss_duplication_and_reordering_still_deliver_each_record_once(seed: int) -> None:
    wire = Wire(seed=seed, faults=Faults(loss=0.05, duplicate=0.3, reorder=0.3))
    wire.handshake()
    assert wire.server is not None
    sent = [b"record %d" % i for i in range(60)]
    for payload in sent:
        wire.client.send_application_data(payload, wire.now)
        wire.server.send_application_data(payload, wire.now)
        wire.collect()
    wire.run()
    for side in ("s", "c"):
        received = [e.data for e in wire.events(side, ApplicationDataReceived)]
        assert len(received) == len(set(received)), "a record was delivered twice"
        assert set(received) <= set(sent)
        # DTLS does not resend application data: what 5 % loss takes is gone, the rest arrives once.
        assert len(received) >= len(sent) * 0.8


def test_datagrams_stay_within_the_configured_size() -> None:
    wire = Wire(server_config=ServerConfig(max_datagram_size=200), client_config=ClientConfig(max_datagram_size=200))
    wire.handshake()
    assert all(len(d) <= 200 for d in wire.delivered_to_server)


def test_misuse_is_a_local_error() -> None:
    wire = Wire()
    with pytest.raises(LocalDtlsError):
        wire.client.send_application_data(b"too early", wire.now)
    with pytest.raises(LocalDtlsError):
        wire.client.export_session()
    wire.handshake()
    assert wire.server is not None
    with pytest.raises(LocalDtlsError):
        wire.server.accept(wire.now)
    with pytest.raises(LocalDtlsError):
        wire.client.send_application_data(bytes(20000), wire.now)


def test_remote_error_carries_step_and_reason() -> None:
    error = RemoteDtlsError("x", step=Step.FINISHED, reason=Reason.BAD_FINISHED)
    assert "bad_finished" in repr(error)
    assert error.step is Step.FINISHED


def test_a_flood_of_junk_is_counted_not_queued_without_bound() -> None:
    wire = Wire()
    wire.handshake()
    server = wire.server
    assert server is not None
    for i in range(500):
        server.receive_datagram(b"\x17\xfe\xfd\x00\x01" + i.to_bytes(6, "big") + b"\x00\x10" + bytes(16), wire.now)
    assert server.records_discarded == 500
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    assert len(events) == server.config.max_queued_discards
    assert server.established


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1 << 16), size=st.integers(60, 400), duplicate=st.floats(0, 0.5))
def test_any_fragmentation_order_and_duplication_completes(seed: int, size: int, duplicate: float) -> None:
    """Flights cut to any datagram size, every datagram shuffled into the queue, copies on top: the
    reassembly of RFC 6347 §4.2.2 still yields each message once, in order."""
    wire = Wire(
        seed=seed,
        server_config=ServerConfig(max_datagram_size=size),
        client_config=ClientConfig(max_datagram_size=size),
        faults=Faults(reorder=0.8, duplicate=duplicate),
    )
    wire.handshake()
    assert len(wire.events("s", DeviceKeyPresented)) == 1
    assert len(wire.events("c", HandshakeCompleted)) == 1
    exchange(wire, 2)


def test_the_cookie_check_names_the_client_random_of_a_retransmitted_hello() -> None:
    wire = Wire(faults=Faults(drop={("s", 1)}))  # the server flight is lost: the device resends its hello
    wire.run(lambda: wire.sent["c"] >= 3)
    assert wire.server is not None
    resent = wire.delivered_to_server[-1]
    assert is_client_hello(resent)
    check = wire.cookies.check(resent, b"198.51.100.7:5684", wire.now)
    assert check.verified
    assert check.client_random == wire.server.client_random  # the same handshake: feed the endpoint
