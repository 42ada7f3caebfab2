"""Firmware updates over the Cloud API: `PUT /v1/devices/:id` multipart as `particle flash` sends it (chunked
transfer encoding included), uploads, rollouts and job states, and the refusals (protocol.md §7)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from cyan.app import Actor
from cyan.cloud.models import DeviceRecord
from cyan.cloud.ota import UpdateConfig
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import ServerConfig
from cyan.protocol.binary import build_module
from cyan.service import Service, ensure_server_keys
from cyan.sim import SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.testing import fixed_device_key, loopback_settings

ALICE, BOB = "alice@example.com", "bob@example.com"
PASSWORD = "correct horse"
ONLINE, OFFLINE, BOBS = f"{1:024x}", f"{2:024x}", f"{3:024x}"


def _image(version: int = 2, platform: int = 6, size: int = 6000) -> bytes:
    body = hashlib.sha256(b"%d" % version).digest() * (size // 32)
    return build_module(body, platform_id=platform, product_id=77, product_version=version)


class World:
    def __init__(self, service: Service, client: httpx.AsyncClient, device: VirtualDevice) -> None:
        self.service = service
        self.client = client
        self.device = device
        self.headers: dict[str, dict[str, str]] = {}

    async def job(self, job_id: int, user: str = ALICE) -> dict[str, Any]:
        response = await self.client.get(f"/v1/updates/{job_id}", headers=self.headers[user])
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def finished(self, job_id: int, timeout: float = 20.0) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while (job := await self.job(job_id))["state"] not in ("succeeded", "failed"):
                await asyncio.sleep(0.05)
            return job

        return await asyncio.wait_for(poll(), timeout)


def _run(tmp_path: Path, scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        settings = loopback_settings(tmp_path / "data")
        service = Service(settings, ensure_server_keys(settings), protocol=ServerConfig(describe_delay=0.2))
        service.updates.config = UpdateConfig(start_delay=0.05, retry_delay=0.1, reconnect_timeout=10)
        await service.start()
        device = VirtualDevice(
            VirtualDeviceSpec(ONLINE, fixed_device_key(1)),
            service.keys.private_key.public_key(),
            config=SimConfig(backoff_scale=0.05),
        )
        try:
            for user in (ALICE, BOB):
                await service.app.accounts.create_user(Actor.operator(), user, PASSWORD)
            for device_id, owner, key in ((ONLINE, ALICE, 1), (OFFLINE, ALICE, 2), (BOBS, BOB, 3)):
                der = public_key_der(fixed_device_key(key).public_key())
                record = DeviceRecord(id=device_id, owner=owner, public_key_der=der, key_fingerprint=fingerprint(der))
                await service.store.devices.add(record)
            device.start("127.0.0.1", service.device_server.port)
            await asyncio.wait_for(device.connected.wait(), 10)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}", timeout=20) as client:
                world = World(service, client, device)
                for user in (ALICE, BOB):
                    form = {"grant_type": "password", "username": user, "password": PASSWORD, "client_id": "CLI2"}
                    token = (await client.post("/oauth/token", data=form)).json()["access_token"]
                    world.headers[user] = {"Authorization": f"Bearer {token}"}
                await scenario(world)
        finally:
            await device.stop()
            await service.stop()

    asyncio.run(main())


def _multipart(filename: str, data: bytes) -> tuple[str, list[bytes]]:
    """The body `particle flash` sends: the file, then `latest`, in several pieces."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="latest"\r\n\r\ntrue\r\n--{boundary}--\r\n'
    pieces = [head] + [data[i : i + 1000] for i in range(0, len(data), 1000)] + [tail.encode()]
    return f"multipart/form-data; boundary={boundary}", pieces


async def _flash_chunked(w: World, device: str, filename: str, data: bytes, user: str = ALICE) -> httpx.Response:
    content_type, pieces = _multipart(filename, data)

    async def stream() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    headers = {**w.headers[user], "Content-Type": content_type}
    request = w.client.build_request("PUT", f"/v1/devices/{device}", content=stream(), headers=headers)
    assert request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in request.headers
    return await w.client.send(request)


