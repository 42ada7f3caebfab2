from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from cyan.store import MemoryStore, SqliteStore
from store_support import StoreFactory

VECTORS = Path(__file__).parent / "vectors"

settings.register_profile("cyan", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
settings.load_profile("cyan")

Session = dict[str, Any]


@pytest.fixture(autouse=True, scope="session")
def _own_default_data_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The per-user default data directory (platformdirs honours XDG_DATA_HOME) is a temporary one, for these
    tests and the commands they start: a test that forgets --data-dir never touches the user's own cloud."""
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))


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


#: Every implementation of the storage port runs the same contract (tests/ports).
STORE_IMPLEMENTATIONS = ["memory", "sqlite"]


@pytest.fixture(params=STORE_IMPLEMENTATIONS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens the store under test: the same data each time it is called, as a database file is."""
    if request.param == "memory":
        memory = MemoryStore()
        return lambda: memory
    path = tmp_path / "cyan.db"
    return lambda: SqliteStore(path)
