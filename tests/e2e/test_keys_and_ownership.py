"""Keys and ownership through one door, against `cyan serve` as a separate process (docs/keys.md):

- a device that belongs to nobody is nobody's to take, by claim or by key provisioning, except an admin's or a
  claim code's holder's, and every change is audited;
- an answered approval and its audit entry survive a `kill -9` together;
- the command line refuses what it cannot apply (a name it cannot resolve, a typo), resolves names everywhere,
  and `cyan keys provision --api` registers new devices where the account may;
- a data directory that has devices and lost its server key does not start with a new one.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from particle_cli_support import CyanServer, read_store, run_cyan

from cyan.app import Actor, Application
from cyan.cloud.models import AuditEntry, DeviceRecord, PendingKey, Role
from cyan.config import Settings
from cyan.data import open_application
from cyan.keys import (
    encode_private_key_pem,
    encode_public_key_pem,
    fingerprint,
    generate_server_key,
    load_public_key,
)
from cyan.sim import Fault, SimConfig, VirtualDevice, VirtualDeviceSpec
from cyan.testing import fixed_device_key

ADMIN, ALICE, MALLORY = "admin@example.com", "alice@example.com", "mallory@example.com"
PASSWORD = "a long enough password"
DEVICE, LOST = "0123456789abcdef01234567", "00000000000000000000abcd"


async def _add_accounts(app: Application) -> None:
    # What `cyan users add` does (tests/cli runs the command itself), without three more processes per test.
    for user, role in ((ADMIN, Role.ADMIN), (ALICE, Role.USER), (MALLORY, Role.USER)):
        await app.accounts.create_user(Actor.operator(), user, PASSWORD, role=role)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CyanServer]:
    started = CyanServer.start(tmp_path / "data", tmp_path / "logs")
    try:
        asyncio.run(_use_cases(started.data_dir, _add_accounts))
        yield started
    finally:
        if started.proc.process.poll() is None:
            started.stop()


async def _use_cases(data: Path, work: Callable[[Application], Awaitable[None]]) -> None:
    async with open_application(Settings(data_dir=data)) as app:
        await work(app)


def _key_file(path: Path, n: int) -> Path:
    path.write_bytes(encode_private_key_pem(fixed_device_key(n)))
    return path


def _token(server: CyanServer, user: str) -> dict[str, str]:
    form = {"grant_type": "password", "username": user, "password": PASSWORD, "client_id": "CLI2"}
    response = httpx.post(f"{server.api_url}/oauth/token", data=form, timeout=10)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _audit(data: Path, device_id: str) -> list[AuditEntry]:
    return read_store(data, lambda store: store.audit.recent(device_id))


def _device(data: Path, device_id: str) -> DeviceRecord | None:
    return read_store(data, lambda store: store.devices.get(device_id))


def _server_key(data: Path) -> rsa.RSAPublicKey:
    return load_public_key((data / "server_public_key.der").read_bytes())


def _serve(data: Path, *extra: str) -> list[str]:
    return [
        "serve",
        "--data-dir",
        str(data),
        "--device-port",
        "0",
        "--api-port",
        "0",
        "--api-host",
        "127.0.0.1",
        *extra,
    ]


def test_a_device_without_an_owner_is_not_anyones_to_take(server: CyanServer, tmp_path: Path) -> None:
    data = server.data_dir
    added = run_cyan("devices", "add", DEVICE, "--key", str(_key_file(tmp_path / "k.pem", 1)), "--data-dir", str(data))
    assert added.returncode == 0, str(added)
    mallory = _token(server, MALLORY)
    attacker_pem = encode_public_key_pem(fixed_device_key(9).public_key()).decode()
    with httpx.Client(base_url=server.api_url, headers=mallory, timeout=10) as client:
        provisioned = client.post(f"/v1/provisioning/{DEVICE}", data={"publicKey": attacker_pem, "algorithm": "rsa"})
        claimed = client.post("/v1/devices", json={"id": DEVICE})
        missing = client.post("/v1/devices", json={"id": "f" * 24})
    # The same 404 as for a device that does not exist: nothing tells an ownerless device from no device.
    assert (provisioned.status_code, claimed.status_code, missing.status_code) == (404, 404, 404)
    assert claimed.json()["error"] == missing.json()["error"] == "Not Found"
    record = _device(data, DEVICE)
    assert record is not None
    assert (record.owner, record.key_fingerprint) == (None, fingerprint(fixed_device_key(1)))
    assert [e.action for e in _audit(data, DEVICE)] == ["registered"]

    # The operator hands out a claim code; its holder (and only once) takes the device.
    code = run_cyan("devices", "claim-code", DEVICE, "--data-dir", str(data))
    assert code.returncode == 0, str(code)
    alice = _token(server, ALICE)
    with httpx.Client(base_url=server.api_url, headers=alice, timeout=10) as client:
        wrong = client.post("/v1/devices", json={"id": DEVICE, "claim_code": "not-the-code"})
        assert wrong.status_code == 404
        taken = client.post("/v1/devices", json={"id": DEVICE, "claim_code": code.stdout.strip()})
        assert taken.json()["user_id"] == ALICE
    with httpx.Client(base_url=server.api_url, headers=mallory, timeout=10) as client:
        again = client.post("/v1/devices", json={"id": DEVICE, "claim_code": code.stdout.strip()})
        assert again.status_code == 404
    trail = _audit(data, DEVICE)
    assert [(e.action, e.actor, e.subject) for e in trail[:2]] == [
        ("claimed", ALICE, ALICE),
        ("claim_code_issued", "operator", None),
    ]


def test_an_approval_and_its_audit_entry_survive_kill_9(server: CyanServer, tmp_path: Path) -> None:
    data = server.data_dir
    added = run_cyan(
        "devices",
        "add",
        LOST,
        "--key",
        str(_key_file(tmp_path / "k.pem", 3)),
        "--owner",
        ALICE,
        "--data-dir",
        str(data),
    )
    assert added.returncode == 0, str(added)

    async def lose_its_key() -> str:
        # The device regenerated its key: it presents a new one, which waits for its owner (strict policy).
        server_key = _server_key(data)
        spec = VirtualDeviceSpec(LOST, fixed_device_key(3), fault=Fault.AMNESIA)
        device = VirtualDevice(spec, server_key, config=SimConfig(backoff_scale=0.05))
        device.start("127.0.0.1", server.device_port)
        try:
            for _ in range(400):
                pending: list[PendingKey] = await asyncio.to_thread(
                    read_store, data, lambda store: store.keys.list_pending_keys(LOST)
                )
                if pending:
                    return pending[0].fingerprint
                await asyncio.sleep(0.05)
            raise AssertionError("the new key never became pending")
        finally:
            await device.stop()

    new = asyncio.run(lose_its_key())
    alice = _token(server, ALICE)
    approved = httpx.post(
        f"{server.api_url}/v1/devices/{LOST}/keys/approve", json={"fingerprint": new}, headers=alice, timeout=10
    )
    assert approved.status_code == 200, approved.text
    os.kill(server.proc.process.pid, signal.SIGKILL)  # at once, before anything else can be written
    server.proc.process.wait(timeout=10)
    record = _device(data, LOST)
    assert record is not None
    assert record.key_fingerprint == new
    (entry,) = [e for e in _audit(data, LOST) if e.action == "approved"]
    assert (entry.actor, entry.new_fingerprint) == (ALICE, new)


def test_the_command_line_refuses_what_it_cannot_apply(server: CyanServer, tmp_path: Path) -> None:
    data = str(server.data_dir)
    key = str(_key_file(tmp_path / "k.pem", 1))
    assert run_cyan("devices", "add", DEVICE, "--key", key, "--name", "kitchen", "--data-dir", data).returncode == 0
    # A name, and a mistyped id: both resolved or refused, never a policy that applies to nothing.
    done = run_cyan("policy", "set", "quarantine", "--device", "kitchen", "--data-dir", data)
    assert (done.returncode, done.stdout.strip()) == (0, f"Key policy of device {DEVICE}: quarantine")
    typo = run_cyan("policy", "set", "quarantine", "--device", "kitchne", "--data-dir", data)
    assert typo.returncode == 1
    assert "no device 'kitchne'" in typo.stderr
    policies = read_store(server.data_dir, lambda store: store.keys.list_policies())
    assert [p.scope for p in policies] == [DEVICE]
    for args in (
        ("policy", "rekey", "kitchne"),
        ("policy", "approve", "kitchne", "--fingerprint", "SHA256:" + "0" * 64),
        ("policy", "audit", "kitchne"),
        ("devices", "group", "porch", "kitchne"),
        ("devices", "attempts", "kitchne"),
        ("devices", "rename", "kitchne", "pantry"),
    ):
        refused = run_cyan(*args, "--data-dir", data)
        assert refused.returncode == 1, str(refused)
        assert "no device 'kitchne'" in refused.stderr, str(refused)
    # Names resolve everywhere.
    assert run_cyan("devices", "group", "porch", "kitchen", "--data-dir", data).returncode == 0
    assert run_cyan("devices", "group", "porch", "--data-dir", data).stdout.split() == [DEVICE]
    audit = run_cyan("policy", "audit", "kitchen", "--data-dir", data)
    assert audit.returncode == 0
    assert "policy_set" in audit.stdout


def test_keys_provision_over_the_api_registers_new_devices(server: CyanServer, tmp_path: Path) -> None:
    token = _token(server, ADMIN)["Authorization"].split()[1]
    new_id = "1234567890abcdef12345678"
    ids = tmp_path / "ids.csv"
    ids.write_text(f"{new_id},porch\n")
    api = ("--api", server.api_url, "--token", token)
    done = run_cyan("keys", "provision", "--ids", str(ids), "--out", str(tmp_path / "keys"), *api)
    assert done.returncode == 0, str(done)
    record = _device(server.data_dir, new_id)
    assert record is not None
    assert (record.owner, record.name) == (ADMIN, "porch")
    # An account that may not register new ids is told so, and what to do.
    token = _token(server, ALICE)["Authorization"].split()[1]
    other = "1234567890abcdef1234567a"
    ids.write_text(f"{other}\n")
    api = ("--api", server.api_url, "--token", token)
    refused = run_cyan("keys", "provision", "--ids", str(ids), "--out", str(tmp_path / "other"), *api)
    assert refused.returncode == 1
    assert "may not register new ones" in refused.stdout
    assert "self-registration" in refused.stderr
    assert _device(server.data_dir, other) is None


def test_a_lost_server_key_is_not_replaced_silently(server: CyanServer, tmp_path: Path) -> None:
    data = server.data_dir
    key = str(_key_file(tmp_path / "k.pem", 1))
    assert run_cyan("devices", "add", DEVICE, "--key", key, "--data-dir", str(data)).returncode == 0
    expected = fingerprint(_server_key(data))
    assert server.stop() == 0
    (data / "server_key.pem").rename(tmp_path / "backup.pem")
    refused = run_cyan(*_serve(data))
    assert refused.returncode == 1
    assert f"{data / 'server_key.pem'} is missing" in refused.stderr
    assert expected in refused.stderr
    assert "--new-server-key" in refused.stderr
    assert not (data / "server_key.pem").exists()
    # Another key put in its place is refused too.
    (data / "server_key.pem").write_bytes(encode_private_key_pem(generate_server_key()))
    wrong = run_cyan(*_serve(data))
    assert wrong.returncode == 1
    assert f"the devices were given {expected}" in wrong.stderr
    # Restored, it starts as before; replaced on purpose, the change is on record and the old file kept.
    (tmp_path / "backup.pem").replace(data / "server_key.pem")
    restarted = CyanServer.start(data, tmp_path / "logs-2")
    assert restarted.stop() == 0
    replaced = CyanServer.start(data, tmp_path / "logs-3", extra=["--new-server-key"])
    try:
        assert "replaced now" in replaced.proc.stdout()
    finally:
        assert replaced.stop() == 0
    trail = read_store(data, lambda store: store.audit.recent(subject="server_key"))
    assert [e.action for e in trail] == ["server_key_replaced", "server_key_created"]
    assert (trail[0].old_fingerprint, trail[0].new_fingerprint) == (expected, fingerprint(_server_key(data)))
    assert trail[0].new_fingerprint != expected
    assert any(p.name.startswith("server_key.pem.replaced-") for p in data.iterdir())
