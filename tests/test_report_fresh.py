"""A run recorded now, by this code against the test server, then reported.

The other report tests read the logs checked in under tests/data: quick, and no server needed.
These catch what they cannot: drift between what `loadsim run` writes today and what
`loadsim report` reads, and checked-in logs that are no longer what `loadsim run` writes
(re-record them with tests/data/record.py).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from loadsim.report import build_report
from tests.helpers import (
    RECORDED_RUNS,
    RecordedLogs,
    RecordedRun,
    RunLoadsim,
    charts_of,
    events_of,
    parse_events,
    with_pool_counts,
)

pytestmark = pytest.mark.usefixtures("no_stray_reports")

RERECORD = "tests/data is out of date: re-record it with tests/data/record.py"
#: Events every saturation run writes, each always with the same fields.
EVERY_RUN_WRITES = (
    "run.start",
    "pool.connect",
    "pool.close",
    "client.acquired",
    "client.released",
    "client.timeout",
    "monitor.stats",
    "run.end",
)


def test_a_fresh_run_is_reported_as_it_ran(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path, recorded: RecordedLogs
) -> None:
    """saturation then exhaustion, 2 s each, recorded as tests/data/saturation.jsonl.gz is,
    through `loadsim report`; each scenario's charts drew what its events say."""
    (run,) = [run for run in RECORDED_RUNS if run.name == "saturation"]
    log = run.record(tmp_path, database_url)
    result = loadsim("report", str(log), "--out", "report")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # five charts a scenario (a fresh log has memory figures), and the comparison's two
    assert len(list((tmp_path / "report").glob("*.png"))) == 2 * 5 + 2
    assert (tmp_path / "report" / "index.html").stat().st_size > 0

    report = build_report([log], tmp_path / "again")
    by_scenario = events_of(log)
    assert [data.scenario for data, _ in report.scenarios] == ["saturation", "exhaustion"]
    for scenario, events in by_scenario.items():
        charts = charts_of(report, scenario)
        timeline = charts["timeline"]
        connected = list(dict.fromkeys(e["conn"] for e in events if e["event"] == "pool.connect"))
        assert timeline["lanes"] == connected
        assert timeline["bars"] == sum(e["event"] == "client.acquired" for e in events)
        pool_events = [e for e in with_pool_counts(events) if e.get("cause") != "disposed"]
        pool = charts["pool"]
        assert pool["max_used"] == max(e["connections_used"] for e in pool_events)
        assert pool["max_total"] == max(e["connections_total"] for e in pool_events)
        assert pool["timeouts"] == sum(e["event"] == "client.timeout" for e in events)
        assert pool["monitor_snapshots"] == sum(e["event"] == "monitor.stats" for e in events)
        latency = charts["latency"]
        # every wait, as the summary counts them: those that got a connection, and timeouts
        assert latency["samples"]["wait_time_ms"] == sum(
            e["event"] in ("client.acquired", "client.timeout") for e in events
        )
        assert latency["samples"]["wait_time_ms"] == events[-1]["summary"]["wait_time_ms"]["count"]
        checkouts = [e for e in events if e["event"] == "client.acquired"]
        distribution = charts["distribution"]
        served = {client: n for client, n in distribution["checkouts_per_client"].items() if n}
        assert served == dict(Counter(e["client"] for e in checkouts))
        assert len(distribution["checkouts_per_client"]) == events[0]["workload"]["clients"]
        summary = events[-1]["summary"]
        assert summary["checkouts"] == len(checkouts)
    assert charts_of(report, "exhaustion")["pool"]["timeouts"] > 0

    # The checked-in log of the same run is what this code writes: same schema, same events
    # with the same fields.
    fresh, checked_in = by_scenario, events_of(recorded.saturation)
    assert (
        fresh["saturation"][0]["schema_version"] == checked_in["saturation"][0]["schema_version"]
    ), RERECORD
    fields, recorded_fields = fields_by_event(fresh), fields_by_event(checked_in)
    for name in EVERY_RUN_WRITES:
        assert recorded_fields[name] == fields[name], f"{name}: {RERECORD}"


def fields_by_event(by_scenario: dict[str, list[dict[str, object]]]) -> dict[str, set[str]]:
    """The top-level fields each kind of event carried, anywhere in the log."""
    fields: dict[str, set[str]] = {}
    for events in by_scenario.values():
        for event in events:
            fields.setdefault(str(event["event"]), set()).update(event)
    return fields


@pytest.mark.parametrize("run", RECORDED_RUNS, ids=lambda run: run.name)
def test_the_checked_in_logs_are_what_loadsim_writes_today(
    recorded: RecordedLogs, run: RecordedRun
) -> None:
    """Every event of every checked-in log is one `loadsim/schema.py` declares, as it
    declares it (`parse_events` checks each line); when not, re-record them."""
    log: Path = getattr(recorded, run.name)
    events = parse_events(log.read_text(encoding="utf-8"))
    assert events[0]["event"] == "run.start"
    assert events[-1]["event"] in {"run.end", "run.summary"}
