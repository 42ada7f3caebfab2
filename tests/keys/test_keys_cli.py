"""`cyan keys` commands that need no USB device: server, address, new, send, provision, restore -o, inspect FILE."""

from __future__ import annotations

import csv
import json
import re
import stat
from pathlib import Path

import pytest
from keys_cli_support import TOKEN, RecordingApi, cyan, make_cloud, registered, server_public_key, use_api
from keys_support import DOS31, device_key, minimal_der

import cyan.keys as keys
from cyan.cli._keys_cloud import DataDirRegistry
from cyan.keys import KeyEscrow, Layout

DEVICE_A = "3c002d000447343138333038"
DEVICE_B = "21003a000d47343233323032"
PASSPHRASE = "fleet passphrase 1"


@pytest.fixture
def fast_escrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """New escrow files with the cheapest scrypt cost (the file records it; reading is unchanged)."""
    monkeypatch.setattr("cyan.keys._escrow.DEFAULT_SCRYPT_N", 2**10)
    monkeypatch.setenv("CYAN_ESCROW_PASSPHRASE", PASSPHRASE)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- server and address ---------------------------------------------------------------------------------------


def test_server_file_for_the_published_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_cloud(tmp_path)
    monkeypatch.chdir(tmp_path)
    ran = cyan(capsys, "keys", "server", "--data-dir", str(data))
    assert ran.code == 0, ran.err
    written = tmp_path / "server_public_key-10_0_0_2-rsa.der"
    public = server_public_key(data)
    assert written.read_bytes() == keys.build_server_key_file(public, "10.0.0.2", 5683)
    # The recordings' server-key file was written by the Particle CLI for the same key and 127.0.0.1:5683.
    ran = cyan(
        capsys, "keys", "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", "5683", "-o", "r.der"
    )
    assert ran.code == 0, ran.err
    assert (tmp_path / "r.der").read_bytes() == (DOS31 / "server_key.der").read_bytes()
    assert "devices connect to tcp://127.0.0.1:5683" in ran.out


def test_server_file_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_cloud(tmp_path)
    public = server_public_key(data)
    out = tmp_path / "s.der"
    args = ["keys", "server", "--data-dir", str(data), "-o", str(out)]
    assert cyan(capsys, *args, "--host", "cloud.example.com").code == 0
    assert out.read_bytes() == keys.build_server_key_file(public, "cloud.example.com")
    refused = cyan(capsys, *args, "--host", "other.example.com")
    assert refused.code == 1
    assert "exists and differs" in refused.err
    assert cyan(capsys, *args, "--host", "other.example.com", "--force").code == 0
    core = tmp_path / "core.der"
    assert (
        cyan(
            capsys,
            "keys",
            "server",
            "--data-dir",
            str(data),
            "--core",
            "--host",
            "10.0.0.9",
            "--port",
            "7000",
            "-o",
            str(core),
        ).code
        == 0
    )
    assert core.read_bytes() == keys.build_server_key_file(public, "10.0.0.9", 7000, Layout.CORE)
    pem = tmp_path / "server.pub.pem"
    pem.write_bytes(keys.encode_public_key_pem(public))
    assert (
        cyan(capsys, "keys", "server", "--key", str(pem), "--host", "10.1.1.1", "-o", str(tmp_path / "k.der")).code == 0
    )
    assert (tmp_path / "k.der").read_bytes() == keys.build_server_key_file(public, "10.1.1.1")
    bad = cyan(capsys, "keys", "server", "--key", str(pem), "--host", "1.2.3", "-o", str(tmp_path / "x.der"))
    assert bad.code == 1
    assert "not a dotted quad" in bad.err


def test_server_needs_a_key_and_an_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = cyan(capsys, "keys", "server", "--data-dir", str(tmp_path / "nothing"))
    assert missing.code == 1
    assert "no server key" in missing.err
    assert "cyan serve" in missing.err
    data = make_cloud(tmp_path)
    (data / "server_key_10.0.0.2_5683.der").unlink()
    ran = cyan(capsys, "keys", "server", "--data-dir", str(data))
    assert ran.code == 1
    assert "give --host" in ran.err


