"""The server's queue of accepted connections: newest first, none served after `max_wait`, bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyan.server._accept import DEFAULT_CAPACITY, AcceptQueue, Dropped, queue_capacity


def test_the_newest_connection_is_served_first() -> None:
    waiting: AcceptQueue[str] = AcceptQueue(capacity=10, max_wait=15.0)
    for n, name in enumerate(["a", "b", "c"]):
        assert waiting.push(name, float(n), float(n)) is None
    assert [waiting.pop(3.0), waiting.pop(3.0), waiting.pop(3.0), waiting.pop(3.0)] == ["c", "b", "a", None]


def test_a_connection_that_waited_max_wait_is_not_served_but_expired() -> None:
    waiting: AcceptQueue[str] = AcceptQueue(capacity=10, max_wait=15.0)
    waiting.push("old", 0.0, 0.0)
    waiting.push("new", 10.0, 10.0)
    assert waiting.next_expiry() == 15.0
    assert waiting.expire(14.9) == []
    assert waiting.expire(15.0) == [Dropped("old", 15.0, full=False)]
    assert waiting.next_expiry() == 25.0
    assert waiting.pop(25.0) is None  # too old to serve: left for expire
    assert len(waiting) == 1
    assert waiting.expire(30.0) == [Dropped("new", 20.0, full=False)]
    assert waiting.next_expiry() is None


def test_the_wait_counts_from_the_connect_and_a_connection_too_old_already_is_handed_back() -> None:
    waiting: AcceptQueue[str] = AcceptQueue(capacity=10, max_wait=15.0)
    assert waiting.push("held by the kernel", 0.0, 16.0) == Dropped("held by the kernel", 16.0, full=False)
    assert waiting.push("a", 5.0, 16.0) is None
    assert waiting.next_expiry() == 20.0
    # Older than the ones queued (the kernel held it while the queue was full): placed by its age, so the
    # younger one is still served first and the older expires first.
    assert waiting.push("b", 4.0, 16.0) is None
    assert waiting.next_expiry() == 19.0
    assert waiting.expire(19.0) == [Dropped("b", 15.0, full=False)]
    waiting.push("c", 3.0, 16.0)  # too young to expire now, but older than "a"
    assert waiting.pop(17.0) == "a"
    assert waiting.pop(17.0) == "c"


def test_a_full_queue_takes_nothing_more_and_gives_its_oldest_up_on_demand() -> None:
    waiting: AcceptQueue[str] = AcceptQueue(capacity=2, max_wait=15.0)
    fullness = [waiting.full]
    waiting.push("a", 0.0, 0.0)
    fullness.append(waiting.full)
    waiting.push("b", 1.0, 1.0)
    fullness.append(waiting.full)
    assert fullness == [False, False, True]
    with pytest.raises(OverflowError, match="the queue is full"):
        waiting.push("c", 2.0, 2.0)
    oldest = waiting.drop_oldest(3.0)
    assert oldest == Dropped("a", 3.0, full=True)
    assert waiting.clear() == ["b"]
    assert waiting.drop_oldest(3.0) is None


def test_the_queue_takes_a_quarter_of_the_file_limit_at_most() -> None:
    assert queue_capacity(None) == DEFAULT_CAPACITY
    assert queue_capacity(1_048_576) == DEFAULT_CAPACITY
    assert queue_capacity(20_000) == 5_000
    assert queue_capacity(8) == 16


@pytest.mark.parametrize(("capacity", "max_wait"), [(0, 15.0), (1, 0.0), (1, float("nan")), (1, -1.0)])
def test_the_limits_are_checked(capacity: int, max_wait: float) -> None:
    with pytest.raises(ValueError, match=r"the queue holds 1 connection or more|a connection waits more than 0 s"):
        AcceptQueue(capacity, max_wait)


@given(st.lists(st.tuples(st.sampled_from(["push", "pop", "expire"]), st.floats(0, 2), st.floats(0, 4)), max_size=60))
def test_the_queue_behaves_as_its_model(steps: list[tuple[str, float, float]]) -> None:
    """Against a plain list: newest served first, nothing served at `max_wait` or later, nothing taken when
    full, and every connection comes out exactly once."""
    waiting: AcceptQueue[int] = AcceptQueue(capacity=5, max_wait=3.0)
    model: list[tuple[float, int]] = []  # oldest first
    now = 0.0
    pushed: list[int] = []
    out: list[int] = []
    for n, (op, advance, age) in enumerate(steps):
        now += advance
        if op == "push" and not waiting.full:
            pushed.append(n)
            since = now - age
            dropped = waiting.push(n, since, now)
            if now - since >= 3.0:  # the age as the queue sees it, with the same rounding
                assert dropped == Dropped(n, now - since, full=False)
                out.append(n)
            else:
                assert dropped is None
                model.append((since, n))
                model.sort(key=lambda entry: entry[0])  # stable: of equal ages, the one taken first is older
        elif op == "pop":
            fresh = model[-1] if model and now - model[-1][0] < 3.0 else None
            if fresh is not None:
                model.pop()
            served = waiting.pop(now)
            assert served == (None if fresh is None else fresh[1])
            if served is not None:
                out.append(served)
        elif op == "expire":
            stale = []
            while model and now - model[0][0] >= 3.0:
                stale.append(model.pop(0))
            expired = waiting.expire(now)
            assert expired == [Dropped(item, now - t, full=False) for t, item in stale]
            out += [d.item for d in expired]
        assert len(waiting) == len(model) <= 5
    out += waiting.clear()
    assert sorted(out) == pushed
