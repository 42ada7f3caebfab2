"""Sans-IO DTLS 1.2 for exactly Particle's UDP profile (udp-dtls.md §1.3, §1.4), in both roles.

One suite, TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 on secp256r1; the device authenticates with a raw public key
(RFC 7250) and the server sends no Certificate; draft-05 connection ids (extension 254, record type 25) with
Device OS's 253 and 254 move-session records; HelloVerifyRequest cookies; sessions that resume with an
abbreviated handshake or with none at all.

Nothing here touches a socket, a clock or a random source of its own: datagrams go in with
`receive_datagram(data, now)`, come out of `datagrams_to_send()`, events come out of `next_event()`, and
timers are driven by `get_timer()` / `handle_timer(now)`. See docs/dtls.md.
"""

from ._crypto import RandomBytes
from ._errors import DtlsError, LocalDtlsError, Reason, RemoteDtlsError, Step
from ._state import State
from .client import ClientConfig, ClientEndpoint, MoveSession
from .cookie import CookieCheck, CookieVerifier, connection_id_of, is_client_hello, move_device_id_of
from .events import (
    AlertReceived,
    ApplicationDataReceived,
    ConnectionClosed,
    ConnectionFailed,
    DeviceKeyPresented,
    Event,
    HandshakeCompleted,
    RecordDiscarded,
)
from .server import DEFAULT_SEQUENCE_GAP, ServerConfig, ServerEndpoint, SessionOpener, session_opens
from .session import Session

__all__ = [
    "DEFAULT_SEQUENCE_GAP",
    "AlertReceived",
    "ApplicationDataReceived",
    "ClientConfig",
    "ClientEndpoint",
    "ConnectionClosed",
    "ConnectionFailed",
    "CookieCheck",
    "CookieVerifier",
    "DeviceKeyPresented",
    "DtlsError",
    "Event",
    "HandshakeCompleted",
    "LocalDtlsError",
    "MoveSession",
    "RandomBytes",
    "Reason",
    "RecordDiscarded",
    "RemoteDtlsError",
    "ServerConfig",
    "ServerEndpoint",
    "Session",
    "SessionOpener",
    "State",
    "Step",
    "connection_id_of",
    "is_client_hello",
    "move_device_id_of",
    "session_opens",
]
