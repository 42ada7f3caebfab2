"""A `Service` on loopback with ephemeral ports, and simulated devices registered with it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cyan.cloud.models import ConnectionAttempt, DeviceRecord, UpdateJob
from cyan.config import all_cores
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import ServerConfig
from cyan.service import Service, ensure_server_keys
from cyan.sim import Fleet, SimConfig, VirtualDeviceSpec, registered_public_key
from cyan.testing import loopback_settings

FAST = ServerConfig(identity_timeout=2.0, hello_timeout=2.0, describe_delay=0.2, request_timeout=3.0)
SIM = SimConfig(backoff_scale=0.05)


def loopback_service(
    data: Path,
    *,
    workers: int | None = None,
    device_processes: int = 0,
    protocol: ServerConfig = FAST,
    **settings_overrides: Any,
) -> Service:
    """`cyan serve`'s service on 127.0.0.1 with ephemeral device and API ports (not started)."""
    settings = loopback_settings(
        data,
        workers=all_cores() if workers is None else workers,
        device_processes=device_processes,
        **settings_overrides,
    )
    return Service(settings, ensure_server_keys(settings), protocol=protocol)


def run_with_service(
    data: Path,
    scenario: Callable[[Service], Awaitable[None]],
    *,
    prepare: Callable[[Service], None] | None = None,
    device_processes: int = 0,
    protocol: ServerConfig = FAST,
    **settings_overrides: Any,
) -> None:
    """Start a `loopback_service` (after `prepare`), run `scenario` on it, stop it whatever happens."""

    async def main() -> None:
        service = loopback_service(data, device_processes=device_processes, protocol=protocol, **settings_overrides)
        if prepare is not None:
            prepare(service)
        await service.start()
        try:
            await scenario(service)
        finally:
            await service.stop()

    asyncio.run(main())


async def register(service: Service, specs: Sequence[VirtualDeviceSpec]) -> None:
    """Register the devices with the public keys they will present."""
    records = []
    for spec in specs:
        der = public_key_der(registered_public_key(spec))
        records.append(
            DeviceRecord(
                id=spec.device_id, public_key_der=der, key_fingerprint=fingerprint(der), created_at=datetime.now(UTC)
            )
        )
    await service.store.devices.add_many(records)


async def attempts_once_connected(
    service: Service, specs: Sequence[VirtualDeviceSpec], config: SimConfig = SIM
) -> list[ConnectionAttempt]:
    """Run the devices until all are connected; every connection attempt the server recorded meanwhile."""
    fleet = Fleet(list(specs), service.keys.private_key.public_key(), config=config)
    fleet.start("127.0.0.1", service.device_server.port)
    try:
        assert await fleet.wait_connected(timeout=20)
        await service.cloud.flush()
        return await service.store.attempts.recent(limit=1000)
    finally:
        await fleet.stop()


async def jobs_finished(service: Service, jobs: Sequence[UpdateJob], timeout: float = 30.0) -> list[UpdateJob]:
    """The jobs once each has succeeded or failed, as the update manager shows them."""

    async def done() -> list[UpdateJob]:
        while True:
            current = [await service.updates.get(job.id or 0) for job in jobs]
            if all(job.state.finished for job in current):
                return current
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(done(), timeout)
