"""Real Device OS 4.0.2 (the gcc virtual device posing as an Argon) and 3.1.0 (gcc) kept their session while
the server was stopped and started again three times, replayed without the firmware.

tests/vectors/udp-restart-*/restart.session.jsonl were recorded with `scripts/record-udp-session` on one
data directory and UDP port: a full handshake and a call; the server stopped with SIGTERM and started again;
killed with SIGKILL and started again, twice; a call after each start. The device did one handshake in all:
each new server resumed the session it found in its store when the device's next record arrived on its
connection id. Replayed (each `start` entry a new server with the sessions it loaded), the server's cores must
send exactly the datagrams the device accepted, and no record number (hence no CCM nonce) twice.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from udp_replay import Recording, Replay, load_recording, replay

from cyan.dtls import DEFAULT_SEQUENCE_GAP, Session, connection_id_of, is_client_hello
from cyan.protocol import FunctionReturned, HelloReceived
from cyan.protocol.coap import Code, decode
from cyan.protocol.messages import parse_hello

ROOT = Path(__file__).resolve().parents[1] / "vectors"
VERSIONS = {"4.0.2": ROOT / "udp-restart-4.0.2", "3.1.0": ROOT / "udp-restart-3.1.0"}

Restart = tuple[Recording, Replay, Path]


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def restart(request: pytest.FixtureRequest) -> Restart:
    vectors = VERSIONS[str(request.param)]
    recording = load_recording(vectors, "restart")
    return recording, replay(recording), vectors


def _runs(recording: Recording) -> list[list[dict[str, object]]]:
    """The entries of each server's run, from its `start` on (the first run with the cookie draw before it)."""
    runs: list[list[dict[str, object]]] = [[]]
    for entry in recording.entries:
        if entry["op"] == "start" and any(e["op"] == "start" for e in runs[-1]):
            runs.append([])
        runs[-1].append(entry)
    return runs


def _record_numbers(datagram: bytes) -> list[tuple[int, int]]:
    numbers, offset = [], 0
    while offset + 13 <= len(datagram):
        numbers.append(
            (int.from_bytes(datagram[offset + 3 : offset + 5]), int.from_bytes(datagram[offset + 5 : offset + 11]))
        )
        offset += 13 + int.from_bytes(datagram[offset + 11 : offset + 13])
    return numbers


def test_the_servers_reproduce_every_datagram_the_device_accepted(restart: Restart) -> None:
    recording, replayed, _ = restart
    assert replayed.sent == recording.sent()


def test_one_handshake_for_four_servers_each_resuming_the_stored_session(restart: Restart) -> None:
    recording, replayed, _ = restart
    assert replayed.restarts == 3
    assert replayed.handshakes == 1
    assert replayed.resumptions == 3
    runs = _runs(recording)
    assert len(runs) == 4
    received = [[bytes.fromhex(str(e["hex"])) for e in run if e["op"] == "in"] for run in runs]
    assert any(is_client_hello(d) for d in received[0])
    cids = set()
    for later in received[1:]:
        assert later  # the device spoke to every server
        assert not any(is_client_hello(d) for d in later)
        cids |= {connection_id_of(d) for d in later}
    # Every record to a restarted server carries the connection id the first one assigned: the device never
    # noticed a restart, so plain CID records (type 25), not a move-session marking.
    (cid,) = cids
    assert cid is not None
    assert {d[0] for later in received[1:] for d in later} == {25}
    # Each restarted server loaded that session from its store.
    for run in runs[1:]:
        start = run[0]
        assert start["op"] == "start"
        sessions = start["sessions"]
        assert isinstance(sessions, list)
        assert [bytes.fromhex(s["cid"]) for s in sessions] == [cid]
        assert all(s["device_id"] == "0123456789abcdef01234567" for s in sessions)
    # One Hello from the device in all: each resumed session carries on with the one its store kept.
    hellos = [m for m in (decode(m) for m in replayed.messages_in) if m.code == Code.POST and m.uri_path == (b"h",)]
    assert len(hellos) == 1
    assert {e.hello for e in replayed.events if isinstance(e, HelloReceived)} == {parse_hello(hellos[0].payload or b"")}


def test_a_call_returned_through_every_server(restart: Restart) -> None:
    recording, replayed, _ = restart
    calls = [e["arg"] for e in recording.entries if e["op"] == "call"]
    assert calls == ["before", "after-sigterm", "after-kill", "after-kill-again"]
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert returns == [len(arg) for arg in calls]


