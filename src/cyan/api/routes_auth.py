"""OAuth tokens and the user (what `particle login`, `whoami`, `logout` and `token ...` send)."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from cyan.cloud.auth import DEFAULT_TOKEN_LIFETIME, InvalidCredentialsError
from cyan.cloud.models import AccessToken

from ._requests import body, context, require_token
from .errors import ApiError

router = APIRouter()
Token = Annotated[AccessToken, Depends(require_token)]


def _client_id(request: Request, params: dict[str, Any]) -> str:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value).decode().partition(":")[0] or "unknown"
        except ValueError:
            return "unknown"
    return str(params.get("client_id") or "unknown")


@router.post("/oauth/token", tags=["authentication"], summary="Create an access token (password grant)")
async def create_token(request: Request) -> dict[str, Any]:
    """Any OAuth client id is accepted: `CLI2` (particle login), `user` (particle token create),
    `particle` (particle-api-js). Client secrets are not checked; the user's password is."""
    params = await body(request)
    grant = params.get("grant_type")
    if grant != "password":
        raise ApiError(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported; use password")
    username, password = params.get("username"), params.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        raise ApiError(400, "invalid_request", "username and password are required")
    expires_raw = params.get("expires_in", DEFAULT_TOKEN_LIFETIME)
    try:
        expires_in = int(expires_raw)
    except (TypeError, ValueError):
        raise ApiError(400, "invalid_request", f"expires_in {expires_raw!r} is not a number of seconds") from None
    if expires_in < 0:
        raise ApiError(400, "invalid_request", "expires_in cannot be negative")
    accounts = context(request).accounts
    try:
        user = await accounts.authenticate(username, password)
    except InvalidCredentialsError:
        raise ApiError(400, "invalid_grant", "User credentials are invalid") from None
    token, record = await accounts.issue_token(user.username, _client_id(request, params), expires_in or None)
    response: dict[str, Any] = {"token_type": "bearer", "access_token": token}
    if record.expires_at is not None:
        response["expires_in"] = expires_in
        response["expires_at"] = record.expires_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return response


@router.get("/v1/user", tags=["user"], summary="The current user")
async def current_user(request: Request, token: Token) -> dict[str, Any]:
    devices = await context(request).cloud.store.list_devices(owner=token.username)
    return {
        "username": token.username,
        "subscription_ids": [],
        "account_info": {"first_name": "", "last_name": "", "company_name": "", "business_account": False},
        "team_invites": [],
        "wifi_device_count": len(devices),
        "cellular_device_count": 0,
        "scim_provisioned": False,
        "no_password": False,
        "mfa": {"enabled": False},
    }


@router.delete("/v1/access_tokens/current", tags=["authentication"], summary="Revoke the token in use")
async def revoke_current(request: Request, token: Token) -> dict[str, Any]:
    await context(request).accounts.revoke(request.state.token)
    return {"ok": True}


@router.delete("/v1/access_tokens/{token}", tags=["authentication"], summary="Revoke a token")
async def revoke_token(request: Request, token: str) -> dict[str, Any]:
    """Knowing the token is what authorises revoking it (`particle token revoke` sends no other
    credentials); nothing else can be done without a valid token."""
    if not await context(request).accounts.revoke(token):
        raise ApiError(404, "Not Found", "no such access token")
    return {"ok": True}
