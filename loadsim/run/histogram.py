"""The one place loadsim reaches into hdrhistogram's internals.

hdrhistogram's `record_value` (1.5 µs a value), `reset` (zeroes 23,552 counts one by one, 2
ms) and percentile iterators (a Python step per sub-bucket) cost more than the load they
measure, so these do the same work directly on its counts array and bucket geometry.
Tests pin every behaviour relied on against hdrhistogram's own methods (`record_value`'s
counts, `get_value_at_percentile`, `reset` through a window's fold, and merging encoded
histograms in `tests/test_histogram.py`): an upgrade that changes them fails there, not in a
run's figures. (pyproject pins hdrhistogram
below 0.11 for the same reason.)
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence

from hdrh.histogram import HdrHistogram

from loadsim.config.limits import MAX_LATENCY_S
from loadsim.schema import PERCENTILE_KEYS, PERCENTILES

#: Latencies are recorded in microseconds, from 1 µs to an hour, to 3 significant digits.
LOWEST_US, HIGHEST_US, DIGITS = 1, MAX_LATENCY_S * 1_000_000, 3


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def encode(histogram: HdrHistogram) -> str:
    """Compressed and base64-encoded, for merging elsewhere."""
    return str(histogram.encode().decode("ascii"))


def count_into(histogram: HdrHistogram, microseconds: list[int]) -> int:
    """Records each value (clamped to the histogram's range) as `record_value` would, and
    returns their sum."""
    counts = histogram.counts
    mask = histogram.sub_bucket_mask
    unit = histogram.unit_magnitude
    half_magnitude = histogram.sub_bucket_half_count_magnitude
    half_count = histogram.sub_bucket_half_count
    clamped = [min(max(value, LOWEST_US), HIGHEST_US) for value in microseconds]
    for value in clamped:
        bucket = (value | mask).bit_length() - unit - half_magnitude - 1
        counts[((bucket + 1) << half_magnitude) + (value >> (bucket + unit)) - half_count] += 1
    histogram.total_count += len(clamped)
    histogram.min_value = min(histogram.min_value, min(clamped))
    histogram.max_value = max(histogram.max_value, max(clamped))
    return sum(clamped)


def reset(histogram: HdrHistogram) -> None:
    """`histogram.reset()`, which zeroes its 23,552 counts one by one in Python (2 ms)."""
    ctypes.memset(histogram.counts, 0, ctypes.sizeof(histogram.counts))
    histogram.total_count = 0
    histogram.min_value = sys.maxsize
    histogram.max_value = 0


def figures(histogram: HdrHistogram, sum_us: int) -> dict[str, float]:
    """count, mean, percentiles and max in one pass over the histogram's recorded range.

    hdrhistogram's own percentile iterators step through every sub-bucket in Python; at one
    call per metric per second they cost more than the load they measure. This walks the
    counts between the smallest and largest recorded values once, with the same semantics
    as `get_value_at_percentile` (the highest value equivalent to the bucket reached).
    """
    count = int(histogram.get_total_count())
    if count == 0:
        return {"count": 0}
    low = histogram._counts_index_for(histogram.min_value)
    high = histogram._counts_index_for(histogram.max_value)
    targets = [max(1, int(percentile / 100 * count + 0.5)) for percentile in PERCENTILES]
    figures: dict[str, float] = {"count": count, "mean": round(sum_us / count / 1000, 3)}
    cumulative, reached = 0, 0
    for offset, bucket_count in enumerate(histogram.counts[low : high + 1]):
        if not bucket_count:
            continue
        cumulative += bucket_count
        while reached < len(targets) and cumulative >= targets[reached]:
            value = histogram.get_highest_equivalent_value(
                histogram.get_value_from_index(low + offset)
            )
            figures[PERCENTILE_KEYS[reached]] = round(value / 1000, 3)
            reached += 1
        if reached == len(targets):
            break
    figures["max"] = round(histogram.get_max_value() / 1000, 3)
    return figures


def merged_figures(
    encoded: list[str], counts_and_means: list[tuple[int, float]]
) -> dict[str, float]:
    """Exact figures for several runs' latencies together, from their encoded histograms
    (and their counts and means, for the mean)."""
    merged = new_histogram()
    for text in encoded:
        merged.add(HdrHistogram.decode(text.encode("ascii")))
    sum_us = sum(count * mean * 1000 for count, mean in counts_and_means)
    return figures(merged, int(sum_us))


def cumulative_counts(histograms: Sequence[HdrHistogram], bounds_us: Sequence[int]) -> list[int]:
    """How many values the histograms hold at or below each bound (ascending), as the
    cumulative buckets of a Prometheus or OpenTelemetry histogram. To the histograms'
    precision: a value in the same equivalence range as a bound (3 significant digits)
    counts as at or below it."""
    totals = [0] * len(bounds_us)
    for histogram in histograms:
        if not histogram.get_total_count():
            continue
        counts = histogram.counts
        start = histogram._counts_index_for(histogram.min_value)
        high = histogram._counts_index_for(histogram.max_value)
        running = 0
        for position, bound in enumerate(bounds_us):
            end = min(histogram._counts_index_for(min(bound, HIGHEST_US)), high)
            if end >= start:
                running += sum(counts[start : end + 1])
                start = end + 1
            totals[position] += running
    return totals


def share_above(histogram: HdrHistogram, microseconds: int) -> float:
    """The share of recorded values above `microseconds` (0 with none recorded)."""
    total = int(histogram.get_total_count())
    if total == 0:
        return 0.0
    if histogram.max_value <= microseconds:
        return 0.0
    first = histogram._counts_index_for(min(max(microseconds, LOWEST_US), HIGHEST_US)) + 1
    last = histogram._counts_index_for(histogram.max_value)
    return float(sum(histogram.counts[first : last + 1]) / total)


def squared_variation(histogram: HdrHistogram) -> float | None:
    """The squared coefficient of variation (variance / mean²) of the recorded values."""
    mean = histogram.get_mean_value()
    if not histogram.get_total_count() or mean <= 0:
        return None
    return float((histogram.get_stddev() / mean) ** 2)
