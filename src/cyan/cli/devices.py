"""`cyan devices add|list|attempts|doctor|unidentified|rename|notes|remove|claim-code|group`: the device registry and
what the server saw of each device, on the server's data (`--data-dir`). A device is named by its id or its
name everywhere; one that does not exist is an error.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cyan.app import NewDevice
from cyan.cloud.models import ConnectionAttempt, DeviceRecord
from cyan.diagnose.gather import DEFAULT_PERIOD
from cyan.diagnose.render import render_doctor, render_unidentified
from cyan.keys import device_public_key_der

from . import updates
from ._local import ActorOption, operator, run_local
from ._options import DatabaseOption, DataDirOption
from .diagnose import api_get, parse_since

app = typer.Typer(help="Register devices and read what the server saw of them.", no_args_is_help=True)
# Firmware updates (protocol.md §7): flash and follow them through the server's API.
app.command("flash")(updates.flash)
app.command("updates")(updates.list_updates)


@app.command("add")
def add(
    device_id: Annotated[str, typer.Argument(help="The 24-hex-digit device id.")],
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            help="The device key, DER or PEM, private or public: RSA-1024 (Gen 2) or EC P-256 (Electron, Gen 3).",
        ),
    ],
    name: Annotated[str | None, typer.Option("--name", help="A name to use instead of the id.")] = None,
    owner: Annotated[str | None, typer.Option("--owner", help="The user it belongs to (nobody yet).")] = None,
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Register a device with its public key, as `particle keys send` would (optionally straight to its owner)."""
    der = device_public_key_der(key.read_bytes())
    new = NewDevice(device_id, der, name=name, owner=owner)
    (record,) = run_local(data_dir, lambda app: app.devices.register(operator(actor), [new]))
    named = f" ({record.name})" if record.name else ""
    owned = f" for {record.owner}" if record.owner else ""
    typer.echo(f"Registered {record.id}{named}{owned} with key {record.key_fingerprint}")


