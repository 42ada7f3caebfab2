"""Real Device OS 2.3.1 over UDP (the gcc virtual device), replayed without the firmware: no connection id,
type-254 records with the device id after a reconnect, and a resume after a restart of the server.

tests/vectors/udp-2.3.1 holds two recordings of one device process: `good` (a full handshake, calls and reads,
then `cycle`: the session resumed from a new port), and `restart` (the server stopped and started again, then
the device's own reconnect: the session found in the store by the device id its records carry). Replayed with
the recorded time, randomness and (for `restart`) the store's sessions, the server's `DatagramServer` must send
exactly the datagrams the device accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from udp_replay import Recording, Replay, load_recording, replay

from cyan.dtls import DEFAULT_SEQUENCE_GAP, Session, is_client_hello, move_device_id_of
from cyan.dtls._wire import Extension, decode_client_hello, decode_server_hello, parse_handshake_fragments
from cyan.protocol import EventPublished, FunctionReturned, HelloReceived, PingReceived, VariableRead

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "udp-2.3.1"
DEVICE_ID = "0123456789abcdef01234567"


@pytest.fixture(scope="module", params=["good", "restart"])
def recorded(request: pytest.FixtureRequest) -> tuple[Recording, Replay]:
    recording = load_recording(VECTORS, str(request.param))
    return recording, replay(recording)


@pytest.fixture(scope="module")
def good() -> tuple[Recording, Replay]:
    recording = load_recording(VECTORS, "good")
    return recording, replay(recording)


@pytest.fixture(scope="module")
def restart() -> tuple[Recording, Replay]:
    recording = load_recording(VECTORS, "restart")
    return recording, replay(recording)


def _received(recording: Recording) -> list[tuple[int, bytes]]:
    return [(e["port"], bytes.fromhex(e["hex"])) for e in recording.entries if e["op"] == "in"]


def _handshake_body(datagram: bytes) -> bytes:
    # The first record's first handshake message (an epoch-0 record: 13-byte header, then the fragment).
    (fragment, *_) = parse_handshake_fragments(datagram[13 : 13 + int.from_bytes(datagram[11:13], "big")])
    return fragment.body


def test_the_server_reproduces_every_datagram_the_device_accepted(recorded: tuple[Recording, Replay]) -> None:
    recording, replayed = recorded
    assert replayed.sent == recording.sent()


def test_a_full_handshake_without_a_connection_id(good: tuple[Recording, Replay]) -> None:
    recording, replayed = good
    hellos = [d for _, d in _received(recording) if is_client_hello(d)]
    assert len(hellos) == 2  # without a cookie, then with it
    # Device OS 2.x offers no connection id (it came with 3.1, udp-dtls.md §1.3), and the server gives none.
    assert Extension.CONNECTION_ID not in decode_client_hello(_handshake_body(hellos[-1])).extensions
    server_hello = next(bytes.fromhex(h) for h in recording.sent() if bytes.fromhex(h)[13] == 2)
    assert Extension.CONNECTION_ID not in decode_server_hello(_handshake_body(server_hello)).extensions
    assert replayed.handshakes == 1
    hello = next(e for e in replayed.events if isinstance(e, HelloReceived)).hello
    assert hello.platform_id == 3  # gcc: no --platform_id before 4.0
    assert hello.system_version is None  # a 2.x Hello has no system fields


def test_calls_reads_and_events_came_through(good: tuple[Recording, Replay]) -> None:
    _, replayed = good
    reads = {e.name: e.raw for e in replayed.events if isinstance(e, VariableRead)}
    assert reads["lastArg"] == b"hello world"
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert returns[:1] == [11]  # setArg("hello world")
    events = [(e.name, e.data) for e in replayed.events if isinstance(e, EventPublished)]
    assert ("vdev/called", b"hello world") in events
    assert ("vdev/called", b"again") in events
    # Each once, although the firmware resends until acknowledged (its update-settings events it sends anew).
    ours = [e for e in events if e[0].startswith("vdev/")]
    assert len(ours) == len(set(ours))


def test_a_cloud_reconnect_resumes_in_type_254_records_from_a_new_port(good: tuple[Recording, Replay]) -> None:
    recording, replayed = good
    received = _received(recording)
    first_port = received[0][0]
    moved = [d for port, d in received if port != first_port]
    # Particle.disconnect() and connect(): another port, no ClientHello, application data as type 254 with the
    # 12-byte device id and its length appended (udp-dtls.md §1.4), until the first answer arrives.
    assert moved
    assert not any(is_client_hello(d) for d in moved)
    assert moved[0][0] == 254
    assert {move_device_id_of(d) for d in moved if d[0] == 254} == {bytes.fromhex(DEVICE_ID)}
    assert moved[-1][0] == 23  # plain application data once the server answered
    assert replayed.handshakes == 1
    assert replayed.resumptions == 0  # the live session moved: nothing was resumed
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert returns[-1] == 12  # cycleIn("12"), the last call before the restart
    assert 5 in returns  # setArg("again"), on the new port
    log = (VECTORS / "device.log").read_text()
    assert "Skipping HELLO message" in log
    assert "restoreStatus=0" in log


def test_after_a_restart_the_session_is_found_by_the_device_id(restart: tuple[Recording, Replay]) -> None:
    recording, replayed = restart
    received = [d for _, d in _received(recording)]
    assert not any(is_client_hello(d) for d in received)
    assert received[0][0] == 254
    assert replayed.handshakes == 0
    assert replayed.resumptions == 1
    assert sum(isinstance(e, PingReceived) for e in replayed.events) == 1  # instead of a Hello
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert returns == [13]  # setArg("after restart")
    # No nonce twice: the first record after the restart is numbered above everything the session's saved
    # counter says was sent, by the gap, in the block the store reserved.
    assert recording.stored is not None
    (stored,) = recording.stored
    saved = Session.decode(stored.session)
    assert saved.connection_id == b""
    first_out = bytes.fromhex(recording.sent()[0])
    assert first_out[0] == 23
    assert int.from_bytes(first_out[5:11], "big") == saved.write_sequence + DEFAULT_SEQUENCE_GAP
