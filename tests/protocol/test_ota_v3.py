"""OTA protocol v3 (Gen 3 and P2 from Device OS 3.0) between `OtaV3Sender` and the simulator's Argon, over the
in-memory UDP wire with a fake clock: the image arrives whole and is applied whatever the wire loses,
duplicates or reorders; the device's window is never overrun; every refusal is an outcome with its reason."""

from __future__ import annotations

import hashlib

import pytest
from datagram_support import Pair

from cyan.protocol import DeviceReset, OtaSender, OtaV3Config, OtaV3Sender, OtaV3State
from cyan.protocol import messages as m
from cyan.protocol.coap import Code, Message, MessageType, decode
from cyan.protocol.device import DeviceConfig, UpdateCheck
from cyan.protocol.events import UpdateChunksAcknowledged, UpdateRequestFailed, UpdateStartAccepted
from cyan.protocol.ota_v3 import v3_chunk_size


def _image(size: int, seed: int = 0) -> bytes:
    out = b""
    while len(out) < size:
        out += hashlib.sha256(b"%d %d" % (seed, len(out))).digest()
    return out[:size]


def _connected(**kwargs: object) -> Pair:
    pair = Pair(**kwargs)  # type: ignore[arg-type]
    pair.run_until(30.0)
    assert pair.server.hello is not None
    return pair


def _chunks_sent(pair: Pair) -> list[tuple[int, int]]:
    """(message id, chunk index) of every UpdateChunk the server sent, retransmissions included."""
    out = []
    for raw in pair.carried_to_device:
        message = decode(raw)
        if message.code == Code.POST and message.uri_path == (b"C",):
            index = m.option_uint(message, m.OtaOption.CHUNK_INDEX)
            assert index is not None
            out.append((message.message_id, index))
    return out


def test_the_hello_says_v3_and_the_update_is_applied_on_a_clean_wire() -> None:
    pair = _connected(seed=1)
    assert pair.server.hello is not None
    assert pair.server.hello.flags & m.HelloFlag.OTA_PROTOCOL_V3
    image = _image(100_000)
    sender = pair.sender = OtaV3Sender(pair.server, image, pair.now)
    # The Argon's Hello says 1152-byte messages: 1024-byte chunks (at most 1136 would fit).
    assert sender.chunk_size == 1024
    pair.run_until(pair.now + 60.0)
    assert sender.state is OtaV3State.COMPLETE, sender.outcome
    assert sender.outcome is not None
    assert sender.outcome.complete
    assert sender.bytes_delivered == len(image)
    (reset,) = [e for e in pair.device_events if isinstance(e, DeviceReset)]
    assert (reset.reason, reset.image) == ("update", image)
    # The device's statistics come back in the answer to UpdateFinish.
    assert sender.outcome.result is not None
    assert sender.outcome.result["recv_chunks"] == 98
    assert sender.outcome.result["dup_chunks"] == 0
    assert sender.outcome.chunks_resent == 0
    # Every chunk sent once, in order, and the transfer took well under a second of the fake clock's time
    # apart from the device's 200 ms acknowledgement delay.
    assert [index for _, index in _chunks_sent(pair)] == list(range(1, 99))
    assert sender.outcome.elapsed < 5.0, sender.outcome.elapsed


@pytest.mark.parametrize("seed", range(12))
def test_loss_duplication_and_reordering_still_deliver_the_whole_image_once(seed: int) -> None:
    pair = _connected(seed=seed, loss=0.05, duplicate=0.05, reorder=0.1)
    image = _image(60_000 + seed * 777, seed)
    sender = pair.sender = OtaV3Sender(pair.server, image, pair.now)
    pair.run_until(pair.now + 250.0)
    assert sender.outcome is not None
    assert sender.outcome.complete, sender.outcome
    resets = [e for e in pair.device_events if isinstance(e, DeviceReset)]
    assert [(r.reason, r.image) for r in resets] == [("update", image)]
    # Lost chunks were resent, and nothing else: at most a few resends for each one lost.
    sent = _chunks_sent(pair)
    assert len(sent) <= len(sender._chunks) * 1.5


