"""A device's key: registration, pending key, policy, re-key window and audit, for its owner."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyan.cloud.errors import CloudError
from cyan.cloud.keypolicy import effective_policy
from cyan.cloud.models import AccessToken, KeyPolicyMode

from ._requests import body, context, require_token
from ._serialize import iso
from .errors import ApiError
from .routes_devices import _device

router = APIRouter(tags=["keys"])
Token = Annotated[AccessToken, Depends(require_token)]
_MAX_WINDOW = 30 * 24 * 3600


@router.get("/v1/devices/{device}/keys", summary="The device's key, pending key, policy and audit trail")
async def device_keys(request: Request, token: Token, device: str) -> dict[str, Any]:
    record = await _device(request, token, device)
    store = context(request).cloud.store
    pending = await store.get_pending_key(record.id)
    window = await store.get_rekey(record.id)
    policy = await effective_policy(store, record.id)
    audit = await store.list_audit(record.id, limit=50)
    return {
        "id": record.id,
        "key_fingerprint": record.key_fingerprint,
        "quarantined": context(request).cloud.quarantined(record.id),
        "policy": {"mode": policy.mode.value, "scope": policy.scope, "trust_on_first_use": policy.trust_on_first_use},
        "pending_key": None
        if pending is None
        else {
            "fingerprint": pending.fingerprint,
            "first_seen": iso(pending.first_seen),
            "last_seen": iso(pending.last_seen),
            "attempts": pending.attempts,
            "peer_address": pending.peer_address,
        },
        "rekey_window": None
        if window is None
        else {"until": iso(window.until), "armed_by": window.armed_by, "armed_at": iso(window.armed_at)},
        "audit": [
            {
                "at": iso(e.at),
                "action": e.action,
                "actor": e.actor,
                "old_fingerprint": e.old_fingerprint,
                "new_fingerprint": e.new_fingerprint,
                "detail": e.detail,
            }
            for e in audit
        ],
    }


@router.post("/v1/devices/{device}/keys/approve", summary="Approve the device's pending key")
async def approve(request: Request, token: Token, device: str) -> dict[str, Any]:
    record = await _device(request, token, device)
    try:
        updated = await context(request).cloud.approve_pending_key(record.id, token.username)
    except CloudError as exc:
        raise ApiError(404, "Not Found", str(exc)) from None
    return {"ok": True, "id": updated.id, "key_fingerprint": updated.key_fingerprint}


@router.post("/v1/devices/{device}/keys/reject", summary="Reject the device's pending key")
async def reject(request: Request, token: Token, device: str) -> dict[str, Any]:
    record = await _device(request, token, device)
    try:
        await context(request).cloud.reject_pending_key(record.id, token.username)
    except CloudError as exc:
        raise ApiError(404, "Not Found", str(exc)) from None
    return {"ok": True, "id": record.id}


@router.post("/v1/devices/{device}/keys/rekey", summary="Accept the device's next new key for a while")
async def rekey(request: Request, token: Token, device: str) -> dict[str, Any]:
    record = await _device(request, token, device)
    params = await body(request)
    try:
        seconds = float(params.get("seconds", 3600))
    except (TypeError, ValueError):
        raise ApiError(400, "invalid_request", "seconds must be a number") from None
    if not 0 < seconds <= _MAX_WINDOW:
        raise ApiError(400, "invalid_request", f"a re-key window lasts 1 s to {_MAX_WINDOW // 86400} days")
    window = await context(request).cloud.arm_rekey(record.id, seconds, token.username)
    return {"ok": True, "id": record.id, "until": iso(window.until)}


@router.put("/v1/devices/{device}/keys/policy", summary="Set the device's key policy")
async def set_policy(request: Request, token: Token, device: str) -> dict[str, Any]:
    record = await _device(request, token, device)
    params = await body(request)
    try:
        mode = KeyPolicyMode(str(params.get("mode", "")))
    except ValueError:
        raise ApiError(400, "invalid_request", "mode is strict or quarantine") from None
    # Trust on first use concerns unknown devices, so it is the fleet's, set by operators (cyan policy).
    policy = await context(request).cloud.set_policy(record.id, mode, False, token.username)
    return {"ok": True, "id": record.id, "mode": policy.mode.value}
