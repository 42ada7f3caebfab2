"""`cyan keys ...`: server-key files, device keys over DFU, registration, inspection, fleets and escrow.

The key areas and their meaning are in :mod:`cyan.keys` (protocol.md §2, §11, §12); USB goes through
:mod:`cyan.dfu` (``dfu-util``); the cloud is reached through its HTTP API or its data directory
(``_keys_cloud``). Private keys are written owner-only, never overwritten without ``--force``, and never
printed or logged: only their fingerprints are.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cyan.config import Settings
from cyan.dfu import DfuDevice, DfuError, DfuUtil
from cyan.keys import (
    CloudFacts,
    DctImage,
    EscrowError,
    KeyArea,
    KeyEscrow,
    KeyFormatError,
    KeyInspection,
    Layout,
    Platform,
    ServerAddress,
    build_udp_server_key_file,
    check_device_public_key,
    encode_device_private_key,
    encode_public_key_pem,
    fingerprint,
    generate_device_key,
    generate_ec_key,
    inspect_file,
    inspect_key_areas,
    inspect_private_key,
    is_ec_key,
    is_firmware_parsable,
    key_layout,
    load_ec_public_key,
    load_private_key,
    load_public_key,
    outer_sequence,
    parse_server_key_file,
    write_private_key_file,
)

from ._keys_cloud import (
    ApiRegistry,
    CloudUnreachableError,
    DataDirRegistry,
    Registry,
    RegistryError,
    ServerIdentity,
    load_server_identity,
    load_udp_server_identity,
    load_udp_server_key,
)
from ._options import DatabaseOption, DataDirOption, local_settings

app = typer.Typer(
    help="Device and server keys: key files, DFU read/write, registration, inspection, fleets, escrow.",
    no_args_is_help=True,
)

_DEVICE_ID = re.compile(r"[0-9a-f]{24}")
_SERVER_FILE_SIZES = (Layout.PHOTON.size, Layout.PHOTON.max_size, Layout.CORE.size)
_SPKI_2048_HEADER = bytes.fromhex("30820122")
#: `cyan keys inspect` exits with this status when it found a problem (1 means it could not inspect).
INSPECT_PROBLEMS_EXIT = 3

ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api", envvar="CYAN_API_URL", help="Cloud API of a Cyan cloud, e.g. http://HOST:8080 (env CYAN_API_URL)."
    ),
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="CYAN_TOKEN", help="Access token for --api (env CYAN_TOKEN).")
]
DeviceOption = Annotated[
    str | None,
    typer.Option("--device", help="The device id, to pick one device in DFU mode and to check it is that one."),
]
PlatformOption = Annotated[
    str | None,
    typer.Option("--platform", help="photon, p1 or core, for files (devices in DFU mode say it themselves)."),
]
ServerKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--server-key",
        help="This cloud's server public key, or a server-key file with its address "
        "(the data dir's server_public_key.der).",
    ),
]
PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="File holding the escrow passphrase (env CYAN_ESCROW_PASSPHRASE; asked for when neither is given).",
    ),
]


# -- small helpers --------------------------------------------------------------------------------------------


def _echo(message: str = "") -> None:
    typer.echo(message)


def _warn(message: str) -> None:
    typer.secho(f"warning: {message}", fg="yellow", err=True)


def _fail(message: str, hint: str | None = None) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    if hint:
        typer.echo(f"hint: {hint}", err=True)
    raise typer.Exit(1)


def _device_id(value: str, what: str = "DEVICE_ID") -> str:
    device_id = value.strip().lower()
    if not _DEVICE_ID.fullmatch(device_id):
        raise typer.BadParameter(f"{value!r} is not a device id (24 hexadecimal digits)", param_hint=what)
    return device_id


def _platform(value: str | None) -> Platform | None:
    if value is None:
        return None
    try:
        return Platform(value.strip().lower())
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use photon, p1 or core", param_hint="--platform") from None


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp() -> str:
    return _now().strftime("%Y%m%dT%H%M%SZ")


def _short(fp: str | None) -> str:
    return "none" if fp is None else fp[:23] + "..."


def _write_public(path: Path, data: bytes, *, force: bool) -> None:
    """Public files (public keys, server-key files): never replace a different file without --force."""
    if path.exists() and path.read_bytes() != data and not force:
        _fail(f"{path} exists and differs", "choose another name (-o) or pass --force to replace it")
    path.write_bytes(data)
    path.chmod(0o644)


def _write_private(path: Path, data: bytes, *, force: bool = False) -> None:
    try:
        write_private_key_file(path, data, overwrite=force)
    except FileExistsError:
        _fail(f"{path} exists; a private key file is never overwritten", "choose another name, or pass --force")


def _unique(path: Path) -> Path:
    """``path``, or ``name-2.ext``, ``name-3.ext``... when it exists (backups never replace anything)."""
    candidate, number = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        number += 1
    return candidate


def _registry(api: str | None, token: str | None, data_dir: Path | None) -> Registry:
    return ApiRegistry(api, token) if api else DataDirRegistry(data_dir)


def _is_server_key_file(data: bytes) -> bool:
    return len(data) in _SERVER_FILE_SIZES and (data.startswith(_SPKI_2048_HEADER) or data[0] == 0xFF)


def _fit_server_file(data: bytes, layout: Layout) -> bytes:
    """A server-key file for ``layout``: the Core's is the Photon's padded to 2048 bytes with 0xFF."""
    parsed = parse_server_key_file(data)
    if parsed.key_state != "ok":
        _fail(f"the server-key file is not usable: {parsed.key_problem}", "make one with `cyan keys server`")
    if parsed.address_state != "ok":
        _fail(
            f"the server-key file has no usable address ({parsed.address_problem}); the device would go to "
            f"{parsed.effective_address.host}",
            "make one with `cyan keys server --host H`",
        )
    body = data[: Layout.PHOTON.size]
    if layout is Layout.CORE:
        return body + b"\xff" * (Layout.CORE.size - len(body))
    return body


def _device_key_bytes(data: bytes) -> tuple[bytes, rsa.RSAPrivateKey, str | None]:
    """The bytes to write for a device key file, the key, and a note when they are not the file's own bytes.

    A DER file the firmware reads correctly is written as it is (like `particle keys load`); PEM, or DER the
    firmware would misread (protocol.md §A.3), is written as standard DER when that parses, else in the
    firmware's fixed-width layout.
    """
    key = load_private_key(data)
    check_device_public_key(key)
    if not data.lstrip().startswith(b"-----"):
        report = inspect_private_key(data)
        if report.state == "ok":
            length = int.from_bytes(data[2:4], "big") + 4
            return data[:length], key, None
    minimal = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    if is_firmware_parsable(minimal):
        note = None if data.lstrip().startswith(b"-----") else "re-encoded as standard DER, which the firmware reads"
        return minimal, key, note
    return encode_device_private_key(key), key, "written in the firmware's fixed-width layout (protocol.md §2.2)"


# -- DFU --------------------------------------------------------------------------------------------------------


def _find(dfu: DfuUtil, device_id: str | None) -> DfuDevice:
    device = dfu.find(device_id)
    if device_id and device.device_id is None:
        _warn(
            f"the device's USB serial ({device.serial or 'none'}) does not carry its id, so it cannot be confirmed "
            f"to be {device_id}: make sure it is"
        )
    return device


def _back_up(dfu: DfuUtil, device: DfuDevice, directory: Path, label: str) -> Path | None:
    """Save the device's current private key (owner-only) before it is replaced; None when it is blank."""
    area = dfu.read(device, key_layout(device.platform.layout).private_key)
    if area[0] == 0xFF:
        return None
    kind = "ec" if device.platform.udp else "rsa"
    data = area
    if device.platform.udp:
        with contextlib.suppress(KeyFormatError):
            data = outer_sequence(area, "the device private key")  # SEC1 DER, and the erased rest left out
    else:
        report = inspect_private_key(area)
        if report.state in ("ok", "unparsable"):
            data = area[: int.from_bytes(area[2:4], "big") + 4]
    path = _unique(directory / f"backup_{kind}_{label}_{_stamp()}.der")
    write_private_key_file(path, data)
    return path


