"""The Cloud API over real HTTP, with the service running and simulated devices connected."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cyan.app import Actor, NewDevice
from cyan.bus import InProcessBus
from cyan.cloud.auth import hash_token
from cyan.cloud.models import Role
from cyan.keys import encode_public_key_pem, fingerprint, public_key_der
from cyan.protocol import ServerConfig
from cyan.service import Service, ensure_server_keys
from cyan.sim import SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.testing import fixed_device_key, loopback_settings

ALICE, BOB, ADMIN = "alice@example.com", "bob@example.com", "admin@example.com"
OPERATOR = Actor.operator()
PASSWORD = "correct horse"
DEV1, DEV2, DEV3 = f"{1:024x}", f"{2:024x}", f"{3:024x}"


class World:
    def __init__(self, service: Service, client: httpx.AsyncClient) -> None:
        self.service = service
        self.client = client
        self.tokens: dict[str, str] = {}

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


async def _login(client: httpx.AsyncClient, user: str, **extra: Any) -> httpx.Response:
    form = {"grant_type": "password", "username": user, "password": PASSWORD, "client_id": "CLI2", **extra}
    return await client.post("/oauth/token", data=form, headers={"Authorization": "Bearer null"})


def _run(tmp_path: Path, scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        settings = loopback_settings(tmp_path / "data")
        service = Service(settings, ensure_server_keys(settings), protocol=ServerConfig(request_timeout=1.0))
        await service.start()
        devices: list[VirtualDevice] = []
        try:
            for user in (ALICE, BOB):
                await service.app.accounts.create_user(OPERATOR, user, PASSWORD)
            await service.app.accounts.create_user(OPERATOR, ADMIN, PASSWORD, role=Role.ADMIN)
            await service.app.devices.register(
                OPERATOR,
                [
                    NewDevice(device_id, public_key_der(fixed_device_key(key).public_key()), name=name, owner=owner)
                    for device_id, owner, name, key in (
                        (DEV1, ALICE, "kitchen", 1),
                        (DEV2, ALICE, "garage", 2),
                        (DEV3, BOB, "shed", 3),
                    )
                ],
            )
            for device_id, key in ((DEV1, 1), (DEV3, 3)):  # the garage stays offline
                device = VirtualDevice(
                    VirtualDeviceSpec(device_id, fixed_device_key(key)),
                    service.keys.private_key.public_key(),
                    config=SimConfig(backoff_scale=0.05),
                )
                device.start("127.0.0.1", service.device_server.port)
                devices.append(device)
            for device in devices:
                await asyncio.wait_for(device.connected.wait(), 10)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}", timeout=10) as client:
                world = World(service, client)
                for user in (ALICE, BOB, ADMIN):
                    response = await _login(client, user)
                    assert response.status_code == 200, response.text
                    world.tokens[user] = response.json()["access_token"]
                await scenario(world)
        finally:
            for device in devices:
                await device.stop()
            await service.stop()

    asyncio.run(main())


def test_login_and_token_sources(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c = w.client
        login = await _login(c, ALICE)
        body = login.json()
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 90 * 24 * 3600
        assert len(body["access_token"]) == 40
        assert (await _login(c, ALICE, password="wrong")).json() == {
            "ok": False,
            "error": "invalid_grant",
            "error_description": "User credentials are invalid",
        }
        assert (await _login(c, "nobody@example.com")).status_code == 400
        never = (await _login(c, ALICE, client_id="user", expires_in="0")).json()
        assert "expires_in" not in never
        token = w.tokens[ALICE]
        # The three ways to send a token.
        assert (await c.get("/v1/user", headers=w.auth(ALICE))).json()["username"] == ALICE
        assert (await c.get("/v1/user", params={"access_token": token})).status_code == 200
        called = await c.post(f"/v1/devices/{DEV1}/setArg", data={"access_token": token, "arg": "form"})
        assert called.json()["return_value"] == 4
        # Missing, wrong, and the literal "null" the CLI sends before it has a token.
        missing = await c.get("/v1/devices")
        assert (missing.status_code, missing.json()["error"]) == (401, "invalid_request")
        wrong = await c.get("/v1/devices", headers={"Authorization": "Bearer 1234"})
        assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_token")
        assert (await c.get("/v1/devices", headers={"Authorization": "Bearer null"})).status_code == 401
        # Only the token's hash is stored.
        assert await w.service.app.accounts.resolve(token) == Actor.account(ALICE, Role.USER)
        record = await w.service.store.accounts.get_token(hash_token(token))
        assert record is not None
        assert token not in record.token_hash
        assert await w.service.store.accounts.get_token(token) is None

    _run(tmp_path, scenario)


def test_expired_and_revoked_tokens(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, store = w.client, w.service.store
        issued = await w.service.app.accounts.create_token(OPERATOR, ALICE, 60)
        token, record = issued.token, issued.record
        record.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        await store.accounts.remove_token(record.token_hash)
        await store.accounts.add_token(record)
        assert (await c.get("/v1/user", headers={"Authorization": f"Bearer {token}"})).status_code == 401
        extra = (await _login(c, ALICE)).json()["access_token"]
        assert (await c.delete(f"/v1/access_tokens/{extra}")).json() == {"ok": True}
        assert (await c.get("/v1/user", params={"access_token": extra})).status_code == 401
        assert (await c.delete(f"/v1/access_tokens/{extra}")).status_code == 404
        current = await c.delete("/v1/access_tokens/current", headers=w.auth(ALICE))
        assert current.json() == {"ok": True}
        assert (await c.get("/v1/user", headers=w.auth(ALICE))).status_code == 401

    _run(tmp_path, scenario)


def test_devices_functions_variables_and_errors(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, a = w.client, w.auth(ALICE)
        listed = (await c.get("/v1/devices", headers=a)).json()
        assert {(d["id"], d["name"], d["connected"]) for d in listed} == {
            (DEV1, "kitchen", True),
            (DEV2, "garage", False),
        }
        detail = (await c.get("/v1/devices/kitchen", headers=a)).json()
        assert detail["functions"] == ["setArg"]
        assert detail["variables"] == {"counter": "int32", "lastArg": "string", "temp": "double"}
        assert detail["platform_id"] == 6
        call = await c.post("/v1/devices/kitchen/setArg", json={"args": "hello world"}, headers=a)
        assert call.json() == {"id": DEV1, "name": "kitchen", "connected": True, "return_value": 11}
        assert (await c.post("/v1/devices/kitchen/setArg", json={}, headers=a)).json()["return_value"] == 0
        read = (await c.get("/v1/devices/kitchen/temp", headers=a)).json()
        assert (read["cmd"], read["name"], read["result"], read["coreInfo"]["deviceID"]) == (
            "VarReturn",
            "temp",
            21.5,
            DEV1,
        )
        # ?format=raw: the value alone, as Particle answers it.
        raw = await c.get("/v1/devices/kitchen/temp", params={"format": "raw"}, headers=a)
        assert (raw.status_code, raw.headers["content-type"], raw.text) == (200, "text/plain; charset=utf-8", "21.5")
        assert (await c.get("/v1/devices/kitchen/counter", params={"format": "raw"}, headers=a)).text.isdigit()
        await c.post("/v1/devices/kitchen/setArg", json={"args": "plain text"}, headers=a)
        text = await c.get("/v1/devices/kitchen/lastArg", params={"format": "raw"}, headers=a)
        assert text.text == "plain text"
        odd = await c.get("/v1/devices/kitchen/temp", params={"format": "xml"}, headers=a)
        assert (odd.status_code, odd.json()["field"]) == (400, "format")
        errors = {
            "unknown function": (
                await c.post("/v1/devices/kitchen/nosuch", json={}, headers=a),
                404,
                "Function not found",
            ),
            "unknown variable": (
                await c.get("/v1/devices/kitchen/nosuch", headers=a),
                404,
                "Unknown Variable: nosuch",
            ),
            "offline": (await c.post("/v1/devices/garage/setArg", json={}, headers=a), 404, "Device is not connected"),
            "unknown device": (await c.get("/v1/devices/nosuch", headers=a), 404, "Not Found"),
            "argument too long": (
                await c.post("/v1/devices/kitchen/setArg", json={"args": "x" * 700}, headers=a),
                400,
                "invalid_request",
            ),
            "bad JSON": (
                await c.post(
                    "/v1/devices/kitchen/setArg", content=b"{", headers={**a, "Content-Type": "application/json"}
                ),
                400,
                "invalid_request",
            ),
        }
        for what, (response, status, error) in errors.items():
            assert (response.status_code, response.json()["error"]) == (status, error), what
        # The firmware ACKs a function it does not have and never answers: 408 once the cloud times out.
        record = w.service.cloud.live(DEV1)
        assert record is not None
        record.functions = []
        timed_out = await c.post("/v1/devices/kitchen/nosuch", json={}, headers=a)
        assert (timed_out.status_code, timed_out.json()["error"]) == (408, "Timed out.")

    _run(tmp_path, scenario)


def test_ownership(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, b = w.client, w.auth(BOB)
        assert [d["id"] for d in (await c.get("/v1/devices", headers=b)).json()] == [DEV3]
        # Someone else's device and one that does not exist are the same 404, on every route.
        nothing = await c.get("/v1/devices/" + "f" * 24, headers=b)
        for request in (
            c.get(f"/v1/devices/{DEV1}", headers=b),
            c.get("/v1/devices/kitchen", headers=b),
            c.post(f"/v1/devices/{DEV1}/setArg", json={}, headers=b),
            c.get(f"/v1/devices/{DEV1}/temp", headers=b),
            c.put(f"/v1/devices/{DEV1}", json={"name": "mine"}, headers=b),
            c.delete(f"/v1/devices/{DEV1}", headers=b),
            c.get(f"/v1/devices/{DEV1}/events", headers=b),
            c.post("/v1/devices", json={"id": DEV1}, headers=b),
        ):
            response = await request
            assert (response.status_code, response.json()["error"]) == (404, "Not Found")
            assert response.json()["error_description"].startswith("no device")
        assert nothing.status_code == 404
        pem = encode_public_key_pem(fixed_device_key(9).public_key()).decode()
        stolen = await c.post(
            f"/v1/provisioning/{DEV1}", data={"deviceID": DEV1, "publicKey": pem, "algorithm": "rsa"}, headers=b
        )
        assert stolen.status_code == 404
        stored = await w.service.store.devices.get(DEV1)
        assert stored is not None
        assert stored.key_fingerprint == fingerprint(public_key_der(fixed_device_key(1).public_key()))

    _run(tmp_path, scenario)


async def _stream(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], count: int
) -> AsyncIterator[dict[str, Any]]:
    async with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        got = 0
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name:
                yield {"name": name, **json.loads(line[6:])}
                got += 1
                if got == count:
                    return


def test_event_streams_and_publish(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, a, b = w.client, w.auth(ALICE), w.auth(BOB)

        async def collect(path: str, headers: dict[str, str], count: int) -> list[dict[str, Any]]:
            return [e async for e in _stream(c, path, headers, count)]

        mine = asyncio.create_task(collect("/v1/devices/events/vdev", a, 2))
        device = asyncio.create_task(collect(f"/v1/devices/{DEV1}/events", a, 1))
        bobs = asyncio.create_task(collect("/v1/devices/events/vdev", b, 1))
        await asyncio.sleep(0.3)
        published = await c.post(
            "/v1/devices/events", json={"name": "vdev/ping", "data": "hi", "private": True}, headers=a
        )
        assert published.json() == {"ok": True}
        events = await asyncio.wait_for(mine, 5)
        assert [(e["name"], e["data"], e["coreid"]) for e in events] == [
            ("vdev/ping", "hi", "api"),
            ("vdev/pong", "hi", DEV1),
        ]
        assert set(events[0]) == {"name", "data", "ttl", "published_at", "coreid"}
        assert [(e["name"], e["coreid"]) for e in await asyncio.wait_for(device, 5)] == [("vdev/pong", DEV1)]
        # Bob's stream sees none of Alice's events: only his own device's answer to his own ping.
        await c.post("/v1/devices/events", data={"name": "vdev/ping", "data": "bob"}, headers=b)
        assert [(e["name"], e["data"]) for e in await asyncio.wait_for(bobs, 5)] == [("vdev/ping", "bob")]
        bad = await c.post("/v1/devices/events", json={"data": "no name"}, headers=a)
        assert (bad.status_code, bad.json()["error"]) == (400, "invalid_request")

    _run(tmp_path, scenario)


def test_a_stream_that_lost_events_says_so_before_the_next(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, a = w.client, w.auth(ALICE)
        bus = w.service.bus
        assert isinstance(bus, InProcessBus)
        before = bus.subscriber_count
        reading = asyncio.create_task(_collect(c, "/v1/devices/events/burst", a, 2))
        async with asyncio.timeout(5):
            while bus.subscriber_count == before:
                await asyncio.sleep(0.01)
        # More than the stream's queue holds (1,000), published before its reader runs again.
        for n in range(1100):
            w.service.cloud.publish(f"burst/{n}", None, owner=ALICE)
        gap, first = await asyncio.wait_for(reading, 5)
        assert gap["name"] == "cyan/stream/gap"
        assert gap["data"].startswith("100 event(s) dropped")
        assert first["name"] == "burst/100"  # the oldest went

    _run(tmp_path, scenario)


async def _collect(client: httpx.AsyncClient, path: str, headers: dict[str, str], count: int) -> list[dict[str, Any]]:
    return [e async for e in _stream(client, path, headers, count)]


def test_rename_signal_claim_release_and_provisioning(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, a, b = w.client, w.auth(ALICE), w.auth(BOB)
        renamed = (await c.put("/v1/devices/kitchen", json={"name": "pantry"}, headers=a)).json()
        assert (renamed["id"], renamed["name"]) == (DEV1, "pantry")
        taken = await c.put("/v1/devices/pantry", json={"name": "garage"}, headers=a)
        assert (taken.status_code, taken.json()["error"]) == (409, "Already exists")
        # Whose name it is stays unsaid, so that names cannot be probed.
        assert DEV2 not in taken.json()["error_description"]
        assert (await c.put("/v1/devices/pantry", json={"signal": "1"}, headers=a)).json() == {
            "id": DEV1,
            "connected": True,
            "signaling": True,
        }
        flash = await c.put("/v1/devices/pantry", files={"file": ("fw.bin", b"\x00" * 16)}, headers=a)
        assert flash.status_code == 400  # not a firmware binary (tests/api/test_api_updates.py flashes)
        assert (flash.json()["error"], flash.json()["reason"]) == ("Invalid firmware", "not_a_module")
        assert (await c.delete("/v1/devices/pantry", headers=a)).json() == {"ok": True}
        assert [d["id"] for d in (await c.get("/v1/devices", headers=a)).json()] == [DEV2]
        # Released, it belongs to nobody: nobody but an admin, or the holder of a claim code for it, may take it.
        refused = await c.post("/v1/devices", json={"id": DEV1, "request_transfer": False}, headers=b)
        assert (refused.status_code, refused.json()["error"]) == (404, "Not Found")
        issued = await c.post("/v1/device_claims", json={"device_id": DEV1}, headers=w.auth(ADMIN))
        code = issued.json()["claim_code"]
        not_admin = await c.post("/v1/device_claims", json={"device_id": DEV2}, headers=b)
        assert not_admin.status_code == 403
        claimed = (await c.post("/v1/devices", json={"id": DEV1, "claim_code": code}, headers=b)).json()
        assert (claimed["ok"], claimed["id"], claimed["user_id"], claimed["connected"]) == (True, DEV1, BOB, True)
        # The device's events now go to its new owner.
        assert (await c.post(f"/v1/devices/{DEV1}/setArg", json={"args": "bob"}, headers=b)).json()["return_value"] == 3
        unknown = await c.post("/v1/devices", json={"id": "f" * 24}, headers=b)
        assert (unknown.status_code, unknown.json()["error"]) == (404, "Not Found")
        # particle keys send for an id the cloud has never seen: an admin's act, unless self-registration is on.
        new_id = "a" * 24
        pem = encode_public_key_pem(fixed_device_key(7).public_key()).decode()
        form = {"deviceID": new_id, "publicKey": pem, "order": "manual_1", "filename": "cli", "algorithm": "rsa"}
        assert (await c.post(f"/v1/provisioning/{new_id}", data=form, headers=a)).status_code == 404
        switched = await c.put("/v1/keys/policy", json={"self_registration": True}, headers=w.auth(ADMIN))
        assert switched.json()["self_registration"] is True
        sent = await c.post(f"/v1/provisioning/{new_id}", data=form, headers=a)
        assert sent.json() == {"ok": True, "id": new_id, "key_fingerprint": fingerprint(pem.encode()), "created": True}
        stored = await w.service.store.devices.get(new_id)
        assert stored is not None
        assert (stored.owner, stored.key_fingerprint) == (ALICE, fingerprint(pem.encode()))
        server_key_pem = encode_public_key_pem(w.service.keys.private_key.public_key()).decode()
        wrong_size = await c.post(f"/v1/provisioning/{new_id}", data={"publicKey": server_key_pem}, headers=a)
        assert wrong_size.status_code == 400
        assert "RSA-1024" in wrong_size.json()["error_description"]
        # An Argon's P-256 key, as `particle keys send` sends it for a UDP device (algorithm=ecc).
        argon = "b" * 24
        ec_pem = (
            ec.derive_private_key(0x77, ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        ecc = {"deviceID": argon, "publicKey": ec_pem, "order": "manual_2", "filename": "cli", "algorithm": "ecc"}
        sent = await c.post(f"/v1/provisioning/{argon}", data=ecc, headers=a)
        assert sent.json() == {
            "ok": True,
            "id": argon,
            "key_fingerprint": fingerprint(ec_pem.encode()),
            "created": True,
        }
        mislabelled = await c.post(f"/v1/provisioning/{argon}", data={**ecc, "algorithm": "rsa"}, headers=a)
        assert mislabelled.status_code == 400
        assert "RSA" in mislabelled.json()["error_description"]

    _run(tmp_path, scenario)


def test_openapi_is_served(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        spec = (await w.client.get("/openapi.json")).json()
        for path in (
            "/oauth/token",
            "/v1/devices",
            "/v1/devices/{device}/{function}",
            "/v1/devices/events/{prefix}",
            "/v1/provisioning/{device_id}",
        ):
            assert path in spec["paths"], path

    _run(tmp_path, scenario)


def test_device_details_notes_and_names_unique_per_owner(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, a, b, admin = w.client, w.auth(ALICE), w.auth(BOB), w.auth(ADMIN)
        kitchen = (await c.get("/v1/devices/kitchen", headers=a)).json()
        # What the device said in its Hello (3.1.0's system module version 3103), and when it said it.
        assert (kitchen["online"], kitchen["system_firmware_version"], kitchen["notes"]) == (True, "3.1.0", None)
        handshake = datetime.fromisoformat(kitchen["last_handshake_at"])
        assert datetime.now(UTC) - timedelta(minutes=1) < handshake <= datetime.fromisoformat(kitchen["last_heard"])
        garage = (await c.get("/v1/devices/garage", headers=a)).json()  # never connected
        assert (garage["last_handshake_at"], garage["system_firmware_version"]) == (None, None)

        # Bob may name his device as Alice named hers: each account sees its own.
        renamed = await c.put("/v1/devices/shed", json={"name": "kitchen"}, headers=b)
        assert renamed.status_code == 200, renamed.text
        assert (await c.get("/v1/devices/kitchen", headers=b)).json()["id"] == DEV3
        assert (await c.get("/v1/devices/kitchen", headers=a)).json()["id"] == DEV1
        called = await c.post("/v1/devices/kitchen/setArg", json={"args": "bob"}, headers=b)
        assert called.json()["id"] == DEV3
        # An admin sees both: the name alone is not enough, and the answer says what is.
        ambiguous = await c.get("/v1/devices/kitchen", headers=admin)
        assert ambiguous.status_code == 409
        assert "name the device by its id" in ambiguous.json()["error_description"]
        assert (await c.get(f"/v1/devices/{DEV3}", headers=admin)).json()["name"] == "kitchen"
        taken = await c.put("/v1/devices/garage", json={"name": "kitchen"}, headers=a)
        assert taken.status_code == 409

        # Notes: the owner's, shown with the device, and nobody else's to write.
        noted = await c.put("/v1/devices/kitchen", json={"notes": "Behind the fridge.\nFuse 3."}, headers=a)
        assert noted.status_code == 200, noted.text
        assert {k: v for k, v in noted.json().items() if k != "updated_at"} == {
            "id": DEV1,
            "name": "kitchen",
            "notes": "Behind the fridge.\nFuse 3.",
        }
        assert (await c.get("/v1/devices/kitchen", headers=a)).json()["notes"] == "Behind the fridge.\nFuse 3."
        listed = {d["id"]: d["notes"] for d in (await c.get("/v1/devices", headers=a)).json()}
        assert listed == {DEV1: "Behind the fridge.\nFuse 3.", DEV2: None}
        assert (await c.put(f"/v1/devices/{DEV1}", json={"notes": "mine"}, headers=b)).status_code == 404
        for bad in ("x" * 1001, 5, ["a"], "\x1b[2J"):
            refused = await c.put("/v1/devices/kitchen", json={"notes": bad}, headers=a)
            assert (refused.status_code, refused.json().get("field")) == (400, "notes"), refused.text
        both = await c.put("/v1/devices/garage", json={"name": "cellar", "notes": "damp"}, headers=a)
        assert (both.json()["name"], both.json()["notes"]) == ("cellar", "damp")
        cleared = await c.put("/v1/devices/cellar", json={"notes": ""}, headers=a)
        assert cleared.json()["notes"] is None
        trail = [e.action for e in await w.service.store.audit.recent(DEV2)]
        assert trail[:3] == ["notes_changed", "notes_changed", "renamed"]

    _run(tmp_path, scenario)
