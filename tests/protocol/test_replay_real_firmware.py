"""Replays of real Device OS firmware sessions (tests/vectors/device-os-*/): the ground truth.

Server role: the recorded device bytes, fed to a `ServerConnection` holding the recorded nonce and
session credentials, must decrypt and parse into the right events. Device role: a `DeviceConnection`
given the recorded server bytes must produce the recorded device frames, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from replay_support import GCC_0_6_1, GCC_3_1_0, RecordedDeviceRandom, recorded_key

from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    Application,
    ConnectionClosed,
    ConnectionFailed,
    DescribeReceived,
    DeviceConnection,
    DeviceIdentified,
    EventPublished,
    EventReceived,
    Firmware,
    FrameEncoder,
    FunctionCalled,
    FunctionReturned,
    HelloFlag,
    HelloReceived,
    PingReceived,
    Reason,
    RemoteProtocolError,
    RequestTimedOut,
    ServerConnection,
    SessionCredentials,
    Step,
    Subscription,
    SubscriptionRequested,
    SubscriptionScope,
    TimeRequested,
    VariableRead,
    VariableReadFailed,
    VariableType,
)
from cyan.protocol.events import Event
from cyan.testing import ScriptedRandom, drain

Session = dict[str, Any]
DEVICE_ID = "0123456789abcdef01234567"


def _frames(session: Session, direction: str, kind: str = "frame") -> list[dict[str, Any]]:
    return [f for f in session["frames"] if f["dir"] == direction and f["kind"] == kind]


def _one(session: Session, direction: str, kind: str) -> bytes:
    (frame,) = _frames(session, direction, kind)
    return bytes.fromhex(frame["hex"])


# -- framing: the recorded server plaintexts re-encrypt to the recorded server frames ---------------


@pytest.mark.parametrize("name", ["device-os-3.1.0/good", "device-os-0.6.1/good"])
def test_server_frames_reencrypt_exactly(load_session: Callable[[str], Session], name: str) -> None:
    session = load_session(name)
    encoder = FrameEncoder(SessionCredentials.from_bytes(bytes.fromhex(session["session_credentials"])))
    frames = _frames(session, "s2d")
    assert len(frames) > 10
    for frame in frames:
        assert encoder.encode(bytes.fromhex(frame["plaintext"])).hex() == frame["hex"]


@pytest.mark.parametrize("name", ["device-os-3.1.0/good", "device-os-0.6.1/good"])
def test_device_frames_reencrypt_exactly(load_session: Callable[[str], Session], name: str) -> None:
    session = load_session(name)
    encoder = FrameEncoder(SessionCredentials.from_bytes(bytes.fromhex(session["session_credentials"])))
    for frame in _frames(session, "d2s"):
        assert encoder.encode(bytes.fromhex(frame["plaintext"])).hex() == frame["hex"]


# -- server role ------------------------------------------------------------------------------------


def _server(session: Session, vectors: Path, version: str) -> ServerConnection:
    rng = ScriptedRandom(
        bytes.fromhex(_one(session, "s2d", "nonce").hex()),
        b"\x00\x00",  # message id seed
        b"\xff",  # token seed: the server Hello takes token 0, requests 1, 2, ...
        bytes.fromhex(session.get("session_credentials", "00" * 40)),
    )
    return ServerConnection(recorded_key(vectors / version / "server_key.pem"), 0.0, rng=rng)


def _feed_until(server: ServerConnection, frames: list[dict[str, Any]], until: float, chunk: int | None) -> None:
    while frames and frames[0]["t"] <= until:
        frame = frames.pop(0)
        while (due := server.get_timer()) is not None and due <= frame["t"]:
            server.handle_timer(due)
        data = bytes.fromhex(frame["hex"])
        pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
        for piece in pieces:
            server.receive_data(piece, frame["t"])


def _identify(server: ServerConnection, session: Session, vectors: Path, version: str) -> DeviceIdentified:
    server.receive_data(_one(session, "d2s", "handshake_ciphertext"), 1.0)
    (identified,) = drain(server)
    assert isinstance(identified, DeviceIdentified)
    assert identified.device_id == DEVICE_ID
    device_public = recorded_key(vectors / version / "device_key.pem").public_key()
    assert identified.public_key_der == device_public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert identified.public_key_der == bytes.fromhex(session["handshake_plaintext"])[52:]
    return identified


def _force_token(server: ServerConnection, token: int) -> None:
    # The recorded server chose its own tokens; line ours up with them so replies match.
    server._token = (token - 1) & 0xFF


@pytest.mark.parametrize("chunk", [None, 1, 7], ids=["whole", "byte-at-a-time", "7-byte-pieces"])
def test_server_replays_device_os_3_1_0(
    load_session: Callable[[str], Session], vectors: Path, chunk: int | None
) -> None:
    session = load_session("device-os-3.1.0/good")
    server = _server(session, vectors, "device-os-3.1.0")
    identified = _identify(server, session, vectors, "device-os-3.1.0")
    assert identified.public_key is not None
    server.accept(identified.public_key, 1.0)
    assert _one(session, "s2d", "session_key_and_signature") != server.data_to_send()[40:]  # fresh padding

    frames = _frames(session, "d2s")
    _feed_until(server, frames, 1.8952, chunk)
    events = drain(server)
    names = [type(e).__name__ for e in events]
    assert names == [
        "SessionStarted",
        "HelloReceived",
        "DescribeReceived",
        "EventPublished",
        "EventPublished",
        "TimeRequested",
        "DescribeReceived",
    ]
    hello = events[1]
    assert isinstance(hello, HelloReceived)
    assert hello.hello.flags == HelloFlag(0x36)
    assert (hello.hello.product_id, hello.hello.product_version, hello.hello.platform_id) == (3, 0xFFFF, 3)
    assert (hello.hello.system_version, hello.hello.max_message_size) == (3103, 960)
    assert (hello.hello.max_binary_size, hello.hello.ota_chunk_size) == (102400, 512)
    assert events[2] == DescribeReceived(1, b'{"p":3,"m":[]}', {"p": 3, "m": []})
    assert events[3] == EventPublished("particle/device/updates/enabled", b"true", 60, True, False)
    assert events[4] == EventPublished("particle/device/updates/forced", b"false", 60, True, False)
    assert isinstance(events[5], TimeRequested)
    describe = events[6]
    assert isinstance(describe, DescribeReceived)
    assert describe.document == {"f": ["setArg"], "v": {"counter": 2, "lastArg": 4, "temp": 9}}
    assert server.variable_types == {
        "counter": VariableType.INT,
        "lastArg": VariableType.STRING,
        "temp": VariableType.DOUBLE,
    }

    # The recorded server's requests, with its tokens.
    requests = {}
    for token, (kind, name) in enumerate([("v", "counter"), ("v", "temp"), ("v", "lastArg"), ("f", "setArg")], start=1):
        _force_token(server, token)
        if kind == "v":
            requests[name] = server.read_variable(name, 1.8953)
        else:
            requests[name] = server.call_function(name, "hello world", 1.8953, timeout=5.0)
    server.send_event("vdev/ping", "pingdata")
    _force_token(server, 5)
    requests["nosuchvar"] = server.read_variable("nosuchvar", 1.8953)
    _force_token(server, 6)
    requests["nosuchfn"] = server.call_function("nosuchfn", "x", 1.8954, timeout=5.0)

    _feed_until(server, frames, 100.0, chunk)
    assert not frames
    server.receive_eof(45.0)
    events = drain(server)
    expected: list[Event] = [
        SubscriptionRequested("particle", SubscriptionScope.MY_DEVICES),
        SubscriptionRequested("spark", SubscriptionScope.MY_DEVICES),
        SubscriptionRequested("vdev/ping", SubscriptionScope.MY_DEVICES),
        VariableRead(requests["counter"], "counter", b"\x00\x00\x00\x00", 0, VariableType.INT),
        VariableRead(requests["temp"], "temp", bytes.fromhex("0000000000803540"), 21.5, VariableType.DOUBLE),
        VariableRead(requests["lastArg"], "lastArg", b"none", "none", VariableType.STRING),
        EventPublished("vdev/called", b"hello world", 60, True, False),
        FunctionReturned(requests["setArg"], "setArg", 11),
        EventPublished("vdev/pong", b"pingdata", 60, True, False),
        VariableReadFailed(requests["nosuchvar"], "nosuchvar", 0x84, "the device has no such name (4.04)"),
        # The unknown function is ACKed and never answered (§6.5).
        RequestTimedOut(requests["nosuchfn"], "function", "nosuchfn"),
        EventPublished("vdev/heartbeat", b"1", 60, True, False),
        PingReceived(),
        EventPublished("vdev/heartbeat", b"2", 60, True, False),
        EventPublished("vdev/heartbeat", b"3", 60, True, False),
        PingReceived(),
        EventPublished("vdev/heartbeat", b"4", 60, True, False),
        ConnectionClosed(),
    ]
    assert events == expected


def test_server_replays_device_os_0_6_1(load_session: Callable[[str], Session], vectors: Path) -> None:
    session = load_session("device-os-0.6.1/good")
    server = _server(session, vectors, "device-os-0.6.1")
    identified = _identify(server, session, vectors, "device-os-0.6.1")
    assert identified.public_key is not None
    server.accept(identified.public_key, 1.0)
    frames = _frames(session, "d2s")
    _feed_until(server, frames, 2.0, None)
    events = drain(server)
    hello = events[1]
    assert isinstance(hello, HelloReceived)
    assert hello.hello.flags == HelloFlag(0)
    assert hello.hello.system_version is None
    assert bytes.fromhex(session["device_hello_plaintext"])[7:] == hello.hello.encode()
    assert events[2:] == [
        EventPublished("spark/hardware/max_binary", b"102400", 60, True, False),
        EventPublished("spark/hardware/ota_chunk_size", b"512", 60, True, False),
        SubscriptionRequested("spark", SubscriptionScope.ALL_DEVICES),
        TimeRequested(1),
        SubscriptionRequested("vdev/ping", SubscriptionScope.MY_DEVICES),
    ]
    # The legacy stack never describes by itself; the server asks 3 s after the Hello (§13.1 #6).
    _force_token(server, 9)
    server.handle_timer(4.8969)
    assert server.get_timer() is not None
    requests = {}
    for token, (kind, name) in enumerate([("v", "counter"), ("v", "temp"), ("v", "lastArg"), ("f", "setArg")], start=1):
        _force_token(server, token)
        requests[name] = (
            server.read_variable(name, 4.9) if kind == "v" else server.call_function(name, "hello world", 4.9)
        )
    server.send_event("vdev/ping", "pingdata")
    _force_token(server, 5)
    requests["lastArg2"] = server.read_variable("lastArg", 4.9)
    _force_token(server, 6)
    requests["nosuchfn"] = server.call_function("nosuchfn", "x", 4.9, timeout=3.0)
    _feed_until(server, frames, 100.0, None)
    events = drain(server)
    assert events[0] == DescribeReceived(
        3,
        session["describe_payload"].encode(),
        {"f": ["setArg"], "v": {"counter": 2, "lastArg": 4, "temp": 9}, "p": 3, "m": []},
        request_id=1,
    )
    assert events[1:] == [
        VariableRead(requests["counter"], "counter", b"\x00\x00\x00\x00", 0, VariableType.INT),
        VariableRead(requests["temp"], "temp", bytes.fromhex("0000000000803540"), 21.5, VariableType.DOUBLE),
        VariableRead(requests["lastArg"], "lastArg", b"none", "none", VariableType.STRING),
        EventPublished("vdev/called", b"hello world", 60, True, False),
        FunctionReturned(requests["setArg"], "setArg", 11),
        EventPublished("vdev/pong", b"pingdata", 60, True, False),
        VariableRead(requests["lastArg2"], "lastArg", b"hello world", "hello world", VariableType.STRING),
        RequestTimedOut(requests["nosuchfn"], "function", "nosuchfn"),
        EventPublished("vdev/heartbeat", b"1", 60, True, False),
        PingReceived(),
        EventPublished("vdev/heartbeat", b"2", 60, True, False),
        EventPublished("vdev/heartbeat", b"3", 60, True, False),
        PingReceived(),
        EventPublished("vdev/heartbeat", b"4", 60, True, False),
    ]


def test_wrong_server_key_is_a_nonce_mismatch(load_session: Callable[[str], Session], vectors: Path) -> None:
    """The device holds another server key: OpenSSL returns garbage instead of raising; the nonce tells."""
    session = load_session("device-os-3.1.0/wrong_server_key")
    server = _server(session, vectors, "device-os-3.1.0")
    with pytest.raises(RemoteProtocolError) as caught:
        server.receive_data(_one(session, "d2s", "handshake_ciphertext"), 1.0)
    assert (caught.value.step, caught.value.reason) == (Step.NONCE, Reason.NONCE_MISMATCH)
    assert server.failure == ConnectionFailed(Step.NONCE, Reason.NONCE_MISMATCH, str(caught.value))
    assert server.closed


def test_drop_after_id_is_a_rejection(load_session: Callable[[str], Session], vectors: Path) -> None:
    session = load_session("device-os-3.1.0/drop_after_id")
    server = _server(session, vectors, "device-os-3.1.0")
    assert server.data_to_send() == _one(session, "s2d", "nonce")
    _identify(server, session, vectors, "device-os-3.1.0")
    server.reject(Reason.UNKNOWN_DEVICE, "device 0123456789abcdef01234567 is not registered")
    assert drain(server) == [
        ConnectionFailed(Step.IDENTITY, Reason.UNKNOWN_DEVICE, "device 0123456789abcdef01234567 is not registered")
    ]
    assert server.data_to_send() == b""  # nothing after the nonce: the device sees the socket close


# -- device role: the simulator reproduces the recorded device bytes -------------------------------


def _vdev_application() -> Application:
    """The recordings' user application (tests/vectors/device-os-3.1.0/README.md)."""
    return Application(
        functions=["setArg"],
        variables={
            "counter": (VariableType.INT, 0),
            "lastArg": (VariableType.STRING, "none"),
            "temp": (VariableType.DOUBLE, 21.5),
        },
        subscriptions=[Subscription("vdev/ping")],
    )


