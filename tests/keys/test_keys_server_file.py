"""The server-key file and server address (protocol.md §11, particle-cli.md §A.4)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from keys_support import (
    DATA,
    DOS061,
    DOS31,
    device_key,
    pkcs1_public_der,
    read,
    rsa_4096,
    server_key,
    spki_der,
)

import cyan.keys as keys
from cyan.keys import KeyFormatError, Layout, ServerAddress

SERVER_PUBLIC = server_key().public_key()
PARTICLE_KEY_DER = read(DATA / "particle_cloud_server_key.der")


def with_block(base: bytes, block: bytes, *, port: bytes | None = None) -> bytes:
    """``base`` with the address block bytes at 384 (and optionally the port bytes at 450) replaced."""
    out = bytearray(base)
    out[384 : 384 + len(block)] = block
    if port is not None:
        out[450:452] = port
    return bytes(out)


BLANK_ADDRESS_FILE = keys.build_server_key_file(SERVER_PUBLIC)


# --- building ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", [DOS31 / "server_key.der", DOS061 / "server_key.der"], ids=["3.1.0", "0.6.1"])
def test_build_matches_the_cli_file_of_the_recordings(vector: Path) -> None:
    built = keys.build_server_key_file(SERVER_PUBLIC, "127.0.0.1", 5683)
    assert built == read(vector)


def test_build_layout_byte_by_byte() -> None:
    built = keys.build_server_key_file(SERVER_PUBLIC, "cloud.example.com")
    assert len(built) == 512
    assert built[:294] == spki_der(SERVER_PUBLIC)
    assert built[294:384] == b"\xff" * 90
    assert built[384:403] == b"\x01\x11cloud.example.com"
    assert built[403:] == b"\xff" * (512 - 403)  # no port given: 450..451 stay ff ff


def test_build_without_host_has_no_address_block() -> None:
    assert spki_der(SERVER_PUBLIC) + b"\xff" * 218 == BLANK_ADDRESS_FILE


def test_build_core_layout() -> None:
    photon = keys.build_server_key_file(SERVER_PUBLIC, "10.0.0.2", 7000)
    core = keys.build_server_key_file(SERVER_PUBLIC, "10.0.0.2", 7000, Layout.CORE)
    assert len(core) == 2048
    assert core[:512] == photon
    assert core[512:] == b"\xff" * 1536
    assert photon[384:390] == bytes([0, 4, 10, 0, 0, 2])
    assert photon[450:452] == (7000).to_bytes(2, "big")


def test_layout_properties() -> None:
    assert (Layout.PHOTON.size, Layout.PHOTON.max_size, Layout.PHOTON.flash_address) == (512, 768, 2082)
    assert (Layout.CORE.size, Layout.CORE.max_size, Layout.CORE.flash_address) == (2048, 2048, 0x1000)
    for layout in (Layout.PHOTON, Layout.CORE):
        assert (layout.address_offset, layout.port_offset) == (384, 450)
    # particle-cli's udpServerKey: DCT 3298, 320 bytes, the address at 192 and the port at 258.
    udp = Layout.UDP
    assert (udp.size, udp.max_size, udp.flash_address, udp.address_offset, udp.port_offset) == (
        320,
        320,
        3298,
        192,
        258,
    )


BUILD_ERRORS: list[tuple[str, dict[str, object], str]] = [
    ("empty host", {"host": ""}, "server host is empty"),
    ("three parts", {"host": "1.2.3"}, "'1.2.3' has only digits and dots, so it is stored as an IPv4 address"),
    ("octet too big", {"host": "256.1.1.1"}, "not a dotted quad a.b.c.d with each part 0..255"),
    ("empty part", {"host": "1..2.3"}, "not a dotted quad"),
    ("five parts", {"host": "1.2.3.4.5"}, "not a dotted quad"),
    ("long part", {"host": "0001.2.3.4"}, "not a dotted quad"),
    ("ipv6", {"host": "::1"}, "looks like an IPv6 address or has a port"),
    ("host with port", {"host": "example.com:5683"}, "looks like an IPv6 address or has a port"),
    ("non-ascii", {"host": "bücher.example"}, r"is not ASCII; store the IDNA \(xn--\) form"),
    ("space", {"host": "my host.example"}, "contains spaces or control characters"),
    ("too long", {"host": "a" * 60 + ".com"}, "server domain is 64 bytes; at most 63 fit"),
    ("port zero", {"host": "a.example", "port": 0}, "port 0 cannot be stored: use 1..65534"),
    ("port unset", {"host": "a.example", "port": 65535}, "port 65535 cannot be stored"),
    ("port too big", {"host": "a.example", "port": 70000}, "port 70000 cannot be stored"),
    ("port bool", {"host": "a.example", "port": True}, "port True cannot be stored"),
    ("port without host", {"port": 5683}, "a port was given without a host"),
]


@pytest.mark.parametrize(("kwargs", "message"), [c[1:] for c in BUILD_ERRORS], ids=[c[0] for c in BUILD_ERRORS])
def test_build_rejects_what_the_device_cannot_use(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(KeyFormatError, match=message):
        keys.build_server_key_file(SERVER_PUBLIC, **kwargs)  # type: ignore[arg-type]


def test_build_rejects_wrong_keys() -> None:
    with pytest.raises(KeyFormatError, match=r"^server key is 4096 bits"):
        keys.build_server_key_file(rsa_4096().public_key(), "127.0.0.1")
    with pytest.raises(KeyFormatError, match=r"^server key is 1024 bits"):
        keys.build_server_key_file(device_key().public_key())


def test_build_accepts_a_63_byte_domain_and_leading_zero_octets() -> None:
    domain = "a" * 59 + ".com"
    assert keys.build_server_key_file(SERVER_PUBLIC, domain)[384:449] == b"\x01\x3f" + domain.encode()
    # Like the CLI's parseInt, parts are decimal: 010 is 10.
    assert keys.build_server_key_file(SERVER_PUBLIC, "010.0.0.1")[384:390] == bytes([0, 4, 10, 0, 0, 1])


# --- parsing ----------------------------------------------------------------------------------------------


def test_parse_vector_files() -> None:
    parsed = keys.parse_server_key_file(read(DOS31 / "server_key.der"))
    assert parsed.layout is Layout.PHOTON
    assert parsed.key_der == spki_der(SERVER_PUBLIC)
    assert parsed.public_key == SERVER_PUBLIC
    assert (parsed.key_state, parsed.key_problem) == ("ok", None)
    assert parsed.address == ServerAddress("127.0.0.1", 5683)
    assert (parsed.address_state, parsed.address_problem, parsed.raw_address_type) == ("ok", None, 0)
    assert str(parsed.effective_address) == "tcp://127.0.0.1:5683"

    other = keys.parse_server_key_file(read(DOS31 / "other_server_key.der"))
    assert other.key_state == "ok"
    assert other.public_key is not None
    assert other.public_key.key_size == 2048
    assert other.public_key != SERVER_PUBLIC
    assert other.address == ServerAddress("127.0.0.1", 5683)


def test_parse_without_address() -> None:
    parsed = keys.parse_server_key_file(BLANK_ADDRESS_FILE)
    assert parsed.address is None
    assert parsed.address_state == "blank"
    assert parsed.raw_address_type == 0xFF
    assert parsed.address_problem == "address type byte is 0xFF (erased); the device uses device.spark.io"
    assert parsed.effective_address == keys.PARTICLE_CLOUD_ADDRESS
    assert str(parsed.effective_address) == "tcp://device.spark.io:5683"


def test_parse_dct_region_dump_and_core_file() -> None:
    photon = keys.build_server_key_file(SERVER_PUBLIC, "cloud.example.com", 8443)
    dump = photon + b"\xff" * 256  # the whole 768-byte DCT region (protocol.md §11)
    core = keys.build_server_key_file(SERVER_PUBLIC, "cloud.example.com", 8443, Layout.CORE)
    for data, layout in ((dump, Layout.PHOTON), (core, Layout.CORE)):
        parsed = keys.parse_server_key_file(data)
        assert parsed.layout is layout
        assert parsed.public_key == SERVER_PUBLIC
        assert parsed.address == ServerAddress("cloud.example.com", 8443)


SIZE_ERRORS: list[tuple[str, int, Layout | None, str]] = [
    ("auto 600", 600, None, "server-key data is 600 bytes; expected 512 .*, 768 .* or 2048"),
    ("photon too big", 1000, Layout.PHOTON, r"the photon layout needs 512\.\.768 bytes"),
    ("core too small", 511, Layout.CORE, r"server-key data is 511 bytes; the core layout needs 512\.\.2048 bytes"),
    ("empty", 0, None, "server-key data is 0 bytes"),
]


@pytest.mark.parametrize(("size", "layout", "message"), [c[1:] for c in SIZE_ERRORS], ids=[c[0] for c in SIZE_ERRORS])
def test_parse_rejects_sizes_that_fit_no_layout(size: int, layout: Layout | None, message: str) -> None:
    data = (BLANK_ADDRESS_FILE + b"\xff" * 2048)[:size]
    with pytest.raises(KeyFormatError, match=message):
        keys.parse_server_key_file(data, layout)


def test_parse_with_explicit_layout_accepts_in_between_sizes() -> None:
    data = keys.build_server_key_file(SERVER_PUBLIC, "127.0.0.1") + b"\xff" * 88
    parsed = keys.parse_server_key_file(data, Layout.PHOTON)
    assert parsed.layout is Layout.PHOTON
    assert parsed.address == ServerAddress("127.0.0.1", None)
    core = keys.parse_server_key_file(data, Layout.CORE)
    assert core.layout is Layout.CORE


def test_parse_blank_key() -> None:
    data = b"\xff" * 384 + keys.build_server_key_file(SERVER_PUBLIC, "127.0.0.1")[384:]
    parsed = keys.parse_server_key_file(data)
    assert parsed.key_state == "blank"
    assert parsed.public_key is None
    assert parsed.key_der == b"\xff" * 294
    assert parsed.key_problem is not None
    assert "built-in Particle cloud key" in parsed.key_problem
    assert parsed.address == ServerAddress("127.0.0.1", None)


def file_with_key_bytes(key_bytes: bytes) -> bytes:
    return key_bytes + BLANK_ADDRESS_FILE[len(key_bytes) :]


def test_pkcs1_public_key_is_corrupt_because_the_firmware_misreads_it() -> None:
    pkcs1 = pkcs1_public_der(SERVER_PUBLIC)
    assert len(pkcs1) == 270
    parsed = keys.parse_server_key_file(file_with_key_bytes(pkcs1))
    assert parsed.key_state == "corrupt"
    assert parsed.public_key is None
    assert parsed.key_problem == (
        "server key is stored as a PKCS#1 RSAPublicKey ('BEGIN RSA PUBLIC KEY'); the firmware reads the "
        "modulus at offset 33 of a SubjectPublicKeyInfo and would use a wrong key (protocol.md §2.3)"
    )
    # What the device would really use: 256 bytes from offset 33, which here straddle the end of the key.
    misread = keys.read_firmware_server_key(parsed.key_der)
    assert misread != SERVER_PUBLIC
    assert misread.public_numbers().e == 65537
    assert misread.public_numbers().n == int.from_bytes(parsed.key_der[33:289], "big")
    assert misread.public_numbers().n != SERVER_PUBLIC.public_numbers().n


def spki_without_null_parameters() -> bytes:
    # AlgorithmIdentifier without the NULL parameters: 2 bytes shorter, so the modulus moves to offset 31.
    bit_string = b"\x03\x82\x01\x0f\x00" + pkcs1_public_der(SERVER_PUBLIC)
    body = bytes.fromhex("300b06092a864886f70d010101") + bit_string
    return b"\x30\x82" + len(body).to_bytes(2, "big") + body


CORRUPT_KEYS: list[tuple[str, bytes, str]] = [
    ("zero bytes", b"\x00" * 294, r"is not DER: expected a SEQUENCE \(0x30\) at offset 0, found 0x00"),
    ("not a key", bytes.fromhex("3003020100"), "server key slot does not hold a DER public key"),
    (
        "1024-bit key",
        spki_der(device_key().public_key()),
        r"^server key is 1024 bits; devices need RSA-2048 with e=65537 \(protocol.md §2.3\)$",
    ),
    ("4096-bit key cut at 294", spki_der(rsa_4096().public_key())[:294], "DER is truncated"),
    (
        "ec key",
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "server key slot holds a non-RSA key",
    ),
    (
        "non-canonical spki",
        spki_without_null_parameters(),
        "server key is stored in a form other than canonical SubjectPublicKeyInfo DER; the firmware reads",
    ),
]


@pytest.mark.parametrize(("key_bytes", "message"), [c[1:] for c in CORRUPT_KEYS], ids=[c[0] for c in CORRUPT_KEYS])
def test_parse_reports_corrupt_keys(key_bytes: bytes, message: str) -> None:
    parsed = keys.parse_server_key_file(file_with_key_bytes(key_bytes))
    assert parsed.key_state == "corrupt"
    assert parsed.public_key is None
    assert parsed.key_problem is not None
    assert re.search(message, parsed.key_problem), parsed.key_problem


ADDRESS_CASES: list[tuple[str, bytes, bytes | None, ServerAddress | None, str, str | None]] = [
    ("ipv4 bad length", b"\x00\x05\x0a\x00\x00\x01", None, ServerAddress("10.0.0.1"), "corrupt", "length byte 5"),
    ("port zero", b"\x00\x04\x0a\x00\x00\x01", b"\x00\x00", ServerAddress("10.0.0.1", 0), "ok", None),
    ("empty domain", b"\x01\x00", None, ServerAddress(""), "corrupt", "domain name is empty"),
    (
        "64-byte domain",
        b"\x01\x40" + b"a" * 64,
        None,
        ServerAddress("a" * 64),
        "corrupt",
        "domain is 64 bytes and overlaps the port at block byte 66",
    ),
    ("127-byte domain", b"\x01\x7f" + b"a" * 126, None, None, "corrupt", "domain length 127 does not fit"),
    ("control byte", b"\x01\x03a\x07b", None, ServerAddress("a\x07b"), "corrupt", "not printable ASCII"),
    ("embedded nul", b"\x01\x05ab\x00cd", None, ServerAddress("ab"), "corrupt", "not printable ASCII"),
    ("high byte", b"\x01\x02a\xe9", None, ServerAddress("a\\xe9"), "corrupt", "not printable ASCII"),
    ("unknown type", b"\x02\x04abcd", None, None, "corrupt", "address type 0x02 is neither 0 (IPv4) nor 1 (domain)"),
]


@pytest.mark.parametrize(
    ("block", "port", "address", "state", "problem"),
    [c[1:] for c in ADDRESS_CASES],
    ids=[c[0] for c in ADDRESS_CASES],
)
def test_parse_reports_what_the_firmware_does_with_odd_address_blocks(
    block: bytes, port: bytes | None, address: ServerAddress | None, state: str, problem: str | None
) -> None:
    parsed = keys.parse_server_key_file(with_block(BLANK_ADDRESS_FILE, block, port=port))
    assert parsed.key_state == "ok"
    assert parsed.raw_address_type == block[0]
    assert parsed.address == address
    assert parsed.address_state == state
    if problem is None:
        assert parsed.address_problem is None
    else:
        assert parsed.address_problem is not None
        assert problem in parsed.address_problem


def test_port_zero_means_default_port() -> None:
    parsed = keys.parse_server_key_file(with_block(BLANK_ADDRESS_FILE, b"\x00\x04\x0a\x00\x00\x01", port=b"\x00\x00"))
    assert parsed.address is not None
    assert parsed.address.effective_port == 5683
    assert str(parsed.address) == "tcp://10.0.0.1:5683"


# --- read_firmware_server_key -----------------------------------------------------------------------------


def test_read_firmware_server_key() -> None:
    assert keys.read_firmware_server_key(read(DOS31 / "server_key.der")) == SERVER_PUBLIC
    with pytest.raises(KeyFormatError, match=r"is 100 bytes; the firmware reads the modulus from bytes 33\.\.288"):
        keys.read_firmware_server_key(b"\x30" * 100)
    with pytest.raises(KeyFormatError, match="do not form a usable RSA modulus"):
        keys.read_firmware_server_key(b"\x00" * 294)


# --- ServerAddress ----------------------------------------------------------------------------------------


def test_server_address_properties() -> None:
    assert ServerAddress("h").effective_port == 5683
    assert ServerAddress("h", 0).effective_port == 5683
    assert ServerAddress("h", 0xFFFF).effective_port == 5683
    assert ServerAddress("h", 1234).effective_port == 1234
    assert ServerAddress("127.0.0.1").is_ip
    assert ServerAddress("").is_ip  # the CLI's ^[0-9.]*$ matches the empty string
    assert not ServerAddress("a1.example").is_ip
    assert str(ServerAddress("cloud.example.com", 8443)) == "tcp://cloud.example.com:8443"
    assert keys.DEFAULT_PORT == 5683


# --- round trip -------------------------------------------------------------------------------------------

_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_DOMAINS = (
    st.lists(_LABEL, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda host: len(host) <= 63 and not ServerAddress(host).is_ip)
)
_IPS = st.tuples(*[st.integers(0, 255)] * 4).map(lambda parts: ".".join(map(str, parts)))
_PORTS = st.none() | st.integers(1, 65534)


@given(host=_DOMAINS | _IPS, port=_PORTS, layout=st.sampled_from([Layout.PHOTON, Layout.CORE]))
def test_build_then_parse_round_trips(host: str, port: int | None, layout: Layout) -> None:
    data = keys.build_server_key_file(SERVER_PUBLIC, host, port, layout)
    assert len(data) == layout.size
    parsed = keys.parse_server_key_file(data)
    assert parsed.layout is layout
    assert parsed.address == ServerAddress(host, port)
    assert parsed.address_state == "ok"
    assert parsed.raw_address_type == (0 if parsed.address.is_ip else 1)
    assert parsed.public_key == SERVER_PUBLIC
    assert parsed.address.effective_port == (5683 if port is None else port)


# --- Particle's cloud key ---------------------------------------------------------------------------------


def particle_cli_asset(size: int) -> bytes:
    """particle-cli assets/keys/rsa.pub.der (512) / rsa.pub-padded.der (2048), rebuilt from their layout.

    Both hold Particle's key, 0xFF fill and "01 0f device.spark.io 00" at offset 384 with no port.
    """
    data = bytearray(PARTICLE_KEY_DER + b"\xff" * (size - 294))
    data[384:402] = b"\x01\x0fdevice.spark.io\x00"
    return bytes(data)


def test_particle_cloud_key_constant() -> None:
    assert len(PARTICLE_KEY_DER) == 294
    assert "SHA256:" + hashlib.sha256(PARTICLE_KEY_DER).hexdigest() == keys.PARTICLE_CLOUD_SERVER_KEY_FINGERPRINT
    assert keys.is_particle_cloud_server_key(PARTICLE_KEY_DER)
    assert keys.is_particle_cloud_server_key(keys.load_public_key(PARTICLE_KEY_DER))
    assert not keys.is_particle_cloud_server_key(SERVER_PUBLIC)
    assert not keys.is_particle_cloud_server_key(server_key())
    assert ServerAddress("device.spark.io", None) == keys.PARTICLE_CLOUD_ADDRESS


@pytest.mark.parametrize(
    ("size", "sha256", "layout"),
    [
        (512, "2a1c82fb5f28fe1ba95b4af966aca326eb22398b977fa2540233dbe703fddb16", Layout.PHOTON),
        (2048, "f4e4ac980b56a88a50f359b5fb60b0313274685b27edbffe3e135f897b88744b", Layout.CORE),
    ],
)
def test_particle_cli_assets_parse(size: int, sha256: str, layout: Layout) -> None:
    data = particle_cli_asset(size)
    # The digests are those of the files in particle-cli 3.49.2, so the rebuilt bytes are exactly theirs.
    assert hashlib.sha256(data).hexdigest() == sha256
    parsed = keys.parse_server_key_file(data)
    assert parsed.layout is layout
    assert parsed.key_state == "ok"
    assert isinstance(parsed.public_key, rsa.RSAPublicKey)
    assert keys.is_particle_cloud_server_key(parsed.public_key)
    assert keys.is_particle_cloud_server_key(data)
    assert parsed.address == ServerAddress("device.spark.io", None)
    assert parsed.address_state == "ok"
