"""The figures of `loadsim/run/metrics.py`, checked against arithmetic and against
hdrhistogram: latency percentiles and counts, time-weighted utilisation, fairness."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram

from loadsim.run.metrics import Latency, Utilisation, fairness


def test_latency_percentiles_match_the_recorded_values() -> None:
    latency = Latency()
    for value in range(1, 1001):  # 1 ms .. 1000 ms, one each
        latency.add(float(value))
    window = latency.close_window()
    assert window["count"] == 1000
    assert window["p50"] == pytest.approx(500, rel=0.002)  # 3 significant digits
    assert window["p99"] == pytest.approx(990, rel=0.002)
    assert window["p99_9"] == pytest.approx(999, rel=0.002)
    assert window["max"] == pytest.approx(1000, rel=0.002)
    assert window["mean"] == pytest.approx(500.5, rel=0.002)
    latency.add(5000.0)
    assert latency.close_window()["count"] == 1  # a window starts empty
    assert latency.run_figures()["count"] == 1001  # ... and the run keeps everything


def test_percentiles_agree_with_hdrhistograms_own() -> None:
    rng = random.Random(7)
    for count in (1, 3, 100, 5000):
        latency, reference = Latency(), HdrHistogram(1, 3_600_000_000, 3)
        for _ in range(count):
            value = rng.expovariate(1 / 200.0)
            latency.add(value)
            reference.record_value(max(1, int(value * 1000)))
        figures = latency.close_window()
        for percentile in (50, 90, 95, 99, 99.9):
            key = "p" + f"{percentile:g}".replace(".", "_")
            assert figures[key] == round(reference.get_value_at_percentile(percentile) / 1000, 3)
        assert figures["max"] == round(reference.get_max_value() / 1000, 3)


def test_latency_counts_every_value_where_record_value_would() -> None:
    """Latency counts values with its own inline arithmetic, in batches: the counts, across
    every magnitude and past both ends of the range, must be hdrhistogram's own."""
    rng = random.Random(11)
    latency, reference = Latency(), HdrHistogram(1, 3_600_000_000, 3)
    windows = []
    for batch in (10, Latency._BATCH * 2 + 17, 1):  # below, across and at a batch's size
        values = [rng.uniform(0, 10 ** rng.randint(-3, 7)) for _ in range(batch)]
        values += [0.0, -1.0, 0.0004, 0.001, 3_600_000.0, 9e12]  # clamped to 1 µs .. 1 h
        for value in values:
            latency.add(value)
            reference.record_value(min(max(1, int(value * 1000)), 3_600_000_000))
        windows.append(latency.close_window()["count"])
    assert windows == [16, Latency._BATCH * 2 + 23, 7]  # each window starts empty
    run = latency.run_figures()
    assert run["count"] == reference.get_total_count()
    assert list(latency._run.counts) == list(reference.counts)
    assert run["max"] == round(reference.get_max_value() / 1000, 3)


def test_utilisation_is_time_weighted() -> None:
    utilisation = Utilisation(capacity=4, started=0.0)
    utilisation.change(+2, 0.0)  # 2 of 4 in use for the first second
    utilisation.change(+2, 1.0)  # 4 of 4 for the next
    assert utilisation.close_window(2.0) == pytest.approx(0.75)
    utilisation.change(-4, 2.0)
    assert utilisation.close_window(4.0) == pytest.approx(0.0)
    assert utilisation.peak == pytest.approx(0.75)
    assert utilisation.run_mean(4.0) == pytest.approx(1.5 * 2 / (4 * 4) * 4 / 2)


def test_fairness_reports_starved_clients_and_jain_index() -> None:
    assert fairness([5, 5, 5, 5])["jain_index"] == 1.0
    uneven = fairness([10, 0, 0, 0])
    assert uneven["starved_share"] == 0.75
    assert uneven["jain_index"] == 0.25  # one client got everything: 1/n
    assert (uneven["min"], uneven["max"]) == (0, 10)
