"""Particle module binaries: what a firmware file says about itself, read the way Device OS reads it.

A Gen 2 module (Device OS `dynalib/inc/module_info.h`, `build/module.mk`) is laid out as::

    prefix   module_info_t, 24 bytes, little-endian (ARM); at offset 0 of a user part, after the
             vector table (0x184) in a system part, bootloader or monolithic image, 0x10C on the Core
             0  u32  module_start_address   the module's first byte in flash (0x080A0000: Photon user part)
             4  u32  module_end_address     its end, exclusive: the CRC-32 is stored there
             8  u8   reserved
             9  u8   flags                  0x01 drop header, 0x02 compressed, 0x04 combined
             10 u16  module_version
             12 u16  platform_id            0 Core, 6 Photon, 8 P1 (3: the Linux virtual device)
             14 u8   module_function        2 bootloader, 3 monolithic, 4 system part, 5 user part
             15 u8   module_index
             16 u8 u8 u16  dependency       function, index, version
             20 u8 u8 u16  dependency2
    ...      the code
    suffix   size - 4 - S: product id u16, product version u16 (user parts; 0xFFFF when not a product),
             then module_info_suffix_t: reserved u16, SHA-256 (32 bytes), S = the suffix size u16 (40)
    CRC      u32 big-endian: CRC-32 (zlib) of every byte before it

The device checks the CRC (`FLASH_VerifyCRC32` reads it byte-swapped), the platform and the addresses
before it applies an update; it reports the suffix's SHA-256 of its user part in the system Describe
(``"u"``, protocol.md §6.7), which is how a server can tell which image a device runs. The SHA-256 is that
of every byte before the hash itself (the build writes it after linking).

Nothing here does I/O: `parse_module` takes bytes, `build_module` makes them (tests, the simulator).
"""

from __future__ import annotations

import enum
import hashlib
import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "MODULE_PREFIX_SIZE",
    "NO_PRODUCT",
    "PLATFORM_NAMES",
    "ModuleError",
    "ModuleFunction",
    "ModuleInfo",
    "build_module",
    "check_for_device",
    "check_module_for_device",
    "parse_module",
    "platform_name",
]

MODULE_PREFIX_SIZE = 24
#: reserved + SHA-256 + size, without the product fields (module_info_suffix_t).
_MIN_SUFFIX_SIZE = 36
#: With the product id and version in front of it, as every Gen 2 user part is built (`module_end.ld`).
_PRODUCT_SUFFIX_SIZE = 40
#: Where Device OS and binary-version-reader look for the prefix: 0 (user parts), after the STM32F2 vector
#: table (Gen 2 system parts, bootloaders, monolithic images) and after the Core's.
_PREFIX_OFFSETS = (0, 0x184, 0x10C)
#: Flags a Gen 2 device can apply: it has no decompression (HAL_PLATFORM_COMPRESSED_OTA is 0, §5).
_COMPRESSED = 0x02
_KNOWN_FLAGS = 0x01 | 0x02 | 0x04 | 0x08 | 0x10
#: Product id and version of a build that is not a product's (`module_end.ld` fills them with 0xFFFF).
NO_PRODUCT = 0xFFFF


class ModuleFunction(enum.IntEnum):
    NONE = 0
    RESOURCE = 1
    BOOTLOADER = 2
    MONOLITHIC = 3
    SYSTEM_PART = 4
    USER_PART = 5
    SETTINGS = 6
    NCP_FIRMWARE = 7
    RADIO_STACK = 8
    ASSET = 9

    @property
    def describe_code(self) -> str:
        """The letter a system Describe uses for it (``"f"``, protocol.md §6.7)."""
        return _DESCRIBE_CODES.get(self, "_")


_DESCRIBE_CODES = {
    ModuleFunction.NONE: "n",
    ModuleFunction.RESOURCE: "r",
    ModuleFunction.BOOTLOADER: "b",
    ModuleFunction.MONOLITHIC: "m",
    ModuleFunction.SYSTEM_PART: "s",
    ModuleFunction.USER_PART: "u",
    ModuleFunction.NCP_FIRMWARE: "c",
    ModuleFunction.RADIO_STACK: "a",
}

