"""PostgreSQL and Redis restarted under two connected nodes: the nodes ride through, the devices stay connected
(or come back by themselves), nothing acknowledged is lost, and what cannot be answered meanwhile is a 503 that
says why.

The servers are the test's own (initdb and pg_ctl on a temporary directory, redis-server on a free port): the
shared ones on 5432 and 6379 are never touched.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_support import (
    Node,
    PrivatePostgres,
    PrivateRedis,
    SseReader,
    apoll,
    fleet_specs,
    make_fleet,
    prepare_data_dirs,
    running,
)
from test_cluster import _setup_accounts

from cyan.sim import Fleet

DEVICES = 16

# Their bounds are the product's (devices back within 30 s): they run alone (scripts/test).
pytestmark = pytest.mark.exclusive


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    # Outside pytest's temporary directory: the postgres user must be able to reach it.
    directory = Path(tempfile.mkdtemp(prefix="cyan-test-pg-"))
    server = PrivatePostgres(directory / "cluster")
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_nodes_ride_through_a_postgresql_and_a_redis_restart(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    database = private_postgres.url
    bus = f"{private_redis.url}?prefix=cyan:&lease=3&timeout=2"
    dirs = prepare_data_dirs(tmp_path, 2)
    nodes = [Node(i + 1, d, f"{database}?connect_timeout=2", bus) for i, d in enumerate(dirs)]
    specs = fleet_specs(DEVICES, seed=7)
    token = asyncio.run(_setup_accounts(database, specs))
    with running(*nodes):
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        asyncio.run(_scenario(nodes, private_postgres, private_redis, specs, token))


async def _call(client: httpx.AsyncClient, node: Node, device_id: str, token: str, arg: str) -> httpx.Response:
    return await client.post(
        f"{node.api}/v1/devices/{device_id}/setArg", data={"arg": arg}, headers={"Authorization": f"Bearer {token}"}
    )


async def _status_is(client: httpx.AsyncClient, method: str, url: str, token: str, status: int, **kw: Any) -> bool:
    try:
        answer = await client.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kw)
    except httpx.TimeoutException:
        return False
    if answer.status_code == 503:
        # Never a bare failure: the reason is said.
        body = answer.json()
        assert body["error"] == "Service unavailable"
        assert body["error_description"]
    assert answer.status_code != 500, answer.text
    return answer.status_code == status


async def _scenario(
    nodes: list[Node], postgres: PrivatePostgres, redis_server: PrivateRedis, specs: list[Any], token: str
) -> None:
    one, two = nodes
    # Half the devices on each node.
    first = make_fleet(specs[: DEVICES // 2])
    second = make_fleet(specs[DEVICES // 2 :])
    first.start("127.0.0.1", one.device_port)
    second.start("127.0.0.1", two.device_port)
    fleets = (first, second)
    try:
        await apoll(lambda: _all_connected(fleets), "every device connected", timeout=60)
        on_one = first.devices[0].device_id
        across = f"{two.api}/v1/devices/{on_one}/setArg"  # through node2 to a device on node1
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=10) as client:
            await apoll(
                lambda: _status_is(client, "POST", across, token, 200, data={"arg": "x"}),
                "a call across the nodes answered",
            )

            # -- PostgreSQL restarts ------------------------------------------------------------------
            before = first.devices[1].device_id
            answer = await client.put(f"{two.api}/v1/devices/{before}", json={"name": "before-pg"}, headers=auth)
            assert answer.status_code == 200, answer.text
            postgres.stop("fast")
            devices_url = f"{two.api}/v1/devices"
            await apoll(
                lambda: _status_is(client, "GET", devices_url, token, 503),
                "a 503 while the database is down",
                timeout=30,
            )
            assert _all_connected(fleets)  # the sessions do not need the database to go on
            postgres.start()
            await apoll(lambda: _status_is(client, "GET", devices_url, token, 200), "the API back", timeout=30)
            renamed = second.devices[0].device_id
            answer = await client.put(
                f"{one.api}/v1/devices/{renamed}",
                json={"name": "after-pg"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 200, answer.text
            await apoll(lambda: _all_connected(fleets), "every device connected after the database's restart")
            assert (await _call(client, two, on_one, token, "pg")).status_code == 200

            # -- Redis restarts (empty: it holds only what the nodes can rebuild) -----------------------
            stream = SseReader(f"{two.api}/v1/devices/events", token)
            stream.start()
            await asyncio.wait_for(stream.opened.wait(), 10)
            redis_server.stop()
            await apoll(
                lambda: _status_is(client, "POST", across, token, 503, data={"arg": "y"}),
                "a 503 for a call across nodes while the bus is down",
                timeout=30,
            )
            # A device held by the node asked is still answered: its session is there.
            assert (await _call(client, one, on_one, token, "local")).status_code == 200
            redis_server.start()
            await apoll(
                lambda: _status_is(client, "POST", across, token, 200, data={"arg": "z"}),
                "calls across nodes again once the bus is back (presences claimed again)",
                timeout=30,
            )
            await apoll(lambda: _all_connected(fleets), "every device connected after the bus's restart")
            # The stream on node2 is told that other nodes' events may have been lost meanwhile (at its next
            # event or keep-alive): an event published through node2 brings it.
            answer = await client.post(
                f"{two.api}/v1/devices/events", data={"name": "after", "data": "x"}, headers=auth
            )
            assert answer.status_code == 200, answer.text
            await apoll(lambda: bool(stream.named("after")), "the event after the restart on the stream")
            names = [name for name, _ in stream.events]
            assert "cyan/stream/gap" in names
            assert names.index("cyan/stream/gap") < names.index("after")
            await stream.stop()
            # Nothing acknowledged was lost.
            answer = await client.get(f"{two.api}/v1/devices/{renamed}", headers=auth)
            assert answer.json()["name"] == "after-pg"
            answer = await client.get(f"{one.api}/v1/devices/{before}", headers=auth)
            assert answer.json()["name"] == "before-pg"
    finally:
        await first.stop()
        await second.stop()


def _all_connected(fleets: tuple[Fleet, ...]) -> bool:
    return all(device.connected.is_set() for fleet in fleets for device in fleet.devices)
