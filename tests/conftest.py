from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

VECTORS = Path(__file__).parent / "vectors"

settings.register_profile("cyan", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.load_profile("cyan")

Session = dict[str, Any]


@pytest.fixture
def vectors() -> Path:
    """The recordings of real firmware (see tests/vectors/*/README.md)."""
    return VECTORS


@pytest.fixture
def load_session() -> Callable[[str], Session]:
    def load(name: str) -> Session:
        data: Session = json.loads((VECTORS / f"{name}.session.json").read_text())
        return data

    return load
