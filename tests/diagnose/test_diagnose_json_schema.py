"""The JSON field names are an interface (docs/diagnostics.md): this test pins them. Adding a field means
adding it here and to the documentation; renaming or removing one breaks users' scripts."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from diagnose_support import DEVICE, LOGS, T0, attempt, connected, device, recording

from cyan.diagnose import CATALOG, DOCTOR_SCHEMA, SCHEMA, build_doctor, diagnose, entry_json, join
from cyan.diagnose.server_evidence import group_unidentified

TOP = {"schema", "source", "summary", "attempts", "findings", "leds", "codes", "server"}
SOURCE = {"name", "lines", "parsed", "unparsed", "duplicates", "formats", "firmware", "device_id", "reboots"}
SUMMARY = {
    "attempts",
    "connected",
    "dropped",
    "failed",
    "incomplete",
    "interrupted",
    "primary_attempt",
    "outcome",
    "stopped_at",
    "step_name",
    "top_finding",
    "text",
}
ATTEMPT = {
    "index",
    "first_line",
    "last_line",
    "boot",
    "start_ms",
    "end_ms",
    "outcome",
    "reached",
    "stopped_at",
    "step_name",
    "error",
    "handshake_code",
    "protocol_code",
    "socket_code",
    "cloud_error",
    "internet",
    "server_address",
    "resolved",
    "connected_ip",
    "failure_after_ms",
    "drop",
    "ended_by",
    "entry",
}
ERROR = {"kind", "step", "code", "code_kind", "code_name", "meaning", "line", "message"}
DROP = {"kind", "code", "cause", "line"}
FINDING = {
    "rank",
    "id",
    "title",
    "step",
    "step_name",
    "score",
    "confidence",
    "summary",
    "meaning",
    "evidence",
    "causes",
    "fix",
    "attempts",
    "sources",
}
EVIDENCE = {"line", "text", "why", "source"}
CAUSE = {"rank", "key", "title", "likelihood", "why", "fix"}
LED = {"description", "pattern", "title", "meaning", "entries", "count", "note"}
CODE = {"input", "readings"}
READING = {"code", "kind", "name", "meaning", "entries"}
SERVER = {
    "url",
    "device_id",
    "registered",
    "window",
    "entry",
    "title",
    "cause",
    "cause_title",
    "confidence",
    "said",
    "fix",
    "evidence",
    "attempts",
    "unidentified",
}
RECORD = {
    "id",
    "started_at",
    "peer_address",
    "host",
    "device_id",
    "outcome",
    "step",
    "reason",
    "detail",
    "presented_fingerprint",
    "stored_fingerprint",
    "duration",
    "said",
    "entry",
    "cause",
    "fix",
}
GROUP = {"host", "first", "last", "count", "reasons", "entry", "cause", "said", "loop", "candidates"}
CANDIDATE = {"device_id", "name", "last_address", "last_heard", "online", "relation", "likelihood"}
DOCTOR = {
    "schema",
    "device",
    "window",
    "status",
    "counts",
    "last_connected",
    "last_failure",
    "said",
    "diagnosis",
    "todo",
    "loops",
    "unidentified",
    "attempts",
}
DOCTOR_DEVICE = {"id", "registered", "name", "online", "last_heard", "last_address", "key_fingerprint"}
COUNTS = {"attempts", "connected", "failed", "by_reason"}
SERVER_FINDING = {"entry", "title", "cause", "cause_title", "confidence", "said", "fix", "evidence", "related"}
LOOP = {
    "device_id",
    "host",
    "reason",
    "count",
    "first",
    "last",
    "median_interval",
    "backoff_like",
    "ongoing",
    "entry",
    "cause",
}
CATALOG_ENTRY = {"id", "title", "step", "step_name", "symptom", "meaning", "causes", "tell_apart", "server_side", "fix"}
CATALOG_CAUSE = {"key", "title", "likelihood", "detail", "fix"}


def test_diagnosis_fields() -> None:
    result = diagnose(
        recording("device-os-3.1.0/drop_after_id").read_text(), source="x.log", leds=["fast cyan, red"], codes=["-19"]
    )
    unidentified = group_unidentified([attempt(5, "nonce_mismatch")], [device()])
    verdict = join(
        result.analysis,
        [attempt(1, "key_mismatch", device=DEVICE)],
        unidentified,
        device_id=DEVICE,
        since=T0 - timedelta(minutes=5),
        until=T0 + timedelta(minutes=5),
        url="http://cyan:8080",
    )
    body = json.loads(json.dumps(result.with_server(verdict).to_json()))
    assert set(body) == TOP
    assert body["schema"] == SCHEMA == "cyan.diagnose/1"
    assert set(body["source"]) == SOURCE
    assert set(body["summary"]) == SUMMARY
    for item in body["attempts"]:
        assert set(item) == ATTEMPT
        if item["error"] is not None:
            assert set(item["error"]) == ERROR
    for item in body["findings"]:
        assert set(item) == FINDING
        for evidence in item["evidence"]:
            assert set(evidence) == EVIDENCE
        for cause in item["causes"]:
            assert set(cause) == CAUSE
    assert {item["source"] for f in body["findings"] for item in f["evidence"]} == {"log", "led", "code", "server"}
    assert set(body["leds"][0]) == LED
    assert set(body["codes"][0]) == CODE
    assert set(body["codes"][0]["readings"][0]) == READING
    assert set(body["server"]) == SERVER
    assert set(body["server"]["window"]) == {"since", "until"}
    assert set(body["server"]["attempts"][0]) == RECORD
    assert set(body["server"]["unidentified"][0]) == GROUP
    assert set(body["server"]["unidentified"][0]["candidates"][0]) == CANDIDATE


def test_drop_fields() -> None:
    body = diagnose((LOGS / "c12_inactivity_reset.log").read_text()).to_json()
    assert set(body["attempts"][0]["drop"]) == DROP


def test_doctor_fields() -> None:
    loop = [attempt(t, "key_mismatch", device=DEVICE, step="identity") for t in range(0, 60, 10)]
    report = build_doctor(
        DEVICE,
        device(),
        [connected(-100, DEVICE), *loop],
        now=T0 + timedelta(minutes=1),
        unidentified=[attempt(70, "nonce_mismatch")],
    )
    body = json.loads(json.dumps(report.to_json()))
    assert set(body) == DOCTOR
    assert body["schema"] == DOCTOR_SCHEMA == "cyan.doctor/1"
    assert set(body["device"]) == DOCTOR_DEVICE
    assert set(body["window"]) == {"since", "until"}
    assert set(body["counts"]) == COUNTS
    assert set(body["diagnosis"][0]) == SERVER_FINDING
    assert set(body["loops"][0]) == LOOP
    assert set(body["unidentified"][0]) == GROUP
    assert set(body["attempts"][0]) == RECORD


def test_catalog_fields() -> None:
    body = entry_json("C5")
    assert set(body) == CATALOG_ENTRY
    assert set(body["causes"][0]) == CATALOG_CAUSE


def test_every_field_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "diagnostics.md").read_text()
    every = (
        TOP
        | SOURCE
        | SUMMARY
        | ATTEMPT
        | ERROR
        | DROP
        | FINDING
        | EVIDENCE
        | CAUSE
        | LED
        | CODE
        | READING
        | SERVER
        | RECORD
        | GROUP
        | CANDIDATE
        | DOCTOR
        | DOCTOR_DEVICE
        | COUNTS
        | SERVER_FINDING
        | LOOP
        | CATALOG_ENTRY
        | CATALOG_CAUSE
    )
    missing = sorted(name for name in every if f"`{name}`" not in doc)
    assert missing == []


def test_every_catalog_entry_and_cause_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "diagnostics.md").read_text()
    for entry in CATALOG:
        assert f"| {entry.id} |" in doc
        assert f"**{entry.id}**" in doc
        for cause in entry.causes:
            assert f"`{cause.key}`" in doc, (entry.id, cause.key)
