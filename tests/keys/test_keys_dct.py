"""Key areas over DFU alt 1 (protocol.md §11) and the USB-side inspection (protocol.md §2, §12)."""

from __future__ import annotations

import json

import pytest
from keys_support import (
    DATA,
    device_key,
    minimal_der,
    pkcs1_public_der,
    read,
    rsa_4096,
    server_key,
    short_dp_key,
    spki_der,
)

import cyan.keys as keys
from cyan.keys import CloudFacts, DctImage, KeyFormatError, Layout, Platform, ServerAddress

DEVICE_ID = "3c002d000447343138333038"
SERVER_PUBLIC = server_key().public_key()
SERVER_FP = keys.fingerprint(SERVER_PUBLIC)
DEVICE_FP = keys.fingerprint(device_key())
PARTICLE_KEY_DER = read(DATA / "particle_cloud_server_key.der")
GOOD_SERVER_FILE = keys.build_server_key_file(SERVER_PUBLIC, "10.0.0.2", 5683)
THIS_CLOUD = CloudFacts(
    device_id=DEVICE_ID,
    device_registered=True,
    device_key_fingerprint=DEVICE_FP,
    server_key_fingerprints=(SERVER_FP,),
    addresses=(ServerAddress("10.0.0.2", 5683),),
)


def codes(result: keys.KeyInspection) -> list[str]:
    return [f.code for f in result.findings]


def photon_image(private: bytes | None = None, server: bytes | None = None) -> DctImage:
    image = DctImage.blank(Layout.PHOTON)
    if private is not None:
        image = image.with_private_key(private)
    if server is not None:
        image = image.with_server_key_file(server)
    return image


# --- layout -------------------------------------------------------------------------------------------------


def test_platforms_and_their_dfu_ids() -> None:
    assert [(p.platform_id, p.usb_id, p.layout) for p in Platform] == [
        (0, "1d50:607f", Layout.CORE),
        (6, "2b04:d006", Layout.PHOTON),
        (8, "2b04:d008", Layout.PHOTON),
        # particle-usb src/device-type.js dfuUsbIds; their keys are the DCT's alt_* fields (udp-dtls.md §1.2).
        (10, "2b04:d00a", Layout.UDP),
        (12, "2b04:d00c", Layout.UDP),
        (13, "2b04:d00d", Layout.UDP),
        (14, "2b04:d00e", Layout.UDP),
    ]
    assert Platform.from_usb_id("2B04:D008") is Platform.P1
    assert Platform.from_usb_id("0483:df11") is None


def test_key_areas_are_those_of_protocol_section_11() -> None:
    photon = keys.key_layout(Layout.PHOTON)
    assert (photon.private_key.address, photon.private_key.size, photon.private_key.alt) == (34, 612, 1)
    assert (photon.server_key.address, photon.server_key.size) == (2082, 512)
    assert photon.public_key is not None
    assert (photon.public_key.address, photon.public_key.size) == (1250, 384)
    assert (photon.image_size, photon.write_padding) == (8391, 1)
    # particle-cli keys-specs.js laterGenerations udpPrivateKey and udpServerKey, DFU alt setting 1.
    udp = keys.key_layout(Layout.UDP)
    assert (udp.private_key.address, udp.private_key.size, udp.private_key.alt) == (3106, 192, 1)
    assert (udp.server_key.address, udp.server_key.size, udp.server_key.alt) == (3298, 320, 1)
    assert udp.public_key is None
    core = keys.key_layout(Layout.CORE)
    assert (core.private_key.address, core.private_key.size) == (0x2000, 1024)
    assert (core.server_key.address, core.server_key.size) == (0x1000, 2048)
    assert (core.public_key, core.image_size, core.write_padding) == (None, 0x2400, 2)


def test_image_reads_and_writes_areas_at_their_offsets() -> None:
    der = minimal_der(device_key())
    image = photon_image(der, GOOD_SERVER_FILE)
    assert image.data[34 : 34 + len(der)] == der
    assert image.data[34 + len(der) : 34 + 612] == b"\xff" * (612 - len(der))
    assert image.data[2082 : 2082 + 512] == GOOD_SERVER_FILE
    assert image.private_key_area == image.data[34:646]
    assert image.server_key_area == GOOD_SERVER_FILE
    assert image.public_key_area == b"\xff" * 384
    assert not image.is_blank(image.keys.private_key)
    assert DctImage.blank(Layout.CORE).is_blank(keys.key_layout(Layout.CORE).private_key)
    core = DctImage.blank(Layout.CORE).with_private_key(der).with_server_key_file(b"\x30" * 2048)
    assert core.data[0x2000 : 0x2000 + len(der)] == der
    assert core.data[0x1000:0x1800] == b"\x30" * 2048


