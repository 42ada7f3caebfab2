from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from cyan import __version__

from . import _errors, accounts, db, devices, policy, serve, sim
from . import diagnose as diagnose_cli
from . import keys as keys_cli

app = typer.Typer(
    name="cyan",
    help="Cyan: a self-hosted device cloud for Particle Gen 2 devices (Spark Core, Photon, P1).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve.serve)
app.command("sim")(sim.sim)
app.command("diagnose")(diagnose_cli.diagnose)
app.add_typer(devices.app, name="devices")
app.add_typer(keys_cli.app, name="keys")
app.add_typer(accounts.users, name="users")
app.add_typer(accounts.tokens, name="tokens")
app.add_typer(policy.app, name="policy")
app.add_typer(db.app, name="db")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cyan {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    _errors.DEBUG = debug


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        app(args=argv, prog_name="cyan")
    except SystemExit as exc:  # usage errors and --help end here, already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        return _errors.report(exc)
    return 0
