"""What hostile clients and bad input get from the API (docs/security.md): nothing forged into others' event
streams, no body read before it is refused, logins throttled and audited, a 400 that names the field for every
number out of range, and nothing of another account's."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cyan.app import Actor, NewDevice
from cyan.cloud.models import Role
from cyan.config import Settings
from cyan.keys import public_key_der
from cyan.protocol.binary import build_module
from cyan.server.device_server import AddressLimits
from cyan.service import Service, ensure_server_keys
from cyan.testing import fixed_device_key
from serve_support import loopback_service

ALICE, BOB, ADMIN = "alice@example.com", "bob@example.com", "admin@example.com"
PASSWORD = "a good password"
DEVICE = "ab" * 12
OPS = Actor.operator()


def _run(
    tmp_path: Path, scenario: Callable[[Service, httpx.AsyncClient, dict[str, dict[str, str]]], Awaitable[None]]
) -> None:
    async def main() -> None:
        service = loopback_service(tmp_path / "data")
        await service.start()
        try:
            for user, role in ((ALICE, Role.USER), (BOB, Role.USER), (ADMIN, Role.ADMIN)):
                await service.app.accounts.create_user(OPS, user, PASSWORD, role=role)
            await service.app.devices.register(
                OPS, [NewDevice(DEVICE, public_key_der(fixed_device_key(1).public_key()), name="kitchen", owner=ALICE)]
            )
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}", timeout=10) as client:
                auth = {}
                for user in (ALICE, BOB, ADMIN):
                    token = (await service.app.accounts.create_token(OPS, user, None)).token
                    auth[user] = {"Authorization": f"Bearer {token}"}
                await scenario(service, client, auth)
        finally:
            await service.stop()

    asyncio.run(main())


async def _events(client: httpx.AsyncClient, path: str, headers: dict[str, str], count: int) -> list[tuple[str, str]]:
    """(field, value) lines of the first `count` events of a stream, as a client parses them."""
    lines: list[tuple[str, str]] = []
    async with client.stream("GET", path, headers=headers) as response:
        seen = 0
        async for line in response.aiter_lines():
            if line.startswith(":") or not line:
                if not line and lines and lines[-1][0] == "data":
                    seen += 1
                    if seen == count:
                        return lines
                continue
            field, _, value = line.partition(": ")
            lines.append((field, value))
    return lines


def test_an_event_name_cannot_forge_another_event(tmp_path: Path) -> None:
    async def scenario(service: Service, client: httpx.AsyncClient, auth: dict[str, dict[str, str]]) -> None:
        bobs = asyncio.create_task(_events(client, "/v1/events", auth[BOB], 1))
        await asyncio.sleep(0.3)
        for name in ("temp\nevent: forged", "temp\r\ndata: {}", "a\x00b", "temp\u2028next"):
            refused = await client.post("/v1/devices/events", json={"name": name, "data": "x"}, headers=auth[ALICE])
            assert (refused.status_code, refused.json()["field"]) == (400, "name")
        # Data is JSON in the stream: its newlines are escaped, never a new line of the stream.
        ok = await client.post(
            "/v1/devices/events",
            json={"name": "temp", "data": "line\nevent: forged\ndata: {}", "private": False},
            headers=auth[ALICE],
        )
        assert ok.status_code == 200
        lines = await asyncio.wait_for(bobs, 5)
        assert [field for field, _ in lines] == ["event", "data"]
        assert lines[0] == ("event", "temp")
        assert json.loads(lines[1][1])["data"] == "line\nevent: forged\ndata: {}"
        # A device naming an event so is not carried (no firmware does; the gateway drops it).
        gateway = service.gateway
        before = gateway.dropped_events

        class Link:
            device_id = DEVICE
            peer_address = "127.0.0.1:1"
            key_fingerprint = None

        gateway.event_from_device(Link(), "temp\nevent: forged", b"x", 60, False)  # type: ignore[arg-type]
        assert gateway.dropped_events == before + 1

    _run(tmp_path, scenario)


async def _raw(port: int, head: str, first: bytes = b"", *, stream: bool = False) -> tuple[int, int]:
    """Send a request by hand (`head` without the blank line); with `stream`, keep sending chunks of a chunked
    body until the server answers. Returns the status and how many body bytes went out."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        writer.write(head.encode() + b"\r\n\r\n")
        if first:
            writer.write(b"%x\r\n%s\r\n" % (len(first), first))
        await writer.drain()
        answer = asyncio.create_task(reader.readline())
        chunk = b"x" * 65536
        while stream and not answer.done() and sent < 100 * 1024 * 1024:
            try:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await asyncio.wait_for(writer.drain(), 1.0)
            except (ConnectionError, TimeoutError):
                break
            sent += len(chunk)
            await asyncio.sleep(0)
        status_line = await asyncio.wait_for(answer, 10)
        return int(status_line.split()[1]), sent
    finally:
        writer.close()