def _write_verified(dfu: DfuUtil, device: DfuDevice, which: str, data: bytes, *, leave: bool) -> str:
    """Write a key area; read it back unless the device is leaving DFU mode (it restarts at once)."""
    area = getattr(key_layout(device.platform.layout), which)
    dfu.write(device, area, data, leave=leave)
    if leave:
        return "written; the device is restarting"
    back = dfu.read(device, area)
    if back[: len(data)] != data:
        raise DfuError(
            f"the {area.name} read back from {device.describe()} differs from what was written",
            "write it again; if it keeps differing, the device's flash may be failing",
        )
    return "written and verified"


# -- server-key files -------------------------------------------------------------------------------------------


def _identity(data_dir: Path | None, server_key: Path | None) -> ServerIdentity:
    identity = load_server_identity(data_dir, server_key)
    if identity is None:
        where = local_settings(data_dir).server_public_key_path
        _fail(
            f"no server key: {where} does not exist",
            "run `cyan serve` once to create it, pass --data-dir, or give the key with --key/--server-key",
        )
    return identity


@app.command("server")
def server(
    host: Annotated[str | None, typer.Option("--host", help="IPv4 address or domain devices connect to.")] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Device port; without it the device uses 5683 (TCP) or 5684 (UDP).")
    ] = None,
    core: Annotated[bool, typer.Option("--core", help="The Spark Core's 2048-byte layout.")] = False,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="tcp: Photon/P1/Core (RSA, 512 bytes); udp: Electron and Gen 3 (EC P-256, 320 bytes).",
        ),
    ] = "tcp",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the file.")] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            help="Server public key (DER/PEM) (the data dir's server_public_key.der, or udp_server_public_key.der).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a different existing output file.")] = False,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Write the server-key file devices of this cloud need, byte for byte as `particle keys server` does.

    Photon/P1: 512 bytes for DCT 2082; Core (--core): 2048 bytes for external flash 0x1000 (protocol.md §11).
    Electron and Gen 3 (--protocol udp): 320 bytes for DCT 3298, the P-256 key with the address at 192 and the
    port at 258. Without --host, the address this cloud publishes in its data directory is used.
    """
    if protocol not in ("tcp", "udp"):
        _fail(f"--protocol {protocol!r}: use tcp or udp")
    if protocol == "udp":
        if core:
            _fail("--core is a TCP layout; the Spark Core has no UDP key file")
        _udp_server_file(host, port, output, key, force, data_dir)
        return
    identity = _identity(data_dir, key)
    layout = Layout.CORE if core else Layout.PHOTON
    try:
        data, address = identity.key_file(layout, host, port)
    except RegistryError as exc:
        _fail(str(exc), exc.hint)
    if output is None:
        source = Path(identity.source)
        stem = source.stem if source.is_file() else "server_public_key"
        output = Path(f"{stem}-{address.host.replace('.', '_')}-rsa.der")
    _write_public(output, data, force=force)
    target = "Spark Core external flash 0x1000" if core else "DCT 2082 (Photon/P1)"
    _echo(
        f"Wrote {output} ({len(data)} bytes): server key {_short(identity.fingerprint)}, devices connect to {address}"
    )
    _echo(f"Write it to a device in DFU mode with: cyan keys load {output}   (goes to {target}, alt 1)")


def _udp_server_file(
    host: str | None, port: int | None, output: Path | None, key: Path | None, force: bool, data_dir: Path | None
) -> None:
    settings = Settings.from_env(data_dir=data_dir)
    source = key or settings.udp_server_public_key_path
    if not source.exists():
        _fail(
            f"no UDP server key: {source} does not exist",
            "run `cyan serve` once to create it, pass --data-dir, or give the key with --key",
        )
    try:
        public = load_ec_public_key(source.read_bytes())
    except KeyFormatError as exc:
        _fail(f"{source}: {exc}", "the UDP server key is an EC P-256 key (udp_server_public_key.der)")
    if host is None:
        host = settings.public_address
    try:
        data = build_udp_server_key_file(public, host, port)
    except KeyFormatError as exc:
        _fail(str(exc))
    if output is None:
        output = Path(f"{source.stem}-{host.replace('.', '_')}-ec.der")
    _write_public(output, data, force=force)
    where = f"{host}:{port}" if port is not None else f"{host} (port 5684)"
    _echo(f"Wrote {output} ({len(data)} bytes): server key {_short(fingerprint(public))}, devices connect to {where}")
    _echo("It goes to DCT offset 3298 (alt 1) of an Electron or Gen 3 device in DFU mode.")


@app.command("address")
def address(
    file: Annotated[Path | None, typer.Argument(help="A server-key file or DCT dump (the device in DFU mode).")] = None,
    device: DeviceOption = None,
    platform: PlatformOption = None,
) -> None:
    """Print the server address a server-key file, a DCT dump or a device holds, as tcp://host:port."""
    chosen = _platform(platform)
    if file is None:
        dfu = DfuUtil()
        found = _find(dfu, device)
        data = dfu.read(found, key_layout(found.platform.layout).server_key)
        layout = found.platform.layout
    else:
        data = file.read_bytes()
        layout = chosen.layout if chosen else (Layout.CORE if len(data) == Layout.CORE.size else Layout.PHOTON)
        if not _is_server_key_file(data):
            data = DctImage(layout, data).server_key_area
    parsed = parse_server_key_file(data, layout)
    _echo(str(parsed.effective_address))
    if parsed.address_state != "ok":
        _warn(f"the address block is {parsed.address_state}: {parsed.address_problem}")


# -- device keys -----------------------------------------------------------------------------------------------


@app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="File name without extension: NAME.der and NAME.pub.pem.")] = "device",
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Make a device key pair the firmware's key parser reads correctly (RSA-1024, protocol.md §2.2, §A.3)."""
    base = Path(name)
    if base.suffix in (".der", ".pem"):
        base = base.with_suffix("")
    private_path, public_path = base.with_name(base.name + ".der"), base.with_name(base.name + ".pub.pem")
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                _fail(f"{path} exists; keys are never overwritten", "choose another NAME, or pass --force")
    key = generate_device_key()
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    _write_private(private_path, der, force=force)
    _write_public(public_path, encode_public_key_pem(key), force=True)
    _echo(f"New key {private_path} (private, owner-only) and {public_path}: {fingerprint(key)}")


