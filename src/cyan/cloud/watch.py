"""Signals drawn from connection attempts as they happen: a device (or an address) stuck in a handshake loop,
and clients that claim a device's id without proving it (docs/keys.md "Unproven attempts").

An attempt that never proved the device's identity changes nothing about that device: it raises no alert
of the device's own health. It feeds one aggregated `impersonation_attempts` signal per device instead: at
the first such attempt, then at most once an hour with the count since, never one alert per attempt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .alerts import Alert, AlertSink
from .models import AttemptOutcome, ConnectionAttempt

__all__ = ["AttemptWatch"]

#: Failures that only say the client's key is not the device's (or the id is unknown): no device's health.
KEY_REASONS = frozenset({"key_mismatch", "key_rejected"})
#: How often, at most, one device's unproven attempts and one failure loop are alerted.
ALERT_INTERVAL = timedelta(hours=1)


#: Refusals for the server's own limits (`cyan.server.device_server.OVERLOADED`, `RATE_LIMITED`), which say
#: nothing of a device.
SERVER_LIMIT_REASONS = frozenset({"overloaded", "rate_limited"})


@dataclass(slots=True)
class _Unproven:
    last_alert: datetime
    since_alert: int = 0
    keys: dict[str, int] = field(default_factory=dict)
    addresses: set[str] = field(default_factory=set)


class AttemptWatch:
    """Looks at each attempt once, keeps bounded state, and sends alerts."""

    def __init__(
        self,
        alerts: AlertSink,
        *,
        connected: Callable[[str], bool],
        owner_of: Callable[[str], str | None] = lambda _: None,
        loop_threshold: int = 5,
        loop_window: float = 300.0,
        max_tracked: int = 100_000,
    ) -> None:
        self._alerts = alerts
        self._connected = connected
        self._owner_of = owner_of
        self._loop_threshold = loop_threshold
        self._loop_window = loop_window
        self._max_tracked = max_tracked
        self._failures: dict[str, deque[datetime]] = {}
        self._loop_alerted: dict[str, datetime] = {}
        self._unproven: dict[str, _Unproven] = {}

    def observe(self, attempt: ConnectionAttempt) -> None:
        if attempt.reason in SERVER_LIMIT_REASONS:
            # The server's own limits refused it before the handshake (its admission control, or an address's
            # share of new connections): nothing the device did. A fleet reconnecting at once, or many devices
            # behind one address, would otherwise raise a handshake-loop alert per address; the records keep
            # the refusals, summed per address.
            return
        device_id = attempt.device_id
        if device_id is not None and attempt.proven is False and self._not_the_device(attempt, device_id):
            self._unproven_attempt(attempt, device_id)
        elif attempt.outcome is AttemptOutcome.FAILED:
            self._watch_for_loop(attempt)

    def _not_the_device(self, attempt: ConnectionAttempt, device_id: str) -> bool:
        """Whether the attempt says nothing of the device's own health: a key other than its registered one
        (refused, or connected only in quarantine), or any failure in its name while it is connected with its
        registered key."""
        if attempt.reason == "unknown_device":
            return False  # an id nobody registered: nobody's device to tell
        return (
            attempt.reason in KEY_REASONS or attempt.outcome is AttemptOutcome.CONNECTED or self._connected(device_id)
        )

    def _unproven_attempt(self, attempt: ConnectionAttempt, device_id: str) -> None:
        now = attempt.started_at
        state = self._unproven.get(device_id)
        first = state is None
        if state is None:
            self._bound(self._unproven)
            state = self._unproven[device_id] = _Unproven(now)
        state.since_alert += 1
        if attempt.presented_fingerprint:
            state.keys[attempt.presented_fingerprint] = state.keys.get(attempt.presented_fingerprint, 0) + 1
        if len(state.addresses) < 20:
            state.addresses.add(attempt.peer_address.rsplit(":", 1)[0])
        if not first and now - state.last_alert < ALERT_INTERVAL:
            return
        connected = self._connected(device_id)
        count = state.since_alert
        keys = ", ".join(f"{key} ({n})" for key, n in sorted(state.keys.items(), key=lambda kv: -kv[1])[:5])
        if connected:
            summary = (
                f"{count} attempt(s) claimed the id of device {device_id} while it is connected with its registered "
                "key: someone knows its id. Nothing of the device was changed; do not approve a key presented so."
            )
        else:
            summary = (
                f"{count} attempt(s) claimed the id of device {device_id} without proving it (its registered key was "
                "not used). If the device lost its key, approve the key it now presents, by its fingerprint; "
                "otherwise someone knows its id."
            )
        if keys:
            summary += f" Keys presented: {keys}."
        self._alerts.send(
            Alert(
                "impersonation_attempts",
                device_id,
                now,
                summary,
                {
                    "attempts": count,
                    "keys": dict(state.keys),
                    "addresses": sorted(state.addresses),
                    "connected": connected,
                    "last_reason": attempt.reason,
                    "owner": self._owner_of(device_id),
                },
            )
        )
        state.last_alert, state.since_alert = now, 0
        state.keys.clear()
        state.addresses.clear()

    def _watch_for_loop(self, attempt: ConnectionAttempt) -> None:
        """Alert once an hour for a device (or, unidentified or unproven, an address) failing again and again."""
        charged = attempt.device_id if attempt.device_id and attempt.reason != "unknown_device" else None
        key = charged or attempt.peer_address.rsplit(":", 1)[0]
        now = attempt.started_at
        times = self._failures.get(key)
        if times is None:
            self._bound(self._failures)
            times = self._failures[key] = deque(maxlen=self._loop_threshold)
        times.append(now)
        if len(times) < self._loop_threshold or (now - times[0]).total_seconds() > self._loop_window:
            return
        last = self._loop_alerted.get(key)
        if last is not None and now - last < ALERT_INTERVAL:
            return
        self._bound(self._loop_alerted)
        self._loop_alerted[key] = now
        if charged:
            who = f"device {charged}"
        elif attempt.device_id:
            who = f"a client at {key} naming the unregistered id {attempt.device_id}"
        else:
            who = f"an unidentified device at {key}"
        self._alerts.send(
            Alert(
                "handshake_loop",
                charged,
                now,
                f"{who} failed {len(times)} connection attempts within {self._loop_window:g} s, "
                f"last at step {attempt.step}: {attempt.reason}",
                {
                    "step": attempt.step,
                    "reason": attempt.reason,
                    "detail": attempt.detail,
                    "address": attempt.peer_address.rsplit(":", 1)[0],
                    "owner": self._owner_of(charged) if charged else None,
                },
            )
        )

    def _bound(self, table: dict[str, Any]) -> None:
        # A flood of distinct ids or addresses must not grow memory without bound: forget the oldest.
        if len(table) >= self._max_tracked:
            del table[next(iter(table))]
