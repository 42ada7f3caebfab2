"""The listener's stateless cookie exchange (RFC 6347 §4.2.1) and routing helpers."""

from __future__ import annotations

from cyan.dtls import ClientEndpoint, CookieVerifier, Reason, connection_id_of, is_client_hello, move_device_id_of

from .support import DEVICE_KEY, SERVER_KEY, seeded

ADDRESS = b"203.0.113.9:40000"


def _client_hello(seed: int = 1) -> tuple[ClientEndpoint, bytes]:
    client = ClientEndpoint(DEVICE_KEY, SERVER_KEY.public_key(), now=0.0, random_bytes=seeded(seed))
    (datagram,) = client.datagrams_to_send()
    return client, datagram


def _with_cookie(verifier: CookieVerifier, now: float, address: bytes = ADDRESS) -> bytes:
    client, first = _client_hello()
    check = verifier.check(first, address, now)
    assert check.reply is not None
    client.receive_datagram(check.reply, now)
    (second,) = client.datagrams_to_send()
    return second


def test_a_first_client_hello_gets_only_a_smaller_hello_verify_request() -> None:
    verifier = CookieVerifier(b"s" * 32)
    _, first = _client_hello()
    assert is_client_hello(first)
    check = verifier.check(first, ADDRESS, 100.0)
    assert not check.verified
    assert check.reply is not None
    assert len(check.reply) < len(first)
    assert check.reason is None


def test_the_returned_cookie_verifies_for_that_address_only_and_expires() -> None:
    verifier = CookieVerifier(b"s" * 32, lifetime=30.0)
    second = _with_cookie(verifier, 100.0)
    assert verifier.check(second, ADDRESS, 101.0).verified
    other = verifier.check(second, b"203.0.113.10:40000", 101.0)
    assert not other.verified
    assert other.reason is Reason.BAD_COOKIE
    assert other.reply is not None  # a fresh cookie for the new address, still no larger than the hello
    assert not verifier.check(second, ADDRESS, 131.5).verified


def test_a_rotated_secret_still_accepts_cookies_of_the_previous_one() -> None:
    old = CookieVerifier(b"a" * 32)
    second = _with_cookie(old, 10.0)
    rotated = CookieVerifier(b"b" * 32, previous_secret=b"a" * 32)
    assert rotated.check(second, ADDRESS, 11.0).verified
    assert not CookieVerifier(b"b" * 32).check(second, ADDRESS, 11.0).verified


def test_anything_but_a_client_hello_gets_no_answer() -> None:
    verifier = CookieVerifier(b"s" * 32)
    for datagram in (
        b"",
        b"\x16\xfe\xfd",
        b"\x17\xfe\xfd" + bytes(20),
        bytes(200),
        b"\x16\xfe\xfd" + bytes(10) + b"\x00\x05abcde",
    ):
        check = verifier.check(datagram, ADDRESS, 0.0)
        assert check.reply is None
        assert not check.verified


def test_routing_helpers_read_the_cid_and_the_move_trailer() -> None:
    record = bytes([25, 0xFE, 0xFD, 0, 1]) + bytes(6) + b"CIDCIDCI" + b"\x00\x10" + bytes(16)
    assert connection_id_of(record) == b"CIDCIDCI"
    assert connection_id_of(bytes([253]) + record[1:]) == b"CIDCIDCI"
    assert connection_id_of(bytes([23]) + record[1:]) is None
    moved = bytes([254, 0xFE, 0xFD, 0, 1]) + bytes(6) + b"\x00\x10" + bytes(16) + b"123456789012\x0c"
    assert move_device_id_of(moved) == b"123456789012"
    assert move_device_id_of(record) is None
