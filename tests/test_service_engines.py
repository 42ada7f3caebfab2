"""The settings that choose the database and the bus, and the composition root (`cyan.service`) building a
`cyan serve` node and the command line's use cases on PostgreSQL and Redis from them."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from sqlalchemy import URL

import servers
from cyan.app import ServerKeyChangedError, ServerKeyMissingError
from cyan.bus import InProcessBus, RedisBus, RedisOptions
from cyan.cli import main
from cyan.cloud.models import CloudEvent
from cyan.cloud.ports import BusUnavailableError
from cyan.config import Settings
from cyan.keys import (
    encode_ec_private_key_pem,
    encode_private_key_pem,
    fingerprint,
    generate_ec_key,
    generate_server_key,
    write_private_key_file,
)
from cyan.service import Service, ensure_server_keys
from cyan.store import PostgresStore, SqliteStore
from cyan.testing import loopback_settings


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    with servers.fresh_prefix(request.node.nodeid) as prefix:
        yield prefix


def test_database_bus_and_node_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CYAN_DATABASE_URL", "postgresql://cyan@db/cyan")
    monkeypatch.setenv("CYAN_BUS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("CYAN_NODE_ID", "node-7")
    settings = Settings.from_env(data_dir=tmp_path)
    assert (settings.database_url, settings.bus_url, settings.node_id) == (
        "postgresql://cyan@db/cyan",
        "redis://cache:6379/0",
        "node-7",
    )
    assert settings.database_location == "postgresql://cyan@db/cyan"


def test_by_default_one_node_on_the_data_directorys_sqlite_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, api_port=8081)
    assert settings.database_location == tmp_path / "cyan.db"
    assert settings.bus_url == ""
    assert settings.node_id == f"{socket.gethostname()}:8081"
    with pytest.raises(ValueError, match="node id must have no spaces"):
        Settings(data_dir=tmp_path, node_id="node 7")


def test_a_node_of_the_default_kind(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, device_port=0, device_udp_port=0, api_port=0)
    service = Service(settings, ensure_server_keys(settings))
    assert isinstance(service.store, SqliteStore)
    assert isinstance(service.bus, InProcessBus)


def test_a_node_on_postgresql_and_redis_shares_them_with_the_command_line_and_other_nodes(
    postgres_url: URL, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgres_url.render_as_string(hide_password=False)
    monkeypatch.setenv("CYAN_DATABASE_URL", database)
    assert main(["users", "add", "alice@example.com", "--password", "correct horse", "--data-dir", str(tmp_path)]) == 0
    settings = loopback_settings(
        tmp_path / "node-1",
        workers=0,
        database_url=database,
        bus_url=f"{servers.REDIS_URL}?prefix={prefix}",
        node_id="node-1",
    )
    service = Service(settings, ensure_server_keys(settings))
    assert isinstance(service.store, PostgresStore)
    assert isinstance(service.bus, RedisBus)
    assert (service.bus.node_id, service.bus.options.prefix) == ("node-1", prefix)

    async def scenario() -> None:
        other = RedisBus(servers.REDIS_URL, node_id="node-2", options=RedisOptions(prefix=prefix))
        await other.start()
        heard = other.subscribe("hello")
        await service.start()
        try:
            assert [u.username for u in await service.store.accounts.list_users()] == ["alice@example.com"]
            # On the bus once started, before anything used it: its lease is taken, and what another node
            # publishes from now on reaches it.
            async with aioredis.Redis.from_url(servers.REDIS_URL) as client:
                assert await client.get(f"{prefix}node:node-1") is not None
            mine = service.bus.subscribe("hi")
            other.publish(CloudEvent("hi", "from node-2", 60, datetime.now(UTC), None, "alice@example.com", True))
            got = await asyncio.wait_for(mine.get(), 10)
            assert got is not None
            assert got.data == "from node-2"
            service.cloud.publish("hello", "from node-1", owner="alice@example.com")
            got = await asyncio.wait_for(heard.get(), 10)
            assert isinstance(got, CloudEvent)
            assert (got.name, got.data) == ("hello", "from node-1")
            assert got.published_at <= datetime.now(UTC)
        finally:
            await service.stop()
            await other.close()
        # The node left the cloud when it stopped.
        with pytest.raises(BusUnavailableError, match="closed"):
            await service.bus.claim("ab" * 12, "s1")

    asyncio.run(scenario())


def test_every_node_of_a_cloud_presents_its_server_key_or_refuses_to_start(postgres_url: URL, tmp_path: Path) -> None:
    """The first node records the cloud's server key in the shared database; a node given another key, or none,
    refuses to start and says which key the cloud uses and where to get it."""
    database = postgres_url.render_as_string(hide_password=False)

    def node(name: str) -> Service:
        settings = loopback_settings(tmp_path / name, workers=0, database_url=database, node_id=name)
        return Service(settings, ensure_server_keys(settings))

    async def scenario() -> None:
        first = node("node-1")
        await first.start()
        await first.stop()
        other = node("node-2")  # a key of its own, made now
        with pytest.raises(ServerKeyMissingError, match="the cloud this node joins") as missing:
            await other.start()
        assert first.keys.fingerprint in str(missing.value)
        assert "copy server_key.pem from another node" in missing.value.hint
        # Given the cloud's RSA key file only, it still refuses: the UDP devices hold the P-256 key's public half.
        (tmp_path / "node-2" / "server_key.pem").write_bytes((tmp_path / "node-1" / "server_key.pem").read_bytes())
        assert first.keys.udp_private_key is not None
        udp_fingerprint = fingerprint(first.keys.udp_private_key.public_key())
        halfway = node("node-2")
        with pytest.raises(ServerKeyMissingError, match=r"the UDP server key .* is missing") as missing_udp:
            await halfway.start()
        assert udp_fingerprint in str(missing_udp.value)
        assert "bad_signature" in str(missing_udp.value)
        assert "copy udp_server_key.pem from another node" in missing_udp.value.hint
        assert not (tmp_path / "node-2" / "udp_server_key.pem").exists()  # nothing written that no node has
        # Given both key files, it starts.
        udp_file = (tmp_path / "node-1" / "udp_server_key.pem").read_bytes()
        write_private_key_file(tmp_path / "node-2" / "udp_server_key.pem", udp_file)
        same = node("node-2")
        await same.start()
        await same.stop()
        # A key file of its own, another key: refused too.
        (tmp_path / "node-3").mkdir()
        write_private_key_file(tmp_path / "node-3" / "server_key.pem", encode_private_key_pem(generate_server_key()))
        wrong = node("node-3")
        with pytest.raises(ServerKeyChangedError, match="other nodes") as changed:
            await wrong.start()
        assert first.keys.fingerprint in str(changed.value)
        # The cloud's RSA key with a UDP key of its own: refused, naming the UDP key the cloud uses.
        (tmp_path / "node-3" / "server_key.pem").write_bytes((tmp_path / "node-1" / "server_key.pem").read_bytes())
        write_private_key_file(tmp_path / "node-3" / "udp_server_key.pem", encode_ec_private_key_pem(generate_ec_key()))
        wrong_udp = node("node-3")
        with pytest.raises(ServerKeyChangedError, match=r"UDP server key .* but the cloud.s other") as udp_changed:
            await wrong_udp.start()
        assert udp_fingerprint in str(udp_changed.value)
        assert "copy udp_server_key.pem from another node" in udp_changed.value.hint

    asyncio.run(scenario())


def test_one_node_refuses_to_start_with_another_udp_server_key_than_its_devices_were_given(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, device_host="127.0.0.1", device_port=0, device_udp_port=0, api_host="127.0.0.1", api_port=0
    )

    async def scenario() -> None:
        first = Service(settings, ensure_server_keys(settings))
        await first.start()
        await first.stop()
        assert first.keys.udp_private_key is not None
        recorded = fingerprint(first.keys.udp_private_key.public_key())
        # The key file replaced by another: refused, with the fingerprint the devices hold.
        (tmp_path / "udp_server_key.pem").unlink()
        write_private_key_file(tmp_path / "udp_server_key.pem", encode_ec_private_key_pem(generate_ec_key()))
        with pytest.raises(ServerKeyChangedError, match=r"the UDP server key .* but the devices were given") as changed:
            await Service(settings, ensure_server_keys(settings)).start()
        assert recorded in str(changed.value)
        assert "put back the key with the fingerprint" in changed.value.hint
        # The key file gone: refused, rather than a new key made quietly.
        (tmp_path / "udp_server_key.pem").unlink()
        with pytest.raises(ServerKeyMissingError, match=r"the UDP server key .* is missing") as missing:
            await Service(settings, ensure_server_keys(settings)).start()
        assert recorded in str(missing.value)
        assert not (tmp_path / "udp_server_key.pem").exists()

    asyncio.run(scenario())


def test_a_node_whose_redis_does_not_answer_refuses_to_start_and_names_it(tmp_path: Path) -> None:
    """Like a database that cannot be opened: nothing is left listening, and the message names the Redis (never
    its password)."""
    settings = loopback_settings(
        tmp_path, workers=0, bus_url="redis://:s3cret@127.0.0.1:1/0?timeout=1", node_id="node-1"
    )
    service = Service(settings, ensure_server_keys(settings))

    async def scenario() -> None:
        with pytest.raises(BusUnavailableError, match=r"cannot join the cloud: Redis at 127\.0\.0\.1:1/0: ") as info:
            await service.start()
        assert "s3cret" not in str(info.value)
        assert service.server_key_file is None  # the device server never started
        assert service._api is None
        with pytest.raises(BusUnavailableError, match="closed"):
            await service.bus.claim("ab" * 12, "s1")

    asyncio.run(scenario())


def test_cyan_serve_with_a_redis_that_does_not_answer_fails_with_its_address(tmp_path: Path) -> None:
    """`cyan serve` joins the bus as it starts: with Redis not answering it exits with the address, rather than
    serving devices as a node the others cannot reach."""
    command = [sys.executable, "-c", "import sys; from cyan.cli import main; sys.exit(main(sys.argv[1:]))"]
    options = ["--device-host", "127.0.0.1", "--device-port", "0", "--device-udp-port", "off"]
    options += ["--api-host", "127.0.0.1", "--api-port", "0", "--bus", "redis://:s3cret@127.0.0.1:1/0?timeout=1"]
    argv = [*command, "serve", "--data-dir", str(tmp_path), *options]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "error: cannot join the cloud: Redis at 127.0.0.1:1/0: " in done.stderr
    assert "hint: check that Redis answers at the address of --bus" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout
