"""The server role's update sender against the device role, both personalities, over an in-memory wire."""

from __future__ import annotations

import pytest
from ota_support import NOW, Run, connect, damage_once, image_of, run_update

from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    ChunksMissed,
    ConnectionClosed,
    DeviceConfig,
    DeviceConnection,
    DeviceReset,
    Firmware,
    OtaConfig,
    OtaSender,
    OtaState,
    UpdateCheck,
    UpdateDoneAcknowledged,
    UpdateFinishedByDevice,
    UpdateReady,
)
from cyan.protocol.events import ChunkAcknowledged, ChunkStored, EventPublished, RequestTimedOut, UpdateStarted
from cyan.protocol.ota import RESULT_EVENT, chunk_count, fast_by_default
from cyan.testing import drain

DEVICE_OS_0_7_0 = Firmware(version=(0, 7, 0))
DEVICE_OS_1_5_2 = Firmware(version=(1, 5, 2))
DEVICE_OS_1_0_1 = Firmware(version=(1, 0, 1))
PERSONALITIES = [DEVICE_OS_0_6_1, DEVICE_OS_0_7_0, DEVICE_OS_1_0_1, DEVICE_OS_1_5_2, DEVICE_OS_3_1_0]
IDS = ["0.6.1", "0.7.0", "1.0.1", "1.5.2", "3.1.0"]


def _applied(run: Run, image: bytes) -> None:
    assert run.sender.state is OtaState.COMPLETE, run.sender.outcome
    assert run.device_events_of(DeviceReset) == [DeviceReset("update", image)]
    assert run.pair.device.closed


@pytest.mark.parametrize("firmware", PERSONALITIES, ids=IDS)
@pytest.mark.parametrize("fast", [False, True, None], ids=["non-fast", "fast", "auto"])
def test_an_update_reaches_every_personality(firmware: Firmware, fast: bool | None) -> None:
    image = image_of(3000)  # the last chunk is 440 bytes and goes unpadded (§7.1)
    run = run_update(connect(firmware), image, fast=fast)
    _applied(run, image)
    outcome = run.sender.outcome
    assert outcome is not None
    # Auto: fast for the new stack from 1.2 (Hello flags beyond 0x01), non-fast below (§0.1, README D1, D3).
    assert outcome.fast is (fast if fast is not None else firmware.version >= (1, 2, 0))
    assert outcome.bytes_delivered == 3000
    assert outcome.chunks_resent == 0
    assert [e.index for e in run.device_events if isinstance(e, ChunkStored)] == list(range(6))
    if firmware.numeric_ota_result:
        assert outcome.result == {"r": 0}
    else:
        assert outcome.result is not None
        assert outcome.result["r"] == "ok"


@pytest.mark.parametrize("firmware", PERSONALITIES, ids=IDS)
def test_fast_update_with_damaged_chunks_is_completed(firmware: Firmware) -> None:
    """Fast mode: ChunkMissed, resend with the index, then the stack's own way of finishing (§7.1): the new
    stack's second UpdateDone, the legacy stack's own UpdateDone (0.6.x: out of IV order, README D3)."""
    image = image_of(40 * 512 + 7)
    damaged = {0, 3, 17, 40}
    run = run_update(connect(firmware, damage_chunk=damage_once(damaged)), image, fast=True)
    _applied(run, image)
    outcome = run.sender.outcome
    assert outcome is not None
    assert outcome.chunks_resent >= len(damaged)
    missed = [e for e in run.server_events if isinstance(e, ChunksMissed)]
    assert missed[0] == ChunksMissed(tuple(sorted(damaged)), firmware.legacy)
    if firmware.legacy:
        assert any(isinstance(e, UpdateFinishedByDevice) for e in run.server_events)
    else:
        done = [e for e in run.server_events if isinstance(e, UpdateDoneAcknowledged)]
        assert [e.complete for e in done] == [False, True]
    assert isinstance(run.server_events[-1], ConnectionClosed)


