"""Shapes real captures take that the catalog tests do not: lines behind other prefixes, errors without
the lines around them, the firmware that prints no system log, a debug build whose only handshake trace is
the byte counts (field-failures.md §4.1-§4.5)."""

from __future__ import annotations

from diagnose_support import ids, log


def test_lines_behind_a_syslog_date_and_errors_only() -> None:
    result = log("syslog_prefixed_errors.log")
    assert result.analysis is not None
    assert {r.format for r in result.analysis.records} == {"format_b"}
    assert result.analysis.records[0].prefix == "Mar  3 09:12:01"
    attempts = [(a.outcome, a.stopped_at, a.error.code if a.error else a.drop_code) for a in result.analysis.attempts]
    # "Event loop error 1" is a session that ended on PING_TIMEOUT; each "Handshake failed" is one attempt.
    assert attempts == [("dropped", "session", 1), ("failed", "S1", 25), ("failed", "S5", 26), ("failed", "S5", 26)]
    assert ids(result)[:3] == ["C5", "C4", "C12"]


def test_cloud_debug_on_firmware_without_system_logs() -> None:
    result = log("clouddebug_2x_still_trying.log")
    assert result.analysis is not None
    assert result.analysis.firmware == "Device OS 2.3.1 on P1 (as reported)"
    assert result.analysis.device_id == "3a001c000a47363433353735"
    (attempt,) = result.analysis.attempts
    assert (attempt.outcome, attempt.stopped_at) == ("failed", "unknown")
    assert "prints no system log" in result.summary_text()
    with_led = log("clouddebug_2x_still_trying.log", leds=("fast cyan with a red blink",))
    assert with_led.findings[0].entry.id == "C5"


def test_a_debug_build_shows_its_steps_by_byte_count() -> None:
    result = log("format_a_debug_build_connected.log")
    assert result.analysis is not None
    (attempt,) = result.analysis.attempts  # cloud-debug's "connecting to cloud" and the system's line are one
    assert attempt.outcome == "connected"
    assert attempt.step_started_ms == {"S1": 9171, "S2": 9203, "S5": 9251, "S6": 9290, "S8": 9480, "session": 9522}
    assert "The device connected" in result.summary_text()
    assert all(f.confidence == "low" for f in result.findings)  # only "this device talks to Particle"
