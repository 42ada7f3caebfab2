"""The diagnostics over real HTTP: `cyan diagnose --server` and `cyan devices doctor --server` against a
running service whose records come from simulated devices with faults, and the API's access rules."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from diagnose_support import recording

from cyan.app import Actor
from cyan.cli import main
from cyan.cloud.models import AttemptOutcome, DeviceRecord, Role
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import ServerConfig
from cyan.service import Service, ensure_server_keys
from cyan.sim import Fault, SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.testing import fixed_device_key, loopback_settings

ALICE, BOB = "alice@example.com", "bob@example.com"
#: The device id the real-firmware recordings name.
RECORDED = "0123456789abcdef01234567"
WRONG_KEY = f"{0xA1:024x}"
QUIET = f"{0xA2:024x}"
FAST = ServerConfig(identity_timeout=1.0, hello_timeout=1.0, request_timeout=2.0)
SIM = SimConfig(backoff_scale=0.02)


@dataclass
class World:
    service: Service
    url: str
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


async def _register(service: Service, device_id: str, key: int, owner: str, *, seen_at: str | None) -> None:
    der = public_key_der(fixed_device_key(key).public_key())
    await service.store.devices.add(
        DeviceRecord(
            id=device_id,
            owner=owner,
            public_key_der=der,
            key_fingerprint=fingerprint(der),
            last_address=seen_at,
            last_heard=datetime.now(UTC) - timedelta(hours=1) if seen_at else None,
        )
    )


async def _failures(service: Service, count: int, **match: object) -> None:
    """Wait until the server recorded `count` failed attempts with these fields."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        await service.cloud.flush()
        found = [
            a
            for a in await service.store.attempts.recent(limit=1000)
            if a.outcome is AttemptOutcome.FAILED and all(getattr(a, k) == v for k, v in match.items())
        ]
        if len(found) >= count:
            return
        assert asyncio.get_running_loop().time() < deadline, f"no {count} failures like {match}"
        await asyncio.sleep(0.05)


async def _run_faulty(service: Service, spec: VirtualDeviceSpec, count: int, **match: object) -> None:
    device = VirtualDevice(spec, service.keys.private_key.public_key(), config=SIM)
    device.start("127.0.0.1", service.device_server.port)
    try:
        await _failures(service, count, **match)
    finally:
        await device.stop()


def _run(tmp_path: Path, scenario: Callable[[World], Awaitable[None]]) -> None:
    async def run() -> None:
        settings = loopback_settings(tmp_path / "data")
        service = Service(settings, ensure_server_keys(settings), protocol=FAST)
        await service.start()
        try:
            world = World(service, f"http://127.0.0.1:{service.api_port}")
            for user in (ALICE, BOB):
                await service.app.accounts.create_user(Actor.operator(), user, "correct horse")
                world.tokens[user] = (await service.app.accounts.create_token(Actor.operator(), user, None)).token
            # The recorded device lost its key: the server holds key 1, the device now presents another.
            await _register(service, RECORDED, 1, ALICE, seen_at="127.0.0.1:40000")
            # This one now holds another server's key; it used to connect from 127.0.0.1.
            await _register(service, WRONG_KEY, 2, ALICE, seen_at="127.0.0.1:40001")
            await _register(service, QUIET, 3, BOB, seen_at=None)
            await _run_faulty(
                service,
                VirtualDeviceSpec(RECORDED, fixed_device_key(1), fault=Fault.AMNESIA),
                3,
                device_id=RECORDED,
                reason="key_mismatch",
            )
            await _run_faulty(
                service,
                VirtualDeviceSpec(WRONG_KEY, fixed_device_key(2), fault=Fault.WRONG_SERVER_KEY),
                3,
                reason="nonce_mismatch",
            )
            await scenario(world)
        finally:
            await service.stop()

    asyncio.run(run())


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_diagnose_joins_the_server_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CYAN_TOKEN", raising=False)

    async def scenario(w: World) -> None:
        log = str(recording("device-os-3.1.0/drop_after_id"))
        code, out, err = await _cli(capsys, "diagnose", log, "--server", w.url, "--token", w.tokens[ALICE], "--json")
        assert code == 0, err
        body = json.loads(out)
        server = body["server"]
        assert (server["device_id"], server["entry"], server["cause"]) == (RECORDED, "C5", "amnesia")
        assert server["confidence"] == "confirmed"
        assert server["attempts"]
        reasons = [a["reason"] for a in server["attempts"]]
        assert reasons.count("key_mismatch") >= 3  # (the last may be cut short when the device was stopped)
        top = body["findings"][0]
        assert (top["id"], top["causes"][0]["key"], top["causes"][0]["likelihood"]) == ("C5", "amnesia", "confirmed")

        # The same device log from a device that holds another server key: the device cannot name itself, so
        # the server relates its unidentified attempts through the address the device was last seen at.
        log = str(recording("device-os-3.1.0/wrong_server_key"))
        code, out, err = await _cli(
            capsys, "diagnose", log, "--server", w.url, "--token", w.tokens[ALICE], "--device", WRONG_KEY, "--json"
        )
        assert code == 0, err
        server = json.loads(out)["server"]
        assert (server["entry"], server["cause"], server["confidence"]) == ("C5", "wrong_server_key", "likely")
        assert server["unidentified"][0]["host"] == "127.0.0.1"

        # Human output, with the token from the environment.
        code, out, err = await _cli(capsys, "diagnose", log, "--server", w.url, "--device", WRONG_KEY)
        assert code == 1
        assert "access token" in err

    _run(tmp_path, scenario)


