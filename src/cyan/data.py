"""The cloud's data without serving it: the server keys in the data directory, the use cases over the
configured database, and where its schema stands.

What the command line needs to act on the data (`cyan users`, `cyan devices`, `cyan db`, ...) without the
API, the device servers or the bus that `cyan.service` assembles for `cyan serve`: a command starts in half
the time when it does not import them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cyan.app import UDP_SERVER_KEY, Actor, Application
from cyan.config import Settings
from cyan.keys import (
    KeyFormatError,
    build_server_key_file,
    build_udp_server_key_file,
    check_server_public_key,
    encode_ec_private_key_pem,
    encode_private_key_pem,
    fingerprint,
    generate_ec_key,
    generate_server_key,
    load_ec_private_key,
    load_private_key,
    public_key_der,
    udp_public_key_der,
    write_private_key_file,
)
from cyan.store import SchemaStatus, open_store, schema_status, upgrade_schema

__all__ = [
    "SchemaStatus",
    "ServerKeys",
    "database_status",
    "ensure_server_keys",
    "ensure_udp_server_key",
    "open_application",
    "prepare_data_directory",
    "settle_server_key",
    "upgrade_database",
    "write_public_file",
    "write_server_key_file",
    "write_udp_server_key_file",
]


@dataclass(frozen=True, slots=True)
class ServerKeys:
    private_key: rsa.RSAPrivateKey
    #: Made now, not written yet: `Service.start` writes it once the data allow it (`cyan.app.server_key`).
    created: bool
    fingerprint: str
    #: Made now on purpose (`--new-server-key`), to replace the key file's.
    replacing: bool = False
    #: The EC P-256 key of the UDP devices (DTLS, udp-dtls.md §1.2), beside the RSA one; None where no UDP
    #: device is served.
    udp_private_key: ec.EllipticCurvePrivateKey | None = None
    #: The UDP key was made now, not written yet: checked and written by `Service.start` as the RSA one.
    udp_created: bool = False


def ensure_server_keys(settings: Settings, *, new_key: bool = False) -> ServerKeys:
    """The server key from the data directory; or, when there is none (or `new_key`), a new one, held in
    memory until `Service.start` has checked that no registered device expects another."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    udp_key, udp_created = ensure_udp_server_key(settings)
    path = settings.server_key_path
    if path.exists() and not new_key:
        try:
            key = load_private_key(path.read_bytes())
        except (KeyFormatError, OSError) as exc:
            raise KeyFormatError(f"cannot use the server key {path}: {exc}") from exc
        check_server_public_key(key.public_key())
        return ServerKeys(key, False, fingerprint(key.public_key()), udp_private_key=udp_key, udp_created=udp_created)
    key = generate_server_key()
    return ServerKeys(
        key,
        True,
        fingerprint(key.public_key()),
        replacing=new_key,
        udp_private_key=udp_key,
        udp_created=udp_created,
    )


