"""Webhooks and device vitals over the Cloud API, end to end: the service on loopback, simulated devices that
publish and subscribe, and a real HTTP receiver (tests/hook_support.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cyan.app import Actor, NewDevice
from cyan.cloud.models import Role
from cyan.config import Settings
from cyan.keys import public_key_der
from cyan.protocol import DEVICE_OS_0_6_1, DEVICE_OS_3_1_0, ServerConfig, Subscription, SubscriptionScope
from cyan.service import Service, ensure_server_keys
from cyan.sim import AppSpec, SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.testing import fixed_device_key, loopback_settings
from hook_support import receiver

ALICE, BOB, ADMIN = "alice@example.com", "bob@example.com", "admin@example.com"
OPERATOR = Actor.operator()
PASSWORD = "correct horse"
KITCHEN, GARAGE, SHED = f"{1:024x}", f"{2:024x}", f"{3:024x}"
#: What the devices of the webhook tests listen to: the answers to their hooks, and each other's readings.
LISTENING = AppSpec(
    subscriptions=(
        Subscription("hook-response/temp", SubscriptionScope.MY_DEVICES),
        Subscription("hook-error/", SubscriptionScope.MY_DEVICES),
        Subscription("temp/", SubscriptionScope.MY_DEVICES),
    ),
    periodic=(),
)
#: Bob's device listens to everyone's hook events it may see (public ones of anybody).
FIREHOSE = AppSpec(subscriptions=(Subscription("hook-", SubscriptionScope.ALL_DEVICES),), periodic=())


@dataclass
class World:
    service: Service
    client: httpx.AsyncClient
    devices: dict[str, VirtualDevice]
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


def _run(tmp_path: Path, scenario: Callable[[World], Awaitable[None]], *, allowed: str = "127.0.0.0/8") -> None:
    async def main() -> None:
        settings = loopback_settings(tmp_path / "data", hook_allowed_networks=allowed)
        service = Service(settings, ensure_server_keys(settings), protocol=ServerConfig(request_timeout=2.0))
        await service.start()
        devices: dict[str, VirtualDevice] = {}
        try:
            for user in (ALICE, BOB):
                await service.app.accounts.create_user(OPERATOR, user, PASSWORD)
            await service.app.accounts.create_user(OPERATOR, ADMIN, PASSWORD, role=Role.ADMIN)
            specs = [
                (KITCHEN, ALICE, "kitchen", 1, DEVICE_OS_3_1_0, LISTENING),
                (GARAGE, ALICE, "garage", 2, DEVICE_OS_0_6_1, LISTENING),
                (SHED, BOB, "shed", 3, DEVICE_OS_3_1_0, FIREHOSE),
            ]
            await service.app.devices.register(
                OPERATOR,
                [
                    NewDevice(device_id, public_key_der(fixed_device_key(key).public_key()), name=name, owner=owner)
                    for device_id, owner, name, key, _, _ in specs
                ],
            )
            for device_id, _, name, key, firmware, app in specs:
                device = VirtualDevice(
                    VirtualDeviceSpec(device_id, fixed_device_key(key), firmware=firmware, app=app),
                    service.keys.private_key.public_key(),
                    config=SimConfig(backoff_scale=0.05),
                )
                device.start("127.0.0.1", service.device_server.port)
                devices[name] = device
            for device in devices.values():
                await asyncio.wait_for(device.connected.wait(), 10)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}", timeout=10) as client:
                world = World(service, client, devices)
                for user in (ALICE, BOB, ADMIN):
                    form = {"grant_type": "password", "username": user, "password": PASSWORD, "client_id": "CLI2"}
                    response = await client.post("/oauth/token", data=form)
                    assert response.status_code == 200, response.text
                    world.tokens[user] = response.json()["access_token"]
                await scenario(world)
        finally:
            for device in devices.values():
                await device.stop()
            await service.stop()

    asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, f"not so in {timeout} s: {what}"
        await asyncio.sleep(0.01)


class Stream:
    """An event stream read in the background: `events` fills as they come, each with when it arrived."""

    def __init__(self, client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.opened = asyncio.Event()
        self._task = asyncio.create_task(self._read(client, path, headers))

    async def _read(self, client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        async with client.stream("GET", path, headers=headers, timeout=None) as response:
            assert response.status_code == 200
            name = None
            async for line in _lines(response):
                if line == ":ok":
                    self.opened.set()
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    self.events.append((time.monotonic(), {"name": name, **json.loads(line[6:])}))

    def names(self) -> list[str]:
        return [event["name"] for _, event in self.events]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        yield line


async def open_stream(w: World, path: str, user: str) -> Stream:
    stream = Stream(w.client, path, w.auth(user))
    await asyncio.wait_for(stream.opened.wait(), 5)
    return stream


# -- the routes -----------------------------------------------------------------------------------------


def test_webhooks_and_integrations_in_particles_shape(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, a, b = w.client, w.auth(ALICE), w.auth(BOB)
        # What `particle webhook create temp URL kitchen` sends (src/cmd/webhook.js): JSON with deviceid.
        made = await c.post(
            "/v1/webhooks",
            json={"event": "temp", "url": "https://example.com/in", "deviceid": "kitchen", "requestType": "POST"},
            headers=a,
        )
        assert made.status_code == 200, made.text
        hook = made.json()
        assert hook["ok"] is True
        assert len(hook["id"]) == 24
        assert (hook["event"], hook["url"], hook["deviceID"]) == ("temp", "https://example.com/in", KITCHEN)
        assert hook["created_at"].endswith("Z")
        listed = (await c.get("/v1/webhooks", headers=a)).json()
        assert [(h["id"], h["event"], h["url"], h["deviceID"], h["created_at"]) for h in listed] == [
            (hook["id"], "temp", "https://example.com/in", KITCHEN, hook["created_at"])
        ]
        assert (await c.get("/v1/webhooks", headers=b)).json() == []
        # The integrations API: a form-encoded one, then an edit, read and delete.
        form = {"integration_type": "Webhook", "event": "hum", "url": "http://example.com/{{{room}}}"}
        form |= {"headers[X-Key]": "k", "noDefaults": "true", "requestType": "get"}
        second = await c.post("/v1/integrations", data=form, headers=a)
        assert second.status_code == 200, second.text
        integration = second.json()
        assert (integration["integration_type"], integration["requestType"], integration["noDefaults"]) == (
            "Webhook",
            "GET",
            True,
        )
        assert integration["headers"] == {"X-Key": "k"}
        edited = await c.put(f"/v1/integrations/{integration['id']}", json={"json": {"v": "1"}}, headers=a)
        assert edited.status_code == 200, edited.text
        assert (edited.json()["event"], edited.json()["requestType"], edited.json()["json"]) == (
            "hum",
            "POST",
            {"v": "1"},
        )
        assert "headers" not in edited.json()  # replaced, not merged
        assert [i["id"] for i in (await c.get("/v1/integrations", headers=a)).json()] == [hook["id"], integration["id"]]
        shown = (await c.get(f"/v1/integrations/{hook['id']}", headers=a)).json()
        assert (shown["logs"], shown["errors"], shown["counters"]["sent"]) == ([], [], 0)
        # Another account's is not found, whatever it asks.
        for method, path in (
            ("GET", f"/v1/integrations/{hook['id']}"),
            ("PUT", f"/v1/integrations/{hook['id']}"),
            ("DELETE", f"/v1/integrations/{hook['id']}"),
            ("POST", f"/v1/integrations/{hook['id']}/test"),
            ("GET", f"/v1/webhooks/{hook['id']}"),
            ("DELETE", f"/v1/webhooks/{hook['id']}"),
            ("DELETE", "/v1/webhooks/" + "%0A" * 30),
        ):
            response = await c.request(method, path, headers=b, json={"event": "x", "url": "https://x.example"})
            assert response.status_code == 404, (method, path, response.text)
        # Hostile input: a 400 naming the field.
        for config, field_name in (
            ({"event": "temp"}, "url"),
            ({"event": "temp", "url": "http://example.com", "json": {"a": float("inf")}}, "json"),
            ({"event": "temp\r\n", "url": "http://example.com"}, "event"),
            ({"event": "temp", "url": "http://example.com", "deviceID": "shed"}, None),
        ):
            response = await c.post("/v1/integrations", content=json.dumps(config), headers=a)
            if field_name is None:
                assert response.status_code == 404, response.text  # Bob's device is not found
            else:
                assert response.status_code == 400, response.text
                assert response.json()["field"] == field_name
        # Deleting as the CLI does; a second time is not found.
        assert (await c.delete(f"/v1/webhooks/{hook['id']}", headers=a)).json() == {"ok": True}
        gone = await c.delete(f"/v1/webhooks/{hook['id']}", headers=a)
        assert (gone.status_code, gone.json()["ok"], gone.json()["error"]) == (404, False, "Not Found")
        actions = [e.action for e in await w.service.store.audit.recent(subject=ALICE)]
        assert actions[:4] == [
            "integration_deleted",
            "integration_changed",
            "integration_created",
            "integration_created",
        ]

    _run(tmp_path, scenario)


def test_an_event_reaches_the_receiver_and_the_answer_the_owners_devices_only(tmp_path: Path) -> None:
    answer = json.dumps({"reading": "x" * 600}).encode()

    async def scenario(w: World) -> None:
        c, a = w.client, w.auth(ALICE)
        with receiver(body=answer) as got:
            config = {
                "event": "temp",
                "url": f"{got.url}/in",
                "json": {"t": "{{{t}}}", "who": "{{PARTICLE_DEVICE_ID}}"},
            }
            made = (await c.post("/v1/integrations", json=config, headers=a)).json()
            alices = await open_stream(w, "/v1/devices/events", ALICE)
            bobs = await open_stream(w, "/v1/events", BOB)
            kitchen, garage, shed = w.devices["kitchen"], w.devices["garage"], w.devices["shed"]
            assert kitchen.publish("temp/kitchen", '{"t": 21.5}')
            (request,) = await asyncio.to_thread(got.wait_for, 1)
            assert (request.method, request.path, request.headers["Content-Type"]) == (
                "POST",
                "/in",
                "application/json",
            )
            assert request.json() == {
                "event": "temp/kitchen",
                "data": '{"t": 21.5}',
                "published_at": request.json()["published_at"],
                "coreid": KITCHEN,
                "t": "21.5",
                "who": KITCHEN,
            }

            def answered() -> bool:
                names = [e.name for e in kitchen.received_events if e.name.startswith("hook-response/")]
                return names == ["hook-response/temp/kitchen/0", "hook-response/temp/kitchen/1"]

            await eventually(answered, "both chunks at the kitchen")
            chunks = [e.data for e in kitchen.received_events if e.name.startswith("hook-response/")]
            assert b"".join(chunks) == answer
            assert [len(chunk) for chunk in chunks] == [512, len(answer) - 512]
            # Alice's other device subscribed too: it gets the answer; Bob's, listening to all, does not.
            await eventually(
                lambda: len([e for e in garage.received_events if e.name.startswith("hook-")]) == 2, "garage"
            )
            await eventually(lambda: "hook-response/temp/kitchen/1" in alices.names(), "Alice's stream")
            assert alices.names()[:2] == ["temp/kitchen", "hook-sent/temp/kitchen"]
            hook_events = [e for _, e in alices.events if e["name"].startswith("hook-")]
            assert {e["coreid"] for e in hook_events} == {"particle-internal"}
            shown = (await c.get(f"/v1/integrations/{made['id']}", headers=a)).json()
            (log,) = shown["logs"]
            assert (log["outcome"], log["status"], log["attempt"], log["deviceID"]) == ("success", 200, 1, KITCHEN)
            assert shown["counters"]["succeeded"] == 1
            # A test through the API: sent now, answered with the receiver's status.
            tested = (await c.post(f"/v1/integrations/{made['id']}/test", json={"data": "hello"}, headers=a)).json()
            assert (tested["pass"], tested["data"]["statusCode"]) == (True, 200)
            assert got.wait_for(2)[1].json()["data"] == "hello"
            await alices.close()
            await bobs.close()
        assert [e.name for e in shed.received_events if e.name.startswith("hook-")] == []
        assert [name for name in bobs.names() if name.startswith("hook-")] == []

    _run(tmp_path, scenario)


def test_a_receiver_that_never_answers_slows_no_event(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, a = w.client, w.auth(ALICE)
        with receiver(silent=True) as dead:
            made = (await c.post("/v1/integrations", json={"event": "temp", "url": dead.url}, headers=a)).json()
            stream = await open_stream(w, "/v1/devices/events/temp", ALICE)
            kitchen = w.devices["kitchen"]
            sent: list[float] = []
            for n in range(10):
                sent.append(time.monotonic())
                response = await c.post("/v1/devices/events", json={"name": f"temp/{n}", "data": str(n)}, headers=a)
                assert response.status_code == 200
                # Each event is in the stream and at the subscribed device long before a hook's timeout (20 s),
                # while the receiver holds every request it got.
                name = f"temp/{n}"

                def streamed(name: str = name) -> bool:
                    return name in stream.names()

                def at_the_device(name: str = name) -> bool:
                    return any(e.name == name for e in kitchen.received_events)

                await eventually(streamed, f"{name} in the stream", timeout=2)
                await eventually(at_the_device, f"{name} at the kitchen", timeout=2)
            delays = [arrived - published for published, (arrived, _) in zip(sent, stream.events, strict=True)]
            assert max(delays) < 1.0, delays
            counters = (await c.get(f"/v1/integrations/{made['id']}", headers=a)).json()["counters"]
            assert (counters["in_flight"], counters["queued"], counters["succeeded"]) == (4, 6, 0)
            assert dead.held == 4
            await stream.close()

    _run(tmp_path, scenario)


def test_without_the_operators_leave_no_hook_reaches_a_private_address(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, a = w.client, w.auth(ALICE)
        with receiver() as got:
            made = (await c.post("/v1/integrations", json={"event": "temp", "url": got.url}, headers=a)).json()
            errors = await open_stream(w, "/v1/devices/events/hook-error", ALICE)
            await c.post("/v1/devices/events", json={"name": "temp/x", "data": "1"}, headers=a)
            await eventually(lambda: len(errors.events) == 1, "the hook-error event")
            ((_, error),) = errors.events
            assert error["name"] == "hook-error/temp/x/0"
            assert "127.0.0.1 is an address webhooks may not reach" in error["data"]
            logs = (await c.get(f"/v1/integrations/{made['id']}", headers=a)).json()["logs"]
            assert [(e["outcome"], e["attempt"], e["status"]) for e in logs] == [("failure", 1, None)]  # not retried
            assert got.received() == []
            await errors.close()

    _run(tmp_path, scenario, allowed="")


# -- device vitals --------------------------------------------------------------------------------------


def test_device_vitals_of_new_and_legacy_firmware(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        c, a, b = w.client, w.auth(ALICE), w.auth(BOB)
        none_yet = await c.get(f"/v1/diagnostics/{KITCHEN}/last", headers=a)
        assert (none_yet.status_code, none_yet.json()["error"]) == (404, "Not Found")
        vitals = await open_stream(w, "/v1/devices/events/spark/device/diagnostics", ALICE)
        for device in ("kitchen", "garage"):
            assert (await c.post(f"/v1/diagnostics/{device}/update", headers=a)).json() == {"ok": True}

        async def both() -> bool:
            for device_id in (KITCHEN, GARAGE):
                if (await c.get(f"/v1/diagnostics/{device_id}/last", headers=a)).status_code != 200:
                    return False
            return True

        await eventually(both, "vitals of both devices")
        kitchen = (await c.get(f"/v1/diagnostics/{KITCHEN}/last", headers=a)).json()["diagnostics"]
        assert kitchen["deviceID"] == KITCHEN
        device, service = kitchen["payload"]["device"], kitchen["payload"]["service"]
        assert device["cloud"]["connection"]["status"] == "connected"
        assert device["network"]["signal"]["at"] == "Wi-Fi"
        assert device["system"]["memory"] == {"used": 32992, "total": 83200}
        assert service["device"] == {"status": "ok"}
        assert service["coap"]["round_trip"] >= 0
        assert service["cloud"]["connection"]["handshake_duration"] >= 0
        garage = (await c.get(f"/v1/diagnostics/{GARAGE}/last", headers=a)).json()["diagnostics"]
        assert "device" not in garage["payload"]  # 0.6.1 reports no diagnostics of its own
        assert garage["payload"]["service"]["coap"]["round_trip"] >= 0
        await eventually(lambda: len(vitals.events) == 2, "two vitals events")
        assert {e["coreid"] for _, e in vitals.events} == {KITCHEN, GARAGE}
        # A device posting its vitals itself (Particle.publishVitals()).
        assert w.devices["kitchen"].publish_vitals()

        async def two_records() -> bool:
            history = (await c.get(f"/v1/diagnostics/{KITCHEN}", headers=a)).json()["diagnostics"]
            return len(history) == 2

        await eventually(two_records, "the posted vitals in the history")
        history = (await c.get(f"/v1/diagnostics/{KITCHEN}?start_date=2000-01-01T00:00:00Z", headers=a)).json()
        first, second = history["diagnostics"]
        assert first["updated_at"] <= second["updated_at"]
        assert "coap" not in second["payload"]["service"]  # posted: the server measured nothing then
        # Not Bob's: not found; bad dates: a 400 naming the parameter.
        for method, path in (
            ("GET", f"/v1/diagnostics/{KITCHEN}"),
            ("GET", f"/v1/diagnostics/{KITCHEN}/last"),
            ("POST", f"/v1/diagnostics/{KITCHEN}/update"),
            ("POST", "/v1/diagnostics/kitchen/update"),
        ):
            assert (await c.request(method, path, headers=b)).status_code == 404
        for query, field_name in (
            ("start_date=yesterday", "start_date"),
            ("end_date=0001-01-01T00:00:00%2B05:00", "end_date"),
        ):
            bad = await c.get(f"/v1/diagnostics/{KITCHEN}?{query}", headers=a)
            assert (bad.status_code, bad.json()["field"]) == (400, field_name), bad.text
        reversed_range = await c.get(
            f"/v1/diagnostics/{KITCHEN}?start_date=2030-01-01T00:00:00Z&end_date=2020-01-01T00:00:00Z", headers=a
        )
        assert (reversed_range.status_code, reversed_range.json()["field"]) == (400, "start_date")
        # The admins' unidentified attempts are still theirs, beside the devices' vitals.
        assert (await c.get("/v1/diagnostics/unidentified", headers=a)).status_code == 403
        assert (await c.get("/v1/diagnostics/unidentified", headers=w.auth(ADMIN))).json() == {"groups": []}
        # An offline device cannot be asked.
        await w.devices["garage"].stop()
        offline = await c.post(f"/v1/diagnostics/{GARAGE}/update", headers=a)
        assert (offline.status_code, offline.json()["error"]) == (404, "Device is not connected")
        await vitals.close()

    _run(tmp_path, scenario)


def test_the_address_policy_is_the_operators_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CYAN_HOOK_ALLOWED_NETWORKS", "10.1.0.0/16, ::1")
    settings = Settings.from_env(data_dir=tmp_path / "data", public_address="127.0.0.1")
    policy = Service(settings, ensure_server_keys(settings)).hook_sender.policy
    assert [policy.allows(ipaddress.ip_address(a)) for a in ("10.1.2.3", "::1", "10.2.0.1", "127.0.0.1")] == [
        True,
        True,
        False,
        False,
    ]
    monkeypatch.setenv("CYAN_HOOK_ALLOWED_NETWORKS", "10.1.0.0/16, intranet")
    with pytest.raises(ValueError, match="'intranet' is not a network"):
        Settings.from_env(data_dir=tmp_path / "data")
