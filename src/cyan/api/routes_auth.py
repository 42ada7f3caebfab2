"""OAuth tokens, the user, and accounts (what `particle login`, `whoami`, `logout` and `token ...` send; the
account routes are for the console and admins)."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any

from fastapi import Depends, Request

from cyan.app import Actor
from cyan.cloud.auth import DEFAULT_TOKEN_LIFETIME
from cyan.cloud.errors import InvalidInputError
from cyan.cloud.models import Role

from . import schemas
from ._requests import app, body, require_actor
from ._routing import IndexedRouter
from ._serialize import iso, render_account
from .errors import ApiError
from .schemas import BODY_ERRORS, errors, request_body

router = IndexedRouter()
Caller = Annotated[Actor, Depends(require_actor)]


def _client_id(request: Request, params: dict[str, Any]) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value).decode().partition(":")[0] or "unknown"
        except (ValueError, binascii.Error):
            return "unknown"
    return str(params.get("client_id") or "unknown")


def _expires_in(raw: Any) -> int:
    """A token's lifetime in seconds, as a client sends it (a number, or its text)."""
    if isinstance(raw, bool):
        raise InvalidInputError("expires_in is a number of seconds", "expires_in")
    if isinstance(raw, float):
        if not math.isfinite(raw) or raw != int(raw):
            raise InvalidInputError("expires_in is a whole number of seconds", "expires_in")
        return int(raw)
    if isinstance(raw, int):
        return raw
    text = str(raw).strip()
    if not text.isascii() or not text.lstrip("-").isdigit() or len(text) > 12:
        raise InvalidInputError(f"expires_in {text[:20]!r} is not a whole number of seconds", "expires_in")
    return int(text)


@router.post(
    "/oauth/token",
    tags=["authentication"],
    summary="Create an access token (password or refresh grant)",
    # The only shape with keys left out rather than null: expires_in and expires_at of a token that never expires.
    response_model_exclude_none=True,
    responses=errors(429, *BODY_ERRORS),
    openapi_extra=request_body(schemas.TokenRequest, required=True),
)
async def create_token(request: Request) -> schemas.Token:
    """Any OAuth client id is accepted: `CLI2` (particle login), `user` (particle token create),
    `particle` (particle-api-js). Client secrets are not checked; the user's password is."""
    params = await body(request)
    grant = params.get("grant_type")
    expires_in = _expires_in(params.get("expires_in", DEFAULT_TOKEN_LIFETIME))
    accounts = app(request).accounts
    if grant == "password":
        username, password = params.get("username"), params.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or not username:
            raise ApiError(400, "invalid_request", "username and password are required")
        address = request.client.host if request.client else ""
        issued = await accounts.login(
            username, password, _client_id(request, params), expires_in or None, address=address
        )
    elif grant == "refresh_token":
        refresh_token = params.get("refresh_token")
        if not isinstance(refresh_token, str) or not refresh_token:
            raise ApiError(400, "invalid_request", "refresh_token is required")
        # The new tokens keep the client they were first issued to unless the request names one.
        named = _client_id(request, params)
        issued = await accounts.refresh(
            refresh_token, expires_in or None, client_id=None if named == "unknown" else named
        )
    else:
        raise ApiError(
            400,
            "unsupported_grant_type",
            f"grant_type {str(grant)[:32]!r} is not supported; use password or refresh_token",
        )
    if issued.record.expires_at is None:
        return schemas.Token(token_type="bearer", access_token=issued.token, refresh_token=issued.refresh_token)
    return schemas.Token(
        token_type="bearer",
        access_token=issued.token,
        expires_in=expires_in,
        expires_at=iso(issued.record.expires_at),
        refresh_token=issued.refresh_token,
    )


@router.get("/v1/user", tags=["user"], summary="The current user", responses=errors(401))
async def current_user(request: Request, actor: Caller) -> schemas.UserProfile:
    devices = await app(request).devices.mine(actor)
    return schemas.UserProfile(
        username=actor.name,
        role=actor.role,
        subscription_ids=[],
        account_info=schemas.AccountInfo(first_name="", last_name="", company_name="", business_account=False),
        team_invites=[],
        wifi_device_count=len(devices),
        cellular_device_count=0,
        scim_provisioned=False,
        no_password=False,
        mfa=schemas.Mfa(enabled=False),
    )