def test_a_body_is_refused_before_it_is_read(tmp_path: Path) -> None:
    async def scenario(service: Service, client: httpx.AsyncClient, auth: dict[str, dict[str, str]]) -> None:
        port = service.api_port
        token = auth[ALICE]["Authorization"]
        # 100 MB announced, no token: refused at once, nothing read.
        status, _ = await _raw(
            port,
            "POST /v1/devices/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * 1024 * 1024}",
        )
        assert status == 413
        # Streamed without a length, with a token: cut off at the limit, not read to its end.
        status, sent = await _raw(
            port,
            "POST /v1/devices/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: {token}\r\nTransfer-Encoding: chunked",
            stream=True,
        )
        assert status == 413
        assert sent < 8 * 1024 * 1024
        # An upload without a valid token: nothing of it is read, spooled or parsed.
        for authorization in ("", "Authorization: Bearer not-a-token\r\n"):
            status, sent = await _raw(
                port,
                "POST /v1/firmware HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                f"{authorization}Transfer-Encoding: chunked",
                stream=True,
            )
            assert status == 401
            assert sent < 8 * 1024 * 1024
        # An upload larger than any binary a device takes, with a token: cut off at its limit.
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'
        status, sent = await _raw(
            port,
            "POST /v1/firmware HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Authorization: {token}\r\nTransfer-Encoding: chunked",
            part,
            stream=True,
        )
        assert status == 413
        assert sent < 8 * 1024 * 1024
        # Within the limits, all is as before.
        image = build_module(b"y" * 4000, platform_id=6)
        uploaded = await client.post("/v1/firmware", files={"file": ("app.bin", image)}, headers=auth[ALICE])
        assert uploaded.status_code == 200, uploaded.text

    _run(tmp_path, scenario)


def test_logins_are_throttled_and_audited(tmp_path: Path) -> None:
    async def scenario(service: Service, client: httpx.AsyncClient, auth: dict[str, dict[str, str]]) -> None:
        def form(password: str, user: str = ALICE) -> dict[str, str]:
            return {"grant_type": "password", "username": user, "password": password}

        for _ in range(5):
            wrong = await client.post("/oauth/token", data=form("wrong password"))
            assert wrong.status_code == 400
        throttled = await client.post("/oauth/token", data=form(PASSWORD))  # even the right one, for a while
        assert throttled.status_code == 429
        assert int(throttled.headers["Retry-After"]) > 0
        assert (await client.post("/oauth/token", data=form(PASSWORD, BOB))).status_code == 200
        trail = await service.store.audit.recent(subject=ALICE)
        assert [e.action for e in trail[:6]] == ["login_throttled"] + ["login_failed"] * 5
        assert "from 127.0.0.1" in (trail[1].detail or "")
        # Unknown names are audited without the name (anyone could choose it).
        await client.post("/oauth/token", data=form("x", "nobody\n@example.com"))
        (entry,) = [e for e in await service.store.audit.recent() if e.detail and "no such account" in e.detail][:1]
        assert entry.subject is None

    _run(tmp_path, scenario)