@pytest.mark.parametrize("firmware", [DEVICE_OS_0_6_1, DEVICE_OS_3_1_0], ids=["0.6.1", "3.1.0"])
def test_many_missing_chunks_take_several_rounds(firmware: Firmware) -> None:
    """More missing chunks than one ChunkMissed lists: 50 legacy, at most 40 new (§10)."""
    image = image_of(200 * 512)
    damaged = set(range(0, 200, 2))
    run = run_update(connect(firmware, damage_chunk=damage_once(damaged)), image, fast=True)
    _applied(run, image)
    missed = [e for e in run.server_events if isinstance(e, ChunksMissed)]
    # The legacy stack lists 50 and asks for the next ones by itself; the new stack lists n + max(n/5, 2)
    # of the n chunks of the last flight, at most 40, at each UpdateDone (§7.1, §10).
    expected = [50, 50] if firmware.legacy else [40, 40, 20]
    assert [len(e.indexes) for e in missed] == expected


def test_non_fast_damaged_chunk_is_sent_again() -> None:
    image = image_of(2048)
    run = run_update(connect(damage_chunk=damage_once({1, 2})), image, fast=False)
    _applied(run, image)
    assert run.sender.outcome is not None
    assert run.sender.outcome.chunks_resent == 2


def test_the_device_decides_the_mode() -> None:
    """UpdateReady's flag wins: the new stack can force fast OTA on or off (Connection::FAST_OTA, §7.1)."""
    image = image_of(1500)
    declined = run_update(connect(device_config=DeviceConfig(fast_ota=False)), image, fast=True)
    _applied(declined, image)
    assert declined.sender.offered_fast
    assert declined.sender.fast is False
    forced = run_update(connect(device_config=DeviceConfig(fast_ota=True)), image, fast=False)
    _applied(forced, image)
    assert forced.sender.fast is True


@pytest.mark.parametrize("firmware", [DEVICE_OS_0_6_1, DEVICE_OS_3_1_0], ids=["0.6.1", "3.1.0"])
def test_refusals(firmware: Firmware) -> None:
    disabled = run_update(connect(firmware, device_config=DeviceConfig(updates_enabled=False)), image_of(100))
    assert disabled.sender.state is OtaState.FAILED
    assert disabled.sender.outcome is not None
    assert disabled.sender.outcome.reason == "refused"
    assert ("4.00" if firmware.legacy else "5.03") in disabled.sender.outcome.detail
    small = Firmware(version=firmware.version, max_binary_size=1024)
    too_big = run_update(connect(small), image_of(1025))
    assert too_big.sender.outcome is not None
    assert too_big.sender.outcome.reason == "refused"
    assert not too_big.device_events_of(UpdateStarted)


@pytest.mark.parametrize("firmware", [DEVICE_OS_0_6_1, DEVICE_OS_3_1_0], ids=["0.6.1", "3.1.0"])
@pytest.mark.parametrize("fast", [False, True])
def test_an_invalid_image_is_reported_and_not_applied(firmware: Firmware, fast: bool) -> None:
    run = run_update(connect(firmware, check_update=lambda image: UpdateCheck(error=-1320)), image_of(1200), fast=fast)
    assert run.sender.state is OtaState.FAILED
    assert run.sender.outcome is not None
    assert run.sender.outcome.reason == "rejected"
    assert run.device_events_of(DeviceReset) == [DeviceReset("update_error")]


def test_too_many_bad_chunks_fail_a_non_fast_update() -> None:
    run = run_update(connect(damage_chunk=lambda index: True), image_of(3000), fast=False)
    assert run.sender.outcome is not None
    assert run.sender.outcome.reason == "bad_chunks"
    assert run.sender.outcome.chunks_resent == OtaConfig().bad_chunk_limit


