"""A UDP device (the simulator's Argon) across two `cyan serve` processes sharing PostgreSQL and Redis: its
session, made on the first node, resumes on the second with no handshake when its records reach it (the
second looks the connection id up in the database), and the API of either node reaches it there. Each node
reserves its own block of sequence numbers in the database, above everything the other may have sent."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from cluster_support import Node, apoll, poll, prepare_data_dirs, presences
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import URL

import servers
from cyan.app import Actor, Application, NewDevice
from cyan.cloud.models import Role
from cyan.keys import load_ec_private_key, udp_public_key_der
from cyan.server.datagram_server import SEQUENCE_BLOCK
from cyan.sim import UdpVirtualDevice
from cyan.store import open_store

# Two `cyan serve` processes, and bounds of the product's (the device held by the second node within 30 s): it
# runs alone (scripts/test).
pytestmark = pytest.mark.exclusive

OWNER = "ops@example.com"
DEVICE = bytes.fromhex("0123456789abcdef0123abcd")
DEVICE_KEY = ec.derive_private_key(0x77, ec.SECP256R1())
UDP_LINE = re.compile(r"UDP devices \(.*?\) connect to 127\.0\.0\.1:(\d+)")


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Any:
    with servers.fresh_prefix(request.node.nodeid) as prefix:
        yield prefix


async def _setup(database: str) -> str:
    store = open_store(database)
    await store.open()
    try:
        app = Application(store)
        await app.accounts.create_user(Actor.operator(), OWNER, "correct horse battery", role=Role.ADMIN)
        issued = await app.accounts.create_token(Actor.operator(), OWNER)
        await app.devices.register(
            Actor.operator(), [NewDevice(DEVICE.hex(), udp_public_key_der(DEVICE_KEY), owner=OWNER)]
        )
        return issued.token
    finally:
        await store.close()


async def _sequence_limit(database: str, cid: bytes) -> int | None:
    store = open_store(database)
    await store.open()
    try:
        stored = await store.udp_sessions.get(cid)
        return None if stored is None else stored.sequence_limit
    finally:
        await store.close()


def _leases(prefix: str) -> set[str]:
    """The nodes whose lease is in Redis: their bus is connected."""
    client = redis.Redis.from_url(servers.REDIS_URL)
    try:
        return {key.decode().removeprefix(f"{prefix}node:") for key in client.scan_iter(match=f"{prefix}node:*")}
    finally:
        client.close()


def _udp_port(node: Node) -> int:
    found: list[int] = []

    def printed() -> bool:
        match = UDP_LINE.search(node.log.read_text(errors="replace"))
        if match:
            found.append(int(match.group(1)))
        return bool(match)

    poll(printed, f"node {node.node_id}'s UDP port in its banner")
    return found[0]


async def _call(client: httpx.AsyncClient, node: Node, token: str, arg: str) -> httpx.Response:
    return await client.post(
        f"{node.api}/v1/devices/{DEVICE.hex()}/setArg", data={"arg": arg}, headers={"Authorization": f"Bearer {token}"}
    )


def test_a_udp_session_resumes_on_another_node_with_no_handshake(
    postgres_url: URL, prefix: str, tmp_path: Path
) -> None:
    database = postgres_url.render_as_string(hide_password=False)
    bus = f"{servers.REDIS_URL}?prefix={prefix}&lease=3"
    one, two = (Node(i + 1, d, database, bus) for i, d in enumerate(prepare_data_dirs(tmp_path, 2)))
    token = asyncio.run(_setup(database))
    one.start()
    two.start()
    try:
        # A node is on the bus by the time it serves: nothing needs to use it first.
        assert _leases(prefix) >= {"node1", "node2"}
        ports = _udp_port(one), _udp_port(two)
        server_key = load_ec_private_key((one.data_dir / "udp_server_key.pem").read_bytes()).public_key()
        asyncio.run(_scenario(one, two, ports, server_key, token, database, prefix))
    finally:
        one.stop()
        two.stop()


async def _scenario(
    one: Node,
    two: Node,
    ports: tuple[int, int],
    server_key: ec.EllipticCurvePublicKey,
    token: str,
    database: str,
    prefix: str,
) -> None:
    device = UdpVirtualDevice(DEVICE, DEVICE_KEY, server_key)
    await device.start("127.0.0.1", ports[0])
    try:
        await asyncio.wait_for(device.connected.wait(), 20)
        assert device.session is not None
        cid = device.session.connection_id
        async with httpx.AsyncClient(timeout=20) as client:
            answer = await _call(client, one, token, "one")
            assert answer.status_code == 200, answer.text
            assert answer.json()["return_value"] == 3
            await apoll(lambda: _sequence_limit(database, cid), "the session saved by node1")
            assert await _sequence_limit(database, cid) == SEQUENCE_BLOCK

            # The device's records now reach node2 (another address, as after a network change).
            sent = device.datagrams_sent
            await device.move(to=("127.0.0.1", ports[1]))
            device.publish("moved", "1")

            # Node2 found the session in the database, resumed it and claimed the device.
            await apoll(
                lambda: presences(servers.REDIS_URL, prefix).get(DEVICE.hex()) == "node2", "the device held by node2"
            )
            answer = await _call(client, two, token, "two")
            assert answer.status_code == 200, answer.text
            assert answer.json()["return_value"] == 3
            assert device.datagrams_sent > sent
            assert device.failure is None
            # Node2 reserved its block above node1's and above the saved counter (2^20 past it).
            limit = await _sequence_limit(database, cid)
            assert limit is not None
            assert limit >= (1 << 20) + SEQUENCE_BLOCK
            # And through node1's API too, which routes the call to node2 over the bus.
            answer = await _call(client, one, token, "via1")
            assert answer.status_code == 200, answer.text
            assert answer.json()["return_value"] == 4
    finally:
        await device.stop()
    assert "Traceback" not in one.tail(200) + two.tail(200)