def test_no_record_number_twice_across_the_restarts_sigterm_and_sigkill(restart: Restart) -> None:
    recording, _, _ = restart
    runs = _runs(recording)
    per_run = [
        [n for e in run if e["op"] == "out" for n in _record_numbers(bytes.fromhex(str(e["hex"]))) if n[0] == 1]
        for run in runs
    ]
    every = [n for numbers in per_run for n in numbers]
    assert len(every) == len(set(every))
    for earlier, later in itertools.pairwise(per_run):
        assert min(later) > max(earlier)
    loaded = [Session.decode(bytes.fromhex(run[0]["sessions"][0]["session"])) for run in runs[1:]]  # type: ignore[index]
    # After SIGTERM the first server saved its live counters: the second loaded the next number it would write.
    assert loaded[0].write_sequence == max(per_run[0])[1] + 1
    # After SIGKILL nothing was saved at the end: the heir loaded the save its predecessor made when it resumed
    # the session, whose counters had jumped, and jumped once more on import.
    assert loaded[1].write_sequence == loaded[0].write_sequence + DEFAULT_SEQUENCE_GAP
    assert loaded[2].write_sequence == loaded[1].write_sequence + DEFAULT_SEQUENCE_GAP
    assert min(per_run[2])[1] == loaded[1].write_sequence + DEFAULT_SEQUENCE_GAP


def test_the_firmware_did_one_handshake_and_dropped_no_record(restart: Restart) -> None:
    log = (restart[2] / "restart.device.log").read_text()
    assert log.count("Handshake completed") == 1
    assert log.count("Cloud connected") == 1
    assert "replayed record" not in log


def test_4_0_2_that_noticed_the_outage_resumes_on_the_restarted_server_from_a_new_port() -> None:
    # The server stopped (SIGTERM) for about 90 s: the device's confirmable heartbeat went unanswered, its
    # event loop failed (about 60 s) and it reconnected from a new socket with the saved session, twice; the
    # second time the new server was there and resumed the stored session (udp-dtls.md §1.4).
    vectors = VERSIONS["4.0.2"]
    recording = load_recording(vectors, "outage")
    replayed = replay(recording)
    assert replayed.sent == recording.sent()
    assert (replayed.restarts, replayed.handshakes, replayed.resumptions) == (1, 1, 1)
    first, second = _runs(recording)
    before = [bytes.fromhex(str(e["hex"])) for e in first if e["op"] == "in"]
    after = [bytes.fromhex(str(e["hex"])) for e in second if e["op"] == "in"]
    assert {e["port"] for e in first if e["op"] == "in"}.isdisjoint({e["port"] for e in second if e["op"] == "in"})
    assert not any(is_client_hello(d) for d in after)
    # Its move-session marking while the resumption is unconfirmed (type 253 from 4.0), then plain CID records.
    assert after[0][0] == 253
    assert after[-1][0] == 25
    cids = {connection_id_of(d) for d in before if d[0] == 25} | {connection_id_of(d) for d in after}
    assert len(cids) == 1
    calls = [str(e["arg"]) for e in recording.entries if e["op"] == "call"]
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert returns == [len(arg) for arg in calls] == [6, 12]
    log = (vectors / "outage.device.log").read_text()
    assert "Event loop error" in log
    assert log.count("cloud connected from existing session") == 2
    assert log.count("Handshake completed") == 1
    assert "replayed record" not in log


def test_3_1_0_that_noticed_the_outage_drops_its_session_and_handshakes_with_the_restarted_server() -> None:
    # The same outage under 3.1.0: its event loop failed on the unanswered heartbeat (error 3) and the
    # firmware discarded its session ("Discarding session data"), so the restarted server, started right
    # after, served it with a new full handshake, not a resumption.
    vectors = VERSIONS["3.1.0"]
    recording = load_recording(vectors, "outage")
    replayed = replay(recording)
    assert replayed.sent == recording.sent()
    assert (replayed.restarts, replayed.handshakes, replayed.resumptions) == (1, 2, 0)
    _, second = _runs(recording)
    assert any(is_client_hello(bytes.fromhex(str(e["hex"]))) for e in second if e["op"] == "in")
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert returns == [6, 12]
    log = (vectors / "outage.device.log").read_text()
    noticed = log.index("Event loop error 3")
    assert "Discarding session data" in log[noticed:]
    assert log.count("Handshake completed") == 2