@app.command("load")
def load(
    file: Annotated[Path, typer.Argument(help="A device private key (DER/PEM) or a server-key file.")],
    device: DeviceOption = None,
    leave: Annotated[bool, typer.Option("--leave", help="Leave DFU mode afterwards (the device restarts).")] = False,
    backup_dir: Annotated[
        Path | None, typer.Option("--backup-dir", help="Where the device's current key is saved first (FILE's folder).")
    ] = None,
) -> None:
    """Write a device private key (DCT 34 / Core 0x2000) or a server-key file (DCT 2082 / Core 0x1000) over DFU.

    The device's current private key is saved first (owner-only), as `particle keys load` does.
    """
    data = file.read_bytes()
    dfu = DfuUtil()
    found = _find(dfu, device)
    layout = found.platform.layout
    if _is_server_key_file(data):
        payload = _fit_server_file(data, layout)
        status = _write_verified(dfu, found, "server_key", payload, leave=leave)
        parsed = parse_server_key_file(payload, layout)
        _echo(f"Server key and address {parsed.effective_address} ({len(payload)} bytes): {status}")
        return
    payload, key, note = _device_key_bytes(data)
    current = dfu.read(found, key_layout(layout).private_key)
    if current[: len(payload)] == payload:
        _echo(f"The device already holds this key ({fingerprint(key)}); nothing written.")
        return
    label = found.device_id or "device"
    backup = _back_up(dfu, found, backup_dir or file.resolve().parent, label)
    if backup is not None:
        _echo(f"Saved the device's current key to {backup}")
    status = _write_verified(dfu, found, "private_key", payload, leave=leave)
    _echo(f"Device key {fingerprint(key)} ({len(payload)} bytes): {status}" + (f"; {note}" if note else ""))