def _run_vdev_app(device: DeviceConnection, now: float) -> None:
    for event in drain(device):
        if isinstance(event, FunctionCalled):
            device.set_variable("lastArg", event.argument.decode())
            device.publish("vdev/called", event.argument, now)
            device.respond_function(event.request, len(event.argument))
        elif isinstance(event, EventReceived) and event.name == "vdev/ping":
            device.publish("vdev/pong", event.data, now)


@pytest.mark.parametrize(
    ("version", "firmware", "token_seed"),
    [("device-os-3.1.0", GCC_3_1_0, b"\xf4"), ("device-os-0.6.1", GCC_0_6_1, b"")],
)
def test_device_reproduces_recorded_bytes(
    load_session: Callable[[str], Session], vectors: Path, version: str, firmware: Firmware, token_seed: bytes
) -> None:
    session = load_session(f"{version}/good")
    server_key = recorded_key(vectors / version / "server_key.pem")
    rng = RecordedDeviceRandom(token_seed)
    device = DeviceConnection(
        bytes.fromhex(DEVICE_ID),
        recorded_key(vectors / version / "device_key.pem"),
        server_key.public_key(),
        0.0,
        firmware=firmware,
        application=_vdev_application(),
        rng=rng,
    )
    sent = bytearray()
    expected = bytearray()
    counter = 0
    for frame in session["frames"]:
        t = frame["t"]
        while (due := device.get_timer()) is not None and due <= t:
            device.handle_timer(due)
        raw = bytes.fromhex(frame["hex"])
        if frame["dir"] == "s2d":
            if device.closed:
                break
            if frame.get("plaintext", "").startswith("5144") and version == "device-os-0.6.1":
                # At 45 s an unsolicited NON 2.04 makes the legacy stack disconnect (README).
                with pytest.raises(RemoteProtocolError) as caught:
                    device.receive_data(raw, t)
                assert caught.value.reason is Reason.UNSUPPORTED_CODE
            else:
                device.receive_data(raw, t)
            _run_vdev_app(device, t)
        elif frame["kind"] == "handshake_ciphertext":
            # Its random padding differs from the recording's; what it encrypts must not.
            plaintext = server_key.decrypt(bytes(sent), padding.PKCS1v15())
            assert plaintext.hex() == session["handshake_plaintext"]
            sent.clear()
            rng.armed = True
        else:
            if "6865617274626561" in frame.get("plaintext", ""):  # the app's 10 s heartbeat
                counter += 1
                device.set_variable("counter", counter)
                device.publish("vdev/heartbeat", str(counter), t)
            expected += raw
        sent += device.data_to_send()
    assert sent.hex() == expected.hex()
    assert len(expected) > 500


