from __future__ import annotations

from dataclasses import dataclass

from cyan.cloud.auth import Accounts
from cyan.cloud.service import Cloud


@dataclass(frozen=True, slots=True)
class ApiContext:
    cloud: Cloud
    accounts: Accounts
    #: Seconds between keep-alive comments on event streams.
    keepalive: float = 15.0
