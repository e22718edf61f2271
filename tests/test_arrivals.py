"""Open workloads: requests arrive at the declared rate whatever the pool does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadsim.config.scenario import Arrivals, Stage, parse_scenarios
from loadsim.errors import ScenarioError
from tests.helpers import RunLoadsim, run_events, write_scenarios

SCENARIOS = """
[scenarios.steady]
duration = "3s"
pool = { pool_size = 5, max_overflow = 0 }
workload = { hold = "5ms" }
arrivals = { rate = 100 }

[scenarios.poisson]
duration = "3s"
pool = { pool_size = 5, max_overflow = 0 }
workload = { hold = "5ms" }
arrivals = { rate = 100, distribution = "poisson" }

[scenarios.ramp]
duration = "4s"
pool = { pool_size = 5, max_overflow = 0 }
workload = { hold = "5ms" }

[scenarios.ramp.arrivals]
rate = 0
stages = [{ duration = "2s", target = 100 }, { duration = "2s", target = 100 }]

[scenarios.crowded]
duration = "3s"
pool = { pool_size = 10, max_overflow = 0 }
workload = { hold = "500ms" }
arrivals = { rate = 50, max_in_flight = 5 }

[scenarios.stalled]
duration = "3s"
pool = { pool_size = 1, max_overflow = 0 }
workload = { hold = "50ms" }
arrivals = { rate = 40 }
"""


def run_open(loadsim: RunLoadsim, database_url: str, tmp_path: Path, name: str) -> dict[str, Any]:
    file = write_scenarios(tmp_path, SCENARIOS)
    events = run_events(
        loadsim, name, "--file", str(file), "--database-url", database_url, "--seed", "1", "-q"
    )
    assert events[0]["arrivals"]["rate"] >= 0
    summary: dict[str, Any] = events[-1]["summary"]
    return summary


def test_constant_arrivals_hit_the_declared_rate(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    summary = run_open(loadsim, database_url, tmp_path, "steady")
    # 100/s for 3 s: one request every 10 ms from t = 0, so 300 are due.
    assert summary["requests"] == pytest.approx(300, rel=0.03)
    assert summary["dropped"] == 0
    assert summary["checkouts"] >= 0.97 * summary["requests"]


def test_poisson_arrivals_average_the_declared_rate(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    summary = run_open(loadsim, database_url, tmp_path, "poisson")
    # A Poisson count over 3 s at 100/s has mean 300 and standard deviation ~17: 4 sigma.
    assert summary["requests"] == pytest.approx(300, abs=70)


def test_ramping_arrivals_follow_the_stages(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    summary = run_open(loadsim, database_url, tmp_path, "ramp")
    # 0 -> 100/s over 2 s is 100 requests, then 100/s for 2 s is 200 more.
    assert summary["requests"] == pytest.approx(300, rel=0.03)


def test_requests_beyond_max_in_flight_are_dropped_and_counted(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    summary = run_open(loadsim, database_url, tmp_path, "crowded")
    # 150 due; at most 5 in flight, each ~0.5 s: about 10 start per second, 30 in all.
    assert summary["requests"] == pytest.approx(150, rel=0.03)
    assert summary["dropped"] >= 100
    assert summary["checkouts"] <= summary["requests"] - summary["dropped"]


def test_a_stalled_pool_shows_as_latency_not_as_less_load(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    """40 requests a second into one connection that serves 20: the queue grows, and the
    response time (from each request's intended start) grows with it, while each use of the
    connection still takes 50 ms. A closed loop would just have sent fewer requests."""
    summary = run_open(loadsim, database_url, tmp_path, "stalled")
    assert summary["requests"] == pytest.approx(120, rel=0.03)
    assert summary["use_time_ms"]["p99"] < 150
    assert summary["response_time_ms"]["p99"] > 1000


def test_arrival_rates_integrate_over_stages() -> None:
    arrivals = Arrivals(rate=0, stages=(Stage(2, 100), Stage(2, 100)))
    assert arrivals.rate_at(1.0) == pytest.approx(50)
    assert arrivals.rate_at(3.0) == pytest.approx(100)
    # The first request of a ramp from 0 is due where the area under the ramp reaches 1:
    # 25 t^2 = 1, t = 0.2 s, not at 1/rate(0) = never.
    assert arrivals.time_after(0.0, 1.0, 4.0) == pytest.approx(0.2, abs=0.002)
    assert Arrivals(rate=0).time_after(0.0, 1.0, 4.0) == float("inf")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("arrivals = { distribution = 'poisson' }", "'rate'"),
        ("arrivals = { rate = -1 }", "at least 0"),
        ("arrivals = { rate = 10, stages = [{ duration = '1s' }] }", "'target'"),
        ("arrivals = { rate = 10, max_in_flight = 0 }", "at least 1"),
        ("arrivals = { rate = 10, shape = 'sine' }", "'shape'"),
    ],
)
def test_bad_arrivals_are_refused(table: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenarios(f'[scenarios.x]\nduration = "1s"\n{table}\n', Path("x.toml"))


def test_an_open_workload_needs_a_duration() -> None:
    with pytest.raises(ScenarioError, match="needs a 'duration'"):
        parse_scenarios("[scenarios.x]\niterations = 3\narrivals = { rate = 5 }\n", Path("x.toml"))
