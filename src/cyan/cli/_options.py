from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cyan.config import default_data_dir


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
        help="The database URL (postgresql://user:password@host/cyan, sqlite+aiosqlite:///path) instead of the "
        "data directory's SQLite file (env CYAN_DATABASE_URL).",
    ),
]
