"""The bus port's contract, on every implementation: events reach every node's subscribers and listeners in
the order one node published them, a slow subscriber loses its oldest events (counted) without slowing anyone,
presence says which node holds a device (the newer session wins), and a request reaches the node it names."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

import pytest

import servers
from cyan.bus import InProcessBus, InProcessHub, RedisBus, RedisOptions
from cyan.cloud.errors import DeviceOfflineError, PendingKeyChangedError
from cyan.cloud.models import CloudEvent, JobState
from cyan.cloud.ports import Bus, NodeUnreachableError

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
#: Two nodes of one cloud, started.
Cluster = Callable[[], Awaitable[tuple[Bus, Bus]]]


@pytest.fixture(params=["inprocess", "redis"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Two nodes of one cloud: on one in-process hub, or on one Redis under a key prefix of the test's own."""
    if request.param == "inprocess":

        async def in_process() -> tuple[Bus, Bus]:
            hub = InProcessHub()
            a = InProcessBus(node_id="a", hub=hub, capacity=4)
            b = InProcessBus(node_id="b", hub=hub, capacity=4)
            await asyncio.gather(a.start(), b.start())
            return a, b

        yield in_process
        return
    with servers.fresh_prefix(request.node.nodeid) as prefix:

        async def on_redis() -> tuple[Bus, Bus]:
            options = RedisOptions(prefix=prefix, capacity=4)
            a = RedisBus(servers.REDIS_URL, node_id="a", options=options)
            b = RedisBus(servers.REDIS_URL, node_id="b", options=options)
            await asyncio.gather(a.start(), b.start())
            return a, b

        yield on_redis


def event(name: str, device: str | None = "ab" * 12) -> CloudEvent:
    return CloudEvent(name, "data", 60, T0, device, "alice", True)


def test_events_reach_every_node_in_order(cluster: Cluster) -> None:
    async def scenario() -> None:
        a, b = await cluster()
        heard: list[str] = []
        b.add_listener(lambda e: heard.append(e.name))
        on_a, on_b = a.subscribe("temp/"), b.subscribe("temp/")
        for n in range(3):
            a.publish(event(f"temp/{n}"))
        b.publish(event("other"))
        for subscription in (on_a, on_b):
            names = [(await subscription.get()).name for _ in range(3)]  # type: ignore[union-attr]
            assert names == ["temp/0", "temp/1", "temp/2"]
        # In the order each node published them; the two nodes' events may interleave either way.
        assert [name for name in heard if name != "other"] == ["temp/0", "temp/1", "temp/2"]
        assert "other" in heard
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_slow_subscriber_loses_its_oldest_and_is_told(cluster: Cluster) -> None:
    async def scenario() -> None:
        a, b = await cluster()
        slow = b.subscribe("", lambda e: e.name != "skip")
        marker = b.subscribe("skip")
        for n in range(6):
            a.publish(event(f"e{n}"))
        a.publish(event("skip"))
        # Once b has the last event, it has offered every earlier one to the slow subscriber.
        assert await asyncio.wait_for(marker.get(), 10) == event("skip")
        assert slow.dropped == 2
        assert [(await slow.get()).name for _ in range(4)] == ["e2", "e3", "e4", "e5"]  # type: ignore[union-attr]
        b.close_all()
        assert await slow.get() is None
        assert slow.closed
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_presence_the_newer_session_wins(cluster: Cluster) -> None:
    async def scenario() -> None:
        a, b = await cluster()
        device = "ab" * 12
        assert await a.holder(device) is None
        assert await a.claim(device, "s1") is None
        held = await b.holder(device)
        assert held is not None
        assert (held.node_id, held.session_id) == ("a", "s1")
        replaced = await b.claim(device, "s2")  # it reconnected through node b
        assert replaced is not None
        assert (replaced.node_id, replaced.session_id) == ("a", "s1")
        await a.release(device, "s1")  # the stale session ending does not undo the new one
        held = await a.holder(device)
        assert held is not None
        assert (held.node_id, held.session_id) == ("b", "s2")
        await b.release(device, "s2")
        assert await a.holder(device) is None
        # A node that leaves takes its presences with it.
        await a.claim(device, "s3")
        await a.close()
        assert await b.holder(device) is None
        await b.close()

    asyncio.run(scenario())


