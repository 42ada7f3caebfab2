"""`cyan keys inspect` on a UDP device's files (Electron, Gen 3): the real Device OS 4.0.2 device key (SEC1 DER)
and 320-byte server-key file from tests/vectors/udp-4.0.2, checked against a cloud's registered key, its P-256
server key and the address of its 320-byte file, with the cause and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from keys_cli_support import cyan

from cyan.cli._keys_cloud import DataDirRegistry
from cyan.config import Settings
from cyan.keys import (
    Layout,
    build_udp_server_key_file,
    encode_ec_private_key_der,
    fingerprint,
    generate_ec_key,
    inspect_file,
    inspect_key_areas,
    load_ec_private_key,
    parse_server_key_file,
    udp_public_key_der,
)
from cyan.service import prepare_data_directory, write_udp_server_key_file

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "udp-4.0.2"
DEVICE = "0123456789abcdef01234567"
DEVICE_KEY = (VECTORS / "device_key.der").read_bytes()
SERVER_FILE = (VECTORS / "udp_server_key.der").read_bytes()
SERVER_KEY = load_ec_private_key((VECTORS / "udp_server_key.pem").read_bytes())


def _cloud(tmp_path: Path, *, register: bytes | None = DEVICE_KEY) -> Path:
    """A data directory as `cyan serve` leaves it, whose UDP server key is the recording's and whose 320-byte
    file names 127.0.0.1; the device registered with the key in `register`."""
    data = tmp_path / "cloud"
    data.mkdir()
    (data / "udp_server_key.pem").write_bytes((VECTORS / "udp_server_key.pem").read_bytes())
    (data / "udp_server_key.pem").chmod(0o600)
    settings = Settings(data_dir=data, public_address="127.0.0.1")
    prepare_data_directory(settings)
    write_udp_server_key_file(settings, SERVER_KEY.public_key(), 5684)
    if register is not None:
        registry = DataDirRegistry(data)
        registry.register(DEVICE, load_ec_private_key(register).public_key())
        registry.close()
    return data


def test_the_real_320_byte_file_parses_as_device_os_reads_it() -> None:
    parsed = parse_server_key_file(SERVER_FILE)
    assert parsed.layout is Layout.UDP
    assert parsed.key_state == "ok"
    assert parsed.public_key is not None
    assert fingerprint(parsed.public_key) == fingerprint(SERVER_KEY)
    assert parsed.address_state == "ok"
    assert str(parsed.effective_address) == "udp://127.0.0.1:5684"


def test_a_healthy_device_key_and_server_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _cloud(tmp_path)
    key_file = tmp_path / "device_key.der"
    key_file.write_bytes(DEVICE_KEY)
    ran = cyan(capsys, "keys", "inspect", str(key_file), "--device", DEVICE, "--data-dir", str(data))
    assert ran.code == 0, ran.out + ran.err
    assert "P-256 device private key (a UDP device's, P-256 SEC1 DER encoding)" in ran.out
    assert "cloud:       match" in ran.out
    assert "Verdict: no problem found." in ran.out
    server_file = tmp_path / "udp_server_key.der"
    server_file.write_bytes(SERVER_FILE)
    ran = cyan(capsys, "keys", "inspect", str(server_file), "--data-dir", str(data))
    assert ran.code == 0, ran.out + ran.err
    assert "(udp layout)" in ran.out
    assert "server key:  ok, this cloud" in ran.out
    assert "The UDP server key is this cloud's P-256 key." in ran.out
    assert "The device connects to udp://127.0.0.1:5684." in ran.out


def test_a_device_key_the_cloud_does_not_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = generate_ec_key()
    data = _cloud(tmp_path, register=encode_ec_private_key_der(other))
    key_file = tmp_path / "device_key.der"
    key_file.write_bytes(DEVICE_KEY)
    ran = cyan(capsys, "keys", "inspect", str(key_file), "--device", DEVICE, "--data-dir", str(data), "--json")
    assert ran.code == 3
    report = json.loads(ran.out)
    (mismatch,) = [f for f in report["findings"] if f["code"] == "cloud_key_mismatch"]
    assert fingerprint(load_ec_private_key(DEVICE_KEY)) in mismatch["message"]
    assert fingerprint(other) in mismatch["message"]
    assert "key_mismatch" in mismatch["message"]
    assert f"cyan keys send {DEVICE} KEY_FILE" in mismatch["advice"]
    assert DEVICE_KEY.hex() not in ran.out


def test_an_unregistered_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _cloud(tmp_path, register=None)
    key_file = tmp_path / "device_key.der"
    key_file.write_bytes(DEVICE_KEY)
    ran = cyan(capsys, "keys", "inspect", str(key_file), "--device", DEVICE, "--data-dir", str(data))
    assert ran.code == 3
    assert "The cloud holds no key for" in ran.out
    assert f"cyan keys send {DEVICE} KEY_FILE" in ran.out


def test_a_server_file_of_another_cloud_or_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _cloud(tmp_path)
    foreign = tmp_path / "foreign.der"
    foreign.write_bytes(build_udp_server_key_file(generate_ec_key().public_key(), "127.0.0.1", 5684))
    ran = cyan(capsys, "keys", "inspect", str(foreign), "--data-dir", str(data), "--json")
    assert ran.code == 3
    codes = {f["code"]: f for f in json.loads(ran.out)["findings"]}
    assert "bad_signature" in codes["server_key_foreign"]["message"]
    assert fingerprint(SERVER_KEY) in codes["server_key_foreign"]["message"]
    assert "cyan keys server --protocol udp" in codes["server_key_foreign"]["advice"]
    # This cloud's key, another address: a warning, naming the published one.
    elsewhere = tmp_path / "elsewhere.der"
    elsewhere.write_bytes(build_udp_server_key_file(SERVER_KEY.public_key(), "cloud.example.com", 5684))
    ran = cyan(capsys, "keys", "inspect", str(elsewhere), "--data-dir", str(data))
    assert ran.code == 0, ran.out
    assert "[warn] The device connects to udp://cloud.example.com:5684; this cloud publishes udp://127.0.0.1:5684" in (
        ran.out
    )


def test_blank_and_corrupt_server_files() -> None:
    blank = inspect_file(b"\xff" * 320)
    assert [f.code for f in blank.findings] == ["server_key_blank", "server_address_blank"]
    assert blank.server_key is not None
    assert str(blank.server_key.address) == "udp://$id.udp.particle.io:5684"
    corrupt = bytearray(SERVER_FILE)
    corrupt[30:40] = bytes(10)  # inside the public point
    found = inspect_file(bytes(corrupt))
    assert found.findings[0].code == "server_key_corrupt"
    assert "every DTLS handshake fails" in found.findings[0].message
    assert not found.healthy
    # A port other than 5684 in the file: Device OS ignores it over UDP, and the report says so.
    other_port = inspect_file(build_udp_server_key_file(SERVER_KEY.public_key(), "127.0.0.1", 5700))
    assert "udp://127.0.0.1:5684 (the file stores port 5700, which Device OS ignores over UDP)" in (
        other_port.findings[-1].message
    )


def test_a_device_public_key_file() -> None:
    public = udp_public_key_der(load_ec_private_key(DEVICE_KEY))
    found = inspect_file(public)
    assert found.source == "public_key"
    assert found.layout is Layout.UDP
    assert found.findings[0].message == f"Device public key {fingerprint(public)}."


def test_the_key_slot_of_a_udp_device_read_over_dfu() -> None:
    """DCT 3106 as dfu-util reads it: 192 bytes, SEC1 DER then erased fill; or erased; or something else."""
    slot = DEVICE_KEY + b"\xff" * (192 - len(DEVICE_KEY))
    good = inspect_key_areas(slot, SERVER_FILE, Layout.UDP)
    assert good.private_key is not None
    assert (good.private_key.state, good.private_key.encoding) == ("ok", "P-256 SEC1 DER")
    assert good.private_key.presented_fingerprint == fingerprint(load_ec_private_key(DEVICE_KEY))
    blank = inspect_key_areas(b"\xff" * 192, None, Layout.UDP)
    assert blank.private_key is not None
    assert blank.private_key.state == "blank"
    assert "new P-256 key at boot" in (blank.private_key.problem or "")
    rsa_der = b"\x30\x82\x02\x5c" + b"\x02\x01\x00" + b"\x00" * 185
    for garbage in (b"\x30\x05\x02\x01\x00" + b"\x00" * 187, b"\x00" * 192, rsa_der[:192]):
        bad = inspect_key_areas(garbage, None, Layout.UDP)
        assert bad.private_key is not None
        assert bad.private_key.state == "malformed", garbage[:8].hex()
        assert [f.code for f in bad.findings] == ["private_key_malformed"]