def test_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_cloud(tmp_path)
    ran = cyan(capsys, "keys", "address", str(data / "server_key_10.0.0.2_5683.der"))
    assert (ran.code, ran.out.strip()) == (0, "tcp://10.0.0.2:5683")
    blank = tmp_path / "blank.der"
    blank.write_bytes(keys.build_server_key_file(server_public_key(data)))
    ran = cyan(capsys, "keys", "address", str(blank))
    assert ran.out.strip() == "tcp://device.spark.io:5683"
    assert "the address block is blank" in ran.err
    image = keys.DctImage.blank(Layout.PHOTON).with_server_key_file(
        keys.build_server_key_file(server_public_key(data), "a.example", 6000)
    )
    dump = tmp_path / "dct.bin"
    dump.write_bytes(image.data)
    assert cyan(capsys, "keys", "address", str(dump)).out.strip() == "tcp://a.example:6000"


# --- new and send ---------------------------------------------------------------------------------------------


def test_new_writes_a_parsable_key_owner_only_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = str(tmp_path / "dev1")
    ran = cyan(capsys, "keys", "new", name)
    assert ran.code == 0, ran.err
    private, public = tmp_path / "dev1.der", tmp_path / "dev1.pub.pem"
    assert mode(private) == 0o600
    der = private.read_bytes()
    assert keys.is_firmware_parsable(der)
    assert keys.fingerprint(keys.load_public_key(public.read_bytes())) == keys.fingerprint(der)
    assert keys.fingerprint(der) in ran.out
    assert der.hex()[:40] not in ran.out + ran.err
    again = cyan(capsys, "keys", "new", name)
    assert again.code == 1
    assert "never overwritten" in again.err
    assert private.read_bytes() == der
    assert cyan(capsys, "keys", "new", name, "--force").code == 0
    assert private.read_bytes() != der
    assert mode(private) == 0o600


def test_send_to_a_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_cloud(tmp_path)
    key_file = tmp_path / "k.der"
    key_file.write_bytes(minimal_der(device_key()))
    ran = cyan(capsys, "keys", "send", DEVICE_A.upper(), str(key_file), "--data-dir", str(data))
    assert ran.code == 0, ran.err
    record = registered(data, DEVICE_A)
    assert record is not None
    assert record.key_fingerprint == keys.fingerprint(device_key())
    other = keys.generate_device_key()
    key_file.write_bytes(keys.encode_public_key_pem(other))
    assert (
        cyan(capsys, "keys", "send", DEVICE_A, str(key_file), "--data-dir", str(data), "--product-id", "42").code == 0
    )
    record = registered(data, DEVICE_A)
    assert record is not None
    assert (record.key_fingerprint, record.product_id) == (keys.fingerprint(other), 42)
    bad = cyan(capsys, "keys", "send", "kitchen", str(key_file), "--data-dir", str(data))
    assert bad.code == 2
    server = tmp_path / "server.der"
    server.write_bytes((data / "server_public_key.der").read_bytes())
    wrong = cyan(capsys, "keys", "send", DEVICE_A, str(server), "--data-dir", str(data))
    assert wrong.code == 1
    assert "2048 bits" in wrong.err


def test_send_posts_what_particle_keys_send_posts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RecordingApi()
    use_api(monkeypatch, api)
    key_file = tmp_path / "k.der"
    key_file.write_bytes(minimal_der(device_key()))
    ran = cyan(
        capsys,
        "keys",
        "send",
        DEVICE_A,
        str(key_file),
        "--api",
        "http://cloud.test:8080",
        "--token",
        TOKEN,
        "--product-id",
        "7",
    )
    assert ran.code == 0, ran.err
    request = api.requests[-1]
    assert (request.method, str(request.url)) == ("POST", f"http://cloud.test:8080/v1/provisioning/{DEVICE_A}")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = api.form()
    assert sorted(form) == ["algorithm", "deviceID", "filename", "order", "product_id", "publicKey"]
    assert (form["deviceID"], form["algorithm"], form["filename"], form["product_id"]) == (DEVICE_A, "rsa", "cli", "7")
    assert re.fullmatch(r"manual_\d{13}", form["order"])
    assert form["publicKey"].startswith("-----BEGIN PUBLIC KEY-----\n")
    assert keys.fingerprint(form["publicKey"].encode()) == keys.fingerprint(device_key())


