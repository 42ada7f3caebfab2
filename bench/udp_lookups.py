"""What an unauthenticated UDP datagram on an unknown connection id costs the device server, and how many
store reads a flood of them causes (docs/dtls.md "The UDP device server").

    .venv/bin/python bench/udp_lookups.py [--count 100000] [--postgres postgresql://postgres@127.0.0.1/test]

The datagrams are handed to `DatagramServer.datagram_received` directly (no socket), on a server over SQLite
(and PostgreSQL when given): the time per datagram in the handler, the reads that reached the store, and
the datagrams refused a lookup, for three floods: one id again and again from one address, a new id each
time from one address, and a new id each time from a new address each time (forged sources). And two of
Device OS 2.x's type-254 records, which name a device instead: a new device id each time from one address, and
forgeries naming a device whose session is in the store (found, tried, refused: nothing resumed) from a new
address each time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from _common import table
from cryptography.hazmat.primitives.asymmetric import ec

from cyan.app import Application
from cyan.bus import InProcessBus
from cyan.cloud.models import UdpSession
from cyan.cloud.service import Cloud
from cyan.dtls import Session
from cyan.server.datagram_server import DatagramServer
from cyan.store import PostgresStore, SqliteStore
from cyan.testing import CountingUdpSessions

SERVER_KEY = ec.derive_private_key(0x71, ec.SECP256R1())


def _address(n: int) -> str:
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def _record(cid: bytes) -> bytes:
    return bytes([25, 0xFE, 0xFD, 0, 1]) + bytes(6) + cid + struct.pack(">H", 40) + bytes(40)


def _moved(device: bytes) -> bytes:
    """A type-254 record naming `device` (Device OS 2.x), not encrypted under any session."""
    return bytes([254, 0xFE, 0xFD, 0, 1]) + bytes(6) + struct.pack(">H", 40) + os.urandom(40) + device + b"\x0c"


#: A device without connection ids whose session is in the store: forged 254 records name it.
STORED_DEVICE = bytes.fromhex("0123456789abcdef01234567")


async def _flood(store: SqliteStore | PostgresStore, count: int) -> list[tuple[str, str, str]]:
    await store.open()
    cloud = Cloud(store, InProcessBus())
    app = Application(store, cloud=cloud)
    assert app.gateway is not None
    rows = []
    floods: dict[str, Callable[[int], tuple[bytes, tuple[str, int]]]] = {
        "one id, one address": lambda n: (_record(b"\x01" * 8), ("10.0.0.1", 4000)),
        "new ids, one address": lambda n: (_record(os.urandom(8)), ("10.0.0.2", 4000)),
        "new ids, new addresses": lambda n: (
            _record(os.urandom(8)),
            (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 4000),
        ),
        "254: new device ids, one address": lambda n: (_moved(os.urandom(12)), ("10.0.0.3", 4000)),
        "254: a stored device, new addresses": lambda n: (_moved(STORED_DEVICE), (_address(n), 4000)),
    }
    session = Session("server", b"", bytes(48), bytes(32), bytes(32), b"", 1, 0, -1, 0, b"key")
    await app.gateway.save_udp_session(
        UdpSession(os.urandom(8), session.encode(), datetime.now(UTC), device_id=STORED_DEVICE.hex())
    )
    try:
        for name, make in floods.items():
            sessions = CountingUdpSessions(app.gateway)
            server = DatagramServer(app.gateway, SERVER_KEY, host="127.0.0.1", port=0, sessions=sessions)
            await server.start()
            datagrams = [make(n) for n in range(count)]
            # The first datagram's lookup is let finish, so that what follows meets what it left (an id known
            # unknown, or a device's sessions kept a moment).
            server.datagram_received(*datagrams[0])
            await asyncio.sleep(0.3)
            started = time.perf_counter()
            for n, (data, address) in enumerate(datagrams[1:], 1):
                server.datagram_received(data, address)
                if n % 1000 == 999:
                    await asyncio.sleep(0)  # let lookups run, as the loop would between reads
            spent = time.perf_counter() - started
            await asyncio.sleep(0.5)
            rows.append(
                (
                    f"{store.__class__.__name__}: {name}",
                    f"{spent / count * 1e6:.1f} µs each; reads: {len(sessions.finds)}; "
                    f"refused: {server.lookups_refused}",
                    f"{count} datagrams",
                )
            )
            await server.stop()
    finally:
        await app.gateway.drain()
        await store.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--postgres", help="a PostgreSQL database URL (its udp_sessions table is used)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        rows += asyncio.run(_flood(SqliteStore(Path(directory) / "cyan.db"), args.count))
    if args.postgres:
        rows += asyncio.run(_flood(PostgresStore(args.postgres), args.count))
    print(table("Unknown connection ids and device ids: the handler's time and the store reads they cause", rows))


if __name__ == "__main__":
    main()
