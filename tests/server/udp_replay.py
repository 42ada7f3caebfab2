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

A recording may span restarts of the server: each `start` entry after the first stops the replayed server and
starts a new one (a new cookie secret, no live sessions), whose store holds what the recording says: the
sessions a `start` entry lists (recordings of servers that loaded them all when they started), and the answers
`stored` entries give to the lookups of servers that look sessions up on demand. A firmware update (`update`)
runs on the link it was sent to, as `cyan devices flash` starts it.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

import cyan.server.datagram_server as datagram_server
import cyan.server.device_server as device_server
from cyan.cloud.keypolicy import Decision
from cyan.cloud.models import ConnectionAttempt, DeviceRecord, UdpSession
from cyan.dtls import ServerEndpoint, Session
from cyan.keys import fingerprint, load_ec_private_key
from cyan.protocol import Event as ProtocolEvent
from cyan.protocol import Hello, OtaConfig, OtaOutcome
from cyan.protocol.datagram import DatagramConfig, DatagramServerConnection
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
    #: How each firmware update ended, in order.
    updates: list[OtaOutcome] = field(default_factory=list)
    #: Servers started after the first (restarts within the recording).
    restarts: int = 0
    #: The CoAP messages, one per record: from the device (opened) and to it (before sealing), in order.
    messages_in: list[bytes] = field(default_factory=list)
    messages_out: list[bytes] = field(default_factory=list)


class _Store:
    """The sessions' store of one replayed server: what a `start` entry listed, and the recorded answers of
    `stored` entries, in order, for the lookups that made them."""

    def __init__(
        self,
        listed: list[dict[str, Any]],
        answers: dict[bytes, deque[dict[str, Any]]],
        rows: list[UdpSession] | None = None,
    ) -> None:
        #: The rows of `NAME.store.json` (the store as a recording that began after a restart found it), then
        #: what a `start` entry lists.
        self.sessions = {row.connection_id: row for row in rows or []}
        self.sessions.update({bytes.fromhex(s["cid"]): _session(s, None) for s in listed})
        self._answers = answers
        self._limits: dict[bytes, int] = {}

    async def save_udp_session(self, session: UdpSession) -> None:
        old = self.sessions.get(session.connection_id)
        if old is not None and old.sequence_limit is not None:
            limit = max(old.sequence_limit, session.sequence_limit or 0)
            session = replace(session, sequence_limit=limit)
        self.sessions[session.connection_id] = session

    async def find_udp_session(self, connection_id: bytes) -> UdpSession | None:
        answers = self._answers.get(connection_id)
        if answers:
            answer = answers.popleft()
            if answer["session"] is None:
                return None
            self._limits[connection_id] = answer["limit"]
            return _session(answer, None)
        return self.sessions.get(connection_id)

    async def find_udp_sessions_of_device(self, device_id: str, *, limit: int) -> list[UdpSession]:
        mine = [s for s in self.sessions.values() if s.device_id == device_id]
        return sorted(mine, key=lambda s: s.updated_at, reverse=True)[:limit]

    async def reserve_udp_sequences(self, connection_id: bytes, count: int, *, floor: int = 0) -> int | None:
        recorded = self._limits.pop(connection_id, None)
        if recorded is not None:
            return int(recorded)
        stored = self.sessions.get(connection_id)
        if stored is None:
            return None
        limit = max(stored.sequence_limit or 0, floor) + count
        self.sessions[connection_id] = replace(stored, sequence_limit=limit)
        return limit

    async def prune_udp_sessions(self, *, before: datetime) -> int:
        return 0

    async def drop_udp_session(self, connection_id: bytes) -> None:
        self.sessions.pop(connection_id, None)


def _session(entry: dict[str, Any], limit: int | None) -> UdpSession:
    return UdpSession(
        connection_id=bytes.fromhex(entry["cid"]),
        session=bytes.fromhex(entry["session"]),
        updated_at=datetime.now(UTC),
        device_id=entry["device_id"],
        hello=None if entry["hello"] is None else bytes.fromhex(entry["hello"]),
        sequence_limit=limit,
    )


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


def replay(recording: Recording, config: DatagramConfig | None = None, ota_config: OtaConfig | None = None) -> Replay:
    return asyncio.run(_replay(recording, config or DatagramConfig(), ota_config or OtaConfig()))


