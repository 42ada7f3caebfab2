"""Real Device OS 4.0.2 and 3.1.0 over UDP (the gcc virtual device; 4.0.2 posing as an Argon), replayed
without the firmware.

The recordings in tests/vectors/udp-4.0.2 and udp-3.1.0 are ground truth for the device's side: every datagram
it sent.
Replayed with the recorded time, wall time and randomness, the server's `DatagramServer` must send exactly the datagrams
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

ROOT = Path(__file__).resolve().parents[1] / "vectors"
DEVICE_ID = "0123456789abcdef01234567"
#: Per version: the directory, the platform its Hello says, its module version, the record type of a resume.
VERSIONS = {
    "4.0.2": (ROOT / "udp-4.0.2", 12, 4006, 253),  # --platform_id 12: an Argon; 253 from 4.0 (udp-dtls.md §1.4)
    "3.1.0": (ROOT / "udp-3.1.0", 3, 3103, 25),  # no --platform_id before 4.0: the Hello says gcc (3)
}


Good = tuple[Recording, Replay, str]


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def good(request: pytest.FixtureRequest) -> Good:
    version = str(request.param)
    recording = load_recording(VERSIONS[version][0], "good")
    return recording, replay(recording), version


def test_the_server_reproduces_every_datagram_the_device_accepted(good: Good) -> None:
    recording, replayed, _version = good
    assert replayed.sent == recording.sent()


def test_the_device_did_a_full_handshake_with_a_cookie_and_a_connection_id(good: Good) -> None:
    recording, replayed, _version = good
    received = [bytes.fromhex(h) for h in recording.received()]
    hellos = [d for d in received if is_client_hello(d)]
    assert len(hellos) == 2  # without a cookie, then with the one our HelloVerifyRequest gave
    assert replayed.handshakes == 1
    # From the Hello on, the device's records carry the 8-byte CID the server assigned (udp-dtls.md §1.3).
    cids = {connection_id_of(d) for d in received if not is_client_hello(d) and d[0] in (25, 253)}
    assert len(cids) == 1
    assert len(next(iter(cids)) or b"") == 8


def test_the_hello_names_the_device_with_the_registered_key_and_argon_platform(good: Good) -> None:
    _, replayed, version = good
    (identified, *_) = [e for e in replayed.events if isinstance(e, DeviceIdentified)]
    assert identified.device_id == DEVICE_ID
    vectors, platform, module, _ = VERSIONS[version]
    device_key = load_ec_private_key((vectors / "device_key.der").read_bytes())
    assert identified.public_key_der == udp_public_key_der(device_key)
    assert fingerprint(identified.public_key_der or b"") == fingerprint(device_key)
    hello = next(e for e in replayed.events if isinstance(e, HelloReceived)).hello
    assert hello.platform_id == platform
    assert hello.system_version == module


def test_variables_functions_events_and_pings_came_through(good: Good) -> None:
    _, replayed, version = good
    reads = {e.name: e.raw for e in replayed.events if isinstance(e, VariableRead)}
    assert reads["lastArg"] == b"hello world"
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert 11 in returns  # setArg("hello world")
    names = [e.name for e in replayed.events if isinstance(e, EventPublished)]
    assert "vdev/called" in names
    assert "vdev/heartbeat" in names
    pings = sum(isinstance(e, PingReceived) for e in replayed.events)
    if version == "4.0.2":
        # A quiet minute (the application's `quiet` function stops its heartbeats): 25 s keep-alives, acked.
        assert pings >= 3
    else:
        # 3.1.0's gcc build keeps the protocol's 23-minute keep-alive (no Wi-Fi override for platform 3): its
        # one ping is the resumed session's, sent instead of a Hello (udp-dtls.md §1.4).
        assert pings == 1


def test_a_cloud_reconnect_resumes_on_the_connection_id_with_no_handshake(good: Good) -> None:
    recording, replayed, version = good
    entries = [e for e in recording.entries if e["op"] == "in"]
    first_port = entries[0]["port"]
    moved = [bytes.fromhex(e["hex"]) for e in entries if e["port"] != first_port]
    # Particle.disconnect() and connect(): a new socket (another port), records of type 253 on 4.x (its
    # move-session marking; plain CID records on 3.x), the same connection id, and no ClientHello
    # (udp-dtls.md §1.4).
    assert moved
    assert moved[0][0] == VERSIONS[version][3]
    assert not any(is_client_hello(d) for d in moved)
    before = {connection_id_of(bytes.fromhex(e["hex"])) for e in entries if e["port"] == first_port}
    assert {connection_id_of(d) for d in moved} == before - {None}
    assert replayed.handshakes == 1
    # And the device answered on the new address: the last call returned.
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert returns[-1] == 5  # setArg("again")
    log = (VERSIONS[version][0] / "good.device.log").read_text()
    assert "Skipping HELLO message" in log
    assert "restoreStatus=0" in log


def test_each_event_is_published_once_although_the_firmware_may_resend(good: Good) -> None:
    _, replayed, _version = good
    heartbeats = [e.data for e in replayed.events if isinstance(e, EventPublished) and e.name == "vdev/heartbeat"]
    assert len(heartbeats) == len(set(heartbeats))