@pytest.mark.parametrize("seed", range(4))
def test_the_device_window_is_never_overrun(seed: int) -> None:
    """The device drops a chunk beyond its window (128 KiB past what it holds in order): whatever the wire
    does, no chunk is ever sent past the window the device last acknowledged."""
    pair = _connected(seed=seed, loss=0.1, reorder=0.1)
    image = _image(400_000, seed)
    sender = pair.sender = OtaV3Sender(pair.server, image, pair.now, config=OtaV3Config(max_window=200))
    highest_in_order = 0
    window = 131072 // sender.chunk_size
    original = sender.handle_event

    def watch(event: object, now: float) -> bool:
        nonlocal highest_in_order
        if isinstance(event, UpdateChunksAcknowledged):
            highest_in_order = max(highest_in_order, event.index)
        return original(event, now)  # type: ignore[arg-type]

    sender.handle_event = watch  # type: ignore[method-assign]
    checked = 0
    while not sender.finished and pair.now < 400.0:
        before = len(pair.carried_to_device)
        pair.run_until(pair.now + 0.05)
        for raw in pair.carried_to_device[before:]:
            message = decode(raw)
            if message.uri_path == (b"C",):
                index = m.option_uint(message, m.OtaOption.CHUNK_INDEX)
                assert index is not None
                assert index <= highest_in_order + window
                checked += 1
    assert sender.outcome is not None
    assert sender.outcome.complete, sender.outcome
    assert checked >= len(sender._chunks)


def test_a_device_with_updates_disabled_refuses_the_start() -> None:
    pair = _connected(seed=2, device_config=DeviceConfig(updates_enabled=False, ping_interval=25.0))
    sender = pair.sender = OtaV3Sender(pair.server, _image(5000), pair.now)
    pair.run_until(pair.now + 30.0)
    assert sender.outcome is not None
    assert (sender.outcome.complete, sender.outcome.reason) == (False, "refused")
    assert "5.03" in sender.outcome.detail
    assert "disabled" in sender.outcome.detail
    assert "system error -1380" in sender.outcome.detail
    assert not _chunks_sent(pair)


def test_an_image_too_large_for_the_device_is_refused_at_the_start() -> None:
    pair = _connected(seed=3)
    sender = pair.sender = OtaV3Sender(pair.server, _image(1048576 + 4), pair.now)
    pair.run_until(pair.now + 30.0)
    assert sender.outcome is not None
    assert sender.outcome.reason == "refused"
    assert "system error -1351" in sender.outcome.detail


def test_an_image_the_device_finds_invalid_is_rejected_and_not_applied() -> None:
    pair = _connected(seed=4, check_update=UpdateCheck(error=-1320))
    sender = pair.sender = OtaV3Sender(pair.server, _image(20_000), pair.now)
    pair.run_until(pair.now + 60.0)
    assert sender.outcome is not None
    assert (sender.outcome.complete, sender.outcome.reason) == (False, "rejected")
    assert "system error -1320" in sender.outcome.detail
    assert not [e for e in pair.device_events if isinstance(e, DeviceReset)]
    # The device dropped the update when its error answer was acknowledged, and serves on.
    assert not pair.device.closed
    assert pair.device._v3 is None


