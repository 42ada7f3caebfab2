from __future__ import annotations

from cyan.cloud.models import CloudEvent

__all__ = ["CloudEvent"]
