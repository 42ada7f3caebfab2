"""Read queries over the fleet: which devices match a search, in which order, one page at a time.

The device list of a fleet of thousands is filtered, sorted and paged by the database (`DeviceRepository.search`),
never in Python over every record: a page costs the same with 10 devices or 100,000.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from .models import DeviceRecord

__all__ = ["DevicePage", "DeviceQuery", "DeviceSort", "DeviceStatus"]


class DeviceStatus(enum.StrEnum):
    """What a device is doing, as the stored records say it (the live sessions may be a moment ahead)."""

    ONLINE = "online"
    OFFLINE = "offline"
    #: Offline, and its newest connection attempt since `DeviceQuery.failing_since` failed.
    FAILING = "failing"
    #: It has at least one pending key (docs/keys.md "Pending keys").
    PENDING = "pending"


class DeviceSort(enum.StrEnum):
    ID = "id"
    NAME = "name"
    LAST_HEARD = "last_heard"
    PLATFORM = "platform_id"
    PRODUCT_VERSION = "product_version"
    SYSTEM_VERSION = "system_version"
    ONLINE = "online"


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """A search of the registry. Every criterion given must hold; None leaves it out."""

    #: One owner's devices; None: every device (what admins see).
    owner: str | None = None
    #: Part of the id or of the name, without regard to case.
    text: str | None = None
    status: DeviceStatus | None = None
    #: Since when a failed attempt counts as failing "now" (required with `DeviceStatus.FAILING`).
    failing_since: datetime | None = None
    group: str | None = None
    platform_id: int | None = None
    product_version: int | None = None
    system_version: int | None = None
    #: Last heard at or after / before these times (a device never heard from matches neither).
    seen_after: datetime | None = None
    seen_before: datetime | None = None
    sort: DeviceSort = DeviceSort.ID
    descending: bool = False
    offset: int = 0
    #: 0 counts the matches without reading any.
    limit: int = 50


@dataclass(frozen=True, slots=True)
class DevicePage:
    """One page of a search: `total` matches in all, `devices` from the query's offset."""

    total: int
    devices: list[DeviceRecord] = field(default_factory=list)
