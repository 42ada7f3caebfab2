"""One test per field failure C1–C17 (field-failures.md §2): a device log of that failure gives the step
where the connection stopped and the right catalog entry, with the causes ranked on the evidence.

The logs are in tests/diagnose/logs (written in each documented format, see its README) and, where they
apply, the recordings of real firmware in tests/vectors.
"""

from __future__ import annotations

import re
from pathlib import Path

from diagnose_support import causes, finding, ids, log, recording, top

from cyan.diagnose import CATALOG, diagnose


def test_c01_no_wifi_clouddebug() -> None:
    result = log("c01_clouddebug_no_wifi.log")
    assert result.analysis is not None
    assert result.analysis.attempts == []  # it never tried the cloud
    assert top(result).entry.id == "C1"
    assert top(result).step == "wifi"


def test_c01_listening_mode_after_a_brownout_suspects_the_keys() -> None:
    result = log("c01_listening_after_brownout.log", leds=("blinking dark blue",))
    c1 = top(result)
    assert c1.entry.id == "C1"
    assert causes(c1)[0] == "dct_erased"
    assert "C17" in ids(result)
    assert result.analysis is not None
    assert result.analysis.device_id == "2a0044000e47343432313031"


def test_c02_no_internet() -> None:
    result = log("c02_no_internet.log")
    assert result.analysis is not None
    assert [a.stopped_at for a in result.analysis.attempts] == ["S0", "S0"]
    assert [a.cloud_error for a in result.analysis.attempts] == [2, 2]
    c2 = top(result)
    assert (c2.entry.id, c2.step) == ("C2", "S0")
    assert any("Resetting WLAN" in e.text for e in c2.evidence)


def test_c03_port_blocked_clouddebug() -> None:
    result = log("c03_clouddebug_port_blocked.log")
    c3 = top(result)
    assert (c3.entry.id, c3.step) == ("C3", "S0")
    assert causes(c3)[0] == "port_blocked"
    # dnsServerIP=0.0.0.0 is normal on a Photon and must not count as a DNS failure (C10).
    assert "C10" not in ids(result)


def test_c03_server_down() -> None:
    result = log("c03_server_down.log")
    c3 = top(result)
    assert c3.entry.id == "C3"
    assert c3.attempts == [1, 2]


def test_c04_nonce_closed_format_a() -> None:
    result = log("c04_format_a_nonce_closed.log")
    assert result.analysis is not None
    assert result.analysis.firmware == "Device OS 0.4.x/0.5.x debug build, legacy protocol stack"
    first = result.analysis.attempts[0]
    assert (first.stopped_at, first.error and first.error.code) == ("S1", -19)
    c4 = top(result)
    assert c4.entry.id == "C4"
    assert causes(c4)[0] == "not_a_device_server"  # closed at once, without a nonce


def test_c05_real_firmware_drop_after_id_is_the_cloud_refusing() -> None:
    # The recording's server closed the socket right after the device's 256 bytes (a refusal).
    result = diagnose(recording("device-os-3.1.0/drop_after_id").read_text())
    assert result.analysis is not None
    first = result.analysis.attempts[0]
    assert first.stopped_at == "S5"
    assert first.protocol_code == 26
    assert first.handshake_code == -220
    c5 = top(result)
    assert (c5.entry.id, c5.step) == ("C5", "S5")
    assert set(causes(c5)[:2]) == {"amnesia", "wrong_server_key"}
    # The recording's server went away afterwards: the later attempts are refused at TCP level.
    assert ids(result)[1] == "C3"


def test_c05_real_firmware_wrong_server_key_looks_the_same_from_the_device() -> None:
    wrong = diagnose(recording("device-os-3.1.0/wrong_server_key").read_text())
    dropped = diagnose(recording("device-os-3.1.0/drop_after_id").read_text())
    assert top(wrong).entry.id == top(dropped).entry.id == "C5"
    assert causes(top(wrong)) == causes(top(dropped))  # only the server can tell them apart


