"""Replaying a recorded UDP session (tests/vectors/udp-*) through the server's own wiring.

A recording (scripts/record-udp-session) holds every input the UDP device server took, every random byte it
drew and every datagram it sent. `replay` feeds the same inputs, at the same times, with the same randomness,
to a real `DatagramServer` (its cookie check, its links, their DTLS endpoints and message cores, its session
map), and returns the datagrams it sends: with real firmware on the other side of the recording, equal
datagrams mean the server reproduces a session the device accepted, byte for byte.

What stands in for the rest of `cyan serve`: the socket (a transport that keeps what is sent), the clock
(the recording's time, for both server modules), the cloud (a key decision that accepts the device at the
moment the recording says it did, and nothing else), the timers (each fires when the recording says it
fired, not on the event loop's clock), and, for a recording that starts after a restart of the server, the
store's sessions as they were then (`NAME.store.json`: the rows of `udp_sessions`, hex for bytes).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

import cyan.server.datagram_server as datagram_server
import cyan.server.device_server as device_server
from cyan.cloud.keypolicy import Decision
from cyan.cloud.models import ConnectionAttempt, DeviceRecord, UdpSession
from cyan.dtls import Session
from cyan.keys import fingerprint, load_ec_private_key
from cyan.protocol import Event as ProtocolEvent
from cyan.protocol import Hello
from cyan.protocol.datagram import DatagramConfig
from cyan.server.datagram_server import DatagramLink, DatagramServer
from cyan.server.device_server import DeviceProtocol

__all__ = ["Recording", "Replay", "load_recording", "replay"]


@dataclass(frozen=True, slots=True)
class Recording:
    entries: list[dict[str, Any]]
    server_key: ec.EllipticCurvePrivateKey
    #: The store's sessions when the recording began (None: the server ran without one).
    stored: list[UdpSession] | None = None

    def sent(self) -> list[str]:
        return [e["hex"] for e in self.entries if e["op"] == "out"]

    def received(self) -> list[str]:
        return [e["hex"] for e in self.entries if e["op"] == "in"]


def load_recording(directory: Path, name: str) -> Recording:
    lines = (directory / f"{name}.session.jsonl").read_text().splitlines()
    key = load_ec_private_key((directory / "udp_server_key.pem").read_bytes())
    store = directory / f"{name}.store.json"
    stored = None
    if store.exists():
        stored = [
            UdpSession(
                connection_id=bytes.fromhex(row["connection_id"]),
                session=bytes.fromhex(row["session"]),
                updated_at=datetime.fromisoformat(row["updated_at"]).replace(tzinfo=UTC),
                device_id=row["device_id"],
                hello=None if row["hello"] is None else bytes.fromhex(row["hello"]),
                sequence_limit=row["sequence_limit"],
            )
            for row in json.loads(store.read_text())
        ]
    return Recording([json.loads(line) for line in lines if line.strip()], key, stored)


@dataclass(slots=True)
class Replay:
    """What the replayed server did: its datagrams, the protocol events of its sessions, and the number of
    full handshakes and of sessions resumed without one."""

    sent: list[str] = field(default_factory=list)
    events: list[ProtocolEvent] = field(default_factory=list)
    handshakes: int = 0
    resumptions: int = 0


class _Transport:
    """The server's socket: what it sends is kept."""

    def __init__(self, sent: list[str]) -> None:
        self._sent = sent

    def sendto(self, data: bytes, address: Any = None) -> None:
        self._sent.append(data.hex())

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Sessions:
    """The store's sessions (`UdpSessionPort`), in memory, as the recording found them."""

    def __init__(self, stored: list[UdpSession]) -> None:
        self.rows = {s.connection_id: s for s in stored}

    async def save_udp_session(self, session: UdpSession) -> None:
        before = self.rows.get(session.connection_id)
        if before is not None and before.sequence_limit is not None:
            session.sequence_limit = max(before.sequence_limit, session.sequence_limit or 0)
        self.rows[session.connection_id] = session

    async def find_udp_session(self, connection_id: bytes) -> UdpSession | None:
        return self.rows.get(connection_id)

    async def find_udp_sessions_of_device(self, device_id: str, *, limit: int) -> list[UdpSession]:
        mine = [s for s in self.rows.values() if s.device_id == device_id]
        return sorted(mine, key=lambda s: s.updated_at, reverse=True)[:limit]

    async def reserve_udp_sequences(self, connection_id: bytes, count: int, *, floor: int = 0) -> int | None:
        row = self.rows.get(connection_id)
        if row is None:
            return None
        row.sequence_limit = max(row.sequence_limit or 0, floor) + count
        return row.sequence_limit

    async def prune_udp_sessions(self, *, before: datetime) -> int:
        return 0

    async def drop_udp_session(self, connection_id: bytes) -> None:
        self.rows.pop(connection_id, None)


