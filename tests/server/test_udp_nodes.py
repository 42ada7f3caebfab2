"""UDP sessions across the nodes of a cloud: two device servers sharing one store (memory, SQLite, PostgreSQL),
each with its own cloud, as two `cyan serve` processes are.

A session made on one node is looked up on demand by the other when the device's records reach it, and
resumed there with no handshake; each node writes only sequence numbers from blocks reserved in the store, so
no (epoch, sequence number) pair, and so no AES-CCM nonce, is ever sent twice under the session's keys. Records
on connection ids no store holds cost at most one read each, and an address whose lookups keep missing gets
none.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec

from cyan.app import Actor, Application, NewDevice
from cyan.app.calls import DeviceCalls
from cyan.bus import InProcessBus
from cyan.cloud.service import Cloud
from cyan.keys import udp_public_key_der
from cyan.server.datagram_server import SEQUENCE_BLOCK, DatagramServer
from cyan.server.device_server import AddressLimits
from cyan.sim import ELECTRON_2, UdpVirtualDevice
from cyan.testing import CountingUdpSessions
from store_support import StoreFactory

DEVICE = bytes.fromhex("0123456789abcdef01234567")
OPS = Actor.operator("ops")
SERVER_KEY = ec.derive_private_key(0x61, ec.SECP256R1())
DEVICE_KEY = ec.derive_private_key(0x62, ec.SECP256R1())
TIMEOUT = 20.0


@dataclass
class Node:
    app: Application
    cloud: Cloud
    server: DatagramServer
    sessions: CountingUdpSessions
    #: Every (epoch, sequence number) of the protected records the node sent.
    sent: list[tuple[int, int]] = field(default_factory=list)

    @property
    def calls(self) -> DeviceCalls:
        assert self.app.calls is not None
        return self.app.calls


def _records(datagram: bytes) -> list[tuple[int, int]]:
    """(epoch, sequence) of each record of a datagram to the device (no CID: the device's own is empty)."""
    found = []
    while len(datagram) >= 13:
        epoch, high, low, length = struct.unpack(">HHIH", datagram[3:13])
        found.append((epoch, high << 32 | low))
        datagram = datagram[13 + length :]
    return found


@asynccontextmanager
async def _node(
    stack: AsyncExitStack, make: StoreFactory, shared: list[object], **options: object
) -> AsyncIterator[Node]:
    store = make()
    if not shared or store is not shared[0]:
        await stack.enter_async_context(store)
        shared.append(store)
    cloud = Cloud(store, InProcessBus())
    app = Application(store, cloud=cloud)
    assert app.gateway is not None
    await cloud.start()
    sessions = CountingUdpSessions(app.gateway)
    server = DatagramServer(app.gateway, SERVER_KEY, host="127.0.0.1", port=0, sessions=sessions, **options)  # type: ignore[arg-type]
    node = Node(app, cloud, server, sessions)
    real_send = server.send

    def send(datagram: bytes, address: tuple[str, int]) -> None:
        node.sent.extend(r for r in _records(datagram) if r[0] > 0)
        real_send(datagram, address)

    server.send = send  # type: ignore[method-assign]
    await server.start()
    try:
        yield node
    finally:
        await server.stop()
        await app.gateway.drain()
        await cloud.stop()


async def _saved(node: Node, cid: bytes) -> None:
    """Until the node's saves of the session reached the store (they are written in the background)."""
    while (stored := await node.app.store.udp_sessions.get(cid)) is None or stored.device_id is None:
        await asyncio.sleep(0.01)


async def _call(node: Node, argument: str) -> int:
    _, returned = await asyncio.wait_for(node.calls.call_function(OPS, DEVICE.hex(), "setArg", argument), TIMEOUT)
    return returned


async def _linked(node: Node, cid: bytes) -> None:
    while (link := node.server.link(cid)) is None or link.hello is None:
        await asyncio.sleep(0.01)


def test_a_session_made_on_one_node_resumes_on_another_and_back_with_no_nonce_reused(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            shared: list[object] = []
            a = await stack.enter_async_context(_node(stack, make, shared))
            # B started before the session existed: it learns of it from the store when the device comes.
            b = await stack.enter_async_context(_node(stack, make, shared))
            await a.app.devices.register(OPS, [NewDevice(DEVICE.hex(), udp_public_key_der(DEVICE_KEY))])
            device = UdpVirtualDevice(DEVICE, DEVICE_KEY, SERVER_KEY.public_key())
            await device.start("127.0.0.1", a.server.port)
            try:
                await asyncio.wait_for(device.connected.wait(), TIMEOUT)
                assert device.session is not None
                cid = device.session.connection_id
                assert await _call(a, "on a") == 4
                await asyncio.wait_for(_saved(a, cid), TIMEOUT)

                # The device moves to B (a new address and another node), resuming: no handshake there.
                await device.move(to=("127.0.0.1", b.server.port))
                device.publish("moved", "1")
                await asyncio.wait_for(_linked(b, cid), TIMEOUT)
                assert await _call(b, "b") == 1
                assert b.sessions.finds == [cid]
                assert b.server.lookups_found == 1
                link_b = b.server.link(cid)
                assert link_b is not None
                assert link_b.endpoint.established
                stored = await b.app.store.udp_sessions.get(cid)
                assert stored is not None
                assert stored.sequence_limit == link_b.endpoint.write_limit
                assert link_b.endpoint.write_limit - SEQUENCE_BLOCK >= max(seq for _, seq in a.sent)

                # A's stale link is closed (as the newer session on B tells it to); the device comes back to A,
                # which has the session in no memory of its own: it reserves a block above B's in the store.
                link_a = a.server.link(cid)
                assert link_a is not None
                link_a.close()
                await a.app.gateway.drain()  # type: ignore[union-attr]
                await device.move(to=("127.0.0.1", a.server.port))
                device.publish("back", "1")
                await asyncio.wait_for(_linked(a, cid), TIMEOUT)
                assert await _call(a, "a2") == 2
                assert a.sessions.finds == [cid]
                assert device.failure is None
            finally:
                await device.stop()
            # Not one (epoch, sequence number) sent twice under the session's keys, on either node.
            together = a.sent + b.sent
            assert len(together) == len(set(together))
            assert min(seq for _, seq in b.sent) >= max(seq for _, seq in a.sent[: len(a.sent) // 2])

    asyncio.run(scenario())


async def _key_of_device(node: Node) -> bytes:
    """The key a session without connection id is kept under, once the node's save named the device."""
    while not (found := await node.app.store.udp_sessions.of_device(DEVICE.hex(), limit=1)):
        await asyncio.sleep(0.01)
    return found[0].connection_id


def test_a_2x_session_without_connection_id_moves_between_nodes_by_its_device_id(make: StoreFactory) -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            shared: list[object] = []
            a = await stack.enter_async_context(_node(stack, make, shared))
            b = await stack.enter_async_context(_node(stack, make, shared))
            await a.app.devices.register(OPS, [NewDevice(DEVICE.hex(), udp_public_key_der(DEVICE_KEY))])
            device = UdpVirtualDevice(DEVICE, DEVICE_KEY, SERVER_KEY.public_key(), personality=ELECTRON_2)
            await device.start("127.0.0.1", a.server.port)
            try:
                await asyncio.wait_for(device.connected.wait(), TIMEOUT)
                assert device.session is not None
                assert device.session.connection_id == b""
                assert await _call(a, "on a") == 4
                key = await asyncio.wait_for(_key_of_device(a), TIMEOUT)

                # The device reconnects to B: type-254 records, found there by the device id in the store.
                await device.move(to=("127.0.0.1", b.server.port))
                await asyncio.wait_for(_linked(b, key), TIMEOUT)
                assert await _call(b, "b") == 1
                assert b.sessions.finds == [DEVICE.hex().encode()]
                assert b.server.lookups_found == 1
                link_b = b.server.link(key)
                assert link_b is not None
                assert link_b.endpoint.write_limit - SEQUENCE_BLOCK >= max(seq for _, seq in a.sent)

                # A's stale link closed, the device comes back to A: looked up there too, a block above B's.
                link_a = a.server.link(key)
                assert link_a is not None
                link_a.close()
                await a.app.gateway.drain()  # type: ignore[union-attr]
                await device.move(to=("127.0.0.1", a.server.port))
                await asyncio.wait_for(_linked(a, key), TIMEOUT)
                assert await _call(a, "a2") == 2
                assert a.sessions.finds == [DEVICE.hex().encode()]
                assert device.failure is None
            finally:
                await device.stop()
            together = a.sent + b.sent
            assert len(together) == len(set(together))

    asyncio.run(scenario())


def test_unknown_connection_ids_cost_one_lookup_each_and_an_address_that_keeps_missing_gets_none(
    make: StoreFactory,
) -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            shared: list[object] = []
            node = await stack.enter_async_context(
                _node(stack, make, shared, miss_limits=AddressLimits(burst=5, per_second=0.5))
            )
            loop = asyncio.get_running_loop()
            attacker, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.2", 0))
            try:

                def record(cid: bytes) -> bytes:  # a type-25 record on `cid`, long enough to be worth a look
                    return bytes([25, 0xFE, 0xFD, 0, 1]) + bytes(6) + cid + struct.pack(">H", 40) + bytes(40)

                same = os.urandom(8)
                flood = [record(same)] * 50 + [record(os.urandom(8)) for _ in range(500)]
                for n, datagram in enumerate(flood):
                    attacker.sendto(datagram, ("127.0.0.1", node.server.port))
                    if n % 25 == 24:
                        await asyncio.sleep(0.005)  # the kernel's buffer drops what the loop has not read
                await asyncio.sleep(0.3)
                received = node.server.datagrams_in
                assert received >= 300
                # One read for the repeated id; then the address's misses run out: a handful of reads in all.
                assert node.sessions.finds.count(same) == 1
                assert len(node.sessions.finds) <= 5 + 1
                assert node.server.lookups_refused >= received - 6 - 8  # 8: held while their id is looked up
            finally:
                attacker.close()

            # A real device on another address still resumes through the store meanwhile.
            await node.app.devices.register(OPS, [NewDevice(DEVICE.hex(), udp_public_key_der(DEVICE_KEY))])
            device = UdpVirtualDevice(DEVICE, DEVICE_KEY, SERVER_KEY.public_key())
            await device.start("127.0.0.1", node.server.port)
            try:
                await asyncio.wait_for(device.connected.wait(), TIMEOUT)
                assert device.session is not None
                cid = device.session.connection_id
                await asyncio.wait_for(_saved(node, cid), TIMEOUT)
                link = node.server.link(cid)
                assert link is not None
                link.close()
                await node.app.gateway.drain()  # type: ignore[union-attr]
                await device.move()
                device.publish("again", "1")
                await asyncio.wait_for(_linked(node, cid), TIMEOUT)
            finally:
                await device.stop()

    asyncio.run(scenario())
