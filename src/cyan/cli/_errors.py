"""Turning exceptions into a message and a hint, not a traceback (unless --debug)."""

from __future__ import annotations

import traceback

import typer

from cyan.cloud.errors import CloudError
from cyan.cloud.ports import BusUnavailableError, DeviceExistsError, StoreUnavailableError
from cyan.keys import KeyFormatError

DEBUG = False

_HINTS: list[tuple[type[BaseException], str]] = [
    (
        StoreUnavailableError,
        "check that the data directory exists, is writable, and holds a Cyan database (or, with --database or "
        "CYAN_DATABASE_URL, that the database answers)",
    ),
    (
        BusUnavailableError,
        "check that Redis answers at the address of --bus (or CYAN_BUS_URL), from this host, with that password "
        "or user",
    ),
    (KeyFormatError, "keys must be RSA, in DER or PEM; device keys RSA-1024, server keys RSA-2048"),
    (DeviceExistsError, "`cyan devices list` shows what is registered"),
    (FileNotFoundError, "check the path"),
    (PermissionError, "check the file's permissions"),
]


def report(exc: BaseException) -> int:
    if DEBUG:
        traceback.print_exception(exc)
    typer.secho(f"error: {exc}", fg="red", err=True)
    own_hint = getattr(exc, "hint", None)
    if isinstance(own_hint, str) and own_hint:
        typer.echo(f"hint: {own_hint}", err=True)
        return 1
    for kind, hint in _HINTS:
        if isinstance(exc, kind):
            typer.echo(f"hint: {hint}", err=True)
            break
    else:
        if not isinstance(exc, CloudError | OSError | ValueError):
            typer.echo("hint: run again with --debug for the traceback", err=True)
    return 1
