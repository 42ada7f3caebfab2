"""The one transition table: anything it does not list is a bug that raises at once."""

from __future__ import annotations

import pytest

from cyan.dtls import LocalDtlsError, State
from cyan.dtls._state import Role, StateMachine, Trigger


def test_an_unlisted_transition_raises_a_local_error() -> None:
    machine = StateMachine(Role.SERVER, State.AWAIT_CLIENT_HELLO)
    with pytest.raises(LocalDtlsError, match="cannot take 'accepted'"):
        machine.advance(Trigger.ACCEPTED)
    assert machine.state is State.AWAIT_CLIENT_HELLO


def test_the_full_handshakes_of_both_roles_and_closing() -> None:
    server = StateMachine(Role.SERVER, State.AWAIT_CLIENT_HELLO)
    for trigger in (Trigger.CLIENT_HELLO, Trigger.CLIENT_FLIGHT, Trigger.ACCEPTED):
        server.advance(trigger)
    client = StateMachine(Role.CLIENT, State.AWAIT_SERVER_FLIGHT)
    for trigger in (Trigger.COOKIE_REQUESTED, Trigger.SERVER_FLIGHT, Trigger.FINISHED):
        client.advance(trigger)
    assert server.state is client.state is State.ESTABLISHED
    server.advance(Trigger.CLOSE)
    with pytest.raises(LocalDtlsError):
        server.advance(Trigger.CLOSE)