def test_too_many_chunk_missed_fail_a_fast_update() -> None:
    run = run_update(connect(damage_chunk=lambda index: index == 1), image_of(3000), fast=True)
    assert run.sender.outcome is not None
    assert run.sender.outcome.reason == "too_many_missed"
    assert run.sender.outcome.elapsed < OtaConfig().device_timeout


def _silent_after(device: DeviceConnection, monkeypatch: pytest.MonkeyPatch, handler: str, allowed: int) -> None:
    """The device handles the first `allowed` messages of a kind, then ignores them."""
    original = getattr(device, handler)
    calls = [0]

    def limited(raw: bytes, message: object, tkl: int, now: float) -> None:
        calls[0] += 1
        if calls[0] <= allowed:
            original(raw, message, tkl, now)

    monkeypatch.setattr(device, handler, limited)


def _mute(device: DeviceConnection, monkeypatch: pytest.MonkeyPatch) -> None:
    """The device decrypts what it gets (keeping the IV chain) and answers nothing."""
    monkeypatch.setattr(device, "_on_message", lambda raw, message, now: None)


def test_update_begin_is_tried_four_times(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = connect()
    _mute(pair.device, monkeypatch)
    run = run_update(pair, image_of(100))
    assert run.sender.outcome is not None
    assert run.sender.outcome.reason == "no_answer"
    assert "4 UpdateBegin" in run.sender.outcome.detail
    timeouts = [e for e in run.server_events if isinstance(e, RequestTimedOut)]
    assert [e.kind for e in timeouts] == ["update_begin"] * 4
    assert run.sender.outcome.elapsed == pytest.approx(sum(OtaConfig().begin_timeouts))


def test_a_late_update_ready_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = connect()
    sender = OtaSender(pair.server, image_of(100), NOW, fast=False)
    first = sender._request
    assert first is not None
    pair.server.handle_timer(NOW + 6.0)
    timed_out = pair.server.next_event()
    assert isinstance(timed_out, RequestTimedOut)
    assert sender.handle_event(timed_out, NOW + 6.0)
    assert sender.handle_event(UpdateReady(first, False), NOW + 6.1)
    assert sender.state is OtaState.BEGINNING
    assert not sender.handle_event(RequestTimedOut(first, "update_begin", "update"), NOW + 6.2)


def test_a_silent_device_fails_a_non_fast_transfer_before_its_own_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = connect()
    _silent_after(pair.device, monkeypatch, "_on_chunk", 2)
    run = run_update(pair, image_of(3000), fast=False)
    assert run.sender.outcome is not None
    assert run.sender.outcome.reason == "no_answer"
    assert "chunk 2" in run.sender.outcome.detail
    assert run.sender.outcome.bytes_delivered == 1024


def test_update_done_is_sent_again_when_unanswered(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without its 30 s update timer, the device would reset before the fourth UpdateDone (§7.2).
    pair = connect(device_config=DeviceConfig(update_timeout=None))
    _silent_after(pair.device, monkeypatch, "_on_update_done", 0)
    run = run_update(pair, image_of(1000), fast=False)
    assert run.sender.outcome is not None
    assert run.sender.outcome.reason == "no_answer"
    timeouts = [e for e in run.server_events if isinstance(e, RequestTimedOut)]
    assert [e.kind for e in timeouts] == ["update_done"] * OtaConfig().done_attempts


def test_the_whole_transfer_has_a_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = connect()
    _mute(pair.device, monkeypatch)
    run = run_update(pair, image_of(100), config=OtaConfig(transfer_timeout=8.0))
    assert run.sender.outcome is not None
    assert run.sender.outcome.reason == "timeout"


def test_a_lost_connection_fails_the_update() -> None:
    pair = connect()
    sender = OtaSender(pair.server, image_of(3000), NOW, fast=False)
    pair.pump(NOW)
    for event in pair.take_server_events():
        sender.handle_event(event, NOW)
    assert sender.state is OtaState.SENDING
    pair.pump(NOW)
    pair.server.receive_eof(NOW + 1)
    # Events of a batch that ended with EOF: the connection is closed before the sender sees them.
    for event in [*pair.take_server_events(), *drain(pair.server)]:
        sender.handle_event(event, NOW + 1)
    assert sender.outcome is not None
    assert sender.outcome.reason == "disconnected"
    assert "bytes" in sender.outcome.detail
    assert not sender.handle_event(UpdateFinishedByDevice(None), NOW + 2)
    sender.connection_lost(NOW + 2)  # nothing more happens once finished
    sender.handle_timer(NOW + 3)
    assert sender.get_timer() is None


def test_fast_bursts_wait_for_the_socket() -> None:
    """At most `burst` frames at a time, the next burst only once the previous left the socket (§13.1 #15)."""
    pair = connect()
    config = OtaConfig(burst=4, burst_interval=0.05)
    sender = OtaSender(pair.server, image_of(20 * 512), NOW, fast=True, config=config)
    pair.pump(NOW)
    for event in pair.take_server_events():
        sender.handle_event(event, NOW)
    assert sender.state is OtaState.SENDING
    assert sender.bytes_delivered == 4 * 512
    assert sender.get_timer() == pytest.approx(NOW + 0.05)
    sender.handle_timer(NOW + 0.05, backlog=1000)
    assert sender.bytes_delivered == 4 * 512
    assert sender.get_timer() == pytest.approx(NOW + 0.05 + config.drain_poll)
    sender.handle_timer(NOW + 0.06, backlog=0)
    assert sender.bytes_delivered == 8 * 512


def test_chunk_missed_out_of_turn() -> None:
    pair = connect()
    sender = OtaSender(pair.server, image_of(3 * 512), NOW, fast=True)
    assert sender.handle_event(ChunksMissed((1,)), NOW)
    assert sender.state is OtaState.BEGINNING
    pair.pump(NOW)
    for event in pair.take_server_events():
        sender.handle_event(event, NOW)
    # The whole first pass and UpdateDone went out in one burst; a ChunkMissed that overtakes the answer
    # to UpdateDone starts the resend at once, and the answer is then ignored.
    assert _state(sender) is OtaState.FINISHING
    done_request = sender._request
    assert done_request is not None
    sender.handle_event(ChunksMissed((1, 7)), NOW + 0.1)
    assert _state(sender) is OtaState.SETTLING
    assert sender.handle_event(UpdateDoneAcknowledged(done_request, False, None), NOW + 0.2)
    assert _state(sender) is OtaState.SETTLING


def test_non_fast_ignores_chunk_missed_and_a_non_fast_4_00_fails() -> None:
    pair = connect()
    sender = OtaSender(pair.server, image_of(600), NOW, fast=False)
    pair.pump(NOW)
    for event in pair.take_server_events():
        sender.handle_event(event, NOW)
    assert sender.handle_event(ChunksMissed((0,)), NOW)
    assert sender.state is OtaState.SENDING
    sender.state = OtaState.FINISHING
    sender._request = 99
    sender.handle_event(UpdateDoneAcknowledged(99, False, None), NOW)
    assert sender.outcome is not None
    assert sender.outcome.reason == "incomplete"


def test_a_firmware_without_a_result_report_completes_after_the_wait() -> None:
    pair = connect()
    sender = OtaSender(pair.server, image_of(600), NOW, fast=False)
    sender.state = OtaState.FINISHING
    sender._request = 7
    sender.handle_event(UpdateDoneAcknowledged(7, True, None), NOW)
    assert _state(sender) is OtaState.CONFIRMING
    assert not sender.handle_event(UpdateStarted(1, 1, False), NOW)
    sender.handle_timer(NOW + OtaConfig().result_wait)
    assert _state(sender) is OtaState.COMPLETE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"begin_timeouts": (6.0, 31.0)}, "shorter than"),
        ({"begin_timeouts": ()}, "shorter than"),
        ({"chunk_size": 1024}, "1..512"),
        ({"burst": 0}, "at least 1"),
    ],
)
def test_config_is_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OtaConfig(**kwargs)  # type: ignore[arg-type]


