from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import servers
from cyan.store import MemoryStore, PostgresStore, SqliteStore
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


@pytest.fixture(autouse=True, scope="session")
def _any_udp_port() -> None:
    """The servers the tests start (`cyan serve` included) take any free UDP port unless a test names one: 5684
    is one per machine, and an operator's own server, or a second test run, may hold it."""
    os.environ.setdefault("CYAN_DEVICE_UDP_PORT", "0")


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
STORE_IMPLEMENTATIONS = ["memory", "sqlite", "postgresql"]


@pytest.fixture(params=STORE_IMPLEMENTATIONS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens the store under test: the same data each time it is called, as a database file is. On PostgreSQL,
    a database of its own for each test."""
    if request.param == "memory":
        memory = MemoryStore()
        yield lambda: memory
    elif request.param == "sqlite":
        path = tmp_path / "cyan.db"
        yield lambda: SqliteStore(path)
    else:
        with servers.fresh_database(request.node.nodeid) as url:
            yield lambda: PostgresStore(url)


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh, empty PostgreSQL database (its URL), dropped after the test."""
    with servers.fresh_database(request.node.nodeid) as url:
        yield url


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: Any) -> Iterator[None]:
    """Say plainly, after the short summary, whether the PostgreSQL and Redis suites ran, and why not (with
    pytest-xdist, from what every worker reported)."""
    yield
    for server in (servers.POSTGRES, servers.REDIS):
        if server.problem is None:
            continue  # no test needed it
        if server.skipped:
            verb = "FAILED" if servers.IN_CI else "SKIPPED"
            terminalreporter.write_line(
                f"{server.name} suites {verb} ({len(server.skipped)} tests): {server.problem}; {server.hint}",
                red=True,
                bold=True,
            )
        else:
            terminalreporter.write_line(f"{server.name} suites ran ({len(server.used_by)} tests)", green=True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """A pytest-xdist worker finished: take in what it found of the servers (see `pytest_sessionfinish`)."""
    for server in (servers.POSTGRES, servers.REDIS):
        found = getattr(node, "workeroutput", {}).get(f"server:{server.name}")
        if found is not None:
            servers.merge(server, found)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller writes the summary
        for server in (servers.POSTGRES, servers.REDIS):
            workeroutput[f"server:{server.name}"] = servers.report(server)
        return
    # Under CI, a run that collected nothing is a failure: it proves nothing.
    if servers.IN_CI and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("CI=1: no test ran, which proves nothing: failing the run", red=True, bold=True)
