"""The replay window of RFC 6347 §4.1.2.6 against a model that remembers everything."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cyan.dtls._record import ReplayWindow

SIZE = ReplayWindow.SIZE


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=200))
def test_never_accepts_a_duplicate_and_accepts_every_new_one_in_the_window(sequences: list[int]) -> None:
    window = ReplayWindow()
    seen: set[int] = set()
    top = -1
    for sequence in sequences:
        fresh = window.is_fresh(sequence)
        if sequence in seen:
            assert not fresh, f"duplicate {sequence} accepted"
        elif sequence > top - SIZE:
            assert fresh, f"new {sequence} refused with top {top}"
        else:
            assert not fresh, f"{sequence} left of the window accepted"
        if fresh:
            window.mark(sequence)
            seen.add(sequence)
            top = max(top, sequence)


@given(st.integers(0, (1 << 48) - 1), st.integers(1, 1 << 20))
def test_a_jump_forward_forgets_nothing_it_should_not(start: int, jump: int) -> None:
    window = ReplayWindow()
    window.mark(start)
    window.mark(start + jump)
    assert not window.is_fresh(start)
    assert not window.is_fresh(start + jump)
    assert window.is_fresh(start + jump + 1)
    assert window.bitmap < 1 << SIZE


def test_the_window_round_trips_through_its_two_numbers() -> None:
    window = ReplayWindow()
    for sequence in (0, 3, 5, 70, 68):
        window.mark(sequence)
    copy = ReplayWindow(window.top, window.bitmap)
    assert [copy.is_fresh(s) for s in range(80)] == [window.is_fresh(s) for s in range(80)]
