"""Endpoint states and the one transition table for both roles (RFC 6347 §4.2.4 flights, RFC 5246 §7.3).

Every state change goes through `StateMachine.advance`, so an illegal one raises `LocalDtlsError` at once
instead of an endpoint drifting into an impossible state (as `cyan.protocol._state`).
"""

from __future__ import annotations

import enum

from ._errors import LocalDtlsError

__all__ = ["Role", "State", "StateMachine", "Trigger"]


class Role(enum.Enum):
    SERVER = "server"
    CLIENT = "client"


class State(enum.Enum):
    #: Server: created for a cookie-verified ClientHello that is not processed yet.
    AWAIT_CLIENT_HELLO = "await_client_hello"
    #: Server: ServerHello .. ServerHelloDone sent; waiting for Certificate .. Finished.
    AWAIT_CLIENT_FLIGHT = "await_client_flight"
    #: Server: the device proved its key; the caller must accept or reject it.
    AWAIT_DECISION = "await_decision"
    #: Server, abbreviated handshake: ServerHello, ChangeCipherSpec, Finished sent.
    AWAIT_CLIENT_FINISHED = "await_client_finished"
    #: Client: ClientHello sent (again after a HelloVerifyRequest); waiting for the server's flight.
    AWAIT_SERVER_FLIGHT = "await_server_flight"
    #: Client: Certificate .. Finished sent; waiting for the server's ChangeCipherSpec and Finished.
    AWAIT_SERVER_FINISHED = "await_server_finished"
    ESTABLISHED = "established"
    CLOSED = "closed"


class Trigger(enum.Enum):
    CLIENT_HELLO = "client_hello"
    RESUMPTION_OFFERED = "resumption_offered"  # server: the ClientHello named a session we hold
    COOKIE_REQUESTED = "cookie_requested"  # client: a HelloVerifyRequest
    SERVER_FLIGHT = "server_flight"  # client: ServerHelloDone, our flight sent
    CLIENT_FLIGHT = "client_flight"  # server: the client's Finished verified
    ACCEPTED = "accepted"
    FINISHED = "finished"  # the peer's Finished verified, last flight ours or theirs
    SESSION_IMPORTED = "session_imported"  # a saved session carried on with no handshake (udp-dtls.md §1.4)
    CLOSE = "close"  # failure, rejection or an orderly end: always allowed until closed


_TRANSITIONS: dict[Role, dict[tuple[State, Trigger], State]] = {
    Role.SERVER: {
        (State.AWAIT_CLIENT_HELLO, Trigger.CLIENT_HELLO): State.AWAIT_CLIENT_FLIGHT,
        (State.AWAIT_CLIENT_HELLO, Trigger.RESUMPTION_OFFERED): State.AWAIT_CLIENT_FINISHED,
        (State.AWAIT_CLIENT_FLIGHT, Trigger.CLIENT_FLIGHT): State.AWAIT_DECISION,
        (State.AWAIT_DECISION, Trigger.ACCEPTED): State.ESTABLISHED,
        (State.AWAIT_CLIENT_FINISHED, Trigger.FINISHED): State.ESTABLISHED,
        (State.AWAIT_CLIENT_HELLO, Trigger.SESSION_IMPORTED): State.ESTABLISHED,
    },
    Role.CLIENT: {
        (State.AWAIT_SERVER_FLIGHT, Trigger.COOKIE_REQUESTED): State.AWAIT_SERVER_FLIGHT,
        (State.AWAIT_SERVER_FLIGHT, Trigger.SERVER_FLIGHT): State.AWAIT_SERVER_FINISHED,
        # Abbreviated handshake: the server's Finished comes in its first flight (RFC 5246 §7.3).
        (State.AWAIT_SERVER_FLIGHT, Trigger.FINISHED): State.ESTABLISHED,
        (State.AWAIT_SERVER_FINISHED, Trigger.FINISHED): State.ESTABLISHED,
        (State.AWAIT_SERVER_FLIGHT, Trigger.SESSION_IMPORTED): State.ESTABLISHED,
    },
}


class StateMachine:
    __slots__ = ("role", "state")

    def __init__(self, role: Role, state: State) -> None:
        self.role = role
        self.state = state

    def advance(self, trigger: Trigger) -> State:
        if trigger is Trigger.CLOSE:
            if self.state is State.CLOSED:
                raise LocalDtlsError("the endpoint is already closed")
            self.state = State.CLOSED
            return self.state
        try:
            self.state = _TRANSITIONS[self.role][self.state, trigger]
        except KeyError:
            raise LocalDtlsError(
                f"{self.role.value} endpoint cannot take {trigger.value!r} in state {self.state.value!r}"
            ) from None
        return self.state
