"""The join of a device log with the server's records (pure: records built by hand)."""

from __future__ import annotations

from datetime import timedelta

from diagnose_support import DEVICE, LOGS, T0, attempt, causes, connected, device, recording

from cyan.diagnose import diagnose, group_unidentified, join

SINCE, UNTIL = T0 - timedelta(minutes=10), T0 + timedelta(minutes=10)


def test_key_mismatch_confirms_amnesia() -> None:
    result = diagnose(recording("device-os-3.1.0/drop_after_id").read_text())
    records = [
        attempt(t, "key_mismatch", device=DEVICE, step="identity", presented="SHA256:n", stored="SHA256:o")
        for t in range(5)
    ]
    verdict = join(result.analysis, records, [], device_id=DEVICE, since=SINCE, until=UNTIL)
    assert (verdict.entry, verdict.cause, verdict.confidence) == ("C5", "amnesia", "confirmed")
    assert any("SHA256:n" in e for e in verdict.evidence)
    joined = result.with_server(verdict)
    top = joined.findings[0]
    assert top.entry.id == "C5"
    assert top.causes[0].key == "amnesia"
    assert top.causes[0].likelihood == "confirmed"
    assert "server" in top.sources
    assert top.score == 0.99


def test_unidentified_nonce_mismatch_at_its_address_means_wrong_server_key() -> None:
    result = diagnose(recording("device-os-3.1.0/wrong_server_key").read_text())
    groups = group_unidentified([attempt(t, "nonce_mismatch") for t in range(0, 60, 5)], [device()])
    verdict = join(result.analysis, [], groups, device_id=DEVICE, since=SINCE, until=UNTIL)
    assert (verdict.entry, verdict.cause, verdict.confidence) == ("C5", "wrong_server_key", "likely")
    assert causes(result.with_server(verdict).findings[0])[0] == "wrong_server_key"


def test_unknown_device() -> None:
    result = diagnose(recording("device-os-3.1.0/drop_after_id").read_text())
    verdict = join(
        result.analysis,
        [attempt(0, "unknown_device", device=DEVICE, step="identity")],
        [],
        device_id=DEVICE,
        since=SINCE,
        until=UNTIL,
        registered=False,
    )
    assert (verdict.entry, verdict.cause) == ("C5", "unknown_device")
    assert verdict.to_json()["registered"] is False


def test_the_device_log_tells_a_bad_signature_from_a_bad_key() -> None:
    records = [attempt(0, "session_key_rejected", device=DEVICE, step="hello")]
    signature = diagnose(recording("device-os-3.1.0/bad_signature").read_text())
    verdict = join(signature.analysis, records, [], device_id=DEVICE, since=SINCE, until=UNTIL)
    assert (verdict.entry, verdict.cause) == ("C7", "server_signing_key")
    decrypt = diagnose((LOGS / "c06_legacy_decrypt.log").read_text())
    verdict = join(decrypt.analysis, records, [], device_id=DEVICE, since=SINCE, until=UNTIL)
    assert (verdict.entry, verdict.cause) == ("C6", "corrupt_private_key")


def test_nothing_reached_the_server() -> None:
    deep = diagnose((LOGS / "c05_forum_type255.log").read_text())
    verdict = join(deep.analysis, [], [], device_id=DEVICE, since=SINCE, until=UNTIL)
    assert (verdict.entry, verdict.cause, verdict.confidence) == ("C5", "other_cloud", "likely")
    assert "another server" in verdict.said
    shallow = diagnose((LOGS / "c02_no_internet.log").read_text())
    verdict = join(shallow.analysis, [], [], device_id=DEVICE, since=SINCE, until=UNTIL)
    assert verdict.entry is None
    assert verdict.confidence == "likely"
    assert "not in the keys" in verdict.said
    nonce = diagnose((LOGS / "c04_format_a_nonce_closed.log").read_text())
    verdict = join(nonce.analysis, [], [], device_id=DEVICE, since=SINCE, until=UNTIL)
    assert (verdict.entry, verdict.cause) == ("C4", "not_a_device_server")


def test_the_server_saw_it_connect() -> None:
    result = diagnose(recording("device-os-3.1.0/drop_after_id").read_text())
    verdict = join(result.analysis, [connected(0, DEVICE)], [], device_id=DEVICE, since=SINCE, until=UNTIL)
    assert verdict.confidence == "inconclusive"
    assert verdict.entry is None
    assert result.with_server(verdict).findings == result.findings  # an inconclusive verdict re-ranks nothing


def test_records_outside_the_window_do_not_count() -> None:
    result = diagnose(recording("device-os-3.1.0/drop_after_id").read_text())
    old = [attempt(-3600 * 5, "key_mismatch", device=DEVICE)]
    verdict = join(result.analysis, old, [], device_id=DEVICE, since=SINCE, until=UNTIL)
    assert verdict.entry != "C5" or verdict.cause != "amnesia"


def test_a_step_that_does_not_fit_lowers_the_confidence() -> None:
    result = diagnose((LOGS / "c02_no_internet.log").read_text())  # stops at S0
    verdict = join(
        result.analysis, [attempt(0, "key_mismatch", device=DEVICE)], [], device_id=DEVICE, since=SINCE, until=UNTIL
    )
    assert verdict.confidence == "likely"
    assert any("another time" in e for e in verdict.evidence)


def test_a_verdict_for_an_entry_the_log_did_not_show_is_added() -> None:
    result = diagnose((LOGS / "c17_brownout_app.log").read_text())  # connected; only C17
    verdict = join(
        result.analysis,
        [attempt(0, "hello_timeout", device=DEVICE, step="hello")],
        [],
        device_id=DEVICE,
        since=SINCE,
        until=UNTIL,
    )
    joined = result.with_server(verdict)
    assert joined.findings[0].entry.id == "C8"
    assert [f.entry.id for f in joined.findings][1:] == ["C17"]
