"""Devices: list, get, rename, signal, claim, release, functions, variables, key provisioning, claim codes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from cyan.app import Actor, DeviceView
from cyan.cloud.errors import InvalidInputError
from cyan.keys import KeyFormatError, load_public_key, public_key_der

from . import routes_updates
from ._requests import app, body, require_actor
from ._serialize import device_json, iso
from .errors import ApiError, not_found

router = APIRouter(tags=["devices"])
Caller = Annotated[Actor, Depends(require_actor)]


def _product(product: str | None) -> int | None:
    if product is None:
        return None
    if not product.isascii() or not product.isdigit() or len(product) > 10:
        raise ApiError(404, "Not Found", f"no product {product[:32]!r}: products are addressed by their numeric id")
    return int(product)


async def _view(request: Request, actor: Actor, device: str, product: str | None = None) -> DeviceView:
    view = await app(request).devices.get(actor, device)
    wanted = _product(product)
    if wanted is not None and wanted not in (view.record.product_id, view.record.platform_id):
        raise not_found(device)
    return view


def _text(params: dict[str, Any], *names: str) -> str:
    for name in names:
        value = params.get(name)
        if value is not None:
            return str(value)
    return ""


# -- listing and reading ------------------------------------------------------------------------


@router.get("/v1/devices", summary="List your devices (admins: `?all=true` for the whole fleet)")
@router.get("/v1/products/{product}/devices", summary="List your devices of a product")
async def list_devices(request: Request, actor: Caller, product: str | None = None, all: bool = False) -> Any:
    wanted = _product(product)
    views = await app(request).devices.mine(actor, everyone=all)
    found = [
        device_json(v, detail=False)
        for v in views
        if wanted is None or wanted in (v.record.product_id, v.record.platform_id)
    ]
    if product is not None:
        return {"devices": found, "meta": {"total_pages": 1}}
    return found


@router.get("/v1/devices/{device}", summary="Get a device, with its functions and variables")
@router.get("/v1/products/{product}/devices/{device}", summary="Get a product device")
async def get_device(request: Request, actor: Caller, device: str, product: str | None = None) -> dict[str, Any]:
    return device_json(await _view(request, actor, device, product), detail=True)


# -- changing -------------------------------------------------------------------------------------


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "on", "yes")


@router.put("/v1/devices/{device}", summary="Rename a device, signal it (rainbow LED), or flash it (multipart)")
@router.put("/v1/products/{product}/devices/{device}", summary="Rename, signal or flash a product device")
async def update_device(request: Request, actor: Caller, device: str, product: str | None = None) -> dict[str, Any]:
    params = await body(request)
    view = await _view(request, actor, device, product)
    if params.get("__multipart__"):
        # `particle flash DEVICE app.bin` (protocol.md §7; routes_updates.py).
        return await routes_updates.flash(request, actor, view)
    if "name" in params:
        record = await app(request).devices.rename(actor, view.record.id, str(params["name"]))
        return {"id": record.id, "name": record.name, "updated_at": iso(datetime.now(UTC))}
    if "signal" in params:
        calls = app(request).calls
        assert calls is not None
        on = _truthy(params["signal"])
        device_id = await calls.signal(actor, view.record.id, on)
        return {"id": device_id, "connected": True, "signaling": on}
    if "development" in params:
        # `particle flash` marks a product's device as a development device first, so that the product's
        # automatic firmware does not replace what it flashes. Cyan pushes no product firmware on its own: every
        # device already is one, whatever was asked.
        return {"ok": True, "id": view.record.id, "development": True}
    raise ApiError(
        400,
        "invalid_request",
        "nothing to change: give name, signal, development, or a binary to flash (multipart file)",
    )


@router.post("/v1/devices", summary="Claim a device (admins, or with a claim code issued for it)")
async def claim_device(request: Request, actor: Caller) -> dict[str, Any]:
    params = await body(request)
    device_id = _text(params, "id", "deviceID")
    code = params.get("claim_code")
    owner = params.get("owner")
    record = await app(request).devices.claim(
        actor,
        device_id,
        claim_code=code if isinstance(code, str) else None,
        owner=owner if isinstance(owner, str) else None,
    )
    online = await app(request).context.sessions.connected(record.id)
    return {"ok": True, "user_id": record.owner, "id": record.id, "connected": online}


@router.delete("/v1/devices/{device}", summary="Release a device from your account")
@router.delete("/v1/products/{product}/devices/{device}", summary="Release a product device")
async def release_device(request: Request, actor: Caller, device: str, product: str | None = None) -> dict[str, Any]:
    view = await _view(request, actor, device, product)
    await app(request).devices.release(actor, view.record.id)
    return {"ok": True}


@router.post("/v1/device_claims", summary="Create a claim code (admins: for one device, with device_id)")
async def create_claim_code(request: Request, actor: Caller) -> dict[str, Any]:
    params = await body(request)
    device = params.get("device_id")
    issued = await app(request).devices.issue_claim_code(actor, device if isinstance(device, str) else None)
    return {"claim_code": issued.code, "device_ids": issued.device_ids, "expires_in": issued.expires_in}


# -- functions and variables ----------------------------------------------------------------------


@router.post("/v1/devices/{device}/{function}", summary="Call a function")
@router.post("/v1/products/{product}/devices/{device}/{function}", summary="Call a function of a product device")
async def call_function(
    request: Request, actor: Caller, device: str, function: str, product: str | None = None
) -> dict[str, Any]:
    params = await body(request)
    argument = _text(params, "arg", "args")
    view = await _view(request, actor, device, product)
    calls = app(request).calls
    assert calls is not None
    device_id, value = await calls.call_function(actor, view.record.id, function, argument)
    return {"id": device_id, "name": view.record.name, "connected": True, "return_value": value}


@router.get("/v1/devices/{device}/{variable}", summary="Read a variable", response_model=None)
@router.get(
    "/v1/products/{product}/devices/{device}/{variable}",
    summary="Read a variable of a product device",
    response_model=None,
)
async def read_variable(
    request: Request,
    actor: Caller,
    device: str,
    variable: str,
    *,
    product: str | None = None,
    format: Annotated[str | None, Query(description="raw: the value alone, as text")] = None,
) -> dict[str, Any] | Response:
    if format not in (None, "raw", "json"):
        raise InvalidInputError("format is raw (the value alone, as text) or json", "format")
    view = await _view(request, actor, device, product)
    calls = app(request).calls
    assert calls is not None
    device_id, raw, value = await calls.read_variable(actor, view.record.id, variable)
    if format == "raw":
        # As Particle answers ?format=raw: a number as its digits, a string as the device sent its bytes.
        content = raw if value is None or isinstance(value, str) else _number_text(value).encode()
        return Response(content, media_type="text/plain; charset=utf-8")
    result: Any = value if value is not None else raw.decode("utf-8", "replace")
    record = view.record
    return {
        "cmd": "VarReturn",
        "name": variable,
        "result": result,
        "coreInfo": {
            "last_app": "",
            "last_heard": iso(record.last_heard),
            "connected": True,
            "last_handshake_at": iso(record.last_heard),
            "deviceID": device_id,
            "product_id": record.product_id,
        },
    }


def _number_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)  # 21.0, not 21: still a double
    return str(value)


# -- keys ---------------------------------------------------------------------------------------


def _product_id(value: Any) -> int | None:
    if value is None or value == "":
        return None
    text = str(value)
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise InvalidInputError("product_id is a whole number", "product_id")
    return int(text)


@router.post("/v1/provisioning/{device_id}", tags=["keys"], summary="Register a device's public key")
async def provision_key(request: Request, actor: Caller, device_id: str) -> dict[str, Any]:
    """What `particle keys send` and `keys doctor` call (docs/keys.md "Who may do what")."""
    params = await body(request)
    product_id = _product_id(params.get("product_id"))
    algorithm = str(params.get("algorithm", "rsa")).lower()
    if algorithm != "rsa":
        raise InvalidInputError(f"algorithm {algorithm[:16]!r}: Gen 2 devices use RSA keys", "algorithm")
    pem = params.get("publicKey")
    if not isinstance(pem, str) or not pem.strip():
        raise InvalidInputError("publicKey (PEM) is required", "publicKey")
    try:
        der = public_key_der(load_public_key(pem.encode()))
    except KeyFormatError as exc:
        raise InvalidInputError(f"the public key cannot be used: {exc}", "publicKey") from None
    code = params.get("claim_code")
    done = await app(request).keys.provision(
        actor, device_id, der, product_id=product_id, claim_code=code if isinstance(code, str) else None
    )
    return {"ok": True, "id": done.record.id, "key_fingerprint": done.record.key_fingerprint, "created": done.created}
