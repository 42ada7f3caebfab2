"""Particle's whole-fleet lists (`GET /v1/devices`, `GET /v1/products/{product}/devices`) are written a few
hundred devices at a time between turns of the event loop: the JSON must be exactly what pydantic writes for
the whole list, whatever the parts, and the loop must get its turns while a big fleet is listed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from pydantic import TypeAdapter

from cyan.api import schemas
from cyan.app import Actor
from cyan.cloud.models import DeviceRecord, Role
from cyan.keys import fingerprint, public_key_der
from cyan.service import Service, ensure_server_keys
from cyan.testing import fixed_device_key, loopback_settings

ADMIN, ALICE, PASSWORD = "ops@example.com", "alice@example.com", "correct horse"
#: More than two parts of the route's 250 and of the use case's 500; P1s (platform 8) only in the middle part,
#: so that a product's list has parts with no device of it.
FLEET = 1_100


def _record(n: int, der: bytes) -> DeviceRecord:
    return DeviceRecord(
        id=f"{n:024x}",
        name=f"unit-{n:04d}",
        owner=ALICE if n % 3 else None,
        public_key_der=der,
        key_fingerprint=fingerprint(der),
        platform_id=8 if 300 <= n < 420 else 6,
    )


def test_the_lists_are_written_whole_and_the_loop_gets_its_turns(tmp_path: Path) -> None:
    async def main() -> None:
        settings = loopback_settings(tmp_path / "data")
        service = Service(settings, ensure_server_keys(settings))
        await service.start()
        try:
            operator = Actor.operator()
            await service.app.accounts.create_user(operator, ADMIN, PASSWORD, role=Role.ADMIN)
            await service.app.accounts.create_user(operator, ALICE, PASSWORD)
            der = public_key_der(fixed_device_key(1).public_key())
            await service.store.devices.add_many([_record(n, der) for n in range(FLEET)])
            admin = (await service.app.accounts.create_token(operator, ADMIN)).token
            alice = (await service.app.accounts.create_token(operator, ALICE)).token
            turns = 0

            async def count_turns() -> None:
                nonlocal turns
                while True:
                    await asyncio.sleep(0)
                    turns += 1

            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.api_port}", timeout=30) as client:
                counter = asyncio.create_task(count_turns())
                try:
                    whole = await client.get("/v1/devices?all=true", headers={"Authorization": f"Bearer {admin}"})
                finally:
                    counter.cancel()
                assert whole.status_code == 200
                listed = whole.json()
                assert [d["id"] for d in listed] == [f"{n:024x}" for n in range(FLEET)]
                # The same bytes as the whole list validated and written at once.
                models = [schemas.Device.model_validate(d) for d in listed]
                assert whole.content == TypeAdapter(list[schemas.Device]).dump_json(models)
                assert turns > 5  # the list let the loop turn between its parts

                mine = await client.get("/v1/devices", headers={"Authorization": f"Bearer {alice}"})
                assert [d["id"] for d in mine.json()] == [f"{n:024x}" for n in range(FLEET) if n % 3]

                p1s = await client.get("/v1/products/8/devices?all=true", headers={"Authorization": f"Bearer {admin}"})
                assert p1s.status_code == 200
                product = schemas.ProductDevices.model_validate_json(p1s.content)
                assert [d.id for d in product.devices] == [f"{n:024x}" for n in range(300, 420)]
                assert p1s.content == product.model_dump_json().encode()

                none = await client.get(
                    "/v1/products/12/devices?all=true", headers={"Authorization": f"Bearer {admin}"}
                )
                assert none.content == b'{"devices":[],"meta":{"total_pages":1}}'
        finally:
            await service.stop()

    asyncio.run(main())
