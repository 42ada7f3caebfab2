"""The device role's OTA, message by message: what each firmware answers, and its timers (§7, OTA README)."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest
from ota_support import NOW, connect, image_of

from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    ConnectionClosed,
    DeviceConfig,
    DeviceReset,
    Firmware,
    Reason,
    RemoteProtocolError,
    ServerConnection,
    UpdateFinishedByDevice,
)
from cyan.protocol import messages as m
from cyan.protocol.coap import Code, Message, MessageType
from cyan.protocol.device import LEGACY_MISSED_REPEAT
from cyan.protocol.events import ChunkStored, UpdateStarted
from cyan.testing import ConnectionPair, drain

LEGACY_0_7 = Firmware(version=(0, 7, 0))


class _Spy:
    """Records the device's messages as the server decodes them."""

    def __init__(self, pair: ConnectionPair, monkeypatch: pytest.MonkeyPatch) -> None:
        self.messages: list[Message] = []
        original = ServerConnection._dispatch
        server = pair.server

        def dispatch(connection: ServerConnection, message: Message, now: float) -> None:
            if connection is server:
                self.messages.append(message)
            original(connection, message, now)

        # The connection has slots (no instance attributes to patch): spy on its class for this test.
        monkeypatch.setattr(ServerConnection, "_dispatch", dispatch)

    def take(self) -> list[Message]:
        taken, self.messages = self.messages, []
        return taken


def _send(pair: ConnectionPair, message: Message, now: float = NOW) -> None:
    pair.server._send(message)
    pair.pump(now)


def _begin(pair: ConnectionPair, *, fast: bool, size: int, chunk_size: int = 512) -> None:
    _send(pair, m.update_begin(0x100, 0x21, fast=fast, chunk_size=chunk_size, file_size=size))


def _chunk(data: bytes, index: int | None = None, *, mid: int = 0x200, token: int = 0x22) -> Message:
    return m.chunk(mid, token, crc=zlib.crc32(data), data=data, index=index)


def test_update_begin_without_its_payload_takes_the_device_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the 12-byte payload at offset 8 the device uses chunk 512 and its whole OTA area (§7.1)."""
    pair = connect(Firmware(version=(3, 1, 0), max_binary_size=4096))
    spy = _Spy(pair, monkeypatch)
    _send(pair, Message(MessageType.CON, Code.POST, 0x100, b"\x21", ((11, b"u"),)))
    assert pair.take_device_events() == [UpdateStarted(4096, 512, False)]
    ack, ready = spy.take()
    assert (ack.type, ack.code, ack.message_id) == (MessageType.ACK, Code.EMPTY, 0x100)
    assert (ready.type, ready.code, ready.token, ready.payload) == (MessageType.NON, Code.CHANGED, b"\x21", b"\x00")
    # SaveBegin (POST s) is taken as UpdateBegin (§6.3).
    _send(pair, Message(MessageType.CON, Code.POST, 0x101, b"\x22", ((11, b"s"),)))
    assert pair.take_device_events() == [UpdateStarted(4096, 512, False)]


@pytest.mark.parametrize(
    ("firmware", "code", "token"),
    [(DEVICE_OS_0_6_1, Code.BAD_REQUEST, b""), (DEVICE_OS_3_1_0, Code.SERVICE_UNAVAILABLE, b"\x21")],
)
def test_too_many_chunks_are_refused(
    firmware: Firmware, code: int, token: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = Firmware(version=firmware.version, max_binary_size=100_000)
    pair = connect(big)
    spy = _Spy(pair, monkeypatch)
    _begin(pair, fast=False, size=70_000, chunk_size=1)  # 70000 chunks: at least MAX_CHUNKS
    (refusal,) = spy.take()
    assert (refusal.type, refusal.code, refusal.token) == (MessageType.ACK, code, token)
    assert not pair.take_device_events()


def test_chunk_options_are_read_by_position(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CRC, then the index; anything after is skipped; an index makes the chunk a fast one (§7.1)."""
    pair = connect()
    spy = _Spy(pair, monkeypatch)
    _begin(pair, fast=True, size=1024)
    spy.take()
    pair.take_device_events()
    data = b"\x05" * 512
    third = Message(
        MessageType.CON,
        Code.POST,
        0x201,
        b"\x23",
        ((11, b"c"), (15, zlib.crc32(data).to_bytes(4, "big")), (15, b"\x00\x01"), (15, b"xyz")),
        payload=data,
    )
    _send(pair, third)
    assert pair.take_device_events() == [ChunkStored(1, 512)]
    assert spy.take() == []  # a fast chunk gets no answer on the new stack
    with pytest.raises(RemoteProtocolError) as caught:
        _send(pair, Message(MessageType.CON, Code.POST, 0x202, b"\x24", ((11, b"c"), (15, b"\x00\x00\x00\x00"))))
    assert caught.value.reason is Reason.MALFORMED_MESSAGE


