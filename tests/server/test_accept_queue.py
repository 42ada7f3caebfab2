"""The server's queue of accepted connections: newest first, none served after `max_wait`, bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyan.server._accept import DEFAULT_CAPACITY, AcceptQueue, Dropped, queue_capacity


def test_the_newest_connection_is_served_first() -> None:
    waiting: AcceptQueue[str] = AcceptQueue(capacity=10, max_wait=15.0)
    for n, name in enumerate(["a", "b", "c"]):
        assert waiting.push(name, float(n)) is None
    assert [waiting.pop(3.0), waiting.pop(3.0), waiting.pop(3.0), waiting.pop(3.0)] == ["c", "b", "a", None]


def test_a_connection_that_waited_max_wait_is_not_served_but_expired() -> None:
    waiting: AcceptQueue[str] = AcceptQueue(capacity=10, max_wait=15.0)
    waiting.push("old", 0.0)
    waiting.push("new", 10.0)
    assert waiting.next_expiry() == 15.0
    assert waiting.expire(14.9) == []
    assert waiting.expire(15.0) == [Dropped("old", 15.0, full=False)]
    assert waiting.next_expiry() == 25.0
    assert waiting.pop(25.0) is None  # too old to serve: left for expire
    assert len(waiting) == 1
    assert waiting.expire(30.0) == [Dropped("new", 20.0, full=False)]
    assert waiting.next_expiry() is None


def test_a_full_queue_hands_back_its_oldest() -> None:
    waiting: AcceptQueue[str] = AcceptQueue(capacity=2, max_wait=15.0)
    waiting.push("a", 0.0)
    waiting.push("b", 1.0)
    assert waiting.push("c", 2.0) == Dropped("a", 2.0, full=True)
    assert waiting.drop_oldest(3.0) == Dropped("b", 2.0, full=True)
    assert waiting.clear() == ["c"]
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


@given(st.lists(st.tuples(st.sampled_from(["push", "pop", "expire"]), st.floats(0, 2)), max_size=60))
def test_the_queue_behaves_as_its_model(steps: list[tuple[str, float]]) -> None:
    """Against a plain list: newest served first, nothing served at `max_wait` or later, the oldest handed back
    when full, and every connection comes out exactly once."""
    waiting: AcceptQueue[int] = AcceptQueue(capacity=5, max_wait=3.0)
    model: list[tuple[float, int]] = []  # oldest first
    now = 0.0
    out: list[int] = []
    for n, (op, advance) in enumerate(steps):
        now += advance
        if op == "push":
            full = model.pop(0) if len(model) == 5 else None
            model.append((now, n))
            dropped = waiting.push(n, now)
            assert dropped == (None if full is None else Dropped(full[1], now - full[0], full=True))
            if dropped is not None:
                out.append(dropped.item)
        elif op == "pop":
            fresh = model[-1] if model and now - model[-1][0] < 3.0 else None
            if fresh is not None:
                model.pop()
            served = waiting.pop(now)
            assert served == (None if fresh is None else fresh[1])
            if served is not None:
                out.append(served)
        else:
            stale = [(t, item) for t, item in model if now - t >= 3.0]
            model = model[len(stale) :]
            expired = waiting.expire(now)
            assert expired == [Dropped(item, now - t, full=False) for t, item in stale]
            out += [d.item for d in expired]
        assert len(waiting) == len(model)
    out += waiting.clear()
    assert sorted(out) == [n for n, (op, _) in enumerate(steps) if op == "push"]
