"""Error codes and LED patterns given on the command line (protocol.md §9, field-failures.md §1.2, §0.7)."""

from __future__ import annotations

import json

import pytest

from cyan.diagnose import CodeKind, diagnose, explain_code, explain_code_text, explain_led
from cyan.diagnose.codes import explain_key_error_flags, parse_code


def _first(text: str) -> tuple[str, str, tuple[str, ...]]:
    reading = explain_code_text(text)[0]
    return reading.kind, reading.name, reading.entries


def test_minus_19_is_the_wiced_connection_closed() -> None:
    kind, name, entries = _first("-19")
    assert (kind, name) == (CodeKind.SOCKET, "WICED_CONNECTION_CLOSED")
    assert entries[0] == "C5"
    assert _first("-18")[1] == "WICED_CONNECTION_RESET"
    assert _first("-1")[1] == "TIMEOUT_OR_CLOSED"


@pytest.mark.parametrize(
    ("text", "name", "entry"),
    [
        ("26", "IO_ERROR_LIGHTSSL_HANDSHAKE_RECV_KEY", "C5"),
        ("25", "IO_ERROR_LIGHTSSL_HANDSHAKE_NONCE", "C4"),
        ("6", "DECRYPTION_ERROR", "C6"),
        ("8", "AUTHENTICATION_ERROR", "C7"),
        ("10", "MESSAGE_TIMEOUT", "C8"),
        ("16", "IO_ERROR_PARSING_SERVER_PUBLIC_KEY", "C9"),
        ("code=26", "IO_ERROR_LIGHTSSL_HANDSHAKE_RECV_KEY", "C5"),
        ("cloud:err=26", "IO_ERROR_LIGHTSSL_HANDSHAKE_RECV_KEY", "C5"),
    ],
)
def test_protocol_errors(text: str, name: str, entry: str) -> None:
    kind, found, entries = _first(text)
    assert (kind, found) == (CodeKind.PROTOCOL, name)
    assert entries[0] == entry


@pytest.mark.parametrize(
    ("text", "name", "entry"),
    [("-220", "IO", "C5"), ("-130", "NOT_ALLOWED", "C7"), ("-160", "TIMEOUT", "C8"), ("-240", "PROTOCOL", "C6")],
)
def test_system_errors_of_2x(text: str, name: str, entry: str) -> None:
    kind, found, entries = _first(text)
    assert (kind, found) == (CodeKind.SYSTEM, name)
    assert entries[0] == entry


def test_other_kinds_of_numbers() -> None:
    assert _first("-3b62")[:2] == (CodeKind.MBEDTLS, "MBEDTLS_ERR_PK_INVALID_PUBKEY + ASN1_UNEXPECTED_TAG")
    assert _first("-0x7780")[1] == "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE"
    assert _first("errno 111")[:2] == (CodeKind.ERRNO, "ECONNREFUSED")
    assert _first("sos 8") == (CodeKind.SOS, "SOS 8", ("C13",))
    assert [r.kind for r in explain_code_text("sos 8")] == [CodeKind.SOS]  # no other reading of an SOS count
    assert _first("handling cloud error: 3")[2] == ("C3", "C10")
    flags = explain_code_text("spark/device/key/error=5")[0]
    assert flags.kind == CodeKind.KEY_ERROR
    assert "PUBLIC_SERVER_KEY_BLANK" in flags.meaning
    assert "SERVER_ADDRESS_BLANK" in flags.meaning


def test_a_hint_puts_its_reading_first() -> None:
    assert explain_code(8, CodeKind.SOS)[0].meaning == "out of heap memory"
    assert explain_code(111, CodeKind.ERRNO)[0].name == "ECONNREFUSED"
    assert explain_code(111)[0].kind == CodeKind.ERRNO  # no ProtocolError 111


def test_not_numbers() -> None:
    assert explain_code_text("hello") == []
    assert explain_code_text("code") == []
    assert explain_code_text("") == []
    assert parse_code("x1") is None
    assert parse_code("-19") == (-19, False)
    assert parse_code("0x1A") == (26, True)
    assert explain_code(123456) == []


def test_key_error_flags() -> None:
    assert len(explain_key_error_flags(5)) == 2
    assert explain_key_error_flags(0) == []


