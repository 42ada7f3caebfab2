"""Webhooks: Particle's `/v1/integrations` (type Webhook) and the legacy `/v1/webhooks` that `particle webhook`
uses. The caller's own only; what is not theirs is not found (docs/api.md "Webhooks")."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from cyan.app import Actor, IntegrationView
from cyan.cloud.models import HookDelivery, Integration

from . import schemas
from ._requests import app, body, require_actor
from ._routing import IndexedRouter
from ._serialize import iso
from .schemas import BODY_ERRORS, errors, request_body

router = IndexedRouter(tags=["webhooks"])
Caller = Annotated[Actor, Depends(require_actor)]

#: Configuration keys as Particle names them, in the order shown.
_TEMPLATE_KEYS = ("json", "form", "query", "body", "headers", "auth", "responseTemplate", "responseTopic")
#: An integration shows only the keys it was given (response_model_exclude_unset), as Particle shows them.
_SHOWN: dict[str, Any] = {"response_model_exclude_unset": True}


def integration_fields(integration: Integration) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "id": integration.id,
        "integration_type": "Webhook",
        "event": integration.event,
        "url": integration.url,
        "requestType": integration.request_type,
        "created_at": iso(integration.created_at),
        "updated_at": iso(integration.updated_at),
        "noDefaults": integration.no_defaults,
        "rejectUnauthorized": integration.reject_unauthorized,
        "mydevices": integration.my_devices,
        "disabled": integration.disabled,
    }
    if integration.name is not None:
        shown["name"] = integration.name
    if integration.device_id is not None:
        shown["deviceID"] = integration.device_id
    for key in (*_TEMPLATE_KEYS, "errorResponseTopic"):
        if key in integration.templates:
            shown[key] = integration.templates[key]
    return shown


def render_delivery(delivery: HookDelivery) -> schemas.Delivery:
    return schemas.Delivery(
        time=iso(delivery.at),
        event=delivery.event_name,
        deviceID=delivery.device_id,
        attempt=delivery.attempt,
        outcome=delivery.outcome,
        status=delivery.status,
        duration_ms=None if delivery.duration is None else round(delivery.duration * 1000, 1),
        error=delivery.error,
    )


def _detail(view: IntegrationView) -> schemas.IntegrationDetail:
    logs = [render_delivery(d) for d in view.deliveries]
    return schemas.IntegrationDetail.model_validate(
        {
            **integration_fields(view.integration),
            "logs": logs,
            "errors": [entry for entry in logs if entry.outcome != "success"],
            "counters": view.counters,
        }
    )


# -- /v1/integrations, and /v1/webhooks (what particle webhook create/list/delete use): the same hooks ------


@router.get("/v1/integrations", summary="Your integrations (webhooks)", responses=errors(401, 403), **_SHOWN)
@router.get("/v1/webhooks", summary="Your webhooks (the CLI's list)", responses=errors(401, 403), **_SHOWN)
async def list_integrations(request: Request, actor: Caller) -> list[schemas.Integration]:
    return [
        schemas.Integration.model_validate(integration_fields(i)) for i in await app(request).integrations.mine(actor)
    ]


_CREATE: dict[str, Any] = {
    "responses": errors(401, 403, *BODY_ERRORS),
    "openapi_extra": request_body(schemas.IntegrationRequest, required=True),
    **_SHOWN,
}


@router.post("/v1/integrations", summary="Create a webhook", **_CREATE)
@router.post("/v1/webhooks", summary="Create a webhook (the CLI's create)", **_CREATE)
async def create_integration(request: Request, actor: Caller) -> schemas.IntegrationChanged:
    created = await app(request).integrations.create(actor, await body(request))
    return schemas.IntegrationChanged.model_validate({"ok": True, **integration_fields(created)})


@router.get(
    "/v1/integrations/{integration_id}",
    summary="An integration, its recent deliveries and counters",
    responses=errors(401, 403, 404),
    **_SHOWN,
)
@router.get(
    "/v1/webhooks/{integration_id}",
    summary="A webhook, its recent deliveries and counters",
    responses=errors(401, 403, 404),
    **_SHOWN,
)
async def get_integration(request: Request, actor: Caller, integration_id: str) -> schemas.IntegrationDetail:
    return _detail(await app(request).integrations.get(actor, integration_id))


@router.put(
    "/v1/integrations/{integration_id}",
    summary="Replace an integration's configuration",
    responses=errors(401, 403, 404, *BODY_ERRORS),
    openapi_extra=request_body(schemas.IntegrationRequest, required=True),
    **_SHOWN,
)
async def edit_integration(request: Request, actor: Caller, integration_id: str) -> schemas.IntegrationChanged:
    changed = await app(request).integrations.update(actor, integration_id, await body(request))
    return schemas.IntegrationChanged.model_validate({"ok": True, **integration_fields(changed)})


_DELETE: dict[str, Any] = {
    "responses": errors(401, 403, 404, *BODY_ERRORS),
    "openapi_extra": request_body(schemas.NoParameters),
}


@router.delete("/v1/integrations/{integration_id}", summary="Delete an integration", **_DELETE)
@router.delete("/v1/webhooks/{integration_id}", summary="Delete a webhook (the CLI's delete)", **_DELETE)
async def delete_integration(request: Request, actor: Caller, integration_id: str) -> schemas.Ok:
    await app(request).integrations.delete(actor, integration_id)
    return schemas.Ok(ok=True)


@router.post(
    "/v1/integrations/{integration_id}/test",
    summary="Send one test event to an integration now",
    responses=errors(401, 403, 404, *BODY_ERRORS),
    openapi_extra=request_body(schemas.IntegrationTestRequest),
    **_SHOWN,
)
async def test_integration(request: Request, actor: Caller, integration_id: str) -> schemas.IntegrationTested:
    params = await body(request)
    device = params.get("device_id", params.get("deviceID"))
    result = await app(request).integrations.test(actor, integration_id, data=params.get("data"), device=device)
    duration = None if result.duration is None else round(result.duration * 1000, 1)
    answer: dict[str, Any] = {
        "ok": True,
        "pass": result.ok,
        "data": schemas.TestAnswer(statusCode=result.status, body=result.body[:4096], duration_ms=duration),
    }
    if result.error:
        answer["error"] = result.error
    return schemas.IntegrationTested.model_validate(answer)
