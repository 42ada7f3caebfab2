"""The recorded device side of real firmware sessions, played against the running service.

A raw TCP client holds the recording's device key and server key. It answers the live server's nonce
with a fresh handshake message, then sends the recorded device plaintexts (Hello, Describe, events,
subscriptions, time request, pings) in the recorded order under the live session credentials. The
server must accept all of it as it accepts the firmware itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.app import Actor
from cyan.cloud.models import AttemptOutcome, DeviceRecord
from cyan.keys import fingerprint, public_key_der
from cyan.protocol import ServerConfig, coap
from cyan.protocol.framing import SERVER_MAX_FRAME_LENGTH, FrameDecoder, FrameEncoder, SessionCredentials
from cyan.protocol.handshake import build_identity_message, open_session_key_message
from cyan.service import Service, ensure_server_keys
from cyan.testing import loopback_settings

DEVICE_ID = "0123456789abcdef01234567"
FAST = ServerConfig(describe_delay=0.2)


def _private(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


async def _replay(service: Service, session: dict[str, Any], device_key: rsa.RSAPrivateKey) -> list[coap.Message]:
    """Play the recording's device plaintexts; return every message the server sent back."""
    server_public = service.keys.private_key.public_key()
    reader, writer = await asyncio.open_connection("127.0.0.1", service.device_server.port)
    nonce = await reader.readexactly(40)
    device_der = device_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    writer.write(build_identity_message(server_public, nonce, bytes.fromhex(DEVICE_ID), device_der, os.urandom))
    answer = await reader.readexactly(384)
    credentials = SessionCredentials.from_bytes(open_session_key_message(device_key, server_public, answer))
    encoder = FrameEncoder(credentials)
    decoder = FrameDecoder(credentials, max_length=SERVER_MAX_FRAME_LENGTH)
    received: list[coap.Message] = []

    async def read_for(seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(reader.read(4096), left)
            except TimeoutError:
                return
            if not data:
                return
            decoder.feed(data)
            while (plaintext := decoder.next_frame()) is not None:
                message = coap.decode(plaintext)
                received.append(message)
                if message.code == coap.Code.GET and message.uri_path[:1] == (b"d",):
                    # The legacy stack answers Describe in its ACK (§6.2); use the recorded document.
                    reply = coap.Message(
                        coap.MessageType.ACK,
                        coap.Code.CONTENT,
                        message.message_id,
                        message.token,
                        payload=session["describe_payload"].encode(),
                    )
                    writer.write(encoder.encode(reply.encode()))

    frames = [f for f in session["frames"] if f["dir"] == "d2s" and f["kind"] == "frame"]
    for frame in frames:
        writer.write(encoder.encode(bytes.fromhex(frame["plaintext"])))
        await read_for(0.01)
    await read_for(0.5)
    writer.close()
    await writer.wait_closed()
    return received


@pytest.mark.parametrize("version", ["device-os-3.1.0", "device-os-0.6.1"])
def test_recorded_device_side_is_accepted(tmp_path: Path, vectors: Path, version: str) -> None:
    session = json.loads((vectors / version / "good.session.json").read_text())
    if "describe_payload" not in session:
        session["describe_payload"] = ""
    device_key = _private(vectors / version / "device_key.pem")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(vectors / version / "server_key.pem", data_dir / "server_key.pem")
    (data_dir / "server_key.pem").chmod(0o600)

    async def main() -> None:
        settings = loopback_settings(data_dir)
        service = Service(settings, ensure_server_keys(settings), protocol=FAST)
        await service.start()
        try:
            der = public_key_der(device_key.public_key())
            await service.store.devices.add(
                DeviceRecord(id=DEVICE_ID, public_key_der=der, key_fingerprint=fingerprint(der))
            )
            events = service.bus.subscribe("vdev/")
            received = await _replay(service, session, device_key)

            # The server Hello first, with a token; then empty ACKs and the time.
            hello = received[0]
            assert (hello.type, hello.code, hello.uri_path, len(hello.token)) == (
                coap.MessageType.NON,
                coap.Code.POST,
                (b"h",),
                1,
            )
            time_responses = [m for m in received if m.code == coap.Code.CONTENT]
            assert len(time_responses) == 1
            assert time_responses[0].payload is not None
            assert len(time_responses[0].payload) == 4
            for message in received:
                # Only codes the legacy stack understands ever go to a device (§6.1).
                assert message.code in (
                    coap.Code.EMPTY,
                    coap.Code.GET,
                    coap.Code.POST,
                    coap.Code.PUT,
                    coap.Code.CONTENT,
                )
            device_cons = {
                int(f["plaintext"][4:8], 16)
                for f in session["frames"]
                if f["dir"] == "d2s" and f["kind"] == "frame" and f["plaintext"][:2] in ("40", "41")
            }
            acked = {m.message_id for m in received if m.type is coap.MessageType.ACK}
            assert device_cons <= acked  # every confirmable message was acknowledged

            names = []
            while (event := await asyncio.wait_for(events.get(), 1)) is not None and event.name != "vdev/heartbeat":
                names.append(event.name)
            record = (await service.app.devices.get(Actor.operator(), DEVICE_ID)).record
            assert record.functions == ["setArg"]
            assert {v.name for v in record.variables} == {"counter", "lastArg", "temp"}
            assert record.platform_id == 3
            await service.cloud.flush()
            attempts = await service.store.attempts.recent(DEVICE_ID)
            assert [(a.outcome, a.step) for a in attempts] == [(AttemptOutcome.CONNECTED, "session")]
            assert names == ["vdev/called", "vdev/pong"]
        finally:
            await service.stop()

    asyncio.run(main())