def test_images_are_checked() -> None:
    pair = connect()
    with pytest.raises(ValueError, match="non-empty"):
        OtaSender(pair.server, b"", NOW)
    with pytest.raises(ValueError, match="fewer than 65535"):
        OtaSender(pair.server, bytes(65535), NOW, config=OtaConfig(chunk_size=1))


def test_helpers() -> None:
    assert chunk_count(3000) == 6
    assert chunk_count(512) == 1
    assert [fast_by_default(f) for f in (0x00, 0x01, 0x06, 0x36, 0x37)] == [False, False, True, True, True]


def _state(sender: OtaSender) -> OtaState:
    """The state, read through a call (it changes under the type checker's narrowing)."""
    return sender.state


def test_the_result_event_of_0_6_x_completes_a_confirming_update() -> None:
    pair = connect(DEVICE_OS_0_6_1)
    sender = OtaSender(pair.server, image_of(600), NOW, fast=False)
    assert not sender.handle_event(EventPublished(RESULT_EVENT, b'{"r":"ok"}', 60, True, False), NOW)
    sender.state, sender._request = OtaState.FINISHING, 7
    sender.handle_event(UpdateDoneAcknowledged(7, True, None), NOW)
    assert _state(sender) is OtaState.CONFIRMING
    assert not sender.handle_event(EventPublished("vdev/heartbeat", b"1", 60, True, False), NOW)
    assert sender.handle_event(EventPublished(RESULT_EVENT, b"not json", 60, True, False), NOW)
    assert _state(sender) is OtaState.COMPLETE
    assert sender.outcome is not None
    assert sender.outcome.result is None
    other = OtaSender(pair.server, image_of(600), NOW, fast=False)
    other.state, other._request = OtaState.FINISHING, 8
    other.handle_event(UpdateDoneAcknowledged(8, True, None), NOW)
    other.connection_lost(NOW + 1)  # acknowledged, then the reset: complete
    assert _state(other) is OtaState.COMPLETE


