"""The server-side analysis on records built by hand: explanations, loops, unidentified groups and their
relation to the devices last seen at an address, and the doctor's report."""

from __future__ import annotations

from datetime import timedelta

from diagnose_support import DEVICE, OTHER, T0, attempt, backoff_times, connected, device

from cyan.cloud.models import AttemptOutcome
from cyan.diagnose import REASONS, build_doctor, explain_attempt, find_loops, group_unidentified, host_of
from cyan.diagnose.server_evidence import attempt_from_json, attempt_json, parse_time
from cyan.dtls import Reason as DtlsReason
from cyan.protocol import Reason

#: The reasons a server records (docs/protocol.md "Failures: step and reason"); the others are the device role's.
SERVER_REASONS = {
    "nonce_mismatch",
    "malformed_identity",
    "nonce_timeout",
    "closed_by_peer",
    "unknown_device",
    "key_mismatch",
    "key_rejected",
    "identity_timeout",
    "session_key_rejected",
    "server_error",
    "hello_timeout",
    "bad_frame_length",
    "decrypt_failed",
    "malformed_message",
    "unexpected_message",
    "idle_timeout",
    "missing_request_token",
    "unsupported_code",
}


def test_every_failure_reason_of_the_server_is_explained() -> None:
    assert {r.value for r in Reason} >= SERVER_REASONS
    assert set(REASONS) >= SERVER_REASONS
    for info in REASONS.values():
        assert info.said
        assert info.fix


def test_every_dtls_failure_the_udp_server_records_is_explained() -> None:
    # Record-layer reasons discard a record and end nothing, and a missing cookie is answered statelessly, so
    # none of them is ever an attempt's reason.
    discards = {"bad_record", "decrypt_failed", "replayed", "unknown_connection_id", "unexpected_epoch", "bad_cookie"}
    recorded = {r.value for r in DtlsReason} - discards
    assert set(REASONS) >= recorded


def test_explain_attempt() -> None:
    body = explain_attempt(attempt(0, "key_mismatch", device=DEVICE, step="identity", presented="SHA256:new"))
    assert (body["entry"], body["cause"], body["host"]) == ("C5", "amnesia", "198.51.100.7")
    assert "presented a public key" in body["said"]
    ok = explain_attempt(connected(0, DEVICE))
    assert (ok["entry"], ok["reason"], ok["outcome"]) == (None, None, "connected")
    odd = explain_attempt(attempt(0, "quarantined_forever", device=DEVICE))
    assert odd["entry"] is None
    assert "quarantined_forever" in odd["said"]


def test_attempt_json_round_trip() -> None:
    original = attempt(3.5, "nonce_mismatch", presented=None)
    assert attempt_from_json(attempt_json(original)) == original
    assert parse_time("2026-03-01T12:00:00Z") == T0
    assert parse_time("2026-03-01T12:00:00") == T0


def test_host_of() -> None:
    assert host_of("198.51.100.7:40001") == "198.51.100.7"
    assert host_of("[2001:db8::1]:5683") == "2001:db8::1"
    assert host_of("2001:db8::1:40001") == "2001:db8::1"  # as the device server writes IPv6 peers
    assert host_of("") == ""
    assert host_of(None) == ""


def test_a_device_in_a_handshake_loop() -> None:
    times = backoff_times(20)
    records = [attempt(t, "key_mismatch", device=DEVICE, step="identity") for t in times]
    (loop,) = find_loops(records, now=records[-1].started_at + timedelta(seconds=5))
    assert (loop.device_id, loop.reason, loop.count, loop.entry, loop.cause) == (
        DEVICE,
        "key_mismatch",
        20,
        "C5",
        "amnesia",
    )
    assert loop.backoff_like  # 1 s, 2 s, 4 s, 8 s as the firmware's backoff (protocol.md §8.3)
    assert loop.ongoing
    later = find_loops(records, now=records[-1].started_at + timedelta(hours=2))
    assert not later[0].ongoing


def test_a_loop_that_a_success_ended_is_not_ongoing() -> None:
    records = [attempt(t, "key_mismatch", device=DEVICE) for t in range(0, 50, 10)]
    records.append(connected(60, DEVICE))
    (loop,) = find_loops(records, now=T0 + timedelta(seconds=70))
    assert not loop.ongoing


