"""Real Device OS 4.0.2 (the gcc virtual device posing as an Argon) and 3.1.0 (gcc) updated over UDP,
replayed without the firmware.

tests/vectors/udp-ota-*/ota.session.jsonl were recorded with `scripts/record-udp-session` while
`cyan devices flash` sent a 2068-byte user part for the device's platform to the real firmware: UpdateBegin,
five confirmable chunks, UpdateDone answered ``{"r":0}``, the device's reset, its new handshake and Describe
(on 4.0.2 with the image's hash). Replayed with the recorded time and randomness, the server's cores (and the
`OtaSender` a `DatagramLink` runs) must send exactly the datagrams the device accepted, and the update must
complete.
"""

from __future__ import annotations

import functools
import json
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from udp_replay import Recording, Replay, load_recording, replay

from cyan.cloud.models import FirmwareRecord
from cyan.cloud.ota import firmware_record, judge
from cyan.dtls import is_client_hello
from cyan.protocol import (
    ChunkAcknowledged,
    DescribeReceived,
    FunctionReturned,
    HelloReceived,
    ModuleFunction,
    UpdateDoneAcknowledged,
    UpdateReady,
    parse_module,
)
from cyan.protocol.coap import Code, MessageType, Option, decode

ROOT = Path(__file__).resolve().parents[1] / "vectors"
#: Per version: the directory and the platform its Hello says (4.0.2 runs with --platform_id 12, an Argon;
#: 3.1.0 has no such option and says gcc, 3).
VERSIONS = {"4.0.2": (ROOT / "udp-ota-4.0.2", 12), "3.1.0": (ROOT / "udp-ota-3.1.0", 3)}

Ota = tuple[Recording, Replay, str]


@functools.cache
def _load(version: str) -> Ota:
    recording = load_recording(VERSIONS[version][0], "ota")
    return recording, replay(recording), version


@pytest.fixture(params=sorted(VERSIONS))
def ota(request: pytest.FixtureRequest) -> Ota:
    return _load(str(request.param))


def _image(recording: Recording) -> bytes:
    (entry,) = [e for e in recording.entries if e["op"] == "update"]
    return bytes.fromhex(entry["image"])


def test_the_server_reproduces_every_datagram_of_the_update(ota: Ota) -> None:
    recording, replayed, _version = ota
    assert replayed.sent == recording.sent()


def test_the_image_is_a_user_part_for_the_platform_the_device_says_it_is(ota: Ota) -> None:
    recording, replayed, version = ota
    platform = VERSIONS[version][1]
    info = parse_module(_image(recording))
    assert info.function is ModuleFunction.USER_PART
    assert info.platform_id == platform
    hello = next(e.hello for e in replayed.events if isinstance(e, HelloReceived))
    assert hello.platform_id == platform
    assert hello.ota_chunk_size == 512
    assert hello.max_binary_size is not None
    assert info.size <= hello.max_binary_size


def test_the_update_completes_with_the_device_result(ota: Ota) -> None:
    recording, replayed, _version = ota
    image = _image(recording)
    (outcome,) = replayed.updates
    assert outcome.complete
    assert not outcome.fast  # every chunk confirmable over UDP: the non-fast mode
    assert outcome.result == {"r": 0}
    assert outcome.bytes_delivered == len(image)
    assert outcome.chunks_resent == 0
    ready = [e for e in replayed.events if isinstance(e, UpdateReady)]
    assert [r.fast for r in ready] == [False]
    chunks = [e for e in replayed.events if isinstance(e, ChunkAcknowledged)]
    assert [c.ok for c in chunks] == [True] * 5  # 2068 bytes: four of 512, one of 20
    (done,) = [e for e in replayed.events if isinstance(e, UpdateDoneAcknowledged)]
    assert done.complete


def test_each_chunk_is_confirmable_and_answered_with_an_ack_and_a_confirmable_chunk_received(ota: Ota) -> None:
    recording, replayed, _version = ota
    image = _image(recording)
    out = [decode(m) for m in replayed.messages_out]
    sent_chunks = [m for m in out if m.type is MessageType.CON and m.uri_path == (b"c",)]
    assert b"".join(m.payload or b"" for m in sent_chunks) == image
    begin = next(m for m in out if m.code == Code.POST and m.uri_path == (b"u",))
    assert begin.type is MessageType.CON
    # flags 0 (not fast), chunk size 512, file size, store 0 (firmware), address 0 (protocol.md §7.1)
    assert (begin.payload or b"").hex() == "00" + "0200" + f"{len(image):08x}" + "00" + "00000000"
    received = [decode(m) for m in replayed.messages_in]
    for chunk in sent_chunks:
        answers = [m for m in received if m.message_id == chunk.message_id and m.type is MessageType.ACK]
        assert answers
        assert answers[0].code == Code.EMPTY
        # ChunkReceived: on UDP confirmable (DO `Messages::chunk_received`, `channel.is_unreliable()`)
        replies = [m for m in received if m.token == chunk.token and m.code == Code.CHANGED]
        assert [r.type for r in replies] == [MessageType.CON]
        acked = [m for m in out if m.type is MessageType.ACK and m.message_id == replies[0].message_id]
        assert acked  # the server acknowledged it
    done = next(m for m in out if m.code == Code.PUT and m.uri_path == (b"u",))
    (answer,) = [m for m in received if m.type is MessageType.ACK and m.message_id == done.message_id]
    assert answer.code == Code.CHANGED
    assert json.loads(answer.payload or b"") == {"r": 0}