def test_a_device_that_stops_answering_is_given_up_on_and_told_to_cancel() -> None:
    pair = _connected(seed=5)
    config = OtaV3Config(stall_timeout=20.0)
    sender = pair.sender = OtaV3Sender(pair.server, _image(50_000), pair.now, config=config)
    started = sender._on_started

    def then_quiet(window: int, offset: int, now: float) -> None:
        started(window, offset, now)
        pair.loss = 1.0  # the wire goes quiet as the first chunks leave (it has no latency of its own)

    sender._on_started = then_quiet  # type: ignore[method-assign]
    pair.run_until(pair.now + 30.0)
    assert sender.outcome is not None
    assert sender.outcome.reason == "no_answer"
    assert "acknowledged no chunk for 20 s" in sender.outcome.detail
    finishes = [decode(raw) for raw in pair.carried_to_device if decode(raw).uri_path == (b"F",)]
    assert finishes
    assert finishes[-1].option_values(m.OtaOption.CANCEL_UPDATE) == [b""]
    # Chunks were resent on a backed-off timer, not in a flood.
    assert len(_chunks_sent(pair)) < 200


def test_a_chunk_the_device_resets_ends_the_update() -> None:
    """A device that restarted mid-transfer (or dropped it on its own 300 s timer) has no update: it answers
    a chunk with RST, and the sender stops there instead of sending the rest."""
    pair = _connected(seed=6)
    sender = pair.sender = OtaV3Sender(pair.server, _image(200_000), pair.now)
    started = sender._on_started

    def then_forget(window: int, offset: int, now: float) -> None:
        pair.device._v3 = None  # the device forgot the update before the first chunk
        started(window, offset, now)

    sender._on_started = then_forget  # type: ignore[method-assign]
    pair.run_until(pair.now + 10.0)
    assert sender.outcome is not None
    assert sender.outcome.reason == "disconnected"
    assert "reset a chunk" in sender.outcome.detail


def test_the_legacy_update_is_dropped_by_a_v3_device() -> None:
    """Why v3 is needed: the firmware compiles the legacy handlers out, so UpdateBegin goes unanswered."""
    pair = _connected(seed=7)
    sender = pair.sender = OtaSender(pair.server, _image(5000), pair.now, fast=False)
    pair.run_until(pair.now + 120.0)
    assert sender.outcome is not None
    assert sender.outcome.reason == "no_answer"


def test_the_messages_are_laid_out_as_the_firmware_reads_them() -> None:
    """The firmware finds the message type from the byte after the first option header (DO `messages.cpp`):
    the Uri-Path must come first, in one byte; the options are the firmware's numbers."""
    start = m.update_start(0x1234, 7, file_size=70000, file_sha256=bytes(32), chunk_size=1024)
    raw = start.encode()
    assert raw[:5] == bytes((0x41, Code.POST, 0x12, 0x34, 7))
    assert raw[5:7] == b"\xb1S"
    assert m.option_uint(start, m.OtaOption.FILE_SIZE) == 70000
    assert m.option_uint(start, m.OtaOption.CHUNK_SIZE) == 1024
    chunk = m.update_chunk(9, 300, b"x" * 1024)
    raw = chunk.encode()
    assert (raw[0] >> 4 & 3, raw[0] & 0x0F, raw[4:6]) == (MessageType.NON, 0, b"\xb1C")
    # 14 bytes of CoAP around a chunk at most (DO `OTA_CHUNK_COAP_OVERHEAD`).
    assert len(raw) - 1024 <= m.OTA_V3_CHUNK_OVERHEAD
    assert decode(m.update_finish(1, 2, cancel=True).encode()).option_values(m.OtaOption.CANCEL_UPDATE) == [b""]
    with pytest.raises(ValueError, match="multiple of 4"):
        m.update_start(1, 1, file_size=10, file_sha256=bytes(32), chunk_size=514)
    with pytest.raises(ValueError, match="start at 1"):
        m.update_chunk(1, 0, b"x")


def test_an_update_start_that_is_never_answered_ends_without_an_answer() -> None:
    pair = _connected(seed=8)
    pair.loss = 1.0
    sender = pair.sender = OtaV3Sender(pair.server, _image(5000), pair.now)
    pair.run_until(pair.now + 120.0)
    assert sender.outcome is not None
    assert (sender.outcome.reason, sender.outcome.detail) == ("no_answer", "no answer to UpdateStart")


