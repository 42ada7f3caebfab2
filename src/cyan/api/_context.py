from __future__ import annotations

from dataclasses import dataclass

from cyan.cloud.auth import Accounts
from cyan.cloud.ota import UpdateManager
from cyan.cloud.service import Cloud


@dataclass(frozen=True, slots=True)
class ApiContext:
    cloud: Cloud
    accounts: Accounts
    #: Seconds between keep-alive comments on event streams. particle-api-js gives up on a stream that is
    #: silent for 13 s and reconnects 2 s later, losing what was published meanwhile: stay well under.
    keepalive: float = 9.0
    #: Firmware updates (flash, jobs); None: this API does not offer them.
    updates: UpdateManager | None = None
