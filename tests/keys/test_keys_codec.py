"""Loading, checking, encoding and fingerprinting keys."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from keys_support import (
    APPENDIX_A,
    DOS31,
    device_key,
    minimal_der,
    pkcs1_public_der,
    read,
    rsa_4096,
    server_key,
    spki_der,
)

import cyan.keys as keys
from cyan.keys import KeyFormatError

NO_ENCRYPTION = serialization.NoEncryption()
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


def pem(label: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        b"-----BEGIN " + label.encode() + b"-----\n" + b"\n".join(lines) + b"\n-----END " + label.encode() + b"-----\n"
    )


def same_private(a: rsa.RSAPrivateKey, b: rsa.RSAPrivateKey) -> bool:
    return a.private_numbers() == b.private_numbers()


# --- load_private_key -------------------------------------------------------------------------------------


def private_forms() -> dict[str, bytes]:
    key = device_key()
    fixed = keys.encode_device_private_key(key)
    return {
        "pem pkcs1 vector": read(DOS31 / "device_key.pem"),
        "der pkcs1 vector": read(DOS31 / "device_key.der"),
        "pem pkcs8": key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION),
        "der pkcs8": key.private_bytes(DER, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION),
        "der fixed width": fixed,
        "pem fixed width": pem("RSA PRIVATE KEY", fixed),
        "dct area 0xff fill": minimal_der(key) + b"\xff" * (612 - len(minimal_der(key))),
        "dct area garbage": fixed + b"\x00garbage",
        "pem with text around": b"Bag Attributes\n  friendlyName: x\n" + read(DOS31 / "device_key.pem") + b"trailer\n",
        "pem crlf": read(DOS31 / "device_key.pem").replace(b"\n", b"\r\n"),
    }


@pytest.mark.parametrize("form", sorted(private_forms()))
def test_load_private_key_accepts_every_form(form: str) -> None:
    assert same_private(keys.load_private_key(private_forms()[form]), device_key())


def test_load_private_key_reads_the_spec_appendix_keys() -> None:
    server = keys.load_private_key(read(APPENDIX_A / "server_key.pem"))
    device = keys.load_private_key(read(APPENDIX_A / "device_key.pem"))
    assert (server.key_size, device.key_size) == (2048, 1024)
    # protocol.md §A.6 lists the server SPKI; its first modulus bytes are a2 69 e6 94.
    assert keys.public_key_der(server.public_key())[:37].hex() == (
        "30820122300d06092a864886f70d01010105000382010f003082010a0282010100a269e694"
    )


def test_load_private_key_picks_the_private_block_of_a_combined_pem() -> None:
    combined = keys.encode_public_key_pem(device_key()) + keys.encode_private_key_pem(device_key())
    assert same_private(keys.load_private_key(combined), device_key())


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def fixed_with(offset: int, new: bytes) -> bytes:
    fixed = keys.encode_device_private_key(device_key())
    return fixed[:offset] + new + fixed[offset + len(new) :]


PRIVATE_ERRORS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "^private key is empty$"),
    ("erased", b"\xff" * 612, r"^private key is blank: all 612 bytes are 0xFF \(erased flash\)"),
    ("first byte erased", b"\xff\x30\x00", r"starts with 0xFF, which the firmware treats as a blank \(erased\)"),
    ("text", b"hello world", r"^private key is not DER: expected a SEQUENCE \(0x30\) at offset 0, found 0x68$"),
    ("truncated", minimal_der(device_key())[:300], r"DER is truncated: the private key SEQUENCE at offset 0"),
    (
        "ec pkcs8 pem",
        ec_key().private_bytes(PEM, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION),
        r"PEM 'PRIVATE KEY' is not an RSA key \(found EC\); devices and servers use RSA",
    ),
    (
        "ec traditional pem",
        ec_key().private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL, NO_ENCRYPTION),
        r"expected a private key \('RSA PRIVATE KEY' or 'PRIVATE KEY'\), but the PEM data holds 'EC PRIVATE KEY'",
    ),
    (
        "ed25519 der",
        ed25519.Ed25519PrivateKey.generate().private_bytes(DER, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION),
        r"private key is not an RSA key \(found Ed25519\)",
    ),
    (
        "encrypted pkcs8 pem",
        device_key().private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        ),
        r"encrypted private key \('ENCRYPTED PRIVATE KEY'\) and no password can be given",
    ),
    (
        "encrypted pkcs8 der",
        device_key().private_bytes(
            DER, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        ),
        "private key is an encrypted PKCS#8 key and no password can be given",
    ),
    (
        "encrypted traditional pem",
        device_key().private_bytes(
            PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.BestAvailableEncryption(b"pw")
        ),
        r"PEM block 'RSA PRIVATE KEY' is encrypted \(Proc-Type ENCRYPTED\)",
    ),
    (
        "public key pem",
        keys.encode_public_key_pem(device_key()),
        r"expected a private key .*, but the PEM data holds 'PUBLIC KEY'$",
    ),
    ("bad base64", b"-----BEGIN RSA PRIVATE KEY-----\nnot*base64\n-----END RSA PRIVATE KEY-----\n", "not valid base64"),
    (
        "empty pem body",
        b"-----BEGIN RSA PRIVATE KEY-----\n-----END RSA PRIVATE KEY-----\n",
        "^PEM 'RSA PRIVATE KEY' is empty$",
    ),
    ("no end line", b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n", r"no complete PEM block \(missing END line\?\)"),
    (
        "mismatched labels",
        b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "PEM block 'BEGIN RSA PRIVATE KEY' ends with 'END PRIVATE KEY'",
    ),
    ("inconsistent numbers", fixed_with(200, b"\x00\x00"), "well-formed DER but its RSA numbers are inconsistent"),
    (
        "octet string inside",
        bytes.fromhex("300304010a"),
        r"not a usable RSA private key: expected INTEGER version \(tag 0x02\) at offset 2, found tag 0x04",
    ),
    ("indefinite length", bytes.fromhex("30800000"), "uses an indefinite length, which DER does not allow"),
    ("huge length field", bytes.fromhex("3085ffffffffff"), "declares a 5-byte length field; too long"),
    ("non-minimal length", bytes.fromhex("3081050201000201"), "has a non-minimal length encoding"),
    ("cut length", bytes.fromhex("308201"), r"the length of the private key SEQUENCE at offset 0 is cut off"),
    ("empty integer", bytes.fromhex("30020200"), "INTEGER version at offset 2 is empty"),
    ("negative integer", bytes.fromhex("3003020180"), "INTEGER version at offset 2 is negative"),
    ("missing fields", bytes.fromhex("3003020100"), "INTEGER modulus should start at offset 5 but the data ends there"),
    ("no length byte", bytes.fromhex("300102"), "INTEGER version at offset 2 has no length byte"),
    ("integer past sequence", bytes.fromhex("3003020200") + b"\x00", "INTEGER version at offset 2 declares 2 value"),
    (
        "multi-prime version",
        bytes.fromhex("301b") + bytes.fromhex("020101") + bytes.fromhex("020103") * 8,
        "RSA private key has version 1; only version 0 \\(two-prime\\) keys are supported",
    ),
    (
        "extra element",
        bytes.fromhex("301e") + bytes.fromhex("020100") + bytes.fromhex("020103") * 8 + bytes.fromhex("0201ff"),
        "RSA private key has 3 unexpected bytes after the coefficient at offset 29",
    ),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in PRIVATE_ERRORS], ids=[c[0] for c in PRIVATE_ERRORS])
def test_load_private_key_errors_are_precise(data: bytes, message: str) -> None:
    with pytest.raises(KeyFormatError, match=message):
        keys.load_private_key(data)


def test_key_format_error_is_a_value_error() -> None:
    assert issubclass(KeyFormatError, ValueError)


# --- load_public_key --------------------------------------------------------------------------------------


def public_forms() -> dict[str, bytes]:
    key = server_key()
    public = key.public_key()
    return {
        "spki pem": keys.encode_public_key_pem(public),
        "spki der": spki_der(public),
        "pkcs1 pem": public.public_bytes(PEM, serialization.PublicFormat.PKCS1),
        "pkcs1 der": pkcs1_public_der(public),
        "private pem": read(DOS31 / "server_key.pem"),
        "private der": minimal_der(key),
        "server key file": read(DOS31 / "server_key.der"),
        "dct region dump": read(DOS31 / "server_key.der") + b"\xff" * 256,
    }


@pytest.mark.parametrize("form", sorted(public_forms()))
def test_load_public_key_accepts_every_form(form: str) -> None:
    assert keys.load_public_key(public_forms()[form]) == server_key().public_key()


def test_load_public_key_from_the_firmware_private_layout() -> None:
    assert keys.load_public_key(keys.encode_device_private_key(device_key())) == device_key().public_key()


PUBLIC_ERRORS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "^public key is empty$"),
    ("erased", b"\xff" * 512, "^public key is blank: all 512 bytes are 0xFF"),
    ("text", b"ssh-rsa AAAA", r"public key is not DER: expected a SEQUENCE \(0x30\) at offset 0, found 0x73"),
    (
        "ec public pem",
        ec_key().public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        r"PEM 'PUBLIC KEY' is not an RSA key \(found EC\); devices and servers use RSA",
    ),
    (
        "ec private der",
        ec_key().private_bytes(DER, serialization.PrivateFormat.PKCS8, NO_ENCRYPTION),
        "public key is neither an RSA public key nor an RSA private key: public key is not an RSA key \\(found EC\\)",
    ),
    (
        "certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        r"expected an RSA key .*, but the PEM data holds 'CERTIFICATE'",
    ),
    (
        "random sequence",
        bytes.fromhex("3003040100"),
        "neither an RSA public key nor an RSA private key: public key is not a usable RSA private key",
    ),
]


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in PUBLIC_ERRORS], ids=[c[0] for c in PUBLIC_ERRORS])
def test_load_public_key_errors_are_precise(data: bytes, message: str) -> None:
    with pytest.raises(KeyFormatError, match=message):
        keys.load_public_key(data)


# --- encodings --------------------------------------------------------------------------------------------


def test_public_key_der_sizes_and_layout() -> None:
    device_spki = keys.public_key_der(device_key().public_key())
    server_spki = keys.public_key_der(server_key().public_key())
    assert (len(device_spki), len(server_spki)) == (162, 294)
    # protocol.md §2.3: the server modulus starts at offset 33 of the SPKI.
    assert server_spki[33:289] == server_key().public_key().public_numbers().n.to_bytes(256, "big")
    assert server_spki[289:] == bytes.fromhex("0203010001")


def test_pem_encodings_round_trip() -> None:
    private_pem = keys.encode_private_key_pem(device_key())
    assert private_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert b"ENCRYPTED" not in private_pem
    assert same_private(keys.load_private_key(private_pem), device_key())
    public_pem = keys.encode_public_key_pem(device_key().public_key())
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert public_pem == keys.encode_public_key_pem(device_key())
    assert keys.load_public_key(public_pem) == device_key().public_key()


# --- fingerprint ------------------------------------------------------------------------------------------


def test_fingerprint_is_sha256_of_the_spki() -> None:
    public = server_key().public_key()
    expected = "SHA256:" + hashlib.sha256(spki_der(public)).hexdigest()
    assert re.fullmatch(r"SHA256:[0-9a-f]{64}", expected)
    forms: list[rsa.RSAPublicKey | rsa.RSAPrivateKey | bytes] = [public, server_key(), *public_forms().values()]
    for form in forms:
        assert keys.fingerprint(form) == expected


def test_fingerprint_is_stable() -> None:
    # Recorded once; a change here would orphan every stored fingerprint.
    assert keys.fingerprint(read(DOS31 / "server_key.der")) == (
        "SHA256:efd27c82094b51c1527e0fb9315f813c3ff7a0e665d4af585344302b34aeb518"
    )
    assert keys.fingerprint(device_key()) != keys.fingerprint(server_key())


def test_fingerprint_of_bad_bytes_raises() -> None:
    with pytest.raises(KeyFormatError, match="blank"):
        keys.fingerprint(b"\xff" * 512)


# --- checks -----------------------------------------------------------------------------------------------


def with_exponent(key: rsa.RSAPrivateKey, e: int) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(e=e, n=key.public_key().public_numbers().n).public_key()


def test_check_server_public_key() -> None:
    keys.check_server_public_key(server_key().public_key())
    keys.check_server_public_key(server_key())
    with pytest.raises(KeyFormatError) as excinfo:
        keys.check_server_public_key(rsa_4096().public_key())
    assert str(excinfo.value) == "server key is 4096 bits; devices need RSA-2048 with e=65537 (protocol.md §2.3)"
    with pytest.raises(KeyFormatError, match=r"^server key is 1024 bits"):
        keys.check_server_public_key(device_key().public_key())
    with pytest.raises(KeyFormatError) as excinfo:
        keys.check_server_public_key(with_exponent(server_key(), 3))
    assert str(excinfo.value) == (
        "server key has public exponent 3; devices need RSA-2048 with e=65537 (protocol.md §2.3)"
    )


def test_check_device_public_key() -> None:
    keys.check_device_public_key(device_key().public_key())
    keys.check_device_public_key(device_key())
    with pytest.raises(KeyFormatError) as excinfo:
        keys.check_device_public_key(server_key().public_key())
    assert str(excinfo.value) == "device key is 2048 bits; devices need RSA-1024 with e=65537 (protocol.md §2.2)"
    with pytest.raises(KeyFormatError, match=r"^device key has public exponent 17; .*\(protocol.md §2.2\)$"):
        keys.check_device_public_key(with_exponent(device_key(), 17))


def test_many_pem_begin_lines_without_an_end_are_refused_at_once() -> None:
    # Found in review for tests/fuzz: the PEM pattern scanned to the end of the data from every BEGIN with
    # no END, quadratic in the data (8000 lines took 6 s, these 20,000 about 40 s).
    data = b"-----BEGIN RSA PRIVATE KEY-----\n" * 20_000
    with pytest.raises(KeyFormatError, match="no complete PEM block"):
        keys.load_private_key(data)
    with pytest.raises(KeyFormatError, match="no complete PEM block"):
        keys.load_public_key(data)
