"""The log readers: every format of field-failures.md §4, tolerant of what real captures contain, and
never failing on garbage (unknown lines are kept as unparsed)."""

from __future__ import annotations

import json

from diagnose_support import LOGS, recording
from hypothesis import given
from hypothesis import strategies as st

from cyan.diagnose import LogFormat, analyse, diagnose, normalize, read_lines, read_text
from cyan.diagnose.readers import MAX_LINE
from cyan.diagnose.signals import Sig, extract_signals


def test_format_a_line() -> None:
    (record,) = read_text("0000009436:ERROR: int SparkProtocol::handshake() (108):Handshake: Unable to receive key -19")
    assert (record.time_ms, record.level, record.function) == (9436, "ERROR", "int SparkProtocol::handshake()")
    assert record.message == "Handshake: Unable to receive key -19"


def test_format_a_padded_levels_and_split_header() -> None:
    lines = [
        "0000006029:INFO : int SparkProtocol::handshake() (101):",
        "Handshake: Receive key",
        "0000006030:LOG  : void f() (1):x",
    ]
    first, second, third = read_text("\n".join(lines))
    assert (first.level, first.message) == ("INFO", "Handshake: Receive key")  # header and message rejoined
    assert (second.format, second.message) == (LogFormat.UNPARSED, "")
    assert third.level == "TRACE"


def test_format_b_lines() -> None:
    records = read_text(
        "0000001000 [system] INFO: Cloud: connecting\n"
        "0000001001 [app] main.cpp:12, setup(): WARN: low battery [code = -19, details = read failed]\n"
        "[comm.sparkprotocol.handshake] ERROR: Unable to receive key -19\n"
        "[0000001002] [system] WARN: Cloud handshake failed, code=-19\n"
    )
    assert [r.format for r in records] == [LogFormat.FORMAT_B] * 4
    assert (records[0].time_ms, records[0].category, records[0].message) == (1000, "system", "Cloud: connecting")
    assert (records[1].function, records[1].code, records[1].detail) == ("setup", -19, "read failed")
    assert records[1].message == "low battery"
    assert (records[2].time_ms, records[2].category) == (None, "comm.sparkprotocol.handshake")
    assert records[3].time_ms == 1002


def test_format_b_with_application_output_interleaved() -> None:
    (record,) = read_text("temp=21.5 0000006293 [comm.sparkprotocol.handshake] ERROR: Unable to receive key -19")
    assert record.format == LogFormat.FORMAT_B
    assert record.prefix == "temp=21.5"
    assert record.message == "Unable to receive key -19"


def test_json_handler_lines() -> None:
    records = read_text(
        '{"l":"ERROR","m":"Unable to receive key -19","c":"comm.sparkprotocol.handshake","t":3501}\n'
        '{"l":50,"m":"Could not receive nonce: -1","c":"comm.lightssl.handshake","t":"22005","code":-1}\n'
    )
    assert [r.format for r in records] == [LogFormat.JSON] * 2
    assert (records[0].level, records[0].time_ms, records[0].category) == (
        "ERROR",
        3501,
        "comm.sparkprotocol.handshake",
    )
    assert (records[1].level, records[1].time_ms, records[1].code) == ("ERROR", 22005, -1)


def test_event_lines_from_particle_subscribe_and_event_streams() -> None:
    records = read_text(
        '{"name":"spark/device/last_reset","data":"power_brownout","ttl":60,"published_at":"x","coreid":"c"}\n'
        "event: spark/device/key/error\n"
        'data: {"data":"5","ttl":60,"published_at":"2024-01-01T00:00:00Z","coreid":"0123456789abcdef01234567"}\n'
    )
    assert [r.format for r in records] == [LogFormat.EVENT, LogFormat.UNPARSED, LogFormat.EVENT]
    assert (records[0].event_name, records[0].event_data) == ("spark/device/last_reset", "power_brownout")
    assert (records[2].event_name, records[2].event_data) == ("spark/device/key/error", "5")
    kinds = [s.kind for s in extract_signals(records)]
    assert kinds == [Sig.LAST_RESET, Sig.KEY_ERROR_FLAGS]


def test_clouddebug_lines() -> None:
    records = read_text((LOGS / "c03_clouddebug_port_blocked.log").read_text())
    plain = [r for r in records if r.format == LogFormat.CLOUDDEBUG]
    assert len(plain) == 16
    assert {r.format for r in records} == {LogFormat.CLOUDDEBUG, LogFormat.FORMAT_B}


def test_the_firmware_typos_are_read() -> None:
    assert normalize("Hanshake: completed") == "handshake: completed"
    assert normalize("bytes recieved error -18") == "bytes received error -18"
    assert normalize("Starting handshake: presense_announce=1") == "starting handshake: presence_announce=1"
    assert normalize("setup_contex error 10") == "setup_context error 10"
    records = read_text("0000000900 [comm] INFO: Hanshake: completed\n0000000950 [system] INFO: Cloud connected\n")
    analysis = analyse(records)
    assert analysis.attempts[0].outcome == "connected"


def test_duplicated_lines_from_two_handlers_count_once() -> None:
    result = diagnose((LOGS / "duplicated_handlers.log").read_text())
    assert result.analysis is not None
    assert len(result.analysis.attempts) == 1
    assert sum(r.duplicate for r in result.analysis.records) == 6


