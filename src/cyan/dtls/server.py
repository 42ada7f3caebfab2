"""The server role: `ServerEndpoint`, one per device association (udp-dtls.md §1.3, §1.4).

Life of an endpoint::

    listener: CookieVerifier.check(datagram, address, now)   -> HelloVerifyRequest, or verified
    ServerEndpoint(server_key, now=..., random_bytes=...)
    receive_datagram(ClientHello with cookie)   -> ServerHello, ServerKeyExchange, CertificateRequest,
                                                   ServerHelloDone queued (no Certificate, §1.3)
    receive_datagram(Certificate .. Finished)   -> DeviceKeyPresented        (caller: accept() or reject())
    accept(now)                                 -> ChangeCipherSpec, Finished queued; HandshakeCompleted
    ... ApplicationDataReceived / send_application_data

Or, for a session the device resumes without any handshake (udp-dtls.md §1.4),
`ServerEndpoint.from_session(session, now=...)` and feed it the device's CID (25/253) or type-254 records.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from . import _wire as w
from ._crypto import (
    RandomBytes,
    RecordProtection,
    ecdh_shared_secret,
    ephemeral_key,
    finished_verify_data,
    key_block,
    load_p256_spki,
    master_secret,
    point_of,
    sha256,
    sign_digest,
    verify_digest,
)
from ._endpoint import BaseEndpoint, EndpointConfig, _Message
from ._errors import LocalDtlsError, Reason, Step
from ._record import RecordLayer, ReplayWindow
from ._state import Role, State, Trigger
from ._wire import DecodeError, Extension, HandshakeFragment, HandshakeType, Record
from .events import DeviceKeyPresented, HandshakeCompleted
from .session import Session

__all__ = ["DEFAULT_SEQUENCE_GAP", "ServerConfig", "ServerEndpoint", "SessionOpener", "session_opens"]

#: Write sequence numbers skipped when a session is imported (see `BaseEndpoint._restore`): a process that
#: died after its last export may have sent up to this many records more with the same keys.
DEFAULT_SEQUENCE_GAP = 1 << 20


@dataclass(frozen=True, slots=True)
class ServerConfig(EndpointConfig):
    #: Size of the CID the server assigns; Device OS ≥ 3.1 requires exactly 8 (udp-dtls.md §1.3).
    connection_id_size: int = 8
    #: Refuse devices that do not offer the CID extension (firmware before 3.1 does not).
    require_connection_id: bool = False
    #: The device proved its key -> the caller must accept or reject within this time.
    decision_timeout: float = 15.0
    #: Tests against stock stacks only (OpenSSL has no raw public keys): a DER certificate to send to a
    #: client that does not offer raw public keys, whose own X.509 certificate is then taken for its key.
    #: Device OS always offers raw keys, so with Particle devices this is never used.
    x509_certificate: bytes | None = None


_EXPECTED = {
    HandshakeType.CERTIFICATE: Step.CERTIFICATE,
    HandshakeType.CLIENT_KEY_EXCHANGE: Step.CLIENT_KEY_EXCHANGE,
    HandshakeType.CERTIFICATE_VERIFY: Step.CERTIFICATE_VERIFY,
    HandshakeType.FINISHED: Step.FINISHED,
}
_ORDER = [
    HandshakeType.CERTIFICATE,
    HandshakeType.CLIENT_KEY_EXCHANGE,
    HandshakeType.CERTIFICATE_VERIFY,
    HandshakeType.FINISHED,
]


class ServerEndpoint(BaseEndpoint):
    """The server side of one association. Time (`now`) and randomness (`random_bytes`) are injected."""

    __slots__ = (
        "_decision_at",
        "_device_key",
        "_ephemeral",
        "_expect",
        "_own_cid",
        "_resumable",
        "_server_key",
        "_x509_client",
    )

    def __init__(
        self,
        server_key: ec.EllipticCurvePrivateKey,
        *,
        now: float,
        random_bytes: RandomBytes,
        config: ServerConfig | None = None,
        connection_id: bytes | None = None,
        resumable: Session | None = None,
    ) -> None:
        """`connection_id`: the CID to assign (the listener may pick it to keep them unique); by default
        `connection_id_size` random bytes. `resumable`: the session the ClientHello names, if the caller
        holds it, for an abbreviated handshake (RFC 5246 §7.3)."""
        config = config or ServerConfig()
        super().__init__(Role.SERVER, State.AWAIT_CLIENT_HELLO, Step.CLIENT_HELLO, config, random_bytes)
        if not isinstance(server_key.curve, ec.SECP256R1):
            raise LocalDtlsError("the UDP server key is an EC P-256 key (udp-dtls.md §1.2)")
        if resumable is not None and resumable.role != "server":
            raise LocalDtlsError("a client session cannot be resumed by a server")
        self._server_key = server_key
        self._own_cid = connection_id if connection_id is not None else random_bytes(config.connection_id_size)
        self._resumable = resumable
        self._ephemeral: ec.EllipticCurvePrivateKey | None = None
        self._device_key: ec.EllipticCurvePublicKey | None = None
        self._x509_client = False
        self._expect = 0
        self._decision_at: float | None = None

    @classmethod
    def from_session(
        cls,
        session: Session,
        server_key: ec.EllipticCurvePrivateKey,
        *,
        now: float,
        random_bytes: RandomBytes,
        config: ServerConfig | None = None,
        sequence_gap: int = DEFAULT_SEQUENCE_GAP,
    ) -> ServerEndpoint:
        """An established endpoint carrying on `session`, for a device that resumes with no handshake at
        all: it restores its keys and counters and sends application data at once (udp-dtls.md §1.4)."""
        if session.role != "server":
            raise LocalDtlsError("a client session cannot be imported into a server endpoint")
        endpoint = cls(
            server_key, now=now, random_bytes=random_bytes, config=config, connection_id=session.connection_id
        )
        endpoint.records.own_cid = session.connection_id
        endpoint._restore(session, is_server=True, sequence_gap=sequence_gap)
        endpoint._machine.advance(Trigger.SESSION_IMPORTED)
        endpoint._step = Step.RECORD
        return endpoint

    @property
    def connection_id(self) -> bytes:
        return self.records.own_cid

    @property
    def server_config(self) -> ServerConfig:
        assert isinstance(self.config, ServerConfig)
        return self.config

    # -- timers ---------------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        if self.closed:
            return None
        due = [t for t in (self._retransmit_at, self._decision_at) if t is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> None:
        if self._decision_at is not None and now >= self._decision_at and not self.closed:
            self._decision_at = None
            self._close_with(
                Reason.DECISION_TIMEOUT, "no accept or reject decision in time", w.AlertDescription.INTERNAL_ERROR
            )
            return
        super().handle_timer(now)

    # -- the caller's decision ------------------------------------------------------------------------

    def accept(self, now: float) -> None:
        """Trust the presented key: finish the handshake (ChangeCipherSpec, Finished) and establish."""
        if self.state is not State.AWAIT_DECISION:
            raise LocalDtlsError(f"accept() needs a device awaiting a decision, not {self.state.value!r}")
        self._decision_at = None
        ccs = self._change_cipher_spec()
        verify = finished_verify_data(self.master_secret, b"server finished", self._transcript_hash())
        finished = self._flight_message(HandshakeType.FINISHED, verify, 1)
        # Our last flight: resent only when the device resends its own (RFC 6347 §4.2.4).
        self._send_flight([ccs, finished], now, final=True)
        self.records.write_epoch = 1
        self._machine.advance(Trigger.ACCEPTED)
        self._step = Step.RECORD
        self._events.append(HandshakeCompleted(self.peer_public_key_der, self.connection_id, self._session()))
        self._flush_early_data()

    def reject(self, reason: Reason, now: float, detail: str = "") -> None:
        """Refuse the device: a fatal access_denied alert, and the endpoint closes."""
        if self.state is not State.AWAIT_DECISION:
            raise LocalDtlsError(f"reject() needs a device awaiting a decision, not {self.state.value!r}")
        self._decision_at = None
        self._close_with(reason, detail or f"rejected: {reason.value}", w.AlertDescription.ACCESS_DENIED)

    # -- handshake --------------------------------------------------------------------------------------

    def _receive_record(self, record: Record, now: float) -> bool:
        if self.state is State.AWAIT_CLIENT_HELLO and record.epoch == 0:
            # RFC 6347 §4.2.1: our epoch-0 records continue from the ClientHello's sequence number, as the
            # stateless HelloVerifyRequest copied the first one; the device's replay window has seen it.
            sequences = self.records.write_sequences
            sequences[0] = max(sequences[0], record.sequence)
        return super()._receive_record(record, now)

    def _add_fragment(self, fragment: HandshakeFragment, epoch: int) -> bool | None:
        if self._reassembler.next_seq is None:
            # The ClientHello the listener verified fixes the message_seq (RFC 6347 §4.2.2): 0, or 1
            # after a HelloVerifyRequest. Like mbedtls, only an unfragmented one is taken.
            if (
                fragment.msg_type != HandshakeType.CLIENT_HELLO
                or epoch != 0
                or fragment.offset != 0
                or len(fragment.body) != fragment.length
            ):
                self._discard(Reason.UNEXPECTED_MESSAGE, "the first message is not a whole ClientHello")
                return None
            self._reassembler.next_seq = fragment.message_seq
            self._next_send_seq = fragment.message_seq  # ServerHello takes the ClientHello's number
        return super()._add_fragment(fragment, epoch)

    def _on_message(self, message: _Message, now: float) -> bool:
        state = self.state
        if state is State.AWAIT_CLIENT_HELLO:
            self._reassembler.pop()
            self._on_client_hello(message, now)
            return True
        if state is State.AWAIT_CLIENT_FLIGHT:
            return self._on_client_flight(message, now)
        if state is State.AWAIT_CLIENT_FINISHED:
            if message.msg_type != HandshakeType.FINISHED:
                raise self._remote_failure(
                    Reason.UNEXPECTED_MESSAGE, f"handshake message {message.msg_type} instead of Finished"
                )
            if not self._peer_ccs:
                return False
            self._reassembler.pop()
            self._check_finished(message)
            self._machine.advance(Trigger.FINISHED)
            self._step = Step.RECORD
            self._stop_retransmitting()
            self._flight = []
            self._events.append(
                HandshakeCompleted(self.peer_public_key_der, self.connection_id, self._session(), resumed=True)
            )
            self._flush_early_data()
            return True
        # Established, or awaiting the decision: a new message here has no place in the handshake.
        self._reassembler.pop()
        self._discard(Reason.UNEXPECTED_MESSAGE, f"handshake message {message.msg_type} after the client flight")
        return True

    def _on_client_hello(self, message: _Message, now: float) -> None:
        try:
            hello = w.decode_client_hello(message.body)
        except DecodeError as exc:
            raise self._remote_failure(Reason.MALFORMED_MESSAGE, f"ClientHello: {exc}") from None
        self._check_client_hello(hello)
        self._append_transcript(message.msg_type, message.message_seq, message.body)
        self.client_random = hello.random
        self.server_random = self._random(32)
        extensions: dict[int, bytes] = {}
        if Extension.RENEGOTIATION_INFO in hello.extensions or w.RENEGOTIATION_SCSV in hello.cipher_suites:
            extensions[Extension.RENEGOTIATION_INFO] = b"\x00"  # RFC 5746 §3.6: an empty renegotiated_connection
        if Extension.CONNECTION_ID in hello.extensions:
            # draft-05 §3: our CID for the device to put in its records; the device's own is empty, so our
            # records carry none (udp-dtls.md §1.3, CID_IN_LEN_MAX 0).
            extensions[Extension.CONNECTION_ID] = bytes([len(self._own_cid)]) + self._own_cid
            self.records.own_cid = self._own_cid
            self.records.peer_cid = w.decode_connection_id(hello.extensions[Extension.CONNECTION_ID])
        else:
            self.records.own_cid = b""
        resumable = self._resumable
        if resumable is not None and hello.session_id and hello.session_id == resumable.session_id:
            self._resume(hello, resumable, extensions, now)
            return
        if Extension.EC_POINT_FORMATS in hello.extensions:
            extensions[Extension.EC_POINT_FORMATS] = b"\x01\x00"  # uncompressed only (RFC 4492 §5.2)
        # RFC 7250 §4.2: the server answers each certificate-type extension with the one type chosen.
        certificate = []
        if Extension.CLIENT_CERTIFICATE_TYPE in hello.extensions:
            extensions[Extension.CLIENT_CERTIFICATE_TYPE] = bytes([w.RAW_PUBLIC_KEY])
        else:
            self._x509_client = True  # only reachable with `x509_certificate` (see _check_client_hello)
        if Extension.SERVER_CERTIFICATE_TYPE in hello.extensions:
            extensions[Extension.SERVER_CERTIFICATE_TYPE] = bytes([w.RAW_PUBLIC_KEY])
        elif self.server_config.x509_certificate is not None:
            certificate = [
                (HandshakeType.CERTIFICATE, w.encode_x509_certificate_list([self.server_config.x509_certificate]))
            ]
        self._session_id = self._random(32)
        server_hello = w.ServerHello(w.DTLS_1_2, self.server_random, self._session_id, w.CIPHER_SUITE, 0, extensions)
        self._ephemeral = ephemeral_key(self._random)
        params = w.encode_server_key_exchange_params(point_of(self._ephemeral))
        # RFC 4492 §5.4: the signature covers both randoms and the ECDH parameters. It is the only proof of
        # the server's identity: the device pins our key and gets no Certificate (udp-dtls.md §1.3).
        digest = sha256(self.client_random + self.server_random + params)
        key_exchange = w.encode_server_key_exchange(params, sign_digest(self._server_key, digest))
        flight = [
            self._flight_message(HandshakeType.SERVER_HELLO, w.encode_server_hello(server_hello), 0),
            *(self._flight_message(kind, body, 0) for kind, body in certificate),
            self._flight_message(HandshakeType.SERVER_KEY_EXCHANGE, key_exchange, 0),
            self._flight_message(HandshakeType.CERTIFICATE_REQUEST, w.encode_certificate_request(), 0),
            self._flight_message(HandshakeType.SERVER_HELLO_DONE, b"", 0),
        ]
        self._send_flight(flight, now, final=False)
        self._machine.advance(Trigger.CLIENT_HELLO)
        self._step = Step.CERTIFICATE

    def _check_client_hello(self, hello: w.ClientHello) -> None:
        def fail(reason: Reason, detail: str) -> None:
            raise self._remote_failure(reason, detail)

        if hello.version > w.DTLS_1_2:  # DTLS versions count down: 0xFEFF is 1.0 (RFC 6347 §4.1)
            fail(Reason.UNSUPPORTED_VERSION, f"the client offers at most version {hello.version:#06x}")
        if w.CIPHER_SUITE not in hello.cipher_suites:
            fail(Reason.UNSUPPORTED_SUITE, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 not offered")
        if 0 not in hello.compression_methods:
            fail(Reason.UNSUPPORTED_SUITE, "null compression not offered")
        ext = hello.extensions
        try:
            if Extension.SUPPORTED_GROUPS in ext and w.SECP256R1 not in w.decode_uint16_list(
                ext[Extension.SUPPORTED_GROUPS]
            ):
                fail(Reason.UNSUPPORTED_CURVE, "secp256r1 not offered")
            if Extension.EC_POINT_FORMATS in ext and 0 not in w.decode_uint8_list(ext[Extension.EC_POINT_FORMATS]):
                fail(Reason.UNSUPPORTED_CURVE, "uncompressed points not offered")
            if Extension.SIGNATURE_ALGORITHMS in ext and 0x0403 not in w.decode_uint16_list(
                ext[Extension.SIGNATURE_ALGORITHMS]
            ):
                fail(Reason.UNSUPPORTED_SUITE, "ecdsa_secp256r1_sha256 not offered")
            for ext_type, name in (
                (Extension.CLIENT_CERTIFICATE_TYPE, "client"),
                (Extension.SERVER_CERTIFICATE_TYPE, "server"),
            ):
                # The device offers raw public keys both ways (udp-dtls.md §1.3); without the server type it
                # would expect a Certificate we do not send.
                if ext_type not in ext and self.server_config.x509_certificate is not None:
                    continue
                if ext_type not in ext or w.RAW_PUBLIC_KEY not in w.decode_uint8_list(ext[ext_type]):
                    fail(Reason.UNSUPPORTED_CERTIFICATE_TYPE, f"raw public keys not offered for the {name}")
            if Extension.CONNECTION_ID in ext:
                w.decode_connection_id(ext[Extension.CONNECTION_ID])
            elif self.server_config.require_connection_id:
                fail(Reason.UNSUPPORTED_EXTENSION, "no connection id offered (Device OS before 3.1)")
            if ext.get(Extension.RENEGOTIATION_INFO, b"\x00") != b"\x00":
                fail(Reason.UNEXPECTED_MESSAGE, "a renegotiation ClientHello")
        except DecodeError as exc:
            fail(Reason.MALFORMED_MESSAGE, f"ClientHello extension: {exc}")

    def _resume(self, hello: w.ClientHello, session: Session, extensions: dict[int, bytes], now: float) -> None:
        """RFC 5246 §7.3 abbreviated handshake: ServerHello naming the session, ChangeCipherSpec, Finished,
        with the session's master secret and fresh randoms. The device key was accepted with the session."""
        self._session_id = session.session_id
        self.master_secret = session.master_secret
        self.peer_public_key_der = session.peer_public_key_der
        server_hello = w.ServerHello(w.DTLS_1_2, self.server_random, session.session_id, w.CIPHER_SUITE, 0, extensions)
        self._machine.advance(Trigger.RESUMPTION_OFFERED)
        self._step = Step.FINISHED
        first = self._flight_message(HandshakeType.SERVER_HELLO, w.encode_server_hello(server_hello), 0)
        self._install_keys(is_server=True)
        verify = finished_verify_data(self.master_secret, b"server finished", self._transcript_hash())
        finished = self._flight_message(HandshakeType.FINISHED, verify, 1)
        self._send_flight([first, self._change_cipher_spec(), finished], now, final=False)
        self.records.write_epoch = 1

    def _on_client_flight(self, message: _Message, now: float) -> bool:
        expected = _ORDER[self._expect]
        if message.msg_type != expected:
            raise self._remote_failure(
                Reason.UNEXPECTED_MESSAGE, f"handshake message {message.msg_type} where {expected.name} belongs"
            )
        if expected is HandshakeType.FINISHED and not self._peer_ccs:
            return False  # the Finished overtook the ChangeCipherSpec: wait for it (RFC 5246 §7.1)
        if (message.epoch == 1) != (expected is HandshakeType.FINISHED):
            raise self._remote_failure(Reason.UNEXPECTED_MESSAGE, f"{expected.name} in epoch {message.epoch}")
        self._reassembler.pop()
        try:
            if expected is HandshakeType.CERTIFICATE:
                self._on_certificate(message.body)
            elif expected is HandshakeType.CLIENT_KEY_EXCHANGE:
                self._on_client_key_exchange(message.body)
            elif expected is HandshakeType.CERTIFICATE_VERIFY:
                self._on_certificate_verify(message.body)
            else:
                self._check_finished(message)
        except DecodeError as exc:
            raise self._remote_failure(Reason.MALFORMED_MESSAGE, f"{expected.name}: {exc}") from None
        if expected is not HandshakeType.FINISHED:
            self._append_transcript(message.msg_type, message.message_seq, message.body)
        self._expect += 1
        if self._expect < len(_ORDER):
            self._step = _EXPECTED[_ORDER[self._expect]]
            return True
        # The whole flight verified: stop resending ours (the device has it) and ask the caller about the key.
        self._stop_retransmitting()
        self._flight = []
        self._machine.advance(Trigger.CLIENT_FLIGHT)
        self._step = Step.DECISION
        self._decision_at = now + self.server_config.decision_timeout
        self._events.append(DeviceKeyPresented(self.peer_public_key_der))
        return True

    def _on_certificate(self, body: bytes) -> None:
        if self._x509_client:
            spki = _spki_of_x509(w.decode_x509_certificate_list(body))
        else:
            spki = w.decode_raw_public_key_certificate(body)
        key = load_p256_spki(spki)
        if key is None:
            raise self._remote_failure(Reason.BAD_CERTIFICATE, "the raw public key is not an EC P-256 key")
        self._device_key = key
        self.peer_public_key_der = spki

    def _on_client_key_exchange(self, body: bytes) -> None:
        point = w.decode_client_key_exchange(body)
        assert self._ephemeral is not None
        shared = ecdh_shared_secret(self._ephemeral, point)
        if shared is None:
            raise self._remote_failure(Reason.BAD_KEY_EXCHANGE, "the device's ECDH point is not on P-256")
        self._ephemeral = None
        self.master_secret = master_secret(shared, self.client_random, self.server_random)
        self._install_keys(is_server=True)

    def _on_certificate_verify(self, body: bytes) -> None:
        hash_sig, signature = w.decode_certificate_verify(body)
        assert self._device_key is not None
        if hash_sig != w.SHA256_ECDSA:
            raise self._remote_failure(Reason.BAD_SIGNATURE, f"CertificateVerify with algorithm {hash_sig}")
        # RFC 5246 §7.4.8: the signature covers every handshake message so far.
        if not verify_digest(self._device_key, signature, self._transcript_hash()):
            raise self._remote_failure(Reason.BAD_SIGNATURE, "CertificateVerify does not verify with the device key")

    def _check_finished(self, message: _Message) -> None:
        if message.epoch != 1:
            raise self._remote_failure(Reason.UNEXPECTED_MESSAGE, "a Finished outside epoch 1")
        expected = finished_verify_data(self.master_secret, b"client finished", self._transcript_hash())
        if message.body != expected:
            raise self._remote_failure(Reason.BAD_FINISHED, "the device's Finished does not match the handshake")
        self._append_transcript(message.msg_type, message.message_seq, message.body)


