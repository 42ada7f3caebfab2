"""`cyan serve`: the device server on the embedded default (SQLite, in-process bus)."""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cyan import __version__
from cyan.config import Settings
from cyan.data import ensure_server_keys
from cyan.limits import ensure_file_limit

from ._options import DatabaseOption, DataDirOption

if TYPE_CHECKING:
    from cyan.service import Service


def serve(
    data_dir: DataDirOption = None,
    device_host: Annotated[
        str | None, typer.Option("--device-host", help="Listen address for devices (env CYAN_DEVICE_HOST; 0.0.0.0).")
    ] = None,
    device_port: Annotated[
        int | None, typer.Option("--device-port", help="Port for devices (env CYAN_DEVICE_PORT; 5683).")
    ] = None,
    device_udp_port: Annotated[
        str | None,
        typer.Option(
            "--device-udp-port",
            help="UDP port for Electron and Gen 3 devices (DTLS); -1 or off: none (env CYAN_DEVICE_UDP_PORT; 5684).",
        ),
    ] = None,
    api_host: Annotated[
        str | None, typer.Option("--api-host", help="Listen address of the HTTP API (env CYAN_API_HOST; 0.0.0.0).")
    ] = None,
    api_port: Annotated[
        int | None, typer.Option("--api-port", help="Port of the HTTP API (env CYAN_API_PORT; 8080).")
    ] = None,
    public_address: Annotated[
        str | None,
        typer.Option(
            "--public-address",
            help="The IPv4 address or domain devices use to reach this server (env CYAN_PUBLIC_ADDRESS).",
        ),
    ] = None,
    device_processes: Annotated[
        int | None,
        typer.Option(
            "--device-processes",
            min=0,
            help="Serve the devices from this many processes sharing the device port, each holding as many as "
            "its open-file limit allows; 0: from this process (env CYAN_DEVICE_PROCESSES; 0).",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            help="Threads for the handshakes' RSA work, beside the event loop; 0: on the event loop "
            "(env CYAN_WORKERS; 1, or 0 on one core).",
        ),
    ] = None,
    database: DatabaseOption = None,
    bus: Annotated[
        str | None,
        typer.Option(
            "--bus",
            help="The Redis the nodes of a cloud of several share (redis://[:password@]host:6379/0); absent: this "
            "process is the whole cloud (env CYAN_BUS_URL).",
        ),
    ] = None,
    node_id: Annotated[
        str | None,
        typer.Option(
            "--node-id",
            help="This node's name among the cloud's nodes, unique per node (env CYAN_NODE_ID; host name:API port).",
        ),
    ] = None,
    firmware_dir: Annotated[
        str | None,
        typer.Option(
            "--firmware-dir",
            help="Where uploaded firmware is kept; the nodes of a cloud of several share one (env CYAN_FIRMWARE_DIR; "
            "firmware in the data directory).",
        ),
    ] = None,
    new_server_key: Annotated[
        bool,
        typer.Option(
            "--new-server-key",
            help="Make a new server key, keeping the old file aside, and record the change. Every device then "
            "needs the new key file over DFU: only for a lost or compromised key.",
        ),
    ] = False,
) -> None:
    """Run the device servers (TCP 5683, UDP 5684) and the Cloud API (HTTP 8080), recording every attempt."""
    settings = Settings.from_env(
        data_dir=data_dir,
        device_host=device_host,
        device_port=device_port,
        device_udp_port=_udp_port(device_udp_port),
        api_host=api_host,
        api_port=api_port,
        public_address=public_address,
        workers=workers,
        device_processes=device_processes,
        database_url=database,
        bus_url=bus,
        node_id=node_id,
        firmware_directory=firmware_dir,
    )
    if data_dir is None and not os.environ.get("CYAN_DATA_DIR"):
        _note_earlier_data_directory(settings.data_dir)
    keys = ensure_server_keys(settings, new_key=new_server_key)
    # One open file per connected device: take all the system allows (often 1,024 soft, far more hard).
    file_limit = ensure_file_limit()
    # Imported here: the API and device servers are half of every other command's start-up time.
    from cyan.service import Service  # noqa: PLC0415 - the API and device servers: see above

    service = Service(settings, keys)
    asyncio.run(service.run(functools.partial(_print_banner, file_limit=file_limit)))


def _udp_port(value: str | None) -> int | None:
    if value is None:
        return None
    if value.strip().lower() == "off":
        return -1
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"a port number, -1 or off; not {value!r}", param_hint="--device-udp-port") from None


