"""Errors in Particle's JSON shape, mapped from domain errors in one place (design §5.7)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from cyan.app import InvalidCredentialsError, InvalidRefreshTokenError
from cyan.cloud.errors import (
    AlreadyExistsError,
    CloudError,
    ConflictError,
    DeviceNotFoundError,
    DeviceOfflineError,
    DeviceQuarantinedError,
    DeviceTimeoutError,
    FunctionRefusedError,
    InvalidInputError,
    NotFoundError,
    PendingKeyChangedError,
    PermissionDeniedError,
    TooManyRequestsError,
    UnknownFunctionError,
    UnknownVariableError,
)
from cyan.cloud.ota import FirmwareRejectedError, UpdateConflictError
from cyan.cloud.ports import BusUnavailableError, NodeUnreachableError, StoreUnavailableError

__all__ = ["ApiError", "install_error_handlers", "not_found"]

log = logging.getLogger("cyan.api")


class ApiError(Exception):
    """An error response: status and body exactly as the client should see them."""

    def __init__(self, status: int, error: str, description: str, **extra: Any) -> None:
        super().__init__(description)
        self.status = status
        self.body: dict[str, Any] = {"ok": False, "error": error, "error_description": description, **extra}


def not_found(id_or_name: str) -> ApiError:
    """Unknown and not-yours are the same 404: ids and names of other people's devices are not revealed."""
    shown = id_or_name[:64]
    return ApiError(
        404,
        "Not Found",
        f"no device {shown!r} of yours: it does not exist or belongs to someone else",
        info=f"I didn't recognize that device name or ID ({shown}); list yours with GET /v1/devices",
    )


def _json(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.body)

    @app.exception_handler(CloudError)
    async def cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        return _cloud_error(exc)

    @app.exception_handler(InvalidCredentialsError)
    async def bad_credentials(request: Request, exc: InvalidCredentialsError) -> JSONResponse:
        description = (
            "The refresh token is invalid, used, revoked or expired: log in again"
            if isinstance(exc, InvalidRefreshTokenError)
            else "User credentials are invalid"
        )
        return _json(400, {"ok": False, "error": "invalid_grant", "error_description": description})

    @app.exception_handler(NodeUnreachableError)
    async def node_gone(request: Request, exc: NodeUnreachableError) -> JSONResponse:
        return _json(503, {"ok": False, "error": "Service unavailable", "error_description": str(exc)})

    @app.exception_handler(BusUnavailableError)
    async def bus_down(request: Request, exc: BusUnavailableError) -> JSONResponse:
        return _json(503, {"ok": False, "error": "Service unavailable", "error_description": str(exc)})

    @app.exception_handler(StoreUnavailableError)
    async def store_down(request: Request, exc: StoreUnavailableError) -> JSONResponse:
        return _json(503, {"ok": False, "error": "Service unavailable", "error_description": str(exc)})

    @app.exception_handler(ConnectionError)
    async def device_gone(request: Request, exc: ConnectionError) -> JSONResponse:
        return _json(404, {"ok": False, "error": "Device is not connected", "error_description": str(exc)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = "Not Found" if exc.status_code == 404 else str(exc.detail)
        response = _json(exc.status_code, {"ok": False, "error": error, "error_description": str(exc.detail)})
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            # RFC 9110 §15.5.6: the methods the path takes. Starlette names those of the first route that matches
            # the path only, and a path may have several (GET and POST /v1/devices).
            response.headers["Allow"] = _allowed(request)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields, description = describe_invalid(exc.errors())
        log.info("%s %s refused: %s", request.method, request.url.path, description)
        body = {"ok": False, "error": "invalid_request", "error_description": description}
        if fields:
            body["field"] = fields[0]
        return _json(400, body)


def _allowed(request: Request) -> str:
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


def describe_invalid(errors: Sequence[Any]) -> tuple[list[str], str]:
    """Which fields are wrong and why, without echoing what was sent (it may be large or hostile)."""
    fields: list[str] = []
    parts = []
    for error in list(errors)[:5]:
        location = [str(part) for part in error.get("loc", ())]
        # The first part says where the field was (query, body, path): the name is what a caller knows.
        field = ".".join(location[1:] or location) or "request"
        fields.append(field)
        parts.append(f"{field}: {error.get('msg', 'invalid')}")
    return fields, "; ".join(parts)[:500] or "invalid request"


def _cloud_error(exc: CloudError) -> JSONResponse:
    """Status codes as Particle answers them: 404 for a device that is not the caller's (the same as for one
    that does not exist), for one that is not connected, and for a function or variable it does not expose
    (the CLI prints "Function `x` not found" only for a 404); 408 for a device that did not answer in time."""
    if isinstance(exc, DeviceNotFoundError):
        return _json(404, not_found(exc.id_or_name).body)
    if isinstance(exc, NotFoundError):
        return _json(404, {"ok": False, "error": "Not Found", "error_description": str(exc)})
    if isinstance(exc, TooManyRequestsError):
        seconds = max(1, round(exc.retry_after + 0.5))
        response = _json(429, {"ok": False, "error": "Too many requests", "error_description": str(exc)})
        response.headers["Retry-After"] = str(seconds)
        return response
    if isinstance(exc, PermissionDeniedError):
        return _json(403, {"ok": False, "error": "Permission Denied", "error_description": str(exc)})
    if isinstance(exc, InvalidInputError):
        body: dict[str, Any] = {"ok": False, "error": "invalid_request", "error_description": str(exc)}
        if exc.field:
            body["field"] = exc.field
        return _json(400, body)
    if isinstance(exc, PendingKeyChangedError):
        return _json(
            409,
            {
                "ok": False,
                "error": "Pending key changed",
                "error_description": str(exc),
                "fingerprint": exc.named,
                "pending_fingerprints": exc.pending,
            },
        )
    if isinstance(exc, AlreadyExistsError):
        return _json(409, {"ok": False, "error": "Already exists", "error_description": str(exc)})
    if isinstance(exc, UpdateConflictError):
        return _json(409, {"ok": False, "error": "Update in progress", "error_description": str(exc)})
    if isinstance(exc, ConflictError):
        return _json(409, {"ok": False, "error": "Conflict", "error_description": str(exc)})
    if isinstance(exc, FirmwareRejectedError):
        # The Particle CLI prints error_description for a 400 (src/cmd/api.js _checkToken).
        return _json(
            400,
            {
                "ok": False,
                "error": "Invalid firmware",
                "error_description": str(exc),
                "reason": exc.reason,
                "info": str(exc),
            },
        )
    if isinstance(exc, DeviceQuarantinedError):
        return _json(403, {"ok": False, "error": "Device quarantined", "error_description": str(exc)})
    if isinstance(exc, DeviceOfflineError):
        return _json(404, {"ok": False, "error": "Device is not connected", "error_description": str(exc)})
    if isinstance(exc, DeviceTimeoutError):
        return _json(408, {"ok": False, "error": "Timed out.", "error_description": str(exc)})
    if isinstance(exc, UnknownFunctionError):
        return _json(404, {"ok": False, "error": "Function not found", "error_description": str(exc)})
    if isinstance(exc, UnknownVariableError):
        return _json(404, {"ok": False, "error": f"Unknown Variable: {exc.name}", "error_description": str(exc)})
    if isinstance(exc, FunctionRefusedError):
        return _json(400, {"ok": False, "error": "Function call refused", "error_description": str(exc)})
    return _json(400, {"ok": False, "error": str(exc), "error_description": str(exc)})