class SessionOpener:
    """Whether records authenticate under one server session (see `session_opens`), its keys derived once: for
    a listener that tries many records naming a device against that device's sessions."""

    __slots__ = ("_read", "_write", "session")

    def __init__(self, session: Session) -> None:
        if session.role != "server":
            raise LocalDtlsError("a client session cannot check records from a device")
        keys = key_block(session.master_secret, session.client_random, session.server_random)
        self.session = session
        self._read = RecordProtection(keys.client_key, keys.client_iv)
        self._write = RecordProtection(keys.server_key, keys.server_iv)

    def opens(self, datagram: bytes) -> bool:
        session = self.session
        records, _ = w.parse_records(datagram, len(session.connection_id), max_fragment=len(datagram))
        if not records or records[0].epoch != session.epoch:
            return False
        layer = RecordLayer(own_cid=session.connection_id)
        layer.install(session.epoch, read=self._read, write=self._write)
        layer.set_window(session.epoch, ReplayWindow(session.read_top, session.read_bitmap))
        return not isinstance(layer.open(records[0]), Reason)


def session_opens(session: Session, datagram: bytes) -> bool:
    """Whether the first record of `datagram` authenticates as the device's under `session` (a server
    session), and is not a replay by its replay window; nothing is changed. For a listener with several
    sessions a datagram may belong to (a Device OS ≤ 2.x type-254 record names a device, not a session:
    udp-dtls.md §1.4) to pick the one before it moves anything."""
    return SessionOpener(session).opens(datagram)


def _spki_of_x509(chain: list[bytes]) -> bytes:
    """The key of the first certificate, for the test-only X.509 variant; b"" when there is none."""
    if not chain:
        return b""
    try:
        key = x509.load_der_x509_certificate(chain[0]).public_key()
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, UnsupportedAlgorithm):
        return b""