def test_the_api_routes_and_who_may_read_what(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(w: World) -> None:
        async with httpx.AsyncClient(base_url=w.url, timeout=10) as client:
            attempts = await client.get(f"/v1/devices/{RECORDED}/attempts", headers=w.auth(ALICE))
            assert attempts.status_code == 200
            records = attempts.json()["attempts"]
            # (The newest may be the one cut short when the simulated device was stopped.)
            mismatch = next(r for r in records if r["reason"] == "key_mismatch")
            assert (mismatch["entry"], mismatch["cause"]) == ("C5", "amnesia")
            assert mismatch["presented_fingerprint"] != mismatch["stored_fingerprint"]
            doctor = (await client.get(f"/v1/devices/{RECORDED}/doctor", headers=w.auth(ALICE))).json()
            assert doctor["status"] == "failing"
            assert (doctor["diagnosis"][0]["entry"], doctor["diagnosis"][0]["cause"]) == ("C5", "amnesia")
            # Not yours, unknown, no token: as for every device route.
            assert (await client.get(f"/v1/devices/{RECORDED}/doctor", headers=w.auth(BOB))).status_code == 404
            assert (await client.get(f"/v1/devices/{'f' * 24}/attempts", headers=w.auth(BOB))).status_code == 404
            assert (await client.get(f"/v1/devices/{RECORDED}/attempts")).status_code == 401
            bad = await client.get(
                f"/v1/devices/{RECORDED}/attempts", params={"since": "yesterday"}, headers=w.auth(ALICE)
            )
            assert bad.status_code == 400
            quiet = (await client.get(f"/v1/devices/{QUIET}/doctor", headers=w.auth(BOB))).json()
            assert quiet["status"] == "never_seen"
            # Unidentified attempts belong to no one: admins only.
            denied = await client.get("/v1/diagnostics/unidentified", headers=w.auth(ALICE))
            assert (denied.status_code, denied.json()["error"]) == (403, "Permission Denied")
            await w.service.app.accounts.set_role(Actor.operator(), ALICE, Role.ADMIN)
            allowed = await client.get("/v1/diagnostics/unidentified", headers=w.auth(ALICE))
            assert allowed.status_code == 200
            (group,) = allowed.json()["groups"]
            # The attempt cut short when the simulated device was stopped may end the group as closed_by_peer.
            reasons = dict(group["reasons"])
            assert reasons.pop("closed_by_peer", 0) <= 1
            assert (group["host"], reasons) == ("127.0.0.1", {"nonce_mismatch": reasons.get("nonce_mismatch", 0)})
            assert reasons["nonce_mismatch"] >= 3
            assert {c["device_id"] for c in group["candidates"]} == {RECORDED, WRONG_KEY}

        code, out, err = await _cli(
            capsys,
            "devices",
            "doctor",
            RECORDED,
            "--server",
            w.url,
            "--token",
            w.tokens[ALICE],
            "--json",
        )
        assert code == 0, err
        assert json.loads(out)["diagnosis"][0]["cause"] == "amnesia"
        code, out, err = await _cli(capsys, "devices", "doctor", RECORDED, "--server", w.url, "--token", w.tokens[BOB])
        assert code == 1
        assert "404" in err
        assert "hint:" in err
        code, out, err = await _cli(capsys, "devices", "unidentified", "--server", w.url, "--token", w.tokens[ALICE])
        assert code == 0, err
        assert "127.0.0.1" in out
        assert "nonce_mismatch" in out

    _run(tmp_path, scenario)
