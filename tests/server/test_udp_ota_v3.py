"""Gen 3 devices updated by OTA protocol v3 through `cyan serve`'s service: the simulator's Argons (Device OS
4.0.2, Hello flag 0x80) on the UDP server, some behind a lossy wire, a rollout started as an operator starts
one, and each job judged by what the device reports after its reset."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from cyan.app import Actor, NewDevice
from cyan.cloud.models import JobState
from cyan.cloud.ota import UpdateConfig
from cyan.keys import udp_public_key_der
from cyan.protocol import build_module
from cyan.service import Service
from cyan.sim import UdpFaults, UdpVirtualDevice
from serve_support import jobs_finished, run_with_service

UPDATES = UpdateConfig(start_delay=0.05, retry_delay=0.1, reconnect_timeout=20.0)
OPERATOR = Actor.operator()


def _key(n: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(0x600 + n, ec.SECP256R1())


def _image(size: int) -> bytes:
    body = b"".join(hashlib.sha256(b"argon app %d" % i).digest() for i in range(size // 32))
    return build_module(body, platform_id=12, module_version=9)


def test_a_rollout_to_argons_some_behind_a_lossy_wire(tmp_path: Path) -> None:
    async def scenario(service: Service) -> None:
        assert service.udp_server is not None
        assert service.keys.udp_private_key is not None
        ids = [f"{0xA000 + n:024x}" for n in range(4)]
        await service.app.devices.register(
            OPERATOR, [NewDevice(device_id, udp_public_key_der(_key(n))) for n, device_id in enumerate(ids)]
        )
        devices = [
            UdpVirtualDevice(
                bytes.fromhex(device_id),
                _key(n),
                service.keys.udp_private_key.public_key(),
                faults=UdpFaults(loss=0.05, duplicate=0.05, reorder=0.05, seed=n) if n % 2 else None,
            )
            for n, device_id in enumerate(ids)
        ]
        for device in devices:
            await device.start("127.0.0.1", service.udp_server.port)
        try:
            await asyncio.wait_for(asyncio.gather(*(d.connected.wait() for d in devices)), 30)
            image = _image(60_000)
            firmware = await service.updates.library.add(image, "argon-app.bin", None)
            updates = service.app.updates
            assert updates is not None
            targets = await updates.targets(OPERATOR, devices=ids)
            jobs = await updates.flash(OPERATOR, targets, firmware)
            for job in await jobs_finished(service, jobs, timeout=150.0):
                # (A transfer the lossy wire defeated would be retried: success is what is required.)
                assert (job.state, job.verification) == (JobState.SUCCEEDED, "hash"), job
                assert job.bytes_sent == len(image)
            for device in devices:
                assert device.image == image
                assert device.update_failures == {}
                # Back after its reset, with the new application in its Describe.
                await asyncio.wait_for(device.connected.wait(), 30)
        finally:
            for device in devices:
                await device.stop()

    def prepare(service: Service) -> None:
        service.updates.config = UPDATES

    run_with_service(tmp_path / "data", scenario, prepare=prepare)
