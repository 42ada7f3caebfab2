"""Fuzz targets for the DTLS parsers and endpoints, shared by the short runs in `test_fuzz.py` and the long
runs of `scripts/fuzz-dtls`. Each target takes arbitrary bytes; anything it raises other than the package's
own `RemoteDtlsError` (or `DecodeError` from a bare parser) is a bug.

The endpoint targets start from real handshake state made with seeded randomness, so that the recorded
datagrams of `seeds()` are valid input for them and the fuzzer starts deep inside the handshake.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterator
from functools import cache

from cyan.dtls import ClientEndpoint, Event, RemoteDtlsError, ServerEndpoint, Session
from cyan.dtls import _wire as w

from .support import DEVICE_KEY, SERVER_KEY, seeded

_DECODERS: list[Callable[[bytes], object]] = [
    w.decode_client_hello,
    w.decode_server_hello,
    w.decode_hello_verify_request,
    w.decode_server_key_exchange,
    w.decode_certificate_request,
    w.decode_raw_public_key_certificate,
    w.decode_x509_certificate_list,
    w.decode_client_key_exchange,
    w.decode_certificate_verify,
    w.decode_alert,
    w.decode_uint8_list,
    w.decode_uint16_list,
    w.decode_connection_id,
    w.parse_handshake_fragments,
]


def split_datagrams(data: bytes) -> Iterator[bytes]:
    """Fuzz input framing: [2-byte length][datagram] repeated; a short tail is one more datagram."""
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            yield data[pos:]
            return
        (length,) = struct.unpack_from(">H", data, pos)
        pos += 2
        yield data[pos : pos + length]
        pos += length


def join_datagrams(datagrams: list[bytes]) -> bytes:
    return b"".join(struct.pack(">H", len(d)) + d for d in datagrams)


@cache
def _recording() -> tuple[bytes, list[bytes], list[bytes], Session, bytes]:
    """A handshake without cookies, both sides reproducible: (ClientHello, the server's flight, the device's
    flight, the server's session, an application-data datagram from the device)."""
    client = _client()
    (hello,) = client.datagrams_to_send()
    server = _server(hello)
    server_flight = server.datagrams_to_send()
    for datagram in server_flight:
        client.receive_datagram(datagram, 0.0)
    client_flight = client.datagrams_to_send()
    for datagram in client_flight:
        server.receive_datagram(datagram, 0.0)
    server.accept(0.0)
    for datagram in server.datagrams_to_send():
        client.receive_datagram(datagram, 0.0)
    assert client.established
    session = server.export_session()
    client.send_application_data(b"\x40\x01\x00\x01", 0.0)
    (data,) = client.datagrams_to_send()
    return hello, server_flight, client_flight, session, data


def _client() -> ClientEndpoint:
    return ClientEndpoint(DEVICE_KEY, SERVER_KEY.public_key(), now=0.0, random_bytes=seeded(111))


def _server(hello: bytes) -> ServerEndpoint:
    server = ServerEndpoint(SERVER_KEY, now=0.0, random_bytes=seeded(99))
    server.receive_datagram(hello, 0.0)
    return server


def _check(events: list[Event]) -> None:
    assert all(isinstance(e, Event) for e in events)


def _feed(endpoint: ServerEndpoint | ClientEndpoint, data: bytes, *, may_raise: bool) -> None:
    for datagram in split_datagrams(data):
        try:
            endpoint.receive_datagram(datagram, 1.0)
        except RemoteDtlsError:
            if not may_raise:
                raise
            return
        events = []
        while (event := endpoint.next_event()) is not None:
            events.append(event)
        _check(events)
        endpoint.datagrams_to_send()
        if endpoint.state.value == "await_decision":
            assert isinstance(endpoint, ServerEndpoint)
            endpoint.accept(1.0)


def fuzz_records(data: bytes) -> None:
    cid_length = data[0] % 9 if data else 0
    records, _ = w.parse_records(data[1:], cid_length, max_fragment=1 << 15)
    for record in records:
        try:
            for fragment in w.parse_handshake_fragments(record.fragment):
                for decoder in _DECODERS:
                    with contextlib.suppress(w.DecodeError):
                        decoder(fragment.body)
        except w.DecodeError:
            pass
    w.split_move_trailer(data)


def fuzz_handshake(data: bytes) -> None:
    for decoder in _DECODERS:
        with contextlib.suppress(w.DecodeError):
            decoder(data)


def fuzz_server(data: bytes) -> None:
    """A server that has sent its flight, fed the device's flight as mutated by the fuzzer."""
    hello = _recording()[0]
    _feed(_server(hello), data, may_raise=True)


def fuzz_client(data: bytes) -> None:
    """A device that sent its ClientHello, fed the server's flight as mutated by the fuzzer."""
    client = _client()
    client.datagrams_to_send()
    _feed(client, data, may_raise=True)


def fuzz_established(data: bytes) -> None:
    """An established server (restored from a session): garbage is discarded, never raised."""
    session = _recording()[3]
    server = ServerEndpoint.from_session(session, SERVER_KEY, now=0.0, random_bytes=seeded(5), sequence_gap=0)
    _feed(server, data, may_raise=False)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "records": fuzz_records,
    "handshake": fuzz_handshake,
    "server": fuzz_server,
    "client": fuzz_client,
    "established": fuzz_established,
}


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start a corpus from."""
    hello, server_flight, client_flight, _, data = _recording()
    if target == "server":
        return [join_datagrams(client_flight), *(join_datagrams([d]) for d in client_flight)]
    if target == "client":
        return [join_datagrams(server_flight)]
    if target == "established":
        return [join_datagrams([data])]
    if target == "records":
        return [b"\x08" + d for d in client_flight] + [b"\x00" + d for d in server_flight]
    return [hello[25:], *(d[25:] for d in server_flight)]
