"""What the protocol carries for device vitals: the metrics Describe (§6.7, §16 #16) and the round trip of a
server ping (§8.1), on both stacks."""

from __future__ import annotations

import struct

import pytest
from ota_support import NOW, connect

from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    Application,
    DescribeReceived,
    Firmware,
    LocalProtocolError,
    PingAnswered,
)
from cyan.protocol import messages as m
from cyan.testing import ConnectionPair, drain


def _connect(firmware: Firmware, application: Application | None = None) -> ConnectionPair:
    pair = connect(firmware, application=application)
    pair.take_server_events()
    pair.take_device_events()
    return pair


# -- the metrics Describe -----------------------------------------------------------------------------


def test_the_recorded_header_and_entries_round_trip() -> None:
    """§16 #16: `00 04 00 | 02 00 | 04 00 | (id u16 LE, value i32 LE)...`."""
    encoded = m.encode_metrics({6: 2001, 19: -18688, 26: 32992})
    assert encoded[:7] == bytes.fromhex("00040002000400")
    assert encoded[7:13] == struct.pack("<Hi", 6, 2001)
    assert m.decode_metrics(encoded) == {6: 2001, 19: -18688, 26: 32992}
    assert m.decode_metrics(bytes.fromhex("00040002000400")) == {}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "at least 7 bytes"),
        (b'{"f":[]}', "not a metrics describe"),
        (bytes.fromhex("00030002000400"), "not a metrics describe"),
        (bytes.fromhex("00040004000400"), "4-byte ids"),
        (bytes.fromhex("00040002000800"), "8-byte values"),
        (bytes.fromhex("00040002000400") + b"\x06\x00\x01", "whole number"),
        (bytes.fromhex("00040002000400") + struct.pack("<Hi", 1, 1) * 257, "more than 256"),
    ],
)
def test_what_is_not_a_metrics_describe_is_refused_with_the_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        m.decode_metrics(payload)


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({1 << 16: 0}, "16-bit"),
        ({1: 1 << 31}, "int32"),
        ({1: -(1 << 31) - 1}, "int32"),
        (dict.fromkeys(range(257), 0), "at most 256"),
    ],
)
def test_encoding_refuses_what_does_not_fit(values: dict[int, int], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        m.encode_metrics(values)


def test_the_server_asks_for_metrics_and_gets_them_with_the_uptime() -> None:
    application = Application(metrics={25: 83200, 26: 32992, 10: 2}, booted_at=NOW - 100)
    pair = _connect(DEVICE_OS_3_1_0, application)
    request = pair.server.request_describe(NOW + 5, flags=m.DescribeFlags.METRICS)
    pair.pump(NOW + 5)
    (answer,) = [e for e in pair.take_server_events() if isinstance(e, DescribeReceived)]
    assert (answer.flags, answer.request_id, answer.document) == (4, request, None)
    assert m.decode_metrics(answer.raw) == {25: 83200, 26: 32992, 10: 2, 6: 105}


def test_a_device_posts_its_vitals_unasked_on_the_new_stack_only() -> None:
    pair = _connect(DEVICE_OS_3_1_0, Application(metrics={14: 3}))
    pair.device.publish_vitals(NOW)
    pair.pump(NOW)
    (posted,) = pair.take_server_events()
    assert isinstance(posted, DescribeReceived)
    assert (posted.flags, posted.request_id) == (4, None)
    assert m.decode_metrics(posted.raw) == {14: 3}
    legacy = _connect(DEVICE_OS_0_6_1)
    with pytest.raises(LocalProtocolError, match="no diagnostics"):
        legacy.device.publish_vitals(NOW)


# -- the round trip of a server ping ---------------------------------------------------------------


@pytest.mark.parametrize("firmware", [DEVICE_OS_3_1_0, DEVICE_OS_0_6_1])
def test_a_timed_ping_reports_its_round_trip(firmware: Firmware) -> None:
    """The legacy stack echoes the ping's message id; the new one answers with a fresh id (§6.1): either way
    the empty ACK that matches no request answers the ping."""
    pair = _connect(firmware)
    server, device = pair.server, pair.device
    server.ping(NOW + 10)
    device.receive_data(server.data_to_send(), NOW + 10.1)
    drain(device)
    server.receive_data(device.data_to_send(), NOW + 10.25)
    (answered,) = drain(server)
    assert isinstance(answered, PingAnswered)
    assert answered.round_trip == pytest.approx(0.25)
    # One answer per ping: a second empty ACK is proof of life only.
    server.ping()
    device.receive_data(server.data_to_send(), NOW + 11)
    server.receive_data(device.data_to_send(), NOW + 11.5)
    assert drain(server) == []


def test_an_untimed_ping_reports_nothing() -> None:
    pair = _connect(DEVICE_OS_3_1_0)
    pair.server.ping()
    pair.pump(NOW + 1)
    assert pair.take_server_events() == []
