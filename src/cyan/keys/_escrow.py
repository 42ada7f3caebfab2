"""Key escrow: device private keys kept encrypted under a passphrase, so a device that loses its key can be
given the same identity again (protocol.md §12: a device whose key is erased makes a new one, which the
cloud refuses until someone re-registers it).

File format, version 1 (UTF-8 JSON Lines; one object per line, each line ending in ``\\n``):

* Line 1, the header::

    {"format": "cyan-key-escrow", "version": 1,
     "kdf": {"name": "scrypt", "n": 131072, "r": 8, "p": 1, "salt": "<base64, 16 bytes>"},
     "cipher": "AES-256-GCM",
     "check": {"nonce": "<base64, 12 bytes>", "ciphertext": "<base64>"}}

  The 32-byte AES key is scrypt(passphrase UTF-8, salt, n, r, p). ``check`` is AES-GCM of the bytes
  ``cyan-key-escrow check`` with associated data ``cyan-key-escrow/1 check``: it opens only with the right
  passphrase, so a wrong one is reported before anything else, and every entry of one file shares one key.

* Every further line is one escrowed key::

    {"device_id": "<24 hex>", "fingerprint": "SHA256:<hex>", "created_at": "<ISO 8601 UTC>",
     "nonce": "<base64, 12 bytes>", "ciphertext": "<base64>"}

  The plaintext is the device private key exactly as written to the device (PKCS#1 DER). The associated
  data is ``cyan-key-escrow/1`` NUL ``device_id`` NUL ``fingerprint`` NUL ``created_at``, so an entry cannot
  be moved to another device or relabelled without failing authentication.

Entries are only ever appended (a device re-keyed twice has two entries; the newest wins unless a
fingerprint is asked for). A last line cut short by a crash is ignored when reading. Randomness can be
injected, as everywhere in the core (design.md §5.1); the caller reads the clock and does the file I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ._codec import fingerprint, load_private_key

__all__ = [
    "ESCROW_FORMAT",
    "ESCROW_VERSION",
    "EscrowEntry",
    "EscrowError",
    "KeyEscrow",
    "WrongPassphraseError",
]

ESCROW_FORMAT = "cyan-key-escrow"
ESCROW_VERSION = 1
#: scrypt cost: 2**17 with r=8 is 128 MiB and about a third of a second, the OWASP recommendation for scrypt.
DEFAULT_SCRYPT_N = 2**17
_SCRYPT_R = 8
_SCRYPT_P = 1
_MIN_SCRYPT_N = 2**10
_MAX_SCRYPT_N = 2**22  # 4 GiB of memory at r=8: anything larger is a hostile file, not a setting
_SALT_BYTES = 16
_NONCE_BYTES = 12
_KEY_BYTES = 32
_CIPHER = "AES-256-GCM"
_CHECK_PLAINTEXT = b"cyan-key-escrow check"
_CHECK_AAD = b"cyan-key-escrow/1 check"
_MIN_PASSPHRASE = 8
_DEVICE_ID = re.compile(r"[0-9a-f]{24}")

Random = Callable[[int], bytes]


class EscrowError(ValueError):
    """An escrow file that cannot be read, or an entry that cannot be used; the message says which line."""


class WrongPassphraseError(EscrowError):
    """The passphrase does not open this escrow file."""


@dataclass(frozen=True)
class EscrowEntry:
    """One escrowed key: whose, which (fingerprint), when, and the sealed bytes."""

    device_id: str
    fingerprint: str
    created_at: str
    nonce: bytes
    ciphertext: bytes

    def aad(self) -> bytes:
        return b"\x00".join(
            (b"cyan-key-escrow/1", self.device_id.encode(), self.fingerprint.encode(), self.created_at.encode())
        )

    def to_line(self) -> bytes:
        record = {
            "device_id": self.device_id,
            "fingerprint": self.fingerprint,
            "created_at": self.created_at,
            "nonce": _b64(self.nonce),
            "ciphertext": _b64(self.ciphertext),
        }
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str, line: int) -> bytes:
    if not isinstance(value, str):
        raise EscrowError(f"escrow line {line}: {what} is missing or not a string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise EscrowError(f"escrow line {line}: {what} is not valid base64") from None


def _derive(passphrase: str, salt: bytes, n: int) -> bytes:
    return Scrypt(salt=salt, length=_KEY_BYTES, n=n, r=_SCRYPT_R, p=_SCRYPT_P).derive(passphrase.encode("utf-8"))


def _field(record: dict[str, Any], name: str, kind: type, line: int) -> Any:
    value = record.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EscrowError(f"escrow line {line}: {name!r} is missing or not a {kind.__name__}")
    return value


def _timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise EscrowError("created_at must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class KeyEscrow:
    """An escrow file opened with its passphrase: read entries, seal new ones.

    ``KeyEscrow.create(passphrase)`` starts a new file (write :meth:`header_line` first);
    ``KeyEscrow.open(data, passphrase)`` reads one. :meth:`seal` returns the line to append.
    """

    def __init__(self, header: dict[str, Any], key: bytes, entries: list[EscrowEntry], *, truncated: bool) -> None:
        self._header = header
        self._aead = AESGCM(key)
        self.entries = entries
        #: True when the file's last line was cut short (a crash while appending) and was skipped.
        self.truncated = truncated

    @classmethod
    def create(cls, passphrase: str, *, n: int | None = None, random: Random = os.urandom) -> KeyEscrow:
        """A new, empty escrow; ``n`` is the scrypt cost (default :data:`DEFAULT_SCRYPT_N`)."""
        n = DEFAULT_SCRYPT_N if n is None else n
        if len(passphrase) < _MIN_PASSPHRASE:
            raise EscrowError(f"an escrow passphrase needs at least {_MIN_PASSPHRASE} characters")
        if not _MIN_SCRYPT_N <= n <= _MAX_SCRYPT_N or n & (n - 1):
            raise EscrowError(f"scrypt n must be a power of two between {_MIN_SCRYPT_N} and {_MAX_SCRYPT_N}")
        salt = random(_SALT_BYTES)
        key = _derive(passphrase, salt, n)
        nonce = random(_NONCE_BYTES)
        header = {
            "format": ESCROW_FORMAT,
            "version": ESCROW_VERSION,
            "kdf": {"name": "scrypt", "n": n, "r": _SCRYPT_R, "p": _SCRYPT_P, "salt": _b64(salt)},
            "cipher": _CIPHER,
            "check": {
                "nonce": _b64(nonce),
                "ciphertext": _b64(AESGCM(key).encrypt(nonce, _CHECK_PLAINTEXT, _CHECK_AAD)),
            },
        }
        return cls(header, key, [], truncated=False)

    @classmethod
    def open(cls, data: bytes, passphrase: str) -> KeyEscrow:
        """Read an escrow file; :class:`WrongPassphraseError` if the passphrase does not open it."""
        lines = data.split(b"\n")
        truncated = False
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            # No newline at the end: the last append did not finish. Use it only if it is whole.
            try:
                json.loads(lines[-1])
            except ValueError:
                lines.pop()
                truncated = True
        if not lines:
            raise EscrowError("the escrow file is empty")
        header = cls._read_header(lines[0])
        kdf = header["kdf"]
        key = _derive(passphrase, _unb64(kdf.get("salt"), "kdf salt", 1), kdf["n"])
        check = header.get("check")
        if not isinstance(check, dict):
            raise EscrowError("escrow line 1: 'check' is missing")
        try:
            opened = AESGCM(key).decrypt(
                _unb64(check.get("nonce"), "check nonce", 1), _unb64(check.get("ciphertext"), "check", 1), _CHECK_AAD
            )
        except InvalidTag:
            raise WrongPassphraseError("the passphrase does not open this escrow file") from None
        if opened != _CHECK_PLAINTEXT:
            raise WrongPassphraseError("the passphrase does not open this escrow file")
        entries = [cls._read_entry(raw, number) for number, raw in enumerate(lines[1:], start=2) if raw.strip()]
        return cls(header, key, entries, truncated=truncated)

    @staticmethod
    def _read_header(raw: bytes) -> dict[str, Any]:
        try:
            header = json.loads(raw)
        except ValueError:
            raise EscrowError("escrow line 1 is not JSON; this is not a Cyan escrow file") from None
        if not isinstance(header, dict) or header.get("format") != ESCROW_FORMAT:
            raise EscrowError(f"escrow line 1 does not say format {ESCROW_FORMAT!r}; this is not a Cyan escrow file")
        version = header.get("version")
        if version != ESCROW_VERSION:
            raise EscrowError(
                f"escrow file version {version!r}; this Cyan reads version {ESCROW_VERSION} (upgrade Cyan to read it)"
            )
        if header.get("cipher") != _CIPHER:
            raise EscrowError(f"escrow cipher {header.get('cipher')!r} is not {_CIPHER}")
        kdf = header.get("kdf")
        if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
            raise EscrowError("escrow line 1: the key derivation is not scrypt")
        n = _field(kdf, "n", int, 1)
        if (
            not _MIN_SCRYPT_N <= n <= _MAX_SCRYPT_N
            or n & (n - 1)
            or (kdf.get("r"), kdf.get("p")) != (_SCRYPT_R, _SCRYPT_P)
        ):
            raise EscrowError("escrow line 1: unsupported scrypt parameters")
        return header

    @staticmethod
    def _read_entry(raw: bytes, number: int) -> EscrowEntry:
        try:
            record = json.loads(raw)
        except ValueError:
            raise EscrowError(f"escrow line {number} is not JSON") from None
        if not isinstance(record, dict):
            raise EscrowError(f"escrow line {number} is not an object")
        device_id = _field(record, "device_id", str, number)
        if not _DEVICE_ID.fullmatch(device_id):
            raise EscrowError(f"escrow line {number}: {device_id!r} is not a device id")
        return EscrowEntry(
            device_id=device_id,
            fingerprint=_field(record, "fingerprint", str, number),
            created_at=_field(record, "created_at", str, number),
            nonce=_unb64(record.get("nonce"), "nonce", number),
            ciphertext=_unb64(record.get("ciphertext"), "ciphertext", number),
        )

    def header_line(self) -> bytes:
        return json.dumps(self._header, separators=(",", ":")).encode() + b"\n"

    def seal(
        self, device_id: str, private_der: bytes, created_at: datetime, *, random: Random = os.urandom
    ) -> EscrowEntry:
        """Encrypt a device private key for ``device_id``; append ``entry.to_line()`` to the file."""
        device_id = device_id.lower()
        if not _DEVICE_ID.fullmatch(device_id):
            raise EscrowError(f"{device_id!r} is not a device id (24 hexadecimal digits)")
        entry = EscrowEntry(
            device_id=device_id,
            fingerprint=fingerprint(load_private_key(private_der)),
            created_at=_timestamp(created_at),
            nonce=random(_NONCE_BYTES),
            ciphertext=b"",
        )
        sealed = EscrowEntry(
            entry.device_id,
            entry.fingerprint,
            entry.created_at,
            entry.nonce,
            self._aead.encrypt(entry.nonce, private_der, entry.aad()),
        )
        self.entries.append(sealed)
        return sealed

    def find(self, device_id: str, fingerprint: str | None = None) -> EscrowEntry | None:
        """The newest entry for the device (with that fingerprint, when given)."""
        wanted = device_id.lower()
        for entry in reversed(self.entries):
            if entry.device_id == wanted and (fingerprint is None or entry.fingerprint == fingerprint):
                return entry
        return None

    def unseal(self, entry: EscrowEntry) -> bytes:
        """The private key bytes of an entry; :class:`EscrowError` if it was altered."""
        try:
            der = self._aead.decrypt(entry.nonce, entry.ciphertext, entry.aad())
        except InvalidTag:
            raise EscrowError(
                f"the escrowed key of {entry.device_id} ({entry.created_at}) fails authentication: the entry was "
                "altered or belongs to another file"
            ) from None
        if fingerprint(load_private_key(der)) != entry.fingerprint:
            raise EscrowError(f"the escrowed key of {entry.device_id} does not match its recorded fingerprint")
        return der
