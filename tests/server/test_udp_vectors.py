"""Real Device OS 4.0.2 over UDP (the gcc virtual device posing as an Argon), replayed without the firmware.

The recordings in tests/vectors/udp-4.0.2 are ground truth for the device's side: every datagram it sent.
Replayed with the recorded time, wall time and randomness, the server's cores must send exactly the datagrams
the device accepted (tests/server/udp_replay.py), and the device's datagrams must open to the messages the
firmware's log says it sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from udp_replay import Recording, Replay, load_recording, replay

from cyan.dtls import connection_id_of, is_client_hello
from cyan.keys import fingerprint, load_ec_private_key, udp_public_key_der
from cyan.protocol import (
    DeviceIdentified,
    EventPublished,
    FunctionReturned,
    HelloReceived,
    PingReceived,
    VariableRead,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "udp-4.0.2"
DEVICE_ID = "0123456789abcdef01234567"


Good = tuple[Recording, Replay]


@pytest.fixture(scope="module")
def good() -> Good:
    recording = load_recording(VECTORS, "good")
    return recording, replay(recording)


def test_the_server_reproduces_every_datagram_the_device_accepted(good: Good) -> None:
    recording, replayed = good
    assert replayed.sent == recording.sent()


def test_the_device_did_a_full_handshake_with_a_cookie_and_a_connection_id(good: Good) -> None:
    recording, replayed = good
    received = [bytes.fromhex(h) for h in recording.received()]
    hellos = [d for d in received if is_client_hello(d)]
    assert len(hellos) == 2  # without a cookie, then with the one our HelloVerifyRequest gave
    assert replayed.handshakes == 1
    # From the Hello on, the device's records carry the 8-byte CID the server assigned (udp-dtls.md §1.3).
    cids = {connection_id_of(d) for d in received if not is_client_hello(d) and d[0] in (25, 253)}
    assert len(cids) == 1
    assert len(next(iter(cids)) or b"") == 8


def test_the_hello_names_the_device_with_the_registered_key_and_argon_platform(good: Good) -> None:
    _, replayed = good
    (identified, *_) = [e for e in replayed.events if isinstance(e, DeviceIdentified)]
    assert identified.device_id == DEVICE_ID
    device_key = load_ec_private_key((VECTORS / "device_key.der").read_bytes())
    assert identified.public_key_der == udp_public_key_der(device_key)
    assert fingerprint(identified.public_key_der or b"") == fingerprint(device_key)
    hello = next(e for e in replayed.events if isinstance(e, HelloReceived)).hello
    assert hello.platform_id == 12
    assert hello.system_version == 4006  # 4.0.2's module version


def test_variables_functions_events_and_pings_came_through(good: Good) -> None:
    _, replayed = good
    reads = {e.name: e.raw for e in replayed.events if isinstance(e, VariableRead)}
    assert reads["lastArg"] == b"hello world"
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert 11 in returns  # setArg("hello world")
    names = [e.name for e in replayed.events if isinstance(e, EventPublished)]
    assert "vdev/called" in names
    assert "vdev/heartbeat" in names
    # A quiet minute (the application's `quiet` function stops its heartbeats): 25 s keep-alives, acknowledged.
    assert sum(isinstance(e, PingReceived) for e in replayed.events) >= 2


def test_a_cloud_reconnect_resumes_on_the_connection_id_with_no_handshake(good: Good) -> None:
    recording, replayed = good
    entries = [e for e in recording.entries if e["op"] == "in"]
    first_port = entries[0]["port"]
    moved = [bytes.fromhex(e["hex"]) for e in entries if e["port"] != first_port]
    # Particle.disconnect() and connect(): a new socket (another port), records of type 253 (Device OS 4.x's
    # move-session marking), the same connection id, and no ClientHello (udp-dtls.md §1.4).
    assert moved
    assert moved[0][0] == 253
    assert not any(is_client_hello(d) for d in moved)
    before = {connection_id_of(bytes.fromhex(e["hex"])) for e in entries if e["port"] == first_port}
    assert {connection_id_of(d) for d in moved} == before - {None}
    assert replayed.handshakes == 1
    # And the device answered on the new address: the last call returned.
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert returns[-1] == 5  # setArg("again")
    log = (VECTORS / "good.device.log").read_text()
    assert "Skipping HELLO message" in log
    assert "restoreStatus=0" in log


def test_each_event_is_published_once_although_the_firmware_may_resend(good: Good) -> None:
    _, replayed = good
    heartbeats = [e.data for e in replayed.events if isinstance(e, EventPublished) and e.name == "vdev/heartbeat"]
    assert len(heartbeats) == len(set(heartbeats))
