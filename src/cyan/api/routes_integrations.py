"""Webhooks: Particle's `/v1/integrations` (type Webhook) and the legacy `/v1/webhooks` that `particle webhook`
uses. The caller's own only; what is not theirs is not found (docs/api.md "Webhooks")."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyan.app import Actor, IntegrationView
from cyan.cloud.models import HookDelivery, Integration

from ._requests import app, body, require_actor
from ._serialize import iso

router = APIRouter(tags=["webhooks"])
Caller = Annotated[Actor, Depends(require_actor)]

#: Configuration keys as Particle names them, in the order shown.
_TEMPLATE_KEYS = ("json", "form", "query", "body", "headers", "auth", "responseTemplate", "responseTopic")


def integration_json(integration: Integration) -> dict[str, Any]:
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


def delivery_json(delivery: HookDelivery) -> dict[str, Any]:
    return {
        "time": iso(delivery.at),
        "event": delivery.event_name,
        "deviceID": delivery.device_id,
        "attempt": delivery.attempt,
        "outcome": delivery.outcome,
        "status": delivery.status,
        "duration_ms": None if delivery.duration is None else round(delivery.duration * 1000, 1),
        "error": delivery.error,
    }


def _view_json(view: IntegrationView) -> dict[str, Any]:
    logs = [delivery_json(d) for d in view.deliveries]
    return {
        **integration_json(view.integration),
        "logs": logs,
        "errors": [entry for entry in logs if entry["outcome"] != "success"],
        "counters": view.counters,
    }


# -- /v1/integrations, and /v1/webhooks (what particle webhook create/list/delete use): the same hooks ------


@router.get("/v1/integrations", summary="Your integrations (webhooks)")
@router.get("/v1/webhooks", summary="Your webhooks (the CLI's list)")
async def list_integrations(request: Request, actor: Caller) -> list[dict[str, Any]]:
    return [integration_json(i) for i in await app(request).integrations.mine(actor)]


@router.post("/v1/integrations", summary="Create a webhook")
@router.post("/v1/webhooks", summary="Create a webhook (the CLI's create)")
async def create_integration(request: Request, actor: Caller) -> dict[str, Any]:
    created = await app(request).integrations.create(actor, await body(request))
    return {"ok": True, **integration_json(created)}


@router.get("/v1/integrations/{integration_id}", summary="An integration, its recent deliveries and counters")
@router.get("/v1/webhooks/{integration_id}", summary="A webhook, its recent deliveries and counters")
async def get_integration(request: Request, actor: Caller, integration_id: str) -> dict[str, Any]:
    return _view_json(await app(request).integrations.get(actor, integration_id))


@router.put("/v1/integrations/{integration_id}", summary="Replace an integration's configuration")
async def edit_integration(request: Request, actor: Caller, integration_id: str) -> dict[str, Any]:
    changed = await app(request).integrations.update(actor, integration_id, await body(request))
    return {"ok": True, **integration_json(changed)}


@router.delete("/v1/integrations/{integration_id}", summary="Delete an integration")
@router.delete("/v1/webhooks/{integration_id}", summary="Delete a webhook (the CLI's delete)")
async def delete_integration(request: Request, actor: Caller, integration_id: str) -> dict[str, Any]:
    await app(request).integrations.delete(actor, integration_id)
    return {"ok": True}


@router.post("/v1/integrations/{integration_id}/test", summary="Send one test event to an integration now")
async def test_integration(request: Request, actor: Caller, integration_id: str) -> dict[str, Any]:
    params = await body(request)
    device = params.get("device_id", params.get("deviceID"))
    result = await app(request).integrations.test(actor, integration_id, data=params.get("data"), device=device)
    duration = None if result.duration is None else round(result.duration * 1000, 1)
    answer: dict[str, Any] = {
        "ok": True,
        "pass": result.ok,
        "data": {"statusCode": result.status, "body": result.body[:4096], "duration_ms": duration},
    }
    if result.error:
        answer["error"] = result.error
    return answer