def test_new_stack_ignores_duplicates_and_out_of_range_indexes() -> None:
    pair = connect()
    _begin(pair, fast=True, size=1000)
    data = b"\x07" * 512
    _send(pair, _chunk(data, 0))
    _send(pair, _chunk(data, 0, mid=0x201))
    _send(pair, _chunk(data, 0xFFFF, mid=0x202))
    assert pair.take_device_events()[1:] == [ChunkStored(0, 512)]
    # A chunk past the announced size is written (the device writes at index x chunk size) and dropped
    # from the image when it is applied.
    _send(pair, _chunk(data, 3, mid=0x203))
    _send(pair, _chunk(b"\x08" * 488, 1, mid=0x204))
    _send(pair, m.update_done(0x205, 0x30))
    events = pair.take_device_events()
    assert events[:2] == [ChunkStored(3, 512), ChunkStored(1, 488)]
    assert events[2] == DeviceReset("update", data + b"\x08" * 488)


def test_legacy_disconnects_on_an_index_out_of_range() -> None:
    pair = connect(DEVICE_OS_0_6_1)
    _begin(pair, fast=True, size=1000)
    with pytest.raises(RemoteProtocolError, match="out of range"):
        _send(pair, _chunk(b"\x01" * 16, 0xFFFF))


@pytest.mark.parametrize(("firmware", "answers"), [(DEVICE_OS_0_6_1, 1), (DEVICE_OS_3_1_0, 0)])
def test_a_chunk_outside_an_update(firmware: Firmware, answers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The legacy stack ACKs every chunk before looking; the new stack drops it unanswered."""
    pair = connect(firmware)
    spy = _Spy(pair, monkeypatch)
    _send(pair, _chunk(b"\x01" * 16))
    assert len(spy.take()) == answers
    _send(pair, m.update_done(0x300, 0x31))
    (ack,) = spy.take()
    assert (ack.type, ack.code, ack.token, ack.payload) == (MessageType.ACK, Code.CHANGED, b"\x31", None)


def test_legacy_repeats_chunk_missed_every_3_s(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = connect(DEVICE_OS_0_6_1)
    spy = _Spy(pair, monkeypatch)
    _begin(pair, fast=True, size=1024)
    _send(pair, _chunk(b"\x01" * 512, 0))
    _send(pair, m.update_done(0x300, 0x31))
    spy.take()
    device = pair.device
    assert device.get_timer() == NOW + LEGACY_MISSED_REPEAT
    device.handle_timer(NOW + 1)  # not yet
    device.handle_timer(NOW + LEGACY_MISSED_REPEAT)
    pair.pump(NOW + LEGACY_MISSED_REPEAT)
    (missed,) = spy.take()
    assert (missed.type, missed.code, missed.payload) == (MessageType.CON, Code.GET, b"\x00\x01")


@pytest.mark.parametrize("firmware", [DEVICE_OS_0_6_1, DEVICE_OS_3_1_0], ids=["0.6.1", "3.1.0"])
def test_the_device_resets_30_s_after_its_last_chunk(firmware: Firmware) -> None:
    """§7.2: no pings meanwhile, then RESET_REASON_UPDATE_TIMEOUT, without a Goodbye (README D6)."""
    pair = connect(firmware)
    _begin(pair, fast=False, size=2048)
    _send(pair, _chunk(b"\x02" * 512), NOW + 10)
    pair.take_device_events()
    device = pair.device
    assert device.get_timer() == NOW + 40
    device.handle_timer(NOW + 39)
    assert device.data_to_send() == b""  # no ping although nothing came for 29 s
    device.handle_timer(NOW + 40)
    assert pair.take_device_events() + drain(device) == [DeviceReset("update_timeout")]
    assert device.closed
    assert device.get_timer() is None


def test_without_an_update_timer_the_device_waits() -> None:
    pair = connect(device_config=DeviceConfig(update_timeout=None))
    _begin(pair, fast=False, size=2048)
    assert pair.device.get_timer() is None


def test_legacy_0_7_finishes_with_its_result_in_its_own_update_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """0.7.x has no result event: its UpdateDone carries the JSON (§7.1), and it resets at once."""
    pair = connect(LEGACY_0_7)
    spy = _Spy(pair, monkeypatch)
    image = image_of(1024)
    _begin(pair, fast=True, size=1024)
    _send(pair, _chunk(image[:512], 0))
    spy.take()
    _send(pair, m.update_done(0x300, 0x31))
    ack, missed = spy.take()
    assert ack.code == Code.BAD_REQUEST
    assert missed.payload == b"\x00\x01"
    _send(pair, _chunk(image[512:], 1, mid=0x301))
    ack, done = spy.take()
    assert (ack.type, ack.code) == (MessageType.ACK, Code.EMPTY)
    assert (done.type, done.code, done.uri_path) == (MessageType.NON, Code.PUT, (b"u",))
    assert done.payload == b'{"r":"ok","u":{"s":0,"l":"m","vc":0,"vv":0,"d":[]}}'
    assert pair.device.closed


def test_a_held_reset_waits_for_its_time() -> None:
    pair = connect(DEVICE_OS_0_6_1)
    _begin(pair, fast=False, size=16)
    _send(pair, _chunk(b"\x03" * 16))
    _send(pair, m.update_done(0x300, 0x31))
    device = pair.device
    assert device.get_timer() == NOW + 1.0
    device.handle_timer(NOW + 0.5)
    assert not device.closed
    device.handle_timer(NOW + 1.0)
    assert device.closed


def test_the_server_reads_a_legacy_finish_through_its_noise() -> None:
    """0.6.x after ChunkMissed (CON): its result event and its own UpdateDone come out of IV order
    (OTA README D3). The server takes the event as the finish, skips the frame that fails its padding,
    and reads nothing after it: the device is resetting."""
    pair = connect(DEVICE_OS_0_6_1)
    server, device = pair.server, pair.device
    server.begin_update(file_size=1024, fast=True, now=NOW)
    pair.pump(NOW)
    device._send(m.chunk_missed(0x9000, [2, 3, 4], confirmable=True))
    device._send(Message(MessageType.NON, Code.GET, 0x9001, options=((11, b"c"),), payload=b"\x00\x01\x02"))
    pair.pump(NOW)
    events = pair.take_server_events()
    assert [type(e).__name__ for e in events] == ["UpdateReady", "ChunksMissed", "MessageIgnored"]
    # An event read in order still counts as the finish in this state, and is not answered.
    device.publish("spark/device/ota_result", '{"r":"ok"}', NOW)
    pair.pump(NOW)
    assert pair.take_server_events() == [UpdateFinishedByDevice({"r": "ok"})]
    assert device.data_to_send() == b""
    assert device._encoder is not None
    update_done = device._encoder.encode(b"\x50\x03\x90\x03\xb1u")
    result = device._encoder.encode(b"\x50\x02\x90\x04\xb1E\x0d\x0aspark/device/ota_result\xff{}")
    later = device._encoder.encode(b"\x40\x00\x90\x05")
    server.receive_data(result + update_done + later, NOW + 1)
    server.receive_data(device._encoder.encode(b"\x40\x00\x90\x06"), NOW + 2)
    assert drain(server) == []  # finished once; the rest is not read
    server.receive_eof(NOW + 2)
    assert drain(server) == [ConnectionClosed()]


def test_a_chunk_far_past_the_image_is_not_stored_past_the_ota_area() -> None:
    """Found writing the device fuzz target (tests/fuzz): an empty chunk (CRC 0) with index 65534 after an
    UpdateBegin with chunk size 65535 made the device role grow its image to 65534 x 65535 bytes (4 GiB).
    The device's OTA area ends at max_binary_size; nothing is stored past it."""
    firmware = Firmware(version=(3, 1, 0), max_binary_size=4096)
    pair = connect(firmware)
    tracemalloc.start()
    try:
        _begin(pair, fast=True, size=1000, chunk_size=65535)
        _send(pair, _chunk(b"", index=65534))
        _send(pair, _chunk(b"x" * 100, index=1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    events = pair.take_device_events()
    assert isinstance(events[0], UpdateStarted)
    assert events[1:] == [ChunkStored(65534, 0), ChunkStored(1, 100)]
