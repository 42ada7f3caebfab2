"""`cyan policy`: what happens when a device presents a new key, and the decisions on pending keys.

These commands work on the data directory. Through a running server's API (`/v1/devices/:id/keys/...`) an
approval also gives a connected, quarantined device its access at once; from here it takes effect at the
device's next connection.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cyan.bus import InProcessBus
from cyan.cloud.models import FLEET, KeyPolicyMode
from cyan.cloud.service import Cloud
from cyan.config import Settings
from cyan.store import SqliteStore

from ._options import DataDirOption

app = typer.Typer(
    help="Key policy: new device keys, re-key windows, approvals and the audit trail.", no_args_is_help=True
)
T = TypeVar("T")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

Actor = Annotated[str, typer.Option("--actor", help="Who is acting, for the audit trail.")]


def _with_cloud(data_dir: object, work: Callable[[Cloud], Awaitable[T]]) -> T:
    settings = Settings.from_env(data_dir=data_dir)
    if not settings.database_path.exists():
        raise FileNotFoundError(
            f"no Cyan database at {settings.database_path}; run `cyan serve` once, or pass --data-dir"
        )

    async def run() -> T:
        store = SqliteStore(settings.database_path)
        await store.open()
        cloud = Cloud(store, InProcessBus())
        await cloud.start(owns_devices=False)
        try:
            return await work(cloud)
        finally:
            await cloud.stop()
            await store.close()

    return asyncio.run(run())


def _seconds(text: str) -> float:
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 30m, 2h or 1d", param_hint="--for")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else ""


@app.command("show")
def show(data_dir: DataDirOption = None) -> None:
    """The fleet's policy, per-device policies, armed re-key windows and pending keys."""

    async def work(cloud: Cloud) -> None:
        store = cloud.store
        policies = {p.scope: p for p in await store.list_policies()}
        fleet = policies.pop(FLEET, None)
        console = Console(width=160)
        mode = fleet.mode.value if fleet else "strict (default)"
        tofu = "on" if fleet and fleet.trust_on_first_use else "off"
        console.print(f"Fleet: {mode}; trust on first use: {tofu}")
        if policies:
            table = Table("Device", "Mode", "Set by", "At")
            for p in policies.values():
                table.add_row(p.scope, p.mode.value, p.updated_by, _when(p.updated_at))
            console.print(table)
        windows = await store.list_rekeys()
        if windows:
            table = Table("Re-key window for", "Until", "Armed by")
            for w in windows:
                table.add_row(w.device_id, _when(w.until), w.armed_by)
            console.print(table)
        await _print_pending(cloud, console)

    _with_cloud(data_dir, work)


async def _print_pending(cloud: Cloud, console: Console) -> None:
    pending = await cloud.store.list_pending_keys()
    if not pending:
        console.print("No pending keys.")
        return
    table = Table("Device", "New key", "Registered key", "First seen", "Last seen", "Attempts", "From")
    for p in pending:
        table.add_row(
            p.device_id,
            p.fingerprint[:23],
            (p.stored_fingerprint or "")[:23],
            _when(p.first_seen),
            _when(p.last_seen),
            str(p.attempts),
            p.peer_address or "",
        )
    console.print(table)


@app.command("set")
def set_policy(
    mode: Annotated[KeyPolicyMode, typer.Argument(help="strict or quarantine.")],
    device: Annotated[str | None, typer.Option("--device", help="Only this device [the whole fleet].")] = None,
    tofu: Annotated[
        bool,
        typer.Option("--tofu/--no-tofu", help="Fleet only: register unknown devices with the key they present."),
    ] = False,
    actor: Actor = "operator",
    data_dir: DataDirOption = None,
) -> None:
    """Set the fleet's policy, or one device's."""
    if device is not None and tofu:
        raise typer.BadParameter("trust on first use is a fleet setting", param_hint="--tofu")
    scope = device.lower() if device else FLEET
    policy = _with_cloud(data_dir, lambda cloud: cloud.set_policy(scope, mode, tofu, actor))
    where = "fleet" if scope == FLEET else f"device {scope}"
    extra = f"; trust on first use {'on' if policy.trust_on_first_use else 'off'}" if scope == FLEET else ""
    typer.echo(f"Key policy of the {where}: {policy.mode.value}{extra}")


@app.command("rekey")
def rekey(
    devices: Annotated[list[str], typer.Argument(help="Device ids.")],
    duration: Annotated[str, typer.Option("--for", help="How long the window stays open (30m, 2h, 1d).")] = "1h",
    actor: Actor = "operator",
    data_dir: DataDirOption = None,
) -> None:
    """Accept the next new key of these devices, until the window closes (one key each)."""
    seconds = _seconds(duration)

    async def work(cloud: Cloud) -> list[str]:
        return [
            f"{w.device_id} until {_when(w.until)}"
            for w in [await cloud.arm_rekey(device, seconds, actor) for device in devices]
        ]

    for line in _with_cloud(data_dir, work):
        typer.echo(f"Re-key window armed: {line}")


@app.command("pending")
def pending(data_dir: DataDirOption = None) -> None:
    """Keys devices presented that are not their registered ones."""

    async def work(cloud: Cloud) -> None:
        await _print_pending(cloud, Console(width=160))

    _with_cloud(data_dir, work)


@app.command("approve")
def approve(
    device: Annotated[str, typer.Argument(help="The device id.")],
    actor: Actor = "operator",
    data_dir: DataDirOption = None,
) -> None:
    """Make a device's pending key its registered key."""
    record = _with_cloud(data_dir, lambda cloud: cloud.approve_pending_key(device, actor))
    typer.echo(f"Device {record.id} now has key {record.key_fingerprint}")


@app.command("reject")
def reject(
    device: Annotated[str, typer.Argument(help="The device id.")],
    actor: Actor = "operator",
    data_dir: DataDirOption = None,
) -> None:
    """Forget a device's pending key (its registered key stays)."""
    _with_cloud(data_dir, lambda cloud: cloud.reject_pending_key(device, actor))
    typer.echo(f"Pending key of {device.lower()} rejected")


@app.command("audit")
def audit(
    device: Annotated[str | None, typer.Argument(help="Only this device.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 50,
    data_dir: DataDirOption = None,
) -> None:
    """Every key change and decision, newest first: who, when, old and new fingerprints, why."""
    entries = _with_cloud(data_dir, lambda cloud: cloud.store.list_audit(device, limit=limit))
    table = Table("When", "Device", "Action", "By", "Old key", "New key", "Detail")
    for e in entries:
        table.add_row(
            _when(e.at),
            e.device_id,
            e.action,
            e.actor,
            (e.old_fingerprint or "")[:23],
            (e.new_fingerprint or "")[:23],
            e.detail or "",
        )
    Console(width=200).print(table)
