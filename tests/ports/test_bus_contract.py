"""The bus port's contract, on every implementation: events reach every node's subscribers and listeners in
the order one node published them, a slow subscriber loses its oldest events (counted) without slowing anyone,
presence says which node holds a device (the newer session wins), and a request reaches the node it names."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from cyan.bus import InProcessBus, InProcessHub
from cyan.cloud.errors import DeviceOfflineError
from cyan.cloud.models import CloudEvent
from cyan.cloud.ports import Bus, NodeUnreachableError

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
Cluster = Callable[[], tuple[Bus, Bus]]


@pytest.fixture(params=["inprocess"])
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """Two nodes of one cloud."""

    def make() -> tuple[Bus, Bus]:
        hub = InProcessHub()
        return InProcessBus(node_id="a", hub=hub, capacity=4), InProcessBus(node_id="b", hub=hub, capacity=4)

    return make


def event(name: str, device: str | None = "ab" * 12) -> CloudEvent:
    return CloudEvent(name, "data", 60, T0, device, "alice", True)


def test_events_reach_every_node_in_order(cluster: Cluster) -> None:
    async def scenario() -> None:
        a, b = cluster()
        heard: list[str] = []
        b.add_listener(lambda e: heard.append(e.name))
        on_a, on_b = a.subscribe("temp/"), b.subscribe("temp/")
        for n in range(3):
            a.publish(event(f"temp/{n}"))
        b.publish(event("other"))
        for subscription in (on_a, on_b):
            names = [(await subscription.get()).name for _ in range(3)]  # type: ignore[union-attr]
            assert names == ["temp/0", "temp/1", "temp/2"]
        assert heard == ["temp/0", "temp/1", "temp/2", "other"]
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_slow_subscriber_loses_its_oldest_and_is_told(cluster: Cluster) -> None:
    async def scenario() -> None:
        a, b = cluster()
        slow = b.subscribe("", lambda e: e.name != "skip")
        for n in range(6):
            a.publish(event(f"e{n}"))
        a.publish(event("skip"))
        assert slow.dropped == 2
        assert [(await slow.get()).name for _ in range(4)] == ["e2", "e3", "e4", "e5"]  # type: ignore[union-attr]
        b.close_all()
        assert await slow.get() is None
        assert slow.closed

    asyncio.run(scenario())


def test_presence_the_newer_session_wins(cluster: Cluster) -> None:
    async def scenario() -> None:
        a, b = cluster()
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
        a, b = cluster()

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
