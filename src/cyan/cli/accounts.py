"""`cyan users add|list|remove` and `cyan tokens create|revoke`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from cyan.cloud.auth import DEFAULT_TOKEN_LIFETIME, Accounts
from cyan.config import Settings
from cyan.store import SqliteStore

from ._options import DataDirOption

users = typer.Typer(help="People and programs that own devices.", no_args_is_help=True)
tokens = typer.Typer(help="API access tokens.", no_args_is_help=True)
T = TypeVar("T")


def _with_accounts(data_dir: object, work: Callable[[Accounts], Awaitable[T]]) -> T:
    settings = Settings.from_env(data_dir=data_dir)
    if not settings.database_path.exists():
        raise FileNotFoundError(
            f"no Cyan database at {settings.database_path}; run `cyan serve` once, or pass --data-dir"
        )

    async def run() -> T:
        store = SqliteStore(settings.database_path)
        await store.open()
        try:
            return await work(Accounts(store))
        finally:
            await store.close()

    return asyncio.run(run())


@users.command("add")
def add_user(
    username: Annotated[str, typer.Argument(help="An e-mail address, as the Particle CLI logs in with.")],
    password: Annotated[str | None, typer.Option("--password", help="The password [asked for when not given].")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a user."""
    secret = password if password is not None else typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    user = _with_accounts(data_dir, lambda a: a.create_user(username, secret))
    typer.echo(f"Created user {user.username}")


@users.command("list")
def list_users(data_dir: DataDirOption = None) -> None:
    """List users."""
    found = _with_accounts(data_dir, lambda a: a.store.list_users())
    table = Table("Username", "Created")
    for user in found:
        table.add_row(user.username, user.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    Console(width=120).print(table)


@users.command("remove")
def remove_user(
    username: Annotated[str, typer.Argument(help="The user to remove.")],
    data_dir: DataDirOption = None,
) -> None:
    """Remove a user, revoke all their tokens and release their devices."""
    if not _with_accounts(data_dir, lambda a: a.store.remove_user(username)):
        raise typer.BadParameter(f"no user {username!r}", param_hint="USERNAME")
    typer.echo(f"Removed user {username.lower()}; their tokens are revoked and their devices released")


@tokens.command("create")
def create_token(
    username: Annotated[str, typer.Argument(help="Whose token.")],
    expires_in: Annotated[
        int, typer.Option("--expires-in", min=1, help="Lifetime in seconds [90 days].")
    ] = DEFAULT_TOKEN_LIFETIME,
    never_expires: Annotated[bool, typer.Option("--never-expires", help="A token that never expires.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Create an access token for a user (printed once; only its hash is kept)."""

    async def work(accounts: Accounts) -> str:
        if await accounts.store.get_user(username) is None:
            raise typer.BadParameter(f"no user {username!r}", param_hint="USERNAME")
        token, _record = await accounts.issue_token(username, "cyan-cli", None if never_expires else expires_in)
        return token

    typer.echo(_with_accounts(data_dir, work))


@tokens.command("revoke")
def revoke_token(
    token: Annotated[str, typer.Argument(help="The token to revoke.")],
    data_dir: DataDirOption = None,
) -> None:
    """Revoke an access token."""
    if not _with_accounts(data_dir, lambda a: a.revoke(token)):
        raise typer.BadParameter("no such token", param_hint="TOKEN")
    typer.echo("Token revoked")
