"""`cyan db status|upgrade`: the database's schema against this version's migrations.

`cyan serve` migrates when it starts (one node at a time on PostgreSQL); these commands let an operator see
what is due and migrate before rolling out a new version, on the data directory's SQLite file or on the
database `--database` (or CYAN_DATABASE_URL) names.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from cyan.config import Settings
from cyan.data import SchemaStatus, database_status, upgrade_database

from ._options import DatabaseOption, DataDirOption

app = typer.Typer(help="The database's schema: where it stands, and migrating it.", no_args_is_help=True)


class NewerSchemaError(RuntimeError):
    """The database was migrated by a newer cyan than this one."""

    hint = "upgrade cyan on this host to the version the other nodes run"


def _revisions(revisions: frozenset[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"


def _settings(data_dir: Path | None, database: str | None) -> Settings:
    return Settings.from_env(data_dir=data_dir, database_url=database)


@app.command("status")
def status(data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """Print the database's schema revision, this version's newest, and whether an upgrade is due."""
    found: SchemaStatus = asyncio.run(database_status(_settings(data_dir, database)))
    typer.echo(f"database: {found.database}")
    current = _revisions(found.current) if found.exists else "none (the database does not exist yet)"
    typer.echo(f"current revision: {current}")
    typer.echo(f"head revision: {found.head}")
    if found.newer:
        raise NewerSchemaError(
            f"the schema is at {_revisions(found.newer)}, which this version of cyan does not know: a newer "
            "cyan migrated it"
        )
    if found.upgrade_due:
        typer.echo("upgrade due: yes (run `cyan db upgrade`; `cyan serve` also upgrades when it starts)")
    else:
        typer.echo("upgrade due: no")


@app.command("upgrade")
def upgrade(data_dir: DataDirOption = None, database: DatabaseOption = None) -> None:
    """Migrate the database to this version's schema (creating it if it is new); say from what to what."""
    before, after = asyncio.run(upgrade_database(_settings(data_dir, database)))
    head = _revisions(after.current)
    if not before.current:
        typer.echo(f"created the schema at revision {head} in the {after.database}")
    elif before.current == after.current:
        typer.echo(f"the {after.database} is at revision {head} already: nothing to do")
    else:
        typer.echo(f"upgraded the {after.database} from revision {_revisions(before.current)} to {head}")
