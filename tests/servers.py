"""The PostgreSQL and Redis servers the scale-out tests run on: where they are, whether they answer, and a fresh
database or key prefix for each test.

By default the local servers of the development machines and CI (PostgreSQL 15 with trust authentication,
Redis 7, both on 127.0.0.1); CYAN_TEST_POSTGRES_URL and CYAN_TEST_REDIS_URL point elsewhere. A server that does
not answer skips the tests that need it, with the reason, which the summary of the run repeats
(conftest.py); under CI=1 it fails them instead: CI must never pass without having run them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from sqlalchemy import URL, make_url, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from cyan.bus.redis import redis_url

POSTGRES_URL = os.environ.get("CYAN_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CYAN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = bool(os.environ.get("CI"))

#: How long a probe waits for a server before calling it absent.
_PROBE_TIMEOUT = 3.0


@dataclass
class ServerState:
    """What the run found of one server: None until probed, then the reason it cannot be used ("" if it can)."""

    name: str
    hint: str
    problem: str | None = None
    used_by: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


POSTGRES = ServerState(
    "PostgreSQL",
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` (.ci/run does), "
    "or point CYAN_TEST_POSTGRES_URL at one",
)
REDIS = ServerState(
    "Redis",
    "start it with `redis-server --daemonize yes --port 6379 --save ''` (.ci/run does), "
    "or point CYAN_TEST_REDIS_URL at one",
)


def _admin_url() -> URL:
    url = make_url(POSTGRES_URL)
    return url.set(drivername="postgresql+asyncpg")


def _where(url: URL) -> str:
    return f"{url.host or 'localhost'}:{url.port or 5432}"


async def _probe_postgres() -> str:
    engine = create_async_engine(_admin_url(), connect_args={"timeout": _PROBE_TIMEOUT})
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        return f"PostgreSQL at {_where(_admin_url())} does not answer: {type(cause).__name__}: {cause}"
    finally:
        await engine.dispose()
    return ""


async def _probe_redis() -> str:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=_PROBE_TIMEOUT, socket_timeout=_PROBE_TIMEOUT)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        return f"{redis_url(REDIS_URL)[2]} does not answer: {type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return ""


def report(server: ServerState) -> dict[str, Any]:
    """What one pytest-xdist worker found of the server, for the controller's summary (`merge`)."""
    return {"problem": server.problem, "used_by": server.used_by, "skipped": server.skipped}


def merge(server: ServerState, found: dict[str, Any]) -> None:
    """Add a worker's `report` to what the controller knows of the server."""
    if found["problem"] is not None and (server.problem is None or found["problem"]):
        server.problem = found["problem"]
    server.used_by += found["used_by"]
    server.skipped += found["skipped"]


def require(server: ServerState, test: str) -> None:
    """Skip (or, under CI, fail) the test when the server does not answer."""
    if server.problem is None:
        server.problem = asyncio.run(_probe_postgres() if server is POSTGRES else _probe_redis())
    if not server.problem:
        server.used_by.append(test)
        return
    server.skipped.append(test)
    message = f"{server.problem}; {server.hint}"
    if IN_CI:
        pytest.fail(f"CI=1 and a server the tests need is missing: {message}", pytrace=False)
    pytest.skip(message)


# -- PostgreSQL: a database per test --------------------------------------------------------------


async def _admin(*statements: str) -> None:
    await admin_rows(*statements)


async def admin_rows(*statements: str) -> list[tuple[Any, ...]]:
    """Run statements as the test server's administrator, outside any transaction; the last one's rows."""
    engine = create_async_engine(_admin_url(), isolation_level="AUTOCOMMIT")
    rows: list[tuple[Any, ...]] = []
    try:
        async with engine.connect() as conn:
            for statement in statements:
                result = await conn.execute(text(statement))
                rows = [tuple(row) for row in result.all()] if result.returns_rows else []
    finally:
        await engine.dispose()
    return rows


@contextmanager
def fresh_database(test: str) -> Iterator[URL]:
    """A new, empty database on the test server, dropped afterwards (with whatever connections remain)."""
    require(POSTGRES, test)
    name = f"cyan_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _admin_url().set(database=name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- Redis: a key prefix per test ----------------------------------------------------------------


async def _delete_prefix(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@contextmanager
def fresh_prefix(test: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    require(REDIS, test)
    prefix = f"cyan-test-{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        asyncio.run(_delete_prefix(prefix))


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str, *, timeout: float = 10.0) -> None:
    """Poll `condition` until it holds; fail, naming `what`, if it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what} after {timeout:g} s")
        await asyncio.sleep(0.01)
