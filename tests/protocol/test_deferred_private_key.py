"""The server role built without the server key: the caller runs the two RSA private-key operations.

The wire must be byte for byte what the same connection sends when it holds the key itself, and every
way the caller's side can go wrong (a failure, a late result, a stuck worker) must end in one clear
record, never a hang.
"""

from __future__ import annotations

import pytest

from cyan.protocol import (
    DEVICE_OS_0_6_1,
    DEVICE_OS_3_1_0,
    ConnectionFailed,
    DeviceConnection,
    DeviceIdentified,
    Event,
    Firmware,
    LocalProtocolError,
    PrivateKeyOperationNeeded,
    Reason,
    RemoteProtocolError,
    ServerConnection,
    SessionStarted,
    State,
    Step,
)
from cyan.protocol.handshake import private_decrypt, private_sign
from cyan.testing import ConnectionPair, ScriptedRandom, fixed_device_key, fixed_server_key

DEVICE_ID = bytes.fromhex("0123456789abcdef01234567")
NOW = 1_700_000_000.0


def _pair(*, deferred: bool, firmware: Firmware = DEVICE_OS_3_1_0) -> ConnectionPair:
    key = fixed_server_key()
    server = ServerConnection(None if deferred else key, NOW, rng=ScriptedRandom(seed=7))
    device = DeviceConnection(
        DEVICE_ID, fixed_device_key(), key.public_key(), NOW, firmware=firmware, rng=ScriptedRandom(seed=8)
    )
    return ConnectionPair(server, device)


def _run_operation(server: ServerConnection) -> None:
    """Act as the caller's worker: run the operation the connection asked for with the real key."""
    (needed,) = [e for e in _events(server) if isinstance(e, PrivateKeyOperationNeeded)]
    key = fixed_server_key()
    result = private_decrypt(key, needed.data) if needed.operation == "decrypt" else private_sign(key, needed.data)
    server.private_key_done(result, NOW)


def _events(server: ServerConnection) -> list[Event]:
    events: list[Event] = []
    while (event := server.next_event()) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize("firmware", [DEVICE_OS_3_1_0, DEVICE_OS_0_6_1], ids=["3.1.0", "0.6.1"])
def test_deferred_operations_put_the_same_bytes_on_the_wire(firmware: Firmware) -> None:
    inline, deferred = _pair(deferred=False, firmware=firmware), _pair(deferred=True, firmware=firmware)
    wires: list[bytes] = []
    for pair in (inline, deferred):
        nonce = pair.server.data_to_send()
        pair.device.receive_data(nonce, NOW)
        pair.server.receive_data(pair.device.data_to_send(), NOW)
        if pair is deferred:
            assert pair.server.state is State.AWAIT_IDENTITY
            _run_operation(pair.server)
        (identified,) = _events(pair.server)
        assert isinstance(identified, DeviceIdentified)
        assert identified.device_id == DEVICE_ID.hex()
        assert identified.public_key is not None
        pair.server.accept(identified.public_key, NOW)
        if pair is deferred:
            assert pair.server.data_to_send() == b"", "nothing leaves before the signature is in"
            _run_operation(pair.server)
        assert any(isinstance(e, SessionStarted) for e in _events(pair.server))
        answer = pair.server.data_to_send()
        wires.append(nonce + answer)
        pair.device.receive_data(answer, NOW)
        pair.pump(NOW)
        assert pair.server.state is State.CONNECTED
        assert pair.device.state is State.CONNECTED
    assert wires[0] == wires[1]


def test_bad_padding_reported_by_the_caller_is_a_nonce_mismatch() -> None:
    pair = _pair(deferred=True)
    pair.device.receive_data(pair.server.data_to_send(), NOW)
    pair.server.receive_data(pair.device.data_to_send(), NOW)
    assert isinstance(pair.server.next_event(), PrivateKeyOperationNeeded)
    with pytest.raises(RemoteProtocolError, match="does not decrypt") as raised:
        pair.server.private_key_done(None, NOW)
    assert raised.value.reason is Reason.NONCE_MISMATCH
    assert pair.server.closed


def test_a_failed_operation_closes_with_server_error_at_its_step() -> None:
    pair = _pair(deferred=True)
    pair.device.receive_data(pair.server.data_to_send(), NOW)
    pair.server.receive_data(pair.device.data_to_send(), NOW)
    _events(pair.server)
    pair.server.private_key_failed("the private-key worker exited")
    (failed,) = _events(pair.server)
    assert isinstance(failed, ConnectionFailed)
    # The decryption belongs to the nonce step, as its failures do when the key is held inline.
    assert (failed.step, failed.reason) == (Step.NONCE, Reason.SERVER_ERROR)
    assert "worker exited" in failed.detail
    # A result arriving after the close is dropped, not an error.
    pair.server.private_key_done(b"\x00" * 256, NOW)
    pair.server.private_key_failed("again")


def test_a_stuck_signature_times_out_as_server_error() -> None:
    pair = _pair(deferred=True)
    pair.device.receive_data(pair.server.data_to_send(), NOW)
    pair.server.receive_data(pair.device.data_to_send(), NOW)
    _run_operation(pair.server)
    (identified,) = _events(pair.server)
    assert isinstance(identified, DeviceIdentified)
    assert identified.public_key is not None
    pair.server.accept(identified.public_key, NOW)
    with pytest.raises(LocalProtocolError):
        pair.server.accept(identified.public_key, NOW)  # one decision per connection
    due = pair.server.get_timer()
    assert due is not None
    assert due - NOW == pair.server.config.decision_timeout
    pair.server.handle_timer(due)
    failures = [e for e in _events(pair.server) if isinstance(e, ConnectionFailed)]
    assert [(f.reason, "sign" in f.detail) for f in failures] == [(Reason.SERVER_ERROR, True)]


def test_bytes_sent_while_the_operation_runs_are_kept() -> None:
    pair = _pair(deferred=True)
    pair.device.receive_data(pair.server.data_to_send(), NOW)
    identity = pair.device.data_to_send()
    pair.server.receive_data(identity + b"early", NOW)
    (needed,) = _events(pair.server)
    assert isinstance(needed, PrivateKeyOperationNeeded)
    assert needed.data == identity
    with pytest.raises(LocalProtocolError):
        pair.server.accept(fixed_device_key().public_key(), NOW)
    _run_operation_with(pair.server, needed)
    assert isinstance(pair.server.next_event(), DeviceIdentified)


def test_a_signature_of_the_wrong_size_is_the_callers_error() -> None:
    pair = _pair(deferred=True)
    pair.device.receive_data(pair.server.data_to_send(), NOW)
    pair.server.receive_data(pair.device.data_to_send(), NOW)
    _run_operation(pair.server)
    pair.server.accept(fixed_device_key().public_key(), NOW)
    _events(pair.server)
    with pytest.raises(LocalProtocolError, match="256 bytes"):
        pair.server.private_key_done(b"short", NOW)
    with pytest.raises(LocalProtocolError, match="no private-key operation"):
        pair.server.private_key_done(b"\x00" * 256, NOW)
    with pytest.raises(LocalProtocolError, match="no private-key operation"):
        pair.server.private_key_failed("nothing runs")


def _run_operation_with(server: ServerConnection, needed: PrivateKeyOperationNeeded) -> None:
    server.private_key_done(private_decrypt(fixed_server_key(), needed.data), NOW)