@pytest.mark.parametrize(
    ("description", "pattern"),
    [
        ("fast blinking cyan with a red flash", "cyan_red"),
        ("quick cyan then 1 red burst", "cyan_red"),
        ("fast cyan, one orange blink", "cyan_orange"),
        ("fast cyan with a magenta flash", "cyan_magenta"),
        ("fast cyan with purple blink", "cyan_magenta"),
        ("blinking cyan then 2 orange blinks", "cyan_2_orange"),
        ("cyan, then three yellow flashes", "cyan_3_orange"),
        ("breathing cyan", "breathing_cyan"),
        ("blinking green", "blinking_green"),
        ("flashing dark blue", "blinking_blue"),
        ("breathing magenta", "breathing_magenta"),
        ("pulsing pink", "breathing_magenta"),
        ("blinking magenta", "blinking_magenta"),
        ("white blinking at boot", "blinking_white"),
        ("dim blue D7 led, status led off", "dim_blue_d7"),
        ("red SOS then 8 blinks", "sos"),
        ("breathing green", "breathing_green"),
        ("fast cyan", "fast_cyan"),
    ],
)
def test_led_descriptions(description: str, pattern: str) -> None:
    assert explain_led(description)[0].pattern.key == pattern


def test_led_details() -> None:
    (sos,) = explain_led("SOS, 13 red blinks, SOS")
    assert sos.count == 13
    assert sos.note is not None
    assert "stack overflow" in sos.note
    ambiguous = explain_led("fast cyan with some orange")
    assert [r.pattern.key for r in ambiguous] == ["cyan_orange", "cyan_3_orange"]
    assert ambiguous[0].note is not None
    assert "count" in ambiguous[0].note
    assert [r.pattern.key for r in explain_led("3 yellow blinks")] == ["cyan_3_orange"]
    for unread in ("it is dead", "", "purple unicorn", "orange unicorn"):
        (reading,) = explain_led(unread)
        assert reading.pattern.key == "unknown", unread
        assert reading.pattern.entries == ()
    assert "'unicorn' not understood" in (explain_led("purple unicorn")[0].note or "")
    # The unknown pattern lists the ones there are.
    assert "Breathing magenta (safe mode)" in explain_led("zzz")[0].pattern.meaning
    # A colour alone: how it lights decides, and the description is asked for.
    both = explain_led("purple")
    assert [r.pattern.key for r in both] == ["blinking_magenta", "breathing_magenta"]
    assert "blinks, blinks fast or breathes" in (both[0].note or "")


def test_an_led_description_not_understood_diagnoses_nothing() -> None:
    """Unknown input gets no finding at all, not a confident one from the one word recognised."""
    result = diagnose(None, leds=["purple unicorn"])
    assert result.findings == []
    assert [r.pattern.key for r in result.leds] == ["unknown"]
    ambiguous = diagnose(None, leds=["purple"])
    assert ambiguous.findings
    assert all(f.confidence != "high" for f in ambiguous.findings), [(f.entry.id, f.score) for f in ambiguous.findings]


def test_leds_and_codes_alone_give_findings() -> None:
    result = diagnose(None, leds=["fast cyan, red flash"], codes=["-19"])
    assert result.analysis is None
    top = result.findings[0]
    assert top.entry.id == "C5"
    assert set(top.sources) == {"led", "code"}
    assert result.to_json()["source"]["lines"] == 0
    orange = diagnose(None, leds=["fast cyan, 1 orange"])
    assert orange.findings[0].entry.id == "C6"
    magenta = diagnose(None, leds=["fast cyan, 1 magenta blink"], codes=["8"])
    assert magenta.findings[0].entry.id == "C7"


# Inputs that broke `cyan diagnose --led/--code` (found by tests/fuzz and in review): each must give readings.


@pytest.mark.parametrize("description", ["sos ²", "cyan ³ orange", "cyan then orange x³", "sos ①", "sos " + "9" * 5000])
def test_digits_int_cannot_read_are_no_count(description: str) -> None:
    # str.isdigit() is true for superscripts and circled digits, which int() refuses (ValueError); and int()
    # refuses over 4300 decimal digits.
    readings = explain_led(description)
    assert readings
    assert all(r.count is None for r in readings)


@pytest.mark.parametrize("text", ["1" * 5000, "-" + "2" * 5000, "code = " + "3" * 4301, "0x" + "f" * 5000])
def test_a_code_longer_than_any_code_is_no_code(text: str) -> None:
    assert explain_code_text(text) == []
    assert parse_code(text) is None
    json.dumps(diagnose(None, codes=[text]).to_json())