#: Where a cloud's data was kept by default before the per-user directory: relative to where it was started.
_EARLIER_DEFAULT = Path("cyan-data")


def _note_earlier_data_directory(data: Path) -> None:
    """A cloud started here before the default moved must not be replaced unnoticed by an empty one."""
    earlier = _EARLIER_DEFAULT.resolve()
    if (earlier / "cyan.db").exists() and earlier != data.resolve():
        typer.echo(
            f"Note: {earlier} holds a cloud (devices, keys, users) that this server does not use: it serves "
            f"{data.resolve()}. To serve that cloud, start it with --data-dir {earlier} (or CYAN_DATA_DIR), or "
            f"move the folder to {data.resolve()}.",
            err=True,
        )


#: Open files a server needs besides its device connections: database, logs, listening sockets, API clients.
_RESERVED_FILES = 200


def _print_banner(service: Service, *, file_limit: int) -> None:
    s = service.settings
    keys = service.keys
    data = s.data_dir.resolve()
    key_file = s.server_key_file_path(service.device_server.port).resolve()
    public = s.server_public_key_path.resolve()
    port = service.device_server.port
    # The address to give clients: the API's own when it listens on one interface only.
    api_address = s.public_address if s.api_host in ("0.0.0.0", "::", "") else s.api_host
    where = f"Data: {data}"
    if s.database_url:
        where += f"; the {getattr(service.store, 'description', 'database')}"
    if s.bus_url:
        where += f"; node {s.node_id} of the cloud on {getattr(service.bus, 'description', 'the bus')}"
    lines = [
        f"Cyan {__version__} is serving. {where}",
        f"  Server key: {keys.fingerprint}"
        + (" (replaced now: give every device the new key file)" if keys.replacing else "")
        + (" (created now)" if keys.created and not keys.replacing else ""),
        "",
        f"Devices connect to {s.public_address}:{port} (listening on {s.device_host}:{port}).",
        "  Point a Photon or P1 at this cloud with the device in DFU mode (blinking yellow):",
        f"    particle keys server {public} --host {s.public_address} --port {port}",
        "  or write the ready 512-byte key file yourself (P1: -d 2b04:d008):",
        f"    dfu-util -d 2b04:d006 -a 1 -s 2082 -D {key_file}",
        "  Register each device's public key before it connects:",
        f"    cyan devices add DEVICE_ID --key DEVICE_KEY_FILE [--owner EMAIL] --data-dir {data}",
        "",
    ]
    udp = service.udp_server
    if udp is not None and service.udp_server_key_file is not None:
        lines += [
            f"UDP devices (Electron, Argon, Boron, ...; DTLS 1.2) connect to {s.public_address}:{udp.port} "
            f"(listening on {s.device_host}:{udp.port}).",
            "  Their 320-byte server key file, for DCT offset 3298:",
            f"    {service.udp_server_key_file.resolve()}",
            f"  or make one: cyan keys server --protocol udp --data-dir {data}",
            "  Register each device's P-256 public key before it connects (as for TCP devices).",
            "",
        ]
    lines += [
        "Every connection attempt is recorded: cyan devices attempts [DEVICE_ID]",
        _capacity_line(s, file_limit),
        "",
        f"Cloud API (Particle Cloud API v1) on http://{s.api_host}:{service.api_port}; point the Particle CLI at it:",
        f"    particle config set apiUrl http://{api_address}:{service.api_port}",
        f"  then log in with a user made by: cyan users add EMAIL [--admin] --data-dir {data}",
        f"  API description: http://{api_address}:{service.api_port}/docs",
    ]
    if s.public_address.startswith("127."):
        lines.append(
            "Note: devices on other hosts cannot reach 127.x; set --public-address to this host's LAN address."
        )
    typer.echo("\n".join(lines), err=False)


def _capacity_line(s: Settings, file_limit: int) -> str:
    processes = s.device_processes or 1
    room = max(file_limit - _RESERVED_FILES, 0) * processes
    line = f"Room for about {room:,} connected devices (open-file limit {file_limit:,}"
    line += f" per process, {processes} device processes" if s.device_processes else ""
    line += "; raise the hard limit, e.g. ulimit -Hn, for a larger fleet)." if file_limit < 20_000 else ")."
    if s.device_processes:
        return line + " Each device process does its own handshakes' RSA work."
    if s.workers:
        return line + f" Handshake RSA work on {s.workers} worker thread{'s' if s.workers > 1 else ''} (--workers)."
    return line + " Handshake RSA work on the event loop (--workers 0)."
