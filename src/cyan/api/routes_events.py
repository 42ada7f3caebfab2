"""Events: publishing, and the server-sent event streams in Particle's format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from cyan.app import Actor
from cyan.cloud.errors import InvalidInputError
from cyan.cloud.models import CloudEvent

from ._requests import app, body, context, require_actor
from ._serialize import iso
from .routes_devices import _product, _view

router = APIRouter(tags=["events"])
Caller = Annotated[Actor, Depends(require_actor)]


@router.post("/v1/devices/events", summary="Publish an event")
@router.post("/v1/products/{product}/events", summary="Publish an event to a product's devices")
async def publish(request: Request, actor: Caller, product: str | None = None) -> dict[str, Any]:
    _product(product)
    params = await body(request)
    private = str(params.get("private", "true")).lower() not in ("false", "0", "no")
    raw_ttl = params.get("ttl", 60)
    try:
        ttl = int(raw_ttl) if isinstance(raw_ttl, int | str) and not isinstance(raw_ttl, bool) else None
    except ValueError:
        ttl = None
    if ttl is None:
        raise InvalidInputError("ttl must be a whole number of seconds", "ttl")
    calls = app(request).calls
    assert calls is not None
    calls.publish(actor, params.get("name"), params.get("data"), private=private, ttl=max(0, ttl))
    return {"ok": True}


def _encode(event: CloudEvent) -> bytes:
    """One event in Particle's stream format. The data is a JSON string (newlines in it are escaped); the name
    was checked at every entry to have no control character, and is made safe here once more, so that nothing
    can end the `event:` line early and forge an event into another subscriber's stream."""
    payload = {
        "data": event.data,
        "ttl": event.ttl,
        "published_at": iso(event.published_at),
        "coreid": event.device_id or "api",
    }
    name = event.name if event.name.isprintable() else "".join(c if c.isprintable() else "\ufffd" for c in event.name)
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _stream(request: Request, prefix: str, accept: Callable[[CloudEvent], bool]) -> StreamingResponse:
    ctx = context(request)
    cloud = ctx.app.cloud
    assert cloud is not None
    subscription = cloud.bus.subscribe(prefix, accept)

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
async def all_events(request: Request, actor: Caller, prefix: str = "") -> StreamingResponse:
    user = actor.username
    return _stream(request, prefix, lambda e: not e.private or e.owner == user)


@router.get("/v1/devices/events", summary="Stream your devices' events")
@router.get("/v1/devices/events/{prefix:path}", summary="Stream your devices' events, by name prefix")
async def my_events(request: Request, actor: Caller, prefix: str = "") -> StreamingResponse:
    user = actor.username
    return _stream(request, prefix, lambda e: e.owner == user)


@router.get("/v1/devices/{device}/events", summary="Stream one device's events")
@router.get("/v1/devices/{device}/events/{prefix:path}", summary="Stream one device's events, by name prefix")
async def device_events(request: Request, actor: Caller, device: str, prefix: str = "") -> StreamingResponse:
    view = await _view(request, actor, device)
    device_id, user, admin = view.record.id, actor.username, actor.is_admin
    # The owner at each event, not at the start: a device released and claimed by another stops showing here.
    return _stream(request, prefix, lambda e: e.device_id == device_id and (admin or e.owner == user))


@router.get("/v1/products/{product}/events", summary="Stream a product's events")
@router.get("/v1/products/{product}/events/{prefix:path}", summary="Stream a product's events, by name prefix")
async def product_events(request: Request, actor: Caller, product: str, prefix: str = "") -> StreamingResponse:
    _product(product)
    user = actor.username
    return _stream(request, prefix, lambda e: e.owner == user)
