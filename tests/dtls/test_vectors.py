"""Known-answer tests for the primitives and constructions of the one suite, each vector with its source."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from cyan.dtls._crypto import RecordProtection, finished_verify_data, key_block, prf
from cyan.dtls._record import RecordLayer
from cyan.dtls._wire import parse_records


def test_tls12_prf_sha256_vector() -> None:
    """The P_SHA256 vector posted to the IETF TLS WG list (www.ietf.org/mail-archive/web/tls/current/
    msg03416.html), used by BearSSL's `test_crypto.c`, Bouncy Castle and others: 100 bytes of output."""
    secret = bytes.fromhex("9bbe436ba940f017b17652849a71db35")
    seed = bytes.fromhex("a0ba9f936cda311827a6f796ffd5198c")
    expected = bytes.fromhex(
        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a"
        "6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab"
        "4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701"
        "87347b66"
    )
    assert prf(secret, b"test label", seed, 100) == expected
    # Any prefix length is the prefix of the longer output (P_hash is a stream, RFC 5246 §5).
    assert prf(secret, b"test label", seed, 33) == expected[:33]


def test_aes_ccm_nist_sp800_38c_example_3_twelve_byte_nonce_eight_byte_tag() -> None:
    """NIST SP 800-38C Appendix C, Example 3: Klen 128, Tlen 64, Nlen 96 — the nonce and tag sizes of
    AES-128-CCM_8 in TLS (RFC 6655 §3: 4-byte salt + 8-byte explicit nonce)."""
    key = bytes.fromhex("404142434445464748494a4b4c4d4e4f")
    nonce = bytes.fromhex("101112131415161718191a1b")
    aad = bytes.fromhex("000102030405060708090a0b0c0d0e0f10111213")
    plaintext = bytes.fromhex("202122232425262728292a2b2c2d2e2f3031323334353637")
    expected = bytes.fromhex("e3b201a9f5b71a7a9b1ceaeccd97e70b6176aad9a4428aa5484392fbc1b09951")
    aead = AESCCM(key, tag_length=8)
    assert aead.encrypt(nonce, plaintext, aad) == expected
    assert aead.decrypt(nonce, expected, aad) == plaintext


def test_aes_ccm_rfc3610_packet_vector_1() -> None:
    """RFC 3610 §8, Packet Vector #1: M = 8 (8-byte tag), L = 2 (13-byte nonce), 8 bytes of AAD."""
    key = bytes.fromhex("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf")
    nonce = bytes.fromhex("00000003020100a0a1a2a3a4a5")
    aad = bytes.fromhex("0001020304050607")
    plaintext = bytes.fromhex("08090a0b0c0d0e0f101112131415161718191a1b1c1d1e")
    expected = bytes.fromhex("588c979a61c663d2f066d0c2c0f989806d5f6b61dac38417e8d12cfdf926e0")
    assert AESCCM(key, tag_length=8).encrypt(nonce, plaintext, aad) == expected


def test_record_protection_is_the_rfc_construction() -> None:
    """A CCM_8 record built by hand from RFC 6655 §3 (nonce = salt ‖ epoch ‖ sequence), RFC 5246 §6.2.3.3
    (additional data = seq_num ‖ type ‖ version ‖ length) and RFC 6347 §4.1 (the header), with the NIST
    Example 3 key: the record layer must produce exactly these bytes and read them back."""
    key = bytes.fromhex("404142434445464748494a4b4c4d4e4f")
    salt = bytes.fromhex("10111213")
    epoch, sequence = 1, 0x0000_0000_002A
    payload = b"hello, device"
    explicit = struct.pack(">H", epoch) + sequence.to_bytes(6, "big")
    aad = explicit + bytes([23, 0xFE, 0xFD]) + struct.pack(">H", len(payload))
    sealed = AESCCM(key, tag_length=8).encrypt(salt + explicit, payload, aad)
    fragment = explicit + sealed
    expected = bytes([23, 0xFE, 0xFD]) + explicit + struct.pack(">H", len(fragment)) + fragment

    layer = RecordLayer()
    protection = RecordProtection(key, salt)
    layer.install(1, read=protection, write=protection)
    layer.write_epoch = 1
    layer.write_sequences[1] = sequence
    assert layer.seal(23, payload) == expected
    (record,), problem = parse_records(expected, 0, max_fragment=2048)
    assert problem is None
    opened = layer.open(record)
    assert not isinstance(opened, str)
    assert opened.payload == payload


