"""RedisBus beyond the port's contract (tests/ports runs that on Redis too): leases that end when a node stops
renewing, a node restarted under its id, reconnecting after Redis drops its connections or loses its data,
what crosses between nodes (and what is refused), and Redis unreachable. Each test has a key prefix of its
own."""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

import servers
from cyan.bus import RedisBus, RedisOptions, RemoteRequestError, open_bus
from cyan.bus.redis import _loads, redis_url
from cyan.cloud.errors import DeviceOfflineError
from cyan.cloud.models import CloudEvent
from cyan.cloud.ports import BusSubscription, BusUnavailableError, NodeUnreachableError, Presence

T = TypeVar("T")
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DEVICE = "ab" * 12


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    with servers.fresh_prefix(request.node.nodeid) as prefix:
        yield prefix


def node(prefix: str, node_id: str, *, lease: float = 10.0) -> RedisBus:
    return RedisBus(servers.REDIS_URL, node_id=node_id, options=RedisOptions(prefix=prefix, lease=lease, capacity=100))


def event(name: str) -> CloudEvent:
    return CloudEvent(name, "data", 60, T0, DEVICE, "alice", True)


async def eventually(call: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str) -> T:
    """Call until `done` holds of the result (Redis unavailable meanwhile is retried); fail after 10 s."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            result = await call()
            if done(result):
                return result
        except BusUnavailableError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still not {what} after 10 s")
        await asyncio.sleep(0.01)


async def heard(publisher: RedisBus, subscription: BusSubscription) -> None:
    """Publish probes until one reaches the subscription (of another node): events flow again."""

    async def probe() -> CloudEvent | None:
        publisher.publish(event("probe"))
        try:
            return await asyncio.wait_for(subscription.get(), 0.05)
        except TimeoutError:
            return None

    await eventually(probe, lambda got: got is not None, f"hearing node {publisher.node_id}")


async def redis_client() -> aioredis.Redis:
    return aioredis.Redis.from_url(servers.REDIS_URL)


async def kill_connections(name: str) -> int:
    """CLIENT KILL every connection a node opened (they carry its name): what a Redis restart does to them."""
    client = await redis_client()
    try:
        ids = [entry["id"] for entry in await client.client_list() if entry.get("name") == name]
        for client_id in ids:
            await client.client_kill_filter(_id=client_id)
        return len(ids)
    finally:
        await client.aclose()


async def delete_keys(prefix: str) -> None:
    client = await redis_client()
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def same(presence: Presence | None, node_id: str, session_id: str) -> bool:
    return presence is not None and (presence.node_id, presence.session_id) == (node_id, session_id)


# -- presence and leases ------------------------------------------------------------------------


def test_a_node_that_stops_renewing_frees_its_devices_when_its_lease_ends(prefix: str) -> None:
    async def scenario() -> None:
        a, b = node(prefix, "a", lease=0.5), node(prefix, "b")
        await asyncio.gather(a.start(), b.start())
        assert await a.claim(DEVICE, "s1") is None
        assert same(await b.holder(DEVICE), "a", "s1")
        await a.close(release=False)  # as a crash: nothing released, nothing renewed
        await eventually(lambda: b.holder(DEVICE), lambda held: held is None, "free")
        assert await b.claim(DEVICE, "s2") is None  # nothing live was replaced
        with pytest.raises(NodeUnreachableError, match="not in the cloud"):
            await b.request("a", "hello", timeout=1.0)
        await b.close()

    asyncio.run(scenario())


def test_a_node_renews_its_lease_while_it_runs(prefix: str) -> None:
    async def scenario() -> None:
        a, b = node(prefix, "a", lease=2.0), node(prefix, "b")
        await asyncio.gather(a.start(), b.start())
        await a.claim(DEVICE, "s1")
        client = await redis_client()
        try:
            # The lease's time to live goes back up: it is renewed (four renewals: past the first lease).
            renewals = 0
            last = await client.pttl(f"{prefix}node:a")
            while renewals < 4:
                now = await client.pttl(f"{prefix}node:a")
                assert now > 0, "the lease lapsed while its node ran"
                renewals += now > last
                last = now
                await asyncio.sleep(0.01)
        finally:
            await client.aclose()
        assert same(await b.holder(DEVICE), "a", "s1")
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_node_restarted_under_its_id_does_not_inherit_its_earlier_sessions(prefix: str) -> None:
    async def scenario() -> None:
        first, b = node(prefix, "a"), node(prefix, "b")
        await asyncio.gather(first.start(), b.start())
        await first.claim(DEVICE, "s1")
        await first.claim("cd" * 12, "s2")
        await first.close(release=False)
        again = node(prefix, "a")
        await again.start()
        # Its lease now holds another token: the earlier run's presences are dead, and were swept.
        assert await b.holder(DEVICE) is None
        client = await redis_client()
        try:
            assert await client.exists(f"{prefix}presence:{DEVICE}", f"{prefix}presence:{'cd' * 12}") == 0
            assert await client.scard(f"{prefix}held:a") == 0
        finally:
            await client.aclose()
        assert await again.claim(DEVICE, "s3") is None
        assert same(await b.holder(DEVICE), "a", "s3")
        await again.close()
        await b.close()

    asyncio.run(scenario())


def test_claims_on_two_nodes_at_once_leave_one_holder_and_each_replaced_presence_is_told_once(prefix: str) -> None:
    async def scenario() -> None:
        a, b = node(prefix, "a"), node(prefix, "b")
        await asyncio.gather(a.start(), b.start())
        claims = [(a, f"a{n}") if n % 2 == 0 else (b, f"b{n}") for n in range(20)]
        replaced = await asyncio.gather(*(bus.claim(DEVICE, session) for bus, session in claims))
        held = await a.holder(DEVICE)
        assert held is not None
        # Atomic replacement: every claim but the first replaced exactly one other, and the last one holds.
        told = [(p.node_id, p.session_id) for p in replaced if p is not None]
        assert len(told) == 19
        assert len(set(told)) == 19
        assert (held.node_id, held.session_id) not in told
        await a.close()
        await b.close()

    asyncio.run(scenario())


# -- reconnecting -------------------------------------------------------------------------------


def test_a_node_whose_connections_are_killed_reconnects(prefix: str) -> None:
    async def scenario() -> None:
        a, b = node(prefix, "a"), node(prefix, "b")
        await asyncio.gather(a.start(), b.start())
        on_a, on_b = a.subscribe("probe"), b.subscribe("probe")
        await a.claim(DEVICE, "s1")

        async def answer(message: object) -> object:
            return f"a got {message}"

        a.serve(answer)
        assert await b.request("a", "before", timeout=5.0) == "a got before"
        assert await kill_connections(f"{prefix}a") >= 2
        await heard(a, on_b)  # a publishes again
        await heard(b, on_a)  # a is subscribed again
        assert same(await b.holder(DEVICE), "a", "s1")
        assert await eventually(lambda: b.request("a", "after", timeout=1.0), bool, "answered") == "a got after"
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_after_redis_lost_its_data_each_node_claims_its_sessions_again(prefix: str) -> None:
    """A restart without persistence: the keys are gone and every connection dropped."""

    async def scenario() -> None:
        a, b = node(prefix, "a", lease=1.0), node(prefix, "b", lease=1.0)
        await asyncio.gather(a.start(), b.start())
        await a.claim(DEVICE, "s1")
        await b.claim("cd" * 12, "s2")
        await a.claim("ef" * 12, "s3")
        await a.release("ef" * 12, "s3")  # ended: not claimed again
        await delete_keys(prefix)
        await kill_connections(f"{prefix}a")
        await kill_connections(f"{prefix}b")
        await eventually(lambda: b.holder(DEVICE), lambda held: same(held, "a", "s1"), "claimed again by a")
        await eventually(lambda: a.holder("cd" * 12), lambda held: same(held, "b", "s2"), "claimed again by b")
        assert await a.holder("ef" * 12) is None
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_lapsed_lease_is_noticed_at_the_next_renewal_and_the_sessions_claimed_again(prefix: str) -> None:
    async def scenario() -> None:
        a, b = node(prefix, "a", lease=0.6), node(prefix, "b")
        await asyncio.gather(a.start(), b.start())
        await a.claim(DEVICE, "s1")
        await delete_keys(prefix)  # without touching the connections
        await eventually(lambda: b.holder(DEVICE), lambda held: same(held, "a", "s1"), "claimed again")
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_device_that_moved_while_redis_was_away_is_not_taken_back(prefix: str) -> None:
    async def scenario() -> None:
        # a notices the loss within 0.2 s; b's lease is long enough that no pause of a loaded machine lets it
        # lapse while the test relies on it.
        a, b = node(prefix, "a", lease=0.6), node(prefix, "b", lease=3.0)
        await asyncio.gather(a.start(), b.start())
        await a.claim(DEVICE, "s1")
        client = await redis_client()
        try:
            await delete_keys(prefix)
            # The device reconnected through b (b's lease is back) before or after a noticed the loss: b's is
            # the newer session, and a's claiming again must not take it back.
            await eventually(lambda: client.exists(f"{prefix}node:b"), bool, "renewed by b")
            await b.claim(DEVICE, "s2")
            await eventually(lambda: client.exists(f"{prefix}node:a"), bool, "renewed by a")
        finally:
            await client.aclose()
        assert same(await a.holder(DEVICE), "b", "s2")
        await a.close()
        await b.close()

    asyncio.run(scenario())


# -- what crosses between nodes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Smuggled:
    """A type of this test module: not one of the cloud's message types."""

    text: str


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_only_the_clouds_types_are_unpickled() -> None:
    with pytest.raises(pickle.UnpicklingError, match=r"posix\.system is not a message type of the cloud"):
        _loads(pickle.dumps(Exploit()))
    with pytest.raises(pickle.UnpicklingError, match="is not a message type"):
        _loads(pickle.dumps(Smuggled("x")))
    # A class of the domain that is not a message (no dataclass, enum or error) is refused too.
    with pytest.raises(pickle.UnpicklingError, match=r"cyan\.cloud\.ports\.BusUnavailableError"):
        _loads(pickle.dumps(BusUnavailableError("x")))
    error = _loads(pickle.dumps(DeviceOfflineError(DEVICE)))
    assert isinstance(error, DeviceOfflineError)
    assert (error.device_id, str(error)) == (DEVICE, f"device {DEVICE} is not connected")
    assert _loads(pickle.dumps(event("x"))) == event("x")