@router.put(
    "/v1/user",
    tags=["user"],
    summary="Change your password (the current one is needed)",
    responses=errors(401, 429, *BODY_ERRORS),
    openapi_extra=request_body(schemas.PasswordChange, required=True),
)
async def change_password(request: Request, actor: Caller) -> schemas.PasswordChanged:
    """As Particle's API: `password` (the new one) and `current_password`. The other tokens of the account are
    revoked; the one in use stays."""
    params = await body(request)
    new, current = params.get("password"), params.get("current_password")
    if not isinstance(new, str) or not isinstance(current, str):
        raise ApiError(400, "invalid_request", "give password (the new one) and current_password")
    address = request.client.host if request.client else ""
    revoked = await app(request).accounts.change_password(
        actor, current, new, keep_token=request.state.token, address=address
    )
    return schemas.PasswordChanged(ok=True, message="Password changed", tokens_revoked=revoked)


@router.delete(
    "/v1/user",
    tags=["user"],
    summary="Remove your own account (the password is needed)",
    responses=errors(401, 429, *BODY_ERRORS),
    openapi_extra=request_body(schemas.AccountRemoval, required=True),
)
async def remove_own_account(request: Request, actor: Caller) -> schemas.Ok:
    """As Particle's API: `password`. The account's tokens go with it and its devices are released (they stay
    registered, with their keys)."""
    params = await body(request)
    password = params.get("password")
    if not isinstance(password, str):
        raise ApiError(400, "invalid_request", "give your password to remove your account", field="password")
    address = request.client.host if request.client else ""
    await app(request).accounts.remove_own_account(actor, password, address=address)
    return schemas.Ok(ok=True)


@router.delete(
    "/v1/access_tokens/current",
    tags=["authentication"],
    summary="Revoke the token in use",
    responses=errors(401, *BODY_ERRORS),
)
async def revoke_current(request: Request, actor: Caller) -> schemas.Ok:
    await app(request).accounts.revoke(request.state.token, actor=actor)
    return schemas.Ok(ok=True)


@router.delete("/v1/access_tokens/{token}", tags=["authentication"], summary="Revoke a token", responses=errors(404))
async def revoke_token(request: Request, token: str) -> schemas.Ok:
    """Knowing the token is what authorises revoking it (`particle token revoke` sends no other
    credentials); nothing else can be done without a valid token."""
    if not await app(request).accounts.revoke(token):
        raise ApiError(404, "Not Found", "no such access token")
    return schemas.Ok(ok=True)


def _role(value: Any) -> Role:
    try:
        return Role(str(value))
    except ValueError:
        raise InvalidInputError("role is admin or user", "role") from None


@router.get("/v1/users", tags=["user"], summary="Every account (admins)", responses=errors(401, 403))
async def list_users(request: Request, actor: Caller) -> list[schemas.Account]:
    return [render_account(u) for u in await app(request).accounts.users(actor)]


@router.post(
    "/v1/users",
    tags=["user"],
    summary="Create an account (admins)",
    responses=errors(401, 403, 409, *BODY_ERRORS),
    openapi_extra=request_body(schemas.NewAccount, required=True),
)
async def create_user(request: Request, actor: Caller) -> schemas.AccountChanged:
    params = await body(request)
    username, password = params.get("username"), params.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise InvalidInputError("username and password are required", "username")
    user = await app(request).accounts.create_user(actor, username, password, role=_role(params.get("role", "user")))
    return schemas.AccountChanged(ok=True, **dict(render_account(user)))


@router.put(
    "/v1/users/{username}",
    tags=["user"],
    summary="Change an account's role (admins)",
    responses=errors(401, 403, 404, *BODY_ERRORS),
    openapi_extra=request_body(schemas.RoleChange, required=True),
)
async def set_role(request: Request, actor: Caller, username: str) -> schemas.AccountChanged:
    params = await body(request)
    user = await app(request).accounts.set_role(actor, username, _role(params.get("role")))
    return schemas.AccountChanged(ok=True, **dict(render_account(user)))


@router.delete(
    "/v1/users/{username}",
    tags=["user"],
    summary="Remove an account (itself, or an admin)",
    responses=errors(401, 404, *BODY_ERRORS),
)
async def remove_user(request: Request, actor: Caller, username: str) -> schemas.Ok:
    await app(request).accounts.remove_user(actor, username)
    return schemas.Ok(ok=True)
