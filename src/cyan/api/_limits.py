"""What a request may cost before anything else runs: its body is bounded per kind of route, and an upload is
refused before a byte of it is read unless its token is good (docs/security.md "Request bodies").

An ASGI middleware, so that it acts on the raw stream: a body announced larger than its route takes is
refused at once (413), one that turns out larger while it streams is cut off at the limit (413), and a
multipart upload (a firmware binary) without a valid token in its header or query is refused (401) without
reading, spooling or parsing any of it. The rest of the API then reads bodies of at most the limit.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cyan.cloud.ota import MAX_FIRMWARE

__all__ = ["MAX_BODY", "MAX_UPLOAD_BODY", "RequestLimits"]

#: Every JSON or form body: far above what any route takes (an event is 622 bytes of data).
MAX_BODY = 64 * 1024
#: A multipart upload: the largest binary a Gen 2 device takes, and room for the form around it.
MAX_UPLOAD_BODY = MAX_FIRMWARE + 64 * 1024


class _TooLarge(Exception):
    pass


class RequestLimits:
    def __init__(self, app: ASGIApp, token_is_valid: Callable[[str], Awaitable[bool]]) -> None:
        self._app = app
        self._token_is_valid = token_is_valid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        upload = headers.get("content-type", "").split(";")[0].strip().lower() == "multipart/form-data"
        limit = MAX_UPLOAD_BODY if upload else MAX_BODY
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _answer(send, 413, "the request body is over its limit", limit)
            return
        if upload and not await self._has_valid_token(scope, headers):
            await _answer(send, 401, "an upload needs a valid access token in its Authorization header")
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, bounded_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _answer(send, 413, "the request body is over its limit", limit)

    async def _has_valid_token(self, scope: Scope, headers: dict[str, str]) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
        if not token:
            for pair in scope.get("query_string", b"").decode("latin-1").split("&"):
                name, _, found = pair.partition("=")
                if name == "access_token":
                    token = found
        return bool(token) and token != "null" and await self._token_is_valid(token)


async def _answer(send: Send, status: int, description: str, limit: int | None = None) -> None:
    body: dict[str, Any] = {
        "ok": False,
        "error": "invalid_request" if status == 413 else "invalid_token",
        "error_description": description + (f" ({limit} bytes)" if limit is not None else ""),
    }
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    # The body the client is still sending is not read: close the connection rather than leave it queued.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
