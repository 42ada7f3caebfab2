"""Shapes real captures take that the catalog tests do not: lines behind other prefixes, errors without
the lines around them, the firmware that prints no system log, a debug build whose only handshake trace is
the byte counts (field-failures.md §4.1-§4.5)."""

from __future__ import annotations

from diagnose_support import ids, log

from cyan.diagnose import diagnose


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


def test_the_socket_lines_of_device_os_1_and_2() -> None:
    text = (
        "0000003001 [system] INFO: Cloud: connecting\n"
        "0000003002 [system] INFO: Cloud socket=0, connecting to 203.0.113.4#5683\n"
        "0000008003 [system] ERROR: Cloud socket=0, failed to connect to 203.0.113.4#5683, errno=113\n"
        "0000008004 [system] WARN: Internet test failed: DNS\n"
        "0000009010 [system] INFO: Cloud: connecting\n"
        "0000009011 [system] INFO: Cloud socket=0, connected to 203.0.113.4#5683\n"
        "0000009012 [system] INFO: Cloud connected\n"
    )
    result = diagnose(text)
    assert result.analysis is not None
    failed, connected = result.analysis.attempts
    assert failed.error is not None
    assert (failed.error.kind, failed.error.code, failed.error.code_kind) == ("socket_failed", 113, "errno")
    assert (connected.outcome, connected.connected_ip) == ("connected", "203.0.113.4")
    assert ids(result) == ["C2"]


def test_words_in_application_output_are_not_symptoms() -> None:
    text = (
        "0000000010 [app] INFO: SOS button pressed\n"
        "0000000011 [app] INFO: brownout level 2 configured\n"
        "0000000012 [system] INFO: ready(): 1; connecting(): 0; listening(): 0; WLAN_SMART_CONFIG_START: 0\n"
    )
    assert diagnose(text).findings == []