def test_no_loop_below_the_threshold_or_with_long_pauses() -> None:
    few = [attempt(t, "key_mismatch", device=DEVICE) for t in (0, 10, 20, 30)]
    assert find_loops(few, now=T0) == []
    apart = [attempt(t * 3600, "key_mismatch", device=DEVICE) for t in range(6)]
    assert find_loops(apart, now=T0) == []
    assert len(find_loops(few, now=T0, min_failures=3)) == 1


def test_loops_are_per_reason_and_per_address_when_unidentified() -> None:
    records = [attempt(t, "nonce_mismatch", peer=f"203.0.113.9:{4000 + t}") for t in range(0, 100, 10)]
    records += [attempt(t, "nonce_timeout", peer="203.0.113.9:1") for t in range(0, 20, 10)]
    records += [attempt(t, "nonce_mismatch", peer=f"192.0.2.1:{t}") for t in range(0, 50, 10)]
    loops = find_loops(records, now=T0)
    assert {(loop.host, loop.reason, loop.count) for loop in loops} == {
        ("203.0.113.9", "nonce_mismatch", 10),
        ("192.0.2.1", "nonce_mismatch", 5),
    }


def test_reconnect_churn() -> None:
    records = [connected(t, DEVICE) for t in range(0, 300, 30)]
    (loop,) = find_loops(records, now=T0 + timedelta(seconds=300))
    assert (loop.reason, loop.entry, loop.count) == ("reconnect_churn", "C12", 10)


def test_unidentified_attempts_are_grouped_by_address_and_time() -> None:
    records = [attempt(t, "nonce_mismatch", peer=f"198.51.100.7:{5000 + t}") for t in range(0, 600, 60)]
    records += [attempt(7200 + t, "nonce_mismatch", peer="198.51.100.7:6000") for t in range(0, 30, 10)]
    records += [attempt(100, "nonce_timeout", peer="192.0.2.50:1")]
    records += [attempt(50, "key_mismatch", device=DEVICE)]  # identified: not grouped
    groups = group_unidentified(records, [])
    assert [(g.host, g.count, g.loop) for g in groups] == [
        ("198.51.100.7", 3, False),  # the newest episode first; two hours of quiet split the address's attempts
        ("198.51.100.7", 10, True),
        ("192.0.2.50", 1, False),
    ]
    assert groups[1].reasons == {"nonce_mismatch": 10}
    assert (groups[1].entry, groups[1].cause) == ("C5", "wrong_server_key")
    assert (groups[2].entry, groups[2].cause) == ("C4", "stalled")


def test_unidentified_attempts_are_related_to_devices_last_seen_there() -> None:
    quiet = device(DEVICE, last_heard=T0 - timedelta(hours=3))
    online = device(OTHER, name="garage", online=True, last_heard=T0)
    elsewhere = device("aaaaaaaaaaaaaaaaaaaaaaaa", name="far", last_address="192.0.2.1:1")
    later = device("bbbbbbbbbbbbbbbbbbbbbbbb", name="later", last_heard=T0 + timedelta(hours=1))
    records = [attempt(t, "nonce_mismatch") for t in range(0, 60, 10)]
    records.append(attempt(-600, "unknown_device", device="cccccccccccccccccccccccc"))  # named itself from there
    (group,) = group_unidentified(records, [quiet, online, elsewhere, later])
    found = {c.device_id: c.likelihood for c in group.candidates}
    assert found == {
        DEVICE: "likely",  # went quiet there before the failures began
        "bbbbbbbbbbbbbbbbbbbbbbbb": "possible",
        "cccccccccccccccccccccccc": "possible",
        OTHER: "unlikely",  # connected from there right now
    }
    assert group.candidates[0].device_id == DEVICE
    assert "before these attempts began" in group.candidates[0].relation


def test_doctor_amnesia() -> None:
    records = [connected(-3600, DEVICE)] + [
        attempt(t, "key_mismatch", device=DEVICE, step="identity", presented="SHA256:new", stored="SHA256:old")
        for t in backoff_times(12)
    ]
    report = build_doctor(DEVICE, device(), records, now=T0 + timedelta(minutes=2))
    assert report.status == "failing"
    finding = report.findings[0]
    assert (finding.entry, finding.cause, finding.confidence) == ("C5", "amnesia", "confirmed")
    assert any("SHA256:new" in e and "SHA256:old" in e for e in finding.evidence)
    assert report.loops
    assert report.loops[0].ongoing
    assert any(s.startswith("Loop:") for s in report.said)
    assert report.todo == [finding.fix]
    body = report.to_json()
    assert body["counts"] == {"attempts": 13, "connected": 1, "failed": 12, "by_reason": {"key_mismatch": 12}}


