"""The `cyan` command: one module per command group, each failure a message and a hint (design §5.8)."""

from ._app import app, main

__all__ = ["app", "main"]
