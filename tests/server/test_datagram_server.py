"""The UDP device server on a loopback socket, with the cloud behind the gateway over the in-memory store, and
the simulator's Argon (the DTLS client and the datagram device role): what API calls, events, presence and
attempt records do for a UDP device, cookies for unproven addresses, an address change mid-session, a
resumed session, and loss, duplication and reordering."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec

from cyan.app import Actor, Application, NewDevice
from cyan.app.calls import DeviceCalls
from cyan.bus import InProcessBus
from cyan.cloud.models import AttemptOutcome, UdpSession
from cyan.cloud.service import Cloud
from cyan.dtls import Session, is_client_hello
from cyan.keys import udp_public_key_der
from cyan.server.datagram_server import DatagramServer
from cyan.sim import UdpFaults, UdpVirtualDevice
from cyan.store import MemoryStore

DEVICE = bytes.fromhex("0123456789abcdef01234567")
OPS = Actor.operator("ops")
SERVER_KEY = ec.derive_private_key(0x51, ec.SECP256R1())
DEVICE_KEY = ec.derive_private_key(0x52, ec.SECP256R1())
OTHER_KEY = ec.derive_private_key(0x53, ec.SECP256R1())
TIMEOUT = 20.0


async def _with_server(
    work: Callable[[DatagramServer, Application, Cloud], Awaitable[None]], *, persist: bool = False
) -> None:
    store = MemoryStore()
    await store.open()
    cloud = Cloud(store, InProcessBus())
    app = Application(store, cloud=cloud)
    assert app.gateway is not None
    await cloud.start()
    server = DatagramServer(
        app.gateway, SERVER_KEY, host="127.0.0.1", port=0, sessions=app.gateway if persist else None
    )
    await server.start()
    await app.devices.register(OPS, [NewDevice(DEVICE.hex(), udp_public_key_der(DEVICE_KEY))])
    try:
        await work(server, app, cloud)
    finally:
        await server.stop()
        await app.gateway.drain()
        await cloud.stop()


def _calls(app: Application) -> DeviceCalls:
    assert app.calls is not None
    return app.calls


def _device(faults: UdpFaults | None = None, key: ec.EllipticCurvePrivateKey = DEVICE_KEY) -> UdpVirtualDevice:
    return UdpVirtualDevice(DEVICE, key, SERVER_KEY.public_key(), faults=faults)


def test_a_udp_device_is_served_like_a_tcp_one() -> None:
    async def work(server: DatagramServer, app: Application, cloud: Cloud) -> None:
        device = _device()
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
            view = await app.devices.get(OPS, DEVICE.hex())
            assert view.online
            assert view.record.platform_id == 12  # the Argon's Hello
            calls = _calls(app)
            _, _, value = await asyncio.wait_for(calls.read_variable(OPS, DEVICE.hex(), "temp"), TIMEOUT)
            assert value == 21.5
            _, returned = await asyncio.wait_for(calls.call_function(OPS, DEVICE.hex(), "setArg", "hello"), TIMEOUT)
            assert returned == 5
            assert device.functions_called == [("setArg", b"hello")]
            await cloud.flush()
            attempts = await app.store.attempts.recent(DEVICE.hex())
            assert [a.outcome for a in attempts] == [AttemptOutcome.CONNECTED]
            assert attempts[0].proven
        finally:
            await device.stop()

    asyncio.run(_with_server(work))


def test_an_unproven_address_gets_a_cookie_request_no_larger_than_its_hello() -> None:
    async def work(server: DatagramServer, app: Application, cloud: Cloud) -> None:
        sent: list[tuple[bytes, tuple[str, int]]] = []
        real_send = server.send

        def spy(datagram: bytes, address: tuple[str, int]) -> None:
            sent.append((datagram, address))
            real_send(datagram, address)

        server.send = spy  # type: ignore[method-assign]
        device = _device()
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
        finally:
            await device.stop()
        first = sent[0][0]
        assert first[0] == 22  # a handshake record: the HelloVerifyRequest, alone
        assert first[13] == 3
        assert len(first) < 120

    asyncio.run(_with_server(work))


def test_another_key_than_the_registered_one_is_refused_and_recorded() -> None:
    async def work(server: DatagramServer, app: Application, cloud: Cloud) -> None:
        device = _device(key=OTHER_KEY)
        await device.start("127.0.0.1", server.port)

        async def recorded() -> None:
            while not await app.store.attempts.recent(DEVICE.hex()):
                await cloud.flush()
                await asyncio.sleep(0.01)

        try:
            await asyncio.wait_for(recorded(), TIMEOUT)
        finally:
            await device.stop()
        attempts = await app.store.attempts.recent(DEVICE.hex())
        assert attempts
        assert attempts[0].outcome is AttemptOutcome.FAILED
        assert attempts[0].reason in ("key_mismatch", "key_rejected")
        assert attempts[0].step == "identity"
        assert not (await app.devices.get(OPS, DEVICE.hex())).online

    asyncio.run(_with_server(work))


def test_an_address_change_mid_session_carries_on_by_connection_id() -> None:
    async def work(server: DatagramServer, app: Application, cloud: Cloud) -> None:
        device = _device()
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
            before = device.datagrams_sent
            await device.move()  # a new source port, the session resumed as type-253 records
            _, returned = await asyncio.wait_for(
                _calls(app).call_function(OPS, DEVICE.hex(), "setArg", "moved"), TIMEOUT
            )
            assert returned == 5
            assert device.datagrams_sent > before
            assert server.connection_count == 1
            await cloud.flush()
            attempts = await app.store.attempts.recent(DEVICE.hex())
            assert len(attempts) == 1  # no second handshake
        finally:
            await device.stop()

    asyncio.run(_with_server(work))


def test_loss_duplication_and_reordering_deliver_each_call_and_event_once() -> None:
    async def work(server: DatagramServer, app: Application, cloud: Cloud) -> None:
        device = _device(UdpFaults(loss=0.05, duplicate=0.05, reorder=0.05, seed=7))
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), 60)
            for i in range(10):
                _, value = await asyncio.wait_for(
                    _calls(app).call_function(OPS, DEVICE.hex(), "setArg", f"call {i}"), 60
                )
                assert value == len(f"call {i}")
            # Duplicated or retransmitted calls reach the application once each.
            assert [arg for _, arg in device.functions_called] == [f"call {i}".encode() for i in range(10)]
        finally:
            await device.stop()

    asyncio.run(_with_server(work))


def test_a_client_hello_is_recognised() -> None:
    assert not is_client_hello(b"\x17\xfe\xfd" + bytes(30))


def test_a_restarted_server_resumes_the_stored_session_with_no_handshake() -> None:
    async def work(server: DatagramServer, app: Application, cloud: Cloud) -> None:
        assert app.gateway is not None
        device = _device()
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
            port = server.port
            await server.stop()  # saves the session with its counters
            assert len(await app.store.udp_sessions.all()) == 1
            restarted = DatagramServer(app.gateway, SERVER_KEY, host="127.0.0.1", port=port, sessions=app.gateway)
            await restarted.start()
            try:
                sent = device.datagrams_sent
                device.publish("after/restart", "1")  # the device knows of no restart: it carries on
                assert device.session is not None
                cid = device.session.connection_id

                async def resumed() -> None:
                    while (link := restarted.link(cid)) is None or link.hello is None:
                        await asyncio.sleep(0.01)

                await asyncio.wait_for(resumed(), TIMEOUT)
                _, returned = await asyncio.wait_for(
                    _calls(app).call_function(OPS, DEVICE.hex(), "setArg", "again"), TIMEOUT
                )
                assert returned == 5
                assert device.datagrams_sent > sent
                link = restarted.link(cid)
                assert link is not None
                assert link.endpoint.established
                # One handshake in all: the device never sent a ClientHello again.
                await cloud.flush()
                attempts = await app.store.attempts.recent(DEVICE.hex())
                assert [a.outcome for a in attempts] == [AttemptOutcome.CONNECTED] * 2
            finally:
                await restarted.stop()
        finally:
            await device.stop()

    asyncio.run(_with_server(work, persist=True))


def _record_numbers(datagram: bytes) -> list[tuple[int, int]]:
    """The (epoch, sequence number) of each DTLS record in a datagram from the server (records without a CID)."""
    numbers = []
    offset = 0
    while offset + 13 <= len(datagram):
        epoch = int.from_bytes(datagram[offset + 3 : offset + 5], "big")
        sequence = int.from_bytes(datagram[offset + 5 : offset + 11], "big")
        numbers.append((epoch, sequence))
        offset += 13 + int.from_bytes(datagram[offset + 11 : offset + 13], "big")
    return numbers


def _crash(server: DatagramServer) -> None:
    """As `kill -9`: nothing it would save from here on reaches the store, and its socket is gone."""
    server._store = None
    transport, server._transport = server._transport, None
    assert transport is not None
    transport.close()


def test_a_server_killed_after_resuming_a_session_leaves_its_heir_no_sequence_number_it_used() -> None:
    # Device OS 4.0.2 against a server restarted with kill -9 after it had resumed a session: the next server
    # imported the same save, sent under the sequence numbers (and CCM nonces) the killed one had used, and
    # the device dropped those records as replays ("replayed record") until the counters passed them.
    async def work(server: DatagramServer, app: Application, cloud: Cloud) -> None:
        gateway = app.gateway
        assert gateway is not None
        sent: dict[str, list[tuple[int, int]]] = {}

        def spied(name: str) -> DatagramServer:
            node = DatagramServer(gateway, SERVER_KEY, host="127.0.0.1", port=port, sessions=gateway)
            real_send = node.send
            numbers = sent.setdefault(name, [])

            def spy(datagram: bytes, address: tuple[str, int]) -> None:
                numbers.extend(_record_numbers(datagram))
                real_send(datagram, address)

            node.send = spy  # type: ignore[method-assign]
            return node

        device = _device()
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
            port = server.port
            await server.stop()  # a clean stop: the session saved with its counters
            for name, crash in (("second", True), ("third", False)):
                node = spied(name)
                await node.start()
                try:
                    device.publish("after/restart", name)  # the device knows of no restart: it carries on
                    assert device.session is not None
                    cid = device.session.connection_id

                    async def resumed(node: DatagramServer = node, cid: bytes = cid) -> None:
                        while (link := node.link(cid)) is None or link.hello is None:
                            await asyncio.sleep(0.01)

                    await asyncio.wait_for(resumed(), TIMEOUT)
                    _, returned = await asyncio.wait_for(
                        _calls(app).call_function(OPS, DEVICE.hex(), "setArg", name), TIMEOUT
                    )
                    assert returned == len(name)
                    await gateway.drain()
                finally:
                    if crash:
                        _crash(node)  # the resumed session was not saved again at any end
                    await node.stop()
        finally:
            await device.stop()
        application = [n for n in sent["second"] + sent["third"] if n[0] == 1]
        assert sent["second"]
        assert sent["third"]
        assert len(application) == len(set(application))  # no (epoch, sequence number) twice: no nonce twice
        assert min(n for n in sent["third"] if n[0] == 1) > max(n for n in sent["second"] if n[0] == 1)

    asyncio.run(_with_server(work, persist=True))


def test_sessions_unsaved_for_too_long_are_deleted_at_start_and_then_periodically() -> None:
    async def work(server: DatagramServer, app: Application, cloud: Cloud) -> None:
        assert app.gateway is not None
        now = datetime.now(UTC)

        async def save(cid: bytes, age: timedelta) -> None:
            blob = Session(
                "server", b"", bytes(48), bytes(32), bytes(32), cid, 1, 5, 3, 0, udp_public_key_der(DEVICE_KEY)
            ).encode()
            await app.store.udp_sessions.save(UdpSession(cid, blob, now - age, DEVICE.hex()))

        async def stored() -> list[bytes]:
            return [s.connection_id for s in await app.store.udp_sessions.all()]

        old, recent, later = b"\x01" * 8, b"\x02" * 8, b"\x03" * 8
        await save(old, timedelta(days=31))
        await save(recent, timedelta(days=1))
        restarted = DatagramServer(
            app.gateway, SERVER_KEY, host="127.0.0.1", port=0, sessions=app.gateway, prune_interval=0.05
        )
        await restarted.start()
        try:
            assert await stored() == [recent]
            # One that grows old while the server runs is deleted on the next round, not at the next start.
            await save(later, timedelta(days=40))
            while later in await stored():
                await asyncio.sleep(0.02)
            assert await stored() == [recent]
        finally:
            await restarted.stop()

    asyncio.run(_with_server(work))
