"""Running use cases on the server's own data (`--data-dir`), as the operator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from cyan.app import Actor, Application
from cyan.data import open_application

from ._options import local_settings

__all__ = ["ActorOption", "operator", "run_local"]

T = TypeVar("T")

ActorOption = Annotated[
    str, typer.Option("--actor", help="Who is acting, for the audit trail (the command line acts as an admin).")
]


def operator(name: str = "operator") -> Actor:
    """Whoever runs `cyan` on the server's data holds its database and keys: they act as an admin, under the
    name they give for the audit trail."""
    return Actor.operator(name.strip() or "operator")


def run_local(data_dir: Path | None, work: Callable[[Application], Awaitable[T]]) -> T:
    """`work` on the use cases over the data directory's database."""
    settings = local_settings(data_dir)

    async def run() -> T:
        async with open_application(settings) as app:
            return await work(app)

    return asyncio.run(run())
