"""Session framing: 2-byte length, AES-128-CBC with PKCS#7, and the firmware's IV rule (protocol.md §4).

Each direction keeps its own IV register, both starting at the credentials' IV. After every frame the
register becomes the *first* 16 bytes of that frame's ciphertext (not the last block, as plain CBC
chaining would): the receiver takes it before decrypting, whether or not the frame then decrypts.

Each frame is encrypted or decrypted by a CBC context of its own, made from the key and the register (~4 µs
in OpenSSL). Contexts kept for the session would save ~3 µs per small frame, but each holds about a kilobyte of
OpenSSL memory for as long as the connection lives: an idle device cost a server 9.1 KB with the two, 7.3 KB
without (docs/benchmarks.md). Freeing them when a session went quiet did not give that back: the holes they
left in the heap are smaller than a page and an idle fleet never fills them.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "BLOCK_SIZE",
    "DEVICE_MAX_FRAME_LENGTH_LEGACY",
    "DEVICE_MAX_FRAME_LENGTH_NEW",
    "MAX_CIPHERTEXT_TO_DEVICE",
    "MAX_PLAINTEXT_TO_DEVICE",
    "SERVER_MAX_FRAME_LENGTH",
    "FrameDecoder",
    "FrameEncoder",
    "FramingError",
    "SessionCredentials",
]

BLOCK_SIZE = 16
#: What a Photon/P1 can take in one frame: ciphertext ≤ 768 bytes, so CoAP plaintext ≤ 767 (§4, §13.1 #12).
MAX_CIPHERTEXT_TO_DEVICE = 768
MAX_PLAINTEXT_TO_DEVICE = MAX_CIPHERTEXT_TO_DEVICE - 1
#: New stack: an incoming LEN above 800 - 2 - 16 is INSUFFICIENT_STORAGE and a disconnect (§4).
DEVICE_MAX_FRAME_LENGTH_NEW = 782
#: Legacy stack: LEN above its 800-byte buffer is an error and a disconnect (§4).
DEVICE_MAX_FRAME_LENGTH_LEGACY = 800
#: Device frames reach about 784 bytes; accept up to a sanity cap (§4 "Size limits").
SERVER_MAX_FRAME_LENGTH = 4096


class FramingError(ValueError):
    """A frame that cannot be accepted. `reason` is ``"bad_frame_length"`` or ``"decrypt_failed"``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SessionCredentials:
    """The 40 bytes the server chooses in the handshake: AES key, initial IV, salt (protocol.md §3 S3)."""

    key: bytes
    iv: bytes
    salt: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionCredentials:
        if len(data) != 40:
            raise ValueError(f"session credentials are 40 bytes, got {len(data)}")
        return cls(key=bytes(data[:16]), iv=bytes(data[16:32]), salt=bytes(data[32:40]))

    def to_bytes(self) -> bytes:
        return self.key + self.iv + self.salt

    def __repr__(self) -> str:
        # The key material never goes into logs or reprs.
        return "SessionCredentials(<40 bytes>)"


class FrameEncoder:
    """Encrypts CoAP messages into frames for one direction."""

    __slots__ = ("_iv", "_key")

    def __init__(self, credentials: SessionCredentials) -> None:
        self._key = credentials.key
        self._iv = credentials.iv

    def encode(self, plaintext: bytes) -> bytes:
        pad = BLOCK_SIZE - len(plaintext) % BLOCK_SIZE
        padded = plaintext + bytes((pad,)) * pad
        ciphertext = Cipher(algorithms.AES(self._key), modes.CBC(self._iv)).encryptor().update(padded)
        self._iv = ciphertext[:BLOCK_SIZE]
        return len(ciphertext).to_bytes(2, "big") + ciphertext


class FrameDecoder:
    """Splits a byte stream into frames and decrypts them, for one direction.

    Bytes may arrive in any chunking, one at a time included. The buffer never holds more than one
    incomplete frame, and a frame's length is checked before anything is buffered for it.
    """

    __slots__ = ("_buffer", "_iv", "_key", "_max_length", "_strict_padding")

    def __init__(self, credentials: SessionCredentials, *, max_length: int, strict_padding: bool = True) -> None:
        self._key = credentials.key
        self._iv = credentials.iv
        self._buffer = bytearray()
        self._max_length = max_length
        self._strict_padding = strict_padding

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def discard(self) -> None:
        """Drop what is buffered: the stream can no longer be followed."""
        self._buffer.clear()

    def next_frame(self) -> bytes | None:
        """The next decrypted message, or None until a whole frame is buffered. Raises `FramingError`."""
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        length = buffer[0] << 8 | buffer[1]
        if length == 0 or length % BLOCK_SIZE or length > self._max_length:
            raise FramingError(
                f"frame length {length} is not a non-zero multiple of 16 up to {self._max_length}",
                "bad_frame_length",
            )
        if len(buffer) < 2 + length:
            return None
        ciphertext = bytes(buffer[2 : 2 + length])
        del buffer[: 2 + length]
        previous = self._iv
        self._iv = ciphertext[:BLOCK_SIZE]
        padded = Cipher(algorithms.AES(self._key), modes.CBC(previous)).decryptor().update(ciphertext)
        pad = padded[-1]
        if not 1 <= pad <= BLOCK_SIZE or (self._strict_padding and padded[-pad:] != bytes((pad,)) * pad):
            raise FramingError(
                f"frame of {length} bytes does not decrypt to valid PKCS#7 padding (last byte {pad:#04x})",
                "decrypt_failed",
            )
        return padded[:-pad]
