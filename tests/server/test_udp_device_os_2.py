"""Device OS ≤ 2.x over UDP: no connection id, and type-254 records with the device id after a resume
(udp-dtls.md §1.4). The server on a loopback socket, the cloud over the in-memory store, and the simulator's
Electron on 2.3.1: served without a connection id, moved to a new address by its device id, resumed after a
server restart from the store, and never moved or disturbed by a 254 record that does not authenticate."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from cyan.app import Actor, Application, NewDevice
from cyan.app.calls import DeviceCalls
from cyan.bus import InProcessBus
from cyan.cloud.models import AttemptOutcome, KeyPolicyMode
from cyan.cloud.service import Cloud
from cyan.dtls import DEFAULT_SEQUENCE_GAP, Session, is_client_hello, move_device_id_of
from cyan.keys import udp_public_key_der
from cyan.server.datagram_server import SEQUENCE_BLOCK, DatagramServer
from cyan.sim import ELECTRON_2, UdpVirtualDevice
from cyan.store import MemoryStore

DEVICE = bytes.fromhex("0123456789abcdef01234567")
OPS = Actor.operator("ops")
SERVER_KEY = ec.derive_private_key(0x61, ec.SECP256R1())
DEVICE_KEY = ec.derive_private_key(0x62, ec.SECP256R1())
STRANGER_KEY = ec.derive_private_key(0x63, ec.SECP256R1())
TIMEOUT = 20.0

Work = Callable[[DatagramServer, Application, Cloud, list[tuple[str, str | None]]], Awaitable[None]]


async def _with_server(work: Work, *, persist: bool = True) -> None:
    store = MemoryStore()
    await store.open()
    cloud = Cloud(store, InProcessBus())
    app = Application(store, cloud=cloud)
    assert app.gateway is not None
    await cloud.start()
    events: list[tuple[str, str | None]] = []
    real = cloud.event_from_device

    def spy(link: Any, name: str, data: bytes | None, ttl: int, private: bool) -> None:
        events.append((name, None if data is None else data.decode()))
        real(link, name, data, ttl, private)

    cloud.event_from_device = spy  # type: ignore[method-assign]
    server = DatagramServer(
        app.gateway, SERVER_KEY, host="127.0.0.1", port=0, sessions=app.gateway if persist else None
    )
    await server.start()
    await app.devices.register(OPS, [NewDevice(DEVICE.hex(), udp_public_key_der(DEVICE_KEY))])
    try:
        await work(server, app, cloud, events)
    finally:
        await server.stop()
        await app.gateway.drain()
        await cloud.stop()


def _calls(app: Application) -> DeviceCalls:
    assert app.calls is not None
    return app.calls


def _electron() -> UdpVirtualDevice:
    return UdpVirtualDevice(DEVICE, DEVICE_KEY, SERVER_KEY.public_key(), personality=ELECTRON_2)


def _spy_datagrams(server: DatagramServer) -> list[bytes]:
    """Every datagram the server is handed, in order."""
    seen: list[bytes] = []
    real = server.datagram_received

    def spy(data: bytes, addr: tuple[Any, ...]) -> None:
        seen.append(data)
        real(data, addr)

    server.datagram_received = spy  # type: ignore[method-assign]
    return seen


async def _until(condition: Callable[[], bool]) -> None:
    async def wait() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), TIMEOUT)


async def _published_once(device: UdpVirtualDevice, events: list[tuple[str, str | None]], name: str) -> None:
    device.publish(name, "1")
    await _until(lambda: (name, "1") in events)
    await asyncio.sleep(0.2)  # a retransmission, had there been one, would be in by now
    assert events.count((name, "1")) == 1


def _send_raw(port: int, datagrams: list[bytes], host: str = "127.0.0.2") -> None:
    """Datagrams from an address of the attacker's own (127.0.0.2: the device is on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))


def _forged_254(device: bytes, sequence: int = 1 << 20) -> bytes:
    """A type-254 record naming `device`: a well-formed header, random bytes for the ciphertext."""
    record = bytes([254, 0xFE, 0xFD, 0, 1]) + sequence.to_bytes(6, "big") + (40).to_bytes(2, "big") + os.urandom(40)
    return record + device + bytes([len(device)])


