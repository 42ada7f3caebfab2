"""The state of an established DTLS session, to persist and to resume without a handshake (udp-dtls.md §1.4).

Device OS saves the master secret, both randoms, the suite, its epoch, out-counter and replay window, and
the peer CID (DO `dtls_session_persist.h`), and on reconnect derives the same keys and sends application
data at once. The server therefore keeps the mirror image: this dataclass.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

__all__ = ["Session"]

_MAGIC = b"CYDTLS1"


@dataclass(frozen=True, slots=True)
class Session:
    """Everything an endpoint needs to carry on. The keys are derived again from the master secret and the
    randoms (RFC 5246 §6.3), exactly as the device does in `mbedtls_ssl_derive_keys`."""

    role: Literal["server", "client"]
    session_id: bytes
    master_secret: bytes
    client_random: bytes
    server_random: bytes
    #: The server-assigned connection id: records to the server carry it (empty: none negotiated).
    connection_id: bytes
    #: The epoch both directions use (1 after a first full handshake).
    epoch: int
    #: The next sequence number this endpoint writes in `epoch`.
    write_sequence: int
    #: The replay window of records read in `epoch` (RFC 6347 §4.1.2.6): top, and the 64-bit bitmap.
    read_top: int
    read_bitmap: int
    #: The peer's SubjectPublicKeyInfo: the device key on the server, the server key on the device.
    peer_public_key_der: bytes
    cipher_suite: int = 0xC0AE

    def __post_init__(self) -> None:
        if self.role not in ("server", "client"):
            raise ValueError(f"role {self.role!r}")
        if len(self.master_secret) != 48 or len(self.client_random) != 32 or len(self.server_random) != 32:
            raise ValueError("a session needs a 48-byte master secret and two 32-byte randoms")
        if len(self.session_id) > 32 or len(self.connection_id) > 255:
            raise ValueError("session id or connection id too long")
        if not 0 <= self.epoch <= 0xFFFF or not 0 <= self.write_sequence <= (1 << 48):
            raise ValueError("epoch or sequence number out of range")
        if not -1 <= self.read_top < (1 << 48) or not 0 <= self.read_bitmap < (1 << 64):
            raise ValueError("replay window out of range")

    def encode(self) -> bytes:
        """A compact, versioned byte form for a store."""

        def vec(data: bytes) -> bytes:
            return struct.pack(">H", len(data)) + data

        return (
            _MAGIC
            + (b"S" if self.role == "server" else b"C")
            + vec(self.session_id)
            + self.master_secret
            + self.client_random
            + self.server_random
            + vec(self.connection_id)
            + struct.pack(">HQqQH", self.epoch, self.write_sequence, self.read_top, self.read_bitmap, self.cipher_suite)
            + vec(self.peer_public_key_der)
        )

    @classmethod
    def decode(cls, data: bytes) -> Session:
        """The inverse of `encode`; `ValueError` for anything else."""
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 1:
            raise ValueError("not an encoded DTLS session")
        pos = len(_MAGIC)
        role: Literal["server", "client"] = "server" if data[pos : pos + 1] == b"S" else "client"
        if data[pos : pos + 1] not in (b"S", b"C"):
            raise ValueError("unknown session role")
        pos += 1

        def take(count: int) -> bytes:
            nonlocal pos
            if pos + count > len(data):
                raise ValueError("truncated session")
            chunk = data[pos : pos + count]
            pos += count
            return chunk

        def vec() -> bytes:
            (length,) = struct.unpack(">H", take(2))
            return take(length)

        session_id = vec()
        master, client_random, server_random = take(48), take(32), take(32)
        connection_id = vec()
        epoch, write_sequence, read_top, read_bitmap, suite = struct.unpack(">HQqQH", take(28))
        peer = vec()
        if pos != len(data):
            raise ValueError("trailing bytes after the session")
        return cls(
            role,
            session_id,
            master,
            client_random,
            server_random,
            connection_id,
            epoch,
            write_sequence,
            read_top,
            read_bitmap,
            peer,
            suite,
        )
