from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory [env CYAN_DATA_DIR; ./cyan-data].")
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="The database URL (postgresql://user:password@host/cyan, sqlite+aiosqlite:///path) instead of the "
        "data directory's SQLite file [env CYAN_DATABASE_URL].",
    ),
]