def test_c05_forum_type255_points_at_the_server_key() -> None:
    result = log("c05_forum_type255.log")
    c5 = top(result)
    assert c5.entry.id == "C5"
    assert causes(c5)[0] == "wrong_server_key"
    assert "deliberate refusal" in c5.summary  # 264 ms, not the 20 s timeout
    assert "C11" in ids(result)


def test_c05_json_handler_with_a_white_blink_is_amnesia() -> None:
    result = log("c05_json_amnesia.log", leds=("blinking white at boot",))
    c5 = top(result)
    assert c5.entry.id == "C5"
    assert causes(c5)[0] == "amnesia"
    assert result.analysis is not None
    assert result.analysis.device_id == "1e0032000447343138333038"


def test_c05_format_a_split_header() -> None:
    result = log("c05_format_a_key_19.log")
    assert result.analysis is not None
    attempt = result.analysis.attempts[0]
    assert (attempt.stopped_at, attempt.error and attempt.error.code) == ("S5", -19)
    assert top(result).entry.id == "C5"
    # Talking to device.spark.io: for a self-hosted fleet, the refusal comes from Particle.
    assert causes(top(result))[0] == "other_cloud"


def test_c06_legacy_decrypt_error_uses_the_code_not_the_garbage() -> None:
    result = log("c06_legacy_decrypt.log")
    assert result.analysis is not None
    error = result.analysis.attempts[0].error
    assert error is not None
    assert (error.kind, error.code, error.step) == ("decrypt", 6, "S6")
    c6 = top(result)
    assert c6.entry.id == "C6"
    assert causes(c6)[0] == "corrupt_private_key"


def test_c06_new_stack_decryption_failed() -> None:
    result = log("c06_lightssl_decrypt.log")
    assert top(result).entry.id == "C6"
    assert result.analysis is not None
    assert result.analysis.attempts[0].protocol_code == 6


def test_c07_real_firmware_bad_signature() -> None:
    result = diagnose(recording("device-os-3.1.0/bad_signature").read_text())
    assert result.analysis is not None
    first = result.analysis.attempts[0]
    assert first.stopped_at == "S6"
    assert first.error is not None
    assert first.error.kind == "signature"
    assert first.handshake_code == -130  # 2.x converts AUTHENTICATION_ERROR
    c7 = top(result)
    assert c7.entry.id == "C7"
    assert causes(c7)[0] == "server_signing_key"


def test_c07_legacy_code_8() -> None:
    result = log("c07_legacy_auth.log")
    assert top(result).entry.id == "C7"


def test_c08_legacy_hello_timeout() -> None:
    result = log("c08_legacy_hello.log")
    assert result.analysis is not None
    assert result.analysis.attempts[0].stopped_at == "S8"
    c8 = top(result)
    assert c8.entry.id == "C8"
    assert causes(c8)[0] == "slow_hello"


def test_c08_electron_session_resume_loop() -> None:
    result = log("c08_electron_resume.log")
    c8 = top(result)
    assert c8.entry.id == "C8"
    assert causes(c8)[0] == "lost_session"
    assert result.analysis is not None
    assert result.analysis.firmware is not None
    assert result.analysis.firmware.startswith("Electron")


def test_c09_electron_corrupt_server_key_with_the_typo() -> None:
    result = log("c09_electron_server_key.log")
    assert result.analysis is not None
    assert result.analysis.attempts[0].stopped_at == "dtls"
    assert top(result).entry.id == "C9"
    # `setup_contex` is the firmware's spelling; it is read all the same.
    kinds = [s.values.get("kind") for s in result.analysis.signals if s.kind == "fail"]
    assert kinds == ["server_key", "setup_context"]