#: What an update over the Gen 2 protocol can carry; the others (resources, NCP and radio firmware,
#: assets) do not exist on a Photon, P1 or Core.
_UPDATABLE = {
    ModuleFunction.BOOTLOADER,
    ModuleFunction.MONOLITHIC,
    ModuleFunction.SYSTEM_PART,
    ModuleFunction.USER_PART,
}

PLATFORM_NAMES = {0: "Core", 3: "Linux virtual device", 6: "Photon", 8: "P1"}


def platform_name(platform_id: int) -> str:
    name = PLATFORM_NAMES.get(platform_id)
    return f"{name} (platform {platform_id})" if name else f"platform {platform_id}"


class ModuleError(ValueError):
    """The bytes are not a module a Gen 2 device would accept. `reason` is machine-readable:
    ``not_a_module``, ``truncated``, ``oversized``, ``crc_mismatch``, ``unsupported``, ``wrong_platform``
    or ``too_large``; the message says what was found and what was expected."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """What a module's prefix and suffix say, and the checks that passed."""

    size: int
    prefix_offset: int
    start_address: int
    end_address: int
    flags: int
    module_version: int
    platform_id: int
    function: ModuleFunction
    index: int
    dependencies: tuple[tuple[int, int, int], ...]
    #: The product id and version of a user part (None: not a product build, or not in the suffix).
    product_id: int | None
    product_version: int | None
    #: The suffix's SHA-256, lowercase hex: what a device reports for its user part (Describe ``"u"``).
    module_sha256: str
    #: The stored CRC-32, which equals zlib.crc32 of the bytes before it.
    crc32: int

    @property
    def describe_code(self) -> str:
        return self.function.describe_code


def _parse_prefix(data: bytes, offset: int) -> tuple[int, ...]:
    return struct.unpack_from("<IIBBHHBBBBHBBH", data, offset)


def _prefix_plausible(data: bytes, offset: int) -> bool:
    """binary-version-reader's test for "a module prefix is here": end after start, the size it implies
    fits the file, a module function, empty dependencies written as zeros."""
    if len(data) < offset + MODULE_PREFIX_SIZE:
        return False
    start, end, _reserved, _flags, _version, _platform, function, _index, f1, i1, v1, f2, i2, v2 = _parse_prefix(
        data, offset
    )
    if end <= start or function == ModuleFunction.NONE or function > ModuleFunction.ASSET:
        return False
    return (f1 != 0 or (i1, v1) == (0, 0)) and (f2 != 0 or (i2, v2) == (0, 0))


def parse_module(data: bytes) -> ModuleInfo:
    """Read and check a module binary; raises `ModuleError` saying why a device would refuse it."""
    size = len(data)
    if size < MODULE_PREFIX_SIZE + _MIN_SUFFIX_SIZE + 4:
        raise ModuleError(
            f"{size} bytes is too short for a Particle module: the header, suffix and CRC alone are "
            f"{MODULE_PREFIX_SIZE + _MIN_SUFFIX_SIZE + 4}",
            "not_a_module",
        )
    offset = next((o for o in _PREFIX_OFFSETS if _prefix_plausible(data, o)), None)
    if offset is None:
        raise ModuleError(
            "no Particle module header (module_info_t) at offset 0, 0x184 or 0x10C: this is not a firmware "
            "binary built for a Particle device",
            "not_a_module",
        )
    start, end, _reserved, flags, version, platform, function, index, f1, i1, v1, f2, i2, v2 = _parse_prefix(
        data, offset
    )
    expected = end - start + 4
    if size < expected:
        raise ModuleError(
            f"truncated: the module header says {expected} bytes ({start:#010x}..{end:#010x} plus the CRC), "
            f"the file has {size}",
            "truncated",
        )
    if size > expected:
        raise ModuleError(
            f"{size - expected} bytes after the module's end: the header says {expected} bytes "
            f"({start:#010x}..{end:#010x} plus the CRC), the file has {size}",
            "oversized",
        )
    stored_crc = int.from_bytes(data[-4:], "big")
    actual_crc = zlib.crc32(data[:-4])
    if stored_crc != actual_crc:
        raise ModuleError(
            f"corrupt: the CRC-32 stored at the end is {stored_crc:08x}, the bytes give {actual_crc:08x}",
            "crc_mismatch",
        )
    if flags & ~_KNOWN_FLAGS or flags & _COMPRESSED:
        raise ModuleError(
            f"module flags {flags:#04x}: compressed or unknown formats cannot be applied by a Gen 2 device",
            "unsupported",
        )
    kind = ModuleFunction(function)
    if kind not in _UPDATABLE:
        raise ModuleError(
            f"a {kind.name.lower().replace('_', ' ')} module cannot be installed on a Gen 2 device over the "
            "cloud (user parts, system parts, bootloaders and monolithic images can)",
            "unsupported",
        )
    suffix_size = int.from_bytes(data[-6:-4], "little")
    sha = data[-38:-6].hex()
    product_id = product_version = None
    if _PRODUCT_SUFFIX_SIZE <= suffix_size <= size - 4 - offset - MODULE_PREFIX_SIZE:
        product_id, product_version = struct.unpack_from("<HH", data, size - 4 - suffix_size)
    dependencies = tuple((f, i, v) for f, i, v in ((f1, i1, v1), (f2, i2, v2)) if f != 0)
    return ModuleInfo(
        size=size,
        prefix_offset=offset,
        start_address=start,
        end_address=end,
        flags=flags,
        module_version=version,
        platform_id=platform,
        function=kind,
        index=index,
        dependencies=dependencies,
        product_id=None if product_id in (None, NO_PRODUCT) else product_id,
        product_version=None if product_version in (None, NO_PRODUCT) else product_version,
        module_sha256=sha,
        crc32=stored_crc,
    )


