"""A device's key: pending keys, approval by fingerprint, policy, re-key window and audit, for its owner; and the
fleet's policy, pending keys and audit trail for admins."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Depends, Query, Request

from cyan.app import Actor
from cyan.cloud.errors import InvalidInputError

from . import schemas
from ._requests import app, body, require_actor
from ._routing import IndexedRouter
from ._serialize import iso, render_audit, render_pending, render_policy
from .schemas import BODY_ERRORS, errors, request_body

router = IndexedRouter(tags=["keys"])
Caller = Annotated[Actor, Depends(require_actor)]


def _fingerprint(params: dict[str, Any]) -> str:
    value = params.get("fingerprint")
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(
            "name the key: fingerprint, as GET /v1/devices/:id/keys shows it (what you checked is what is done)",
            "fingerprint",
        )
    return value


def _flag(params: dict[str, Any], name: str) -> bool | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "on", "yes"):
        return True
    if text in ("false", "0", "off", "no"):
        return False
    raise InvalidInputError(f"{name} is true or false", name)


@router.get(
    "/v1/devices/{device}/keys",
    summary="The device's key, pending keys, policy, window and audit trail",
    responses=errors(401, 404),
)
async def device_keys(request: Request, actor: Caller, device: str) -> schemas.KeyStatus:
    status = await app(request).keys.status(actor, device)
    window = status.window
    unproven = status.unproven
    return schemas.KeyStatus(
        id=status.record.id,
        key_fingerprint=status.record.key_fingerprint,
        connected=status.connected,
        quarantined=status.quarantined,
        policy=render_policy(status.policy),
        pending_keys=[render_pending(p) for p in status.pending],
        rekey_window=None
        if window is None
        else schemas.RekeyWindow(
            until=iso(window.until),
            armed_by=window.armed_by,
            armed_at=iso(window.armed_at),
            accepted_fingerprint=window.accepted_fingerprint,
            accepted_at=iso(window.accepted_at),
        ),
        unproven_attempts=schemas.UnprovenAttempts(
            period_hours=24,
            count=unproven.count,
            first=iso(unproven.first),
            last=iso(unproven.last),
            keys=unproven.keys,
            addresses=unproven.addresses,
        ),
        audit=[render_audit(e) for e in status.audit],
    )


_CHOOSE_KEY: dict[str, Any] = {
    "responses": errors(401, 404, 409, *BODY_ERRORS),
    "openapi_extra": request_body(schemas.FingerprintChoice, required=True),
}


@router.post(
    "/v1/devices/{device}/keys/approve", summary="Approve the pending key with this fingerprint", **_CHOOSE_KEY
)
async def approve(request: Request, actor: Caller, device: str) -> schemas.KeyApproved:
    params = await body(request)
    record = await app(request).keys.approve(actor, device, _fingerprint(params))
    return schemas.KeyApproved(ok=True, id=record.id, key_fingerprint=record.key_fingerprint)


@router.post("/v1/devices/{device}/keys/reject", summary="Reject the pending key with this fingerprint", **_CHOOSE_KEY)
async def reject(request: Request, actor: Caller, device: str) -> schemas.KeyRejected:
    params = await body(request)
    pending = await app(request).keys.reject(actor, device, _fingerprint(params))
    return schemas.KeyRejected(ok=True, id=pending.device_id, fingerprint=pending.fingerprint)


@router.post(
    "/v1/devices/{device}/keys/rekey",
    summary="Accept the one new key of a device that lost its key",
    responses=errors(401, 404, 409, *BODY_ERRORS),
    openapi_extra=request_body(schemas.RekeyRequest),
)
async def rekey(request: Request, actor: Caller, device: str) -> schemas.Rekeyed:
    params = await body(request)
    raw = params.get("seconds", 3600)
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        raise InvalidInputError("seconds must be a number", "seconds") from None
    if not math.isfinite(seconds):
        raise InvalidInputError("seconds must be a finite number", "seconds")
    window = await app(request).keys.arm_rekey(actor, device, seconds)
    return schemas.Rekeyed(ok=True, id=window.device_id, until=iso(window.until))


@router.delete(
    "/v1/devices/{device}/keys/rekey",
    summary="Close the device's re-key window",
    responses=errors(401, 404, *BODY_ERRORS),
)
async def disarm(request: Request, actor: Caller, device: str) -> schemas.RekeyClosed:
    removed = await app(request).keys.disarm_rekey(actor, device)
    return schemas.RekeyClosed(ok=True, closed=removed)


@router.put(
    "/v1/devices/{device}/keys/policy",
    summary="Set the device's key policy",
    responses=errors(401, 404, *BODY_ERRORS),
    openapi_extra=request_body(schemas.DevicePolicyRequest, required=True),
)
async def set_policy(request: Request, actor: Caller, device: str) -> schemas.DevicePolicySet:
    params = await body(request)
    policy = await app(request).keys.set_device_policy(actor, device, str(params.get("mode", "")))
    return schemas.DevicePolicySet(ok=True, id=policy.scope, mode=policy.mode)


@router.delete(
    "/v1/devices/{device}/keys/policy",
    summary="The device follows the fleet's policy again",
    responses=errors(401, 404, *BODY_ERRORS),
)
async def clear_policy(request: Request, actor: Caller, device: str) -> schemas.PolicyCleared:
    return schemas.PolicyCleared(ok=True, removed=await app(request).keys.clear_device_policy(actor, device))


@router.get("/v1/keys/policy", summary="The fleet's key policy and the devices' own", responses=errors(401))
async def fleet_policy(request: Request, actor: Caller) -> schemas.Policies:
    fleet, own = await app(request).keys.policies(actor)
    return schemas.Policies(fleet=render_policy(fleet), devices=[render_policy(p) for p in own])


@router.put(
    "/v1/keys/policy",
    summary="Set the fleet's key policy (admins)",
    responses=errors(401, 403, *BODY_ERRORS),
    openapi_extra=request_body(schemas.FleetPolicyRequest, required=True),
)
async def set_fleet_policy(request: Request, actor: Caller) -> schemas.PolicyChanged:
    params = await body(request)
    mode = params.get("mode")
    policy = await app(request).keys.set_fleet_policy(
        actor,
        mode=None if mode is None else str(mode),
        trust_on_first_use=_flag(params, "trust_on_first_use"),
        self_registration=_flag(params, "self_registration"),
    )
    return schemas.PolicyChanged(ok=True, **dict(render_policy(policy)))


@router.get("/v1/keys/pending", summary="Pending keys of your devices (admins: of every device)", responses=errors(401))
async def pending(request: Request, actor: Caller) -> list[schemas.PendingKey]:
    return [render_pending(p) for p in await app(request).keys.pending(actor)]


@router.get(
    "/v1/audit",
    summary="The audit trail: one device's (?device=), or all of it (admins)",
    responses=errors(400, 401, 403, 404),
)
async def audit(
    request: Request, actor: Caller, device: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[schemas.AuditRecord]:
    return [render_audit(e) for e in await app(request).keys.audit(actor, device, limit=limit)]