def test_device_rejects_bad_signature(load_session: Callable[[str], Session], vectors: Path) -> None:
    session = load_session("device-os-3.1.0/bad_signature")
    device = DeviceConnection(
        bytes.fromhex(DEVICE_ID),
        recorded_key(vectors / "device-os-3.1.0" / "device_key.pem"),
        recorded_key(vectors / "device-os-3.1.0" / "server_key.pem").public_key(),
        0.0,
        firmware=DEVICE_OS_3_1_0,
    )
    device.receive_data(_one(session, "s2d", "nonce"), 1.0)
    assert len(device.data_to_send()) == 256
    with pytest.raises(RemoteProtocolError) as caught:
        device.receive_data(_one(session, "s2d", "session_key_and_signature"), 1.1)
    assert (caught.value.step, caught.value.reason) == (Step.SESSION_KEY, Reason.SIGNATURE_INVALID)


def test_device_accepts_recorded_session_key(load_session: Callable[[str], Session], vectors: Path) -> None:
    session = load_session("device-os-0.6.1/good")
    device = DeviceConnection(
        bytes.fromhex(DEVICE_ID),
        recorded_key(vectors / "device-os-0.6.1" / "device_key.pem"),
        recorded_key(vectors / "device-os-0.6.1" / "server_key.pem").public_key(),
        0.0,
        firmware=DEVICE_OS_0_6_1,
    )
    device.receive_data(_one(session, "s2d", "nonce") + _one(session, "s2d", "session_key_and_signature"), 1.0)
    first_frame = device.data_to_send()[256:]
    assert len(first_frame) == 18
    assert device.step is Step.HELLO
