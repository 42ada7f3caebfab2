"""Replaying a recorded UDP session (tests/vectors/udp-*) through the server's sans-IO cores.

A recording (scripts/record-udp-session) holds every input the UDP device server took, every random byte it
drew and every datagram it sent. `replay` feeds the same inputs, at the same times, with the same randomness,
to a cookie verifier, DTLS server endpoints and `DatagramServerConnection`s glued as `DatagramServer` glues
them (with an `OtaSender` per firmware update, as `DatagramLink` runs one), and returns the datagrams they
send: with real firmware on the other side of the recording, equal datagrams mean the server reproduces a
session the device accepted, byte for byte.

A recording may span restarts of the server: each `start` entry holds the sessions the server loaded from
its store, and the replay starts a new server there (a new cookie secret, no live sessions, those stored).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from cyan.dtls import (
    ApplicationDataReceived,
    CookieVerifier,
    DeviceKeyPresented,
    HandshakeCompleted,
    ServerEndpoint,
    Session,
    connection_id_of,
    is_client_hello,
)
from cyan.dtls import ConnectionClosed as DtlsClosed
from cyan.keys import load_ec_private_key
from cyan.protocol import DeviceIdentified, Hello, HelloReceived, OtaConfig, OtaOutcome, OtaSender
from cyan.protocol import Event as ProtocolEvent
from cyan.protocol.datagram import DatagramConfig, DatagramServerConnection
from cyan.protocol.messages import parse_hello

__all__ = ["Recording", "Replay", "load_recording", "replay"]


@dataclass(frozen=True, slots=True)
class Recording:
    entries: list[dict[str, Any]]
    server_key: ec.EllipticCurvePrivateKey

    def sent(self) -> list[str]:
        return [e["hex"] for e in self.entries if e["op"] == "out"]

    def received(self) -> list[str]:
        return [e["hex"] for e in self.entries if e["op"] == "in"]


def load_recording(directory: Path, name: str) -> Recording:
    lines = (directory / f"{name}.session.jsonl").read_text().splitlines()
    key = load_ec_private_key((directory / "udp_server_key.pem").read_bytes())
    return Recording([json.loads(line) for line in lines if line.strip()], key)


@dataclass(slots=True)
class _Session:
    endpoint: ServerEndpoint
    conn: DatagramServerConnection | None = None
    device_id: str | None = None
    hello: Hello | None = None
    ota: OtaSender | None = None


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A session a (re)started server loaded from its store."""

    session: Session
    device_id: str | None
    hello: Hello | None

    def export(self) -> Session:
        return self.session


def _export(held: _Session | _Loaded) -> Session:
    return held.export() if isinstance(held, _Loaded) else held.endpoint.export_session()


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


