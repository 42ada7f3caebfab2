"""`cyan policy`: what happens when a device presents a new key, and the decisions on pending keys.

These commands work on the data directory, as the operator (an admin). Through a running server's API
(`/v1/devices/:id/keys/...`) an approval also gives a connected, quarantined device its access at once; from
here it takes effect at the device's next connection. Every device is named by its id or its name; one that
does not exist is an error, never a policy or window that applies to nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cyan.app import Application
from cyan.cloud.models import KeyPolicyMode, PendingKey

from ._local import ActorOption, operator, run_local
from ._options import DatabaseOption, DataDirOption

app = typer.Typer(
    help="Key policy: new device keys, re-key windows, approvals and the audit trail.", no_args_is_help=True
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

FingerprintOption = Annotated[
    str,
    typer.Option(
        "--fingerprint",
        help="The pending key's fingerprint, as `cyan policy pending` shows it (at least SHA256: and 16 hex digits).",
    ),
]


def _seconds(text: str) -> float:
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration like 30m, 2h or 1d", param_hint="--for")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else ""


@app.command("show")
def show(data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """The fleet's policy, per-device policies, armed re-key windows and pending keys."""

    async def work(app: Application) -> None:
        actor = operator()
        fleet, own = await app.keys.policies(actor)
        console = Console(width=200)
        tofu = "on" if fleet.trust_on_first_use else "off"
        selfreg = "on" if fleet.self_registration else "off"
        default = " (default)" if fleet.updated_at is None else ""
        console.print(f"Fleet: {fleet.mode.value}{default}; trust on first use: {tofu}; self-registration: {selfreg}")
        if own:
            table = Table("Device", "Mode", "Set by", "At")
            for p in own:
                table.add_row(p.scope, p.mode.value, p.updated_by, _when(p.updated_at))
            console.print(table)
        windows = await app.keys.windows(actor)
        if windows:
            table = Table("Re-key window for", "Until", "Armed by", "Accepted key")
            for w in windows:
                table.add_row(w.device_id, _when(w.until), w.armed_by, w.accepted_fingerprint or "")
            console.print(table)
        _print_pending(await app.keys.pending(actor), console)

    run_local(data_dir, work)


def _print_pending(pending: list[PendingKey], console: Console) -> None:
    if not pending:
        console.print("No pending keys.")
        return
    table = Table(
        "Device",
        "New key (approve with --fingerprint)",
        "Registered key",
        "First seen",
        "Last seen",
        "Attempts",
        "From",
    )
    for p in pending:
        table.add_row(
            p.device_id,
            p.fingerprint,
            (p.stored_fingerprint or "")[:23],
            _when(p.first_seen),
            _when(p.last_seen),
            str(p.attempts),
            p.peer_address or "",
        )
    console.print(table)


@app.command("set")
def set_policy(
    mode: Annotated[KeyPolicyMode | None, typer.Argument(help="strict or quarantine (unchanged).")] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Only this device (id or name) (the whole fleet).")
    ] = None,
    tofu: Annotated[
        bool | None,
        typer.Option("--tofu/--no-tofu", help="Fleet only: register unknown devices with the key they present."),
    ] = None,
    self_registration: Annotated[
        bool | None,
        typer.Option(
            "--self-registration/--no-self-registration",
            help="Fleet only: any account may register device ids the cloud has never seen (docs/keys.md).",
        ),
    ] = None,
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Set the fleet's policy, or one device's."""
    if device is not None:
        if tofu is not None or self_registration is not None:
            raise typer.BadParameter(
                "trust on first use and self-registration are fleet settings", param_hint="--device"
            )
        if mode is None:
            raise typer.BadParameter("give the device's mode: strict or quarantine", param_hint="MODE")
        chosen = mode
        policy = run_local(data_dir, lambda app: app.keys.set_device_policy(operator(actor), device, chosen))
        typer.echo(f"Key policy of device {policy.scope}: {policy.mode.value}")
        return
    policy = run_local(
        data_dir,
        lambda app: app.keys.set_fleet_policy(
            operator(actor), mode=mode, trust_on_first_use=tofu, self_registration=self_registration
        ),
    )
    tofu_state = "on" if policy.trust_on_first_use else "off"
    selfreg_state = "on" if policy.self_registration else "off"
    typer.echo(
        f"Key policy of the fleet: {policy.mode.value}; trust on first use {tofu_state}; "
        f"self-registration {selfreg_state}"
    )


@app.command("rekey")
def rekey(
    devices: Annotated[list[str], typer.Argument(help="Device ids or names.")],
    duration: Annotated[str, typer.Option("--for", help="How long the window stays open (30m, 2h, 1d).")] = "1h",
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """For devices that lost their keys: accept the one new key each presents before the window closes."""
    seconds = _seconds(duration)

    async def work(app: Application) -> list[str]:
        return [
            f"{w.device_id} until {_when(w.until)}"
            for w in [await app.keys.arm_rekey(operator(actor), device, seconds) for device in devices]
        ]

    for line in run_local(data_dir, work):
        typer.echo(f"Re-key window armed: {line}")


@app.command("pending")
def pending(data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """Keys devices presented that are not their registered ones, with the fingerprints to approve them by."""
    found = run_local(data_dir, lambda app: app.keys.pending(operator()))
    _print_pending(found, Console(width=200))


@app.command("approve")
def approve(
    device: Annotated[str, typer.Argument(help="The device id or name.")],
    fingerprint: FingerprintOption,
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Make the device's pending key with this fingerprint its registered key."""
    record = run_local(data_dir, lambda app: app.keys.approve(operator(actor), device, fingerprint))
    typer.echo(f"Device {record.id} now has key {record.key_fingerprint}")


@app.command("reject")
def reject(
    device: Annotated[str, typer.Argument(help="The device id or name.")],
    fingerprint: FingerprintOption,
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Forget the device's pending key with this fingerprint (its registered key stays)."""
    done = run_local(data_dir, lambda app: app.keys.reject(operator(actor), device, fingerprint))
    typer.echo(f"Pending key {done.fingerprint} of {done.device_id} rejected")


@app.command("audit")
def audit(
    device: Annotated[str | None, typer.Argument(help="Only this device (id or name).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 50,
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Every change and decision, newest first: who, when, what, the fingerprints before and after, why."""
    entries = run_local(data_dir, lambda app: app.keys.audit(operator(), device, limit=limit))
    table = Table("When", "Device", "Action", "By", "About", "Old key", "New key", "Detail")
    for e in entries:
        table.add_row(
            _when(e.at),
            e.device_id or "",
            e.action,
            e.actor,
            e.subject or "",
            (e.old_fingerprint or "")[:23],
            (e.new_fingerprint or "")[:23],
            e.detail or "",
        )
    Console(width=220).print(table)
