"""The device role: `ClientEndpoint`, what Device OS's DTLS channel does (udp-dtls.md §1.3, §1.4).

The simulator and the tests drive it against `ServerEndpoint`. Life of an endpoint::

    ClientEndpoint(device_key, server_public_key, now=..., random_bytes=...)  -> ClientHello queued
    receive_datagram(HelloVerifyRequest)    -> ClientHello with the cookie queued
    receive_datagram(server flight)         -> Certificate (raw key), ClientKeyExchange, CertificateVerify,
                                               ChangeCipherSpec, Finished queued
    receive_datagram(ChangeCipherSpec, Finished) -> HandshakeCompleted

`ClientEndpoint.resume(session, ...)` is the device restoring a saved session with no handshake at all, and
marking its records as the firmware does while `move_session` is set (types 253 or 254).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from . import _wire as w
from ._crypto import (
    RandomBytes,
    ecdh_shared_secret,
    ephemeral_key,
    finished_verify_data,
    master_secret,
    point_of,
    sha256,
    sign_digest,
    spki_of,
    verify_digest,
)
from ._endpoint import BaseEndpoint, EndpointConfig, _Message
from ._errors import LocalDtlsError, Reason, Step
from ._state import Role, State, Trigger
from ._wire import DecodeError, Extension, HandshakeType
from .events import HandshakeCompleted
from .session import Session

__all__ = ["ClientConfig", "ClientEndpoint", "MoveSession"]

_OFFERED_EXTENSIONS = {
    Extension.SIGNATURE_ALGORITHMS,
    Extension.SUPPORTED_GROUPS,
    Extension.EC_POINT_FORMATS,
    Extension.CONNECTION_ID,
    Extension.CLIENT_CERTIFICATE_TYPE,
    Extension.SERVER_CERTIFICATE_TYPE,
    Extension.RENEGOTIATION_INFO,  # answers the SCSV (RFC 5746 §3.4)
}
_MAX_HELLO_VERIFY_REQUESTS = 4


class MoveSession(enum.Enum):
    """How a resumed session marks its records until the first data arrives (udp-dtls.md §1.4)."""

    #: Device OS 3.x: plain CID records.
    NONE = "none"
    #: Device OS ≥ 4.0: CID records sent as type 253.
    ALT_CID = "alt_cid"
    #: Device OS ≤ 2.x (no CID): application data as type 254 with the device id appended.
    DEVICE_ID = "device_id"


@dataclass(frozen=True, slots=True)
class ClientConfig(EndpointConfig):
    #: Device OS: 3 s doubling to 24 s (`mbedtls_ssl_conf_handshake_timeout`, udp-dtls.md §1.1).
    retransmit_initial: float = 3.0
    retransmit_max: float = 24.0
    max_retransmissions: int = 4
    #: Offer the draft-05 CID extension with an empty CID of our own (Device OS ≥ 3.1).
    offer_connection_id: bool = True
    #: Tests against stock stacks only: take an X.509 server Certificate when the server does not agree
    #: to raw public keys, and do without a CertificateRequest. Device OS never does either.
    accept_x509_server_certificate: bool = False


class ClientEndpoint(BaseEndpoint):
    """The device side of one association. Time (`now`) and randomness (`random_bytes`) are injected."""

    __slots__ = (
        "_certificate_requested",
        "_cookies",
        "_device_key",
        "_offered_session",
        "_phase",
        "_server_key",
        "_server_point",
    )

    def __init__(
        self,
        device_key: ec.EllipticCurvePrivateKey,
        server_public_key: ec.EllipticCurvePublicKey | None,
        *,
        now: float,
        random_bytes: RandomBytes,
        config: ClientConfig | None = None,
        session: Session | None = None,
        _start: bool = True,
    ) -> None:
        """`server_public_key`: the key the device pins (udp-dtls.md §1.3). `session`: offer it for an
        abbreviated handshake (RFC 5246 §7.3)."""
        config = config or ClientConfig()
        super().__init__(Role.CLIENT, State.AWAIT_SERVER_FLIGHT, Step.CLIENT_HELLO, config, random_bytes)
        if not isinstance(device_key.curve, ec.SECP256R1):
            raise LocalDtlsError("a UDP device key is an EC P-256 key (udp-dtls.md §1.2)")
        if _start and server_public_key is None and not config.accept_x509_server_certificate:
            raise LocalDtlsError("the device pins the server key: pass server_public_key")
        if session is not None and session.role != "client":
            raise LocalDtlsError("a server session cannot be offered by a client")
        self._device_key = device_key
        self._server_key = server_public_key
        self._offered_session = session
        self._cookies = 0
        self._phase = "hello"
        self._certificate_requested = False
        self._server_point = b""
        self._reassembler.next_seq = 0
        if _start:  # False only for `resume`, which starts established
            self.client_random = random_bytes(32)
            self._send_client_hello(b"", now)

    @classmethod
    def resume(
        cls,
        session: Session,
        device_key: ec.EllipticCurvePrivateKey,
        *,
        now: float,
        random_bytes: RandomBytes,
        config: ClientConfig | None = None,
        move: MoveSession = MoveSession.NONE,
        device_id: bytes = b"",
        sequence_gap: int = 0,
    ) -> ClientEndpoint:
        """The device restoring a saved session: keys derived again, counters and window restored,
        application data at once, no DTLS message exchanged (DO `SessionPersist::restore`)."""
        if session.role != "client":
            raise LocalDtlsError("a server session cannot be imported into a client endpoint")
        if move is MoveSession.DEVICE_ID and not device_id:
            raise LocalDtlsError("type-254 records carry the device id: pass device_id")
        endpoint = cls(device_key, None, now=now, random_bytes=random_bytes, config=config, _start=False)
        endpoint.records.peer_cid = session.connection_id
        endpoint._restore(session, is_server=False, sequence_gap=sequence_gap)
        endpoint._machine.advance(Trigger.SESSION_IMPORTED)
        endpoint._step = Step.RECORD
        if move is MoveSession.ALT_CID:
            endpoint._move = b""
        elif move is MoveSession.DEVICE_ID:
            endpoint._move = device_id
        return endpoint

    @property
    def connection_id(self) -> bytes:
        return self.records.peer_cid

    @property
    def client_config(self) -> ClientConfig:
        assert isinstance(self.config, ClientConfig)
        return self.config

    # -- handshake --------------------------------------------------------------------------------------

    def _send_client_hello(self, cookie: bytes, now: float) -> None:
        # The extensions Device OS sends, in mbedtls's order (MT `ssl_cli.c` `ssl_write_client_hello`).
        extensions: dict[int, bytes] = {
            Extension.SIGNATURE_ALGORITHMS: b"\x00\x02" + bytes(w.SHA256_ECDSA),
            Extension.SUPPORTED_GROUPS: b"\x00\x02" + w.SECP256R1.to_bytes(2, "big"),
            Extension.EC_POINT_FORMATS: b"\x01\x00",
        }
        if self.client_config.offer_connection_id:
            extensions[Extension.CONNECTION_ID] = b"\x00"  # our own CID is empty (udp-dtls.md §1.3)
        extensions[Extension.CLIENT_CERTIFICATE_TYPE] = bytes([1, w.RAW_PUBLIC_KEY])
        extensions[Extension.SERVER_CERTIFICATE_TYPE] = bytes([1, w.RAW_PUBLIC_KEY])
        session_id = self._offered_session.session_id if self._offered_session else b""
        hello = w.ClientHello(
            w.DTLS_1_2,
            self.client_random,
            session_id,
            cookie,
            (w.CIPHER_SUITE, w.RENEGOTIATION_SCSV),
            b"\x00",
            extensions,
        )
        item = self._flight_message(HandshakeType.CLIENT_HELLO, w.encode_client_hello(hello), 0)
        self._send_flight([item], now, final=False)

    def _on_message(self, message: _Message, now: float) -> bool:
        if self.state is not State.AWAIT_SERVER_FLIGHT and self.state is not State.AWAIT_SERVER_FINISHED:
            self._reassembler.pop()
            self._discard(Reason.UNEXPECTED_MESSAGE, f"handshake message {message.msg_type} in a session")
            return True
        if message.msg_type == HandshakeType.FINISHED:
            if self._phase != "finished":
                raise self._remote_failure(Reason.UNEXPECTED_MESSAGE, "a Finished before our flight")
            if not self._peer_ccs:
                return False  # wait for the ChangeCipherSpec that precedes it (RFC 5246 §7.1)
        self._reassembler.pop()
        try:
            self._handle(message, now)
        except DecodeError as exc:
            raise self._remote_failure(Reason.MALFORMED_MESSAGE, f"message {message.msg_type}: {exc}") from None
        return True

    def _handle(self, message: _Message, now: float) -> None:
        kind, phase = message.msg_type, self._phase
        if message.epoch != (1 if kind == HandshakeType.FINISHED else 0):
            raise self._remote_failure(Reason.UNEXPECTED_MESSAGE, f"message {kind} in epoch {message.epoch}")
        if kind == HandshakeType.HELLO_VERIFY_REQUEST and phase == "hello":
            self._on_hello_verify_request(message.body, now)
            return
        if kind == HandshakeType.FINISHED:
            self._on_finished(message, now)
            return
        self._append_transcript(kind, message.message_seq, message.body)
        self._step = Step.SERVER_FLIGHT
        if kind == HandshakeType.SERVER_HELLO and phase == "hello":
            self._on_server_hello(message.body)
        elif kind == HandshakeType.CERTIFICATE and phase == "certificate":
            self._on_server_certificate(message.body)
        elif kind == HandshakeType.SERVER_KEY_EXCHANGE and phase == "key_exchange":
            self._on_server_key_exchange(message.body)
        elif kind == HandshakeType.CERTIFICATE_REQUEST and phase == "request":
            request = w.decode_certificate_request(message.body)
            if w.ECDSA_SIGN not in request.certificate_types or w.SHA256_ECDSA not in request.signature_algorithms:
                raise self._remote_failure(Reason.UNSUPPORTED_SUITE, "the server does not take ecdsa/sha256")
            self._certificate_requested = True
            self._phase = "done"
        elif kind == HandshakeType.SERVER_HELLO_DONE and phase in ("request", "done"):
            if message.body:
                raise self._remote_failure(Reason.MALFORMED_MESSAGE, "a ServerHelloDone with a body")
            self._on_server_hello_done(now)
        else:
            raise self._remote_failure(Reason.UNEXPECTED_MESSAGE, f"handshake message {kind} during {phase}")

    def _on_hello_verify_request(self, body: bytes, now: float) -> None:
        cookie = w.decode_hello_verify_request(body)
        self._cookies += 1
        if self._cookies > _MAX_HELLO_VERIFY_REQUESTS:
            raise self._remote_failure(Reason.BAD_COOKIE, "the server keeps asking for a cookie")
        # RFC 6347 §4.2.1: the hash starts again with the ClientHello that carries the cookie.
        self._transcript = bytearray()
        self._machine.advance(Trigger.COOKIE_REQUESTED)
        self._send_client_hello(cookie, now)

    def _on_server_hello(self, body: bytes) -> None:
        hello = w.decode_server_hello(body)
        if hello.version != w.DTLS_1_2:
            raise self._remote_failure(Reason.UNSUPPORTED_VERSION, f"server version {hello.version:#06x}")
        if hello.cipher_suite != w.CIPHER_SUITE or hello.compression_method != 0:
            raise self._remote_failure(Reason.UNSUPPORTED_SUITE, f"server chose suite {hello.cipher_suite:#06x}")
        unknown = set(hello.extensions) - _OFFERED_EXTENSIONS
        if unknown or (Extension.CONNECTION_ID in hello.extensions and not self.client_config.offer_connection_id):
            # RFC 5246 §7.4.1.4: a client must abort on an extension it did not offer.
            raise self._remote_failure(Reason.UNSUPPORTED_EXTENSION, f"extensions {sorted(unknown)} not offered")
        self.server_random = hello.random
        self._session_id = hello.session_id
        if Extension.CONNECTION_ID in hello.extensions:
            self.records.peer_cid = w.decode_connection_id(hello.extensions[Extension.CONNECTION_ID])
        offered = self._offered_session
        if offered is not None and hello.session_id and hello.session_id == offered.session_id:
            # Abbreviated handshake: the server's ChangeCipherSpec and Finished come next (RFC 5246 §7.3).
            self.master_secret = offered.master_secret
            self.peer_public_key_der = offered.peer_public_key_der
            self._install_keys(is_server=False)
            self._phase = "finished"
            self._step = Step.FINISHED
            return
        for ext_type in (Extension.CLIENT_CERTIFICATE_TYPE, Extension.SERVER_CERTIFICATE_TYPE):
            chosen = hello.extensions.get(ext_type)
            if chosen is not None and chosen != bytes([w.RAW_PUBLIC_KEY]):
                raise self._remote_failure(Reason.UNSUPPORTED_CERTIFICATE_TYPE, f"certificate type {chosen.hex()}")
        raw_server = Extension.SERVER_CERTIFICATE_TYPE in hello.extensions
        if not raw_server and not self.client_config.accept_x509_server_certificate:
            raise self._remote_failure(
                Reason.UNSUPPORTED_CERTIFICATE_TYPE, "the server did not agree to raw public keys"
            )
        # With raw public keys the device skips the server Certificate without reading a record
        # (MT `ssl_parse_certificate_coordinate`, udp-dtls.md §1.3).
        self._phase = "key_exchange" if raw_server else "certificate"

    def _on_server_certificate(self, body: bytes) -> None:
        chain = w.decode_x509_certificate_list(body)
        if not chain:
            raise self._remote_failure(Reason.BAD_CERTIFICATE, "an empty server certificate list")
        try:
            key = x509.load_der_x509_certificate(chain[0]).public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise self._remote_failure(Reason.BAD_CERTIFICATE, "the server certificate does not parse") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise self._remote_failure(Reason.BAD_CERTIFICATE, "the server certificate key is not EC P-256")
        if self._server_key is None:
            self._server_key = key
        self._phase = "key_exchange"

    def _on_server_key_exchange(self, body: bytes) -> None:
        exchange = w.decode_server_key_exchange(body)
        if exchange.curve != w.SECP256R1:
            raise self._remote_failure(Reason.UNSUPPORTED_CURVE, f"named curve {exchange.curve}")
        if exchange.hash_sig != w.SHA256_ECDSA:
            raise self._remote_failure(Reason.BAD_SIGNATURE, f"ServerKeyExchange algorithm {exchange.hash_sig}")
        assert self._server_key is not None
        digest = sha256(self.client_random + self.server_random + exchange.params)
        if not verify_digest(self._server_key, exchange.signature, digest):
            # The device logs this when it holds another server key (udp-dtls.md §1.3).
            raise self._remote_failure(Reason.BAD_SIGNATURE, "ServerKeyExchange does not verify with the server key")
        self._server_point = exchange.point
        self.peer_public_key_der = spki_of(self._server_key)
        self._phase = "request"

    def _on_server_hello_done(self, now: float) -> None:
        if not self._certificate_requested and not self.client_config.accept_x509_server_certificate:
            raise self._remote_failure(Reason.UNEXPECTED_MESSAGE, "the server did not ask for the device key")
        ephemeral = ephemeral_key(self._random)
        shared = ecdh_shared_secret(ephemeral, self._server_point)
        if shared is None:
            raise self._remote_failure(Reason.BAD_KEY_EXCHANGE, "the server's ECDH point is not on P-256")
        self.master_secret = master_secret(shared, self.client_random, self.server_random)
        self._install_keys(is_server=False)
        flight = []
        if self._certificate_requested:
            spki = spki_of(self._device_key.public_key())
            flight.append(self._flight_message(HandshakeType.CERTIFICATE, w.encode_raw_public_key_certificate(spki), 0))
        flight.append(
            self._flight_message(
                HandshakeType.CLIENT_KEY_EXCHANGE, w.encode_client_key_exchange(point_of(ephemeral)), 0
            )
        )
        if self._certificate_requested:
            signature = sign_digest(self._device_key, self._transcript_hash())
            flight.append(
                self._flight_message(HandshakeType.CERTIFICATE_VERIFY, w.encode_certificate_verify(signature), 0)
            )
        flight.append(self._change_cipher_spec())
        verify = finished_verify_data(self.master_secret, b"client finished", self._transcript_hash())
        flight.append(self._flight_message(HandshakeType.FINISHED, verify, 1))
        self._send_flight(flight, now, final=False)
        self.records.write_epoch = 1
        self._machine.advance(Trigger.SERVER_FLIGHT)
        self._phase = "finished"
        self._step = Step.FINISHED

    def _on_finished(self, message: _Message, now: float) -> None:
        expected = finished_verify_data(self.master_secret, b"server finished", self._transcript_hash())
        if message.body != expected:
            raise self._remote_failure(Reason.BAD_FINISHED, "the server's Finished does not match the handshake")
        self._append_transcript(message.msg_type, message.message_seq, message.body)
        resumed = self.state is State.AWAIT_SERVER_FLIGHT
        if resumed:
            # Abbreviated handshake: our ChangeCipherSpec and Finished are the last flight (RFC 5246 §7.3).
            ccs = self._change_cipher_spec()
            verify = finished_verify_data(self.master_secret, b"client finished", self._transcript_hash())
            self._send_flight([ccs, self._flight_message(HandshakeType.FINISHED, verify, 1)], now, final=True)
            self.records.write_epoch = 1
        else:
            self._stop_retransmitting()
            self._flight = []
        self._machine.advance(Trigger.FINISHED)
        self._step = Step.RECORD
        self._events.append(
            HandshakeCompleted(self.peer_public_key_der, self.connection_id, self._session(), resumed=resumed)
        )
        self._flush_early_data()
