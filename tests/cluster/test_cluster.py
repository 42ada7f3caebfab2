"""Three `cyan serve` nodes as processes on PostgreSQL and Redis, behind HAProxy with deploy/haproxy.cfg, and a
simulated fleet connecting through the balancer: calls, reads and events cross nodes; `kill -9` of a node; the
node coming back.

100 devices, and 300 in the variant marked `slow` (left out by `-m "not slow"`). The same scenario with 1,000
devices passes too (`run_cluster_scenario`); it is not part of the suite, for its time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_support import (
    Balancer,
    Node,
    SseReader,
    apoll,
    device_records,
    fleet_specs,
    make_fleet,
    prepare_data_dirs,
    presences,
    require_haproxy,
    running,
)
from sqlalchemy import URL

import servers
from cyan.app import Actor, Application
from cyan.cloud.models import Role
from cyan.protocol.binary import ModuleFunction, build_module
from cyan.sim import Fleet
from cyan.store import open_store

# Their bounds are the product's (devices back within 30 s): they run alone (scripts/test).
pytestmark = pytest.mark.exclusive

OWNER = "ops@example.com"


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Any:
    with servers.fresh_prefix(request.node.nodeid) as prefix:
        yield prefix


async def _setup_accounts(database: str, specs: list[Any]) -> str:
    """The owner, a token for the API, and the fleet registered (what `cyan users add`, `cyan tokens create` and
    `cyan sim --register` do), straight on the shared database."""
    store = open_store(database)
    await store.open()
    try:
        app = Application(store)
        await app.accounts.create_user(Actor.operator(), OWNER, "correct horse battery", role=Role.ADMIN)
        issued = await app.accounts.create_token(Actor.operator(), OWNER)
        await store.devices.add_many(device_records(specs, OWNER))
        return issued.token
    finally:
        await store.close()


def _cluster(tmp_path: Path, postgres_url: URL, prefix: str) -> tuple[list[Node], Balancer, str]:
    database = postgres_url.render_as_string(hide_password=False)
    # A short lease: a killed node's devices are free within 3 s.
    bus = f"{servers.REDIS_URL}?prefix={prefix}&lease=3"
    dirs = prepare_data_dirs(tmp_path, 3)
    nodes = [Node(i + 1, d, database, bus, firmware_dir=tmp_path / "firmware") for i, d in enumerate(dirs)]
    return nodes, Balancer(nodes, tmp_path), database


def _by_node(prefix: str, fleet: Fleet) -> dict[str, list[str]]:
    held: dict[str, list[str]] = collections.defaultdict(list)
    ids = {d.device_id for d in fleet.devices}
    for device, node in presences(servers.REDIS_URL, prefix).items():
        if device in ids:
            held[node].append(device)
    return held


async def _api(client: httpx.AsyncClient, method: str, url: str, token: str, **kwargs: Any) -> httpx.Response:
    return await client.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kwargs)


def run_cluster_scenario(tmp_path: Path, postgres_url: URL, prefix: str, devices: int) -> None:
    require_haproxy()
    nodes, balancer, database = _cluster(tmp_path, postgres_url, prefix)
    specs = fleet_specs(devices)
    token = asyncio.run(_setup_accounts(database, specs))
    with running(*nodes, balancer):
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        balancer.start()
        asyncio.run(_scenario(nodes, balancer, prefix, specs, token, tmp_path))


async def _scenario(
    nodes: list[Node], balancer: Balancer, prefix: str, specs: list[Any], token: str, tmp_path: Path
) -> None:
    fleet = make_fleet(specs)
    fleet.start("127.0.0.1", balancer.device_port, ramp=200)
    publishing: asyncio.Task[None] | None = None
    sse: SseReader | None = None
    try:
        await apoll(lambda: fleet.wait_connected(timeout=0.5), "every device connected", timeout=120)
        await apoll(lambda: len(_by_node(prefix, fleet)) == 3, "devices held by all three nodes", timeout=20)
        await apoll(lambda: sum(map(len, _by_node(prefix, fleet).values())) == len(specs), "every presence claimed")
        held = _by_node(prefix, fleet)
        node_of = {device: node for node, ids in held.items() for device in ids}
        one, two, three = nodes

        async with httpx.AsyncClient(timeout=30) as client:
            # -- across nodes: a call and a read through a node that does not hold the device -----------
            for device_id in held[one.node_id][:3] + held[three.node_id][:3]:
                through = two
                answer = await _api(
                    client, "POST", f"{through.api}/v1/devices/{device_id}/setArg", token, data={"arg": "hello"}
                )
                assert answer.status_code == 200, answer.text
                assert answer.json()["return_value"] == 5
                read = await _api(client, "GET", f"{through.api}/v1/devices/{device_id}/lastArg", token)
                assert read.status_code == 200, read.text
                assert read.json()["result"] == "hello"
            # A device's own error, from its node: no such function.
            missing = await _api(
                client, "POST", f"{two.api}/v1/devices/{held[one.node_id][0]}/nope", token, data={"arg": ""}
            )
            assert missing.status_code == 404, missing.text
            # Through the balancer too, whichever node answers.
            for device_id in list(node_of)[:6]:
                answer = await _api(
                    client, "POST", f"{balancer.api}/v1/devices/{device_id}/setArg", token, data={"arg": "lb"}
                )
                assert answer.status_code == 200, answer.text

            # -- events: published on one node, streamed by another, in order per device --------------
            sse = SseReader(f"{two.api}/v1/devices/events/seq", token)
            sse.start()
            await asyncio.wait_for(sse.opened.wait(), 10)
            # Devices the update and the rollout below restart are left out: they may come back on any node.
            targets = [held[one.node_id][1], held[three.node_id][1]]
            offline = held[three.node_id][2]
            publishers = [d for d in held[one.node_id][:6] + held[three.node_id][:13] if d not in [*targets, offline]]
            sent: dict[str, list[int]] = collections.defaultdict(list)

            async def publish_numbered() -> None:
                number = 0
                while True:
                    number += 1
                    for device_id in publishers:
                        if fleet[device_id].publish("seq", str(number)):
                            sent[device_id].append(number)
                    # The firmware sends at most one event a second (and bursts of four): at its pace.
                    await asyncio.sleep(1.05)

            publishing = asyncio.get_running_loop().create_task(publish_numbered())
            await apoll(
                lambda: all(len(sent[d]) >= 2 for d in publishers) and len(sse.named("seq")) >= 2 * len(publishers),
                "events from both other nodes on node2's stream",
            )
            # A device's subscription crosses nodes: an event published through node2's API reaches devices
            # of every node (vdev/ping is answered with vdev/pong by the simulated application).
            pong = SseReader(f"{two.api}/v1/devices/events/vdev/pong", token)
            pong.start()
            await asyncio.wait_for(pong.opened.wait(), 10)
            ping = await _api(
                client, "POST", f"{two.api}/v1/devices/events", token, data={"name": "vdev/ping", "data": "x"}
            )
            assert ping.status_code == 200, ping.text
            await apoll(lambda: len(pong.named("vdev/pong")) == len(specs), "every device answering the ping")
            answered = {d["coreid"] for _, d in pong.named("vdev/pong")}
            assert answered == set(node_of)
            await pong.stop()

            # -- an update stored through node2 reaches devices held by node1 and node3 ------------------
            upload = await _api(
                client,
                "POST",
                f"{two.api}/v1/firmware",
                token,
                files={"file": ("app.bin", _image(), "application/octet-stream")},
            )
            assert upload.status_code == 200, upload.text
            rollout = await _api(
                client,
                "POST",
                f"{two.api}/v1/updates",
                token,
                json={"firmware": upload.json()["sha256"], "devices": targets},
            )
            assert rollout.status_code == 200, rollout.text
            job_ids = [job["id"] for job in rollout.json()["jobs"]]

            async def updated() -> bool:
                states = []
                for job_id in job_ids:
                    job = await _api(client, "GET", f"{three.api}/v1/updates/{job_id}", token)
                    assert job.json()["state"] != "failed", job.text
                    states.append(job.json()["state"])
                return states == ["succeeded"] * len(job_ids)

            await apoll(updated, "the update applied by devices of two other nodes", timeout=60)
            await apoll(lambda: fleet.wait_connected(timeout=0.2), "the updated devices back")

            # -- acknowledged writes through the node about to die ------------------------------------
            renamed = held[one.node_id][0]
            answer = await _api(client, "PUT", f"{one.api}/v1/devices/{renamed}", token, json={"name": "survivor"})
            assert answer.status_code == 200, answer.text
            login = await client.post(
                f"{one.api}/oauth/token",
                data={"grant_type": "password", "username": OWNER, "password": "correct horse battery"},
                auth=("particle", "particle"),
            )
            assert login.status_code == 200, login.text
            second_token = login.json()["access_token"]

            # A rollout stored through node1 for a device offline now: it goes on after node1 dies.
            await fleet[offline].stop()
            later = await _api(
                client,
                "POST",
                f"{one.api}/v1/updates",
                token,
                json={"firmware": upload.json()["sha256"], "devices": [offline]},
            )
            assert later.status_code == 200, later.text
            later_job = later.json()["jobs"][0]["id"]

            # -- kill -9 of node1: its devices come back through the others within 30 s ---------------
            victims = set(_by_node(prefix, fleet)[one.node_id])
            one.kill()
            fleet[offline].start("127.0.0.1", balancer.device_port)

            async def recovered() -> bool:
                return await fleet.wait_connected(timeout=0.2) and _all_held_by(
                    prefix, fleet, {two.node_id, three.node_id}
                )

            recovery = await apoll(recovered, "every device back online through node2 and node3", timeout=30)
            assert recovery <= 30
            moved = _by_node(prefix, fleet)
            assert set(moved) <= {two.node_id, three.node_id}
            assert victims <= set(moved[two.node_id]) | set(moved[three.node_id])

            # The stream on node2 lost nothing of the devices on the surviving nodes, and said so if it had.
            stayed = [d for d in publishers if d not in victims]
            await apoll(lambda: all(len(sent[d]) >= 4 for d in stayed), "more events after the kill")
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing
            await apoll(
                lambda: _received(sse, stayed) == {d: sent[d] for d in stayed},
                "every event of the surviving nodes' devices on node2's stream, in order",
                timeout=15,
            )
            gaps = sse.named("cyan/stream/gap")
            assert gaps == [], gaps  # nothing was lost on this node, so nothing to announce

            # Nothing acknowledged is lost: the rename, the token, and their audit entries.
            answer = await _api(client, "GET", f"{two.api}/v1/devices/{renamed}", token)
            assert answer.status_code == 200
            assert answer.json()["name"] == "survivor"
            assert answer.json()["connected"] is True
            assert (await _api(client, "GET", f"{three.api}/v1/devices", second_token)).status_code == 200

            async def rollout_went_on() -> bool:
                job = await _api(client, "GET", f"{two.api}/v1/updates/{later_job}", token)
                assert job.json()["state"] != "failed", job.text
                return bool(job.json()["state"] == "succeeded")

            await apoll(rollout_went_on, "node1's rollout finished by the others", timeout=60)
            # A call to a device that moved, through the balancer.
            moved_device = next(iter(victims))
            answer = await _api(
                client, "POST", f"{balancer.api}/v1/devices/{moved_device}/setArg", token, data={"arg": "back"}
            )
            assert answer.status_code == 200, answer.text

            # -- node1 comes back and takes devices again --------------------------------------------
            one.start()
            # HAProxy sends to node1 again once its checks pass; devices reconnecting from then on (leastconn)
            # land there. Reconnect devices one at a time until three have.
            deadline = asyncio.get_running_loop().time() + 30
            pending = collections.deque(victims)
            while len(_by_node(prefix, fleet).get(one.node_id, [])) < 3:
                assert asyncio.get_running_loop().time() < deadline, "node1 took no devices again within 30 s"
                device = fleet[pending[0]]
                pending.rotate(-1)
                await device.stop()
                device.start("127.0.0.1", balancer.device_port)
                await apoll(device.connected.is_set, "the device reconnected")
                await apoll(functools.partial(_claimed, prefix, device.device_id), "its presence claimed")
            await apoll(lambda: fleet.wait_connected(timeout=0.2), "every device connected")
            back = _by_node(prefix, fleet)[one.node_id][0]
            answer = await _api(client, "POST", f"{three.api}/v1/devices/{back}/setArg", token, data={"arg": "again"})
            assert answer.status_code == 200, answer.text
            # The stored online state, true for every device (the devices list through any node).
            listing = await _api(client, "GET", f"{two.api}/v1/devices", token)
            assert listing.status_code == 200
            await apoll(
                lambda: _all_connected_listed(client, two, token, len(specs)), "every device listed as connected"
            )
    finally:
        if publishing is not None:
            publishing.cancel()
        if sse is not None:
            await sse.stop()
        await fleet.stop()


def _image() -> bytes:
    """A user part for the simulated Photons (built against Device OS 0.6.1's system part, so 3.1.0 runs it)."""
    body = hashlib.sha256(b"cluster app").digest() * 375
    return build_module(
        body,
        platform_id=6,
        product_id=4242,
        product_version=2,
        dependencies=((ModuleFunction.SYSTEM_PART, 1, 105),),
    )


def _claimed(prefix: str, device_id: str) -> bool:
    return presences(servers.REDIS_URL, prefix).get(device_id) is not None


def _all_held_by(prefix: str, fleet: Fleet, nodes: set[str]) -> bool:
    held = _by_node(prefix, fleet)
    return set(held) <= nodes and sum(map(len, held.values())) == len(fleet.devices)


def _received(sse: SseReader, devices: list[str]) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {d: [] for d in devices}
    for _, data in sse.named("seq"):
        if data["coreid"] in got:
            got[data["coreid"]].append(int(data["data"]))
    return got


async def _all_connected_listed(client: httpx.AsyncClient, node: Node, token: str, count: int) -> bool:
    listing = await _api(client, "GET", f"{node.api}/v1/devices", token)
    return listing.status_code == 200 and sum(1 for d in listing.json() if d["connected"]) == count


def test_three_nodes_behind_haproxy_lose_one(postgres_url: URL, prefix: str, tmp_path: Path) -> None:
    run_cluster_scenario(tmp_path, postgres_url, prefix, devices=100)


@pytest.mark.slow
def test_three_nodes_behind_haproxy_lose_one_with_300_devices(postgres_url: URL, prefix: str, tmp_path: Path) -> None:
    run_cluster_scenario(tmp_path, postgres_url, prefix, devices=300)
