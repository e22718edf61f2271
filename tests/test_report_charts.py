"""`loadsim report`'s charts, checked by the numbers they drew (lanes, bars, extents, counts)
against the events of the log they were drawn from: the logs checked in under tests/data
(`recorded`, `saturation_report` and `pooled_report` in conftest.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from loadsim.report import Report, build_report
from loadsim.report import aggregate as aggregate_module
from loadsim.report.reader import LogSource
from tests.helpers import Event, RecordedLogs, charts_of, events_of, with_pool_counts

pytestmark = pytest.mark.usefixtures("no_stray_reports")


def run_end_t(events: list[Event]) -> float:
    return float(events[-1]["t"])


@pytest.mark.parametrize("scenario", ["saturation", "exhaustion", "pooled", "unpooled"])
def test_timeline_has_a_lane_per_connection_and_a_bar_per_checkout(
    recorded: RecordedLogs, saturation_report: Report, pooled_report: Report, scenario: str
) -> None:
    path, report = (
        (recorded.saturation, saturation_report)
        if scenario in ("saturation", "exhaustion")
        else (recorded.pooled, pooled_report)
    )
    events = events_of(path)[scenario]
    timeline = charts_of(report, scenario)["timeline"]
    connected = list(dict.fromkeys(e["conn"] for e in events if e["event"] == "pool.connect"))
    checkouts = sum(e["event"] == "client.acquired" for e in events)
    assert timeline["lanes"] == connected
    assert timeline["bars"] == checkouts == timeline["checkouts"]
    assert not timeline["bars_thinned"]
    start, end = timeline["extent"]
    assert 0 <= start <= end <= run_end_t(events)
    assert timeline["xlim"][1] >= end
    closes = Counter(e["cause"] for e in events if e["event"] == "pool.close")
    if not timeline["packed"]:
        assert timeline["marks"]["connect"] == len(connected)
        for cause, number in closes.items():
            assert timeline["marks"][f"close:{cause}"] == number
    clients = {e["client"] for e in events if e["event"] == "client.acquired"}
    assert set(timeline["clients"]) == clients


def test_unpooled_connections_share_rows_when_they_never_overlap(pooled_report: Report) -> None:
    timeline = charts_of(pooled_report, "unpooled")["timeline"]
    assert timeline["packed"]  # one connection per checkout: too many for a lane each
    assert timeline["rows"] < len(timeline["lanes"])
    assert timeline["rows"] <= 20 + 1  # never more rows than connections open at once
    assert charts_of(pooled_report, "pooled")["timeline"]["rows"] == 10


def test_pool_chart_shows_the_counts_the_events_carry(
    recorded: RecordedLogs, saturation_report: Report
) -> None:
    logs = events_of(recorded.saturation)
    for scenario, limit in (("saturation", 7), ("exhaustion", 10)):
        events = logs[scenario]
        # the pool's own counts are meaningless while it is disposed (see aggregate.py)
        pool_events = [e for e in with_pool_counts(events) if e.get("cause") != "disposed"]
        chart = charts_of(saturation_report, scenario)["pool"]
        assert chart["max_used"] == max(e["connections_used"] for e in pool_events)
        assert chart["max_total"] == max(e["connections_total"] for e in pool_events)
        # clients waiting are counted from the waits themselves (test_report_truth.py)
        assert chart["max_pending"] == events[-1]["summary"]["max_pending_requests"]
        assert chart["max_overflow"] == max(e["overflow"] for e in pool_events)
        assert chart["pool_size"] == events[0]["pool"]["pool_size"]
        assert chart["limit"] == limit
        assert chart["max_total"] <= limit
        assert chart["monitor_snapshots"] == sum(e["event"] == "monitor.stats" for e in events)
        assert chart["timeouts"] == sum(e["event"] == "client.timeout" for e in events)
        assert 0 <= chart["extent"][0] <= chart["extent"][1] <= chart["xlim"][1]
        assert chart["xlim"][1] >= max(e["t"] for e in pool_events)
    exhaustion = charts_of(saturation_report, "exhaustion")["pool"]
    assert exhaustion["max_used"] == 10  # the pool at its limit
    assert exhaustion["timeouts"] > 0


def test_distribution_counts_every_checkout_once(
    recorded: RecordedLogs, saturation_report: Report
) -> None:
    events = events_of(recorded.saturation)["saturation"]
    chart = charts_of(saturation_report, "saturation")["distribution"]
    checkouts = [e for e in events if e["event"] == "client.acquired"]
    assert chart["checkouts_per_client"] == dict(Counter(e["client"] for e in checkouts))
    assert chart["checkouts_per_connection"] == dict(Counter(e["conn"] for e in checkouts))
    assert len(chart["checkouts_per_client"]) == events[0]["workload"]["clients"]
    waits: dict[int, list[float]] = {}
    for event in events:
        if event["event"] == "client.acquired":
            waits.setdefault(event["client"], []).append(event["wait_ms"])
    for client, values in waits.items():
        assert chart["wait_mean_ms_per_client"][client] == pytest.approx(sum(values) / len(values))


def test_latency_chart_covers_every_sample_and_snapshot(
    recorded: RecordedLogs, saturation_report: Report
) -> None:
    events = events_of(recorded.saturation)["saturation"]
    chart = charts_of(saturation_report, "saturation")["latency"]
    assert chart["samples"]["wait_time_ms"] == sum(e["event"] == "client.acquired" for e in events)
    assert chart["samples"]["use_time_ms"] == sum(e["event"] == "client.released" for e in events)
    assert chart["samples"]["create_time_ms"] == sum(e["event"] == "pool.connect" for e in events)
    snapshots = [e for e in events if e["event"] == "monitor.stats"]
    assert chart["monitor_snapshots"] == len(snapshots) >= 2
    assert chart["extent"] == (snapshots[0]["t"], snapshots[-1]["t"])
    assert chart["points_over_time"]["wait"] > 0


def test_several_scenarios_in_a_log_are_compared(saturation_report: Report) -> None:
    names = [chart.name for chart in saturation_report.comparison]
    assert names == ["comparison.png", "comparison-over-time.png"]
    assert saturation_report.comparison[0].data["labels"] == ["saturation", "exhaustion"]
    figures = saturation_report.comparison[0].data["figures"]
    assert figures["exhaustion"]["timeouts"] > 0 == figures["saturation"]["timeouts"]


def test_past_the_cap_checkouts_close_together_merge(
    recorded: RecordedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadsim.report.charts import timeline_chart

    monkeypatch.setattr(aggregate_module, "MAX_BARS", 200)
    data = aggregate_module.read_log(LogSource.of(recorded.pooled)).scenarios[0]
    assert data.scenario == "pooled"
    bars = data.bars
    assert bars.merged and not bars.thinned and len(bars) <= 200
    starts, ends, lanes, _, counts = bars.arrays()
    assert int(counts.sum()) == data.checkouts > 1000  # every checkout is in one bar
    lane_of = {int(conn): lane for lane, conn in enumerate(data.lanes.conn)}
    for event in events_of(recorded.pooled)["pooled"]:
        if event["event"] == "client.acquired":  # ... the bar of its connection, at its time
            on_lane = lanes == lane_of[event["conn"]]
            assert ((starts[on_lane] <= event["t"]) & (event["t"] <= ends[on_lane])).any()
    timeline = timeline_chart(data, "")
    assert timeline.data["bars_merged"] and timeline.data["checkouts_drawn"] == data.checkouts


def test_past_the_cap_one_checkout_per_connection_is_thinned_evenly(
    recorded: RecordedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadsim.report.charts import timeline_chart

    monkeypatch.setattr(aggregate_module, "MAX_BARS", 100)
    data = aggregate_module.read_log(LogSource.of(recorded.pooled)).scenarios[1]
    assert data.scenario == "unpooled"
    assert data.bars.thinned and 50 <= len(data.bars) <= 100  # NullPool: nothing to merge
    starts = data.bars.arrays()[0]
    assert starts.min() < data.last_t / 4 and starts.max() > data.last_t * 3 / 4  # all along
    timeline = timeline_chart(data, "")
    assert timeline.data["bars_thinned"] and timeline.data["bars"] <= len(data.bars)
    assert timeline.data["checkouts"] == data.bars.seen > 100


def test_application_instances_are_one_fleet(recorded: RecordedLogs, tmp_path: Path) -> None:
    events = events_of(recorded.instances)["saturation"]
    report = build_report([recorded.instances], tmp_path / "fleet")
    assert len(report.scenarios) == 1
    data, _ = report.scenarios[0]
    assert data.instances == [0, 1] and data.summary is not None
    assert data.summary["instances"] == 2  # run.summary: the fleet's figures
    charts = charts_of(report, "saturation")
    connections = [(e["instance"], e["conn"]) for e in events if e["event"] == "pool.connect"]
    assert len(charts["timeline"]["lanes"]) == len(set(connections)) > 7
    assert charts["timeline"]["bars"] == sum(e["event"] == "client.acquired" for e in events)
    assert charts["pool"]["instances"] == 2
    assert charts["pool"]["max_total"] <= 2 * 7 < charts["pool"]["max_total"] + 7
    clients = charts["distribution"]["checkouts_per_client"]
    assert len(clients) == 20 and {str(k).split("/")[0] for k in clients} == {"0", "1"}
