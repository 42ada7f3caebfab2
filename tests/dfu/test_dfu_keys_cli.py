"""`cyan keys` over DFU against the fake dfu-util: load, save, doctor, restore, inspect and address."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dfu_support import ARGON_ID, CORE_ID, PHOTON_ID, FakeDfu, fake_dfu
from keys_cli_support import TOKEN, VECTORS, RecordingApi, cyan, make_cloud, registered, server_public_key, use_api

import cyan.keys as keys
from cyan.cli._keys_cloud import DataDirRegistry
from cyan.config import Settings
from cyan.data import write_udp_server_key_file
from cyan.keys import DctImage, KeyEscrow, Layout, Platform, load_ec_private_key

__all__ = ["fake_dfu"]

KEYS_DATA = Path(__file__).parents[1] / "keys" / "data"
WRITE_KEY = ["-d", "2b04:d006", "-a", "1", "-i", "0", "-s", "34", "-D", "FILE"]
READ_KEY = ["-d", "2b04:d006", "-a", "1", "-s", "34:612", "-U", "FILE"]
READ_SERVER = ["-d", "2b04:d006", "-a", "1", "-s", "2082:512", "-U", "FILE"]


def minimal(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def device_with(private: bytes | None = None, server: bytes | None = None) -> bytes:
    image = DctImage.blank(Layout.PHOTON, 16384)
    if private is not None:
        image = image.with_private_key(private)
    if server is not None:
        image = image.with_server_key_file(server)
    return image.data


# --- load and save ------------------------------------------------------------------------------------------


def test_load_backs_up_writes_and_verifies(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = keys.generate_device_key(), keys.generate_device_key()
    fake = fake_dfu.add(Platform.PHOTON, image=device_with(minimal(old)))
    key_file = tmp_path / "new.der"
    key_file.write_bytes(minimal(new))
    ran = cyan(capsys, "keys", "load", str(key_file))
    assert ran.code == 0, ran.err
    assert fake_dfu.transfers() == [READ_KEY, READ_KEY, WRITE_KEY, READ_KEY]
    assert fake.image[34 : 34 + len(minimal(new))] == minimal(new)
    backups = list(tmp_path.glob(f"backup_rsa_{PHOTON_ID}_*.der"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == minimal(old)
    assert mode(backups[0]) == 0o600
    assert "written and verified" in ran.out
    fake_dfu.clear_log()
    again = cyan(capsys, "keys", "load", str(key_file))
    assert "already holds this key" in again.out
    assert fake_dfu.transfers() == [READ_KEY]


def test_load_writes_what_the_firmware_reads(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = fake_dfu.add(Platform.PHOTON)
    short_dp = (KEYS_DATA / "short_dp_device_key.pem").read_bytes()
    misread = tmp_path / "short_dp.der"
    misread.write_bytes(minimal(keys.load_private_key(short_dp)))
    ran = cyan(capsys, "keys", "load", str(misread), "--leave")
    assert ran.code == 0, ran.err
    assert "fixed-width layout" in ran.out
    written = fake.image[34 : 34 + 611]
    assert written == keys.encode_device_private_key(keys.load_private_key(short_dp))
    assert keys.is_firmware_parsable(written)
    assert fake_dfu.transfers()[-1] == ["-d", "2b04:d006", "-a", "1", "-i", "0", "-s", "34:leave", "-D", "FILE"]
    assert not fake_dfu.in_dfu(0)


def test_load_server_key_file_on_photon_and_core(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_cloud(tmp_path)
    server_file = data / "server_key_10.0.0.2_5683.der"
    photon = fake_dfu.add(Platform.PHOTON)
    core = fake_dfu.add(Platform.CORE)
    assert cyan(capsys, "keys", "load", str(server_file), "--device", PHOTON_ID).code == 0
    assert photon.image[2082:2594] == server_file.read_bytes()
    ran = cyan(capsys, "keys", "load", str(server_file), "--device", CORE_ID)
    assert ran.code == 0, ran.err
    assert core.image[0x1000:0x1800] == keys.build_server_key_file(
        server_public_key(data), "10.0.0.2", 5683, Layout.CORE
    )
    assert ["-d", "1d50:607f", "-a", "1", "-i", "0", "-s", "4096", "-D", "FILE"] in fake_dfu.transfers()
    blank = tmp_path / "blank.der"
    blank.write_bytes(keys.build_server_key_file(server_public_key(data)))
    refused = cyan(capsys, "keys", "load", str(blank), "--device", PHOTON_ID)
    assert refused.code == 1
    assert "no usable address" in refused.err


def test_save(fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = keys.generate_device_key()
    fake_dfu.add(
        Platform.PHOTON,
        image=device_with(
            minimal(key), keys.build_server_key_file(keys.generate_server_key().public_key(), "a.example")
        ),
    )
    out = tmp_path / "saved.der"
    ran = cyan(capsys, "keys", "save", str(out))
    assert ran.code == 0, ran.err
    assert out.read_bytes() == minimal(key)
    assert mode(out) == 0o600
    assert keys.fingerprint((tmp_path / "saved.pub.pem").read_bytes()) == keys.fingerprint(key)
    assert cyan(capsys, "keys", "save", str(out)).code == 1
    assert cyan(capsys, "keys", "save", "--server", str(tmp_path / "srv.der")).out.endswith(
        "address tcp://a.example:5683\n"
    )
    dump = tmp_path / "dct.bin"
    assert cyan(capsys, "keys", "save", "--dct", str(dump)).code == 0
    assert len(dump.read_bytes()) == 8391
    assert mode(dump) == 0o600
    assert fake_dfu.transfers()[-1] == ["-d", "2b04:d006", "-a", "1", "-s", "0:8391", "-U", "FILE"]


def test_save_from_a_blank_device(fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_dfu.add(Platform.PHOTON)
    ran = cyan(capsys, "keys", "save", str(tmp_path / "k.der"))
    assert ran.code == 1
    assert "the device has no private key" in ran.err
    assert not (tmp_path / "k.der").exists()


def test_no_device_and_missing_dfu_util(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = cyan(capsys, "keys", "save", str(tmp_path / "k.der"))
    assert ran.code == 1
    assert "no Photon, P1 or Spark Core in DFU mode" in ran.err
    assert "hint: put the device in DFU mode" in ran.err
    monkeypatch.setenv("PATH", str(tmp_path))
    ran = cyan(capsys, "keys", "address")
    assert ran.code == 1
    assert "dfu-util not found" in ran.err
    assert "apt-get install dfu-util" in ran.err


def test_address_from_the_device(fake_dfu: FakeDfu, capsys: pytest.CaptureFixture[str]) -> None:
    fake_dfu.add(
        Platform.P1,
        image=device_with(server=keys.build_server_key_file(keys.generate_server_key().public_key(), "10.9.8.7", 6000)),
    )
    ran = cyan(capsys, "keys", "address")
    assert (ran.code, ran.out.strip()) == (0, "tcp://10.9.8.7:6000")
    assert fake_dfu.transfers() == [["-d", "2b04:d008", "-a", "1", "-s", "2082:512", "-U", "FILE"]]


# --- doctor ------------------------------------------------------------------------------------------------------


def test_doctor_rekeys_registers_and_points_the_device_here(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_cloud(tmp_path)
    old = keys.generate_device_key()
    fake = fake_dfu.add(Platform.PHOTON, image=device_with(minimal(old)))
    work = tmp_path / "work"
    ran = cyan(capsys, "keys", "doctor", PHOTON_ID, "--data-dir", str(data), "--keys-dir", str(work))
    assert ran.code == 0, ran.out + ran.err
    lines = ran.out.splitlines()
    assert [line.split(":")[0] for line in lines[1:8]] == [
        "[1/7] Find the device in DFU mode",
        "[2/7] Check the cloud",
        "[3/7] Back up the device's current key",
        "[4/7] Make a new key",
        "[5/7] Write the key over DFU",
        "[6/7] Register the key with the cloud",
        "[7/7] Point the device at this cloud",
    ]
    assert lines[-1] == "Done. The device restarts with its new key and connects to tcp://10.0.0.2:5683."
    assert fake_dfu.transfers() == [
        READ_KEY,  # back up
        WRITE_KEY,
        READ_KEY,  # verify
        ["-d", "2b04:d006", "-a", "1", "-i", "0", "-s", "2082:leave", "-D", "FILE"],
    ]
    new_der = (work / f"{PHOTON_ID}_rsa_new.der").read_bytes()
    assert mode(work / f"{PHOTON_ID}_rsa_new.der") == 0o600
    record = registered(data, PHOTON_ID)
    assert record is not None
    assert record.key_fingerprint == keys.fingerprint(new_der)
    image = fake.dct
    assert image.private_key_area[: len(new_der)] == new_der
    assert image.server_key_area == (data / "server_key_10.0.0.2_5683.der").read_bytes()
    assert [p.read_bytes() for p in work.glob("backup_rsa_*.der")] == [minimal(old)]
    assert not fake_dfu.in_dfu(0)
    assert new_der.hex()[:64] not in ran.out + ran.err

    # The device, back in DFU mode, inspects clean against the cloud.
    fake_dfu.set_fail(0, None)
    state = json.loads(fake_dfu.state_path.read_text())
    state["devices"][0]["in_dfu"] = True
    fake_dfu.state_path.write_text(json.dumps(state))
    inspected = cyan(capsys, "keys", "inspect", "--data-dir", str(data))
    assert inspected.code == 0, inspected.out
    assert "Verdict: no problem found." in inspected.out


def test_doctor_gives_a_gen_3_device_a_p256_key_and_the_udp_server_key(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An Argon in DFU mode: its P-256 key (SEC1 DER at DCT 3106, as Device OS 4.0.2 stored it) backed up and
    replaced, the new one registered, and the cloud's 320-byte UDP server-key file written at 3298."""
    data = make_cloud(tmp_path)
    settings = Settings(data_dir=data, public_address="10.0.0.2")
    udp_key = load_ec_private_key((data / "udp_server_key.pem").read_bytes())
    published = write_udp_server_key_file(settings, udp_key.public_key(), 5684)
    old = (VECTORS / "udp-4.0.2" / "device_key.der").read_bytes()
    image = DctImage.blank(Layout.UDP, 16384).with_private_key(old)
    fake = fake_dfu.add(Platform.ARGON, image=image.data)
    work = tmp_path / "work"
    ran = cyan(capsys, "keys", "doctor", ARGON_ID, "--data-dir", str(data), "--keys-dir", str(work))
    assert ran.code == 0, ran.out + ran.err
    assert "Argon" in ran.out
    assert ran.out.splitlines()[-1] == "Done. The device restarts with its new key and connects to udp://10.0.0.2:5684."
    assert fake_dfu.transfers() == [
        ["-d", "2b04:d00c", "-a", "1", "-s", "3106:192", "-U", "FILE"],  # back up
        ["-d", "2b04:d00c", "-a", "1", "-i", "0", "-s", "3106", "-D", "FILE"],
        ["-d", "2b04:d00c", "-a", "1", "-s", "3106:192", "-U", "FILE"],  # verify
        ["-d", "2b04:d00c", "-a", "1", "-i", "0", "-s", "3298:leave", "-D", "FILE"],
    ]
    new_der = (work / f"{ARGON_ID}_ec_new.der").read_bytes()
    assert mode(work / f"{ARGON_ID}_ec_new.der") == 0o600
    new_key = load_ec_private_key(new_der)
    record = registered(data, ARGON_ID)
    assert record is not None
    assert record.key_fingerprint == keys.fingerprint(new_key.public_key())
    assert fake.dct.private_key_area[: len(new_der)] == new_der
    assert fake.dct.server_key_area == published.read_bytes()
    assert [p.read_bytes() for p in work.glob("backup_ec_*.der")] == [old]
    assert not list(work.glob("*rsa*"))

    # Back in DFU mode, the device inspects clean against the cloud's UDP side, read over DFU.
    state = json.loads(fake_dfu.state_path.read_text())
    state["devices"][0]["in_dfu"] = True
    fake_dfu.state_path.write_text(json.dumps(state))
    inspected = cyan(capsys, "keys", "inspect", "--data-dir", str(data))
    assert inspected.code == 0, inspected.out + inspected.err
    assert "Verdict: no problem found." in inspected.out