@pytest.mark.parametrize(
    ("method", "path", "payload", "field"),
    [
        (
            "POST",
            "/oauth/token",
            {"grant_type": "password", "username": ALICE, "password": "x", "expires_in": "Infinity"},
            "expires_in",
        ),
        (
            "POST",
            "/oauth/token",
            {"grant_type": "password", "username": ALICE, "password": "x", "expires_in": 1e308},
            "expires_in",
        ),
        (
            "POST",
            "/oauth/token",
            {"grant_type": "password", "username": ALICE, "password": "x", "expires_in": 2**63},
            "expires_in",
        ),
        ("POST", "/v1/devices/events", {"name": "t", "ttl": "Infinity"}, "ttl"),
        ("POST", "/v1/devices/events", {"name": "t", "ttl": -1e309}, "ttl"),
        ("POST", f"/v1/devices/{DEVICE}/keys/rekey", {"seconds": "Infinity"}, "seconds"),
        ("POST", f"/v1/devices/{DEVICE}/keys/rekey", {"seconds": 1e30}, "seconds"),
        ("POST", f"/v1/provisioning/{DEVICE}", {"publicKey": "-", "product_id": "99999999999999999999"}, "product_id"),
        ("PUT", "/v1/devices/kitchen", {"name": "pantry\n"}, "name"),
    ],
)
def test_numbers_and_names_out_of_range_are_a_400_naming_the_field(
    tmp_path: Path, method: str, path: str, payload: dict[str, Any], field: str
) -> None:
    async def scenario(service: Service, client: httpx.AsyncClient, auth: dict[str, dict[str, str]]) -> None:
        body = json.dumps(payload).replace("Infinity", "1e999") if "Infinity" not in json.dumps(payload) else None
        content = (body or json.dumps(payload)).encode()
        response = await client.request(
            method, path, content=content, headers={**auth[ALICE], "Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field, response.text

    _run(tmp_path, scenario)


def test_update_inputs_out_of_range(tmp_path: Path) -> None:
    async def scenario(service: Service, client: httpx.AsyncClient, auth: dict[str, dict[str, str]]) -> None:
        image = build_module(b"z" * 4000, platform_id=6)
        sha = (await client.post("/v1/firmware", files={"file": ("a.bin", image)}, headers=auth[ALICE])).json()[
            "sha256"
        ]
        for extra in ({"max_attempts": 1e30}, {"max_attempts": 0}, {"max_attempts": -1}, {"concurrency": 0}):
            response = await client.post(
                "/v1/updates", json={"firmware": sha, "devices": [DEVICE], **extra}, headers=auth[ALICE]
            )
            assert response.status_code == 400, (extra, response.text)
        for job in (2**63, 2**64, -1):
            assert (await client.get(f"/v1/updates/{job}", headers=auth[ALICE])).status_code in (400, 404)
        bad_limit = await client.get("/v1/updates", params={"limit": "x" * 5000}, headers=auth[ALICE])
        assert (bad_limit.status_code, bad_limit.json()["field"]) == (400, "limit")
        # Named and explained, never echoed back.
        assert bad_limit.json()["error_description"].startswith("limit: ")
        assert "xxxx" not in bad_limit.text
        # Another account's upload of the same bytes shows neither who uploaded it nor under what name.
        again = await client.post("/v1/firmware", files={"file": ("mine.bin", image)}, headers=auth[BOB])
        assert (again.json()["uploaded_by"], again.json()["filename"]) == (None, "mine.bin")
        admin = await client.post("/v1/firmware", files={"file": ("x.bin", image)}, headers=auth[ADMIN])
        assert admin.json()["uploaded_by"] == ALICE

    _run(tmp_path, scenario)


def test_the_limits_are_read_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each limit in docs/security.md is changed by its variable, and a nonsense value is refused at start."""
    for name, value in {
        "LOGIN_FAILURES_PER_ACCOUNT": "2",
        "LOGIN_FAILURES_PER_ADDRESS": "3",
        "LOGIN_WINDOW_MINUTES": "1",
        "ADDRESS_BURST": "7",
        "ADDRESS_RATE": "8",
        "ATTEMPTS_MAX_AGE_DAYS": "9",
        "ATTEMPTS_MAX_COUNT": "10",
    }.items():
        monkeypatch.setenv(f"CYAN_{name}", value)
    settings = Settings.from_env(data_dir=tmp_path / "data", public_address="127.0.0.1")
    service = Service(settings, ensure_server_keys(settings))
    limits = service.app.accounts.limits
    assert (limits.per_account, limits.per_address, limits.window) == (2, 3, 60.0)
    assert service.cloud.records.max_age == timedelta(days=9)
    assert service.cloud.records.max_count == 10
    assert service.device_server.address_limits == AddressLimits(7, 8.0)
    monkeypatch.setenv("CYAN_LOGIN_FAILURES_PER_ACCOUNT", "0")
    with pytest.raises(ValueError, match="login_failures_per_account must be from 1"):
        Settings.from_env(data_dir=tmp_path / "data")


def test_half_a_surrogate_pair_in_a_json_string_is_a_400(tmp_path: Path) -> None:
    """JSON may escape half of a surrogate pair ("\\ud800"), which is no character: such a string reached code
    that encodes it (an event's name and data, a function's argument, a username, a key) and the API answered
    500. The body is refused as not being text; a whole pair (an emoji) is a character like any other."""

    async def scenario(service: Service, client: httpx.AsyncClient, auth: dict[str, dict[str, str]]) -> None:
        json_body = {**auth[ALICE], "Content-Type": "application/json"}
        for path, body in (
            ("/v1/devices/events", b'{"name": "\\ud800"}'),
            ("/v1/devices/events", b'{"name": "temp", "data": "x\\udfff"}'),
            ("/v1/devices/kitchen/setArg", b'{"arg": "\\ud800"}'),
            ("/oauth/token", b'{"grant_type": "password", "username": "\\ud800", "password": "x"}'),
            (f"/v1/provisioning/{DEVICE}", b'{"publicKey": "\\ud800"}'),
            ("/v1/devices/events", b'{"name": "temp", "\\ud800": 1}'),
        ):
            refused = await client.post(path, content=body, headers=json_body)
            assert (refused.status_code, refused.json()["error"]) == (400, "invalid_request"), (path, body)
        pair = await client.post(
            "/v1/devices/events", content=b'{"name": "temp", "data": "\\ud83d\\ude00"}', headers=json_body
        )
        assert (pair.status_code, pair.json()) == (200, {"ok": True})

    _run(tmp_path, scenario)
