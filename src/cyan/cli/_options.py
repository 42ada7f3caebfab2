from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory [env CYAN_DATA_DIR; ./cyan-data].")
]
