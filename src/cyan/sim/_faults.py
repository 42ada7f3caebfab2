"""The keys a faulty device really holds (protocol.md §2, §12): the simulator models the key *storage*
and lets the unchanged protocol core use it, so each fault fails exactly where the firmware fails."""

from __future__ import annotations

from functools import cache
from typing import NoReturn

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed
from cryptography.hazmat.primitives.hashes import HashAlgorithm

from cyan.keys import (
    device_public_key_der_from_private,
    encode_device_private_key,
    firmware_parse_device_key,
    generate_server_key,
)

__all__ = ["CorruptedDeviceKey", "corrupt_device_key", "wrong_server_key"]

#: The byte of the fixed-width private key that gets damaged: inside the modulus (bytes 11..138, §2.2),
#: away from its first byte (so the key stays 1024 bits long) and its last (so it stays odd).
_DAMAGED_OFFSET = 11 + 64
_DAMAGE = 0x10  # one flipped bit, the way flash wears


@cache
def wrong_server_key() -> rsa.RSAPublicKey:
    """Another server's public key, the same for every device of the process: any key but the right one
    makes the device encrypt its handshake to a key the server cannot open (§9.3)."""
    return generate_server_key().public_key()


class CorruptedDeviceKey(rsa.RSAPrivateKey):
    """A device key as the firmware reads it back from damaged bytes.

    The firmware does not parse its key (§2.2): it takes the modulus from private-key bytes 11..138 and
    the other numbers from fixed offsets. With a damaged modulus, the public key it rebuilds for the
    handshake (`device_public_key_der_from_private`) is not its own, while the private numbers it uses to
    decrypt (P, Q and the CRT exponents) are still the originals. The server then encrypts the session key
    to the damaged modulus and the device's decryption yields garbage: DECRYPTION_ERROR (§3 "S3 checks").
    """

    def __init__(self, original: rsa.RSAPrivateKey) -> None:
        stored = bytearray(encode_device_private_key(original))
        stored[_DAMAGED_OFFSET] ^= _DAMAGE
        self.stored = bytes(stored)
        #: The 162-byte public key the device sends (§2.2), rebuilt from the damaged bytes.
        self.public_key_der = device_public_key_der_from_private(self.stored)
        fields = firmware_parse_device_key(self.stored)
        # Not validated (they are inconsistent on purpose): these are the numbers the firmware uses.
        self._numbers = rsa.RSAPrivateNumbers(
            p=fields.p,
            q=fields.q,
            d=fields.d,
            dmp1=fields.dp,
            dmq1=fields.dq,
            iqmp=fields.qp,
            public_numbers=rsa.RSAPublicNumbers(e=fields.e, n=fields.n),
        )
        public = serialization.load_der_public_key(self.public_key_der)
        assert isinstance(public, rsa.RSAPublicKey)
        self._public = public

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        return self._numbers

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        self._unsupported()

    def sign(
        self,
        data: bytes,
        padding: padding.AsymmetricPadding,
        algorithm: Prehashed | HashAlgorithm | NoDigestInfo,
    ) -> bytes:
        self._unsupported()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        self._unsupported()

    def __copy__(self) -> CorruptedDeviceKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> CorruptedDeviceKey:
        return self

    def _unsupported(self) -> NoReturn:
        # The protocol core only needs the numbers (its RSA decryption reports bad padding the way the
        # firmware's mbedTLS does); OpenSSL would refuse these inconsistent numbers anyway.
        raise NotImplementedError("a corrupted device key only serves the handshake's raw RSA decryption")


def corrupt_device_key(original: rsa.RSAPrivateKey) -> CorruptedDeviceKey:
    """The key a device with a damaged stored modulus really uses (see `CorruptedDeviceKey`)."""
    return CorruptedDeviceKey(original)
