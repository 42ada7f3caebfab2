"""The firmware a virtual device runs: its user part, what its system Describe says of it, and the checks
Device OS makes before it applies an update (protocol.md §6.7, §7.1; Device OS `module_info.h`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from cyan.protocol import (
    Application,
    Firmware,
    ModuleError,
    ModuleInfo,
    Platform,
    UpdateCheck,
    build_module,
    parse_module,
)
from cyan.protocol.binary import ModuleFunction

__all__ = ["check_image", "describe_modules", "factory_image", "install_user_part", "module_entry"]

#: Device OS system errors an invalid image is reported with (`services/inc/system_error.h`).
_INTEGRITY_CHECK_FAILED = -1330
_UNSUPPORTED_MODULE = -1310
_INVALID_PLATFORM = -1360
_VALIDATION_FAILED = -1320
#: The Describe's "s" (the module's slot size) on a Photon/P1 (§10: 128 KB user part, 256 KB OTA area).
_SLOT_SIZES = {ModuleFunction.USER_PART: 131072, ModuleFunction.SYSTEM_PART: 262144, ModuleFunction.BOOTLOADER: 16384}
#: "vc"/"vv": the validity checks done and passed (CRC, range, platform, dependencies, §6.7).
_VALID = 30


@cache
def factory_image(firmware: Firmware) -> bytes:
    """The user part a virtual device runs before any update: the same bytes for every device of a
    platform, so one hash stands for "not updated yet"."""
    return build_module(
        b"cyan simulator: factory application\x00",
        platform_id=firmware.platform,
        module_version=6,
        dependencies=((ModuleFunction.SYSTEM_PART, 1, firmware.module_version),),
    )


def module_entry(info: ModuleInfo) -> dict[str, object]:
    """A module as the system Describe lists it (`module_info_to_json`, §6.7): "u" (the suffix's
    SHA-256) for the user part only, before "f"."""
    entry: dict[str, object] = {"s": _SLOT_SIZES.get(info.function, 262144), "l": "m", "vc": _VALID, "vv": _VALID}
    if info.function is ModuleFunction.USER_PART:
        entry["u"] = info.module_sha256
    entry["f"] = info.describe_code
    entry["n"] = str(info.index)
    entry["v"] = info.module_version
    entry["d"] = [
        {"f": ModuleFunction(function).describe_code, "n": str(index), "v": version, "d": []}
        for function, index, version in info.dependencies
    ]
    return entry


def describe_modules(firmware: Firmware, user_part: ModuleInfo | None) -> list[dict[str, object]]:
    """The "m" list of a system Describe: the system part of the Device OS version, and the user part.
    The Linux virtual device lists none (its recordings show ``"m":[]``)."""
    if firmware.platform == Platform.GCC:
        return []
    system: dict[str, object] = {
        "s": _SLOT_SIZES[ModuleFunction.SYSTEM_PART],
        "l": "m",
        "vc": _VALID,
        "vv": _VALID,
        "f": "s",
        "n": "1",
        "v": firmware.module_version,
        "d": [],
    }
    return [system] if user_part is None else [system, module_entry(user_part)]


def check_image(firmware: Firmware) -> Callable[[bytes], UpdateCheck]:
    """Device OS's checks on a received image before it is applied: the CRC and layout, the platform,
    a module it can install (§7.1 "module validation")."""

    def check(image: bytes) -> UpdateCheck:
        try:
            info = parse_module(image)
        except ModuleError as exc:
            code = _UNSUPPORTED_MODULE if exc.reason == "unsupported" else _INTEGRITY_CHECK_FAILED
            return UpdateCheck(code, {"s": 0, "l": "m", "vc": 0, "vv": 0, "d": []})
        entry = module_entry(info)
        if info.platform_id != firmware.platform:
            return UpdateCheck(_INVALID_PLATFORM, entry)
        if info.function is not ModuleFunction.USER_PART:
            # The simulator runs applications only; a system part or bootloader is not applied.
            return UpdateCheck(_VALIDATION_FAILED, entry)
        return UpdateCheck(0, entry)

    return check


def install_user_part(application: Application, firmware: Firmware, image: bytes) -> ModuleInfo:
    """Run this user part from the next connection on (after an update or a USB flash): its hash goes into the
    system Describe and its PRODUCT_ID/PRODUCT_VERSION into the Hello (§5, §6.7)."""
    info = parse_module(image)
    application.modules = describe_modules(firmware, info)
    application.product_id = info.product_id
    application.product_version = 0xFFFF if info.product_version is None else info.product_version
    return info
