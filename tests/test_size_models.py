"""`loadsim size`'s models, as pure functions: Erlang C (and Allen-Cunneen's correction)
against the issue's reference values and the textbook formula, and the Universal
Scalability Law fit recovering known parameters from noisy synthetic measurements."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadsim.size.erlang import erlang_c, predict, smallest_pool
from loadsim.size.usl import UslFit, fit_usl


@pytest.mark.parametrize(
    ("servers", "p_wait", "mean_wait_ms", "p99_ms"),
    [(9, 0.653, 6.53, 41.8), (10, 0.409, 2.05, 18.6), (12, 0.140, 0.35, 6.6)],
)
def test_erlang_c_reference_values(
    servers: int, p_wait: float, mean_wait_ms: float, p99_ms: float
) -> None:
    prediction = predict(servers, arrival_rate=800, mean_hold_ms=10)
    assert prediction.p_wait == pytest.approx(p_wait, abs=0.0005)
    assert prediction.mean_wait_ms == pytest.approx(mean_wait_ms, abs=0.005)
    assert prediction.wait_percentile_ms(99) == pytest.approx(p99_ms, abs=0.05)
    # the tail is the one the p99 was read from
    assert prediction.p_wait_longer(prediction.wait_percentile_ms(99)) == pytest.approx(0.01)


def _textbook_erlang_c(c: int, a: float) -> float:
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


@pytest.mark.parametrize(("c", "a"), [(1, 0.5), (3, 2.2), (20, 15.0), (50, 49.5)])
def test_erlang_c_matches_the_textbook_sum(c: int, a: float) -> None:
    assert erlang_c(c, a) == pytest.approx(_textbook_erlang_c(c, a), rel=1e-9)


def test_erlang_c_edges() -> None:
    assert erlang_c(4, 0) == 0
    assert erlang_c(4, 4) == 1  # at or past saturation every arrival waits
    overloaded = predict(5, arrival_rate=1000, mean_hold_ms=10)  # a = 10 > 5
    assert not overloaded.stable
    assert overloaded.wait_percentile_ms(99) == math.inf
    with pytest.raises(ValueError):
        erlang_c(0, 1)


def test_allen_cunneen_scales_the_waits() -> None:
    exponential = predict(10, 800, 10)
    constant_holds = predict(10, 800, 10, hold_cv2=0.0)  # M/D/c: half the wait
    assert constant_holds.p_wait == exponential.p_wait
    assert constant_holds.mean_wait_ms == pytest.approx(exponential.mean_wait_ms / 2)
    assert constant_holds.wait_percentile_ms(99) < exponential.wait_percentile_ms(99)


def test_smallest_pool_for_a_p99() -> None:
    # From the reference values: c = 10 has p99 18.6 ms, c = 9 41.8 ms.
    assert smallest_pool(800, 10, p99_wait_ms=25) == 10
    assert smallest_pool(800, 10, p99_wait_ms=7) == 12
    assert smallest_pool(800, 10, p99_wait_ms=50) == 9


TRUE = UslFit(gamma=1000.0, alpha=0.05, beta=0.002, r_squared=1.0, points=0)


@pytest.mark.parametrize("seed", range(5))
def test_usl_fit_recovers_known_parameters(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = np.repeat([1, 2, 4, 8, 12, 16, 24, 32, 48], 3)
    measured = [TRUE.throughput(n) * rng.normal(1, 0.03) for n in sizes]  # 3% noise
    fit = fit_usl(sizes, measured)
    assert fit.gamma == pytest.approx(TRUE.gamma, rel=0.05)
    assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.015)
    assert fit.beta == pytest.approx(TRUE.beta, rel=0.25)
    assert fit.peak == pytest.approx(TRUE.peak, rel=0.1)  # sqrt((1-alpha)/beta) ≈ 21.8
    assert fit.ceiling == pytest.approx(TRUE.ceiling, rel=0.05)
    assert abs(fit.knee(48) - TRUE.knee(48)) <= 1
    assert fit.r_squared > 0.98


def test_usl_peak_ceiling_and_knee_from_the_formula() -> None:
    assert TRUE.peak == pytest.approx(math.sqrt(0.95 / 0.002))
    best = max(TRUE.throughput(n) for n in range(1, 100))
    assert TRUE.ceiling >= best
    knee = TRUE.knee(48)
    assert TRUE.throughput(knee) >= 0.95 * best > TRUE.throughput(knee - 1)


def test_usl_without_coherency_has_no_peak() -> None:
    amdahl = UslFit(gamma=500.0, alpha=0.1, beta=0.0, r_squared=1.0, points=0)
    sizes = [1, 2, 4, 8, 16]
    fit = fit_usl(sizes, [amdahl.throughput(n) for n in sizes])
    assert fit.beta == pytest.approx(0, abs=1e-9)
    assert fit.peak > 10_000  # no peak anywhere a pool could reach (round-off aside)
    assert amdahl.peak == math.inf
    assert fit.ceiling == pytest.approx(5000, rel=1e-3)  # gamma/alpha


def test_usl_fit_refuses_too_few_sizes() -> None:
    with pytest.raises(ValueError, match="three different"):
        fit_usl([2, 2, 4], [100, 110, 190])
    with pytest.raises(ValueError):
        fit_usl([1, 2, 3], [100, 0, 190])
