"""Helpers for the store tests (tests/ports and tests/store): a scenario on a fresh event loop, sample records."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, DeviceRecord, Variable
from cyan.store import MemoryStore, PostgresStore, SqliteStore

T = TypeVar("T")
#: Opens the store under test: the same data each time it is called, as a database file is (tests/ports).
StoreFactory = Callable[[], MemoryStore | SqliteStore | PostgresStore]

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
DEVICE_ID = "0123456789abcdef01234567"
OTHER_ID = "fedcba9876543210fedcba98"


def run(scenario: Coroutine[Any, Any, T]) -> T:
    """Run `scenario` on a new loop, then check that it left no driver thread behind (a store not closed)."""
    before = set(threading.enumerate())
    result = asyncio.run(scenario)
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        for thread in left:
            thread.join(timeout=0.1)
    assert not left, f"threads left running: {left}"
    return result


def full_device(device_id: str = DEVICE_ID, name: str | None = "kitchen") -> DeviceRecord:
    """A device with every field set to a value that differs from the default."""
    return DeviceRecord(
        id=device_id,
        name=name,
        owner="alice",
        public_key_der=bytes(range(256)) + b"\x00\xff",
        key_fingerprint="sha256:abc",
        platform_id=6,
        product_id=6,
        product_version=65535,
        system_version=3103,
        hello_flags=0x06,
        functions=["led", "reset", "ünïcode"],
        variables=[Variable("temp", "double"), Variable("count", "int32"), Variable("ok", "bool")],
        online=True,
        last_heard=T0 + timedelta(minutes=5),
        last_address="192.0.2.10:51234",
        created_at=T0,
    )


def attempt(
    started_at: datetime = T0,
    *,
    device_id: str | None = DEVICE_ID,
    peer_address: str = "192.0.2.10:51234",
    outcome: AttemptOutcome = AttemptOutcome.FAILED,
) -> ConnectionAttempt:
    return ConnectionAttempt(
        started_at=started_at,
        peer_address=peer_address,
        outcome=outcome,
        step="session" if outcome is AttemptOutcome.CONNECTED else "nonce",
        reason=None if outcome is AttemptOutcome.CONNECTED else "nonce_mismatch",
        detail=None if outcome is AttemptOutcome.CONNECTED else "the device holds another server key",
        device_id=device_id,
        presented_fingerprint="sha256:presented",
        stored_fingerprint="sha256:stored",
        duration=0.25,
    )