def test_the_session_ending_mid_transfer_ends_the_update() -> None:
    pair = _connected(seed=9)
    sender = pair.sender = OtaV3Sender(pair.server, _image(5000), pair.now, config=OtaV3Config(initial_window=1))
    pair.server.close()
    sender.handle_timer(pair.now)
    assert sender.outcome is not None
    assert sender.outcome.reason == "disconnected"
    assert sender.outcome.detail == "the connection ended before the device was ready"
    assert not sender.handle_event(UpdateChunksAcknowledged(1, b""), pair.now)  # finished: nothing is its own


def _started(pair: Pair, image: bytes, *, offset: int = 0, window: int = 138) -> OtaV3Sender:
    """A sender whose UpdateStart the test answers itself."""
    pair.loss = 1.0  # nothing reaches the device: the test plays its part
    sender = OtaV3Sender(pair.server, image, pair.now)
    assert sender._request is not None
    sender.handle_event(UpdateStartAccepted(sender._request, window, offset), pair.now)
    return sender


def test_a_device_that_holds_the_whole_file_already_is_sent_update_finish_at_once() -> None:
    pair = _connected(seed=10)
    image = _image(3000)
    sender = _started(pair, image, offset=len(image))
    assert sender.state is OtaV3State.FINISHING
    assert sender.chunk_total == 0
    assert sender.bytes_delivered == len(image)


def test_a_resumed_transfer_starts_at_the_offset_the_device_holds() -> None:
    pair = _connected(seed=11)
    image = _image(10_000)
    sender = _started(pair, image, offset=4096)
    assert sender.chunk_total == 6  # 5,904 bytes left in chunks of 1,024
    assert sender._chunks[0] == image[4096 : 4096 + 1024]
    assert sender.in_flight == 4  # the initial window


@pytest.mark.parametrize(("window", "offset"), [(0, 0), (10, 10_001)], ids=["no window", "offset past the end"])
def test_an_impossible_answer_to_update_start_is_a_refusal(window: int, offset: int) -> None:
    pair = _connected(seed=12)
    sender = _started(pair, _image(10_000), offset=offset, window=window)
    assert sender.outcome is not None
    assert sender.outcome.reason == "refused"


def test_an_acknowledgement_of_more_chunks_than_there_are_ends_the_update() -> None:
    pair = _connected(seed=13)
    sender = _started(pair, _image(10_000))
    sender.handle_event(UpdateChunksAcknowledged(11, b""), pair.now)
    assert sender.outcome is not None
    assert (sender.outcome.reason, sender.outcome.detail) == ("rejected", "the device acknowledged 11 chunks of 10")


@pytest.mark.parametrize(
    ("error", "detail", "reason"),
    [
        (-240, "Incomplete file transfer", "incomplete"),
        (-1320, "Module validation failed", "rejected"),
        (-1360, "Invalid module platform", "rejected"),
        (-219, "Flash IO error", "device_error"),
    ],
)
def test_how_update_finish_fails(error: int, detail: str, reason: str) -> None:
    """Device OS answers them all 5.03 (`coapCodeForSystemError`): the system error decides."""
    pair = _connected(seed=14)
    image = _image(2000)
    sender = _started(pair, image)
    sender.handle_event(UpdateChunksAcknowledged(2, b""), pair.now)
    assert sender.state is OtaV3State.FINISHING
    assert sender._request is not None
    sender.handle_event(
        UpdateRequestFailed(sender._request, "finish", Code.SERVICE_UNAVAILABLE, error, detail), pair.now
    )
    assert sender.outcome is not None
    assert sender.outcome.reason == reason
    assert f"5.03: {detail} (system error {error})" in sender.outcome.detail