def test_send_refused_or_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RecordingApi(refuse_provisioning=True)
    use_api(monkeypatch, api)
    key_file = tmp_path / "k.der"
    key_file.write_bytes(minimal_der(device_key()))
    ran = cyan(capsys, "keys", "send", DEVICE_A, str(key_file), "--api", "http://cloud.test", "--token", TOKEN)
    assert ran.code == 1
    assert "refused the key" in ran.err
    assert "device belongs to someone else" in ran.err
    assert "hint: check the access token" in ran.err
    missing = cyan(capsys, "keys", "send", DEVICE_A, str(key_file), "--api", "http://cloud.test")
    assert missing.code == 1
    assert "no access token" in missing.err
    no_cloud = cyan(capsys, "keys", "send", DEVICE_A, str(key_file), "--data-dir", str(tmp_path / "none"))
    assert no_cloud.code == 1
    assert "no Cyan database" in no_cloud.err


# --- provision, escrow, restore -o ---------------------------------------------------------------------------


def test_fleet_provisioning_with_escrow(tmp_path: Path, capsys: pytest.CaptureFixture[str], fast_escrow: None) -> None:
    data = make_cloud(tmp_path)
    ids = tmp_path / "ids.csv"
    ids.write_text(f"device_id,name\n{DEVICE_A},kitchen\n\n# spare\n{DEVICE_B.upper()}\n")
    out, escrow = tmp_path / "keys", tmp_path / "fleet.escrow"
    args = ["keys", "provision", "--ids", str(ids), "--out", str(out), "--escrow", str(escrow), "--data-dir", str(data)]
    ran = cyan(capsys, *args)
    assert ran.code == 0, ran.err
    assert "2 devices: 2 new keys, 0 kept; 2 registered, 0 already registered, 0 failed" in ran.out
    assert mode(out) == 0o700
    assert mode(escrow) == 0o600
    fingerprints = {}
    for device_id in (DEVICE_A, DEVICE_B):
        der = (out / f"{device_id}.der").read_bytes()
        assert mode(out / f"{device_id}.der") == 0o600
        assert keys.is_firmware_parsable(der)
        fingerprints[device_id] = keys.fingerprint(der)
        record = registered(data, device_id)
        assert record is not None
        assert record.key_fingerprint == fingerprints[device_id]
    record = registered(data, DEVICE_A)
    assert record is not None
    assert record.name == "kitchen"
    with (out / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["device_id"], r["name"], r["fingerprint"], r["status"]) for r in rows] == [
        (DEVICE_A, "kitchen", fingerprints[DEVICE_A], "registered"),
        (DEVICE_B, "", fingerprints[DEVICE_B], "registered"),
    ]
    vault = KeyEscrow.open(escrow.read_bytes(), PASSPHRASE)
    assert [(e.device_id, e.fingerprint) for e in vault.entries] == list(fingerprints.items())

    # Running it again changes nothing: keys are kept, nothing is escrowed or registered twice.
    again = cyan(capsys, *args)
    assert again.code == 0, again.err
    assert "0 new keys, 2 kept; 0 registered, 2 already registered" in again.out
    assert len(KeyEscrow.open(escrow.read_bytes(), PASSPHRASE).entries) == 2

    # A unit that lost its key gets the same identity back from escrow.
    restored = tmp_path / "restored.der"
    ran = cyan(capsys, "keys", "restore", DEVICE_B, "--escrow", str(escrow), "-o", str(restored))
    assert ran.code == 0, ran.err
    assert restored.read_bytes() == (out / f"{DEVICE_B}.der").read_bytes()
    assert mode(restored) == 0o600


