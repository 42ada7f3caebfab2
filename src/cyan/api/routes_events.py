"""Events: publishing, and the server-sent event streams in Particle's format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from cyan.bus import CloudEvent
from cyan.cloud.models import AccessToken
from cyan.protocol.messages import MAX_EVENT_DATA, MAX_EVENT_NAME

from ._requests import body, context, require_token
from ._serialize import iso
from .errors import ApiError
from .routes_devices import _device, _product

router = APIRouter(tags=["events"])
Token = Annotated[AccessToken, Depends(require_token)]


@router.post("/v1/devices/events", summary="Publish an event")
@router.post("/v1/products/{product}/events", summary="Publish an event to a product's devices")
async def publish(request: Request, token: Token, product: str | None = None) -> dict[str, Any]:
    _product(product)
    params = await body(request)
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "invalid_request", "the event name is required")
    if len(name.encode()) > MAX_EVENT_NAME:
        raise ApiError(400, "invalid_request", f"the event name is over {MAX_EVENT_NAME} bytes")
    data = params.get("data")
    data = None if data is None else str(data)
    if data is not None and len(data.encode()) > MAX_EVENT_DATA:
        raise ApiError(400, "invalid_request", f"the event data is over {MAX_EVENT_DATA} bytes")
    private = str(params.get("private", "true")).lower() not in ("false", "0", "no")
    try:
        ttl = int(params.get("ttl", 60))
    except (TypeError, ValueError):
        raise ApiError(400, "invalid_request", "ttl must be a number of seconds") from None
    context(request).cloud.publish(name, data, owner=token.username, private=private, ttl=max(0, min(ttl, 16777215)))
    return {"ok": True}


def _encode(event: CloudEvent) -> bytes:
    payload = {
        "data": event.data,
        "ttl": event.ttl,
        "published_at": iso(event.published_at),
        "coreid": event.device_id or "api",
    }
    return f"event: {event.name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _stream(request: Request, prefix: str, accept: Callable[[CloudEvent], bool]) -> StreamingResponse:
    ctx = context(request)
    subscription = ctx.cloud.bus.subscribe(prefix, accept)

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b":ok\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(subscription.get(), ctx.keepalive)
                except TimeoutError:
                    yield b":\n\n"  # a comment: keeps proxies and the client's socket alive
                    continue
                if event is None:
                    return
                yield _encode(event)
        finally:
            subscription.close()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/v1/events", summary="Stream public events and your own")
@router.get("/v1/events/{prefix:path}", summary="Stream public events and your own, by name prefix")
async def all_events(request: Request, token: Token, prefix: str = "") -> StreamingResponse:
    user = token.username
    return _stream(request, prefix, lambda e: not e.private or e.owner == user)


@router.get("/v1/devices/events", summary="Stream your devices' events")
@router.get("/v1/devices/events/{prefix:path}", summary="Stream your devices' events, by name prefix")
async def my_events(request: Request, token: Token, prefix: str = "") -> StreamingResponse:
    user = token.username
    return _stream(request, prefix, lambda e: e.owner == user)


@router.get("/v1/devices/{device}/events", summary="Stream one device's events")
@router.get("/v1/devices/{device}/events/{prefix:path}", summary="Stream one device's events, by name prefix")
async def device_events(request: Request, token: Token, device: str, prefix: str = "") -> StreamingResponse:
    record = await _device(request, token, device)
    user, device_id = token.username, record.id
    return _stream(request, prefix, lambda e: e.device_id == device_id and e.owner == user)


@router.get("/v1/products/{product}/events", summary="Stream a product's events")
@router.get("/v1/products/{product}/events/{prefix:path}", summary="Stream a product's events, by name prefix")
async def product_events(request: Request, token: Token, product: str, prefix: str = "") -> StreamingResponse:
    _product(product)
    user = token.username
    return _stream(request, prefix, lambda e: e.owner == user)