def test_a_message_of_another_type_is_refused_by_the_node_it_is_sent_to(prefix: str) -> None:
    async def scenario() -> None:
        a, b = node(prefix, "a"), node(prefix, "b")
        await asyncio.gather(a.start(), b.start())
        ran: list[object] = []

        async def answer(message: object) -> object:
            ran.append(message)
            return "ran"

        b.serve(answer)
        with pytest.raises(RemoteRequestError, match=r"node b failed on the request: UnpicklingError: .*Smuggled"):
            await a.request("b", Smuggled("x"), timeout=5.0)
        assert ran == []
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_handler_that_fails_with_another_error_is_reported_as_the_remote_nodes_failure(prefix: str) -> None:
    async def scenario() -> None:
        a, b = node(prefix, "a"), node(prefix, "b")
        await asyncio.gather(a.start(), b.start())

        async def answer(message: object) -> object:
            raise KeyError(message)

        b.serve(answer)
        with pytest.raises(RemoteRequestError, match="node b failed on the request: KeyError: 'x'"):
            await a.request("b", "x", timeout=5.0)
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_thousand_events_arrive_in_order_and_a_nodes_own_events_arrive_once(prefix: str) -> None:
    async def scenario() -> None:
        a, b = node(prefix, "a"), node(prefix, "b")
        await asyncio.gather(a.start(), b.start())
        on_a, on_b = a.subscribe("n/", capacity=2000), b.subscribe("n/", capacity=2000)
        for n in range(1000):
            a.publish(event(f"n/{n}"))
        a.publish(event("n/end"))
        for subscription in (on_a, on_b):
            names: list[str] = []
            while not names or names[-1] != "n/end":
                got = await asyncio.wait_for(subscription.get(), 10)
                assert got is not None
                names.append(got.name)
            assert names == [f"n/{n}" for n in range(1000)] + ["n/end"]
        # The copy of a's events that came back through Redis was not delivered again.
        b.publish(event("n/last"))
        assert await asyncio.wait_for(on_a.get(), 10) == event("n/last")
        assert a.unsent == b.unsent == 0
        await a.close()
        await b.close()

    asyncio.run(scenario())