def test_nothing_is_sent_on_a_closed_connection() -> None:
    pair = connect()
    fast = OtaSender(pair.server, image_of(600), NOW, fast=True)
    begin = fast._request
    assert begin is not None
    pair.server.close()
    fast.handle_event(UpdateReady(begin, True), NOW)
    assert fast.outcome is not None
    assert fast.outcome.reason == "disconnected"
    pair = connect()
    one = OtaSender(pair.server, image_of(100), NOW, fast=False)
    assert one.chunk_total == 1
    one.handle_event(UpdateReady(one._request or 0, False), NOW)
    chunk = one._request
    assert chunk is not None
    pair.server.close()
    one.handle_event(ChunkAcknowledged(chunk, True), NOW)  # the last one: UpdateDone would be next
    assert one.outcome is not None
    assert one.outcome.reason == "disconnected"
    timed = OtaSender(connect().server, image_of(100), NOW)
    timed.connection.close()
    timed.handle_timer(NOW + 1)
    assert _state(timed) is OtaState.FAILED
    timed.handle_timer(NOW + 2)  # finished: nothing more


def test_chunks_reported_missing_during_the_first_pass_follow_it() -> None:
    pair = connect()
    sender = OtaSender(pair.server, image_of(20 * 512), NOW, fast=True, config=OtaConfig(burst=8))
    sender.handle_event(UpdateReady(sender._request or 0, True), NOW)
    assert sender.bytes_delivered == 8 * 512
    assert sender.handle_event(ChunksMissed((1, 2), True), NOW)
    assert _state(sender) is OtaState.SENDING
    sender.handle_timer(NOW + 1)
    sender.handle_timer(NOW + 2)  # the rest of the first pass, then the two missed ones
    assert _state(sender) is OtaState.SETTLING
    assert sender.bytes_delivered == 20 * 512
    assert sender.outcome is None
    assert sender._progress.resent == 2