@app.command("list")
def list_devices(
    ids: Annotated[
        bool, typer.Option("--ids", help="Only the device ids, one per line (for other commands: $(...)).")
    ] = False,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """List registered devices."""
    views = run_local(data_dir, lambda app: app.devices.mine(operator(), everyone=True))
    if ids:
        for view in views:
            typer.echo(view.record.id)
        return
    table = Table("Name", "Owner", "Platform", "Online", "Last heard", "Last address", "Key")
    table.add_column("ID", no_wrap=True, min_width=24)
    for view in views:
        d: DeviceRecord = view.record
        table.add_row(
            d.name or "",
            d.owner or "",
            "" if d.platform_id is None else str(d.platform_id),
            "yes" if d.online else "no",
            _when(d.last_heard),
            d.last_address or "",
            (d.key_fingerprint or "none")[:23],
            d.id,
        )
    Console(width=180).print(table)


@app.command("rename")
def rename(
    device: Annotated[str, typer.Argument(help="The device id or name.")],
    name: Annotated[str, typer.Argument(help="Its new name.")],
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Rename a device."""
    record = run_local(data_dir, lambda app: app.devices.rename(operator(actor), device, name))
    typer.echo(f"Device {record.id} is now named {record.name}")


@app.command("notes")
def notes(
    device: Annotated[str, typer.Argument(help="The device id or name.")],
    text: Annotated[str, typer.Argument(help='Its notes (up to 1,000 characters; "" clears them).')],
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
) -> None:
    """Set a device's notes (shown in the console and the API's device details)."""
    record = run_local(data_dir, lambda app: app.devices.set_notes(operator(actor), device, text))
    typer.echo(f"Device {record.id}: " + ("notes saved" if record.notes else "notes cleared"))


@app.command("remove")
def remove(
    device: Annotated[str, typer.Argument(help="The device id or name.")],
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Remove a device from the registry, with its key: it cannot connect until it is registered again."""
    record = run_local(data_dir, lambda app: app.devices.remove(operator(actor), device))
    typer.echo(f"Removed device {record.id}" + (f" (it belonged to {record.owner})" if record.owner else ""))


@app.command("claim")
def claim(
    device: Annotated[str, typer.Argument(help="The device id or name.")],
    owner: Annotated[str, typer.Option("--owner", help="The user it becomes the device of.")],
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Give an ownerless device to a user (one that belongs to someone is released first: cyan devices release)."""
    record = run_local(data_dir, lambda app: app.devices.claim(operator(actor), device, owner=owner))
    typer.echo(f"Device {record.id} now belongs to {record.owner}")


@app.command("release")
def release(
    device: Annotated[str, typer.Argument(help="The device id or name.")],
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """The device is no longer its owner's (it stays registered, with its key), as `particle device remove`."""
    record = run_local(data_dir, lambda app: app.devices.release(operator(actor), device))
    typer.echo(f"Device {record.id} has no owner now")


@app.command("claim-code")
def claim_code(
    device: Annotated[str, typer.Argument(help="The ownerless device id or name.")],
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """A one-time claim code for an ownerless device: whoever holds it may claim or provision that device
    (POST /v1/devices or /v1/provisioning/:id with claim_code). Good for 24 hours; printed once."""
    issued = run_local(data_dir, lambda app: app.devices.issue_claim_code(operator(actor), device))
    typer.echo(issued.code)


@app.command("group")
def group(
    name: Annotated[str | None, typer.Argument(help="The group; without it, every group is listed.")] = None,
    devices: Annotated[list[str] | None, typer.Argument(help="Device ids or names to add (or remove).")] = None,
    remove_them: Annotated[bool, typer.Option("--remove", help="Remove the devices instead.")] = False,
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Device groups for `flash --group`: list them, list one, add devices to one or remove them."""
    if name is None:
        found = run_local(data_dir, lambda app: app.devices.groups(operator(actor)))
        for group_name, size in found.items():
            typer.echo(f"{group_name}: {size} device(s)")
        return
    if not devices:
        for device_id in run_local(data_dir, lambda app: app.devices.group_members(operator(actor), name)):
            typer.echo(device_id)
        return
    changed = run_local(data_dir, lambda app: app.devices.group(operator(actor), name, devices, remove=remove_them))
    typer.echo(f"{'removed' if remove_them else 'added'} {changed} device(s) {'from' if remove_them else 'to'} {name}")


@app.command("attempts")
def attempts(
    device: Annotated[str | None, typer.Argument(help="Only this device's attempts (its id or name).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="How many, newest first.")] = 50,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Connection attempts, newest first: where each failed and why."""
    _, found = run_local(data_dir, lambda app: app.diagnostics.attempts(operator(), device, limit=limit))
    attempts: list[ConnectionAttempt] = found
    table = Table("When", "From", "Device", "Proven", "Outcome", "Step", "Reason", "Detail")
    for a in attempts:
        table.add_row(
            _when(a.started_at),
            a.peer_address,
            a.device_id or "(unidentified)",
            {True: "yes", False: "no", None: ""}[a.proven],
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
    database: DatabaseOption = None,
) -> None:
    """What the server saw of a device, in plain words, and what to do (docs/diagnostics.md)."""
    now = datetime.now(UTC)
    start = parse_since(since, now) if since else now - DEFAULT_PERIOD
    if server is not None:
        report = api_get(server, f"/v1/devices/{device}/doctor", token, {"since": start.isoformat()})
    else:
        found = run_local(data_dir, lambda app: app.diagnostics.doctor(operator(), device, since=start))
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
    database: DatabaseOption = None,
) -> None:
    """Failed attempts that carry no device id (a device holding another server key cannot name itself),
    grouped by address and time, with the devices last seen at each address."""
    now = datetime.now(UTC)
    start = parse_since(since, now) if since else now - DEFAULT_PERIOD
    if server is not None:
        groups = api_get(server, "/v1/diagnostics/unidentified", token, {"since": start.isoformat()}).get("groups", [])
    else:
        found = run_local(data_dir, lambda app: app.diagnostics.unidentified(operator(), since=start))
        groups = [g.to_json() for g in found]
    if json_output:
        typer.echo(json.dumps({"groups": groups}, indent=2))
    else:
        render_unidentified(groups, Console(width=120))