async def _replay(recording: Recording, config: DatagramConfig, ota_config: OtaConfig) -> Replay:
    randomness = deque(bytes.fromhex(e["hex"]) for e in recording.entries if e["op"] == "random")
    wall = deque(e["value"] for e in recording.entries if e["op"] == "unix_time")
    clock = [0.0]

    def rng(count: int) -> bytes:
        data = randomness.popleft()
        assert len(data) == count, f"the replay drew {count} bytes where the server drew {len(data)}"
        return data

    out = Replay()
    cloud = _Cloud()
    saved = (
        datagram_server._now,
        device_server._now,
        DatagramLink._arm_timer,
        DatagramLink._on_event,
        ServerEndpoint.send_application_data,
        DatagramServerConnection.receive_message,
    )
    original_on_event = DatagramLink._on_event
    original_send, original_receive = ServerEndpoint.send_application_data, DatagramServerConnection.receive_message

    def on_event(link: DatagramLink, event: ProtocolEvent) -> None:
        out.events.append(event)
        original_on_event(link, event)

    def send_application_data(endpoint: ServerEndpoint, data: bytes, now: float) -> None:
        out.messages_out.append(bytes(data))
        original_send(endpoint, data, now)

    def receive_message(conn: DatagramServerConnection, data: bytes, now: float, **kwargs: Any) -> None:
        out.messages_in.append(bytes(data))
        original_receive(conn, data, now, **kwargs)

    # The answers of the stores the recorded servers looked sessions up in, in order, by connection id.
    answers: dict[bytes, deque[dict[str, Any]]] = {}
    for entry in recording.entries:
        if entry["op"] == "stored":
            answers.setdefault(bytes.fromhex(entry["cid"]), deque()).append(entry)
    spans_restarts = recording.stored is not None or any(e["op"] in ("start", "stored") for e in recording.entries)

    def new_server(listed: list[dict[str, Any]]) -> DatagramServer:
        server = DatagramServer(
            cloud,  # type: ignore[arg-type]
            recording.server_key,
            host="127.0.0.1",
            port=0,
            config=config,
            ota_config=ota_config,
            random_bytes=rng,
            wall_clock=wall.popleft,
            sessions=_Store(listed, answers, recording.stored)
            if spans_restarts or recording.stored is not None
            else None,
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
        return server

    datagram_server._now = device_server._now = lambda: clock[0]
    DatagramLink._arm_timer = lambda link: None  # type: ignore[method-assign,assignment]
    DatagramLink._on_event = on_event  # type: ignore[method-assign,assignment]
    ServerEndpoint.send_application_data = send_application_data  # type: ignore[method-assign,assignment]
    DatagramServerConnection.receive_message = receive_message  # type: ignore[method-assign,assignment]
    try:
        server: DatagramServer | None = None
        started = False
        current: list[DatagramLink] = []
        requests: list[asyncio.Future[Any]] = []

        def finished(update: asyncio.Future[OtaOutcome]) -> None:
            if not update.cancelled() and update.exception() is None:
                out.updates.append(update.result())

        for entry in recording.entries:
            op, clock[0] = entry["op"], entry["t"]
            address = ("127.0.0.1", entry.get("port", 0))
            if op == "start":
                if server is not None and started:
                    # A restart: what the stopped server held is gone, but for what its store kept.
                    out.restarts += 1
                    await server.stop()
                    current.clear()
                    server = None
                started = True
                if server is None:
                    server = new_server(entry["sessions"])
                elif server._store is not None:
                    assert isinstance(server._store, _Store)
                    server._store.sessions.update(_Store(entry["sessions"], answers).sessions)
                continue
            if server is None:
                server = new_server([])
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
            elif op == "update":
                update = server._by_address[address].update_firmware(bytes.fromhex(entry["image"]), fast=entry["fast"])
                update.add_done_callback(finished)
                requests.append(update)
            for _ in range(5):  # the decision and the requests run as tasks: let them reach the core
                await asyncio.sleep(0)
        for task in requests:
            task.cancel()
        if server is not None:
            await server.stop()
    finally:
        datagram_server._now, device_server._now = saved[0], saved[1]
        DatagramLink._arm_timer, DatagramLink._on_event = saved[2], saved[3]  # type: ignore[method-assign]
        ServerEndpoint.send_application_data = saved[4]  # type: ignore[method-assign]
        DatagramServerConnection.receive_message = saved[5]  # type: ignore[method-assign]
    assert not randomness, f"{len(randomness)} random draws of the recording were not replayed"
    return out
