"""`cyan devices add|list|attempts|doctor|unidentified`: the device registry and the connection-attempt records."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cyan.cloud.models import ConnectionAttempt, DeviceRecord
from cyan.cloud.ports import Store
from cyan.config import Settings
from cyan.diagnose.gather import DEFAULT_PERIOD, doctor_from_store, unidentified_from_store
from cyan.diagnose.render import render_doctor, render_unidentified
from cyan.keys import check_device_public_key, fingerprint, load_public_key, public_key_der
from cyan.store import SqliteStore

from . import updates
from ._options import DataDirOption
from .diagnose import api_get, parse_since

app = typer.Typer(help="Register devices and read what the server saw of them.", no_args_is_help=True)
# Firmware updates (protocol.md §7): flash, follow, group.
app.command("flash")(updates.flash)
app.command("updates")(updates.list_updates)
app.command("group")(updates.group)
T = TypeVar("T")
_DEVICE_ID = re.compile(r"^[0-9a-fA-F]{24}$")


def _with_store(data_dir: Path | None, work: Callable[[Store], Awaitable[T]]) -> T:
    settings = Settings.from_env(data_dir=data_dir)
    if not settings.database_path.exists():
        raise FileNotFoundError(
            f"no Cyan database at {settings.database_path}; run `cyan serve` once, or pass --data-dir"
        )

    async def run() -> T:
        store = SqliteStore(settings.database_path)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


@app.command("add")
def add(
    device_id: Annotated[str, typer.Argument(help="The 24-hex-digit device id.")],
    key: Annotated[Path, typer.Option("--key", help="The device key: DER or PEM, private or public.")],
    name: Annotated[str | None, typer.Option("--name", help="A name to use instead of the id.")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Register a device with its public key, as `particle keys send` would."""
    if not _DEVICE_ID.match(device_id):
        raise typer.BadParameter(f"{device_id!r} is not a device id (24 hexadecimal digits)", param_hint="DEVICE_ID")
    public = load_public_key(key.read_bytes())
    check_device_public_key(public)
    der = public_key_der(public)
    record = DeviceRecord(
        id=device_id.lower(),
        name=name,
        public_key_der=der,
        key_fingerprint=fingerprint(der),
        created_at=datetime.now(UTC),
    )
    _with_store(data_dir, lambda store: store.add_device(record))
    typer.echo(f"Registered {record.id}{f' ({name})' if name else ''} with key {record.key_fingerprint}")


@app.command("list")
def list_devices(data_dir: DataDirOption = None) -> None:
    """List registered devices."""
    devices = _with_store(data_dir, lambda store: store.list_devices())
    table = Table("Name", "Platform", "Online", "Last heard", "Last address", "Key")
    table.add_column("ID", no_wrap=True, min_width=24)
    for d in devices:
        table.add_row(
            d.name or "",
            "" if d.platform_id is None else str(d.platform_id),
            "yes" if d.online else "no",
            _when(d.last_heard),
            d.last_address or "",
            (d.key_fingerprint or "none")[:23],
            d.id,
        )
    Console(width=160).print(table)


@app.command("attempts")
def attempts(
    device_id: Annotated[str | None, typer.Argument(help="Only this device's attempts.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many, newest first.")] = 50,
    data_dir: DataDirOption = None,
) -> None:
    """Connection attempts, newest first: where each failed and why."""
    found: list[ConnectionAttempt] = _with_store(
        data_dir, lambda store: store.list_attempts(device_id.lower() if device_id else None, limit=limit)
    )
    table = Table("When", "From", "Device", "Outcome", "Step", "Reason", "Detail")
    for a in found:
        table.add_row(
            _when(a.started_at),
            a.peer_address,
            a.device_id or "(unidentified)",
            a.outcome.value,
            a.step,
            a.reason or "",
            a.detail or "",
        )
    Console(width=200).print(table)


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else ""


_SINCE_HELP = "Records since: a period (24h, 7d) or an ISO 8601 time (default: 7d)."
_SERVER_HELP = "A Cyan server's API URL: ask it over HTTP instead of reading the data directory."


@app.command("doctor")
def doctor(
    device: Annotated[str, typer.Argument(help="The device id or name.")],
    since: Annotated[str | None, typer.Option("--since", help=_SINCE_HELP)] = None,
    server: Annotated[str | None, typer.Option("--server", help=_SERVER_HELP)] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="CYAN_TOKEN", help="Access token for --server.", show_default=False)
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output (docs/diagnostics.md).")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """What the server saw of a device, in plain words, and what to do (docs/diagnostics.md)."""
    now = datetime.now(UTC)
    start = parse_since(since, now) if since else now - DEFAULT_PERIOD
    if server is not None:
        report = api_get(server, f"/v1/devices/{device}/doctor", token, {"since": start.isoformat()})
    else:
        found = _with_store(data_dir, lambda store: doctor_from_store(store, device, now=now, since=start))
        if found is None:
            raise typer.BadParameter(f"no device {device!r} (not an id, nor a registered name)", param_hint="DEVICE")
        report = found.to_json()
    if json_output:
        typer.echo(json.dumps(report, indent=2))
    else:
        render_doctor(report, Console(width=120))


@app.command("unidentified")
def unidentified(
    since: Annotated[str | None, typer.Option("--since", help=_SINCE_HELP)] = None,
    server: Annotated[str | None, typer.Option("--server", help=_SERVER_HELP + " Needs an operator's token.")] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="CYAN_TOKEN", help="Access token for --server.", show_default=False)
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output (docs/diagnostics.md).")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Failed attempts that carry no device id (a device holding another server key cannot name itself),
    grouped by address and time, with the devices last seen at each address."""
    now = datetime.now(UTC)
    start = parse_since(since, now) if since else now - DEFAULT_PERIOD
    if server is not None:
        groups = api_get(server, "/v1/diagnostics/unidentified", token, {"since": start.isoformat()}).get("groups", [])
    else:
        found = _with_store(data_dir, lambda store: unidentified_from_store(store, now=now, since=start))
        groups = [g.to_json() for g in found]
    if json_output:
        typer.echo(json.dumps({"groups": groups}, indent=2))
    else:
        render_unidentified(groups, Console(width=120))
