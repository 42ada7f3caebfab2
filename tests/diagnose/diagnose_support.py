"""Helpers for the diagnosis tests: the logs, the recordings, records built by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cyan.cloud.models import AttemptOutcome, ConnectionAttempt, DeviceRecord
from cyan.diagnose import Diagnosis, Finding, diagnose

LOGS = Path(__file__).parent / "logs"
VECTORS = Path(__file__).parents[1] / "vectors"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEVICE = "0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba98"


def recording(name: str) -> Path:
    """A real-firmware device log, e.g. `device-os-3.1.0/drop_after_id`."""
    return VECTORS / f"{name}.device.log"


def diagnose_file(path: Path, *, leds: tuple[str, ...] = (), codes: tuple[str, ...] = ()) -> Diagnosis:
    return diagnose(path.read_text(), source=path.name, leds=leds, codes=codes)


def log(name: str, *, leds: tuple[str, ...] = (), codes: tuple[str, ...] = ()) -> Diagnosis:
    return diagnose_file(LOGS / name, leds=leds, codes=codes)


def top(result: Diagnosis) -> Finding:
    assert result.findings, "no finding"
    return result.findings[0]


def ids(result: Diagnosis) -> list[str]:
    return [f.entry.id for f in result.findings]


def finding(result: Diagnosis, entry_id: str) -> Finding:
    return next(f for f in result.findings if f.entry.id == entry_id)


def causes(found: Finding) -> list[str]:
    return [c.key for c in found.causes]


def attempt(
    seconds: float,
    reason: str | None = None,
    *,
    device: str | None = None,
    peer: str = "198.51.100.7:40001",
    step: str = "nonce",
    outcome: AttemptOutcome = AttemptOutcome.FAILED,
    presented: str | None = None,
    stored: str | None = None,
) -> ConnectionAttempt:
    """A record `seconds` after T0."""
    return ConnectionAttempt(
        started_at=T0 + timedelta(seconds=seconds),
        peer_address=peer,
        outcome=outcome,
        step="session" if outcome is AttemptOutcome.CONNECTED else step,
        reason=None if outcome is AttemptOutcome.CONNECTED else reason,
        device_id=device,
        presented_fingerprint=presented,
        stored_fingerprint=stored,
        duration=0.2,
    )


def connected(seconds: float, device: str, peer: str = "198.51.100.7:40001") -> ConnectionAttempt:
    return attempt(seconds, device=device, peer=peer, outcome=AttemptOutcome.CONNECTED)


def backoff_times(count: int, start: float = 0.0) -> list[float]:
    """Attempt times of a device in a handshake loop: 1 s ×5, 2 s ×5, 4 s ×5 … 128 s (protocol.md §8.3),
    plus the time each failing handshake takes."""
    times, t = [], start
    for n in range(1, count + 1):
        times.append(t)
        t += 2 ** min(7, (n - 1) // 5) + 0.3
    return times


def device(
    device_id: str = DEVICE,
    *,
    name: str | None = "kitchen",
    last_address: str | None = "198.51.100.7:39999",
    last_heard: datetime | None = T0 - timedelta(hours=1),
    online: bool = False,
) -> DeviceRecord:
    return DeviceRecord(id=device_id, name=name, last_address=last_address, last_heard=last_heard, online=online)
