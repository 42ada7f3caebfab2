"""`cyan users add|list|remove|role` and `cyan tokens create|list|revoke`, on the server's data."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cyan.cloud.auth import DEFAULT_TOKEN_LIFETIME
from cyan.cloud.models import Role

from ._local import ActorOption, operator, run_local
from ._options import DatabaseOption, DataDirOption

users = typer.Typer(help="People and programs that own devices.", no_args_is_help=True)
tokens = typer.Typer(help="API access tokens.", no_args_is_help=True)


@users.command("add")
def add_user(
    username: Annotated[str, typer.Argument(help="An e-mail address, as the Particle CLI logs in with.")],
    password: Annotated[str | None, typer.Option("--password", help="The password (asked for when not given).")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="An admin: operates the whole fleet (docs/keys.md).")] = False,
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Create a user."""
    secret = password if password is not None else typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    role = Role.ADMIN if admin else Role.USER
    user = run_local(data_dir, lambda app: app.accounts.create_user(operator(actor), username, secret, role=role))
    typer.echo(f"Created user {user.username} ({user.role.value})")


@users.command("list")
def list_users(data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """List users and their roles."""
    found = run_local(data_dir, lambda app: app.accounts.users(operator()))
    table = Table("Username", "Role", "Created")
    for user in found:
        table.add_row(user.username, user.role.value, user.created_at.strftime("%Y-%m-%d %H:%M:%S"))
    Console(width=120).print(table)


@users.command("remove")
def remove_user(
    username: Annotated[str, typer.Argument(help="The user to remove.")],
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Remove a user, revoke all their tokens and release their devices."""
    run_local(data_dir, lambda app: app.accounts.remove_user(operator(actor), username))
    typer.echo(f"Removed user {username.lower()}; their tokens are revoked and their devices released")


@users.command("role")
def set_role(
    username: Annotated[str, typer.Argument(help="The user.")],
    role: Annotated[Role, typer.Argument(help="admin or user.")],
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Make a user an admin, or a plain user again."""
    user = run_local(data_dir, lambda app: app.accounts.set_role(operator(actor), username, role))
    typer.echo(f"{user.username} is now {user.role.value}")


@tokens.command("create")
def create_token(
    username: Annotated[str, typer.Argument(help="Whose token.")],
    expires_in: Annotated[
        int, typer.Option("--expires-in", min=1, help="Lifetime in seconds (90 days).")
    ] = DEFAULT_TOKEN_LIFETIME,
    never_expires: Annotated[bool, typer.Option("--never-expires", help="A token that never expires.")] = False,
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Create an access token for a user (printed once; only its hash is kept)."""
    lifetime = None if never_expires else expires_in
    issued = run_local(data_dir, lambda app: app.accounts.create_token(operator(actor), username, lifetime))
    typer.echo(issued.token)


@tokens.command("list")
def list_tokens(
    username: Annotated[str, typer.Argument(help="Whose tokens.")],
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """A user's tokens: when each was made, by which client, until when (the tokens themselves are not kept)."""
    found = run_local(data_dir, lambda app: app.accounts.tokens(operator(), username))
    table = Table("Token (hash)", "Client", "Created", "Expires")
    for token in found:
        expires = token.expires_at.strftime("%Y-%m-%d %H:%M:%S") if token.expires_at else "never"
        table.add_row(token.token_hash[:12], token.client_id, token.created_at.strftime("%Y-%m-%d %H:%M:%S"), expires)
    Console(width=120).print(table)


@tokens.command("revoke")
def revoke_token(
    token: Annotated[str, typer.Argument(help="The token to revoke.")],
    actor: ActorOption = "operator",
    data_dir: DataDirOption = None,
    database: DatabaseOption = None,
) -> None:
    """Revoke an access token."""
    if not run_local(data_dir, lambda app: app.accounts.revoke(token, actor=operator(actor))):
        raise typer.BadParameter("no such token", param_hint="TOKEN")
    typer.echo("Token revoked")
