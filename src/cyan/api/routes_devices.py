"""Devices: list, get, rename, signal, claim, release, functions, variables, key provisioning, claim codes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request, Response
from pydantic import TypeAdapter

from cyan.app import Actor, DeviceView
from cyan.cloud.errors import InvalidInputError
from cyan.keys import KeyFormatError, device_public_key_der, is_ec_key

from . import routes_updates, schemas
from ._requests import app, body, require_actor
from ._routing import IndexedRouter
from ._serialize import iso, render_device, render_device_detail
from .errors import ApiError, not_found
from .schemas import BODY_ERRORS, errors, request_body

router = IndexedRouter(tags=["devices"])
#: Functions, variables and key provisioning, in the same order, in a router app.py includes right after the one
#: above: a function call or a variable read skips the routes above with one pattern (_routing.py) instead of
#: being tried against each of them twice (FastAPI matches a router's routes to choose it, then again to run it).
calls_router = IndexedRouter(tags=["devices"])
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


def _string(params: dict[str, Any], name: str) -> str:
    """A field that must be text: a number or a list in its place is refused, not turned into text."""
    value = params.get(name)
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} is text", name)
    return value


# -- listing and reading ------------------------------------------------------------------------


#: Devices rendered between two turns of the event loop: listing a fleet of thousands must not hold up the
#: pings, calls and handshakes of the devices the same loop serves.
_RENDERED_PER_TURN = 250
_DEVICE_LIST = TypeAdapter(list[schemas.Device])
_ONE_PAGE = schemas.ProductMeta(total_pages=1).model_dump_json().encode()


async def _listed(request: Request, actor: Actor, product: str | None, everyone: bool) -> bytes:
    """The JSON list of the devices, rendered and written a few hundred at a time between turns of the loop
    (25 MB for 50,000 devices: written whole, the serializer alone held the loop for a quarter of a second)."""
    wanted = _product(product)
    views = await app(request).devices.mine(actor, everyone=everyone)
    parts: list[bytes] = []
    for start in range(0, len(views), _RENDERED_PER_TURN):
        if start:
            await asyncio.sleep(0)
        shown = [
            render_device(v)
            for v in views[start : start + _RENDERED_PER_TURN]
            if wanted is None or wanted in (v.record.product_id, v.record.platform_id)
        ]
        if shown:
            parts.append(_DEVICE_LIST.dump_json(shown)[1:-1])  # the items, without the list's brackets
    return b"[" + b",".join(parts) + b"]"


def _json(content: bytes | str) -> Response:
    return Response(content, media_type="application/json")


# The lists are written by pydantic's serializer straight from the validated models: FastAPI would validate them
# a second time against the response model and encode them with the standard library (3x the time at 5,000).


@router.get(
    "/v1/devices",
    summary="List your devices (admins: `?all=true` for the whole fleet)",
    responses=errors(400, 401, 403),
    response_model=list[schemas.Device],
)
async def list_devices(request: Request, actor: Caller, all: bool = False) -> Response:
    return _json(await _listed(request, actor, None, all))


@router.get(
    "/v1/products/{product}/devices",
    summary="List your devices of a product",
    responses=errors(400, 401, 403, 404),
    response_model=schemas.ProductDevices,
)
async def list_product_devices(request: Request, actor: Caller, product: str, all: bool = False) -> Response:
    found = await _listed(request, actor, product, all)
    # `schemas.ProductDevices` as pydantic writes it, with the list written above.
    return _json(b'{"devices":' + found + b',"meta":' + _ONE_PAGE + b"}")


# A route of a product device is a route of its own rather than a second path of the device's: a shared function
# would take `product` from the query string on the device's path, where the document says nothing of it.


@router.get(
    "/v1/devices/{device}", summary="Get a device, with its functions and variables", responses=errors(401, 404)
)
async def get_device(request: Request, actor: Caller, device: str) -> schemas.DeviceDetail:
    return render_device_detail(await _view(request, actor, device))


@router.get("/v1/products/{product}/devices/{device}", summary="Get a product device", responses=errors(401, 404))
async def get_product_device(request: Request, actor: Caller, product: str, device: str) -> schemas.DeviceDetail:
    return render_device_detail(await _view(request, actor, device, product))


# -- changing -------------------------------------------------------------------------------------


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "on", "yes")


_CHANGE: dict[str, Any] = {
    "responses": errors(401, 403, 404, 408, 409, *BODY_ERRORS),
    "openapi_extra": request_body(schemas.DeviceChange, multipart=schemas.FlashRequest, required=True),
}


@router.put(
    "/v1/devices/{device}",
    summary="Rename a device, set its notes, signal it (rainbow LED), or flash it (multipart)",
    **_CHANGE,
)
async def update_device(
    request: Request, actor: Caller, device: str
) -> schemas.Renamed | schemas.NotesChanged | schemas.Signaled | schemas.DevelopmentMarked | schemas.Flashed:
    return await _update(request, actor, device, None)


@router.put(
    "/v1/products/{product}/devices/{device}", summary="Rename, set notes, signal or flash a product device", **_CHANGE
)
async def update_product_device(
    request: Request, actor: Caller, product: str, device: str
) -> schemas.Renamed | schemas.NotesChanged | schemas.Signaled | schemas.DevelopmentMarked | schemas.Flashed:
    return await _update(request, actor, device, product)


async def _update(
    request: Request, actor: Actor, device: str, product: str | None
) -> schemas.Renamed | schemas.NotesChanged | schemas.Signaled | schemas.DevelopmentMarked | schemas.Flashed:
    params = await body(request)
    view = await _view(request, actor, device, product)
    if params.get("__multipart__"):
        # `particle flash DEVICE app.bin` (protocol.md §7; routes_updates.py).
        return await routes_updates.flash(request, actor, view)
    if "notes" in params:
        devices = app(request).devices
        if "name" in params:
            await devices.rename(actor, view.record.id, _string(params, "name"))
        record = await devices.set_notes(actor, view.record.id, _string(params, "notes"))
        return schemas.NotesChanged(
            id=record.id, name=record.name, notes=record.notes, updated_at=iso(datetime.now(UTC))
        )
    if "name" in params:
        record = await app(request).devices.rename(actor, view.record.id, _string(params, "name"))
        return schemas.Renamed(id=record.id, name=record.name, updated_at=iso(datetime.now(UTC)))
    if "signal" in params:
        calls = app(request).calls
        assert calls is not None
        on = _truthy(params["signal"])
        device_id = await calls.signal(actor, view.record.id, on)
        return schemas.Signaled(id=device_id, connected=True, signaling=on)
    if "development" in params:
        # `particle flash` marks a product's device as a development device first, so that the product's
        # automatic firmware does not replace what it flashes. Cyan pushes no product firmware on its own: every
        # device already is one, whatever was asked.
        return schemas.DevelopmentMarked(ok=True, id=view.record.id, development=True)
    raise ApiError(
        400,
        "invalid_request",
        "nothing to change: give name, notes, signal, development, or a binary to flash (multipart file)",
    )


@router.post(
    "/v1/devices",
    summary="Claim a device (admins, or with a claim code issued for it)",
    responses=errors(401, 403, 404, 409, *BODY_ERRORS),
    openapi_extra=request_body(schemas.ClaimRequest, required=True),
)
async def claim_device(request: Request, actor: Caller) -> schemas.Claimed:
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
    return schemas.Claimed(ok=True, user_id=record.owner, id=record.id, connected=online)


_RELEASE: dict[str, Any] = {"responses": errors(401, 404, *BODY_ERRORS)}


@router.delete("/v1/devices/{device}", summary="Release a device from your account", **_RELEASE)
async def release_device(request: Request, actor: Caller, device: str) -> schemas.Ok:
    return await _release(request, actor, device, None)


@router.delete("/v1/products/{product}/devices/{device}", summary="Release a product device", **_RELEASE)
async def release_product_device(request: Request, actor: Caller, product: str, device: str) -> schemas.Ok:
    return await _release(request, actor, device, product)


async def _release(request: Request, actor: Actor, device: str, product: str | None) -> schemas.Ok:
    view = await _view(request, actor, device, product)
    await app(request).devices.release(actor, view.record.id)
    return schemas.Ok(ok=True)


@router.post(
    "/v1/device_claims",
    summary="Create a claim code (admins: for one device, with device_id)",
    responses=errors(401, 403, 404, 409, *BODY_ERRORS),
    openapi_extra=request_body(schemas.ClaimCodeRequest),
)
async def create_claim_code(request: Request, actor: Caller) -> schemas.ClaimCodeIssued:
    params = await body(request)
    device = params.get("device_id")
    issued = await app(request).devices.issue_claim_code(actor, device if isinstance(device, str) else None)
    return schemas.ClaimCodeIssued(claim_code=issued.code, device_ids=issued.device_ids, expires_in=issued.expires_in)


# -- functions and variables ----------------------------------------------------------------------

_CALL: dict[str, Any] = {
    "responses": errors(401, 403, 404, 408, *BODY_ERRORS),
    "openapi_extra": request_body(schemas.FunctionCall),
}


@calls_router.post("/v1/devices/{device}/{function}", summary="Call a function", **_CALL)
async def call_function(request: Request, actor: Caller, device: str, function: str) -> schemas.FunctionResult:
    return await _call(request, actor, device, function, None)


@calls_router.post(
    "/v1/products/{product}/devices/{device}/{function}", summary="Call a function of a product device", **_CALL
)
async def call_product_function(
    request: Request, actor: Caller, product: str, device: str, function: str
) -> schemas.FunctionResult:
    return await _call(request, actor, device, function, product)


async def _call(
    request: Request, actor: Actor, device: str, function: str, product: str | None
) -> schemas.FunctionResult:
    params = await body(request)
    argument = _text(params, "arg", "args")
    if product is not None:
        device = (await _view(request, actor, device, product)).record.id  # refused before the device is asked
    calls = app(request).calls
    assert calls is not None
    record, value = await calls.function_call(actor, device, function, argument)
    return schemas.FunctionResult(id=record.id, name=record.name, connected=True, return_value=value)


_RAW_VALUE = {
    "description": "With ?format=raw: the value alone (a number as its digits, a string as the device sent it)",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
_FORMAT = Query(description="raw: the value alone, as text/plain")


@calls_router.get(
    "/v1/devices/{device}/{variable}",
    summary="Read a variable",
    response_model=schemas.VariableValue,
    responses={**errors(400, 401, 403, 404, 408), 200: _RAW_VALUE},
)
async def read_variable(
    request: Request,
    actor: Caller,
    device: str,
    variable: str,
    format: Annotated[Literal["json", "raw"] | None, _FORMAT] = None,
) -> schemas.VariableValue | Response:
    return await _read(request, actor, device, variable, None, raw=format == "raw")


@calls_router.get(
    "/v1/products/{product}/devices/{device}/{variable}",
    summary="Read a variable of a product device",
    response_model=schemas.VariableValue,
    responses={**errors(400, 401, 403, 404, 408), 200: _RAW_VALUE},
)
async def read_product_variable(
    request: Request,
    actor: Caller,
    product: str,
    device: str,
    variable: str,
    *,
    format: Annotated[Literal["json", "raw"] | None, _FORMAT] = None,
) -> schemas.VariableValue | Response:
    return await _read(request, actor, device, variable, product, raw=format == "raw")


async def _read(
    request: Request, actor: Actor, device: str, variable: str, product: str | None, *, raw: bool
) -> schemas.VariableValue | Response:
    if product is not None:
        device = (await _view(request, actor, device, product)).record.id  # refused before the device is asked
    calls = app(request).calls
    assert calls is not None
    found, data, value = await calls.variable_read(actor, device, variable)
    if raw:
        # As Particle answers ?format=raw: a number as its digits, a string as the device sent its bytes.
        content = data if value is None or isinstance(value, str) else _number_text(value).encode()
        return Response(content, media_type="text/plain; charset=utf-8")
    device_id = found.id
    record = app(request).devices.shown(found).record  # a connected device's last_heard and product: its session's
    return schemas.VariableValue(
        cmd="VarReturn",
        name=variable,
        result=value if value is not None else data.decode("utf-8", "replace"),
        coreInfo=schemas.CoreInfo(
            last_app="",
            last_heard=iso(record.last_heard),
            connected=True,
            last_handshake_at=iso(record.last_heard),
            deviceID=device_id,
            product_id=record.product_id,
        ),
    )


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


@calls_router.post(
    "/v1/provisioning/{device_id}",
    tags=["keys"],
    summary="Register a device's public key",
    responses=errors(401, 403, 404, 409, *BODY_ERRORS),
    openapi_extra=request_body(schemas.KeyProvision, required=True),
)
async def provision_key(request: Request, actor: Caller, device_id: str) -> schemas.Provisioned:
    """What `particle keys send` and `keys doctor` call (docs/keys.md "Who may do what")."""
    params = await body(request)
    product_id = _product_id(params.get("product_id"))
    # `particle keys send` names the key's kind: "rsa" for Gen 2 (TCP), "ecc" for the Electron and Gen 3 (UDP).
    algorithm = str(params.get("algorithm", "rsa")).lower()
    if algorithm not in ("rsa", "ecc"):
        raise InvalidInputError(f"algorithm {algorithm[:16]!r}: use rsa or ecc", "algorithm")
    pem = params.get("publicKey")
    if not isinstance(pem, str) or not pem.strip():
        raise InvalidInputError("publicKey (PEM) is required", "publicKey")
    if is_ec_key(pem.encode()) != (algorithm == "ecc"):
        kind = "an EC" if algorithm == "ecc" else "an RSA"
        raise InvalidInputError(f"algorithm {algorithm} needs {kind} public key", "publicKey")
    try:
        der = device_public_key_der(pem.encode())
    except KeyFormatError as exc:
        raise InvalidInputError(f"the public key cannot be used: {exc}", "publicKey") from None
    code = params.get("claim_code")
    done = await app(request).keys.provision(
        actor, device_id, der, product_id=product_id, claim_code=code if isinstance(code, str) else None
    )
    return schemas.Provisioned(
        ok=True, id=done.record.id, key_fingerprint=done.record.key_fingerprint, created=done.created
    )
