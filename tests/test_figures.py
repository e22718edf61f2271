"""Figures that must not mislead, each checked against an independent truth: the run's own
events.

- Every wait is in `wait_time_ms`, a wait that ended in the pool's TimeoutError at its full
  length; `acquired_wait_time_ms` holds only the waits that got a connection.
- Rates are over the measured window (`elapsed_s`: the start to the moment the duration
  ended); the grace period for holders to finish after it is `grace_s`, in no rate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Event, RunLoadsim, by_name, parse_events, run_events, write_scenarios

#: HDR histograms keep 3 significant digits: a percentile is the highest value of its
#: sample's bucket, at most 1/1024 above the sample (plus the microsecond of rounding).
HDR_RELATIVE = 1 / 1024


def nearest_rank(values: list[float], percentile: float) -> float:
    """The sample an HDR histogram's percentile reports (its rank rule: round half up)."""
    ordered = sorted(values)
    rank = max(1, int(percentile / 100 * len(ordered) + 0.5))
    return ordered[rank - 1]


def assert_hdr_figure(figure: float, sample: float) -> None:
    assert sample - 0.002 <= figure <= sample * (1 + HDR_RELATIVE) + 0.002, (figure, sample)


def wait_samples(events: list[Event]) -> tuple[list[float], list[float]]:
    acquired = [e["wait_ms"] for e in by_name(events, "client.acquired") if "wait_ms" in e]
    timed_out = [e["wait_ms"] for e in by_name(events, "client.timeout")]
    return acquired, timed_out


def run_file(loadsim: RunLoadsim, tmp_path: Path, database_url: str, text: str) -> list[Event]:
    file = write_scenarios(tmp_path, text)
    return run_events(loadsim, "s", "--file", str(file), "--database-url", database_url, "-q")


EXHAUSTED = """
[scenarios.s]
clients = 8
duration = "4s"
pool = { pool_size = 2, max_overflow = 1, pool_timeout = "500ms" }
workload = { hold = "1200ms", think = "10ms" }
"""


def test_timed_out_waits_are_waits_of_their_full_length(
    loadsim: RunLoadsim, tmp_path: Path, database_url: str
) -> None:
    """Three connections, eight clients holding 1.2 s, pool_timeout 0.5 s: half the waits end
    in TimeoutError. Leaving them out made `exhaustion`'s p99 ≈ 494 ms while 40 checkouts
    waited the full 1,000 ms."""
    events = run_file(loadsim, tmp_path, database_url, EXHAUSTED)
    summary = events[-1]["summary"]
    acquired, timed_out = wait_samples(events)
    assert timed_out and acquired, "the scenario must both time out and acquire"
    assert summary["timeouts"] == len(timed_out)
    assert summary["checkouts"] == len(acquired)

    waits = summary["wait_time_ms"]
    assert waits["count"] == len(acquired) + len(timed_out)
    assert waits["max"] >= 500  # pool_timeout: the longest wait is at least a timed-out one
    for key, percentile in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0)):
        assert_hdr_figure(waits[key], nearest_rank(acquired + timed_out, percentile))
    assert_hdr_figure(waits["max"], max(acquired + timed_out))
    assert waits["mean"] == pytest.approx(
        sum(acquired + timed_out) / (len(acquired) + len(timed_out)), abs=0.01
    )

    got = summary["acquired_wait_time_ms"]
    assert got["count"] == len(acquired)
    assert_hdr_figure(got["p99"], nearest_rank(acquired, 99.0))
    assert_hdr_figure(got["max"], max(acquired))

    stats = by_name(events, "monitor.stats")
    assert stats
    for snapshot in stats:  # every window's waits: its checkouts and its timeouts
        window = snapshot["window"]
        assert snapshot["wait_time_ms"]["count"] == window["checkouts"] + window["timeouts"]
        assert snapshot["acquired_wait_time_ms"]["count"] == window["checkouts"]
    snapshot_waits = sum(snapshot["wait_time_ms"]["count"] for snapshot in stats)
    assert snapshot_waits <= waits["count"]
    with_timeouts = [snapshot for snapshot in stats if snapshot["window"]["timeouts"]]
    assert with_timeouts
    assert all(snapshot["wait_time_ms"]["max"] >= 500 for snapshot in with_timeouts)


