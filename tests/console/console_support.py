"""Harness for the console's browser tests: `cyan serve`'s service on loopback in a thread of its own (the test
drives Chromium from the main thread with Playwright's sync API), simulated devices on the service's loop, and
Debian's Chromium, launched as CI can: never a browser that Playwright downloads.

Without /usr/bin/chromium the tests skip with the reason, except under CI (env CI set), where they fail:
scripts/install-chromium installs it.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cyan.app import Actor
from cyan.cloud.models import AttemptOutcome, DeviceRecord, Role
from cyan.cloud.ota import UpdateConfig
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import ServerConfig
from cyan.service import Service, ensure_server_keys
from cyan.sim import SimConfig, VirtualDevice, VirtualDeviceSpec, registered_public_key
from cyan.testing import loopback_settings

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("CYAN_CHROMIUM", "/usr/bin/chromium"))
#: Screenshots of each page, kept after the run (ignored by git).
ARTIFACTS = REPO / "test-artifacts" / "console"
#: As CI can run it: no sandbox (root in a container), nothing fetched from elsewhere, a fresh profile.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN, ALICE, BOB = "ops@example.com", "alice@example.com", "bob@example.com"
PASSWORD = "correct horse"
FAST = ServerConfig(identity_timeout=2.0, hello_timeout=2.0, describe_delay=0.2, request_timeout=5.0)
SIM = SimConfig(backoff_scale=0.02)


def require_chromium() -> Path:
    """Debian's Chromium; skips the test without it, or fails under CI, which must install it."""
    if CHROMIUM.exists():
        return CHROMIUM
    reason = f"no Chromium at {CHROMIUM}: run scripts/install-chromium (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it before the tests)")
    pytest.skip(reason)


class LiveService:
    """A started `Service` on its own event loop in a thread; `run` executes a coroutine there."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="cyan-console-service", daemon=True)
        self.devices: dict[str, VirtualDevice] = {}
        self._service: Service | None = None

    @property
    def service(self) -> Service:
        assert self._service is not None
        return self._service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.api_port}"

    def run(self, work: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        settings = loopback_settings(self.data, workers=1)
        service = Service(settings, ensure_server_keys(settings), protocol=FAST)
        service.updates.config = UpdateConfig(start_delay=0.05, retry_delay=0.2, reconnect_timeout=15)
        await service.start()
        self._service = service
        operator = Actor.operator()
        await service.app.accounts.create_user(operator, ADMIN, PASSWORD, role=Role.ADMIN)
        await service.app.accounts.create_user(operator, ALICE, PASSWORD)
        await service.app.accounts.create_user(operator, BOB, PASSWORD)

    def stop(self) -> None:
        try:
            if self._service is not None:
                self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    async def _stop(self) -> None:
        for device in self.devices.values():
            await device.stop()
        await self.service.stop()

    def register(self, spec: VirtualDeviceSpec, *, name: str, owner: str | None = ALICE) -> None:
        der = public_key_der(registered_public_key(spec))
        record = DeviceRecord(
            id=spec.device_id,
            name=name,
            owner=owner,
            public_key_der=der,
            key_fingerprint=fingerprint(der),
            created_at=datetime.now(UTC),
        )
        self.run(self.service.store.devices.add(record))

    def connect(self, spec: VirtualDeviceSpec) -> VirtualDevice:
        """Start the simulated device (it connects, and keeps retrying as the firmware does)."""

        async def start() -> VirtualDevice:
            device = VirtualDevice(spec, self.service.keys.private_key.public_key(), config=SIM)
            device.start("127.0.0.1", self.service.device_server.port)
            return device

        device = self.run(start())
        self.devices[spec.device_id] = device
        return device

    def wait_failed_attempt(self, device_id: str, timeout: float = 15.0) -> None:
        """Until the server has recorded a failed attempt of the device (so a page opened now shows it)."""

        async def recorded() -> None:
            while True:
                await self.service.cloud.flush()
                found = await self.service.store.attempts.recent(device_id, limit=1)
                if found and found[0].outcome is AttemptOutcome.FAILED:
                    return
                await asyncio.sleep(0.05)

        self.run(asyncio.wait_for(recorded(), timeout), timeout + 5)

    def device_notes(self, device_id: str) -> str | None:
        """The notes stored for the device, as the store has them."""

        async def read() -> str | None:
            record = await self.service.store.devices.get(device_id)
            return None if record is None else record.notes

        return self.run(read())

    def wait_connected(self, device_id: str, timeout: float = 15.0) -> None:
        device = self.devices[device_id]
        self.run(asyncio.wait_for(device.connected.wait(), timeout), timeout + 5)