def test_doctor_wrong_server_key_found_through_the_address() -> None:
    mine = [connected(-7200, DEVICE)]
    unidentified = [attempt(t, "nonce_mismatch") for t in backoff_times(8)]
    unidentified += [attempt(30, "nonce_mismatch", peer="192.0.2.99:1")]  # another address: not this device
    report = build_doctor(DEVICE, device(), mine, now=T0 + timedelta(minutes=1), unidentified=unidentified)
    assert report.status == "failing"
    (group,) = report.unidentified
    assert (group.host, group.count) == ("198.51.100.7", 8)
    finding = report.findings[0]
    assert (finding.entry, finding.cause, finding.confidence) == ("C5", "wrong_server_key", "likely")


def test_doctor_ignores_unidentified_attempts_from_before_the_device_went_quiet() -> None:
    mine = [connected(100, DEVICE)]
    unidentified = [attempt(t, "nonce_mismatch") for t in range(0, 50, 10)]  # before its last success
    report = build_doctor(DEVICE, device(online=True), mine, now=T0 + timedelta(minutes=5), unidentified=unidentified)
    assert report.unidentified == []
    assert report.status == "online"


def test_doctor_session_key_rejected_and_hello_timeout() -> None:
    records = [attempt(t, "session_key_rejected", device=DEVICE, step="hello") for t in range(0, 30, 10)]
    report = build_doctor(DEVICE, device(), records, now=T0)
    assert (report.findings[0].entry, report.findings[0].cause) == ("C6", "corrupt_private_key")
    records = [attempt(t, "hello_timeout", device=DEVICE, step="hello") for t in range(0, 30, 10)]
    assert build_doctor(DEVICE, device(), records, now=T0).findings[0].entry == "C8"


def test_doctor_silent_never_seen_and_unregistered() -> None:
    silent = build_doctor(DEVICE, device(), [], now=T0)
    assert silent.status == "silent"
    assert silent.findings[0].entry is None
    assert "C11" in silent.findings[0].related
    never = build_doctor(DEVICE, device(last_heard=None, last_address=None), [], now=T0)
    assert never.status == "never_seen"
    unknown = build_doctor(OTHER, None, [attempt(0, "unknown_device", device=OTHER, step="identity")], now=T0)
    assert unknown.status == "failing"
    assert (unknown.findings[0].entry, unknown.findings[0].cause) == ("C5", "unknown_device")
    assert unknown.said[0].endswith("is not registered on this server.")
    nothing = build_doctor(OTHER, None, [], now=T0)
    assert nothing.status == "unregistered"


def test_doctor_churn() -> None:
    records = [connected(t, DEVICE) for t in range(0, 600, 60)]
    report = build_doctor(DEVICE, device(online=True), records, now=T0 + timedelta(minutes=10))
    assert report.status == "online"
    assert [f.entry for f in report.findings] == ["C12"]


def test_doctor_only_counts_its_own_attempts() -> None:
    records = [attempt(0, "key_mismatch", device=OTHER), attempt(0, "nonce_mismatch"), connected(5, DEVICE)]
    report = build_doctor(DEVICE, device(), records, now=T0)
    assert [a.device_id for a in report.attempts] == [DEVICE]
    assert report.attempts[0].outcome is AttemptOutcome.CONNECTED


def test_a_device_that_named_itself_meanwhile_is_not_the_unidentified_one() -> None:
    records = [attempt(t, "nonce_mismatch") for t in range(0, 60, 10)]
    records += [attempt(t + 5, "key_mismatch", device=DEVICE, step="identity") for t in range(0, 60, 10)]
    (group,) = group_unidentified(records, [device(DEVICE), device(OTHER, name="garage")])
    assert {c.device_id: c.likelihood for c in group.candidates} == {DEVICE: "unlikely", OTHER: "likely"}
    report = build_doctor(DEVICE, device(), records, now=T0 + timedelta(minutes=2), unidentified=records)
    assert any("probably from another device" in s for s in report.said)
    assert [f.entry for f in report.findings] == ["C5"]
    assert report.findings[0].cause == "amnesia"
