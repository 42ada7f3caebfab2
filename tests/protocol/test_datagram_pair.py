"""The message layer over UDP in both roles, over an in-memory wire with a fake clock: the device role
(`DatagramDeviceConnection`, the simulator's Argon) and the server's, with seeded loss, duplication and
reordering. Calls, reads and events arrive exactly once, whatever the wire does, by retransmission and
deduplication alone (udp-dtls.md §1.5)."""

from __future__ import annotations

import dataclasses

import pytest
from datagram_support import Pair

from cyan.protocol import (
    DeviceReset,
    EventPublished,
    FunctionCalled,
    FunctionReturned,
    OtaConfig,
    OtaSender,
    ServerHelloReceived,
    VariableRead,
)
from cyan.protocol.coap import Code, Message, MessageType, decode
from cyan.protocol.datagram import ARGON_4_0_2

LEGACY_OTA_ARGON = dataclasses.replace(ARGON_4_0_2, ota_protocol_v3=False)


def test_a_clean_wire_connects_and_serves() -> None:
    pair = Pair(seed=1)
    pair.run_until(1.0)
    assert any(isinstance(e, ServerHelloReceived) for e in pair.device_events)
    request = pair.server.read_variable("temp", pair.now)
    pair.run_until(2.0)
    (read,) = [e for e in pair.server_events if isinstance(e, VariableRead)]
    assert (read.request_id, read.value) == (request, 21.5)


@pytest.mark.parametrize("seed", range(8))
def test_calls_and_events_arrive_once_through_loss_duplication_and_reordering(seed: int) -> None:
    pair = Pair(seed=seed, loss=0.05, duplicate=0.05, reorder=0.05)
    pair.run_until(30.0)
    assert any(isinstance(e, ServerHelloReceived) for e in pair.device_events)
    calls = {}
    for i in range(20):
        calls[pair.server.call_function("setArg", f"call {i}", pair.now)] = len(f"call {i}")
        pair.device.publish("reading", str(i), pair.now, with_ack=True)
        pair.run_until(pair.now + 10.0)
    pair.run_until(pair.now + 120.0)
    returned = {e.request_id: e.return_value for e in pair.server_events if isinstance(e, FunctionReturned)}
    # Each call reached the application once and answered once; each event was published once. (Not always in
    # order: a call whose first transmissions were lost can arrive after the next one, as CoAP allows.)
    assert returned == calls
    called = [e.argument for e in pair.device_events if isinstance(e, FunctionCalled)]
    assert sorted(called) == sorted(f"call {i}".encode() for i in range(20))
    readings = [e.data or b"" for e in pair.server_events if isinstance(e, EventPublished) and e.name == "reading"]
    assert sorted(readings) == sorted(str(i).encode() for i in range(20))


@pytest.mark.parametrize("loss", [0.0, 0.05])
def test_an_update_over_udp_every_chunk_confirmable(loss: float) -> None:
    """The legacy update over UDP, as the Electron and the stock gcc build take it (Gen 3 from 3.0 takes OTA v3:
    test_ota_v3.py)."""
    pair = Pair(seed=11, loss=loss, duplicate=loss, reorder=loss, firmware=LEGACY_OTA_ARGON)
    pair.run_until(30.0)
    image = bytes((i * 7 + i // 256) % 256 for i in range(20 * 512 + 100))
    # Over UDP the chunks are confirmable and acknowledged one by one: never the fast mode (docs/dtls.md).
    pair.sender = OtaSender(pair.server, image, pair.now, fast=False)
    pair.run_until(pair.now + 600.0)
    assert pair.sender.finished
    assert pair.sender.outcome is not None
    assert pair.sender.outcome.complete, pair.sender.outcome
    (reset,) = [e for e in pair.device_events if isinstance(e, DeviceReset)]
    assert reset.image == image


@pytest.mark.parametrize("seed", range(10))
def test_a_legacy_update_through_loss_and_duplication_never_writes_a_chunk_twice(seed: int) -> None:
    """Stop-and-wait over a lossy wire: a chunk whose empty ACK was lost but whose ChunkReceived came is not sent
    again (the device, its memory of that message id gone, would write it at the next chunk's place), and a late
    ChunkReceived for an earlier chunk with the same token never answers a later one. The transfer may still
    end without an answer (three losses of one answer in a row outlast the device's 30 s timer): the update job
    retries it. What must never happen is a corrupt image."""
    pair = Pair(seed=seed, loss=0.05, duplicate=0.05, firmware=LEGACY_OTA_ARGON)
    pair.run_until(30.0)
    image = bytes((i * 13 + i // 512) % 251 for i in range(120_000))
    pair.sender = OtaSender(pair.server, image, pair.now, fast=False, config=OtaConfig(chunk_timeout=28.0))
    pair.run_until(pair.now + 900.0)
    assert pair.sender.outcome is not None
    applied = [e.image for e in pair.device_events if isinstance(e, DeviceReset) and e.image is not None]
    assert all(a == image for a in applied)
    if pair.sender.outcome.complete:
        assert applied == [image]
    else:
        assert pair.sender.outcome.reason == "no_answer"


def test_a_request_answered_separately_is_not_sent_again_though_its_ack_was_lost() -> None:
    pair = Pair(seed=3)
    pair.run_until(30.0)
    server = pair.server
    server.call_function("setArg", "x", pair.now)
    (sent,) = server.messages_to_send(pair.now)  # the call leaves; its empty ACK will never come
    call = decode(sent)
    assert call.message_id in server._unacked
    answer = Message(MessageType.CON, Code.CHANGED, 0x1234, call.token, payload=(1).to_bytes(4, "big"))
    server.receive_message(answer.encode(), pair.now)
    assert call.message_id not in server._unacked
    pair.run_until(pair.now + 60.0)
    assert not [m for m in pair.carried_to_device if decode(m).message_id == call.message_id]


def test_an_answer_older_than_the_request_does_not_complete_it() -> None:
    """Device OS numbers its messages upwards: an answer whose id is not newer than what the device had sent when
    the request left is a late copy of an answer to an earlier request that had the same 1-byte token."""
    pair = Pair(seed=4)
    pair.run_until(30.0)
    server = pair.server
    newest = server._device_id_high
    assert newest is not None
    request = server.call_function("setArg", "x", pair.now)
    (sent,) = server.messages_to_send(pair.now)
    token = decode(sent).token
    # An id the deduplication does not remember (it keeps the last 64), older than the request: ignored.
    for message_id, answered in (((newest - 1000) % 0x10000, False), ((newest + 1) % 0x10000, True)):
        assert message_id not in server._seen
        value = (7).to_bytes(4, "big")
        server.receive_message(
            Message(MessageType.CON, Code.CHANGED, message_id, token, payload=value).encode(), pair.now
        )
        events = []
        while (event := server.next_event()) is not None:
            events.append(event)
        assert [e.request_id for e in events if isinstance(e, FunctionReturned)] == ([request] if answered else [])