def test_image_refuses_short_images_and_oversized_writes() -> None:
    with pytest.raises(KeyFormatError, match=r"at least 2594 bytes; this one has 2000"):
        DctImage(Layout.PHOTON, b"\xff" * 2000)
    with pytest.raises(KeyFormatError, match=r"613 bytes do not fit the 612-byte device private key area"):
        photon_image().with_private_key(b"\x30" * 613)
    short = DctImage(Layout.PHOTON, b"\xff" * 2594)
    assert short.public_key_area is not None
    assert DctImage(Layout.PHOTON, b"\xff" * 2594).read(keys.key_layout(Layout.PHOTON).server_key)


# --- the private key --------------------------------------------------------------------------------------


def test_private_key_states() -> None:
    good = keys.inspect_private_key(minimal_der(device_key()) + b"\xff" * 4)
    assert (good.state, good.encoding, good.fingerprint, good.presented_fingerprint) == (
        "ok",
        "der",
        DEVICE_FP,
        DEVICE_FP,
    )
    fixed = keys.inspect_private_key(keys.encode_device_private_key(device_key()))
    assert (fixed.state, fixed.encoding) == ("ok", "fixed-width")
    pem = keys.inspect_private_key(keys.encode_private_key_pem(device_key()))
    assert (pem.state, pem.encoding) == ("ok", "pem")
    assert keys.inspect_private_key(b"\xff" * 612).state == "blank"
    assert keys.inspect_private_key(b"").state == "blank"


def test_a_key_the_firmware_misreads_is_unparsable_with_the_offset() -> None:
    report = keys.inspect_private_key(minimal_der(short_dp_key()))
    assert report.state == "unparsable"
    assert report.problem is not None
    assert "offset" in report.problem
    assert "DP" in report.problem
    assert report.fingerprint == keys.fingerprint(short_dp_key())


def test_corrupt_keys_are_malformed_and_say_what_the_device_presents() -> None:
    der = bytearray(minimal_der(device_key()))
    der[300] ^= 0xFF  # inside D: the numbers no longer agree
    report = keys.inspect_private_key(bytes(der))
    assert report.state == "malformed"
    # The modulus bytes are intact, so the device still presents the registered public key.
    assert report.presented_fingerprint == DEVICE_FP
    garbage = keys.inspect_private_key(b"\x00" * 612)
    assert garbage.state == "malformed"
    assert garbage.presented_fingerprint is not None
    assert garbage.presented_fingerprint.startswith("SHA256:")
    big = keys.inspect_private_key(minimal_der(rsa_4096()))
    assert big.state == "malformed"
    assert big.problem is not None
    assert "4096 bits" in big.problem


# --- whole images: the verdict ----------------------------------------------------------------------------


def test_a_healthy_photon_image() -> None:
    result = keys.inspect_image(photon_image(minimal_der(device_key()), GOOD_SERVER_FILE), THIS_CLOUD)
    assert result.healthy
    assert result.source == "dct"
    assert result.cloud == "match"
    assert result.server_key is not None
    assert result.server_key.identity == "this_cloud"
    assert str(result.server_key.address) == "tcp://10.0.0.2:5683"
    assert codes(result) == [
        "private_key_ok",
        "public_key_area_stale",
        "cloud_key_match",
        "server_key_this_cloud",
        "server_address_set",
    ]


def test_a_derived_public_key_area_is_recognised() -> None:
    der = minimal_der(device_key())
    image = photon_image(der, GOOD_SERVER_FILE).write(
        keys.key_layout(Layout.PHOTON).public_key,  # type: ignore[arg-type]
        keys.device_public_key_der_from_private(der) + b"\x00" * (384 - 162),
    )
    result = keys.inspect_image(image, THIS_CLOUD)
    assert result.private_key is not None
    assert result.private_key.public_area_matches is True
    assert "public_key_area_stale" not in codes(result)


def test_an_erased_device() -> None:
    result = keys.inspect_image(photon_image(), THIS_CLOUD)
    assert not result.healthy
    assert codes(result) == ["private_key_blank", "server_key_blank", "server_address_blank"]
    assert result.server_key is not None
    assert str(result.server_key.address) == "tcp://device.spark.io:5683"
    advice = result.findings[0].advice or ""
    assert f"cyan keys restore {DEVICE_ID} --escrow FILE" in advice


@pytest.mark.parametrize(
    ("facts", "expected", "code"),
    [
        (CloudFacts(device_id=DEVICE_ID, device_registered=False), "unregistered", "device_not_registered"),
        (
            CloudFacts(device_id=DEVICE_ID, device_registered=True, device_key_fingerprint="SHA256:" + "0" * 64),
            "mismatch",
            "cloud_key_mismatch",
        ),
        (CloudFacts(), "not_checked", None),
    ],
    ids=["unregistered", "mismatch", "not-checked"],
)
def test_cloud_comparison(facts: CloudFacts, expected: str, code: str | None) -> None:
    result = keys.inspect_image(photon_image(minimal_der(device_key()), GOOD_SERVER_FILE), facts)
    assert result.cloud == expected
    if code is None:
        assert not any(c.startswith(("cloud_", "device_")) for c in codes(result))
    else:
        assert code in codes(result)
        assert not result.healthy


