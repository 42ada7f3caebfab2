"""Devices: list, get, rename, signal, claim, release, functions, variables, key provisioning."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyan.cloud.models import AccessToken, DeviceRecord
from cyan.cloud.ports import DeviceExistsError
from cyan.keys import KeyFormatError, check_device_public_key, fingerprint, load_public_key, public_key_der
from cyan.protocol.messages import MAX_FUNCTION_ARGUMENT

from . import routes_updates
from ._requests import body, context, require_token
from ._serialize import device_json, iso
from .errors import ApiError, permission_denied

router = APIRouter(tags=["devices"])
Token = Annotated[AccessToken, Depends(require_token)]
log = logging.getLogger("cyan.api")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
_DEVICE_ID = re.compile(r"^[0-9a-fA-F]{24}$")


def _product(product: str | None) -> int | None:
    if product is None:
        return None
    if not product.isdigit():
        raise ApiError(404, "Not Found", f"no product {product!r}: products are addressed by their numeric id")
    return int(product)


async def _device(request: Request, token: AccessToken, id_or_name: str, product: str | None = None) -> DeviceRecord:
    record = await context(request).cloud.find_device(id_or_name, owner=token.username)
    wanted = _product(product)
    if wanted is not None and wanted not in (record.product_id, record.platform_id):
        raise permission_denied(id_or_name)
    return record


# -- listing and reading ------------------------------------------------------------------------


@router.get("/v1/devices", summary="List your devices")
@router.get("/v1/products/{product}/devices", summary="List your devices of a product")
async def list_devices(request: Request, token: Token, product: str | None = None) -> Any:
    ctx = context(request)
    wanted = _product(product)
    records = await ctx.cloud.store.list_devices(owner=token.username)
    found = []
    for stored in records:
        record = await ctx.cloud.find_device(stored.id)  # the live record when connected
        if wanted is None or wanted in (record.product_id, record.platform_id):
            found.append(device_json(record, ctx.cloud, detail=False))
    if product is not None:
        return {"devices": found, "meta": {"total_pages": 1}}
    return found


@router.get("/v1/devices/{device}", summary="Get a device, with its functions and variables")
@router.get("/v1/products/{product}/devices/{device}", summary="Get a product device")
async def get_device(request: Request, token: Token, device: str, product: str | None = None) -> dict[str, Any]:
    record = await _device(request, token, device, product)
    return device_json(record, context(request).cloud, detail=True)


# -- changing -------------------------------------------------------------------------------------


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "on", "yes")


@router.put("/v1/devices/{device}", summary="Rename a device, signal it (rainbow LED), or flash it (multipart)")
@router.put("/v1/products/{product}/devices/{device}", summary="Rename, signal or flash a product device")
async def update_device(request: Request, token: Token, device: str, product: str | None = None) -> dict[str, Any]:
    params = await body(request)
    record = await _device(request, token, device, product)
    if params.get("__multipart__"):
        # `particle flash DEVICE app.bin` (protocol.md §7; routes_updates.py).
        return await routes_updates.flash(request, token, record)
    cloud = context(request).cloud
    if "name" in params:
        name = str(params["name"])
        if not _NAME.match(name):
            raise ApiError(400, "invalid_request", "a name is 1 to 63 letters, digits, '_' or '-'")
        try:
            # Save a copy first: the live record changes only once the name is known to be free.
            await cloud.store.save_device(replace(record, name=name))
        except DeviceExistsError:
            raise ApiError(400, "Name already in use", f"another device is already named {name!r}") from None
        record.name = name
        return {"id": record.id, "name": name, "updated_at": iso(datetime.now(UTC))}
    if "signal" in params:
        on = _truthy(params["signal"])
        await cloud.signal(record.id, on, owner=token.username)
        return {"id": record.id, "connected": True, "signaling": on}
    raise ApiError(400, "invalid_request", "nothing to change: give name or signal")


@router.post("/v1/devices", summary="Claim a registered device")
async def claim_device(request: Request, token: Token) -> dict[str, Any]:
    params = await body(request)
    device_id = str(params.get("id") or params.get("deviceID") or "").lower()
    if not _DEVICE_ID.match(device_id):
        raise ApiError(400, "invalid_request", "give the 24-hex-digit device id as id")
    cloud = context(request).cloud
    record = await cloud.store.get_device(device_id)
    if record is None:
        raise ApiError(
            404,
            "Device not found",
            f"device {device_id} is not registered here; send its public key first (particle keys send)",
        )
    if record.owner not in (None, token.username):
        raise permission_denied(device_id)
    live = await cloud.find_device(device_id)
    live.owner = token.username
    await cloud.store.save_device(live)
    cloud.owner_changed(live)
    log.info("device %s claimed by %s", device_id, token.username)
    return {"ok": True, "user_id": token.username, "id": device_id, "connected": cloud.online(device_id)}


@router.delete("/v1/devices/{device}", summary="Release a device from your account")
@router.delete("/v1/products/{product}/devices/{device}", summary="Release a product device")
async def release_device(request: Request, token: Token, device: str, product: str | None = None) -> dict[str, Any]:
    record = await _device(request, token, device, product)
    cloud = context(request).cloud
    record.owner = None
    await cloud.store.save_device(record)
    cloud.owner_changed(record)
    log.info("device %s released by %s", record.id, token.username)
    return {"ok": True}


# -- functions and variables ----------------------------------------------------------------------


@router.post("/v1/devices/{device}/{function}", summary="Call a function")
@router.post("/v1/products/{product}/devices/{device}/{function}", summary="Call a function of a product device")
async def call_function(
    request: Request, token: Token, device: str, function: str, product: str | None = None
) -> dict[str, Any]:
    params = await body(request)
    argument = params.get("arg", params.get("args", ""))
    argument = "" if argument is None else str(argument)
    if len(argument.encode()) > MAX_FUNCTION_ARGUMENT:
        raise ApiError(400, "invalid_request", f"the argument is over {MAX_FUNCTION_ARGUMENT} bytes")
    record = await _device(request, token, device, product)
    value = await context(request).cloud.call_function(record.id, function, argument, owner=token.username)
    return {"id": record.id, "name": record.name, "connected": True, "return_value": value}


@router.get("/v1/devices/{device}/{variable}", summary="Read a variable")
@router.get("/v1/products/{product}/devices/{device}/{variable}", summary="Read a variable of a product device")
async def read_variable(
    request: Request, token: Token, device: str, variable: str, product: str | None = None
) -> dict[str, Any]:
    record = await _device(request, token, device, product)
    raw, value = await context(request).cloud.read_variable(record.id, variable, owner=token.username)
    result: Any = value if value is not None else raw.decode("utf-8", "replace")
    return {
        "cmd": "VarReturn",
        "name": variable,
        "result": result,
        "coreInfo": {
            "last_app": "",
            "last_heard": iso(record.last_heard),
            "connected": True,
            "last_handshake_at": iso(record.last_heard),
            "deviceID": record.id,
            "product_id": record.product_id,
        },
    }


# -- keys ---------------------------------------------------------------------------------------


@router.post("/v1/provisioning/{device_id}", tags=["keys"], summary="Register a device's public key")
async def provision_key(request: Request, token: Token, device_id: str) -> dict[str, Any]:
    """What `particle keys send` and `keys doctor` call. A new device is registered to the caller; a
    device of the caller's gets the new key (and the change is logged); anyone else's is refused."""
    params = await body(request)
    device_id = device_id.lower()
    if not _DEVICE_ID.match(device_id):
        raise ApiError(400, "invalid_request", f"{device_id!r} is not a 24-hex-digit device id")
    algorithm = str(params.get("algorithm", "rsa")).lower()
    if algorithm != "rsa":
        raise ApiError(400, "invalid_request", f"algorithm {algorithm!r}: Gen 2 devices use RSA keys")
    pem = params.get("publicKey")
    if not isinstance(pem, str) or not pem.strip():
        raise ApiError(400, "invalid_request", "publicKey (PEM) is required")
    try:
        public = load_public_key(pem.encode())
        check_device_public_key(public)
    except KeyFormatError as exc:
        raise ApiError(400, "invalid_request", f"the public key cannot be used: {exc}") from None
    der = public_key_der(public)
    cloud = context(request).cloud
    record = await cloud.store.get_device(device_id)
    if record is not None and record.owner not in (None, token.username):
        raise permission_denied(device_id)
    new_fingerprint = fingerprint(der)
    if record is None:
        record = DeviceRecord(id=device_id, owner=token.username, created_at=datetime.now(UTC))
    elif record.key_fingerprint and record.key_fingerprint != new_fingerprint:
        log.warning(
            "device %s: public key replaced by %s (%s -> %s)",
            device_id,
            token.username,
            record.key_fingerprint,
            new_fingerprint,
        )
    record.public_key_der = der
    record.key_fingerprint = new_fingerprint
    record.owner = token.username
    product_id = params.get("product_id")
    if isinstance(product_id, str) and product_id.isdigit():
        record.product_id = int(product_id)
    await cloud.store.save_device(record)
    return {"ok": True, "id": device_id, "key_fingerprint": new_fingerprint}
