"""Replays of real Device OS firmware receiving OTA updates (tests/vectors/ota/, its README has the tables).

Device role: a `DeviceConnection` with the recorded firmware's personality, given the recorded server
frames at their recorded times, must write the recorded device frames byte for byte: ACKs, UpdateReady,
ChunkReceived OK and BAD, ChunkMissed (NON on 3.1.0, CON and repeated after 3 s on 0.6.1), the UpdateDone
answers, 0.6.1's result event and its out-of-order UpdateDone, then the reset (EOF).

Server role: a `ServerConnection` with an `OtaSender`, fed the recorded device frames at their recorded
times, must send what the recorded server sent, which the real firmware accepted: the same plaintexts
(512-byte chunks, the last one unpadded, the recorded CRCs, the same ids and tokens), where the recorded
server's deliberate faults (a skipped chunk, a wrong CRC) are reproduced by a lossy link in the test.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from replay_support import GCC_0_6_1, GCC_3_1_0, RecordedDeviceRandom, recorded_key

from cyan.protocol import (
    Application,
    ConnectionClosed,
    ConnectionFailed,
    DeviceConfig,
    DeviceConnection,
    DeviceReset,
    Firmware,
    FrameDecoder,
    OtaConfig,
    OtaSender,
    OtaState,
    Reason,
    ServerConfig,
    ServerConnection,
    SessionCredentials,
    Subscription,
    VariableType,
)
from cyan.protocol.events import ChunkStored, UpdateStarted
from cyan.testing import ScriptedRandom, drain

Session = dict[str, Any]
DEVICE_ID = "0123456789abcdef01234567"
#: The virtual device never resets on the 30 s update timer (README D5).
GCC_CONFIG = DeviceConfig(update_timeout=None)
IMAGE = bytes(i * 7 % 256 for i in range(3000))

SCENARIOS = [
    "n310_ota_nonfast",
    "n310_ota_fast_skip",
    "n310_ota_nonfast_badcrc",
    "n310_ota_stall",
    "n310_ota_nonfast_after_reset",
    "n310_ota_fast_skip_after_reset",
    "l061_ota_nonfast",
    "l061_ota_fast_skip",
    "l061_ota_nonfast_badcrc",
    "l061_ota_stall",
    "l061_ota_nonfast_after_reset",
    "l061_ota_fast_skip_after_reset",
]


def _key(vectors: Path, name: str) -> rsa.RSAPrivateKey:
    return recorded_key(vectors / "device-os-3.1.0" / name)


def _firmware(scenario: str) -> Firmware:
    return GCC_0_6_1 if scenario.startswith("l061") else GCC_3_1_0


def _token_seed(session: Session, firmware: Firmware) -> bytes:
    """The new stack draws its first token at random (§3); the time request shows which one."""
    if firmware.legacy:
        return b""
    for frame in session["frames"]:
        if frame["dir"] == "d2s" and frame.get("plaintext", "").startswith("4101"):
            return bytes(((int(frame["plaintext"][8:10], 16) - 1) & 0xFF,))
    raise AssertionError("no time request in the recording")


# -- the recordings themselves ----------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["n310_ota_nonfast", "l061_ota_fast_skip"])
def test_recorded_image_and_chunks(load_session: Callable[[str], Session], scenario: str) -> None:
    session = load_session(f"ota/{scenario}")
    image = session["image"]
    assert image["size"] == len(IMAGE) == 3000
    chunks = [IMAGE[i : i + 512] for i in range(0, 3000, 512)]
    assert [(c["index"], c["size"]) for c in image["chunks"]] == [(i, len(c)) for i, c in enumerate(chunks)]
    assert [c["crc32"] for c in image["chunks"]] == [f"{zlib.crc32(c):08x}" for c in chunks]


# -- device role: the simulator's firmware writes the recorded bytes ---------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_device_reproduces_recorded_ota_bytes(
    load_session: Callable[[str], Session], vectors: Path, scenario: str
) -> None:
    session = load_session(f"ota/{scenario}")
    firmware = _firmware(scenario)
    server_key = _key(vectors, "server_key.pem")
    rng = RecordedDeviceRandom(_token_seed(session, firmware))
    device = DeviceConnection(
        bytes.fromhex(DEVICE_ID),
        _key(vectors, "device_key.pem"),
        server_key.public_key(),
        0.0,
        firmware=firmware,
        application=Application(
            functions=["setArg"],
            variables={
                "counter": (VariableType.INT, 0),
                "lastArg": (VariableType.STRING, "none"),
                "temp": (VariableType.DOUBLE, 21.5),
            },
            subscriptions=[Subscription("vdev/ping")],
        ),
        config=GCC_CONFIG,
        rng=rng,
        ota_succeeded=scenario.endswith("after_reset"),
    )
    sent = bytearray()
    expected = bytearray()
    events = []
    counter = 0
    for frame in session["frames"]:
        t = frame["t"]
        while (due := device.get_timer()) is not None and due <= t:
            device.handle_timer(due)
        raw = bytes.fromhex(frame["hex"])
        if frame["dir"] == "s2d":
            if not device.closed:
                device.receive_data(raw, t)
        elif frame["kind"] == "handshake_ciphertext":
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
        events += drain(device)
    # After the last recorded frame: 0.6.1 resets 1 s after its result event, writing its held UpdateDone.
    end = session["frames"][-1]["t"] + 1.5
    while (due := device.get_timer()) is not None and due <= end:
        device.handle_timer(due)
    sent += device.data_to_send()
    events += drain(device)
    credentials = SessionCredentials.from_bytes(bytes.fromhex(session["session_credentials"]))
    assert _plaintexts(credentials, bytes(sent)) == _plaintexts(credentials, bytes(expected))
    assert sent.hex() == expected.hex()
    assert len(expected) > 200

    resets = [e for e in events if isinstance(e, DeviceReset)]
    stored = [e for e in events if isinstance(e, ChunkStored)]
    if scenario.endswith(("nonfast", "fast_skip", "badcrc")):
        assert resets == [DeviceReset("update", IMAGE)], "the device applies exactly the recorded image"
        assert sorted({e.index for e in stored}) == list(range(6))
        fast = "fast_skip" in scenario
        assert [e for e in events if isinstance(e, UpdateStarted)] == [UpdateStarted(3000, 512, fast)]
        assert device.closed
    elif scenario.endswith("stall"):
        assert resets == []
        assert [e.index for e in stored] == [0]
    else:
        assert resets == []
        assert not stored


def test_after_an_update_a_photon_says_so_in_its_hello(vectors: Path) -> None:
    """Real Photons set Hello flag 0x01 after an update (§7.2); the virtual device does not (D4)."""
    photon = Firmware(version=(3, 1, 0), module_version=3103)
    for firmware, expected in ((photon, 0x37), (GCC_3_1_0, 0x36)):
        device = DeviceConnection(
            bytes.fromhex(DEVICE_ID),
            _key(vectors, "device_key.pem"),
            _key(vectors, "server_key.pem").public_key(),
            0.0,
            firmware=firmware,
            ota_succeeded=True,
        )
        assert device._hello().flags == expected


# -- server role: the sender, driven by the recorded device, sends what the device accepted -----------


class _LossyServer(ServerConnection):
    """The recorded server's deliberate faults, as a link that loses or damages a frame: the first copy
    of one chunk is lost (fast_skip), or one chunk goes out with its CRC inverted (badcrc)."""

    skip_index: int | None = None
    damage_call: int | None = None
    calls = 0

    def send_chunk(
        self, data: bytes, crc: int, *, index: int | None = None, now: float, timeout: float | None = None
    ) -> int:
        call = self.calls
        self.calls += 1
        if index is not None and index == self.skip_index:
            self.skip_index = None
            return -1
        if call == self.damage_call:
            crc ^= 0xFFFFFFFF
        return super().send_chunk(data, crc, index=index, now=now, timeout=timeout)


def _recorded_server(session: Session, vectors: Path, scenario: str) -> _LossyServer:
    rng = ScriptedRandom(
        bytes.fromhex(next(f["hex"] for f in session["frames"] if f["kind"] == "nonce")),
        b"\x01\x00",  # message ids from 0x0101, as the recorded server
        b"\x10",  # tokens from 0x11 (its Hello)
        bytes.fromhex(session["session_credentials"]),
    )
    server = _LossyServer(_key(vectors, "server_key.pem"), 0.0, rng=rng, config=ServerConfig(describe_delay=None))
    if "fast_skip" in scenario:
        server.skip_index = 2
    if "badcrc" in scenario:
        server.damage_call = 1  # the first copy of chunk 1
    return server


def _s2d_plaintexts(session: Session, data: bytes) -> list[str]:
    return _plaintexts(SessionCredentials.from_bytes(bytes.fromhex(session["session_credentials"])), data)


def _plaintexts(credentials: SessionCredentials, data: bytes) -> list[str]:
    """The frames' plaintexts, in one direction, under the §4 IV chain ("!" marks a bad padding)."""
    decoder = FrameDecoder(credentials, max_length=4096)
    decoder.feed(data)
    out = []
    while True:
        try:
            plaintext = decoder.next_frame()
        except ValueError:
            out.append("!")
            continue
        if plaintext is None:
            return out
        out.append(plaintext.hex())


