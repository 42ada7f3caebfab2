"""Helpers for the `cyan keys` command tests: a Cyan data directory, the CLI run in-process, and a recording
stand-in for the Cloud API (httpx.MockTransport). tests/dfu uses them too."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.cli import keys as keys_cli
from cyan.cli import main
from cyan.cli._keys_cloud import ApiRegistry
from cyan.cloud.models import DeviceRecord
from cyan.config import Settings
from cyan.keys import fingerprint, load_public_key
from cyan.service import prepare_data_directory, write_server_key_file
from cyan.store import SqliteStore

TOKEN = "tok-123"

VECTORS = Path(__file__).parents[1] / "vectors"


def make_cloud(root: Path, address: str = "10.0.0.2", port: int = 5683) -> Path:
    """A data directory as `cyan serve` leaves it: database, server key (the 3.1.0 recordings' key) and the
    server-key file it publishes for ``address:port``."""
    data = root / "cyan-data"
    data.mkdir(parents=True)
    key_path = data / "server_key.pem"
    key_path.write_bytes((VECTORS / "device-os-3.1.0" / "server_key.pem").read_bytes())
    key_path.chmod(0o600)
    settings = Settings(data_dir=data, public_address=address)
    server_keys = prepare_data_directory(settings)
    write_server_key_file(settings, server_keys.private_key.public_key(), port)
    return data


def server_public_key(data: Path) -> rsa.RSAPublicKey:
    return load_public_key((data / "server_public_key.der").read_bytes())


def registered(data: Path, device_id: str) -> DeviceRecord | None:
    async def get() -> DeviceRecord | None:
        store = SqliteStore(Settings(data_dir=data).database_path)
        await store.open()
        try:
            return await store.devices.get(device_id)
        finally:
            await store.close()

    return asyncio.run(get())


@dataclass
class Ran:
    code: int
    out: str
    err: str


def cyan(capsys: pytest.CaptureFixture[str], *args: str) -> Ran:
    """Run `cyan ARGS` in this process; its exit status and what it printed."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return Ran(code, captured.out, captured.err)


class RecordingApi:
    """A Cyan Cloud API stand-in for httpx.MockTransport: records requests, answers like routes_devices.py."""

    def __init__(self, *, refuse_provisioning: bool = False, held: dict[str, str] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.refuse_provisioning = refuse_provisioning
        self.held = dict(held or {})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(
                401, json={"error": "invalid_token", "error_description": "The access token is invalid"}
            )
        if path == "/v1/user":
            return httpx.Response(200, json={"username": "ops@example.com"})
        if request.method == "GET" and path.startswith("/v1/devices/"):
            device_id = path.rsplit("/", 1)[1]
            if device_id not in self.held:
                return httpx.Response(404, json={"error": "Device not found"})
            return httpx.Response(200, json={"id": device_id, "key_fingerprint": self.held[device_id]})
        if request.method == "POST" and path.startswith("/v1/provisioning/"):
            if self.refuse_provisioning:
                return httpx.Response(
                    403, json={"error": "Permission Denied", "info": "device belongs to someone else"}
                )
            form = dict(parse_qsl(request.content.decode()))
            device_id = path.rsplit("/", 1)[1]
            self.held[device_id] = fingerprint(load_public_key(form["publicKey"].encode()))
            return httpx.Response(200, json={"ok": True, "id": device_id, "key_fingerprint": self.held[device_id]})
        if request.method == "PUT" and path.startswith("/v1/devices/"):
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(404, json={"error": "Not Found"})

    def form(self, index: int = -1) -> dict[str, str]:
        posts = [r for r in self.requests if r.method == "POST"]
        return dict(parse_qsl(posts[index].content.decode()))


def use_api(monkeypatch: pytest.MonkeyPatch, api: RecordingApi) -> None:
    """Make `cyan keys --api` talk to ``api`` instead of the network."""
    real = ApiRegistry

    def factory(url: str, token: str | None) -> ApiRegistry:
        return real(url, token, transport=httpx.MockTransport(api))

    monkeypatch.setattr(keys_cli, "ApiRegistry", factory)