def test_thresholds_accept_the_acquired_waits(
    loadsim: RunLoadsim, tmp_path: Path, database_url: str
) -> None:
    file = write_scenarios(tmp_path, EXHAUSTED.replace('duration = "4s"', 'duration = "2s"'))
    result = loadsim(
        "run",
        "s",
        "--file",
        str(file),
        "--database-url",
        database_url,
        "-q",
        "--threshold",
        "acquired_wait_time_max_ms < 500",
        "--threshold",
        "wait_time_max_ms >= 500",
    )
    assert result.returncode == 0, result.stderr
    verdicts = by_name(parse_events(result.stdout), "run.threshold")
    assert [verdict["passed"] for verdict in verdicts] == [True, True], verdicts


HOLDS_OUTLAST_THE_END = """
[scenarios.s]
clients = 3
duration = "3s"
pool = { pool_size = 5, max_overflow = 0 }
workload = { hold = "20ms", think = "30ms" }

[[scenarios.s.groups]]
name = "long"
clients = 2
start = "1s"
hold = "3s"                     # taken at ~1 s, returned at ~4 s: a second past the end
"""


def test_rates_are_over_the_measured_window_not_the_grace(
    loadsim: RunLoadsim, tmp_path: Path, database_url: str
) -> None:
    """A 3 s run whose two long holds end at about 4 s: the run waits for them (the grace
    period), but the measured window is the 3 s, and the rates are its counts over it.
    `long-transactions` (10 s) ran 12.65 s and divided its checkouts by that."""
    events = run_file(loadsim, tmp_path, database_url, HOLDS_OUTLAST_THE_END)
    summary = events[-1]["summary"]
    start = events[0]["t"]  # run.start: the clients start right after it
    assert summary["elapsed_s"] == pytest.approx(3.0, abs=0.15)
    stop = start + summary["elapsed_s"]  # the end of the measured window, on the event clock

    acquired = by_name(events, "client.acquired")
    within = [event for event in acquired if event["t"] <= stop + 0.05]
    assert len(within) == summary["checkouts"] == len(acquired)  # none start in the grace
    assert summary["checkouts_per_s"] * summary["elapsed_s"] == pytest.approx(
        len(within), abs=0.02 * summary["elapsed_s"] + 1
    )
    connects = by_name(events, "pool.connect")
    assert summary["connects_per_s"] == pytest.approx(
        len(connects) / summary["elapsed_s"], abs=0.02
    )

    # The grace: from the end of the window to the last long hold's return.
    last_release = max(event["t"] for event in by_name(events, "client.released"))
    assert last_release > stop + 0.5, "the long holds must outlast the end"
    assert summary["grace_s"] == pytest.approx(last_release - stop, abs=0.2)
    assert 0 < summary["utilisation_mean"] <= 1


def test_a_run_that_ends_by_itself_has_no_grace(
    loadsim: RunLoadsim, tmp_path: Path, database_url: str
) -> None:
    events = run_file(
        loadsim,
        tmp_path,
        database_url,
        """
        [scenarios.s]
        clients = 2
        iterations = 5
        pool = { pool_size = 2, max_overflow = 0 }
        workload = { hold = "20ms" }
        """,
    )
    summary: dict[str, Any] = events[-1]["summary"]
    assert summary["grace_s"] == 0.0
    assert summary["checkouts"] == 10
    # elapsed_s is rounded to the millisecond: a 0.1 s run's rate to within 1%
    assert summary["checkouts_per_s"] == pytest.approx(10 / summary["elapsed_s"], rel=0.01)
    assert math.isfinite(summary["checkouts_per_s"])
