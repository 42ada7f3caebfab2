"""EC P-256 keys of the UDP fleet: loading, fingerprints, the device keys accepted beside RSA ones, and the
320-byte UDP server-key file, byte for byte as the real Particle CLI's formatter writes it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from keys_cli_support import cyan, make_cloud
from keys_support import device_key
from test_keys_particle_cli_format import KEYS_JS, require_formatter

import cyan.keys as keys

UDP_VECTORS = Path(__file__).parents[1] / "vectors" / "udp-4.0.2"

CASES = [
    ("127.0.0.1", 5684),
    ("192.168.1.20", None),
    ("cloud.example.com", 7000),
    ("cloud.example.com", None),
]

SCRIPT = """
const K = require(process.env.KEYS_JS);
const cases = JSON.parse(process.env.CASES);
for (const [i, [host, port]] of cases.entries()) {
  const k = new K();
  k.platform = 'argon';
  k._formatPublicKey('server_pub.der', host, port === null ? undefined : port,
                     {protocol: 'udp', outputFilename: `out-${i}.der`});
}
"""


def udp_server_key() -> ec.EllipticCurvePrivateKey:
    """The P-256 server key of the Device OS 4.0.2 UDP recordings."""
    return keys.load_ec_private_key((UDP_VECTORS / "udp_server_key.pem").read_bytes())


@pytest.fixture(scope="module")
def particle_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    node = require_formatter()
    work = tmp_path_factory.mktemp("particle-format-udp")
    (work / ".particle").mkdir()
    (work / "server_pub.der").write_bytes(keys.udp_public_key_der(udp_server_key()))
    env = {**os.environ, "HOME": str(work), "PARTICLE_DISABLE_UPDATE": "true", "KEYS_JS": str(KEYS_JS)}
    env["CASES"] = json.dumps(CASES)
    done = subprocess.run(
        [str(node), "-e", SCRIPT], cwd=work, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return [(work / f"out-{i}.der").read_bytes() for i in range(len(CASES))]


@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES)), ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_the_udp_server_key_file_equals_the_cli(
    particle_files: list[bytes], index: int, case: tuple[str, int | None]
) -> None:
    host, port = case
    expected = particle_files[index]
    assert len(expected) == keys.UDP_SERVER_KEY_FILE_SIZE
    assert keys.build_udp_server_key_file(udp_server_key().public_key(), host, port) == expected


def test_cyan_keys_server_protocol_udp_equals_the_cli(
    particle_files: list[bytes], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "udp_pub.der"
    key_file.write_bytes(keys.udp_public_key_der(udp_server_key()))
    for index, (host, port) in enumerate(CASES):
        out = tmp_path / f"cyan-{index}.der"
        args = ["keys", "server", "--protocol", "udp", "--key", str(key_file), "--host", host, "-o", str(out)]
        args += ["--port", str(port)] if port is not None else []
        ran = cyan(capsys, *args)
        assert ran.code == 0, ran.err
        assert out.read_bytes() == particle_files[index], (host, port)


def test_the_udp_file_layout() -> None:
    public = udp_server_key().public_key()
    data = keys.build_udp_server_key_file(public, "127.0.0.1", 5684)
    der = keys.udp_public_key_der(public)
    assert len(der) == 91
    assert data[:91] == der
    assert data[91:192] == b"\xff" * 101
    assert data[192:198] == bytes([0, 4, 127, 0, 0, 1])
    assert data[258:260] == (5684).to_bytes(2, "big")
    assert keys.load_ec_public_key(data).public_numbers() == public.public_numbers()
    # The recordings' device read this very file (Device OS 4.0.2, gcc).
    assert data == (UDP_VECTORS / "udp_server_key.der").read_bytes()


def test_ec_keys_load_from_every_form_and_share_one_fingerprint() -> None:
    private = keys.load_ec_private_key((UDP_VECTORS / "device_key.der").read_bytes())
    forms = [
        (UDP_VECTORS / "device_key.der").read_bytes(),  # SEC1 DER, as the device holds it
        keys.encode_ec_private_key_pem(private),
        private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        keys.udp_public_key_der(private),
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        (UDP_VECTORS / "device_key.der").read_bytes() + b"\xff" * 71,  # a DCT dump's fill after the key
    ]
    fingerprints = {keys.fingerprint(form) for form in forms}
    assert fingerprints == {keys.fingerprint(private)}
    assert {keys.device_public_key_der(form) for form in forms} == {keys.udp_public_key_der(private)}


def test_device_keys_are_rsa_1024_or_p256_and_nothing_else() -> None:
    rsa_der = (
        device_key()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert keys.device_public_key_der(rsa_der) == rsa_der
    assert not keys.is_ec_key(rsa_der)
    other_curve = ec.generate_private_key(ec.SECP384R1())
    pem = other_curve.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert keys.is_ec_key(pem)
    with pytest.raises(keys.KeyFormatError, match="P-256"):
        keys.device_public_key_der(pem)
    with pytest.raises(keys.KeyFormatError):
        keys.device_public_key_der(b"\x30\x03\x02\x01\x00")


def test_devices_add_takes_a_p256_key_der_or_pem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private = keys.load_ec_private_key((UDP_VECTORS / "device_key.der").read_bytes())
    data = make_cloud(tmp_path)
    der = tmp_path / "argon.der"
    der.write_bytes((UDP_VECTORS / "device_key.der").read_bytes())
    pem = tmp_path / "argon.pem"
    pem.write_bytes(keys.encode_ec_private_key_pem(keys.generate_ec_key()))
    first = cyan(capsys, "devices", "add", "0123456789abcdef01234567", "--key", str(der), "--data-dir", str(data))
    assert first.code == 0, first.err
    assert keys.fingerprint(private) in first.out
    second = cyan(capsys, "devices", "add", "0123456789abcdef01234568", "--key", str(pem), "--data-dir", str(data))
    assert second.code == 0, second.err
