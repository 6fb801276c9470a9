"""Pure helpers of bench/scale: summaries, percentiles, in-flight peaks, spread histograms, ratios.

No I/O here (tests/unit/test_bench_scale.py tests every function)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Iterable[float]) -> tuple[float, float, float]:
    """(min, median, max); nans when empty."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return (math.nan, math.nan, math.nan)
    return (min(vals), statistics.median(vals), max(vals))


def fmt_summary(values: Iterable[float], digits: int = 1) -> str:
    lo, mid, hi = summary(values)
    return f"{lo:.{digits}f} / {mid:.{digits}f} / {hi:.{digits}f}"


def ratio(a: float, b: float) -> float:
    """a / b, nan when b is 0 or either is nan."""
    if b == 0 or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Round-by-round ratios a[i] / b[i] (the rounds alternate the two sides, so each pair shares its moment)."""
    return [ratio(x, y) for x, y in zip(a, b, strict=False)]


def peak_in_flight(intervals: Iterable[tuple[float, float]]) -> int:
    """Most intervals [start, end] open at one instant (an end at t closes before a start at t opens)."""
    events: list[tuple[float, int]] = []
    for start, end in intervals:
        events.append((start, 1))
        events.append((max(start, end), -1))
    events.sort(key=lambda e: (e[0], e[1]))
    peak = cur = 0
    for _t, delta in events:
        cur += delta
        peak = max(peak, cur)
    return peak


def spread(times: Iterable[float], start: float, span: float, bins: int = 10) -> list[int]:
    """How many of ``times`` fall in each ``span / bins`` of [start, start + span), then one more bin:
    how many came after the interval (a round that fell behind). Earlier ones are dropped."""
    counts = [0] * (bins + 1)
    width = span / bins
    for t in times:
        if t < start:
            continue
        counts[min(bins, int((t - start) / width))] += 1
    return counts


def histogram_line(counts: Sequence[int], width: int = 40) -> list[str]:
    """One text bar per tenth (spread's bins), scaled to the fullest; the last bin is "after" the interval."""
    top = max(counts, default=0) or 1
    labels = [f"{i * 10:3d}-{(i + 1) * 10:3d}%" for i in range(len(counts) - 1)] + ["   after"]
    return [f"{label} {c:7d} {'#' * round(c / top * width)}" for label, c in zip(labels, counts, strict=True)]


def evenness(counts: Sequence[int]) -> float:
    """max bin / mean bin of spread's tenths, what came after the interval counted in the last tenth
    (1.0 = perfectly even; 10.0 = everything in one tenth)."""
    tenths = [*counts[:-2], counts[-2] + counts[-1]] if len(counts) > 1 else list(counts)
    if not tenths or sum(tenths) == 0:
        return math.nan
    return max(tenths) / (sum(tenths) / len(tenths))


def per_minute(count: int, seconds: float) -> float:
    return count * 60.0 / seconds if seconds > 0 else math.nan


def pair_calls(firsts: Sequence[float], answers: Sequence[float]) -> list[tuple[float, float]]:
    """One BMC's calls as (start, end): each answer with the earliest first packet since the previous answer.

    A call may send several first packets (prov's session-less probe and pyghmi's login both ask for the
    channel's authentication capabilities); an answer with no first packet since the last starts at itself."""
    calls = []
    fs = sorted(firsts)
    i = 0
    prev = -math.inf
    for end in sorted(answers):
        while i < len(fs) and fs[i] <= prev:
            i += 1
        start = fs[i] if i < len(fs) and fs[i] <= end else end
        calls.append((start, end))
        prev = end
    return calls