def test_a_request_reaches_the_node_it_names_and_its_error_comes_back(cluster: Cluster) -> None:
    async def scenario() -> None:
        a, b = await cluster()

        async def answer(message: object) -> object:
            if message == "offline":
                raise DeviceOfflineError("ab" * 12)
            if message == "slow":
                await asyncio.sleep(1)
            return f"b got {message}"

        b.serve(answer)
        assert await a.request("b", "hello", timeout=1.0) == "b got hello"
        with pytest.raises(DeviceOfflineError):
            await a.request("b", "offline", timeout=1.0)
        with pytest.raises(NodeUnreachableError, match="did not answer"):
            await a.request("b", "slow", timeout=0.05)
        with pytest.raises(NodeUnreachableError, match="not serving"):
            await b.request("c", "hello", timeout=1.0)
        await b.close()
        with pytest.raises(NodeUnreachableError):
            await a.request("b", "hello", timeout=1.0)
        await a.close()

    asyncio.run(scenario())


def test_a_request_carries_the_clouds_types_both_ways(cluster: Cluster) -> None:
    async def scenario() -> None:
        a, b = await cluster()

        async def answer(message: object) -> object:
            assert isinstance(message, CloudEvent)
            if message.name == "conflict":
                raise PendingKeyChangedError("ab" * 12, "SHA256:named", ["SHA256:pending"])
            return {"event": message, "state": JobState.SUCCEEDED, "at": T0, "raw": b"\x00\xff"}

        b.serve(answer)
        sent = event("temp/1")
        assert await a.request("b", sent, timeout=5.0) == {
            "event": sent,
            "state": JobState.SUCCEEDED,
            "at": T0,
            "raw": b"\x00\xff",
        }
        with pytest.raises(PendingKeyChangedError) as info:
            await a.request("b", event("conflict"), timeout=5.0)
        assert (info.value.device_id, info.value.named, info.value.pending) == (
            "ab" * 12,
            "SHA256:named",
            ["SHA256:pending"],
        )
        assert "SHA256:pending" in str(info.value)
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_node_answers_its_own_requests(cluster: Cluster) -> None:
    async def scenario() -> None:
        a, b = await cluster()

        async def answer(message: object) -> object:
            return ("a", message)

        with pytest.raises(NodeUnreachableError, match="not serving"):
            await a.request("a", "hello", timeout=1.0)
        a.serve(answer)
        assert await a.request("a", "hello", timeout=1.0) == ("a", "hello")
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_subscription_sees_what_its_prefix_and_filter_take_from_every_node(cluster: Cluster) -> None:
    async def scenario() -> None:
        a, b = await cluster()
        mine = a.subscribe("temp/", lambda e: e.owner == "alice", capacity=100)
        for n in range(20):
            (a, b)[n % 2].publish(CloudEvent(f"temp/{n}", str(n), 60, T0, None, ("alice", "bob")[n % 3 == 0], False))
            b.publish(event(f"other/{n}"))
        b.publish(CloudEvent("temp/end", None, 60, T0, None, "alice", False))
        got: list[str] = []
        while not got or got[-1] != "temp/end":
            received = await asyncio.wait_for(mine.get(), 10)
            assert received is not None
            got.append(received.name)
        numbers = [int(name.split("/")[1]) for name in got[:-1]]
        assert sorted(numbers) == [n for n in range(20) if n % 3 != 0]
        # Each node's in the order it published them; a's (even) and b's (odd) may interleave.
        assert [n for n in numbers if n % 2 == 0] == sorted(n for n in numbers if n % 2 == 0)
        assert [n for n in numbers if n % 2 == 1] == sorted(n for n in numbers if n % 2 == 1)
        assert mine.dropped == 0
        await a.close()
        await b.close()

    asyncio.run(scenario())