def test_cid_record_is_the_draft_05_construction() -> None:
    """draft-ietf-tls-dtls-connection-id-05 §4-5 as MT `ssl_extract_add_data_from_record` builds it: type 25,
    the CID after the sequence number, inner plaintext = content ‖ real type ‖ zeros (to 16), additional
    data = seq_num ‖ 25 ‖ version ‖ cid ‖ cid_length ‖ inner length."""
    key = bytes.fromhex("404142434445464748494a4b4c4d4e4f")
    salt = bytes.fromhex("10111213")
    cid = bytes.fromhex("0102030405060708")
    payload = b"coap"
    explicit = struct.pack(">H", 1) + (7).to_bytes(6, "big")
    inner = payload + bytes([23]) + bytes(11)
    aad = explicit + bytes([25, 0xFE, 0xFD]) + cid + bytes([8]) + struct.pack(">H", len(inner))
    fragment = explicit + AESCCM(key, tag_length=8).encrypt(salt + explicit, inner, aad)
    expected = bytes([25, 0xFE, 0xFD]) + explicit + cid + struct.pack(">H", len(fragment)) + fragment

    protection = RecordProtection(key, salt)
    writer = RecordLayer(peer_cid=cid)
    writer.install(1, read=protection, write=protection)
    writer.write_epoch = 1
    writer.write_sequences[1] = 7
    assert writer.seal(23, payload) == expected
    # Device OS ≥ 4.0 rewrites the type byte to 253 after encryption: the same record still opens.
    for wire_type in (25, 253):
        reader = RecordLayer(own_cid=cid)
        reader.install(1, read=protection, write=protection)
        (record,), _ = parse_records(bytes([wire_type]) + expected[1:], 8, max_fragment=2048)
        opened = reader.open(record)
        assert not isinstance(opened, str)
        assert (opened.content_type, opened.payload, opened.moved) == (23, payload, wire_type == 253)


@pytest.mark.parametrize("label", [b"client finished", b"server finished"])
def test_key_block_and_finished_lengths(label: bytes) -> None:
    """RFC 5246 §6.3 for an AEAD suite with 16-byte keys and 4-byte salts: 40 bytes in order client key,
    server key, client IV, server IV; §7.4.9: 12 bytes of verify_data."""
    master = bytes(range(48))
    client_random, server_random = bytes(32), bytes([1]) * 32
    block = prf(master, b"key expansion", server_random + client_random, 40)
    keys = key_block(master, client_random, server_random)
    assert keys.client_key + keys.server_key + keys.client_iv + keys.server_iv == block
    assert finished_verify_data(master, label, bytes(32)) == prf(master, label, bytes(32), 12)


def test_a_record_openssl_sealed_opens_with_our_key_schedule() -> None:
    """vectors/openssl-3.0.19-ccm8-record.json: an application-data record OpenSSL 3.0.19's s_server sent in
    epoch 1, with the randoms of its handshake and the master secret from OpenSSL's own key log. Our key
    expansion (RFC 5246 §6.3) and CCM_8 record layer must open it: an independent implementation's bytes."""
    vector = json.loads((Path(__file__).parent / "vectors" / "openssl-3.0.19-ccm8-record.json").read_text())
    keys = key_block(
        bytes.fromhex(vector["master_secret"]),
        bytes.fromhex(vector["client_random"]),
        bytes.fromhex(vector["server_random"]),
    )
    layer = RecordLayer()
    server_side = RecordProtection(keys.server_key, keys.server_iv)
    layer.install(1, read=server_side, write=RecordProtection(keys.client_key, keys.client_iv))
    (record,), problem = parse_records(bytes.fromhex(vector["record_from_server"]), 0, max_fragment=2048)
    assert problem is None
    opened = layer.open(record)
    assert not isinstance(opened, str)
    assert (opened.content_type, opened.epoch) == (23, 1)
    assert opened.payload == bytes.fromhex(vector["plaintext"])