def test_a_restart_ends_an_attempt() -> None:
    text = (
        "0000005991 [system] INFO: Cloud: connecting\n"
        "0000006029 [comm.sparkprotocol.handshake] INFO: Receive key\n"
        "0000000005 [system] INFO: ready(): 0; connecting(): 0; listening(): 0; WLAN_SMART_CONFIG_START: 0\n"
        "0000001000 [system] INFO: Cloud: connecting\n"
    )
    analysis = analyse(read_text(text))
    assert analysis.reboots == 1
    assert [a.outcome for a in analysis.attempts] == ["interrupted", "incomplete"]
    assert [a.boot for a in analysis.attempts] == [0, 1]


def test_the_millisecond_counter_wrapping_is_not_a_restart() -> None:
    text = "4294967000 [system] INFO: Cloud connected\n0000000100 [system] INFO: Cloud: connecting\n"
    assert analyse(read_text(text)).reboots == 0


def test_recordings_parse_completely() -> None:
    for name in ("device-os-3.1.0/good", "device-os-3.1.0/bad_signature", "device-os-0.6.1/good"):
        records = read_text(recording(name).read_text())
        unparsed = [r.raw for r in records if r.format == LogFormat.UNPARSED and r.raw.strip()]
        assert unparsed == ["vdev exit 124"], name  # the runner's own line, kept as it is


def test_ota_recordings_keep_application_output_as_unparsed() -> None:
    records = read_text(recording("ota/l061_ota_nonfast").read_text())
    unparsed = [r.raw for r in records if r.format == LogFormat.UNPARSED]
    assert unparsed == ['{"r":"ok","u":{"s":0,"l":"m","vc":0,"vv":0,"d":[]}}', "vdev exit 0"]


def test_line_endings_control_characters_and_bytes() -> None:
    text = (
        "\ufeff0000001000 [system] INFO: Cloud: connecting\r\n"
        "\x1b[32m0000001001 [system] INFO: Cloud socket connected\x1b[0m\r\n"
    )
    records = read_text(text)
    assert [r.message for r in records] == ["Cloud: connecting", "Cloud socket connected"]
    assert [r.line for r in read_lines(["a", "b", "c"])] == [1, 2, 3]


GARBAGE = [
    "",
    "\x00\x01\x02",
    "{",
    "{}",
    '{"m": 1, "t": "x", "l": [1]}',
    '{"name": 3, "data": {"a": 1}}',
    "[" * 5000,
    "0" * 10000,
    "0000000001:ERROR: (" * 200,
    "0000000001 [" + "a" * 3000,
    "event: x\ndata: {not json}",
    "Cloud handshake failed, code=99999999999999999999999",
    "Read Server Address = type:99999999999999999999,domain:",
    "\ud800 lone surrogate",
]


def test_garbage_never_fails() -> None:
    for text in GARBAGE:
        result = diagnose(text)
        json.dumps(result.to_json())


@given(st.text(max_size=400))
def test_any_text_is_read_and_diagnosed(text: str) -> None:
    result = diagnose(text)
    assert result.analysis is not None
    assert len(result.analysis.records) == len(text.splitlines())
    json.dumps(result.to_json())


@given(st.lists(st.sampled_from((LOGS / "c05_forum_type255.log").read_text().splitlines() + GARBAGE), max_size=40))
def test_shuffled_real_lines_and_garbage_never_fail(lines: list[str]) -> None:
    result = diagnose("\n".join(lines))
    json.dumps(result.to_json())
    for attempt in result.analysis.attempts if result.analysis else []:
        assert attempt.outcome in ("connected", "dropped", "failed", "incomplete", "interrupted")


# Inputs that broke `cyan diagnose` (found by tests/fuzz and in review): each must give a report.


def test_a_number_longer_than_int_reads_is_no_number() -> None:
    # int() refuses decimal strings over 4300 digits (ValueError); a code, a time or an event's time that long
    # is no number a device prints.
    digits = "1" * 5000
    for text in (
        f"0000001000 [comm] ERROR: handshake failed [code = {digits}]",
        f'{{"l": "ERROR", "m": "boom", "t": "{digits}", "code": "-{digits}"}}',
        f"0000001000 [comm] ERROR: socket 3 receive fail {digits}",
        f"0000001000 [comm] ERROR: socket_receive on 3 returned -{digits}",
        f"0000001000 [comm] ERROR: handshake failed with code {digits}",
        f"0000009436:INFO : socket 3 receive bytes {digits} of {digits} (12):x",
    ):
        (record,) = read_text(text)
        assert record.code is None or abs(record.code) < 10**20
        json.dumps(diagnose(text).to_json())


def test_an_over_long_line_is_cut_before_it_is_parsed() -> None:
    # Format A headers repeated on one 170 KB line: the pattern scans the rest of the line from every header,
    # which took two minutes. Only the first MAX_LINE characters of a line are read.
    line = "0000000001:LOG  :" * 10_000
    (record,) = read_text(line)
    assert len(record.raw) <= MAX_LINE
    json.dumps(diagnose(line + "\n" + line).to_json())


def test_a_line_of_repeated_format_a_headers_is_read_once() -> None:
    # Within the 4096 characters read, repeated headers cost 0.14 s a line while each was scanned to the end;
    # the first header that a "(line):" follows is the record, as before.
    line = "0000000001:LOG  :" * 200 + " int f() (12):done"
    (record,) = read_text(line)
    assert record.format == LogFormat.FORMAT_A
    assert (record.time_ms, record.level, record.message) == (1, "TRACE", "done")
    assert record.function is not None
    assert record.function.endswith("int f()")
