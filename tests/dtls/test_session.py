"""Sessions: the export round-trips, an imported export behaves exactly as the endpoint it came from, and
no CCM nonce (epoch, sequence number) is ever used twice under one key — across retransmissions, loss,
and an export/import with a process that kept sending after its last export."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyan.dtls import (
    DEFAULT_SEQUENCE_GAP,
    ApplicationDataReceived,
    ClientEndpoint,
    Event,
    ServerEndpoint,
    Session,
)
from cyan.dtls._wire import parse_records

from .support import DEVICE_KEY, SERVER_KEY, Faults, Wire, seeded

_HYPOTHESIS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _established(seed: int = 0) -> Wire:
    wire = Wire(seed=seed)
    wire.handshake()
    return wire


def _drain(endpoint: ServerEndpoint | ClientEndpoint) -> list[Event]:
    events = []
    while (event := endpoint.next_event()) is not None:
        events.append(event)
    return events


sessions = st.builds(
    Session,
    role=st.sampled_from(["server", "client"]),
    session_id=st.binary(max_size=32),
    master_secret=st.binary(min_size=48, max_size=48),
    client_random=st.binary(min_size=32, max_size=32),
    server_random=st.binary(min_size=32, max_size=32),
    connection_id=st.binary(max_size=16),
    epoch=st.integers(0, 0xFFFF),
    write_sequence=st.integers(0, 1 << 48),
    read_top=st.integers(-1, (1 << 48) - 1),
    read_bitmap=st.integers(0, (1 << 64) - 1),
    peer_public_key_der=st.binary(max_size=120),
)


@given(sessions)
def test_a_session_round_trips_through_its_encoding(session: Session) -> None:
    assert Session.decode(session.encode()) == session


@given(st.binary(max_size=300))
def test_decoding_junk_raises_value_error_only(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        Session.decode(data)


operations = st.lists(st.tuples(st.sampled_from(["up", "down", "replay", "junk"]), st.binary(max_size=64)), max_size=24)


@_HYPOTHESIS
@given(before=operations, after=operations)
def test_an_imported_export_behaves_identically(
    before: list[tuple[str, bytes]], after: list[tuple[str, bytes]]
) -> None:
    wire = _established()
    server = wire.server
    assert server is not None
    client = wire.client
    _drain(server)
    sent_up: list[bytes] = []

    def up(payload: bytes) -> bytes:
        client.send_application_data(payload, wire.now)
        (datagram,) = client.datagrams_to_send()
        sent_up.append(datagram)
        return datagram

    for kind, payload in before:
        if kind == "up":
            server.receive_datagram(up(payload), wire.now)
        elif kind == "down":
            server.send_application_data(payload, wire.now)
            for datagram in server.datagrams_to_send():
                client.receive_datagram(datagram, wire.now)
        elif kind == "replay" and sent_up:
            server.receive_datagram(sent_up[len(payload) % len(sent_up)], wire.now)
    _drain(server)
    _drain(client)
    twin = ServerEndpoint.from_session(
        Session.decode(server.export_session().encode()),
        SERVER_KEY,
        now=wire.now,
        random_bytes=seeded(9),
        sequence_gap=0,
    )
    assert twin.export_session() == server.export_session()
    for kind, payload in after:
        if kind == "up" or (kind == "replay" and sent_up):
            datagram = up(payload) if kind == "up" else sent_up[len(payload) % len(sent_up)]
            server.receive_datagram(datagram, wire.now)
            twin.receive_datagram(datagram, wire.now)
        elif kind == "down":
            server.send_application_data(payload, wire.now)
            twin.send_application_data(payload, wire.now)
        elif kind == "junk":
            server.receive_datagram(b"\x19\xfe\xfd" + payload, wire.now)
            twin.receive_datagram(b"\x19\xfe\xfd" + payload, wire.now)
        assert twin.datagrams_to_send() == server.datagrams_to_send()
        assert _drain(twin) == _drain(server)
        assert twin.export_session() == server.export_session()


def _nonces(datagrams: list[bytes], cid_length: int) -> list[tuple[int, bytes]]:
    """(epoch, explicit nonce) of every encrypted record: the nonce is the fixed salt of the epoch's key and
    these 8 bytes (RFC 6655 §3), so a repeat under one epoch's key is a repeated CCM nonce."""
    found = []
    for datagram in datagrams:
        body = datagram[: -(datagram[-1] + 1)] if datagram[0] == 254 else datagram
        records, _ = parse_records(body, cid_length, max_fragment=1 << 16)
        for record in records:
            if record.epoch > 0:
                assert record.fragment[:8] == record.epoch.to_bytes(2, "big") + record.sequence.to_bytes(6, "big")
                found.append((record.epoch, record.fragment[:8]))
    return found