def test_server_key_of_particle_another_cloud_or_unchecked() -> None:
    particle = keys.inspect_image(photon_image(minimal_der(device_key()), PARTICLE_KEY_DER + b"\xff" * 218), THIS_CLOUD)
    assert particle.server_key is not None
    assert particle.server_key.identity == "particle"
    assert "server_key_particle" in codes(particle)
    other_key = keys.generate_server_key().public_key()
    other = keys.inspect_image(
        photon_image(minimal_der(device_key()), keys.build_server_key_file(other_key, "10.0.0.2", 5683)), THIS_CLOUD
    )
    assert "server_key_foreign" in codes(other)
    assert SERVER_FP in other.findings[codes(other).index("server_key_foreign")].message
    unchecked = keys.inspect_image(photon_image(minimal_der(device_key()), GOOD_SERVER_FILE))
    assert unchecked.healthy
    assert "server_key_unchecked" in codes(unchecked)


def test_server_key_and_address_corruption() -> None:
    pkcs1 = pkcs1_public_der(SERVER_PUBLIC)
    bad_key = pkcs1 + b"\xff" * (512 - len(pkcs1))
    result = keys.inspect_image(photon_image(minimal_der(device_key()), bad_key), THIS_CLOUD)
    assert "server_key_corrupt" in codes(result)
    bad_address = bytearray(GOOD_SERVER_FILE)
    bad_address[384] = 7
    result = keys.inspect_image(photon_image(minimal_der(device_key()), bytes(bad_address)), THIS_CLOUD)
    assert "server_address_corrupt" in codes(result)


def test_address_other_than_published_is_a_warning_and_particle_hosts_a_problem() -> None:
    elsewhere = keys.build_server_key_file(SERVER_PUBLIC, "cloud.example.com", 5683)
    result = keys.inspect_image(photon_image(minimal_der(device_key()), elsewhere), THIS_CLOUD)
    assert result.healthy
    assert "server_address_unexpected" in codes(result)
    particle_host = keys.build_server_key_file(SERVER_PUBLIC, "device.spark.io")
    result = keys.inspect_image(photon_image(minimal_der(device_key()), particle_host), THIS_CLOUD)
    assert "server_address_particle" in codes(result)


def test_core_image_is_detected_from_where_the_keys_are() -> None:
    der = minimal_der(device_key())
    server = keys.build_server_key_file(SERVER_PUBLIC, "10.0.0.2", 5683, Layout.CORE)
    core = DctImage.blank(Layout.CORE, 0x4000).with_private_key(der).with_server_key_file(server)
    result = keys.inspect_file(core.data, facts=THIS_CLOUD)
    assert (result.source, result.layout, result.healthy) == ("dct", Layout.CORE, True)
    photon = keys.inspect_file(photon_image(der, GOOD_SERVER_FILE).data + b"\xff" * 8000, facts=THIS_CLOUD)
    assert (photon.layout, photon.healthy) == (Layout.PHOTON, True)


# --- files ------------------------------------------------------------------------------------------------


def test_inspect_file_tells_the_kinds_apart() -> None:
    assert keys.inspect_file(GOOD_SERVER_FILE, facts=THIS_CLOUD).source == "server_key"
    core_file = keys.build_server_key_file(SERVER_PUBLIC, "10.0.0.2", None, Layout.CORE)
    core = keys.inspect_file(core_file, facts=THIS_CLOUD)
    assert (core.source, core.layout) == ("server_key", Layout.CORE)
    assert keys.inspect_file(b"\xff" * 512).source == "server_key"
    key_file = keys.inspect_file(minimal_der(device_key()), facts=THIS_CLOUD)
    assert (key_file.source, key_file.cloud, key_file.healthy) == ("private_key", "match", True)
    public = keys.inspect_file(keys.encode_public_key_pem(device_key()), facts=THIS_CLOUD)
    assert (public.source, public.cloud, codes(public)) == ("public_key", "match", ["public_key", "cloud_key_match"])
    public_der = keys.inspect_file(spki_der(device_key().public_key()), facts=THIS_CLOUD)
    assert public_der.source == "public_key"
    server_public = keys.inspect_file(spki_der(SERVER_PUBLIC))
    assert codes(server_public) == ["public_key_unusable"]
    with pytest.raises(KeyFormatError, match="empty"):
        keys.inspect_file(b"")


def test_report_as_json_never_holds_private_key_bytes() -> None:
    der = minimal_der(device_key())
    result = keys.inspect_image(photon_image(der, GOOD_SERVER_FILE), THIS_CLOUD)
    text = json.dumps(result.to_dict())
    assert der.hex() not in text
    assert der[11:40].hex() not in text
    document = json.loads(text)
    assert document["private_key"]["state"] == "ok"
    assert document["server_key"]["address"] == {"host": "10.0.0.2", "port": 5683}
    assert document["healthy"] is True


def test_addresses_of_server_key_files() -> None:
    files = [GOOD_SERVER_FILE, GOOD_SERVER_FILE, keys.build_server_key_file(SERVER_PUBLIC), b"short"]
    assert keys.addresses_of(files) == (ServerAddress("10.0.0.2", 5683),)