def test_the_whole_update_has_a_time_limit() -> None:
    pair = _connected(seed=15)
    config = OtaV3Config(transfer_timeout=100.0)
    sender = pair.sender = OtaV3Sender(pair.server, _image(5000), pair.now, config=config)
    # While UpdateStart waits, its timer is the connection's (the request's); the sender's is the whole limit.
    assert sender.get_timer() == pair.now + 100.0
    sender.handle_timer(pair.now + 100.0)
    assert sender.outcome is not None
    assert sender.outcome.reason == "timeout"


@pytest.mark.parametrize(
    "bad",
    [
        {"max_chunk_size": 510},
        {"max_chunk_size": 1026},
        {"initial_window": 0},
        {"initial_window": 65},
        {"min_rto": 0.0},
        {"initial_rto": 20.0},
        {"stall_timeout": 300.0},
    ],
)
def test_impossible_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        OtaV3Config(**bad)  # type: ignore[arg-type]


def test_the_chunk_size_follows_the_largest_message_the_device_takes() -> None:
    config = OtaV3Config()
    gen3 = m.Hello(0, 0, m.HelloFlag.OTA_PROTOCOL_V3, 12, 4006, 1152, 1048576, 512)
    assert v3_chunk_size(gen3, config) == 1024
    assert v3_chunk_size(gen3, OtaV3Config(max_chunk_size=2048)) == 1136
    assert v3_chunk_size(gen3, config, transport_limit=767) == 752
    assert v3_chunk_size(None, config) == 512  # unsaid: the smallest every device takes


def test_the_answer_to_an_earlier_cancel_does_not_end_the_next_update() -> None:
    """A transfer given up on is cancelled on the device. When the next update starts before that cancel was
    answered, the answer belongs to the old update: the new one keeps its state on the server, so a chunk the
    device resets is still recognised as the device having no update (not left to a 60 s stall)."""
    pair = _connected(seed=16)
    server = pair.server
    server.start_update_v3(file_size=5000, file_sha256=bytes(32), chunk_size=1024, now=pair.now)
    cancel = server.finish_update_v3(pair.now, cancel=True)
    server.end_update_v3()
    (pending,) = [r for r in server._requests.values() if r.request_id == cancel]
    server.start_update_v3(file_size=5000, file_sha256=bytes(32), chunk_size=1024, now=pair.now)
    # The device had no update any more: Invalid state, 5.03, piggybacked on its ACK of the cancel.
    answer = Message(
        MessageType.ACK, Code.SERVICE_UNAVAILABLE, pending.message_id, bytes((pending.token,)), payload=b'{"code":-210}'
    )
    server.receive_message(answer.encode(), pair.now)
    server.receive_message(Message(MessageType.RST, Code.EMPTY, 0x7777).encode(), pair.now)
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    # The new UpdateStart gave the cancel up: its late answer matches nothing, and changes nothing.
    assert [type(e).__name__ for e in events] == ["MessageIgnored", "UpdateChunkRefused"]


def test_a_new_update_gives_up_the_unanswered_cancel_of_the_last_one() -> None:
    """Sent again after the new UpdateStart, the old cancel would cancel the new update on the device."""
    pair = _connected(seed=17)
    server = pair.server
    pair.loss = 1.0
    server.start_update_v3(file_size=5000, file_sha256=bytes(32), chunk_size=1024, now=pair.now)
    cancel = server.finish_update_v3(pair.now, cancel=True)
    server.end_update_v3()
    (pending,) = [r for r in server._requests.values() if r.request_id == cancel]
    server.messages_to_send(pair.now)
    assert pending.message_id in server._unacked
    server.start_update_v3(file_size=5000, file_sha256=bytes(32), chunk_size=1024, now=pair.now)
    assert cancel not in [r.request_id for r in server._requests.values()]
    assert pending.message_id not in server._unacked
    before = len(pair.carried_to_device)
    pair.run_until(pair.now + 60.0)
    assert not [m for m in pair.carried_to_device[before:] if decode(m).message_id == pending.message_id]
