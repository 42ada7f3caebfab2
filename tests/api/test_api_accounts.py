"""An account's own password and its removal, through the API as Particle's shapes them: the current password
proves it is the account's owner, every other token goes, and what went is in the audit trail."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from test_api_hardening import ADMIN, ALICE, BOB, DEVICE, PASSWORD, _run

from cyan.service import Service


async def _login(client: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    return await client.post("/oauth/token", data={"grant_type": "password", "username": user, "password": password})


def test_a_password_change_needs_the_current_one_and_revokes_the_other_tokens(tmp_path: Path) -> None:
    async def scenario(service: Service, client: httpx.AsyncClient, auth: dict[str, dict[str, str]]) -> None:
        other = (await _login(client, ALICE, PASSWORD)).json()["access_token"]
        wrong = await client.put(
            "/v1/user", json={"password": "a new password", "current_password": "not it"}, headers=auth[ALICE]
        )
        assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
        short = await client.put(
            "/v1/user", json={"password": "short", "current_password": PASSWORD}, headers=auth[ALICE]
        )
        assert (short.status_code, short.json()["field"]) == (400, "password")
        changed = await client.put(
            "/v1/user", json={"password": "a new password", "current_password": PASSWORD}, headers=auth[ALICE]
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["tokens_revoked"] == 1
        # The token in use stays; the other one, and the old password, are gone.
        assert (await client.get("/v1/user", headers=auth[ALICE])).status_code == 200
        assert (await client.get("/v1/user", headers={"Authorization": f"Bearer {other}"})).status_code == 401
        assert (await _login(client, ALICE, PASSWORD)).status_code == 400
        assert (await _login(client, ALICE, "a new password")).status_code == 200
        trail = [e.action for e in await service.store.audit.recent(subject=ALICE)]
        assert "password_changed" in trail
        assert trail.count("login_failed") == 2  # the wrong current password and the old one after the change

    _run(tmp_path, scenario)


def test_an_account_removes_itself_with_its_password(tmp_path: Path) -> None:
    async def scenario(service: Service, client: httpx.AsyncClient, auth: dict[str, dict[str, str]]) -> None:
        missing = await client.request("DELETE", "/v1/user", json={}, headers=auth[ALICE])
        assert (missing.status_code, missing.json()["field"]) == (400, "password")
        wrong = await client.request("DELETE", "/v1/user", json={"password": "not it"}, headers=auth[ALICE])
        assert wrong.status_code == 400
        assert (await client.get("/v1/user", headers=auth[ALICE])).status_code == 200
        gone = await client.request("DELETE", "/v1/user", json={"password": PASSWORD}, headers=auth[ALICE])
        assert gone.status_code == 200, gone.text
        assert (await client.get("/v1/user", headers=auth[ALICE])).status_code == 401
        record = await service.store.devices.get(DEVICE)
        assert record is not None
        assert record.owner is None  # released, still registered with its key
        assert record.public_key_der is not None
        # Another account is untouched.
        assert (await client.get("/v1/user", headers=auth[BOB])).status_code == 200

    _run(tmp_path, scenario)


def test_a_login_hands_out_a_refresh_token_that_is_spent_by_its_use(tmp_path: Path) -> None:
    async def scenario(service: Service, client: httpx.AsyncClient, auth: dict[str, dict[str, str]]) -> None:
        login = await client.post(
            "/oauth/token",
            data={"grant_type": "password", "username": ALICE, "password": PASSWORD, "expires_in": 60},
            auth=("particle", "particle"),
        )
        assert login.status_code == 200, login.text
        first = login.json()
        assert set(first) == {"token_type", "access_token", "expires_in", "expires_at", "refresh_token"}
        renewed = await client.post(
            "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
        )
        assert renewed.status_code == 200, renewed.text
        second = renewed.json()
        assert second["refresh_token"] != first["refresh_token"]
        assert second["expires_in"] == 90 * 24 * 3600  # the default, as for a login
        me = await client.get("/v1/user", headers={"Authorization": f"Bearer {second['access_token']}"})
        assert me.json()["username"] == ALICE
        listed = (await client.get("/v1/access_tokens", headers=auth[ALICE])).json()
        assert {t["client"] for t in listed} >= {"particle"}  # the refreshed token keeps its client
        replay = await client.post(
            "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
        )
        assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
        assert "refresh token" in replay.json()["error_description"]
        for bad in ({}, {"refresh_token": ""}, {"refresh_token": ["x"]}):
            missing = await client.post("/oauth/token", json={"grant_type": "refresh_token", **bad})
            assert missing.status_code == 400, missing.text
        unknown = await client.post("/oauth/token", data={"grant_type": "client_credentials"})
        assert "use password or refresh_token" in unknown.json()["error_description"]

    _run(tmp_path, scenario)


def test_a_spent_refresh_token_sent_again_revokes_every_token_rotated_from_it(tmp_path: Path) -> None:
    """RFC 9700 §4.14.2: either the client or a thief holds the newer tokens, so both lose them; the answer is the
    one any invalid refresh token gets."""

    async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
        return await client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token})

    async def me(client: httpx.AsyncClient, token: str) -> int:
        return (await client.get("/v1/user", headers={"Authorization": f"Bearer {token}"})).status_code

    async def scenario(service: Service, client: httpx.AsyncClient, auth: dict[str, dict[str, str]]) -> None:
        first = (await _login(client, ALICE, PASSWORD)).json()
        other = (await _login(client, ALICE, PASSWORD)).json()  # another login: another family
        second = (await refresh(client, first["refresh_token"])).json()  # the client rotates...
        third = (await refresh(client, second["refresh_token"])).json()  # ... and again
        assert [await me(client, t["access_token"]) for t in (first, second, third)] == [200, 200, 200]
        unknown = await refresh(client, "0" * 40)
        assert unknown.status_code == 400

        replay = await refresh(client, first["refresh_token"])  # a copy of the first, spent, comes back
        assert (replay.status_code, replay.json()) == (400, unknown.json())
        assert [await me(client, t["access_token"]) for t in (first, second, third)] == [401, 401, 401]
        newest = await refresh(client, third["refresh_token"])
        assert (newest.status_code, newest.json()) == (400, unknown.json())
        # The other login, and the account's other tokens, are untouched.
        assert await me(client, other["access_token"]) == 200
        assert (await client.get("/v1/user", headers=auth[ALICE])).status_code == 200
        assert (await refresh(client, other["refresh_token"])).status_code == 200
        audit = (await client.get("/v1/audit", headers=auth[ADMIN])).json()
        reused = [e for e in audit if e["action"] == "refresh_token_reused"]
        assert len(reused) == 1
        assert reused[0]["subject"] == ALICE
        assert first["refresh_token"] not in str(audit)

        # Two refreshes of one token at once: one gets tokens, the other is a reuse, which revokes them.
        login = (await _login(client, BOB, PASSWORD)).json()
        raced = await asyncio.gather(*(refresh(client, login["refresh_token"]) for _ in range(2)))
        assert sorted(r.status_code for r in raced) == [200, 400]
        [won] = [r.json() for r in raced if r.status_code == 200]
        assert await me(client, won["access_token"]) == 401
        assert (await refresh(client, won["refresh_token"])).status_code == 400
        # Whatever is sent as a token: refused, never a failure of the server (half a surrogate pair is not JSON).
        for odd in ("\ud800", "é" * 40, "x" * 513, "0" * 512):
            body = json.dumps({"grant_type": "refresh_token", "refresh_token": odd})  # a lone surrogate escaped
            sent = await client.post("/oauth/token", content=body, headers={"Content-Type": "application/json"})
            assert sent.status_code == 400, sent.text
            assert sent.json()["error"] == ("invalid_request" if odd == "\ud800" else "invalid_grant")

    _run(tmp_path, scenario)
