"""The HTTP API: Particle Cloud API v1 compatible, so the `particle` CLI and particle-api-js work unchanged."""

from __future__ import annotations

from fastapi import FastAPI

from cyan import __version__

from . import (
    routes_auth,
    routes_devices,
    routes_diagnostics,
    routes_events,
    routes_integrations,
    routes_keys,
    routes_updates,
)
from ._context import ApiContext
from ._limits import RequestLimits
from .errors import install_error_handlers

__all__ = ["create_app"]


def create_app(context: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Cyan Cloud API",
        version=__version__,
        description=(
            "Particle Cloud API v1 compatible. Every route needs an access token (Authorization: Bearer, the "
            "access_token query parameter, or an access_token form field), except POST /oauth/token and the "
            "revocation of a token by itself. See docs/api.md for what is supported."
        ),
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.context = context
    install_error_handlers(app)

    async def token_is_valid(token: str) -> bool:
        return await context.app.accounts.resolve(token) is not None

    app.add_middleware(RequestLimits, token_is_valid=token_is_valid)
    app.include_router(routes_auth.router)
    # Stream and publish routes first: /v1/devices/events must not be taken for a device named "events".
    app.include_router(routes_events.router)
    app.include_router(routes_keys.router)
    app.include_router(routes_diagnostics.router)  # before devices: /attempts and /doctor are not variables
    app.include_router(routes_updates.router)  # before devices: /updates is not a variable either
    app.include_router(routes_integrations.router)
    app.include_router(routes_devices.router)
    return app
