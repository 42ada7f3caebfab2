"""The Particle Cloud API v1 compatible HTTP API (REST and server-sent events)."""

from ._context import ApiContext
from .app import create_app

__all__ = ["ApiContext", "create_app"]
