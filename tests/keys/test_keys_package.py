"""Package-level rules: the public names, and that cyan.keys stays sans-IO (stdlib and cryptography only)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import cyan.keys as keys

PACKAGE_DIR = Path(keys.__file__).parent

# The protocol package imports these names; they must not change.
REQUIRED_NAMES = {
    "KeyFormatError",
    "DEVICE_KEY_BITS",
    "SERVER_KEY_BITS",
    "PUBLIC_EXPONENT",
    "generate_device_key",
    "generate_server_key",
    "encode_device_private_key",
    "firmware_parse_device_key",
    "DeviceKeyFields",
    "is_firmware_parsable",
    "load_private_key",
    "load_public_key",
    "public_key_der",
    "device_public_key_der_from_private",
    "fingerprint",
    "check_server_public_key",
    "check_device_public_key",
    "encode_private_key_pem",
    "encode_public_key_pem",
    "write_private_key_file",
    "ServerAddress",
    "Layout",
    "build_server_key_file",
    "parse_server_key_file",
    "ServerKeyFile",
    "read_firmware_server_key",
    "PARTICLE_CLOUD_SERVER_KEY_FINGERPRINT",
    "is_particle_cloud_server_key",
}

# Event loops, sockets, clocks, databases and web stacks belong elsewhere.
FORBIDDEN = {"asyncio", "socket", "time", "sqlite3", "http", "urllib", "ssl", "selectors", "threading", "subprocess"}


def test_public_names() -> None:
    assert set(keys.__all__) >= REQUIRED_NAMES
    for name in keys.__all__:
        assert hasattr(keys, name), name


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            found.add(node.module.split(".")[0])
    return found


def test_only_stdlib_and_cryptography_are_imported() -> None:
    sources = sorted(PACKAGE_DIR.glob("*.py"))
    assert len(sources) >= 2
    for source in sources:
        for module in imported_modules(source):
            assert module == "cryptography" or module == "__future__" or module in sys.stdlib_module_names, (
                source.name,
                module,
            )
            assert module not in FORBIDDEN, (source.name, module)
