"""Alerts to operators: key changes and devices stuck in a handshake loop, to a webhook URL."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Protocol

import httpx

__all__ = ["Alert", "AlertSink", "LoggingAlerts", "WebhookAlerts"]

log = logging.getLogger("cyan.alerts")


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str  # key_change, key_refused, key_quarantined, handshake_loop, key_error_reported
    device_id: str | None
    at: datetime
    summary: str
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["at"] = self.at.isoformat()
        return body


class AlertSink(Protocol):
    def send(self, alert: Alert) -> None:
        """Queue the alert; never blocks and never raises."""


class LoggingAlerts:
    """The default sink: a warning in the log, and the most recent alerts kept in memory."""

    def __init__(self, keep: int = 200) -> None:
        self.recent: deque[Alert] = deque(maxlen=keep)

    def send(self, alert: Alert) -> None:
        self.recent.append(alert)
        log.warning("alert %s: %s", alert.kind, alert.summary)


class WebhookAlerts(LoggingAlerts):
    """POSTs each alert as JSON to a URL, in the background, retrying a few times."""

    def __init__(self, url: str, *, attempts: int = 3, timeout: float = 5.0) -> None:
        super().__init__()
        self.url = url
        self._attempts = attempts
        self._timeout = timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, alert: Alert) -> None:
        super().send(alert)
        task = asyncio.get_running_loop().create_task(self._post(alert))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, alert: Alert) -> None:
        delay = 1.0
        for attempt in range(1, self._attempts + 1):
            try:
                async with httpx.AsyncClient(timeout=self._timeout) as client:
                    response = await client.post(self.url, json=alert.to_json())
                if response.status_code < 400:
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = str(exc) or type(exc).__name__
            log.error("alert webhook %s failed (attempt %d): %s", self.url, attempt, problem)
            await asyncio.sleep(delay)
            delay *= 2

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
