"""The device-role endpoint against an independent stack: OpenSSL's `s_server -dtls1_2` over a real
loopback UDP socket, with the one suite (ECDHE-ECDSA-AES128-CCM8) and a HelloVerifyRequest (-listen).

OpenSSL 3.0 has neither raw public keys, nor CID, nor a way to send no Certificate (udp-dtls.md §3), so this
runs the certificate variant: the client takes OpenSSL's X.509 Certificate (its key pinned all the same,
the ServerKeyExchange signature still checked) and no CertificateRequest. What it proves is shared with the
Particle profile: the cookie exchange, the transcript and Finished, the PRF and key schedule, the CCM_8
record protection, epochs and sequence numbers. OpenSSL's key log gives the master secret to compare.
"""

from __future__ import annotations

import datetime
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cyan.dtls import (
    ApplicationDataReceived,
    ClientConfig,
    ClientEndpoint,
    CookieVerifier,
    DeviceKeyPresented,
    Event,
    HandshakeCompleted,
    ServerConfig,
    ServerEndpoint,
)

from .support import DEVICE_KEY, fixed_key, seeded

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")

DEADLINE = 30.0


def _certificate(tmp_path: Path, seed: int = 7) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    tmp_path.mkdir(exist_ok=True)
    key = fixed_key(seed)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cyan-interop")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=36500))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, key


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _read_until(stream: subprocess.Popen[bytes], needle: bytes, deadline: float) -> bytes:
    assert stream.stdout is not None
    seen = b""
    fd = stream.stdout.fileno()
    while needle not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stream.poll() is not None:
            raise AssertionError(f"openssl did not print {needle!r}: {seen[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            seen += os.read(fd, 65536)
    return seen


def test_handshake_and_records_against_openssl_s_server(tmp_path: Path) -> None:
    cert_path, key_path, server_key = _certificate(tmp_path)
    port = _free_udp_port()
    keylog = tmp_path / "keys.log"
    server = subprocess.Popen(
        ["openssl", "s_server", "-dtls1_2", "-listen", "-cipher", "ECDHE-ECDSA-AES128-CCM8",
         "-cert", str(cert_path), "-key", str(key_path), "-accept", f"127.0.0.1:{port}",
         "-keylogfile", str(keylog), "-mtu", "1200"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        deadline = time.monotonic() + DEADLINE
        _read_until(server, b"ACCEPT", deadline)
        sock.bind(("127.0.0.1", 0))
        sock.connect(("127.0.0.1", port))
        start = time.monotonic()
        client = ClientEndpoint(
            DEVICE_KEY,
            server_key.public_key(),
            now=0.0,
            random_bytes=seeded(21),
            config=ClientConfig(accept_x509_server_certificate=True, retransmit_initial=1.0),
        )
        events: list[Event] = []

        def pump(until: type[Event]) -> None:
            """Drive the endpoint on real time until an event of `until` arrives."""
            while not any(isinstance(e, until) for e in events):
                assert time.monotonic() < deadline, events
                for datagram in client.datagrams_to_send():
                    sock.send(datagram)
                now = time.monotonic() - start
                timer = client.get_timer()
                wait = 0.2 if timer is None else max(0.0, min(0.2, timer - now))
                ready, _, _ = select.select([sock], [], [], wait)
                now = time.monotonic() - start
                if ready:
                    client.receive_datagram(sock.recv(65536), now)
                client.handle_timer(now)
                while (event := client.next_event()) is not None:
                    events.append(event)
            for datagram in client.datagrams_to_send():
                sock.send(datagram)

        pump(HandshakeCompleted)
        (done,) = [e for e in events if isinstance(e, HandshakeCompleted)]
        assert done.connection_id == b""  # OpenSSL ignores the draft CID extension

        client.send_application_data(b"hello from cyan\n", time.monotonic() - start)
        for datagram in client.datagrams_to_send():
            sock.send(datagram)
        _read_until(server, b"hello from cyan", deadline)
        assert server.stdin is not None
        server.stdin.write(b"hello from openssl\n")
        server.stdin.flush()
        pump(ApplicationDataReceived)
        received = [e.data for e in events if isinstance(e, ApplicationDataReceived)]
        assert received == [b"hello from openssl\n"]
        # OpenSSL's NSS-format key log names our client random and the master secret it derived.
        lines = [line.split() for line in keylog.read_text().splitlines() if line.startswith("CLIENT_RANDOM")]
        assert [bytes.fromhex(line[1]) for line in lines] == [client.client_random]
        assert bytes.fromhex(lines[0][2]) == client.master_secret
    finally:
        sock.close()
        server.kill()
        server.wait(timeout=10)
        for pipe in (server.stdin, server.stdout):
            if pipe is not None:
                pipe.close()


def test_openssl_s_client_against_the_server_endpoint(tmp_path: Path) -> None:
    """The server role against OpenSSL's `s_client -dtls1_2` with a client certificate: our cookie check
    answers its first ClientHello, the server flight (with the test-only X.509 Certificate), OpenSSL's
    CertificateVerify and Finished verified, the decision asked for, records both ways."""
    cert_path, _, server_key = _certificate(tmp_path)
    device_cert, device_key_path, device_key = _certificate(tmp_path / "device", seed=8)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = subprocess.Popen(
        ["openssl", "s_client", "-dtls1_2", "-cipher", "ECDHE-ECDSA-AES128-CCM8", "-connect", f"127.0.0.1:{port}",
         "-cert", str(device_cert), "-key", str(device_key_path), "-mtu", "1200", "-ign_eof"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    cookies = CookieVerifier(b"interop-cookie-secret-0123456789")
    certificate_der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    config = ServerConfig(x509_certificate=certificate_der, retransmit_initial=1.0)
    endpoint: ServerEndpoint | None = None
    events: list[Event] = []
    try:
        deadline = time.monotonic() + DEADLINE
        start = time.monotonic()
        peer: tuple[str, int] = ("127.0.0.1", 0)

        def pump(until: type[Event]) -> None:
            nonlocal endpoint, peer
            while not any(isinstance(e, until) for e in events):
                assert time.monotonic() < deadline, events
                now = time.monotonic() - start
                timer = endpoint.get_timer() if endpoint is not None else None
                wait = 0.2 if timer is None else max(0.0, min(0.2, timer - now))
                ready, _, _ = select.select([listener], [], [], wait)
                now = time.monotonic() - start
                if ready:
                    datagram, peer = listener.recvfrom(65536)
                    if endpoint is None:
                        check = cookies.check(datagram, repr(peer).encode(), now)
                        if check.reply is not None:
                            listener.sendto(check.reply, peer)
                        if check.verified:
                            endpoint = ServerEndpoint(server_key, now=now, random_bytes=seeded(31), config=config)
                    if endpoint is not None:
                        endpoint.receive_datagram(datagram, now)
                if endpoint is None:
                    continue
                endpoint.handle_timer(now)
                while (event := endpoint.next_event()) is not None:
                    events.append(event)
                    if isinstance(event, DeviceKeyPresented):
                        endpoint.accept(now)
                for out in endpoint.datagrams_to_send():
                    listener.sendto(out, peer)

        pump(HandshakeCompleted)
        (presented,) = [e for e in events if isinstance(e, DeviceKeyPresented)]
        assert presented.public_key_der == device_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert endpoint is not None
        assert endpoint.connection_id == b""
        assert client.stdin is not None
        client.stdin.write(b"hello from openssl\n")
        client.stdin.flush()
        pump(ApplicationDataReceived)
        assert [e.data for e in events if isinstance(e, ApplicationDataReceived)] == [b"hello from openssl\n"]
        endpoint.send_application_data(b"hello from cyan\n", time.monotonic() - start)
        for out in endpoint.datagrams_to_send():
            listener.sendto(out, peer)
        _read_until(client, b"hello from cyan", deadline)
    finally:
        listener.close()
        client.kill()
        client.wait(timeout=10)
        for pipe in (client.stdin, client.stdout):
            if pipe is not None:
                pipe.close()
