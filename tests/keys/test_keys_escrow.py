"""The key escrow file: scrypt + AES-GCM under a passphrase, append-only JSON Lines (cyan.keys._escrow)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from keys_support import device_key, minimal_der, short_dp_key

import cyan.keys as keys
from cyan.keys import EscrowError, KeyEscrow, WrongPassphraseError

PASSPHRASE = "correct horse battery"
DEVICE_A = "3c002d000447343138333038"
DEVICE_B = "21003a000d47343233323032"
WHEN = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
FAST_N = 2**10  # the file records n; tests use the cheapest allowed cost


def counter_random() -> Callable[[int], bytes]:
    state = {"next": 0}

    def random(size: int) -> bytes:
        state["next"] += 1
        return bytes([state["next"]]) * size

    return random


def make_file(*entries: tuple[str, bytes]) -> bytes:
    escrow = KeyEscrow.create(PASSPHRASE, n=FAST_N)
    data = escrow.header_line()
    for device_id, der in entries:
        data += escrow.seal(device_id, der, WHEN).to_line()
    return data


def test_round_trip_and_the_documented_format() -> None:
    der = minimal_der(device_key())
    data = make_file((DEVICE_A, der))
    header, entry = (json.loads(line) for line in data.decode().splitlines())
    assert header["format"] == "cyan-key-escrow"
    assert header["version"] == 1
    assert header["cipher"] == "AES-256-GCM"
    assert header["kdf"]["name"] == "scrypt"
    assert (header["kdf"]["n"], header["kdf"]["r"], header["kdf"]["p"]) == (FAST_N, 8, 1)
    assert len(base64.b64decode(header["kdf"]["salt"])) == 16
    assert entry["device_id"] == DEVICE_A
    assert entry["fingerprint"] == keys.fingerprint(device_key())
    assert entry["created_at"] == "2024-05-01T12:00:00Z"
    assert len(base64.b64decode(entry["nonce"])) == 12
    assert der not in data
    opened = KeyEscrow.open(data, PASSPHRASE)
    found = opened.find(DEVICE_A)
    assert found is not None
    assert opened.unseal(found) == der


def test_default_cost_is_scrypt_2_17() -> None:
    escrow = KeyEscrow.create(PASSPHRASE)
    assert json.loads(escrow.header_line())["kdf"]["n"] == 2**17


def test_injected_randomness_makes_files_reproducible() -> None:
    def build() -> bytes:
        random = counter_random()
        escrow = KeyEscrow.create(PASSPHRASE, n=FAST_N, random=random)
        return escrow.header_line() + escrow.seal(DEVICE_A, minimal_der(device_key()), WHEN, random=random).to_line()

    first = build()
    assert first == build()
    assert json.loads(first.splitlines()[1])["nonce"] == base64.b64encode(bytes([3]) * 12).decode()


def test_wrong_passphrase_is_reported_before_anything_else() -> None:
    data = make_file((DEVICE_A, minimal_der(device_key())))
    with pytest.raises(WrongPassphraseError, match="does not open"):
        KeyEscrow.open(data, "another passphrase")


def test_newest_entry_wins_unless_a_fingerprint_is_asked_for() -> None:
    old, new = minimal_der(short_dp_key()), minimal_der(device_key())
    opened = KeyEscrow.open(make_file((DEVICE_A, old), (DEVICE_B, old), (DEVICE_A, new)), PASSPHRASE)
    latest = opened.find(DEVICE_A.upper())
    assert latest is not None
    assert opened.unseal(latest) == new
    earlier = opened.find(DEVICE_A, keys.fingerprint(short_dp_key()))
    assert earlier is not None
    assert opened.unseal(earlier) == old
    assert opened.find("0" * 24) is None


def test_an_entry_moved_to_another_device_fails_authentication() -> None:
    data = make_file((DEVICE_A, minimal_der(device_key())))
    header, entry = data.decode().splitlines()
    moved = json.loads(entry)
    moved["device_id"] = DEVICE_B
    opened = KeyEscrow.open(f"{header}\n{json.dumps(moved)}\n".encode(), PASSPHRASE)
    found = opened.find(DEVICE_B)
    assert found is not None
    with pytest.raises(EscrowError, match="fails authentication"):
        opened.unseal(found)


def test_a_line_cut_short_by_a_crash_is_skipped() -> None:
    data = make_file((DEVICE_A, minimal_der(device_key())), (DEVICE_B, minimal_der(device_key())))
    cut = data[:-40]
    opened = KeyEscrow.open(cut, PASSPHRASE)
    assert opened.truncated
    assert [e.device_id for e in opened.entries] == [DEVICE_A]
    whole = KeyEscrow.open(data, PASSPHRASE)
    assert not whole.truncated
    assert len(whole.entries) == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: {**h, "version": 2}, "version 2; this Cyan reads version 1"),
        (lambda h: {**h, "format": "other"}, "not a Cyan escrow file"),
        (lambda h: {**h, "cipher": "AES-128-CBC"}, "is not AES-256-GCM"),
        (lambda h: {**h, "kdf": {**h["kdf"], "n": 2**30}}, "unsupported scrypt parameters"),
        (lambda h: {**h, "kdf": {**h["kdf"], "name": "pbkdf2"}}, "not scrypt"),
    ],
    ids=["version", "format", "cipher", "cost", "kdf"],
)
def test_header_problems(mutate: Callable[[dict[str, object]], dict[str, object]], message: str) -> None:
    header, *rest = make_file().decode().splitlines()
    changed = json.dumps(mutate(json.loads(header)))
    with pytest.raises(EscrowError, match=message):
        KeyEscrow.open(("\n".join([changed, *rest]) + "\n").encode(), PASSPHRASE)


def test_bad_inputs() -> None:
    with pytest.raises(EscrowError, match="at least 8 characters"):
        KeyEscrow.create("short")
    with pytest.raises(EscrowError, match="power of two"):
        KeyEscrow.create(PASSPHRASE, n=3000)
    with pytest.raises(EscrowError, match="empty"):
        KeyEscrow.open(b"", PASSPHRASE)
    with pytest.raises(EscrowError, match="not JSON"):
        KeyEscrow.open(b"hello\n", PASSPHRASE)
    escrow = KeyEscrow.create(PASSPHRASE, n=FAST_N)
    with pytest.raises(EscrowError, match="not a device id"):
        escrow.seal("kitchen", minimal_der(device_key()), WHEN)
    with pytest.raises(EscrowError, match="timezone-aware"):
        escrow.seal(DEVICE_A, minimal_der(device_key()), datetime(2024, 1, 1))
    bad_entry = make_file().decode() + '{"device_id": "' + DEVICE_A + '", "fingerprint": 3}\n'
    with pytest.raises(EscrowError, match="line 2: 'fingerprint' is missing or not a str"):
        KeyEscrow.open(bad_entry.encode(), PASSPHRASE)