def test_doctor_stops_when_no_device_is_in_dfu_mode(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_cloud(tmp_path)
    ran = cyan(capsys, "keys", "doctor", PHOTON_ID, "--data-dir", str(data), "--keys-dir", str(tmp_path / "w"))
    assert ran.code == 1
    assert "[1/7] Find the device in DFU mode: FAILED" in ran.out
    assert "hint: put the device in DFU mode" in ran.err
    assert "Stopped. Nothing was changed on the device or in the cloud." in ran.err
    assert list((tmp_path / "w").iterdir()) == []
    assert registered(data, PHOTON_ID) is None


def test_doctor_refuses_another_device(fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_cloud(tmp_path)
    fake_dfu.add(Platform.PHOTON, serial="1E0032000447343337373738")
    ran = cyan(capsys, "keys", "doctor", PHOTON_ID, "--data-dir", str(data), "--keys-dir", str(tmp_path / "w"))
    assert ran.code == 1
    assert f"device {PHOTON_ID} is not in DFU mode here" in ran.err
    assert fake_dfu.transfers() == []


def test_doctor_stops_when_the_write_fails(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_cloud(tmp_path)
    old = keys.generate_device_key()
    fake = fake_dfu.add(Platform.PHOTON, image=device_with(minimal(old)), fail="write_error")
    ran = cyan(capsys, "keys", "doctor", PHOTON_ID, "--data-dir", str(data), "--keys-dir", str(tmp_path / "w"))
    assert ran.code == 1
    assert "[5/7] Write the key over DFU: FAILED" in ran.out
    assert "Error during download get_status" in ran.err
    assert "hint: check the USB cable" in ran.err
    assert "Its previous key is saved in" in ran.err
    assert "The cloud was not changed." in ran.err
    assert registered(data, PHOTON_ID) is None
    assert fake.dct.private_key_area[: len(minimal(old))] == minimal(old)


def test_doctor_detects_a_write_that_does_not_stick(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_cloud(tmp_path)
    fake_dfu.add(Platform.PHOTON, fail="write_corrupt")
    ran = cyan(capsys, "keys", "doctor", PHOTON_ID, "--data-dir", str(data), "--keys-dir", str(tmp_path / "w"))
    assert ran.code == 1
    assert "read back from" in ran.err
    assert registered(data, PHOTON_ID) is None


def test_doctor_stops_when_the_cloud_refuses(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_cloud(tmp_path)
    api = RecordingApi(refuse_provisioning=True)
    use_api(monkeypatch, api)
    fake = fake_dfu.add(Platform.PHOTON)
    work = tmp_path / "w"
    ran = cyan(
        capsys,
        "keys",
        "doctor",
        PHOTON_ID,
        "--api",
        "http://cloud.test",
        "--token",
        TOKEN,
        "--server-key",
        str(data / "server_key_10.0.0.2_5683.der"),
        "--keys-dir",
        str(work),
    )
    assert ran.code == 1
    assert "[6/7] Register the key with the cloud: FAILED" in ran.out
    assert "device belongs to someone else" in ran.err
    assert f"cyan keys send {PHOTON_ID} {work / (PHOTON_ID + '_rsa_new.der')}" in ran.err
    assert fake.dct.server_key_area == b"\xff" * 512  # never pointed at a cloud that refused it
    assert fake_dfu.in_dfu(0)


def test_doctor_checks_the_token_before_touching_the_device(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_api(monkeypatch, RecordingApi())
    fake_dfu.add(Platform.PHOTON)
    ran = cyan(
        capsys,
        "keys",
        "doctor",
        PHOTON_ID,
        "--api",
        "http://cloud.test",
        "--token",
        "expired",
        "--keep-server-key",
        "--keys-dir",
        str(tmp_path / "w"),
    )
    assert ran.code == 1
    assert "[2/6] Check the cloud: FAILED" in ran.out
    assert "refused the token" in ran.err
    assert fake_dfu.transfers() == []


def test_doctor_over_the_api_with_escrow(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_cloud(tmp_path)
    api = RecordingApi()
    use_api(monkeypatch, api)
    monkeypatch.setattr("cyan.keys._escrow.DEFAULT_SCRYPT_N", 2**10)
    monkeypatch.setenv("CYAN_ESCROW_PASSPHRASE", "fleet passphrase 1")
    fake_dfu.add(Platform.PHOTON)
    escrow = tmp_path / "fleet.escrow"
    ran = cyan(
        capsys,
        "keys",
        "doctor",
        PHOTON_ID,
        "--api",
        "http://cloud.test",
        "--token",
        TOKEN,
        "--server-key",
        str(data / "server_public_key.der"),
        "--host",
        "cloud.example.com",
        "--stay",
        "--escrow",
        str(escrow),
        "--keys-dir",
        str(tmp_path / "w"),
    )
    assert ran.code == 0, ran.out + ran.err
    assert "press RESET" in ran.out
    assert fake_dfu.in_dfu(0)
    assert fake_dfu.transfers()[-2:] == [
        ["-d", "2b04:d006", "-a", "1", "-i", "0", "-s", "2082", "-D", "FILE"],
        READ_SERVER,
    ]
    new_der = (tmp_path / "w" / f"{PHOTON_ID}_rsa_new.der").read_bytes()
    assert api.held[PHOTON_ID] == keys.fingerprint(new_der)
    vault = KeyEscrow.open(escrow.read_bytes(), "fleet passphrase 1")
    entry = vault.find(PHOTON_ID)
    assert entry is not None
    assert vault.unseal(entry) == new_der


# --- restore and inspect -------------------------------------------------------------------------------------


def test_restore_puts_the_same_identity_back(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_cloud(tmp_path)
    monkeypatch.setenv("CYAN_ESCROW_PASSPHRASE", "fleet passphrase 1")
    key = keys.generate_device_key()
    vault = KeyEscrow.create("fleet passphrase 1", n=2**10)
    escrow = tmp_path / "fleet.escrow"
    escrow.write_bytes(vault.header_line() + vault.seal(PHOTON_ID, minimal(key), datetime.now(UTC)).to_line())
    registry = DataDirRegistry(data)
    registry.register(PHOTON_ID, key.public_key())
    registry.close()
    fake = fake_dfu.add(Platform.PHOTON)  # the unit lost its key: blank
    ran = cyan(capsys, "keys", "restore", PHOTON_ID, "--escrow", str(escrow), "--data-dir", str(data))
    assert ran.code == 0, ran.err
    assert f"Restored key {keys.fingerprint(key)}" in ran.out
    assert "warning" not in ran.err
    assert fake.dct.private_key_area[: len(minimal(key))] == minimal(key)
    assert fake_dfu.transfers() == [READ_KEY, READ_KEY, WRITE_KEY, READ_KEY]
    # The cloud holding another key is pointed out.
    registry = DataDirRegistry(data)
    registry.register(PHOTON_ID, keys.generate_device_key().public_key())
    registry.close()
    ran = cyan(capsys, "keys", "restore", PHOTON_ID, "--escrow", str(escrow), "--data-dir", str(data))
    assert "already holds its escrowed key" in ran.out
    assert "the cloud holds SHA256:" in ran.err


def test_inspect_device_with_a_foreign_and_a_particle_server_key(
    fake_dfu: FakeDfu, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_cloud(tmp_path)
    particle = (KEYS_DATA / "particle_cloud_server_key.der").read_bytes() + b"\xff" * 218
    fake_dfu.add(Platform.PHOTON, image=device_with(minimal(keys.generate_device_key()), particle))
    ran = cyan(capsys, "keys", "inspect", "--data-dir", str(data), "--json")
    assert ran.code == 3
    report = json.loads(ran.out)
    assert report["device_id"] == PHOTON_ID
    assert report["cloud"]["match"] == "unregistered"
    assert report["server_key"]["identity"] == "particle"
    assert [f["code"] for f in report["findings"]] == [
        "private_key_ok",
        "device_not_registered",
        "server_key_particle",
        "server_address_blank",
    ]
    assert fake_dfu.transfers() == [READ_KEY, READ_SERVER]
