"""Firmware binaries on disk, named by their SHA-256 (content-addressed): the same bytes are kept once."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from cyan.cloud.ports import StoreUnavailableError

__all__ = ["FirmwareFiles"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


class FirmwareFiles:
    """``<root>/<first two hex digits>/<sha256>.bin``, written owner-only and atomically."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"{sha256!r} is not a SHA-256 in lowercase hex")
        return self.root / sha256[:2] / f"{sha256}.bin"

    def put(self, data: bytes) -> str:
        """Keep `data`; returns its SHA-256. Writing the same bytes again changes nothing."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path(sha256)
        if path.exists():
            return sha256
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot store a firmware file under {self.root}: {exc}") from exc
        return sha256

    def get(self, sha256: str) -> bytes:
        """The bytes; raises `StoreUnavailableError` when the file is missing or damaged."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StoreUnavailableError(f"cannot read the firmware file {path}: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreUnavailableError(f"the firmware file {path} is damaged: its SHA-256 no longer matches")
        return data
