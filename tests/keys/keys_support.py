"""Shared test data for the cyan.keys tests: vector files, fixed keys and small key-building helpers."""

from __future__ import annotations

import functools
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

VECTORS = Path(__file__).parents[1] / "vectors"
DATA = Path(__file__).parent / "data"

DOS31 = VECTORS / "device-os-3.1.0"
DOS061 = VECTORS / "device-os-0.6.1"
APPENDIX_A = VECTORS / "spec-appendix-a"


def read(path: Path) -> bytes:
    return path.read_bytes()


def _load_pem_private(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@functools.cache
def server_key() -> rsa.RSAPrivateKey:
    """The RSA-2048 server key of the Device OS 3.1.0 recordings."""
    return _load_pem_private(DOS31 / "server_key.pem")


@functools.cache
def device_key() -> rsa.RSAPrivateKey:
    """The RSA-1024 device key of the Device OS 3.1.0 recordings."""
    return _load_pem_private(DOS31 / "device_key.pem")


@functools.cache
def short_dp_key() -> rsa.RSAPrivateKey:
    """RSA-1024 key whose DP (exponent1) is only 503 bits: 63 bytes in minimal DER."""
    return _load_pem_private(DATA / "short_dp_device_key.pem")


@functools.cache
def short_d_key() -> rsa.RSAPrivateKey:
    """RSA-1024 key whose D is only 1014 bits: 127 bytes in minimal DER."""
    return _load_pem_private(DATA / "short_d_device_key.pem")


@functools.cache
def rsa_4096() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def minimal_der(key: rsa.RSAPrivateKey) -> bytes:
    """Standard (strict, minimal) PKCS#1 DER, as ``openssl rsa -outform DER`` writes it."""
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def spki_der(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def pkcs1_public_der(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)


def _is_probable_prime(n: int) -> bool:
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71)
    if any(n % p == 0 for p in small):
        return n in small
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime_from(start: int) -> int:
    candidate = start | 1
    while not (_is_probable_prime(candidate) and (candidate - 1) % 65537 != 0):
        candidate += 2
    return candidate


@functools.cache
def unbalanced_device_key() -> rsa.RSAPrivateKey:
    """A valid RSA-1024 key whose P is 600 bits and Q 424 bits, so P does not fit the firmware's 64 bytes."""
    p = _prime_from(3 << 598)
    q = _prime_from(3 << 422)
    n = p * q
    assert n.bit_length() == 1024
    d = pow(65537, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=rsa.rsa_crt_dmp1(d, p),
        dmq1=rsa.rsa_crt_dmq1(d, q),
        iqmp=rsa.rsa_crt_iqmp(p, q),
        public_numbers=rsa.RSAPublicNumbers(e=65537, n=n),
    )
    return numbers.private_key()
