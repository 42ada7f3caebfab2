"""`cyan devices flash|updates|group` against a running service with simulated devices: a rollout with a
progress bar per device and a summary, groups, and a refusal (protocol.md §7)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from cyan.app import Actor
from cyan.cloud.models import DeviceRecord, Role
from cyan.cloud.ota import UpdateConfig
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import DEVICE_OS_0_6_1, DEVICE_OS_3_1_0, ServerConfig
from cyan.protocol.binary import ModuleFunction, build_module
from cyan.service import Service, ensure_server_keys
from cyan.sim import Fault, Fleet, SimConfig, VirtualDeviceSpec, registered_public_key
from cyan.testing import fixed_device_key, loopback_settings

CYAN = Path(sys.executable).with_name("cyan")
OWNER = "ops@example.com"


def _image(platform: int = 6, version: int = 5) -> bytes:
    body = hashlib.sha256(b"cli %d" % version).digest() * 1000
    # Built against 0.6.1's system part (105), so it runs on both generations of the fleet.
    return build_module(
        body,
        platform_id=platform,
        product_id=900,
        product_version=version,
        dependencies=((ModuleFunction.SYSTEM_PART, 1, 105),),
    )


async def _cyan(*args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CYAN_TOKEN", "CYAN_SERVER")}
    env["COLUMNS"] = "160"
    if token is not None:
        env["CYAN_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        str(CYAN), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _run(tmp_path: Path, scenario: Callable[[Service, Fleet, str], Awaitable[None]]) -> None:
    async def main() -> None:
        settings = loopback_settings(tmp_path / "data")
        service = Service(settings, ensure_server_keys(settings), protocol=ServerConfig(describe_delay=0.2))
        service.updates.config = UpdateConfig(start_delay=0.05, retry_delay=0.1, reconnect_timeout=10)
        await service.start()
        specs = [
            VirtualDeviceSpec(f"{1:024x}", fixed_device_key(1), firmware=DEVICE_OS_3_1_0, name="kitchen"),
            VirtualDeviceSpec(f"{2:024x}", fixed_device_key(2), firmware=DEVICE_OS_0_6_1, name="garage"),
            VirtualDeviceSpec(
                f"{3:024x}", fixed_device_key(3), fault=Fault.OTA_DROP_CHUNKS, ota_drop_every=3, name="porch"
            ),
        ]
        fleet = Fleet(specs, service.keys.private_key.public_key(), config=SimConfig(backoff_scale=0.05))
        try:
            await service.app.accounts.create_user(Actor.operator(), OWNER, "a long enough password")
            for spec in specs:
                der = public_key_der(registered_public_key(spec))
                await service.store.devices.add(
                    DeviceRecord(
                        id=spec.device_id,
                        name=spec.name,
                        owner=OWNER,
                        public_key_der=der,
                        key_fingerprint=fingerprint(der),
                        created_at=datetime.now(UTC),
                    )
                )
            fleet.start("127.0.0.1", service.device_server.port)
            assert await fleet.wait_connected(timeout=10)
            token = (await service.app.accounts.create_token(Actor.operator(), OWNER, None)).token
            await scenario(service, fleet, token)
        finally:
            await fleet.stop()
            await service.stop()

    asyncio.run(main())


def test_flash_all_follows_every_device_to_the_end(tmp_path: Path) -> None:
    async def scenario(service: Service, fleet: Fleet, token: str) -> None:
        path = tmp_path / "app-v5.bin"
        path.write_bytes(_image())
        url = f"http://127.0.0.1:{service.api_port}"
        code, out, err = await _cyan(
            "devices", "flash", "--all", str(path), "--concurrency", "2", "--server", url, token=token
        )
        assert code == 0, out + err
        assert "app-v5.bin: 32068 bytes, Photon (platform 6), user_part, product version 5" in out
        for name in ("kitchen", "garage", "porch"):
            assert name in out
        assert "3 succeeded" in out
        assert all(device.image == _image() for device in fleet.devices)
        code, out, err = await _cyan("devices", "updates", "kitchen", "--server", url, token=token)
        assert code == 0, out + err
        assert "succeeded" in out
        assert "hash" in out

    _run(tmp_path, scenario)


def test_flash_a_group_and_a_refusal(tmp_path: Path) -> None:
    async def scenario(service: Service, fleet: Fleet, token: str) -> None:
        data_dir = str(service.settings.data_dir)
        code, out, err = await _cyan("devices", "group", "yard", f"{2:024x}", f"{3:024x}", "--data-dir", data_dir)
        assert (code, out.strip()) == (0, "added 2 device(s) to yard"), err
        code, out, _ = await _cyan("devices", "group", "--data-dir", data_dir)
        assert out.strip() == "yard: 2 device(s)"
        code, out, _ = await _cyan("devices", "group", "yard", "--data-dir", data_dir)
        assert out.split() == [f"{2:024x}", f"{3:024x}"]
        url = f"http://127.0.0.1:{service.api_port}"
        path = tmp_path / "app.bin"
        path.write_bytes(_image(version=6))
        code, out, err = await _cyan("devices", "flash", "--group", "yard", str(path), "--server", url, token=token)
        assert code == 0, out + err
        assert "2 succeeded" in out
        assert fleet[f"{1:024x}"].image != _image(version=6)
        p1 = tmp_path / "p1.bin"
        p1.write_bytes(_image(platform=8))
        code, out, err = await _cyan("devices", "flash", "kitchen", str(p1), "--server", url, token=token)
        assert code == 1
        assert "wrong platform: the binary is built for P1 (platform 8), the device is a Photon (platform 6)" in err
        assert "hint: nothing was sent to any device" in err
        code, _, err = await _cyan("devices", "flash", "kitchen", str(p1), "--server", url)
        assert (code, "no access token" in err) == (1, True)
        code, _, err = await _cyan("devices", "flash", str(p1), "--server", url, token=token)
        assert code == 2
        assert "give the device(s), then the binary" in err
        code, _, err = await _cyan("devices", "group", "yard", "--remove", f"{2:024x}", "--data-dir", data_dir)
        assert code == 0

    _run(tmp_path, scenario)


def test_flash_all_does_not_wait_for_an_offline_device(tmp_path: Path) -> None:
    """A rollout reports the devices that are away as queued and finishes; their updates start when they
    connect, which the server does without this command."""

    async def scenario(service: Service, fleet: Fleet, token: str) -> None:
        away = fleet[f"{2:024x}"]
        await away.stop()
        while service.cloud.device_link(away.device_id) is not None:
            await asyncio.sleep(0.02)
        path = tmp_path / "app-v7.bin"
        path.write_bytes(_image(version=7))
        url = f"http://127.0.0.1:{service.api_port}"
        started = asyncio.get_running_loop().time()
        code, out, err = await _cyan("devices", "flash", "--all", str(path), "--server", url, token=token)
        assert code == 0, out + err
        assert "1 queued: device offline, 2 succeeded" in out
        assert "1 device(s) offline: their updates start when they connect" in out
        # Well before the hour it used to follow an offline device for.
        assert asyncio.get_running_loop().time() - started < 60
        (job,) = await service.updates.list(device_id=away.device_id)
        assert job.state.value == "queued"
        assert job.id is not None
        job_id = job.id
        away.start("127.0.0.1", service.device_server.port)

        async def done() -> None:
            while (await service.updates.get(job_id)).state.value != "succeeded":
                await asyncio.sleep(0.05)

        await asyncio.wait_for(done(), 60)
        assert away.image == _image(version=7)

    _run(tmp_path, scenario)


def test_an_admin_follows_the_update_of_a_device_someone_else_owns(tmp_path: Path) -> None:
    """`GET /v1/devices` lists an account's own devices; an admin's update of another owner's online device
    was reported as `queued: device offline` and left at once (seen updating a Device OS 4.0.2 virtual device
    over UDP with an admin's token)."""

    async def scenario(service: Service, fleet: Fleet, token: str) -> None:
        await service.app.accounts.create_user(
            Actor.operator(), "admin@example.com", "another long password", role=Role.ADMIN
        )
        admin = (await service.app.accounts.create_token(Actor.operator(), "admin@example.com", None)).token
        path = tmp_path / "app-v8.bin"
        path.write_bytes(_image(version=8))
        url = f"http://127.0.0.1:{service.api_port}"
        code, out, err = await _cyan("devices", "flash", f"{1:024x}", str(path), "--server", url, token=admin)
        assert code == 0, out + err
        assert "1 succeeded" in out
        assert "offline" not in out
        assert "kitchen" in out  # named from the fleet's listing
        assert fleet[f"{1:024x}"].image == _image(version=8)

    _run(tmp_path, scenario)
