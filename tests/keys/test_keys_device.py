"""Device keys: generation, the firmware's fixed-width layout and its fixed-offset parser (protocol.md §2.2, §A.3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from keys_support import (
    DOS061,
    DOS31,
    device_key,
    minimal_der,
    read,
    server_key,
    short_d_key,
    short_dp_key,
    unbalanced_device_key,
)

import cyan.keys as keys
from cyan.keys import DeviceKeyFields, KeyFormatError

HANDSHAKE_PREFIX = bytes.fromhex("30819f300d06092a864886f70d010101050003818d0030818902818100")


def fields_of(key: rsa.RSAPrivateKey) -> DeviceKeyFields:
    n = key.private_numbers()
    return DeviceKeyFields(
        n=n.public_numbers.n, e=n.public_numbers.e, d=n.d, p=n.p, q=n.q, dp=n.dmp1, dq=n.dmq1, qp=n.iqmp
    )


def expected_fixed_width(key: rsa.RSAPrivateKey) -> bytes:
    """protocol.md §2.2 written out: N, D as 02 81 81 00 + 128 bytes, CRT values as 02 41 00 + 64 bytes."""
    n = key.private_numbers()
    big = [n.public_numbers.n, n.d]
    half = [n.p, n.q, n.dmp1, n.dmq1, n.iqmp]
    body = (
        bytes.fromhex("020100")
        + b"\x02\x81\x81\x00"
        + big[0].to_bytes(128, "big")
        + bytes.fromhex("0203010001")
        + b"\x02\x81\x81\x00"
        + big[1].to_bytes(128, "big")
        + b"".join(b"\x02\x41\x00" + v.to_bytes(64, "big") for v in half)
    )
    return bytes.fromhex("3082025f") + body


def test_constants() -> None:
    assert (keys.DEVICE_KEY_BITS, keys.SERVER_KEY_BITS, keys.PUBLIC_EXPONENT) == (1024, 2048, 65537)


def test_generated_device_keys_parse_in_both_encodings() -> None:
    for _ in range(12):
        key = keys.generate_device_key()
        assert key.key_size == 1024
        assert key.public_key().public_numbers().e == 65537
        fixed = keys.encode_device_private_key(key)
        assert keys.is_firmware_parsable(fixed)
        assert keys.is_firmware_parsable(minimal_der(key))
        assert keys.firmware_parse_device_key(fixed) == fields_of(key)
        assert keys.firmware_parse_device_key(minimal_der(key)) == fields_of(key)


def test_generate_device_key_retries_until_minimal_der_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    produced = [short_dp_key(), short_d_key(), device_key()]
    calls: list[tuple[int, int]] = []

    def fake_generate(public_exponent: int, key_size: int) -> rsa.RSAPrivateKey:
        calls.append((public_exponent, key_size))
        return produced[len(calls) - 1]

    monkeypatch.setattr(rsa, "generate_private_key", fake_generate)
    assert keys.generate_device_key() is device_key()
    assert calls == [(65537, 1024)] * 3


def test_generate_device_key_gives_up_on_a_broken_random_source(monkeypatch: pytest.MonkeyPatch) -> None:
    def always_short(public_exponent: int, key_size: int) -> rsa.RSAPrivateKey:
        return short_dp_key()

    monkeypatch.setattr(rsa, "generate_private_key", always_short)
    with pytest.raises(RuntimeError, match="no firmware-parsable RSA-1024 key in 64 attempts"):
        keys.generate_device_key()


def test_generate_server_key() -> None:
    key = keys.generate_server_key()
    assert key.key_size == 2048
    assert key.public_key().public_numbers().e == 65537


@pytest.mark.parametrize("key_source", [device_key, short_d_key, short_dp_key])
def test_encode_device_private_key_is_byte_exact(key_source: Callable[[], rsa.RSAPrivateKey]) -> None:
    key = key_source()
    encoded = keys.encode_device_private_key(key)
    assert len(encoded) == 611
    assert encoded == expected_fixed_width(key)
    # The modulus sits at bytes 11..138 and the handshake public key is built from it.
    assert encoded[11:139] == key.public_key().public_numbers().n.to_bytes(128, "big")


def test_fixed_width_pads_short_values_with_zeros() -> None:
    encoded = keys.encode_device_private_key(short_d_key())
    # D is 1014 bits (127 bytes): after the 02 81 81 00 header at 144 comes one byte of zero padding.
    assert encoded[144:148] == bytes.fromhex("02818100")
    assert encoded[148] == 0
    assert encoded[149] == short_d_key().private_numbers().d >> (126 * 8)
    assert keys.firmware_parse_device_key(encoded).d == short_d_key().private_numbers().d


def test_cryptography_itself_refuses_the_fixed_width_form_but_load_private_key_reads_it() -> None:
    encoded = keys.encode_device_private_key(device_key())
    with pytest.raises(ValueError, match=r"ASN\.1 parsing error"):
        serialization.load_der_private_key(encoded, password=None)
    assert keys.load_private_key(encoded).private_numbers() == device_key().private_numbers()


def test_encode_rejects_keys_the_firmware_cannot_hold() -> None:
    with pytest.raises(KeyFormatError, match=r"^device key is 2048 bits; devices need RSA-1024 with e=65537"):
        keys.encode_device_private_key(server_key())
    with pytest.raises(KeyFormatError, match="device key P needs 75 bytes; the firmware layout has room for 64"):
        keys.encode_device_private_key(unbalanced_device_key())


@pytest.mark.parametrize("vector_dir", [DOS31, DOS061], ids=["3.1.0", "0.6.1"])
def test_vector_device_keys_are_firmware_parsable(vector_dir: Path) -> None:
    der = read(vector_dir / "device_key.der")
    assert keys.is_firmware_parsable(der)
    assert keys.firmware_parse_device_key(der) == fields_of(device_key())
    assert keys.device_public_key_der_from_private(der) == keys.public_key_der(device_key().public_key())


def test_dct_area_with_trailing_fill_parses() -> None:
    # The firmware reads 612 bytes from DCT offset 34 (protocol.md §11); what follows the key is ignored.
    for der in (minimal_der(device_key()), keys.encode_device_private_key(device_key())):
        area = der + b"\xff" * (612 - len(der))
        assert len(area) == 612
        assert keys.is_firmware_parsable(area)
        assert keys.firmware_parse_device_key(area) == fields_of(device_key())


def test_short_crt_value_in_minimal_der_is_rejected_with_offset() -> None:
    der = minimal_der(short_dp_key())
    assert der[410:412] == b"\x02\x3f"  # DP encoded as a 63-byte INTEGER
    assert not keys.is_firmware_parsable(der)
    with pytest.raises(KeyFormatError) as excinfo:
        keys.firmware_parse_device_key(der)
    assert str(excinfo.value) == (
        "offset 411 (DP length): found 0x3f, but the firmware needs exactly 64 value bytes "
        "(length 0x40, or 0x41 with a leading 00); the firmware reads the device key at fixed offsets and "
        "would mis-parse it (protocol.md §2.2, §A.3)"
    )
    # The same key in the firmware's own layout is fine.
    assert keys.is_firmware_parsable(keys.encode_device_private_key(short_dp_key()))


def test_short_d_in_minimal_der_is_rejected_with_offset() -> None:
    der = minimal_der(short_d_key())
    assert not keys.is_firmware_parsable(der)
    with pytest.raises(KeyFormatError, match=r"^offset 144 \(D tag\): expected 02 81, found 02 7f;"):
        keys.firmware_parse_device_key(der)


def _patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


FIXED = keys.encode_device_private_key(device_key())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "device private key is empty"),
        (b"\xff" * 612, r"device private key area is blank \(first byte 0xFF, erased flash\)"),
        (_patched(FIXED, 0, b"\x31"), r"offset 0 \(SEQUENCE header\): expected 30 82, found 31 82"),
        (_patched(FIXED, 6, b"\x01"), r"offset 4 \(version\): expected 02 01 00, found 02 01 01"),
        (
            minimal_der(server_key()),
            r"offset 7 \(modulus header\): expected 02 81 81 00, found 02 82 01 01",
        ),
        (_patched(FIXED, 143, b"\x03"), r"offset 139 \(publicExponent\): expected 02 03 01 00 01"),
        (_patched(FIXED, 146, b"\x82"), r"offset 146 \(D length\): found 0x82, but the firmware needs exactly 128"),
        (_patched(FIXED, 147, b"\x01"), r"offset 147 \(D\): length 0x81 needs a leading 00, found 0x01"),
        (_patched(FIXED, 276, b"\x04"), r"offset 276 \(P tag\): expected 02, found 04"),
        (FIXED[:10], r"device key is truncated: modulus header needs bytes 7\.\.10 but the data has only 10"),
        (FIXED[:343], r"truncated: Q tag needs bytes 343\.\.343 but the data has only 343 bytes"),
        (FIXED[:344], r"truncated: Q length needs bytes 344\.\.344"),
        (FIXED[:345], r"truncated: Q leading zero needs bytes 345\.\.345"),
        (FIXED[:600], r"truncated: QP needs bytes 547\.\.610 but the data has only 600 bytes"),
    ],
)
def test_firmware_walk_errors_name_offset_and_field(data: bytes, message: str) -> None:
    with pytest.raises(KeyFormatError, match=message):
        keys.firmware_parse_device_key(data)
    assert not keys.is_firmware_parsable(data)


def test_walk_accepts_what_the_firmware_accepts_even_if_the_der_is_broken() -> None:
    # The firmware never looks at the SEQUENCE length; a real parse does, so the key is not "parsable".
    broken = _patched(FIXED, 2, b"\x7f\xff")
    assert keys.firmware_parse_device_key(broken) == fields_of(device_key())
    assert not keys.is_firmware_parsable(broken)


def test_is_firmware_parsable_rejects_garbage() -> None:
    assert not keys.is_firmware_parsable(b"not a key")


def test_device_key_fields_to_private_key() -> None:
    fields = keys.firmware_parse_device_key(FIXED)
    assert fields.to_private_key().private_numbers() == device_key().private_numbers()
    wrong = DeviceKeyFields(
        n=fields.n, e=fields.e, d=fields.d + 2, p=fields.p, q=fields.q, dp=fields.dp, dq=fields.dq, qp=fields.qp
    )
    with pytest.raises(KeyFormatError, match="do not form a valid RSA key"):
        wrong.to_private_key()


def test_handshake_public_key_is_the_fixed_prefix_modulus_and_exponent() -> None:
    for der in (minimal_der(device_key()), FIXED, FIXED + b"\xff"):
        spki = keys.device_public_key_der_from_private(der)
        assert len(spki) == 162
        assert spki == HANDSHAKE_PREFIX + der[11:139] + bytes.fromhex("0203010001")
        assert spki == keys.public_key_der(device_key().public_key())


def test_handshake_public_key_of_a_wrong_size_key_is_what_the_device_would_send() -> None:
    # A 2048-bit key in the device slot: the firmware still copies bytes 11..138, yielding a different key.
    der = minimal_der(server_key())
    spki = keys.device_public_key_der_from_private(der)
    assert spki == HANDSHAKE_PREFIX + der[11:139] + bytes.fromhex("0203010001")
    assert spki != keys.public_key_der(server_key().public_key())


def test_handshake_public_key_errors() -> None:
    with pytest.raises(KeyFormatError, match="blank"):
        keys.device_public_key_der_from_private(b"\xff" * 612)
    with pytest.raises(KeyFormatError, match=r"needs bytes 11\.\.138 but the data has only 100 bytes"):
        keys.device_public_key_der_from_private(FIXED[:100])
    with pytest.raises(KeyFormatError, match="only 0 bytes"):
        keys.device_public_key_der_from_private(b"")
