"""bench/scale's pure helpers (bench/scale/stats.py): the figures its report prints."""

from __future__ import annotations

import math

from bench.scale import stats


def test_percentile_nearest_rank() -> None:
    vals = list(range(1, 101))
    assert stats.percentile(vals, 50) == 50
    assert stats.percentile(vals, 99) == 99
    assert stats.percentile(vals, 100) == 100
    assert stats.percentile([7.0], 99) == 7.0
    assert math.isnan(stats.percentile([], 50))


def test_summary_and_format() -> None:
    assert stats.summary([3.0, 1.0, 2.0, math.nan]) == (1.0, 2.0, 3.0)
    assert all(math.isnan(x) for x in stats.summary([]))
    assert stats.fmt_summary([1.0, 2.0, 4.0], 1) == "1.0 / 2.0 / 4.0"


def test_ratios_pair_rounds() -> None:
    assert stats.paired_ratios([400.0, 500.0], [100.0, 250.0]) == [4.0, 2.0]
    assert math.isnan(stats.ratio(1.0, 0.0))
    assert math.isnan(stats.ratio(math.nan, 1.0))


def test_peak_in_flight() -> None:
    assert stats.peak_in_flight([]) == 0
    assert stats.peak_in_flight([(0, 1), (0.5, 2), (1.5, 3)]) == 2
    # one ending at t and another starting at t are not in flight together
    assert stats.peak_in_flight([(0, 1), (1, 2)]) == 1
    assert stats.peak_in_flight([(0, 10)] * 5) == 5


def test_spread_per_tenth() -> None:
    counts = stats.spread([0.0, 0.5, 1.0, 9.99, 12.0, -1.0], start=0.0, span=10.0)
    assert counts == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]  # then the late ones; early ones dropped
    assert stats.evenness([10] * 10 + [0]) == 1.0
    assert stats.evenness([100] + [0] * 10) == 10.0
    assert stats.evenness([0] * 9 + [50, 50]) == 10.0  # after the interval counts as the last tenth
    assert math.isnan(stats.evenness([0] * 11))
    lines = stats.histogram_line([1, 2, 0], width=4)
    assert lines[1].endswith("####") and lines[0].endswith(" ##") and lines[2].startswith("   after")


def test_pair_calls_takes_the_first_packet_since_the_last_answer() -> None:
    # call 1: probe at 1.0 and login at 1.1, answered at 1.5; call 2: login at 3.0, answered at 3.2
    assert stats.pair_calls([1.1, 1.0, 3.0], [3.2, 1.5]) == [(1.0, 1.5), (3.0, 3.2)]
    # an answer with no first packet since the previous one (a cached session) starts at itself
    assert stats.pair_calls([1.0], [1.5, 2.0]) == [(1.0, 1.5), (2.0, 2.0)]


def test_per_minute() -> None:
    assert stats.per_minute(150, 60.0) == 150.0
    assert math.isnan(stats.per_minute(1, 0.0))