def test_c10_dns_failure() -> None:
    result = log("c10_dns.log")
    assert result.analysis is not None
    error = result.analysis.attempts[0].error
    assert error is not None
    assert (error.kind, error.step) == ("dns_failed", "S0")
    assert top(result).entry.id == "C10"
    assert "cyan.example.com" in top(result).summary


def test_c10_dns_failure_clouddebug() -> None:
    result = log("c10_clouddebug_dns.log")
    c10 = top(result)
    assert c10.entry.id == "C10"
    # The 0.0.0.0 DNS server line is cited as *not* a symptom.
    assert any("not a symptom" in e.why for e in c10.evidence)


def test_c11_blank_address_heals_toward_particle() -> None:
    result = log("c11_address_blank_healed.log")
    assert result.analysis is not None
    assert result.analysis.attempts[0].outcome == "connected"  # to Particle, not to us
    assert top(result).entry.id == "C11"


def test_c12_real_firmware_session_dropped_over_a_server_message() -> None:
    # The 0.6.1 recording: at 45 s the server sent a code legacy firmware rejects, and it closed the socket.
    result = diagnose(recording("device-os-0.6.1/good").read_text())
    assert result.analysis is not None
    first, second = result.analysis.attempts
    assert (first.outcome, first.drop_kind, first.drop_cause) == ("dropped", "loop_error", "coap_error")
    assert (second.outcome, second.stopped_at) == ("incomplete", "S1")  # the log ends in the reconnect
    c12 = top(result)
    assert c12.entry.id == "C12"
    assert causes(c12)[0] == "rejected_message"


def test_c12_inactivity_and_reset() -> None:
    result = log("c12_inactivity_reset.log")
    assert result.analysis is not None
    assert [(a.outcome, a.drop_kind) for a in result.analysis.attempts] == [
        ("dropped", "inactivity"),
        ("dropped", "bytes_error"),
    ]
    assert result.analysis.attempts[1].drop_code == -18  # "bytes recieved error -18", typo and all
    c12 = top(result)
    assert c12.entry.id == "C12"
    assert causes(c12)[0] == "idle_timeout"


def test_c13_panic() -> None:
    result = log("c13_panic_events.log", leds=("red SOS then 1 blink",))
    c13 = top(result)
    assert c13.entry.id == "C13"
    assert {e.source for e in c13.evidence} >= {"log", "led"}


def test_c14_interrupted_update_and_dim_d7() -> None:
    only_log = log("c14_ota_interrupted.log")
    assert "C14" in ids(only_log)
    assert finding(only_log, "C14").confidence == "low"  # the log alone only suggests it
    with_led = log("c14_ota_interrupted.log", leds=("dim blue D7, nothing else",))
    assert top(with_led).entry.id == "C14"
    assert top(with_led).confidence == "high"


def test_c15_safe_mode_after_an_update() -> None:
    result = log("c15_safe_mode_events.log")
    c15 = top(result)
    assert c15.entry.id == "C15"
    assert "after an update" in c15.summary
    assert result.analysis is not None
    assert result.analysis.device_id == "25002c000347343337373738"


def test_c16_key_error_flags() -> None:
    result = log("c16_key_error.log")
    c16 = top(result)
    assert c16.entry.id == "C16"
    assert "PUBLIC_SERVER_KEY_BLANK" in c16.summary
    assert "SERVER_ADDRESS_BLANK" in c16.summary
    assert "C11" in ids(result)


def test_c17_brownout() -> None:
    result = log("c17_brownout_app.log")
    assert result.analysis is not None
    assert result.analysis.attempts[0].outcome == "connected"
    assert top(result).entry.id == "C17"


def test_every_catalog_entry_has_a_test_here() -> None:
    source = Path(__file__).read_text()
    tested = {int(n) for n in re.findall(r"^def test_c(\d\d)_", source, re.MULTILINE)}
    assert tested == set(range(1, len(CATALOG) + 1))
    assert [e.id for e in CATALOG] == [f"C{n}" for n in range(1, 18)]
