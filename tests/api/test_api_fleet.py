"""The fleet routes (docs/api.md "The fleet"): counts and the device list by visibility, server-side search and
paging, holding and stopping update jobs (audited), tokens by hash, the server key file; and the console and
the docs served from the package, with nothing loaded from elsewhere."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from cyan.app import Actor
from cyan.cloud.models import DeviceRecord, Role
from cyan.keys import fingerprint, public_key_der
from cyan.protocol.binary import build_module
from cyan.service import Service, ensure_server_keys
from cyan.testing import fixed_device_key, loopback_settings

ALICE, BOB, ADMIN = "alice@example.com", "bob@example.com", "ops@example.com"
PASSWORD = "correct horse"


def _id(n: int) -> str:
    return f"{n:024x}"


Client = httpx.AsyncClient
Headers = dict[str, dict[str, str]]


def _run(tmp_path: Path, scenario: Callable[[Service, Client, Headers], Awaitable[None]]) -> None:
    async def main() -> None:
        settings = loopback_settings(tmp_path / "data")
        service = Service(settings, ensure_server_keys(settings))
        await service.start()
        try:
            operator = Actor.operator()
            await service.app.accounts.create_user(operator, ALICE, PASSWORD)
            await service.app.accounts.create_user(operator, BOB, PASSWORD)
            await service.app.accounts.create_user(operator, ADMIN, PASSWORD, role=Role.ADMIN)
            der = public_key_der(fixed_device_key(1).public_key())
            # 30 devices: 1-20 alice's (photons), 21-29 bob's (P1s), 30 nobody's.
            await service.store.devices.add_many(
                [
                    DeviceRecord(
                        id=_id(n),
                        name=f"unit-{n:02d}",
                        owner=ALICE if n <= 20 else BOB if n < 30 else None,
                        public_key_der=der,
                        key_fingerprint=fingerprint(der),
                        platform_id=6 if n <= 20 else 8,
                    )
                    for n in range(1, 31)
                ]
            )
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}", timeout=20) as client:
                headers = {}
                for user in (ALICE, BOB, ADMIN):
                    token = (await service.app.accounts.create_token(operator, user)).token
                    headers[user] = {"Authorization": f"Bearer {token}"}
                await scenario(service, client, headers)
        finally:
            await service.stop()

    asyncio.run(main())


async def _json(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def test_counts_and_lists_show_only_what_each_caller_sees(tmp_path: Path) -> None:
    async def scenario(service: Service, client: Client, headers: Headers) -> None:
        alice = await _json(await client.get("/v1/fleet", headers=headers[ALICE]))
        assert (alice["devices"], alice["online"], alice["offline"], alice["unidentified_failures"]) == (
            20,
            0,
            20,
            None,
        )
        admin = await _json(await client.get("/v1/fleet", headers=headers[ADMIN]))
        assert admin["devices"] == 30
        assert admin["unidentified_failures"] == 0
        page = await _json(await client.get("/v1/fleet/devices?limit=5&offset=15", headers=headers[ALICE]))
        assert page["total"] == 20
        assert [d["id"] for d in page["devices"]] == [_id(n) for n in range(16, 21)]
        # Bob asking for alice's devices gets his own: the owner filter is an admin's.
        bob = await _json(await client.get(f"/v1/fleet/devices?owner={ALICE}", headers=headers[BOB]))
        assert {d["owner"] for d in bob["devices"]} == {BOB}
        found = await _json(await client.get(f"/v1/fleet/devices?owner={BOB}&q=unit-2", headers=headers[ADMIN]))
        assert [d["name"] for d in found["devices"]] == [f"unit-{n}" for n in range(21, 30)]
        ordered = await _json(
            await client.get("/v1/fleet/devices?sort=name&order=desc&limit=2&platform_id=6", headers=headers[ADMIN])
        )
        assert [d["name"] for d in ordered["devices"]] == ["unit-20", "unit-19"]
        assert ordered["devices"][0]["status"] == "offline"
        assert (await client.get("/v1/fleet/devices?status=asleep", headers=headers[ADMIN])).status_code == 400
        assert (await client.get("/v1/fleet/devices?limit=501", headers=headers[ADMIN])).status_code == 400
        await service.store.updates.add_to_group("porch", [_id(1), _id(21)])
        assert await _json(await client.get("/v1/fleet/groups", headers=headers[BOB])) == {"porch": 1}
        porch = await _json(await client.get("/v1/fleet/devices?group=porch", headers=headers[BOB]))
        assert [d["id"] for d in porch["devices"]] == [_id(21)]

    _run(tmp_path, scenario)


def test_jobs_are_paused_resumed_and_cancelled_by_who_may_flash_them(tmp_path: Path) -> None:
    async def scenario(service: Service, client: Client, headers: Headers) -> None:
        image = build_module(b"\x01" * 4000, platform_id=6, product_id=7, product_version=2)
        files = {"file": ("app.bin", image, "application/octet-stream")}
        sha = (await _json(await client.post("/v1/firmware", files=files, headers=headers[ALICE])))["sha256"]
        body = {"firmware": sha, "devices": [_id(1), _id(2)]}
        rollout = await _json(await client.post("/v1/updates", json=body, headers=headers[ALICE]))
        first, second = (job["id"] for job in rollout["jobs"])  # both queued: the devices are offline
        # Bob cannot see the jobs: 404, as for jobs that do not exist.
        assert (await client.post(f"/v1/updates/{first}/pause", headers=headers[BOB])).status_code == 404
        assert (await client.post(f"/v1/rollouts/{rollout['rollout']}/pause", headers=headers[BOB])).status_code == 404
        paused = await _json(await client.post(f"/v1/updates/{first}/pause", headers=headers[ALICE]))
        assert paused["state"] == "paused"
        assert (await client.post(f"/v1/updates/{first}/pause", headers=headers[ALICE])).status_code == 409
        held = await _json(await client.post(f"/v1/rollouts/{rollout['rollout']}/pause", headers=headers[ALICE]))
        assert [j["id"] for j in held["changed"]] == [second]
        assert held["skipped"] == [{"id": first, "why": "it is paused"}]
        resumed = await _json(await client.post(f"/v1/rollouts/{rollout['rollout']}/resume", headers=headers[ADMIN]))
        assert {j["state"] for j in resumed["changed"]} == {"queued"}
        cancelled = await _json(await client.post(f"/v1/updates/{second}/cancel", headers=headers[ALICE]))
        assert (cancelled["state"], cancelled["reason"]) == ("failed", "cancelled")
        assert (await client.post(f"/v1/updates/{second}/resume", headers=headers[ALICE])).status_code == 409
        assert (await client.post(f"/v1/updates/{second}/reboot", headers=headers[ALICE])).status_code == 404
        audit = await _json(await client.get(f"/v1/audit?device={_id(1)}", headers=headers[ALICE]))
        assert [e["action"] for e in audit][:3] == ["flash_resumed", "flash_paused", "flash_started"]
        assert audit[0]["actor"] == ADMIN
        # A resumed job is worked on again: still queued, waiting for its device.
        assert (await _json(await client.get(f"/v1/updates/{first}", headers=headers[ALICE])))["state"] == "queued"

    _run(tmp_path, scenario)


def test_tokens_by_hash_and_the_server_key_file(tmp_path: Path) -> None:
    async def scenario(service: Service, client: Client, headers: Headers) -> None:
        created = await _json(
            await client.post(f"/v1/users/{BOB}/tokens", json={"expires_in": 0}, headers=headers[ADMIN])
        )
        assert created["expires_at"] is None
        assert created["hash"] == hashlib.sha256(created["access_token"].encode()).hexdigest()
        assert (await client.post(f"/v1/users/{BOB}/tokens", headers=headers[ALICE])).status_code == 404
        mine = await _json(
            await client.get("/v1/access_tokens", headers={"Authorization": f"Bearer {created['access_token']}"})
        )
        assert created["hash"] in [t["hash"] for t in mine]
        assert (await client.get(f"/v1/access_tokens?username={BOB}", headers=headers[ALICE])).status_code == 404
        gone = f"/v1/users/{BOB}/tokens/{created['hash']}"
        assert (await client.delete(gone, headers=headers[ALICE])).status_code == 404
        await _json(await client.delete(gone, headers=headers[ADMIN]))
        assert (
            await client.get("/v1/user", headers={"Authorization": f"Bearer {created['access_token']}"})
        ).status_code == 401
        key = await _json(await client.get("/v1/server/key", headers=headers[ALICE]))
        assert key["fingerprint"] == service.keys.fingerprint
        data = await client.get(key["key_file_url"], headers=headers[ALICE])
        assert data.status_code == 200
        assert len(data.content) == 512
        assert (await client.get("/v1/server/key/file")).status_code == 401

    _run(tmp_path, scenario)


def test_the_console_and_the_docs_load_nothing_from_elsewhere(tmp_path: Path) -> None:
    async def scenario(service: Service, client: Client, headers: Headers) -> None:
        page = await client.get("/")
        assert page.status_code == 200
        assert "script-src 'self'" in page.headers["content-security-policy"]
        docs = await client.get("/docs")
        assert docs.status_code == 200
        linked = re.findall(r'(?:src|href)="([^"]+)"', page.text + docs.text)
        assert linked
        for url in (u for u in linked if not u.startswith("#")):  # in-page links aside
            assert url.startswith("/"), url  # served here, not from a CDN
            assert (await client.get(url)).status_code == 200, url
        assert "/console/vendor/swagger-ui/swagger-ui-bundle.js" in docs.text
        assert (await client.get("/console/../pyproject.toml")).status_code == 404

    _run(tmp_path, scenario)