@app.command("save")
def save(
    file: Annotated[Path, typer.Argument(help="Where to write what was read.")],
    device: DeviceOption = None,
    server_key: Annotated[bool, typer.Option("--server", help="Read the server-key area instead.")] = False,
    dct: Annotated[bool, typer.Option("--dct", help="Read the whole key image (for `cyan keys inspect`).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Read the device private key (default), the server-key area or the whole key image over DFU."""
    dfu = DfuUtil()
    found = _find(dfu, device)
    keys = key_layout(found.platform.layout)
    if server_key:
        data = dfu.read(found, keys.server_key)
        _write_public(file, data, force=force)
        parsed = parse_server_key_file(data, found.platform.layout)
        _echo(f"Saved the server-key area to {file}: key {parsed.key_state}, address {parsed.effective_address}")
        return
    if dct:
        data = dfu.read(found, KeyArea("key image", 0, keys.image_size))
        _write_private(file, data, force=force)
        _echo(f"Saved {len(data)} bytes of the {found.platform.display_name}'s key image to {file} (owner-only)")
        return
    area = dfu.read(found, keys.private_key)
    report = inspect_private_key(area)
    if report.state == "blank":
        _fail(
            "the device has no private key (the area is erased); it makes a new one at its next boot",
            f"give it a registered key: cyan keys doctor {found.device_id or 'DEVICE_ID'}",
        )
    data = area
    if report.state in ("ok", "unparsable"):
        data = area[: int.from_bytes(area[2:4], "big") + 4]
    _write_private(file, data, force=force)
    if report.state == "malformed":
        _warn(f"saved the raw {len(area)}-byte area: the key on the device is corrupt ({report.problem})")
        return
    public_path = file.with_name(file.stem + ".pub.pem")
    _write_public(public_path, encode_public_key_pem(load_private_key(data)), force=True)
    _echo(f"Saved the device key to {file} (owner-only) and {public_path}: {report.fingerprint}")
    if report.state == "unparsable":
        _warn(f"the firmware misreads this key: {report.problem}; `cyan keys load {file}` rewrites it readably")


# -- the cloud -------------------------------------------------------------------------------------------------


@app.command("send")
def send(
    device_id: Annotated[str, typer.Argument(help="The 24-hex-digit device id.")],
    file: Annotated[Path, typer.Argument(help="The device key: DER or PEM, private or public.")],
    product_id: Annotated[int | None, typer.Option("--product-id", help="Product id, as particle keys send.")] = None,
    api: ApiOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Register a device's public key with a Cyan cloud (what `particle keys send` does): RSA-1024 for Gen 2,
    EC P-256 for the Electron and Gen 3."""
    device_id = _device_id(device_id)
    data = file.read_bytes()
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if is_ec_key(data):
        public = load_ec_public_key(data)
    else:
        public = load_public_key(data)
        check_device_public_key(public)
    registry = _registry(api, token, data_dir)
    try:
        held = registry.register(device_id, public, product_id=product_id)
    finally:
        registry.close()
    _echo(f"Registered key {held} for {device_id} with {registry.where}")


# -- doctor ------------------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


@dataclass
class _Steps:
    total: int
    number: int = 0

    @contextmanager
    def step(self, title: str, advice: Callable[[], str]) -> Iterator[list[str]]:
        """Run one step: prints "[n/N] title: result", or FAILED, the error, its hint and what state things
        are in (``advice``), then stops the command."""
        self.number += 1
        result: list[str] = []
        try:
            yield result
        except (DfuError, RegistryError, KeyFormatError, EscrowError, OSError) as exc:
            _echo(f"[{self.number}/{self.total}] {title}: FAILED")
            typer.secho(f"error: {exc}", fg="red", err=True)
            hint = getattr(exc, "hint", None)
            if hint:
                typer.echo(f"hint: {hint}", err=True)
            typer.echo(f"Stopped. {advice()}", err=True)
            raise _Stop from exc
        _echo(f"[{self.number}/{self.total}] {title}: {'; '.join(result) or 'ok'}")


@app.command("doctor")
def doctor(
    device_id: Annotated[str, typer.Argument(help="The device id (the device must be in DFU mode).")],
    api: ApiOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    server_key: ServerKeyOption = None,
    host: Annotated[str | None, typer.Option("--host", help="Address devices connect to (the published one).")] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Device port (the published one, else 5683; 5684 over UDP).")
    ] = None,
    keys_dir: Annotated[Path, typer.Option("--keys-dir", help="Where the new key and the backup go.")] = Path(),
    escrow: Annotated[Path | None, typer.Option("--escrow", help="Also escrow the new key in this file.")] = None,
    passphrase_file: PassphraseFileOption = None,
    keep_server_key: Annotated[
        bool, typer.Option("--keep-server-key", help="Do not rewrite the server key and address.")
    ] = False,
    stay: Annotated[bool, typer.Option("--stay", help="Stay in DFU mode at the end (no restart).")] = False,
) -> None:
    """Give a device a new key and point it at this cloud: find it over DFU, back up its key, make a new
    one, write it, register it, write this cloud's server key and address. Each step is reported; the first
    that fails stops everything, with what to do next. A Photon or P1 gets an RSA key and this cloud's TCP
    server key; an Electron or a Gen 3 device (Argon, Boron, Xenon) a P-256 key and the UDP server key."""
    device_id = _device_id(device_id)
    keys_dir.mkdir(parents=True, exist_ok=True)
    for kind in ("rsa", "ec"):
        if (keys_dir / f"{device_id}_{kind}_new.der").exists():
            _fail(
                f"{keys_dir / f'{device_id}_{kind}_new.der'} exists (from an earlier run?); keys are never overwritten",
                "move it away, or use --keys-dir",
            )
    dfu = DfuUtil()
    registry = _registry(api, token, data_dir)
    total = 6 if keep_server_key else 7
    steps = _Steps(total)
    state = {"backup": "", "written": False}
    _echo(f"Key doctor for {device_id}")
    try:
        with steps.step(
            "Find the device in DFU mode", lambda: "Nothing was changed on the device or in the cloud."
        ) as out:
            found = _find(dfu, device_id)
            out.append(found.describe())
        udp = found.platform.udp
        kind = "ec" if udp else "rsa"
        new_key_path = keys_dir / f"{device_id}_{kind}_new.der"
        with steps.step("Check the cloud", lambda: "Nothing was changed on the device or in the cloud.") as out:
            out.append(registry.check())
            held = registry.device_key(device_id)
            out.append(
                f"device key held: {_short(held.fingerprint)}" if held.registered else "device not registered yet"
            )
            server_file: bytes | None = None
            target: ServerAddress | None = None
            if not keep_server_key and udp:
                udp_identity = load_udp_server_key(data_dir, server_key)
                if udp_identity is None:
                    raise RegistryError(
                        "this cloud's UDP server key is unknown, so the device cannot be pointed at it",
                        "give --server-key (the cloud's udp_server_public_key.der or 320-byte server-key file) or "
                        "--data-dir, or pass --keep-server-key",
                    )
                server_file, target = udp_identity.key_file(host, port)
                out.append(f"devices connect to {target}")
            elif not keep_server_key:
                identity = load_server_identity(data_dir, server_key)
                if identity is None:
                    raise RegistryError(
                        "this cloud's server key is unknown, so the device cannot be pointed at it",
                        "give --server-key (the cloud's server_public_key.der or server-key file) or --data-dir, "
                        "or pass --keep-server-key",
                    )
                server_file, target = identity.key_file(found.platform.layout, host, port)
                out.append(f"devices connect to {target}")
        with steps.step(
            "Back up the device's current key", lambda: "Nothing was changed on the device or in the cloud."
        ) as out:
            backup = _back_up(dfu, found, keys_dir, device_id)
            state["backup"] = str(backup) if backup else ""
            out.append(str(backup) if backup else "nothing to back up (the key area is blank)")
        with steps.step("Make a new key", lambda: "Nothing was changed on the device or in the cloud.") as out:
            key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = generate_ec_key() if udp else generate_device_key()
            # SEC1 DER for P-256 (as Device OS stores it), PKCS#1 DER for RSA: "TraditionalOpenSSL" is both.
            der = key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
            write_private_key_file(new_key_path, der)
            (keys_dir / f"{device_id}_{kind}_new.pub.pem").write_bytes(
                key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            if escrow is not None:
                _escrow_add(escrow, passphrase_file, [(device_id, der)])
                out.append(f"escrowed in {escrow}")
            out.insert(0, f"{new_key_path} ({fingerprint(key)})")

        def after_write_failure() -> str:
            kept = f" Its previous key is saved in {state['backup']}." if state["backup"] else ""
            return f"The device may hold a partly written key; run the doctor again.{kept} The cloud was not changed."

        with steps.step("Write the key over DFU", after_write_failure) as out:
            out.append(_write_verified(dfu, found, "private_key", der, leave=keep_server_key and not stay))
            state["written"] = True

        def after_register_failure() -> str:
            back = f" or put the old key back: cyan keys load {state['backup']}" if state["backup"] else ""
            return (
                f"The device now holds the new key {new_key_path}, which the cloud does not know: register it "
                f"when the cloud accepts it (cyan keys send {device_id} {new_key_path}){back}."
            )

        with steps.step("Register the key with the cloud", after_register_failure) as out:
            out.append(f"{registry.register(device_id, key.public_key())} with {registry.where}")
        if server_file is not None:
            with steps.step(
                "Point the device at this cloud",
                lambda: (
                    "The device holds its new, registered key; its server key was not changed. Run "
                    f"`cyan keys server{' --protocol udp' if udp else ''} -o server.der && cyan keys load server.der "
                    f"--device {device_id}` to retry."
                ),
            ) as out:
                out.append(f"{target}; " + _write_verified(dfu, found, "server_key", server_file, leave=not stay))
    except _Stop:
        raise typer.Exit(1) from None
    finally:
        registry.close()
    if stay:
        _echo("Done. The device stays in DFU mode: press RESET to restart it with its new key.")
    else:
        _echo("Done. The device restarts with its new key" + (f" and connects to {target}." if target else "."))


# -- inspect -----------------------------------------------------------------------------------------------------


def _has_database(settings: Settings) -> bool:
    return bool(settings.database_url) or settings.database_path.exists()


def _facts(
    device_id: str | None, api: str | None, token: str | None, data_dir: Path | None, server_key: Path | None
) -> CloudFacts:
    """What the cloud knows, as far as it can be asked; a cloud that cannot be reached is reported and skipped."""
    registered: bool | None = None
    held: str | None = None
    if device_id is not None and (api or _has_database(local_settings(data_dir))):
        registry = _registry(api, token, data_dir)
        try:
            answer = registry.device_key(device_id)
            registered, held = answer.registered, answer.fingerprint
        except RegistryError as exc:
            _warn(f"the device's key was not compared with the cloud: {exc}")
        finally:
            registry.close()
    udp = None
    try:
        udp = load_udp_server_identity(data_dir, server_key)
    except (KeyFormatError, OSError) as exc:
        _warn(f"this cloud's UDP server key could not be read: {exc}")
    identity = None
    if server_key is None or udp is None:  # a UDP key given as --server-key is no RSA one
        try:
            identity = load_server_identity(data_dir, server_key)
        except (KeyFormatError, OSError) as exc:
            _warn(f"this cloud's server key could not be read: {exc}")
    return CloudFacts(
        device_id=device_id,
        device_registered=registered,
        device_key_fingerprint=held,
        server_key_fingerprints=(identity.fingerprint,) if identity else (),
        addresses=identity.addresses if identity else (),
        udp_server_key_fingerprints=(udp[0],) if udp else (),
        udp_addresses=udp[1] if udp else (),
    )


_MARK = {"info": "ok  ", "warning": "warn", "problem": "FAIL"}


def _print_inspection(result: KeyInspection, source: str) -> None:
    _echo(f"Inspecting {source} ({result.layout.value} layout)")
    private = result.private_key
    if private is not None:
        _echo(f"  private key: {private.state}" + (f", {private.encoding}" if private.encoding else ""))
        if private.presented_fingerprint:
            _echo(f"    presents:  {private.presented_fingerprint}")
    if result.cloud != "not_checked":
        _echo(
            f"  cloud:       {result.cloud}"
            + (f" (holds {result.cloud_fingerprint})" if result.cloud_fingerprint else "")
        )
    if result.server_key is not None:
        s = result.server_key
        identity = f", {s.identity.replace('_', ' ')}" if s.identity else ""
        _echo(f"  server key:  {s.key_state}{identity}" + (f" ({s.fingerprint})" if s.fingerprint else ""))
        _echo(f"  address:     {s.parsed.address_state}, connects to {s.address}")
    _echo("")
    for finding in result.findings:
        _echo(f"[{_MARK[finding.severity]}] {finding.message}")
        if finding.advice and finding.severity != "info":
            _echo(f"       -> {finding.advice}")
    problems = sum(1 for f in result.findings if f.severity == "problem")
    _echo("")
    _echo("Verdict: " + ("no problem found." if result.healthy else f"{problems} problem(s) found."))


@app.command("inspect")
def inspect(
    file: Annotated[
        Path | None, typer.Argument(help="A DCT dump, server-key file or key file (the device in DFU mode).")
    ] = None,
    device: DeviceOption = None,
    platform: PlatformOption = None,
    api: ApiOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
    server_key: ServerKeyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Diagnose the USB side: is the private key present, well-formed and firmware-parsable; does the cloud
    hold it; is the server key this cloud's, Particle's, another's, blank or corrupt; where does the device
    connect. Exits 3 when it finds a problem."""
    device_id = _device_id(device, "--device") if device else None
    chosen = _platform(platform)
    if file is None:
        dfu = DfuUtil()
        found = _find(dfu, device_id)
        device_id = device_id or found.device_id
        keys = key_layout(found.platform.layout)
        private_area = dfu.read(found, keys.private_key)
        server_area = dfu.read(found, keys.server_key)
        facts = _facts(device_id, api, token, data_dir, server_key)
        result = inspect_key_areas(private_area, server_area, found.platform.layout, facts)
        source = found.describe()
    else:
        facts = _facts(device_id, api, token, data_dir, server_key)
        result = inspect_file(file.read_bytes(), chosen.layout if chosen else None, facts)
        source = str(file)
    if as_json:
        _echo(json.dumps({"inspected": source, **result.to_dict()}, indent=2))
    else:
        _print_inspection(result, source)
    if not result.healthy:
        raise typer.Exit(INSPECT_PROBLEMS_EXIT)


# -- fleets and escrow -------------------------------------------------------------------------------------------


def _passphrase(passphrase_file: Path | None, *, confirm: bool) -> str:
    if passphrase_file is not None:
        text = passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
    elif os.environ.get("CYAN_ESCROW_PASSPHRASE"):
        text = os.environ["CYAN_ESCROW_PASSPHRASE"]
    else:
        text = typer.prompt("Escrow passphrase", hide_input=True, confirmation_prompt=confirm)
    if not text:
        _fail("the escrow passphrase is empty")
    return text


def _open_escrow(path: Path, passphrase_file: Path | None) -> tuple[KeyEscrow, bool]:
    """The escrow at ``path`` (created, header written, when missing); True when it was created now."""
    if path.exists():
        return KeyEscrow.open(path.read_bytes(), _passphrase(passphrase_file, confirm=False)), False
    escrow = KeyEscrow.create(_passphrase(passphrase_file, confirm=True))
    write_private_key_file(path, escrow.header_line())
    return escrow, True


def _append(path: Path, line: bytes) -> None:
    """Append one line and make it durable before the next device is touched."""
    with path.open("rb") as existing:
        existing.seek(0, os.SEEK_END)
        size = existing.tell()
        if size:
            existing.seek(size - 1)
            cut_short = existing.read(1) != b"\n"
        else:
            cut_short = False
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        # A line cut short by a crash stays on its own line, where reading skips it.
        os.write(fd, (b"\n" if cut_short else b"") + line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _escrow_add(path: Path, passphrase_file: Path | None, keys: list[tuple[str, bytes]]) -> None:
    escrow, _ = _open_escrow(path, passphrase_file)
    for device_id, der in keys:
        if escrow.find(device_id, fingerprint(load_private_key(der))) is None:
            _append(path, escrow.seal(device_id, der, _now()).to_line())


@dataclass
class _Row:
    device_id: str
    name: str | None


def _read_ids(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    seen: set[str] = set()
    with path.open(newline="", encoding="utf-8") as handle:
        for number, raw in enumerate(csv.reader(handle), start=1):
            cells = [cell.strip() for cell in raw]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            device_id = cells[0].lower()
            if not _DEVICE_ID.fullmatch(device_id):
                if not rows and not seen and number == 1:
                    continue  # a header line
                _fail(f"{path} line {number}: {cells[0]!r} is not a device id (24 hexadecimal digits)")
            if device_id in seen:
                _fail(f"{path} line {number}: device {device_id} is listed twice")
            seen.add(device_id)
            rows.append(_Row(device_id, cells[1] if len(cells) > 1 and cells[1] else None))
    if not rows:
        _fail(f"{path} lists no device ids", "one device id a line, optionally followed by ,NAME")
    return rows


@app.command("provision")
def provision(
    ids: Annotated[Path, typer.Option("--ids", help="CSV: a device id a line, optionally ',NAME' (header allowed).")],
    out: Annotated[Path, typer.Option("--out", help="Where the per-device key files go.")] = Path("keys"),
    escrow: Annotated[
        Path | None, typer.Option("--escrow", help="Keep the private keys encrypted in this escrow file too.")
    ] = None,
    passphrase_file: PassphraseFileOption = None,
    product_id: Annotated[int | None, typer.Option("--product-id", help="Product id to register with.")] = None,
    api: ApiOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Make keys offline for many devices, register them, and write OUT/<id>.der (owner-only), <id>.pub.pem
    and manifest.csv. Safe to run again: existing keys are kept and only what is missing is done."""
    rows = _read_ids(ids)
    registry = _registry(api, token, data_dir)
    try:
        _echo(f"Provisioning {len(rows)} devices with {registry.check()}")
        vault: KeyEscrow | None = None
        if escrow is not None:
            vault, created = _open_escrow(escrow, passphrase_file)
            _echo(f"{'Created' if created else 'Using'} escrow {escrow} ({len(vault.entries)} keys in it)")
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        results: list[tuple[_Row, str, str]] = []
        failures = 0
        hint = "fix the cause and run the same command again"
        counts = {"new": 0, "kept": 0, "registered": 0, "already": 0}
        for row in rows:
            key_path = out / f"{row.device_id}.der"
            if key_path.exists():
                der = key_path.read_bytes()
                key = load_private_key(der)
                check_device_public_key(key)
                made = "kept"
            else:
                key = generate_device_key()
                der = key.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
                write_private_key_file(key_path, der)
                made = "new"
            counts[made] += 1
            key_fingerprint = fingerprint(key)
            public_path = out / f"{row.device_id}.pub.pem"
            if not public_path.exists():
                public_path.write_bytes(encode_public_key_pem(key))
            if vault is not None and escrow is not None and vault.find(row.device_id, key_fingerprint) is None:
                _append(escrow, vault.seal(row.device_id, der, _now()).to_line())
            try:
                held = registry.device_key(row.device_id)
                if held.fingerprint == key_fingerprint:
                    status = "already registered"
                    counts["already"] += 1
                else:
                    registry.register(row.device_id, key.public_key(), product_id=product_id, name=row.name)
                    status = "registered"
                    counts["registered"] += 1
            except CloudUnreachableError:
                raise
            except RegistryError as exc:
                status = f"FAILED: {exc}"
                if not failures:
                    hint = f"{exc.hint}; then run the same command again"
                failures += 1
            results.append((row, key_fingerprint, status))
            label = f"{row.device_id} ({row.name})" if row.name else row.device_id
            _echo(f"  {label}: {made} key {_short(key_fingerprint)}, {status}")
    except RegistryError as exc:
        _fail(str(exc), exc.hint)
    finally:
        registry.close()
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["device_id", "name", "fingerprint", "key_file", "status"])
        for row, key_fingerprint, status in results:
            writer.writerow([row.device_id, row.name or "", key_fingerprint, f"{row.device_id}.der", status])
    _echo(
        f"{len(rows)} devices: {counts['new']} new keys, {counts['kept']} kept; {counts['registered']} registered, "
        f"{counts['already']} already registered, {failures} failed. Manifest: {manifest}"
    )
    if failures:
        _fail(f"{failures} device(s) were not registered", hint)


@app.command("restore")
def restore(
    device_id: Annotated[str, typer.Argument(help="The device whose escrowed key to restore.")],
    escrow: Annotated[Path, typer.Option("--escrow", help="The escrow file.")],
    passphrase_file: PassphraseFileOption = None,
    key_fingerprint: Annotated[
        str | None, typer.Option("--fingerprint", help="Which escrowed key (the newest).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the key to this file instead of a device.")
    ] = None,
    leave: Annotated[bool, typer.Option("--leave", help="Leave DFU mode afterwards (the device restarts).")] = False,
    api: ApiOption = None,
    token: TokenOption = None,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Put a device's escrowed key back over DFU, so it comes back with the same identity."""
    device_id = _device_id(device_id)
    if not escrow.exists():
        _fail(f"no escrow file {escrow}")
    vault = KeyEscrow.open(escrow.read_bytes(), _passphrase(passphrase_file, confirm=False))
    entry = vault.find(device_id, key_fingerprint)
    if entry is None:
        which = f" with fingerprint {key_fingerprint}" if key_fingerprint else ""
        _fail(f"{escrow} holds no key for {device_id}{which}")
    der = vault.unseal(entry)
    if output is not None:
        _write_private(output, der)
        _echo(f"Wrote the escrowed key of {device_id} ({entry.fingerprint}, {entry.created_at}) to {output}")
        return
    dfu = DfuUtil()
    found = _find(dfu, device_id)
    current = dfu.read(found, key_layout(found.platform.layout).private_key)
    if current[: len(der)] == der:
        _echo(f"The device already holds its escrowed key {entry.fingerprint}; nothing written.")
    else:
        backup = _back_up(dfu, found, escrow.resolve().parent, device_id)
        if backup is not None:
            _echo(f"Saved the device's current key to {backup}")
        status = _write_verified(dfu, found, "private_key", der, leave=leave)
        _echo(f"Restored key {entry.fingerprint} ({entry.created_at}) to {found.describe()}: {status}")
    facts = _facts(device_id, api, token, data_dir, None)
    if facts.device_registered is False:
        _warn(f"the cloud holds no key for {device_id}: register it with cyan keys send {device_id} KEY_FILE")
    elif facts.device_key_fingerprint not in (None, entry.fingerprint):
        _warn(
            f"the cloud holds {facts.device_key_fingerprint}, not the restored key: register the restored key "
            f"(cyan keys restore {device_id} --escrow {escrow} -o key.der && cyan keys send {device_id} key.der)"
        )