def test_a_2x_device_without_connection_id_is_served_and_moves_address_by_its_device_id() -> None:
    async def work(
        server: DatagramServer, app: Application, cloud: Cloud, events: list[tuple[str, str | None]]
    ) -> None:
        seen = _spy_datagrams(server)
        device = _electron()
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
            assert device.session is not None
            assert device.session.connection_id == b""  # the ClientHello offered none, and none was given
            view = await app.devices.get(OPS, DEVICE.hex())
            assert view.online
            assert view.record.platform_id == 10  # the Electron's Hello
            await _published_once(device, events, "before/move")
            await device.move()  # a new source port; the session resumed as type-254 records
            _, returned = await asyncio.wait_for(
                _calls(app).call_function(OPS, DEVICE.hex(), "setArg", "moved"), TIMEOUT
            )
            assert returned == 5
            assert device.functions_called == [("setArg", b"moved")]
            await _published_once(device, events, "after/move")
            moved = [d for d in seen if d[0] == 254]
            assert moved
            assert all(d[-13:] == DEVICE + b"\x0c" for d in moved)
            assert server.connection_count == 1
            assert sum(is_client_hello(d) for d in seen) == 2  # one handshake: without, then with the cookie
            await cloud.flush()
            attempts = await app.store.attempts.recent(DEVICE.hex())
            assert [a.outcome for a in attempts] == [AttemptOutcome.CONNECTED]
            # Kept in the store under a key of the server's, named by the device id.
            (stored,) = await app.store.udp_sessions.all()
            assert len(stored.connection_id) == 8
            assert stored.device_id == DEVICE.hex()
            assert Session.decode(stored.session).connection_id == b""
        finally:
            await device.stop()

    asyncio.run(_with_server(work))


def test_without_a_store_a_2x_device_moves_address_too() -> None:
    async def work(
        server: DatagramServer, app: Application, cloud: Cloud, events: list[tuple[str, str | None]]
    ) -> None:
        device = _electron()
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
            await device.move()
            _, returned = await asyncio.wait_for(
                _calls(app).call_function(OPS, DEVICE.hex(), "setArg", "moved"), TIMEOUT
            )
            assert returned == 5
            await _published_once(device, events, "after/move")
            assert server.connection_count == 1
        finally:
            await device.stop()

    asyncio.run(_with_server(work, persist=False))


def test_a_2x_device_resumes_after_a_server_restart_by_its_device_id() -> None:
    async def work(
        server: DatagramServer, app: Application, cloud: Cloud, events: list[tuple[str, str | None]]
    ) -> None:
        assert app.gateway is not None
        device = _electron()
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
            await _published_once(device, events, "before/restart")
            port = server.port
            await server.stop()  # saves the session with its counters
            (saved,) = await app.store.udp_sessions.all()
            saved_session = Session.decode(saved.session)
            restarted = DatagramServer(app.gateway, SERVER_KEY, host="127.0.0.1", port=port, sessions=app.gateway)
            seen = _spy_datagrams(restarted)
            await restarted.start()
            try:
                # The device reconnects and resumes its saved session from a new port: type-254 records.
                await device.move()
                await _published_once(device, events, "after/restart")
                _, returned = await asyncio.wait_for(
                    _calls(app).call_function(OPS, DEVICE.hex(), "setArg", "again"), TIMEOUT
                )
                assert returned == 5
                assert device.functions_called == [("setArg", b"again")]
                assert not any(is_client_hello(d) for d in seen)  # no handshake
                assert restarted.lookups_found == 1
                link = restarted.link(saved.connection_id)
                assert link is not None
                assert link.endpoint.established
                # Nonces: the resumed session writes from a block reserved above everything sent before.
                floor = saved_session.write_sequence + DEFAULT_SEQUENCE_GAP
                assert link.endpoint.write_limit == floor + SEQUENCE_BLOCK
                assert link.endpoint.next_write_sequence > floor
                await cloud.flush()
                attempts = await app.store.attempts.recent(DEVICE.hex())
                assert [a.outcome for a in attempts] == [AttemptOutcome.CONNECTED] * 2
            finally:
                await restarted.stop()
        finally:
            await device.stop()

    asyncio.run(_with_server(work))


def test_a_254_record_with_the_device_id_that_does_not_authenticate_moves_and_disturbs_nothing() -> None:
    async def work(
        server: DatagramServer, app: Application, cloud: Cloud, events: list[tuple[str, str | None]]
    ) -> None:
        seen = _spy_datagrams(server)
        device = _electron()
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
            await device.move()  # genuine 254 records, which the attacker captures
            await _published_once(device, events, "moved")
            captured = [d for d in seen if d[0] == 254]
            assert captured
            (stored,) = await app.store.udp_sessions.all()
            link = server.link(stored.connection_id)
            assert link is not None
            address = link.address
            # From the attacker's address: forged records naming the device, and the captured ones replayed.
            _send_raw(server.port, [_forged_254(DEVICE, n) for n in range(1 << 20, (1 << 20) + 30)] + captured)
            await asyncio.sleep(0.3)
            assert link.address == address  # not redirected
            assert server.connection_count == 1
            assert server.lookups == 0  # the live link was tried, nothing was looked up
            # Not disturbed: calls and events go on at the device's own address.
            _, returned = await asyncio.wait_for(
                _calls(app).call_function(OPS, DEVICE.hex(), "setArg", "still"), TIMEOUT
            )
            assert returned == 5
            await _published_once(device, events, "still/here")
            await cloud.flush()
            attempts = await app.store.attempts.recent(DEVICE.hex())
            assert [a.outcome for a in attempts] == [AttemptOutcome.CONNECTED]
            assert (await app.devices.get(OPS, DEVICE.hex())).online
        finally:
            await device.stop()

    asyncio.run(_with_server(work))


