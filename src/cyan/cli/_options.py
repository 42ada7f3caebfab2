from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Annotated

import typer

from cyan.config import Settings, default_data_dir

#: The `--database` of the command being run: the commands pass their data directory only, and the settings they
#: work on (`local_settings`) take the database from here, so that every command on the data takes the option.
_database: ContextVar[str | None] = ContextVar("cyan_cli_database", default=None)


def _remember_database(value: str | None) -> str | None:
    _database.set(value)
    return value


def local_settings(data_dir: Path | None) -> Settings:
    """The settings a command on the cloud's data works with: the data directory, and the database `--database`
    (or CYAN_DATABASE_URL) names, if any."""
    return Settings.from_env(data_dir=data_dir, database_url=_database.get())


def _shown(path: Path) -> str:
    """A path as a user writes it: under the home directory as ~/..."""
    try:
        return f"~/{path.relative_to(Path.home())}"
    except ValueError:
        return str(path)


DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help=f"Data directory (env CYAN_DATA_DIR; {_shown(default_data_dir())}).", show_default=False
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="The database, a URL such as postgresql://cyan@db/cyan, instead of the data directory's SQLite file "
        "(env CYAN_DATABASE_URL).",
        callback=_remember_database,
    ),
]
