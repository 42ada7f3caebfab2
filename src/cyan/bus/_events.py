from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["CloudEvent"]


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """An event as the cloud carries it: from a device, from the API, or from the cloud itself."""

    name: str
    data: str | None
    ttl: int
    published_at: datetime
    #: The device that published it, or None for events published through the API.
    device_id: str | None
    #: Whose devices may see it (MY_DEVICES scope); None for devices without an owner.
    owner: str | None
    private: bool = True
