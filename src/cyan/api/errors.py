"""Errors in Particle's JSON shape, mapped from domain errors in one place (design §5.7)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cyan.cloud.errors import (
    CloudError,
    DeviceNotFoundError,
    DeviceOfflineError,
    DeviceQuarantinedError,
    DeviceTimeoutError,
    FunctionRefusedError,
    UnknownFunctionError,
    UnknownVariableError,
)
from cyan.cloud.ports import StoreUnavailableError

__all__ = ["ApiError", "install_error_handlers", "permission_denied"]


class ApiError(Exception):
    """An error response: status and body exactly as the client should see them."""

    def __init__(self, status: int, error: str, description: str | None = None, **extra: Any) -> None:
        super().__init__(description or error)
        self.status = status
        self.body: dict[str, Any] = {"ok": False, "error": error}
        if description:
            self.body["error_description"] = description
        self.body.update(extra)


def permission_denied(id_or_name: str) -> ApiError:
    """Unknown and not-yours look the same: ids of other people's devices are not revealed."""
    return ApiError(
        403,
        "Permission Denied",
        f"no device {id_or_name!r} of yours: it does not exist or belongs to someone else",
        info=f"I didn't recognize that device name or ID ({id_or_name}); list yours with GET /v1/devices",
    )


def _json(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.body)

    @app.exception_handler(CloudError)
    async def cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        # Status codes as Particle answers them: 403 for a device that is not yours, 404 for a device that
        # is not connected and for a function or variable it does not expose (the CLI prints "Function
        # `x` not found" only for a 404), 408 for a device that did not answer in time.
        if isinstance(exc, DeviceNotFoundError):
            return _json(403, permission_denied(exc.id_or_name).body)
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
        return _json(400, {"ok": False, "error": str(exc)})

    @app.exception_handler(StoreUnavailableError)
    async def store_down(request: Request, exc: StoreUnavailableError) -> JSONResponse:
        return _json(503, {"ok": False, "error": "Service unavailable", "error_description": str(exc)})

    @app.exception_handler(ConnectionError)
    async def device_gone(request: Request, exc: ConnectionError) -> JSONResponse:
        return _json(404, {"ok": False, "error": "Device is not connected", "error_description": str(exc)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = "Not Found" if exc.status_code == 404 else str(exc.detail)
        return _json(exc.status_code, {"ok": False, "error": error, "error_description": str(exc.detail)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(400, {"ok": False, "error": "invalid_request", "error_description": str(exc.errors())})
