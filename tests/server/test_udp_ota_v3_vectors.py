"""Real Device OS 4.0.2 and 3.1.0 updated by OTA protocol v3 over UDP, replayed without the firmware.

tests/vectors/udp-ota-v3-4.0.2 holds two recordings (`scripts/record-udp-session`, `cyan devices flash`) of the
gcc virtual device posing as an Argon, built with the OTA v3 code Gen 3 devices run (its README says how):
`clean`, a 30,068-byte user part on a clean loopback; `loss`, a 120,068-byte one with 5 % of the datagrams lost
and 5 % doubled each way at the server's socket. udp-ota-v3-3.1.0 holds `clean` with Device OS 3.1.0.
Replayed with the recorded time and randomness, the server's own `DatagramServer` and `OtaV3Sender` must send
exactly the datagrams the device accepted; 4.0.2 applied each image, and its next Describe proves it.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from udp_replay import Recording, Replay, load_recording, replay

from cyan.cloud.ota import firmware_record, judge
from cyan.protocol import DescribeReceived, HelloReceived, ModuleFunction, parse_module
from cyan.protocol import messages as m
from cyan.protocol.coap import Code, Message, MessageType, decode

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
ROOT = VECTORS / "udp-ota-v3-4.0.2"
#: Per recording: its directory and the platform its Hello says (3.1.0 has no --platform_id and says gcc).
RUNS = {
    "clean": (ROOT, 12),
    "loss": (ROOT, 12),
    "3.1.0": (VECTORS / "udp-ota-v3-3.1.0", 3),
}

Run = tuple[Recording, Replay, str]


@functools.cache
def _load(name: str) -> Run:
    directory, _ = RUNS[name]
    recording = load_recording(directory, "clean" if name == "3.1.0" else name)
    return recording, replay(recording), name


@pytest.fixture(params=sorted(RUNS))
def run(request: pytest.FixtureRequest) -> Run:
    return _load(str(request.param))


def _log(name: str) -> str:
    directory, _ = RUNS[name]
    return (directory / f"{'clean' if name == '3.1.0' else name}.device.log").read_text()


def _image(recording: Recording) -> bytes:
    (entry,) = [e for e in recording.entries if e["op"] == "update"]
    return bytes.fromhex(entry["image"])


def _out(replayed: Replay) -> list[Message]:
    return [decode(raw) for raw in replayed.messages_out]


def test_the_server_reproduces_every_datagram(run: Run) -> None:
    recording, replayed, _ = run
    assert replayed.sent == recording.sent()


def test_the_hello_says_ota_v3_and_the_update_starts_with_update_start(run: Run) -> None:
    recording, replayed, _ = run
    image = _image(recording)
    hello = next(e.hello for e in replayed.events if isinstance(e, HelloReceived))
    assert hello.flags & m.HelloFlag.OTA_PROTOCOL_V3
    assert (hello.platform_id, hello.max_message_size) == (RUNS[run[2]][1], 960)
    out = _out(replayed)
    assert not [x for x in out if x.uri_path in ((b"u",), (b"c",))]  # nothing of the legacy update
    (start,) = {x.message_id: x for x in out if x.uri_path == (b"S",)}.values()
    assert (start.type, start.code) == (MessageType.CON, Code.POST)
    assert m.option_uint(start, m.OtaOption.FILE_SIZE) == len(image)
    assert start.option_values(m.OtaOption.FILE_SHA256) == [hashlib.sha256(image).digest()]
    # 960-byte records less 14 bytes of CoAP, down to a multiple of 4; the firmware logged the same.
    assert m.option_uint(start, m.OtaOption.CHUNK_SIZE) == 944
    log = _log(run[2])
    assert f"File size: {len(image)}" in log
    assert "Chunk size: 944" in log


def test_every_chunk_carries_its_slice_of_the_image_and_the_device_holds_them_all(run: Run) -> None:
    recording, replayed, name = run
    image = _image(recording)
    chunks: dict[int, bytes] = {}
    for message in _out(replayed):
        if message.uri_path == (b"C",):
            assert (message.type, message.token) == (MessageType.NON, b"")
            index = m.option_uint(message, m.OtaOption.CHUNK_INDEX)
            assert index is not None
            assert chunks.setdefault(index, message.payload or b"") == message.payload
    assert sorted(chunks) == list(range(1, len(chunks) + 1))
    assert b"".join(chunks[i] for i in sorted(chunks)) == image
    (outcome,) = replayed.updates
    assert outcome.complete
    assert outcome.reason is None
    assert outcome.bytes_delivered == len(image)
    assert outcome.result is not None
    assert outcome.result["recv_chunks"] == len(chunks)
    if name != "loss":
        assert outcome.chunks_resent == 0
        assert outcome.result["ooo_chunks"] == 0
    else:
        # The chunks the lossy wire dropped were sent again, and only those: the device received each once.
        assert outcome.chunks_resent > 0
        assert outcome.result["dup_chunks"] == 0


def test_the_lossy_wire_lost_and_doubled_datagrams_both_ways() -> None:
    faults = (ROOT / "loss.faults.txt").read_text()
    assert "'lost in': 8" in faults
    assert "'lost out': 8" in faults
    assert "'doubled in': 7" in faults


@pytest.mark.parametrize("name", ["clean", "loss"])
def test_4_0_2_applied_the_image_and_its_next_describe_proves_it(name: str) -> None:
    recording, replayed, _ = _load(name)
    image = _image(recording)
    info = parse_module(image)
    assert (info.function, info.platform_id) == (ModuleFunction.USER_PART, 12)
    assert replayed.handshakes == 2  # the reset: a new process, a full handshake
    describes = [e.document for e in replayed.events if isinstance(e, DescribeReceived) and e.flags == 1]
    assert len(describes) == 2
    hello = [e.hello for e in replayed.events if isinstance(e, HelloReceived)][-1]
    record = firmware_record(info, sha256="0" * 64, filename="app.bin", uploaded_at=datetime.now(UTC))
    assert judge(record, describes[0], hello).runs_it is False
    verdict = judge(record, describes[1], hello)
    assert (verdict.runs_it, verdict.how) == (True, "hash")
    log = _log(name)
    assert "Received UpdateFinish request" in log
    assert 'Applying module update: function: "u", index: 1, version: 7' in log


def test_3_1_0_lists_no_modules_so_its_update_is_unverified() -> None:
    recording, replayed, _ = _load("3.1.0")
    assert replayed.handshakes == 2  # exit(0), started again by the runner: a full handshake
    describes = [e.document for e in replayed.events if isinstance(e, DescribeReceived) and e.flags == 1]
    assert describes == [{"p": 3, "m": []}] * 2
    image = _image(recording)
    record = firmware_record(parse_module(image), sha256="0" * 64, filename="app.bin", uploaded_at=datetime.now(UTC))
    hello = [e.hello for e in replayed.events if isinstance(e, HelloReceived)][-1]
    assert judge(record, describes[1], hello).how == "unverified"
    log = _log("3.1.0")
    assert "Received UpdateFinish request" in log
    assert "restarted by the runner after its exit(0)" in log
