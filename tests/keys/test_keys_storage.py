"""write_private_key_file: 0o600 from the start, no silent overwrite, atomic replace."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyan.keys import write_private_key_file

KEY = b"-----BEGIN RSA PRIVATE KEY-----\nnot really a key\n-----END RSA PRIVATE KEY-----\n"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    """Run the test with a umask that would leave new files world-readable (and restore it afterwards)."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("umask")
def test_new_file_is_private(tmp_path: Path) -> None:
    target = tmp_path / "device.pem"
    write_private_key_file(target, KEY)
    assert target.read_bytes() == KEY
    assert mode_of(target) == 0o600


def test_mode_is_0600_even_when_the_umask_removes_owner_bits(tmp_path: Path) -> None:
    previous = os.umask(0o277)
    try:
        write_private_key_file(str(tmp_path / "k.der"), KEY)
    finally:
        os.umask(previous)
    assert mode_of(tmp_path / "k.der") == 0o600


def test_existing_file_is_never_overwritten_by_default(tmp_path: Path) -> None:
    target = tmp_path / "device.pem"
    target.write_bytes(b"old key")
    with pytest.raises(FileExistsError) as excinfo:
        write_private_key_file(target, KEY)
    assert excinfo.value.filename == str(target)
    assert "refusing to overwrite an existing private key file (pass overwrite=True" in str(excinfo.value)
    assert target.read_bytes() == b"old key"


@pytest.mark.usefixtures("umask")
def test_overwrite_replaces_atomically_with_a_private_file(tmp_path: Path) -> None:
    target = tmp_path / "device.pem"
    target.write_bytes(b"old key")
    target.chmod(0o644)
    write_private_key_file(target, KEY, overwrite=True)
    assert target.read_bytes() == KEY
    assert mode_of(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["device.pem"]  # no temporary file left behind


def test_overwrite_also_creates(tmp_path: Path) -> None:
    target = tmp_path / "new.pem"
    write_private_key_file(target, KEY, overwrite=True)
    assert target.read_bytes() == KEY
    assert mode_of(target) == 0o600


def test_large_data_is_written_completely(tmp_path: Path) -> None:
    data = bytes(range(256)) * 8192
    write_private_key_file(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        write_private_key_file(tmp_path / "k.pem", KEY)
    with pytest.raises(OSError, match="Input/output error"):
        write_private_key_file(tmp_path / "k.pem", KEY, overwrite=True)
    assert os.listdir(tmp_path) == []


def test_failed_replace_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "device.pem"
    target.write_bytes(b"old key")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_private_key_file(target, KEY, overwrite=True)
    assert target.read_bytes() == b"old key"
    assert os.listdir(tmp_path) == ["device.pem"]
