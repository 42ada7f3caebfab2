"""The HTTP API: Particle Cloud API v1 compatible, so the `particle` CLI and particle-api-js work unchanged."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from cyan import __version__

from . import (
    routes_auth,
    routes_devices,
    routes_diagnostics,
    routes_events,
    routes_fleet,
    routes_integrations,
    routes_keys,
    routes_updates,
)
from ._context import ApiContext
from ._limits import RequestLimits
from .errors import install_error_handlers
from .routes_console import install_console

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
        docs_url=None,  # served from the package's own copy of Swagger UI (routes_console.py)
        redoc_url=None,
        openapi_url="/openapi.json",
        # Bodies written by json.dumps, as before there were response models: pydantic's own encoder would write
        # some numbers differently (1e-05 as 1e-5), and clients have seen these bytes.
        default_response_class=JSONResponse,
    )
    app.state.context = context
    install_error_handlers(app)

    async def token_is_valid(token: str) -> bool:
        return await context.app.accounts.resolve(token) is not None

    app.add_middleware(RequestLimits, token_is_valid=token_is_valid)
    app.include_router(routes_auth.router)
    app.include_router(routes_fleet.router)  # before events and devices: /v1/fleet/events, /v1/access_tokens
    # Stream and publish routes first: /v1/devices/events must not be taken for a device named "events".
    app.include_router(routes_events.router)
    app.include_router(routes_keys.router)
    app.include_router(routes_diagnostics.router)  # before devices: /attempts and /doctor are not variables
    app.include_router(routes_updates.router)  # before devices: /updates is not a variable either
    app.include_router(routes_integrations.router)
    app.include_router(routes_devices.router)
    app.include_router(routes_devices.calls_router)
    install_console(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The document FastAPI writes, without the 422 it gives every route with parameters: invalid parameters
    are answered 400 in Particle's error shape (errors.py), which each route documents."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in document.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = document
    return app.openapi_schema