def test_after_a_restart_forged_254_records_resume_nothing_and_the_device_still_resumes() -> None:
    async def work(
        server: DatagramServer, app: Application, cloud: Cloud, events: list[tuple[str, str | None]]
    ) -> None:
        assert app.gateway is not None
        device = _electron()
        await device.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
            port = server.port
            await server.stop()
            restarted = DatagramServer(app.gateway, SERVER_KEY, host="127.0.0.1", port=port, sessions=app.gateway)
            await restarted.start()
            try:
                # Too short to authenticate: never looked up. A device with no session: looked up once, then
                # remembered as unknown.
                short = bytes([254, 0xFE, 0xFD, 0, 1]) + bytes(6) + b"\x00\x04" + bytes(4) + DEVICE + b"\x0c"
                assert move_device_id_of(short) == DEVICE
                _send_raw(port, [short], host="127.0.0.3")
                await asyncio.sleep(0.1)
                assert restarted.lookups == 0
                for _ in range(5):
                    _send_raw(port, [_forged_254(b"\xee" * 12)], host="127.0.0.3")
                    await asyncio.sleep(0.05)
                assert restarted.lookups == 1
                # 60 forged records naming the device, from one address: its sessions are read once, then kept a
                # moment, and the next forgeries are tried against them with no read.
                _send_raw(port, [_forged_254(DEVICE)])
                await _until(lambda: restarted.lookups == 2)
                await asyncio.sleep(0.1)
                _send_raw(port, [_forged_254(DEVICE, n) for n in range(1, 60)])
                await asyncio.sleep(0.3)
                assert restarted.connection_count == 0  # nothing resumed on a claim
                assert restarted.lookups_found == 0
                assert restarted.lookups == 2
                assert restarted.lookups_refused >= 59
                # The device's own records, from its own address, amid more forgeries, still resume the session,
                # with no other read.
                _send_raw(port, [_forged_254(DEVICE, n) for n in range(60, 90)])
                await device.move()
                _send_raw(port, [_forged_254(DEVICE, n) for n in range(90, 120)])
                await _published_once(device, events, "after/forgeries")
                assert restarted.lookups == 2
                _, returned = await asyncio.wait_for(
                    _calls(app).call_function(OPS, DEVICE.hex(), "setArg", "fine"), TIMEOUT
                )
                assert returned == 4
                assert restarted.lookups_found == 1
            finally:
                await restarted.stop()
        finally:
            await device.stop()

    asyncio.run(_with_server(work))


def test_a_client_in_quarantine_with_the_device_id_is_not_where_the_device_s_254_records_look() -> None:
    async def work(
        server: DatagramServer, app: Application, cloud: Cloud, events: list[tuple[str, str | None]]
    ) -> None:
        assert app.gateway is not None
        await app.keys.set_fleet_policy(OPS, mode=KeyPolicyMode.QUARANTINE)
        device = _electron()
        stranger = UdpVirtualDevice(DEVICE, STRANGER_KEY, SERVER_KEY.public_key(), personality=ELECTRON_2)
        # Another key while the device is away: connected in quarantine; then the device itself.
        await stranger.start("127.0.0.1", server.port)
        try:
            await asyncio.wait_for(stranger.connected.wait(), TIMEOUT)
            assert cloud.quarantined(DEVICE.hex())
            await device.start("127.0.0.1", server.port)
            await asyncio.wait_for(device.connected.wait(), TIMEOUT)
            await _published_once(device, events, "back")
            port = server.port
            await server.stop()
            rows = await app.store.udp_sessions.all()
            assert len(rows) == 2
            assert len(await app.store.udp_sessions.of_device(DEVICE.hex(), limit=10)) == 1  # the device's own
            restarted = DatagramServer(app.gateway, SERVER_KEY, host="127.0.0.1", port=port, sessions=app.gateway)
            await restarted.start()
            try:
                await device.move()
                await _published_once(device, events, "after/restart")
                assert restarted.lookups_found == 1
            finally:
                await restarted.stop()
        finally:
            await stranger.stop()
            await device.stop()

    asyncio.run(_with_server(work))
