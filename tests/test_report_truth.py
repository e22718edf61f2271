"""Charts that must not lie: what a chart draws is what the log says, its colours mean what
the README says they mean, and what it puts on the page can be read (no label on another, no
axis that exaggerates, no empty box). Checked on the numbers a chart drew and, where the
question is how it looks, on matplotlib's own layout of it (text extents from the Agg
renderer), against the logs checked in under tests/data."""

from __future__ import annotations

import numpy as np
import pytest

from loadsim.report.aggregate import read_log
from loadsim.report.charts import pool_chart
from loadsim.report.reader import LogSource
from tests.helpers import Event, RecordedLogs, events_of

pytestmark = pytest.mark.usefixtures("no_stray_reports")


def drawn_at(series: tuple[list[float], list[int]], t: float) -> int:
    """The value a step series (each value holds from its time to the next) shows at t."""
    times, values = series
    return values[max(0, int(np.searchsorted(times, t, side="right")) - 1)]


def snapshots(events: list[Event]) -> list[Event]:
    return [e for e in events if e["event"] == "monitor.stats"]


# --------------------------------------------------------------- clients waiting


def test_clients_waiting_through_a_stall_are_the_snapshots_count(
    recorded: RecordedLogs,
) -> None:
    """exhaustion: 15 clients, at most 10 connections, each held 2.5 s past the 1 s
    pool_timeout. While the pool is stalled there are no pool events, and every snapshot says
    5 clients wait: so must the chart (it once said about 1, the last pool event's count)."""
    events = events_of(recorded.exhaustion)["exhaustion"]
    (data,) = read_log(LogSource.of(recorded.exhaustion)).scenarios
    waiting = pool_chart(data, "").data["waiting"]
    stats = snapshots(events)
    stalled = [s for s in stats if s["pending_requests"] == 5]
    assert len(stalled) >= 5  # the log is what this test is about
    *during, last = stats
    for snapshot in during:
        assert drawn_at(waiting, snapshot["t"]) == snapshot["pending_requests"], snapshot["t"]
    # the run stopped: the waiting clients were cancelled (no event says so), the last
    # snapshot counts none, and from it on the chart shows none
    assert last["pending_requests"] == 0
    times, values = waiting
    assert all(v == 0 for t, v in zip(times, values, strict=True) if t > last["t"] + 0.01)
    clients = events[0]["workload"]["clients"]
    assert max(values) <= clients
    assert max(values) == events[-1]["summary"]["max_pending_requests"]


@pytest.mark.parametrize("log", ["saturation", "instances", "pooled"])
def test_clients_waiting_never_below_a_snapshot(recorded: RecordedLogs, log: str) -> None:
    """In busy runs too: at each snapshot's time the chart shows at least the clients the
    snapshot counted waiting (several instances: their sum, each at its own snapshot's time),
    and its peak is the run's max_pending_requests."""
    path = getattr(recorded, log)
    by_scenario = events_of(path)
    for data in read_log(LogSource.of(path)).scenarios:
        events = by_scenario[data.scenario]
        waiting = pool_chart(data, "").data["waiting"]
        if data.several_instances:
            most = max(s["pending_requests"] for s in snapshots(events))
            assert most <= max(waiting[1]) <= events[-1]["summary"]["max_pending_requests"]
            continue
        for snapshot in snapshots(events)[:-1]:  # the last may follow the stop
            assert drawn_at(waiting, snapshot["t"]) >= snapshot["pending_requests"]
        assert max(waiting[1]) == events[-1]["summary"]["max_pending_requests"]
