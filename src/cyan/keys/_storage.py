"""Writing private key files so that they are never readable by others, not even for a moment."""

from __future__ import annotations

import errno
import os
import secrets

__all__ = ["write_private_key_file"]

_PRIVATE_MODE = 0o600
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _write_new(path: str, data: bytes) -> None:
    """Create ``path`` (which must not exist) with mode 0o600, write ``data`` and fsync it."""
    # The mode is given to open() so the file never exists with wider permissions; fchmod afterwards
    # because the umask may have removed bits from 0o600 (it cannot add any).
    fd = os.open(path, _CREATE_FLAGS, _PRIVATE_MODE)
    try:
        os.fchmod(fd, _PRIVATE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def _fsync_directory(directory: str) -> None:
    # Makes the new directory entry durable, so a crash cannot lose a key the caller believes is saved.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_key_file(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = False) -> None:
    """Write a private key file with mode 0o600 from the moment it exists.

    Without ``overwrite`` an existing file is never touched and :class:`FileExistsError` is raised. With
    ``overwrite=True`` the data goes to a new 0o600 file in the same directory that then atomically
    replaces ``path``, so readers see either the old or the new key, never a partial one.
    """
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    if not overwrite:
        try:
            _write_new(target, data)
        except FileExistsError:
            raise FileExistsError(
                errno.EEXIST,
                "refusing to overwrite an existing private key file (pass overwrite=True to replace it)",
                target,
            ) from None
        _fsync_directory(directory)
        return
    temporary = os.path.join(directory, f".{os.path.basename(target)}.{secrets.token_hex(8)}.tmp")
    _write_new(temporary, data)
    try:
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
    _fsync_directory(directory)