def _record(image: bytes) -> FirmwareRecord:
    return firmware_record(parse_module(image), sha256="0" * 64, filename="app.bin", uploaded_at=datetime.now(UTC))


def test_the_device_resets_and_handshakes_again(ota: Ota) -> None:
    recording, replayed, version = ota
    # The gcc device's reset: 4.0.2 executes itself again, 3.1.0 exits and was started again (as the
    # TCP recordings' runner did). Either way the DTLS session is gone, so a full handshake.
    assert replayed.handshakes == 2
    assert replayed.resumptions == 0
    update_at = next(i for i, e in enumerate(recording.entries) if e["op"] == "update")
    later = [bytes.fromhex(e["hex"]) for e in recording.entries[update_at:] if e["op"] == "in"]
    assert any(is_client_hello(d) for d in later)
    # The Hello after the update carries no "OTA succeeded" flag on this firmware (as on TCP, OTA README).
    hellos = [e.hello for e in replayed.events if isinstance(e, HelloReceived)]
    assert len(hellos) == 2
    assert not hellos[1].flags & 0x01
    # And the updated device answers a call: setArg("updated").
    returns = [e.return_value for e in replayed.events if isinstance(e, FunctionReturned)]
    assert returns == [7]
    log = (VERSIONS[version][0] / "ota.device.log").read_text()
    assert "Received UpdateBegin" in log
    assert "File size: 2068; chunk size: 512; chunk count: 5" in log
    assert "Update done in" in log


def test_4_0_2_reports_the_new_image_s_hash_and_the_update_is_verified_by_it() -> None:
    recording, replayed, version = _load("4.0.2")
    image = _image(recording)
    info = parse_module(image)
    describes = [e.document for e in replayed.events if isinstance(e, DescribeReceived) and e.flags == 1]
    assert len(describes) == 2

    def user_parts(document: dict[str, object] | None) -> list[tuple[str, int]]:
        modules = (document or {}).get("m")
        assert isinstance(modules, list)
        return [(str(m["u"]).lower(), int(m["v"])) for m in modules if m.get("f") == "u"]

    before, after = (user_parts(d) for d in describes)
    assert before != [(info.module_sha256, info.module_version)]
    assert after == [(info.module_sha256, info.module_version)]
    hello = [e.hello for e in replayed.events if isinstance(e, HelloReceived)][-1]
    verdict = judge(_record(image), describes[1], hello)
    assert (verdict.runs_it, verdict.how) == (True, "hash")
    earlier = judge(_record(image), describes[0], hello)
    assert (earlier.runs_it, earlier.how) == (False, "hash")
    log = (VERSIONS[version][0] / "ota.device.log").read_text()
    assert 'Applying module update: function: "u", index: 1, version: 7' in log
    assert info.module_sha256 in log.lower()


def test_3_1_0_lists_no_modules_so_the_update_is_unverified() -> None:
    recording, replayed, _version = _load("3.1.0")
    describes = [e.document for e in replayed.events if isinstance(e, DescribeReceived) and e.flags == 1]
    assert describes == [{"p": 3, "m": []}] * 2
    hello = [e.hello for e in replayed.events if isinstance(e, HelloReceived)][-1]
    verdict = judge(_record(_image(recording)), describes[1], hello)
    assert (verdict.runs_it, verdict.how) == (None, "unverified")


def test_the_uri_query_of_a_chunk_is_its_crc(ota: Ota) -> None:
    _, replayed, _version = ota
    out = [decode(m) for m in replayed.messages_out]
    for chunk in (m for m in out if m.type is MessageType.CON and m.uri_path == (b"c",)):
        (crc,) = [v for o, v in chunk.options if o == Option.URI_QUERY]
        assert int.from_bytes(crc, "big") == zlib.crc32(chunk.payload or b"")