def _ota_only(plaintexts: list[str]) -> list[str]:
    """The server's OTA requests: CON POST u / c and CON PUT u (41 02 / 41 03 ... B1 75|63)."""
    return [p for p in plaintexts if p[:4] in ("4102", "4103") and p[10:14] in ("b175", "b163")]


@pytest.mark.parametrize(
    "scenario",
    [
        "n310_ota_nonfast",
        "n310_ota_fast_skip",
        "n310_ota_nonfast_badcrc",
        "n310_ota_stall",
        "l061_ota_nonfast",
        "l061_ota_fast_skip",
        "l061_ota_nonfast_badcrc",
        "l061_ota_stall",
    ],
)
def test_sender_replays_recorded_updates(load_session: Callable[[str], Session], vectors: Path, scenario: str) -> None:
    session = load_session(f"ota/{scenario}")
    server = _recorded_server(session, vectors, scenario)
    frames = [f for f in session["frames"] if f["dir"] == "d2s"]
    server.receive_data(bytes.fromhex(frames.pop(0)["hex"]), 1.0)  # the 256-byte handshake message
    (identified, *_) = drain(server)
    assert identified.public_key is not None  # type: ignore[attr-defined]
    server.accept(identified.public_key, 1.0)  # type: ignore[attr-defined]
    sent = bytearray()
    server.data_to_send()  # the nonce and session key
    fast = "fast_skip" in scenario
    sender: OtaSender | None = None
    begin_at = next(f["t"] for f in session["frames"] if f.get("plaintext", "").startswith("4102010212b175"))
    events = []
    # The device's EOF right after its last frame (its reset); the stalled ones were cut off at 69.9 s.
    eof_at = 69.9 if scenario.endswith("stall") else frames[-1]["t"] + 0.001
    for frame in [*frames, {"t": eof_at, "eof": True}]:
        t = frame["t"]
        while True:
            due = [d for d in (server.get_timer(), sender.get_timer() if sender else None) if d is not None]
            if sender is None and begin_at <= t:
                due.append(begin_at)
            if not due or min(due) > t:
                break
            now = min(due)
            if sender is None and now >= begin_at:
                sender = OtaSender(server, IMAGE, now, fast=fast)
            else:
                server.handle_timer(now)
                if sender is not None:
                    sender.handle_timer(now)
            for event in drain(server):
                events.append(event)
                if sender is not None:
                    sender.handle_event(event, now)
        if frame.get("eof"):
            server.receive_eof(t)
        else:
            server.receive_data(bytes.fromhex(frame["hex"]), t)
        for event in drain(server):
            events.append(event)
            if sender is not None:
                sender.handle_event(event, t)
        sent += server.data_to_send()
    assert sender is not None
    ours = _s2d_plaintexts(session, bytes(sent))
    recorded = [f["plaintext"] for f in session["frames"] if f["dir"] == "s2d" and f["kind"] == "frame"]
    assert ours[0] == recorded[0] == "5102010111b168"  # the server Hello
    if scenario.endswith("stall"):
        # The recorded server went silent after chunk 0; ours sends chunk 1 and gives up 20 s later,
        # inside the device's 30 s update timer (§7.2).
        assert _ota_only(ours)[:2] == _ota_only(recorded)
        assert sender.state is OtaState.FAILED
        assert sender.outcome is not None
        assert sender.outcome.reason == "no_answer"
        assert sender.outcome.elapsed < OtaConfig().device_timeout
        # The idle timeout, suspended during the update (§7.2), applies again once it is given up.
        assert any(isinstance(e, ConnectionFailed) and e.reason is Reason.IDLE_TIMEOUT for e in events)
        return
    assert sender.state is OtaState.COMPLETE, sender.outcome
    assert sender.outcome is not None
    assert sender.outcome.fast is fast
    if scenario == "l061_ota_fast_skip":
        # The recorded server waited 4.5 s before resending, so the device repeated its ChunkMissed and
        # the resend came once; ours resends at once, and again for the repeat.
        assert _ota_only(ours)[:7] == _ota_only(recorded)[:7]
        assert all(p[10:14] == "b163" for p in _ota_only(ours)[7:])
        assert sender.outcome.result == {"r": "ok", "u": {"s": 0, "l": "m", "vc": 0, "vv": 0, "d": []}}
        assert any(isinstance(e, ConnectionClosed) for e in events)
        return
    # Our server also ACKs the device's NON events (§13.1 #7), which the recorded server did not.
    assert _ota_only(ours) == _ota_only(recorded)
    assert isinstance(events[-1], ConnectionClosed)
    if scenario.startswith("n310"):
        assert sender.outcome.result == {"r": 0}
    else:
        # 0.6.1: a bare ACK 2.04; the result comes as an event, the reset 1 s later (D2).
        assert sender.outcome.result == {"r": "ok", "u": {"s": 0, "l": "m", "vc": 0, "vv": 0, "d": []}}


def test_recorded_chunk_frames_have_the_section_a4_sizes(load_session: Callable[[str], Session]) -> None:
    sizes: dict[str, set[tuple[int, int]]] = {}
    for scenario in ("n310_ota_nonfast", "n310_ota_fast_skip"):
        for frame in load_session(f"ota/{scenario}")["frames"]:
            plaintext = frame.get("plaintext", "")
            if frame["dir"] == "s2d" and plaintext[10:14] == "b163":
                sizes.setdefault(scenario, set()).add((len(plaintext) // 2, len(frame["hex"]) // 2))
    assert sizes["n310_ota_nonfast"] == {(525, 530), (453, 466)}
    assert sizes["n310_ota_fast_skip"] == {(528, 546), (456, 466)}
    assert json.loads(b'{"r":0}') == {"r": 0}
