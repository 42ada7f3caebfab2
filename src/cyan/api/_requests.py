"""Reading requests the way Particle accepts them: JSON or form bodies, tokens in three places."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from starlette.formparsers import MultiPartException

from cyan.app import Actor, Application
from cyan.cloud.ota import MAX_FIRMWARE, FirmwareRejectedError

from ._context import ApiContext
from ._limits import MAX_BODY
from .errors import ApiError

__all__ = ["app", "body", "context", "require_actor"]


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.context
    return ctx


def app(request: Request) -> Application:
    """The use cases: what every route calls."""
    return context(request).app


async def body(request: Request) -> dict[str, Any]:
    """The request's parameters from a JSON object or a form-encoded body (Particle accepts both)."""
    cached: dict[str, Any] | None = getattr(request.state, "body", None)
    if cached is not None:
        return cached
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        parsed = await _multipart(request)
        request.state.body = parsed
        return parsed
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "invalid_request", f"the request body is over {MAX_BODY} bytes")
    parsed = {}
    if raw.strip():
        if content_type == "application/json" or (not content_type and raw.lstrip()[:1] == b"{"):
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                raise ApiError(400, "invalid_request", f"the body is not valid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise ApiError(400, "invalid_request", "the JSON body must be an object")
            if not _is_text(value):
                raise ApiError(400, "invalid_request", "the body is not valid JSON: a string has half a surrogate pair")
            parsed = value
        elif content_type in ("application/x-www-form-urlencoded", ""):
            parsed = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        else:
            raise ApiError(415, "invalid_request", f"unsupported content type {content_type!r}")
    request.state.body = parsed
    return parsed


def _is_text(value: object) -> bool:
    """Whether every string of a parsed JSON value is text: JSON may escape half of a surrogate pair ("\\ud800"),
    which is no character, and code that encodes the string would fail on it (RFC 8259 §8.2)."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


#: The largest file part taken: the largest binary a Gen 2 device takes (its OTA area, protocol.md §10).
MAX_UPLOAD = MAX_FIRMWARE


async def _multipart(request: Request) -> dict[str, Any]:
    """A multipart form (`particle flash` sends one, with chunked transfer encoding): its text fields, and
    `__multipart__`. File parts, at most `MAX_UPLOAD` bytes each, go to `request.state.files` as
    name -> (filename, bytes); the parser's temporary files are closed at once."""
    try:
        form = await request.form(max_files=4, max_fields=32, max_part_size=MAX_BODY)
    except (MultiPartException, ValueError) as exc:
        raise ApiError(400, "invalid_request", f"the multipart body cannot be read: {exc}") from None
    parsed: dict[str, Any] = {"__multipart__": True}
    files: dict[str, tuple[str, bytes]] = {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                parsed[name] = value
                continue
            data = await value.read(MAX_UPLOAD + 1)
            if len(data) > MAX_UPLOAD:
                # The only files taken are firmware binaries: say it as the device's check would.
                raise FirmwareRejectedError(
                    f"{value.filename or name}: too large: over {MAX_UPLOAD} bytes, and a Gen 2 device takes at most "
                    f"{MAX_UPLOAD}",
                    "too_large",
                )
            files[name] = (value.filename or name, data)
    finally:
        await form.close()
    request.state.files = files
    return parsed


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip() and value.strip() != "null":
        return value.strip()
    return None


async def require_actor(request: Request) -> Actor:
    """Who the caller is, by a valid access token from the Authorization header, the query string or the form."""
    token = _bearer(request) or request.query_params.get("access_token")
    if token is None and request.method in ("POST", "PUT", "DELETE"):
        value = (await body(request)).get("access_token")
        token = value if isinstance(value, str) else None
    if not token:
        raise ApiError(401, "invalid_request", "The access token was not found")
    actor = await app(request).accounts.resolve(token)
    if actor is None:
        raise ApiError(401, "invalid_token", "The access token provided is invalid.")
    request.state.token = token
    return actor