@pytest.mark.parametrize("seed", range(6))
def test_no_nonce_repeats_under_loss_retransmission_and_duplication(seed: int) -> None:
    wire = Wire(seed=seed, faults=Faults(loss=0.2, duplicate=0.2, reorder=0.2))
    sent: dict[str, list[bytes]] = {"c": [], "s": []}
    original_queue = wire._queue

    def recording(direction: str, datagrams: list[bytes]) -> None:
        sent[direction].extend(datagrams)
        original_queue(direction, datagrams)

    wire._queue = recording  # type: ignore[method-assign]
    wire.handshake()
    assert wire.server is not None
    for i in range(20):
        wire.client.send_application_data(b"%d" % i, wire.now)
        wire.server.send_application_data(b"%d" % i, wire.now)
    wire.run()
    for direction, cid_length in (("c", 8), ("s", 0)):
        nonces = _nonces(sent[direction], cid_length)
        assert len(nonces) == len(set(nonces))


@_HYPOTHESIS
@given(before=st.integers(0, 20), lost=st.integers(0, 50), after=st.integers(0, 20))
def test_an_import_after_a_lost_process_never_reuses_a_nonce(before: int, lost: int, after: int) -> None:
    """A process exports, sends `lost` more records, dies; another imports the stale export with the
    default gap and carries on: every record of both still has its own nonce."""
    wire = _established()
    server = wire.server
    assert server is not None
    datagrams: list[bytes] = []
    for i in range(before):
        server.send_application_data(b"b%d" % i, wire.now)
    datagrams += server.datagrams_to_send()
    stale = server.export_session()
    for i in range(lost):
        server.send_application_data(b"l%d" % i, wire.now)
    datagrams += server.datagrams_to_send()
    heir = ServerEndpoint.from_session(stale, SERVER_KEY, now=wire.now, random_bytes=seeded(3))
    for i in range(after):
        heir.send_application_data(b"a%d" % i, wire.now)
    heir_datagrams = heir.datagrams_to_send()
    datagrams += heir_datagrams
    nonces = _nonces(datagrams, 0)
    assert len(nonces) == len(set(nonces))
    # And the device, whose window saw the lost process's records, still takes the heir's.
    for datagram in datagrams[: len(datagrams) - len(heir_datagrams)] + heir_datagrams:
        wire.client.receive_datagram(datagram, wire.now)
    received = [e.data for e in _drain(wire.client) if isinstance(e, ApplicationDataReceived)]
    assert received[-after:] == [b"a%d" % i for i in range(after)] or after == 0
    assert stale.write_sequence + DEFAULT_SEQUENCE_GAP > stale.write_sequence + lost


def test_the_client_resumes_with_its_exact_counters_as_device_os_does() -> None:
    """Device OS saves the out-counter after every record (DO `SessionPersist::update`), so its resumed
    session continues where it stopped: no gap by default on the device side."""
    wire = _established()
    session = wire.client.export_session()
    resumed = ClientEndpoint.resume(session, DEVICE_KEY, now=wire.now, random_bytes=seeded(4))
    resumed.send_application_data(b"x", wire.now)
    (datagram,) = resumed.datagrams_to_send()
    assert int.from_bytes(datagram[5:11], "big") == session.write_sequence


def test_writes_stay_inside_the_block_of_sequence_numbers_reserved_for_this_process() -> None:
    # A server carrying on a session another process may also hold writes only in the block it reserved
    # (docs/dtls.md "Sessions"): never past its end, and never below its start.
    session = Session("server", b"", bytes(48), bytes(32), bytes(32), b"\x07" * 8, 1, 40, -1, 0, b"device key")
    endpoint = ServerEndpoint.from_session(session, SERVER_KEY, now=0.0, random_bytes=seeded(1), sequence_gap=0)
    endpoint.limit_writes(1000, 1002)
    assert (endpoint.next_write_sequence, endpoint.write_limit) == (1000, 1002)
    endpoint.send_application_data(b"one", 0.0)
    endpoint.send_application_data(b"two", 0.0)
    with pytest.raises(OverflowError):
        endpoint.send_application_data(b"three", 0.0)
    sent = [r.sequence for d in endpoint.datagrams_to_send() for r in parse_records(d, 0, max_fragment=1 << 16)[0]]
    assert sent == [1000, 1001]
    # A later block moves the counter forward, never back.
    endpoint.limit_writes(500, 3000)
    assert endpoint.next_write_sequence == 1002
    endpoint.send_application_data(b"four", 0.0)
    sent = [r.sequence for d in endpoint.datagrams_to_send() for r in parse_records(d, 0, max_fragment=1 << 16)[0]]
    assert sent == [1002]
