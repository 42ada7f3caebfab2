"""Particle module binaries (Device OS `module_info.h`): what `parse_module` reads and refuses."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from cyan.protocol.binary import (
    NO_PRODUCT,
    ModuleError,
    ModuleFunction,
    build_module,
    check_module_for_device,
    parse_module,
    platform_name,
)

BODY = bytes(range(256)) * 8


def _reseal(data: bytes) -> bytes:
    """New CRC over changed bytes, as a tool that edits a binary would write it."""
    return data[:-4] + zlib.crc32(data[:-4]).to_bytes(4, "big")


def test_a_photon_user_part_reads_back() -> None:
    data = build_module(BODY, platform_id=6, module_version=6, product_id=4242, product_version=17)
    info = parse_module(data)
    assert info.size == len(data) == 24 + len(BODY) + 40 + 4
    assert (info.prefix_offset, info.start_address, info.end_address) == (0, 0x080A0000, 0x080A0000 + len(data) - 4)
    assert (info.platform_id, info.function, info.index, info.module_version) == (6, ModuleFunction.USER_PART, 1, 6)
    assert info.dependencies == ((ModuleFunction.SYSTEM_PART, 1, 3103),)
    assert (info.product_id, info.product_version) == (4242, 17)
    # The suffix's SHA-256 covers every byte before it: what the device reports as its user part's "u".
    assert info.module_sha256 == hashlib.sha256(data[:-38]).hexdigest()
    assert info.crc32 == zlib.crc32(data[:-4])
    assert info.describe_code == "u"
    # Offsets as module_info.h asserts them, little-endian.
    assert struct.unpack_from("<IIBBHHBB", data) == (
        0x080A0000,
        0x080A0000 + len(data) - 4,
        0,
        0,
        6,
        6,
        5,
        1,
    )


def test_a_build_without_product_has_none() -> None:
    info = parse_module(build_module(BODY, platform_id=8))
    assert (info.product_id, info.product_version) == (None, None)
    assert NO_PRODUCT == 0xFFFF


def test_a_suffix_without_the_product_fields() -> None:
    data = bytearray(build_module(BODY, platform_id=6, product_id=5, product_version=5))
    data[-6:-4] = (36).to_bytes(2, "little")
    info = parse_module(_reseal(bytes(data)))
    assert (info.product_id, info.product_version) == (None, None)


def test_a_system_part_has_its_prefix_after_the_vector_table() -> None:
    data = build_module(
        BODY, platform_id=6, function=ModuleFunction.SYSTEM_PART, index=1, start_address=0x08020000, prefix_offset=0x184
    )
    info = parse_module(data)
    assert (info.prefix_offset, info.function, info.describe_code) == (0x184, ModuleFunction.SYSTEM_PART, "s")


@pytest.mark.parametrize(
    ("data", "reason", "message"),
    [
        (b"\x00" * 30, "not_a_module", "too short"),
        (bytes(range(256)) * 4, "not_a_module", "no Particle module header"),
        (build_module(BODY, platform_id=6)[:-100], "truncated", "truncated: the module header says"),
        (build_module(BODY, platform_id=6) + b"\x00", "oversized", "1 bytes after the module's end"),
        (build_module(BODY, platform_id=6, flags=0x02), "unsupported", "compressed"),
        (build_module(BODY, platform_id=6, function=ModuleFunction.RESOURCE), "unsupported", "resource module"),
    ],
    ids=["short", "random", "truncated", "oversized", "compressed", "resource"],
)
def test_refusals(data: bytes, reason: str, message: str) -> None:
    with pytest.raises(ModuleError, match=message) as caught:
        parse_module(data)
    assert caught.value.reason == reason


def test_a_corrupt_byte_fails_the_crc() -> None:
    data = bytearray(build_module(BODY, platform_id=6))
    data[1000] ^= 0x01
    with pytest.raises(ModuleError, match=r"corrupt: the CRC-32 stored at the end is [0-9a-f]{8}") as caught:
        parse_module(bytes(data))
    assert caught.value.reason == "crc_mismatch"


def test_the_device_checks() -> None:
    info = parse_module(build_module(BODY, platform_id=6))
    check_module_for_device(info, platform_id=6, max_size=info.size)
    check_module_for_device(info, platform_id=None, max_size=None)
    with pytest.raises(ModuleError, match=r"built for Photon \(platform 6\), the device is a P1 \(platform 8\)"):
        check_module_for_device(info, platform_id=8, max_size=None)
    with pytest.raises(ModuleError, match=f"too large: {info.size} bytes, and the device takes at most 1024") as caught:
        check_module_for_device(info, platform_id=6, max_size=1024)
    assert caught.value.reason == "too_large"
    assert platform_name(99) == "platform 99"


def test_build_checks_its_dependencies() -> None:
    with pytest.raises(ValueError, match="two dependencies"):
        build_module(BODY, platform_id=6, dependencies=((4, 1, 1), (4, 2, 1), (2, 0, 1)))