def check_module_for_device(info: ModuleInfo, *, platform_id: int | None, max_size: int | None) -> None:
    """Refuse what the device itself would refuse: another platform's module (it checks the platform id,
    `module_info_matches_platform`), or more bytes than its OTA area takes (§10, the Hello or
    ``spark/hardware/max_binary``). None skips a check whose limit is not known yet."""
    check_for_device(info.platform_id, info.size, platform_id=platform_id, max_size=max_size)


def check_for_device(image_platform: int, image_size: int, *, platform_id: int | None, max_size: int | None) -> None:
    """`check_module_for_device` on what is known of an image: its platform id and size."""
    if platform_id is not None and image_platform != platform_id:
        raise ModuleError(
            f"wrong platform: the binary is built for {platform_name(image_platform)}, the device is a "
            f"{platform_name(platform_id)}",
            "wrong_platform",
        )
    if max_size is not None and image_size > max_size:
        raise ModuleError(f"too large: {image_size} bytes, and the device takes at most {max_size}", "too_large")


def build_module(
    body: bytes,
    *,
    platform_id: int,
    function: ModuleFunction = ModuleFunction.USER_PART,
    index: int = 1,
    module_version: int = 6,
    start_address: int = 0x080A0000,
    flags: int = 0,
    product_id: int = NO_PRODUCT,
    product_version: int = NO_PRODUCT,
    dependencies: tuple[tuple[int, int, int], ...] = ((ModuleFunction.SYSTEM_PART, 1, 3103),),
    prefix_offset: int = 0,
) -> bytes:
    """A module as Device OS's build makes it: prefix, `body`, product fields, suffix with the SHA-256,
    CRC-32. For tests, the simulator and benchmarks; `parse_module` reads it back. A `prefix_offset`
    puts that many bytes (an empty vector table) before the prefix, as in system parts."""
    if len(dependencies) > 2:
        raise ValueError("a module header has room for two dependencies")
    deps = [*dependencies, *[(0, 0, 0)] * (2 - len(dependencies))]
    without_crc = prefix_offset + MODULE_PREFIX_SIZE + len(body) + _PRODUCT_SUFFIX_SIZE
    prefix = struct.pack(
        "<IIBBHHBBBBHBBH",
        start_address,
        start_address + without_crc,
        0,
        flags,
        module_version,
        platform_id,
        function,
        index,
        *deps[0],
        *deps[1],
    )
    head = bytes(prefix_offset) + prefix + body + struct.pack("<HHH", product_id, product_version, 0)
    sha = hashlib.sha256(head).digest()
    unsigned = head + sha + struct.pack("<H", _PRODUCT_SUFFIX_SIZE)
    return unsigned + zlib.crc32(unsigned).to_bytes(4, "big")