def replay(recording: Recording, config: DatagramConfig | None = None, ota_config: OtaConfig | None = None) -> Replay:
    config = config or DatagramConfig()
    ota_config = ota_config or OtaConfig()
    randomness = deque(bytes.fromhex(e["hex"]) for e in recording.entries if e["op"] == "random")
    wall = deque(e["value"] for e in recording.entries if e["op"] == "unix_time")

    def rng(count: int) -> bytes:
        data = randomness.popleft()
        assert len(data) == count, f"the replay drew {count} bytes where the server drew {len(data)}"
        return data

    out = Replay()
    cookies = CookieVerifier(rng(32))
    by_cid: dict[bytes, _Session] = {}
    stored: dict[bytes, _Session | _Loaded] = {}
    by_port: dict[int, _Session] = {}
    current: list[_Session] = []
    started = False

    def flush(session: _Session, now: float) -> None:
        if session.conn is not None and session.endpoint.established:
            for message in session.conn.messages_to_send(now):
                out.messages_out.append(message)
                session.endpoint.send_application_data(message, now)
        out.sent.extend(d.hex() for d in session.endpoint.datagrams_to_send())

    def ota_step(session: _Session) -> None:
        if session.ota is not None and session.ota.finished:
            assert session.ota.outcome is not None
            out.updates.append(session.ota.outcome)
            session.ota = None

    def drain_conn(session: _Session, now: float) -> None:
        assert session.conn is not None
        while (event := session.conn.next_event()) is not None:
            out.events.append(event)
            if session.ota is not None and session.ota.handle_event(event, now):
                ota_step(session)
            if isinstance(event, DeviceIdentified):
                session.device_id = event.device_id
            elif isinstance(event, HelloReceived):
                session.hello = event.hello

    def drain_dtls(session: _Session, now: float) -> None:
        endpoint = session.endpoint
        while (event := endpoint.next_event()) is not None:
            if isinstance(event, DeviceKeyPresented):
                endpoint.accept(now)
            elif isinstance(event, HandshakeCompleted):
                out.handshakes += 1
                session.conn = DatagramServerConnection(event.peer_public_key_der, now, config=config, rng=rng)
                by_cid[event.connection_id] = session
                stored[event.connection_id] = session
            elif isinstance(event, ApplicationDataReceived):
                assert session.conn is not None
                out.messages_in.append(event.data)
                session.conn.receive_message(event.data, now, unix_time=wall.popleft())
                drain_conn(session, now)
            elif isinstance(event, DtlsClosed):
                stored.pop(endpoint.connection_id, None)

    for entry in recording.entries:
        op, now = entry["op"], entry["t"]
        if op == "start":
            if started:
                # A restart: what the stopped server held is gone, but for what its store kept.
                out.restarts += 1
                cookies = CookieVerifier(rng(32))
                by_cid.clear()
                by_port.clear()
                current.clear()
            started = True
            stored = {
                bytes.fromhex(s["cid"]): _Loaded(
                    Session.decode(bytes.fromhex(s["session"])),
                    s["device_id"],
                    None if s["hello"] is None else parse_hello(bytes.fromhex(s["hello"])),
                )
                for s in entry["sessions"]
            }
        elif op == "in":
            data = bytes.fromhex(entry["hex"])
            port = entry["port"]
            cid = connection_id_of(data)
            session = by_cid.get(cid) if cid is not None else None
            session = session or by_port.get(port)
            if is_client_hello(data):
                check = cookies.check(data, f"127.0.0.1:{port}".encode(), now)
                if check.reply is not None:
                    out.sent.append(check.reply.hex())
                    continue
                if not check.verified:
                    continue
                if session is None or session.endpoint.client_random != check.client_random:
                    cid_new = rng(8)
                    endpoint = ServerEndpoint(recording.server_key, now=now, random_bytes=rng, connection_id=cid_new)
                    session = _Session(endpoint)
                    by_port[port] = session
            elif session is None:
                held = stored.get(cid) if cid is not None else None
                if held is None or cid is None:
                    continue
                endpoint = ServerEndpoint.from_session(_export(held), recording.server_key, now=now, random_bytes=rng)
                session = _Session(endpoint, device_id=held.device_id, hello=held.hello)
                session.conn = DatagramServerConnection(
                    endpoint.peer_public_key_der,
                    now,
                    config=config,
                    rng=rng,
                    resumed_device_id=held.device_id,
                    resumed_hello=held.hello,
                )
                out.resumptions += 1
                by_cid[cid] = session
                by_port[port] = session
            current[:] = [session]
            by_port[port] = session  # a session found by its CID follows the device to its new port
            session.endpoint.receive_datagram(data, now)
            drain_dtls(session, now)
            flush(session, now)
        elif op == "timer":
            timed = [by_port[entry["port"]]] if "port" in entry else list({id(s): s for s in by_port.values()}.values())
            for session in timed:
                session.endpoint.handle_timer(now)
                drain_dtls(session, now)
                if session.conn is not None and not session.conn.closed:
                    session.conn.handle_timer(now)
                    drain_conn(session, now)
                    if session.ota is not None:
                        session.ota.handle_timer(now, backlog=0)
                        ota_step(session)
                flush(session, now)
        elif op == "update":
            session = by_port[entry["port"]]
            assert session.conn is not None
            assert session.ota is None
            image = bytes.fromhex(entry["image"])
            session.ota = OtaSender(session.conn, image, now, fast=entry["fast"], config=ota_config)
            flush(session, now)
        elif op in ("accept_device", "call", "read"):
            session = by_port[entry["port"]] if "port" in entry else current[0]
            assert session.conn is not None
            if op == "accept_device":
                session.conn.accept_device(now)
            elif op == "call":
                session.conn.call_function(entry["name"], entry["arg"], now, entry["timeout"])
            else:
                session.conn.read_variable(entry["name"], now, entry["timeout"])
            drain_conn(session, now)
            flush(session, now)
    assert not randomness, f"{len(randomness)} random draws of the recording were not replayed"
    return out
