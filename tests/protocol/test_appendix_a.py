"""protocol.md Appendix A: the handshake vectors made with the keys in tests/vectors/spec-appendix-a/."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cyan.protocol import DEVICE_OS_3_1_0, DeviceConnection, DeviceIdentified, ServerConnection, Step
from cyan.protocol.handshake import decrypt_identity_message, open_session_key_message
from cyan.testing import ScriptedRandom, drain

NONCE = bytes.fromhex("c14d9fce32ed65af0270847400376f4e49fa723ae9875b03517bcf3e460d068a092eead2aa217693")
DEVICE_ID = bytes.fromhex("2a0021000447343233323032")
CIPHERTEXT_TO_SERVER = bytes.fromhex(
    "6618d4088a4e6bbb1809a2e4d18ff456874f22c25db5b25c1e8c4750e1ffe3678d283cdf1ff05169fcbf1f2432a1f8af"
    "4ce9bedf4c47dbb4b381b085e0d97c8967c801111af4c0db09a02e5689c6a757a481217ebfb02ca928cbcb9f568b58a5"
    "5349e3eebdd3f76d5f309ca22dfd627a2574367d7505912873c16e1bbbe4a850f0f1c80f91c4f5efd3844071d6b16b2a"
    "025b84ab0e3388119eb1b781188bc0b9b2ffeedabe9519c463b27849f10c4524038b79f316d2d9b0cddf95156b87abff"
    "c61a77c766bda5d29451560e9683e0b44d5520025426f24e1e0c6974c70f266842f79a14e9897d4ab410f149cd961d85"
    "87d321fe3cba939dcabd8f321622bc7a"
)
CREDENTIALS = bytes.fromhex("9d17abed065d15038d099935ec1b0d8c109574afaebcaa149e741853c0c372f721abd046c4047104")
ENCRYPTED_CREDENTIALS = bytes.fromhex(
    "6e89046c420c3c4242cb32becdb51c99c7d1b43415b52663de372dbbff45e0e42925160c72a09080bf68fe18a78bb0a4"
    "0a51f222e02c8b9ac844fb5c8228bf2cff044ea843688ad5b641adb8657de67d3c221c0dab08d80c54f93aa5be5c4116"
    "00be5d82a4243709aec81d16880497935ec049f88228f1255dd1b531d4e1e32b"
)
HMAC = bytes.fromhex("935c9cd1ab4ffe3b4ea0a7d97ee821bee659a424")
SIGNATURE = bytes.fromhex(
    "5f0cad5aa72d47cea1824f494f0fefe2abb062b51c05ef105e0b42451c1375cd41542ea36a4a5cec7f7d49b044576fab"
    "bd2a7535b7b9a794e141bab47ab7092f7af1ecc13279c53dc78bcbc0dc5b2308c405fd67b825d78c58698a877117c4e9"
    "f4075f46a70c670f91ff9240ea94275bf68ff0d812b34d085ee6212143af2ede48609244bacf5f0b16518ade6ef6f2f3"
    "cbff80e71aa18d1b55b6b207f9ba5e78dd36063d7afc0cb3563cd5a11bf6f6c746b9a358f108992652be2e0ef106f74b"
    "9ad72b4393b6b553d3d23066ebcb579a5ec018be613fd2ca2cb1373bdcbe3dd196e3408ec370ed652a2d36fb13701dce"
    "c9337492c8e4a921b338f94c911a6128"
)


def _key(vectors: Path, name: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key((vectors / "spec-appendix-a" / name).read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture
def server_key(vectors: Path) -> rsa.RSAPrivateKey:
    return _key(vectors, "server_key.pem")


@pytest.fixture
def device_key(vectors: Path) -> rsa.RSAPrivateKey:
    return _key(vectors, "device_key.pem")


def test_server_decrypts_the_device_message(server_key: rsa.RSAPrivateKey, device_key: rsa.RSAPrivateKey) -> None:
    identity = decrypt_identity_message(server_key, CIPHERTEXT_TO_SERVER, NONCE)
    assert identity.device_id == DEVICE_ID
    assert identity.public_key_der == device_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert identity.public_key_der is not None
    assert len(identity.public_key_der) == 162


def test_server_connection_identifies_the_device(server_key: rsa.RSAPrivateKey) -> None:
    server = ServerConnection(server_key, 0.0, rng=ScriptedRandom(NONCE))
    assert server.data_to_send() == NONCE
    for byte in CIPHERTEXT_TO_SERVER:
        server.receive_data(bytes((byte,)), 0.5)
    (identified,) = drain(server)
    assert isinstance(identified, DeviceIdentified)
    assert identified.device_id == DEVICE_ID.hex()
    assert server.step is Step.IDENTITY


def test_the_session_key_message_checks_out(server_key: rsa.RSAPrivateKey, device_key: rsa.RSAPrivateKey) -> None:
    assert hmac.digest(CREDENTIALS, ENCRYPTED_CREDENTIALS, hashlib.sha1) == HMAC
    numbers = server_key.public_key().public_numbers()
    block = pow(int.from_bytes(SIGNATURE, "big"), numbers.e, numbers.n).to_bytes(256, "big")
    assert block == b"\x00\x01" + b"\xff" * 233 + b"\x00" + HMAC
    assert (
        open_session_key_message(device_key, server_key.public_key(), ENCRYPTED_CREDENTIALS + SIGNATURE) == CREDENTIALS
    )


def test_our_signature_equals_the_vector(server_key: rsa.RSAPrivateKey, device_key: rsa.RSAPrivateKey) -> None:
    """PKCS#1 v1.5 signing is deterministic: the server role's signature must equal the vector's."""
    server = ServerConnection(server_key, 0.0, rng=ScriptedRandom(NONCE, b"\x00\x00", b"\x00", CREDENTIALS))
    server.data_to_send()
    server.receive_data(CIPHERTEXT_TO_SERVER, 0.5)
    drain(server)
    server.accept(device_key.public_key(), 0.5)
    answer = server.data_to_send()
    assert len(answer) == 384
    assert answer[128:] != SIGNATURE  # the credentials' encryption padding differs, so the HMAC does too
    expected = hmac.digest(CREDENTIALS, answer[:128], hashlib.sha1)
    assert open_session_key_message(device_key, server_key.public_key(), answer) == CREDENTIALS
    numbers = server_key.public_key().public_numbers()
    block = pow(int.from_bytes(answer[128:], "big"), numbers.e, numbers.n).to_bytes(256, "big")
    assert block == b"\x00\x01" + b"\xff" * 233 + b"\x00" + expected


def test_device_accepts_the_vector_answer(server_key: rsa.RSAPrivateKey, device_key: rsa.RSAPrivateKey) -> None:
    device = DeviceConnection(DEVICE_ID, device_key, server_key.public_key(), 0.0, firmware=DEVICE_OS_3_1_0)
    device.receive_data(NONCE, 0.1)
    identity = device.data_to_send()
    assert decrypt_identity_message(server_key, identity, NONCE).device_id == DEVICE_ID
    device.receive_data(ENCRYPTED_CREDENTIALS + SIGNATURE, 0.2)
    hello = device.data_to_send()
    assert len(hello) == 2 + 32  # the 3.x Hello: 27 bytes of CoAP, two AES blocks
    assert device.step is Step.HELLO