def test_flash_with_chunked_multipart_as_the_particle_cli_sends_it(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        image = _image()
        response = await _flash_chunked(w, ONLINE, "app.bin", image)
        assert response.status_code == 200, response.text
        body = response.json()
        # The CLI needs `status` (or `message`), as Particle answers: {"id": ..., "status": "Update started"}.
        assert (body["ok"], body["id"], body["status"]) == (True, ONLINE, "Update started")
        assert body["firmware"] == hashlib.sha256(image).hexdigest()
        job = await w.finished(body["job"])
        assert (job["state"], job["verification"], job["progress"]) == ("succeeded", "hash", 1.0)
        assert (job["device_id"], job["bytes_sent"], job["total_bytes"]) == (ONLINE, len(image), len(image))
        assert job["created_by"] == ALICE
        assert w.device.image == image
        history = (await w.client.get(f"/v1/devices/{ONLINE}/updates", headers=w.headers[ALICE])).json()
        assert [j["id"] for j in history] == [body["job"]]
        # An ordinary multipart body (httpx's own encoder, with a length) works the same.
        again = await w.client.put(
            f"/v1/devices/{ONLINE}",
            files={"file": ("v3.bin", _image(3))},
            data={"latest": "true"},
            headers=w.headers[ALICE],
        )
        assert (await w.finished(again.json()["job"]))["state"] == "succeeded"
        assert w.device.image == _image(3)

    _run(tmp_path, scenario)


def test_an_offline_device_is_refused_as_particle_does_unless_the_update_is_queued(tmp_path: Path) -> None:
    """The Particle CLI prints "Flash success!" for any answer with a status: an offline device gets an error it
    shows instead, and nothing is started; `queue=true` asks for the update at its next connection."""

    async def scenario(w: World) -> None:
        refused = await _flash_chunked(w, OFFLINE, "app.bin", _image())
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"] == "Device is not connected"
        assert "nothing was sent" in refused.json()["error_description"]
        assert "queue=true" in refused.json()["error_description"]
        assert (await w.client.get(f"/v1/devices/{OFFLINE}/updates", headers=w.headers[ALICE])).json() == []
        files = {"file": ("app.bin", _image(), "application/octet-stream")}
        queued = await w.client.put(
            f"/v1/devices/{OFFLINE}", files=files, data={"queue": "true"}, headers=w.headers[ALICE]
        )
        body = queued.json()
        assert body["status"].startswith("Update queued")
        assert (await w.job(body["job"]))["state"] == "queued"

    _run(tmp_path, scenario)


def test_refusals_are_clear_and_send_nothing(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        good = _image()
        corrupt = bytearray(good)
        corrupt[100] ^= 0x40
        for data, reason, words in (
            (_image(platform=8), "wrong_platform", "built for P1 (platform 8), the device is a Photon (platform 6)"),
            (bytes(corrupt), "crc_mismatch", "corrupt: the CRC-32 stored at the end is"),
            (good[: len(good) // 2], "truncated", "truncated: the module header says"),
            (_image(size=300_000), "too_large", "takes at most 262144"),
        ):
            response = await _flash_chunked(w, ONLINE, "bad.bin", data)
            assert response.status_code == 400, response.text
            body = response.json()
            assert (body["ok"], body["error"], body["reason"]) == (False, "Invalid firmware", reason)
            assert words in body["error_description"]
        assert (await w.client.get(f"/v1/devices/{ONLINE}/updates", headers=w.headers[ALICE])).json() == []
        assert w.device.updates_applied == 0
        assert w.device.update_failures == {}
        no_file = await w.client.put(f"/v1/devices/{ONLINE}", files={"other": ("x", b"x")}, headers=w.headers[ALICE])
        assert "`file`" in no_file.json()["error_description"]

    _run(tmp_path, scenario)


def test_rollouts_and_who_sees_what(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, a, b = w.client, w.headers[ALICE], w.headers[BOB]
        uploaded = await c.post("/v1/firmware", files={"file": ("app.bin", _image(4))}, headers=a)
        firmware = uploaded.json()
        assert (firmware["platform"], firmware["module_function"], firmware["product_version"]) == (
            "Photon (platform 6)",
            "user_part",
            4,
        )
        sha = firmware["sha256"]
        await w.service.store.updates.add_to_group("kitchen", [ONLINE, BOBS])
        rollout = (await c.post("/v1/updates", json={"firmware": sha, "group": "kitchen"}, headers=a)).json()
        # Bob's device is in the group, but not Alice's to update: it is not even named to her.
        assert rollout["skipped"] == []
        assert BOBS not in str(rollout)
        (job,) = rollout["jobs"]
        assert (await w.finished(job["id"]))["state"] == "succeeded"
        everything = (
            await c.post("/v1/updates", json={"firmware": sha, "all": True, "concurrency": 1}, headers=a)
        ).json()
        assert sorted(j["device_id"] for j in everything["jobs"]) == [ONLINE, OFFLINE]
        listed = (await c.get("/v1/updates", params={"rollout": everything["rollout"]}, headers=a)).json()
        assert sorted(j["device_id"] for j in listed) == [ONLINE, OFFLINE]
        assert (await c.get("/v1/updates", headers=b)).json() == []
        assert (await c.get(f"/v1/updates/{job['id']}", headers=b)).status_code == 404
        assert (await c.get(f"/v1/devices/{ONLINE}/updates", headers=b)).status_code == 404
        (online_job,) = [j for j in everything["jobs"] if j["device_id"] == ONLINE]
        assert (await w.finished(online_job["id"]))["state"] == "succeeded"  # else: "Update in progress"
        picked = await c.post("/v1/updates", json={"firmware": sha, "devices": [ONLINE]}, headers=a)
        assert picked.status_code == 200, picked.text
        for payload, status in (
            ({"firmware": "00" * 32, "all": True}, 404),
            ({"all": True}, 400),
            ({"firmware": sha}, 400),
            ({"firmware": sha, "group": "empty"}, 400),
            ({"firmware": sha, "devices": [BOBS]}, 404),
            ({"firmware": sha, "devices": [ONLINE], "mode": "warp"}, 400),
        ):
            response = await c.post("/v1/updates", json=payload, headers=a)
            assert response.status_code == status, (payload, response.text)
        assert (await c.get("/v1/updates/12345", headers=a)).status_code == 404

    _run(tmp_path, scenario)
