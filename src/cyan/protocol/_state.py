"""Connection states and the one transition table for both roles (protocol.md §3, §5).

Every state change of a connection goes through `StateMachine.advance`, so an illegal one is a bug that
raises `LocalProtocolError` at once instead of a connection drifting into an impossible state.
"""

from __future__ import annotations

import enum

from ._errors import LocalProtocolError, Step

__all__ = ["Role", "State", "StateMachine", "Trigger"]


class Role(enum.Enum):
    SERVER = "server"
    DEVICE = "device"
    #: The server of a UDP device: DTLS authenticated the key already, and the identity comes in the Hello.
    DATAGRAM_SERVER = "datagram_server"


class State(enum.Enum):
    AWAIT_NONCE = "await_nonce"  # device: waiting for the 40-byte nonce
    AWAIT_IDENTITY = "await_identity"  # server: nonce sent, waiting for the 256-byte message
    AWAIT_DECISION = "await_decision"  # server: device identified, caller must accept or reject
    AWAIT_SESSION_KEY = "await_session_key"  # device: waiting for the 384-byte answer
    AWAIT_HELLO = "await_hello"  # both: waiting for the peer's Hello
    CONNECTED = "connected"
    CLOSED = "closed"


class Trigger(enum.Enum):
    NONCE_RECEIVED = "nonce_received"
    IDENTITY_RECEIVED = "identity_received"
    ACCEPTED = "accepted"
    SESSION_KEY_RECEIVED = "session_key_received"
    HELLO_RECEIVED = "hello_received"
    CLOSE = "close"  # failure, rejection, or an orderly end: always allowed until closed


_TRANSITIONS: dict[Role, dict[tuple[State, Trigger], State]] = {
    Role.SERVER: {
        (State.AWAIT_IDENTITY, Trigger.IDENTITY_RECEIVED): State.AWAIT_DECISION,
        (State.AWAIT_DECISION, Trigger.ACCEPTED): State.AWAIT_HELLO,
        (State.AWAIT_HELLO, Trigger.HELLO_RECEIVED): State.CONNECTED,
    },
    # The same states as the TCP server's, reached by other means: AWAIT_IDENTITY waits for the Hello that
    # names the device, AWAIT_HELLO is passed through once the key is accepted (datagram.py).
    Role.DATAGRAM_SERVER: {
        (State.AWAIT_IDENTITY, Trigger.IDENTITY_RECEIVED): State.AWAIT_DECISION,
        (State.AWAIT_DECISION, Trigger.ACCEPTED): State.AWAIT_HELLO,
        (State.AWAIT_HELLO, Trigger.HELLO_RECEIVED): State.CONNECTED,
    },
    Role.DEVICE: {
        (State.AWAIT_NONCE, Trigger.NONCE_RECEIVED): State.AWAIT_SESSION_KEY,
        (State.AWAIT_SESSION_KEY, Trigger.SESSION_KEY_RECEIVED): State.AWAIT_HELLO,
        (State.AWAIT_HELLO, Trigger.HELLO_RECEIVED): State.CONNECTED,
    },
}

_STEPS: dict[Role, dict[State, Step]] = {
    Role.SERVER: {
        State.AWAIT_IDENTITY: Step.NONCE,
        State.AWAIT_DECISION: Step.IDENTITY,
        State.AWAIT_HELLO: Step.HELLO,
        State.CONNECTED: Step.SESSION,
    },
    Role.DATAGRAM_SERVER: {
        State.AWAIT_IDENTITY: Step.HELLO,
        State.AWAIT_DECISION: Step.IDENTITY,
        State.AWAIT_HELLO: Step.HELLO,
        State.CONNECTED: Step.SESSION,
    },
    Role.DEVICE: {
        State.AWAIT_NONCE: Step.NONCE,
        State.AWAIT_SESSION_KEY: Step.SESSION_KEY,
        State.AWAIT_HELLO: Step.HELLO,
        State.CONNECTED: Step.SESSION,
    },
}


class StateMachine:
    __slots__ = ("_step", "role", "state")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.AWAIT_NONCE if role is Role.DEVICE else State.AWAIT_IDENTITY
        self._step = _STEPS[role][self.state]

    @property
    def step(self) -> Step:
        """The step the connection is in, or was in when it closed."""
        return self._step

    def advance(self, trigger: Trigger) -> State:
        if trigger is Trigger.CLOSE:
            if self.state is State.CLOSED:
                raise LocalProtocolError("the connection is already closed")
            self.state = State.CLOSED
            return self.state
        try:
            self.state = _TRANSITIONS[self.role][self.state, trigger]
        except KeyError:
            raise LocalProtocolError(
                f"{self.role.value} connection cannot take {trigger.value!r} in state {self.state.value!r}"
            ) from None
        self._step = _STEPS[self.role][self.state]
        return self.state
