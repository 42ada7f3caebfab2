"""Events: publishing, and the server-sent event streams in Particle's format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request

from cyan.app import Actor
from cyan.cloud.errors import InvalidInputError
from cyan.cloud.models import CloudEvent

from . import schemas
from ._requests import app, body, context, require_actor
from ._routing import IndexedRouter
from ._serialize import iso
from .routes_devices import _product, _view
from .schemas import BODY_ERRORS, EventStream, errors, request_body, stream_responses

router = IndexedRouter(tags=["events"])
Caller = Annotated[Actor, Depends(require_actor)]


_PUBLISH = request_body(schemas.EventPublish, required=True)


@router.post(
    "/v1/devices/events",
    summary="Publish an event",
    responses=errors(401, *BODY_ERRORS),
    openapi_extra=_PUBLISH,
)
async def publish(request: Request, actor: Caller) -> schemas.Ok:
    return await _publish(request, actor)


@router.post(
    "/v1/products/{product}/events",
    summary="Publish an event to a product's devices",
    responses=errors(401, 404, *BODY_ERRORS),
    openapi_extra=_PUBLISH,
)
async def publish_to_product(request: Request, actor: Caller, product: str) -> schemas.Ok:
    _product(product)
    return await _publish(request, actor)


async def _publish(request: Request, actor: Actor) -> schemas.Ok:
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
    return schemas.Ok(ok=True)


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


#: The event a stream carries where it lost events (its reader fell behind, or the node lost the other nodes).
GAP_EVENT = "cyan/stream/gap"


def _gap(dropped: int, interruptions: int) -> bytes:
    parts = []
    if dropped:
        parts.append(f"{dropped} event(s) dropped: this stream was read more slowly than events came")
    if interruptions:
        parts.append("events of the cloud's other nodes were lost while this node could not reach the bus")
    return _encode(CloudEvent(GAP_EVENT, "; ".join(parts), 0, datetime.now(UTC), None, None, False))


def _stream(request: Request, prefix: str, accept: Callable[[CloudEvent], bool]) -> EventStream:
    ctx = context(request)
    cloud = ctx.app.cloud
    assert cloud is not None
    subscription = cloud.bus.subscribe(prefix, accept)

    async def events() -> AsyncIterator[bytes]:
        dropped = interruptions = 0
        try:
            yield b":ok\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(subscription.get(), ctx.keepalive)
                except TimeoutError:
                    event = None
                    if not subscription.closed:
                        yield b":\n\n"  # a comment: keeps proxies and the client's socket alive
                if subscription.dropped != dropped or subscription.interruptions != interruptions:
                    # Events this stream will never show: the client is told, before the next one it sees.
                    yield _gap(subscription.dropped - dropped, subscription.interruptions - interruptions)
                    dropped, interruptions = subscription.dropped, subscription.interruptions
                if event is None:
                    if subscription.closed:
                        return
                    continue
                yield _encode(event)
        finally:
            subscription.close()

    return EventStream(events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


_STREAM: dict[str, Any] = {"response_class": EventStream, "responses": stream_responses(401)}
_ONE_STREAM: dict[str, Any] = {"response_class": EventStream, "responses": stream_responses(401, 404)}


@router.get("/v1/events", summary="Stream public events and your own", **_STREAM)
@router.get("/v1/events/{prefix:path}", summary="Stream public events and your own, by name prefix", **_STREAM)
async def all_events(request: Request, actor: Caller, prefix: str = "") -> EventStream:
    user = actor.username
    return _stream(request, prefix, lambda e: not e.private or e.owner == user)


@router.get("/v1/devices/events", summary="Stream your devices' events", **_STREAM)
@router.get("/v1/devices/events/{prefix:path}", summary="Stream your devices' events, by name prefix", **_STREAM)
async def my_events(request: Request, actor: Caller, prefix: str = "") -> EventStream:
    user = actor.username
    return _stream(request, prefix, lambda e: e.owner == user)


@router.get("/v1/devices/{device}/events", summary="Stream one device's events", **_ONE_STREAM)
@router.get(
    "/v1/devices/{device}/events/{prefix:path}", summary="Stream one device's events, by name prefix", **_ONE_STREAM
)
async def device_events(request: Request, actor: Caller, device: str, prefix: str = "") -> EventStream:
    view = await _view(request, actor, device)
    device_id, user, admin = view.record.id, actor.username, actor.is_admin
    # The owner at each event, not at the start: a device released and claimed by another stops showing here.
    return _stream(request, prefix, lambda e: e.device_id == device_id and (admin or e.owner == user))


@router.get("/v1/products/{product}/events", summary="Stream a product's events", **_ONE_STREAM)
@router.get(
    "/v1/products/{product}/events/{prefix:path}", summary="Stream a product's events, by name prefix", **_ONE_STREAM
)
async def product_events(request: Request, actor: Caller, product: str, prefix: str = "") -> EventStream:
    _product(product)
    user = actor.username
    return _stream(request, prefix, lambda e: e.owner == user)
