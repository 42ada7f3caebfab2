"""Reading requests the way Particle accepts them: JSON or form bodies, tokens in three places."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request

from cyan.cloud.models import AccessToken

from ._context import ApiContext
from .errors import ApiError

__all__ = ["body", "context", "require_token"]

_MAX_BODY = 64 * 1024


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.context
    return ctx


async def body(request: Request) -> dict[str, Any]:
    """The request's parameters from a JSON object or a form-encoded body (Particle accepts both)."""
    cached: dict[str, Any] | None = getattr(request.state, "body", None)
    if cached is not None:
        return cached
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise ApiError(413, "invalid_request", f"the request body is over {_MAX_BODY} bytes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    parsed: dict[str, Any] = {}
    if raw.strip():
        if content_type == "application/json" or (not content_type and raw.lstrip()[:1] == b"{"):
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                raise ApiError(400, "invalid_request", f"the body is not valid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise ApiError(400, "invalid_request", "the JSON body must be an object")
            parsed = value
        elif content_type in ("application/x-www-form-urlencoded", ""):
            parsed = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        elif content_type.startswith("multipart/"):
            parsed = {"__multipart__": True}
        else:
            raise ApiError(415, "invalid_request", f"unsupported content type {content_type!r}")
    request.state.body = parsed
    return parsed


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip() and value.strip() != "null":
        return value.strip()
    return None


async def require_token(request: Request) -> AccessToken:
    """The caller's valid access token, from the Authorization header, the query string or the form."""
    token = _bearer(request) or request.query_params.get("access_token")
    if token is None and request.method in ("POST", "PUT", "DELETE"):
        value = (await body(request)).get("access_token")
        token = value if isinstance(value, str) else None
    if not token:
        raise ApiError(401, "invalid_request", "The access token was not found")
    record = await context(request).accounts.resolve(token)
    if record is None:
        raise ApiError(401, "invalid_token", "The access token provided is invalid.")
    request.state.token = token
    return record
