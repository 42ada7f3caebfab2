"""A fleet failing the same way thousands of times is logged a few lines at a time, with a count of the rest."""

from __future__ import annotations

import logging

import pytest

from cyan.server.device_server import _LogSampler


def test_each_kind_of_failure_is_logged_a_few_times_a_window_and_the_rest_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sampler = _LogSampler(per_window=2, window=10.0)
    with caplog.at_level(logging.INFO, logger="cyan.server"):
        assert [sampler.allow("nonce", "closed_by_peer", t) for t in (0.0, 1.0, 2.0, 3.0)] == [True, True, False, False]
        assert sampler.allow("identity", "unknown_device", 3.0)  # another kind has its own count
        assert caplog.records == []
        assert sampler.allow("nonce", "closed_by_peer", 12.0)  # a new window: logged, after the summary
    [summary] = caplog.records
    assert summary.getMessage().startswith("2 more connections failed at nonce: closed_by_peer in 12 s")
    assert sampler.allow("nonce", "closed_by_peer", 12.5)  # the second of the new window
    assert not sampler.allow("nonce", "closed_by_peer", 13.0)


def test_a_window_with_nothing_left_out_sums_up_nothing(caplog: pytest.LogCaptureFixture) -> None:
    sampler = _LogSampler(per_window=2, window=10.0)
    with caplog.at_level(logging.INFO, logger="cyan.server"):
        assert sampler.allow("nonce", "closed_by_peer", 0.0)
        assert sampler.allow("nonce", "closed_by_peer", 20.0)
    assert caplog.records == []