def test_provision_over_the_api_stops_when_the_cloud_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RecordingApi(held={DEVICE_B: "SHA256:old"})
    use_api(monkeypatch, api)
    ids = tmp_path / "ids.csv"
    ids.write_text(f"{DEVICE_A},kitchen\n{DEVICE_B}\n")
    out = tmp_path / "keys"
    ran = cyan(
        capsys,
        "keys",
        "provision",
        "--ids",
        str(ids),
        "--out",
        str(out),
        "--api",
        "http://cloud.test",
        "--token",
        TOKEN,
    )
    assert ran.code == 0, ran.err
    assert "with ops@example.com at http://cloud.test" in ran.out
    assert [r.url.path for r in api.requests if r.method != "GET"] == [
        f"/v1/provisioning/{DEVICE_A}",
        f"/v1/devices/{DEVICE_A}",
        f"/v1/provisioning/{DEVICE_B}",
    ]
    bad_token = cyan(
        capsys,
        "keys",
        "provision",
        "--ids",
        str(ids),
        "--out",
        str(out),
        "--api",
        "http://cloud.test",
        "--token",
        "wrong",
    )
    assert bad_token.code == 1
    assert "refused the token" in bad_token.err


def test_provision_rejects_bad_id_lists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_cloud(tmp_path)
    ids = tmp_path / "ids.csv"
    for text, message in [
        (f"{DEVICE_A}\nkitchen\n", "line 2: 'kitchen' is not a device id"),
        (f"{DEVICE_A}\n{DEVICE_A.upper()}\n", f"line 2: device {DEVICE_A} is listed twice"),
        ("device_id\n", "lists no device ids"),
    ]:
        ids.write_text(text)
        ran = cyan(
            capsys, "keys", "provision", "--ids", str(ids), "--out", str(tmp_path / "k"), "--data-dir", str(data)
        )
        assert ran.code == 1
        assert message in ran.err


def test_restore_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fast_escrow: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    escrow = tmp_path / "e.escrow"
    vault = KeyEscrow.create(PASSPHRASE, n=2**10)
    escrow.write_bytes(vault.header_line())
    ran = cyan(capsys, "keys", "restore", DEVICE_A, "--escrow", str(escrow), "-o", str(tmp_path / "k.der"))
    assert ran.code == 1
    assert f"holds no key for {DEVICE_A}" in ran.err
    monkeypatch.setenv("CYAN_ESCROW_PASSPHRASE", "not the passphrase")
    ran = cyan(capsys, "keys", "restore", DEVICE_A, "--escrow", str(escrow), "-o", str(tmp_path / "k.der"))
    assert ran.code == 1
    assert "does not open this escrow file" in ran.err
    pass_file = tmp_path / "pass.txt"
    pass_file.write_text(PASSPHRASE + "\n")
    monkeypatch.delenv("CYAN_ESCROW_PASSPHRASE")
    ran = cyan(
        capsys,
        "keys",
        "restore",
        DEVICE_A,
        "--escrow",
        str(escrow),
        "--passphrase-file",
        str(pass_file),
        "-o",
        str(tmp_path / "k.der"),
    )
    assert "holds no key" in ran.err


# --- inspect FILE -----------------------------------------------------------------------------------------------


def test_inspect_files_exit_status_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_cloud(tmp_path)
    der = minimal_der(device_key())
    registry = DataDirRegistry(data)
    registry.register(DEVICE_A, device_key().public_key())
    registry.close()
    server_file = (data / "server_key_10.0.0.2_5683.der").read_bytes()
    good = tmp_path / "good.bin"
    good.write_bytes(keys.DctImage.blank(Layout.PHOTON).with_private_key(der).with_server_key_file(server_file).data)
    ran = cyan(capsys, "keys", "inspect", str(good), "--device", DEVICE_A, "--data-dir", str(data))
    assert ran.code == 0, ran.out + ran.err
    assert "Verdict: no problem found." in ran.out
    assert "server key:  ok, this cloud" in ran.out
    assert "cloud:       match" in ran.out
    blank = tmp_path / "blank.bin"
    blank.write_bytes(keys.DctImage.blank(Layout.PHOTON).data)
    ran = cyan(capsys, "keys", "inspect", str(blank), "--device", DEVICE_A, "--data-dir", str(data), "--json")
    assert ran.code == 3
    report = json.loads(ran.out)
    assert report["healthy"] is False
    assert [f["code"] for f in report["findings"]] == ["private_key_blank", "server_key_blank", "server_address_blank"]
    assert der.hex() not in ran.out
