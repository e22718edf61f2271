"""The measurement side of `loadsim size`, without a server: the warm-up a step leaves out
(`RunMetrics.discard_warmup`), P(wait) and the holds' variation from the HDR histograms
(checked against the recorded values themselves), a step's steadiness, and where measured
waits part from Erlang C, with the likely cause."""

from __future__ import annotations

import random
import statistics

import pytest

from loadsim.run.metrics import Latency, RunMetrics
from loadsim.size.measure import disagreements, drift, unsteady


def test_discard_warmup_forgets_what_came_before() -> None:
    metrics = RunMetrics(clients=2, capacity=2, started=0.0)
    for wait in (50.0, 60.0, 70.0):  # the warm-up's slow first checkouts
        metrics.acquired(wait)
        metrics.use_time.add(5.0)
    metrics.timed_out(1000.0)
    metrics.checkouts_per_client[0] = 3
    metrics.utilisation.change(+1, 0.5)  # one connection in use across the boundary
    metrics.discard_warmup(1.0)
    assert metrics.started == 1.0
    assert metrics.checkouts == metrics.timeouts == 0
    assert metrics.checkouts_per_client == [0, 0]
    metrics.acquired(2.0)
    metrics.use_time.add(4.0)
    summary = metrics.summary(3.0, {"connects": 2})
    assert summary["elapsed_s"] == 2.0
    assert summary["checkouts"] == 1 and summary["checkouts_per_s"] == 0.5
    assert summary["wait_time_ms"]["count"] == 1 and summary["wait_time_ms"]["max"] == 2.0
    assert summary["use_time_ms"]["mean"] == 4.0
    # the connection in use since before the boundary counts from it: 1 of 2 for 2 s
    assert summary["utilisation_mean"] == pytest.approx(0.5)


def test_share_above_and_squared_variation_match_the_values() -> None:
    rng = random.Random(7)
    values = [rng.expovariate(1 / 10) for _ in range(20_000)]  # exponential, mean 10 ms
    latency = Latency()
    for value in values:
        latency.add(value)
    share = sum(value > 1.0 for value in values) / len(values)
    assert latency.share_above(1.0) == pytest.approx(share, abs=0.005)  # 3 digits' buckets
    cv2 = statistics.pvariance(values) / statistics.fmean(values) ** 2
    assert latency.squared_variation() == pytest.approx(cv2, rel=0.02)
    assert latency.squared_variation() == pytest.approx(1.0, rel=0.1)  # exponential: 1
    assert Latency().share_above(1.0) == 0.0 and Latency().squared_variation() is None


def test_drift() -> None:
    steady = [(t / 10, 100 * t) for t in range(9)]
    assert drift(steady) == pytest.approx(0.0)
    slowing = [(0.0, 0), (1.0, 100), (2.0, 150)]
    assert drift(slowing) == pytest.approx(-0.5)
    assert drift([(0.0, 0), (1.0, 5)]) is None


def _step(size: int, measured: float, modelled: float, hold: float, lag: float = 0.5) -> dict:
    return {
        "kind": "queue",
        "pool_size": size,
        "wait_mean_ms": measured,
        "model_mean_wait_ms": modelled,
        "model_gap": (measured - modelled) / max(measured, modelled),
        "use_mean_ms": hold,
        "loop_lag_p99_ms": lag,
    }


def test_disagreements_name_the_likely_cause() -> None:
    steps = [
        _step(2, 10.0, 9.0, 5.0),  # within a quarter: nothing to say
        _step(4, 8.0, 2.0, 9.0),  # holds grew from 5 to 9 ms: the server
        _step(8, 6.0, 1.0, 5.2, lag=20.0),  # the loop lags: the client
    ]
    notes = disagreements(steps)
    assert len(notes) == 2
    assert notes[0].startswith("pool 4:") and "the server is the bottleneck" in notes[0]
    assert notes[1].startswith("pool 8:") and "the client is the bottleneck" in notes[1]


def test_unsteady_steps_are_named() -> None:
    steps = [
        {"kind": "capacity", "pool_size": 4, "repeat": 0, "steady": True},
        {"kind": "queue", "pool_size": 8, "repeat": 1, "steady": False},
    ]
    (note,) = unsteady(steps)
    assert note.startswith("1 of 2 steps did not reach a steady state")
    assert "queue 8 (repeat 2)" in note
    assert unsteady(steps[:1]) == []