# -- Redis unreachable --------------------------------------------------------------------------


def test_redis_unreachable_is_bus_unavailable_and_events_stay_local(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        bus = RedisBus("redis://:s3cret@127.0.0.1:1/0", node_id="a", options=RedisOptions(timeout=1.0))
        local = bus.subscribe("temp")
        with pytest.raises(BusUnavailableError, match=r"cannot join the cloud: Redis at 127.0.0.1:1/0: ") as info:
            await bus.start()
        assert "s3cret" not in str(info.value)
        with pytest.raises(BusUnavailableError, match=r"cannot claim device .*: Redis at 127.0.0.1:1/0"):
            await bus.claim(DEVICE, "s1")
        with pytest.raises(BusUnavailableError, match=r"cannot find the node of device"):
            await bus.holder(DEVICE)
        with pytest.raises(BusUnavailableError, match=r"cannot send a request to node b"):
            await bus.request("b", "hello", timeout=1.0)
        bus.publish(event("temp/1"))  # never waits
        assert await local.get() == event("temp/1")
        assert bus.unsent == 1
        await bus.close()
        # It never joined: no lease or presence of its own to release, nor a warning about them.
        assert "without releasing" not in caplog.text
        assert await local.get() is None
        with pytest.raises(BusUnavailableError, match="is closed"):
            await bus.claim(DEVICE, "s1")

    asyncio.run(scenario())


# -- URLs ---------------------------------------------------------------------------------------


def test_options_come_from_the_url_and_the_rest_goes_to_redis() -> None:
    url, options, description = redis_url(
        "redis://:s3cret@cache:6380/2?prefix=cloud1:&lease=5&timeout=2&health_check_interval=3"
    )
    assert options == RedisOptions(prefix="cloud1:", lease=5.0, timeout=2.0)
    assert url == "redis://:s3cret@cache:6380/2?health_check_interval=3"
    assert description == "Redis at cache:6380/2"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://:s3cret@cache", "not a Redis URL: 'http'"),
        ("redis://:s3cret@cache/0?lease=soon", "option lease must be a number, not 'soon'"),
        ("redis://:s3cret@cache/0?prefix=a%20b", "without spaces"),
    ],
)
def test_bad_urls_are_refused_without_telling_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        redis_url(url)
    assert "s3cret" not in str(info.value)


def test_open_bus_gives_the_in_process_bus_or_a_redis_bus() -> None:
    assert type(open_bus("", node_id="n1")).__name__ == "InProcessBus"
    bus = open_bus("redis://127.0.0.1:6379/0?prefix=x:", node_id="n1")
    assert isinstance(bus, RedisBus)
    assert (bus.node_id, bus.options.prefix) == ("n1", "x:")
    with pytest.raises(ValueError, match="unsupported bus URL scheme 'amqp'"):
        open_bus("amqp://broker", node_id="n1")