def ensure_udp_server_key(settings: Settings) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The UDP devices' P-256 server key from the data directory, or a new one (True) held in memory until
    `Service.start` has checked that the cloud records no other (`cyan.app.server_key`). Never replaced
    silently: every UDP device holds its public half (udp-dtls.md §1.2)."""
    path = settings.udp_server_key_path
    if path.exists():
        try:
            return load_ec_private_key(path.read_bytes()), False
        except (KeyFormatError, OSError) as exc:
            raise KeyFormatError(f"cannot use the UDP server key {path}: {exc}") from exc
    return generate_ec_key(), True


async def settle_server_key(settings: Settings, keys: ServerKeys, app: Application) -> None:
    """Check the key against what the devices were given, write a new one (owner-only, an old one kept
    aside), record it, and (re)write the public files devices need."""
    path = settings.server_key_path
    shared = bool(settings.database_url.strip()) and not settings.database_url.startswith("sqlite")
    operator = Actor.operator()
    if keys.replacing:
        old = None
        kept = None
        if path.exists():
            try:
                old = fingerprint(load_private_key(path.read_bytes()).public_key())
            except (KeyFormatError, OSError):
                old = None
            kept_path = path.with_name(f"{path.name}.replaced-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
            path.replace(kept_path)
            kept = str(kept_path)
        write_private_key_file(path, encode_private_key_pem(keys.private_key))
        await app.server_key.replaced(operator, old or await app.server_key.expected(), keys.fingerprint, kept)
    elif keys.created:
        await app.server_key.check(str(path), None, shared=shared)
        # Recorded before it is written: of nodes starting together on a new database, the one whose key is
        # not recorded must not keep a key file no other node has.
        await app.server_key.created(operator, keys.fingerprint, path=str(path), shared=shared)
        write_private_key_file(path, encode_private_key_pem(keys.private_key))
    else:
        await app.server_key.check(str(path), keys.fingerprint, shared=shared)
    write_public_file(settings.server_public_key_path, public_key_der(keys.private_key.public_key()))
    udp_key = keys.udp_private_key
    if udp_key is not None:
        udp_path = settings.udp_server_key_path
        udp_fingerprint = fingerprint(udp_key.public_key())
        if keys.udp_created:
            await app.server_key.check(str(udp_path), None, shared=shared, subject=UDP_SERVER_KEY)
            await app.server_key.created(
                operator, udp_fingerprint, path=str(udp_path), shared=shared, subject=UDP_SERVER_KEY
            )
            write_private_key_file(udp_path, encode_ec_private_key_pem(udp_key))
        else:
            await app.server_key.check(str(udp_path), udp_fingerprint, shared=shared, subject=UDP_SERVER_KEY)
        write_public_file(settings.udp_server_public_key_path, udp_public_key_der(udp_key))


def prepare_data_directory(settings: Settings) -> ServerKeys:
    """The data directory as `cyan serve` leaves it (database, server key, the public key devices need),
    without serving: for fleet provisioning before the server first runs, and for tests."""
    keys = ensure_server_keys(settings)

    async def settle() -> None:
        store = open_store(settings.database_location)
        await store.open()
        try:
            await settle_server_key(settings, keys, Application(store))
        finally:
            await store.close()

    asyncio.run(settle())
    return dataclasses.replace(keys, created=False, replacing=False, udp_created=False)


@contextlib.asynccontextmanager
async def open_application(settings: Settings) -> AsyncIterator[Application]:
    """The use cases over the configured database (`Settings.database_url`, or else the data directory's), as
    the command line uses them (no device is served here; a server running beside it sees the changes at each
    device's next connection)."""
    location = settings.database_location
    if isinstance(location, Path) and not location.exists():
        raise FileNotFoundError(f"no Cyan database at {location}; run `cyan serve` once, or pass --data-dir")
    store = open_store(location)
    await store.open()
    try:
        yield Application(store)
    finally:
        await store.close()


async def database_status(settings: Settings) -> SchemaStatus:
    """Where the configured database's schema stands against this version's migrations; changes nothing."""
    return await schema_status(settings.database_location)


async def upgrade_database(settings: Settings) -> tuple[SchemaStatus, SchemaStatus]:
    """Migrate the configured database to this version's schema (as `cyan serve` does when it starts); where
    it was and where it is now."""
    return await upgrade_schema(settings.database_location)


def write_server_key_file(settings: Settings, public: rsa.RSAPublicKey, port: int) -> Path:
    """The 512-byte file for DCT offset 2082 with this server's address and port (protocol.md §11)."""
    path = settings.server_key_file_path(port)
    write_public_file(path, build_server_key_file(public, settings.public_address, port))
    return path


def write_udp_server_key_file(settings: Settings, public: ec.EllipticCurvePublicKey, port: int) -> Path:
    """The 320-byte file for DCT offset 3298 with this server's address and UDP port (udp-dtls.md §1.2)."""
    path = settings.udp_server_key_file_path(port)
    write_public_file(path, build_udp_server_key_file(public, settings.public_address, port))
    return path


def write_public_file(path: Path, data: bytes) -> None:
    """A file devices or operators may read (0644), replaced whole, left alone when it already holds `data`."""
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    tmp.replace(path)