class _Cloud:
    """The cloud behind the server: the key decision waits for the recording's `accept_device`, then accepts
    the key the device proved; everything else is accepted and forgotten."""

    def __init__(self) -> None:
        self.decided = asyncio.Event()

    async def authorize(
        self, device_id: str, presented_der: bytes | None, peer_address: str = ""
    ) -> tuple[Decision, DeviceRecord | None]:
        await self.decided.wait()
        self.decided.clear()
        assert presented_der is not None
        record = DeviceRecord(
            id=device_id,
            public_key_der=presented_der,
            key_fingerprint=fingerprint(presented_der),
            created_at=datetime.now(UTC),
        )
        key = fingerprint(presented_der)
        return Decision(presented_der, None, "", key, key, record=record), record

    def record_attempt(self, attempt: ConnectionAttempt) -> None:
        pass

    def session_started(
        self, link: DeviceProtocol, record: DeviceRecord, hello: Hello, *, quarantined: bool = False
    ) -> None:
        pass

    def session_ended(self, link: DeviceProtocol) -> None:
        pass

    def heard_from(self, link: DeviceProtocol) -> None:
        pass

    def describe_received(self, link: DeviceProtocol, document: dict[str, Any]) -> None:
        pass

    def metrics_received(self, link: DeviceProtocol, values: dict[int, int]) -> None:
        pass

    def event_from_device(self, link: DeviceProtocol, name: str, data: str | None, ttl: int, private: bool) -> None:
        pass

    def subscription_from_device(self, link: DeviceProtocol, prefix: str, scope: Any, device_id: str | None) -> None:
        pass


def replay(recording: Recording, config: DatagramConfig | None = None) -> Replay:
    return asyncio.run(_replay(recording, config or DatagramConfig()))


async def _replay(recording: Recording, config: DatagramConfig) -> Replay:
    randomness = deque(bytes.fromhex(e["hex"]) for e in recording.entries if e["op"] == "random")
    wall = deque(e["value"] for e in recording.entries if e["op"] == "unix_time")
    clock = [0.0]

    def rng(count: int) -> bytes:
        data = randomness.popleft()
        assert len(data) == count, f"the replay drew {count} bytes where the server drew {len(data)}"
        return data

    out = Replay()
    cloud = _Cloud()
    saved = (datagram_server._now, device_server._now, DatagramLink._arm_timer, DatagramLink._on_event)
    original_on_event = DatagramLink._on_event

    def on_event(link: DatagramLink, event: ProtocolEvent) -> None:
        out.events.append(event)
        original_on_event(link, event)

    datagram_server._now = device_server._now = lambda: clock[0]
    DatagramLink._arm_timer = lambda link: None  # type: ignore[method-assign,assignment]
    DatagramLink._on_event = on_event  # type: ignore[method-assign,assignment]
    try:
        server = DatagramServer(
            cloud,  # type: ignore[arg-type]
            recording.server_key,
            host="127.0.0.1",
            port=0,
            config=config,
            random_bytes=rng,
            wall_clock=wall.popleft,
            sessions=None if recording.stored is None else _Sessions(recording.stored),
        )
        established, resume, resume_link = server.session_established, server._resume, server._resume_link

        def session_established(link: DatagramLink, session: Session) -> None:
            out.handshakes += 1
            established(link, session)

        def resumed(cid: bytes | None, addr: tuple[Any, ...], now: float) -> DatagramLink | None:
            link = resume(cid, addr, now)
            out.resumptions += link is not None
            return link

        def resumed_from_store(
            stored: Any, addr: tuple[Any, ...], now: float, *, start: int, limit: int
        ) -> DatagramLink:
            out.resumptions += 1
            return resume_link(stored, addr, now, start=start, limit=limit)

        server.session_established = session_established  # type: ignore[method-assign]
        server._resume = resumed  # type: ignore[method-assign]
        server._resume_link = resumed_from_store  # type: ignore[method-assign]
        server.connection_made(_Transport(out.sent))  # type: ignore[arg-type]
        current: list[DatagramLink] = []
        requests: list[asyncio.Task[Any]] = []
        for entry in recording.entries:
            op, clock[0] = entry["op"], entry["t"]
            address = ("127.0.0.1", entry.get("port", 0))
            if op == "in":
                server.datagram_received(bytes.fromhex(entry["hex"]), address)
                link = server._by_address.get(address)
                if link is not None:
                    current[:] = [link]
            elif op == "timer":
                timed = [server._by_address[address]] if "port" in entry else list(server._by_address.values())
                for link in timed:
                    link._on_timer()
            elif op == "accept_device":
                cloud.decided.set()
            elif op in ("call", "read"):
                link = server._by_address[address] if "port" in entry else current[0]
                if op == "call":
                    requests.append(
                        asyncio.ensure_future(link.call_function(entry["name"], entry["arg"], entry["timeout"]))
                    )
                else:
                    requests.append(asyncio.ensure_future(link.read_variable(entry["name"], entry["timeout"])))
            for _ in range(5):  # the decision and the requests run as tasks: let them reach the core
                await asyncio.sleep(0)
        for task in requests:
            task.cancel()
        await server.stop()
    finally:
        datagram_server._now, device_server._now, DatagramLink._arm_timer, DatagramLink._on_event = saved  # type: ignore[method-assign]
    assert not randomness, f"{len(randomness)} random draws of the recording were not replayed"
    return out
