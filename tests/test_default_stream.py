"""The default event stream: two lines a checkout, from which the four events it leaves out
(`schema.DETAIL_EVENTS`) can be recovered, as the README says, and drawn by the report as
if they were there. `--events all` writes them by their own names.

The truth each check compares with is the same run's `--events all` stream: SQLAlchemy's own
pool events, written beside the ones that stand for them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from loadsim.report import build_report
from loadsim.schema import DETAIL_EVENTS, POOL_COUNTS
from tests.helpers import (
    Event,
    RunLoadsim,
    by_name,
    charts_of,
    parse_events,
    run_events,
    run_loadsim,
)

pytestmark = pytest.mark.usefixtures("no_stray_reports")


@pytest.fixture(scope="module")
def every_event(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """saturation (20 clients on a pool of 5 + 2: most checkouts wait), every event written."""
    directory = tmp_path_factory.mktemp("every-event")
    log = directory / "all.jsonl"
    result = run_loadsim(
        "run", "saturation", "-d", "2s", "-q", "--events", "all",
        "--database-url", database_url, "--output", str(log), cwd=directory,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return log


def test_the_default_stream_leaves_out_only_the_detail_events(
    loadsim: RunLoadsim, database_url: str
) -> None:
    events = run_events(loadsim, "saturation", "-d", "1s", "-q", "--database-url", database_url)
    names = Counter(event["event"] for event in events)
    assert not DETAIL_EVENTS & set(names)
    summary = events[-1]["summary"]
    assert names["client.acquired"] == names["client.released"] == summary["checkouts"] > 0
    assert names["pool.connect"] == summary["connects"]
    # the pool's counts and the backend ride on client.acquired
    for event in by_name(events, "client.acquired"):
        assert isinstance(event["backend_pid"], int)
        assert 1 <= event["connections_used"] <= event["connections_total"] <= 7


def test_events_all_writes_every_pool_event_by_its_own_name(every_event: Path) -> None:
    events = parse_events(every_event.read_text())
    names = Counter(event["event"] for event in events)
    checkouts = events[-1]["summary"]["checkouts"]
    assert names["pool.checkout"] == names["pool.checkin"] == names["pool.reset"] == checkouts
    assert names["client.waiting"] >= checkouts == names["client.acquired"]


def test_client_acquired_is_the_moment_of_its_pool_checkout(every_event: Path) -> None:
    """Same connection, backend and counts as the pool.checkout just before it; one client
    fewer waiting (it is no longer); and it asked the pool (client.waiting) at its
    t - wait_ms, to well within a millisecond."""
    events = parse_events(every_event.read_text())
    checkout: dict[int, Event] = {}
    asked: dict[int, float] = {}
    paired = 0
    for event in events:
        name, client = event["event"], event.get("client")
        if name == "pool.checkout":
            checkout[client] = event
        elif name == "client.waiting":
            asked[client] = event["t"]
        elif name == "client.acquired":
            pool = checkout.pop(client)
            assert (event["conn"], event["backend_pid"]) == (pool["conn"], pool["backend_pid"])
            for key in POOL_COUNTS:
                less = 1 if key == "pending_requests" else 0
                assert event[key] == pool[key] - less, (key, event, pool)
            assert event["t"] - event["wait_ms"] / 1000 == pytest.approx(
                asked.pop(client), abs=0.001
            )
            paired += 1
    assert paired == events[-1]["summary"]["checkouts"] > 20


def _default_stream_of(log: Path, into: Path) -> Path:
    """The log as the default stream would have written it: the detail events left out."""
    lines = [
        line
        for line, event in zip(
            log.read_text().splitlines(), parse_events(log.read_text()), strict=True
        )
        if event["event"] not in DETAIL_EVENTS
    ]
    into.write_text("\n".join(lines) + "\n")
    return into


def _drawn(report_dir: Path, log: Path) -> dict[str, Any]:
    charts = charts_of(build_report([log], report_dir), "saturation")
    timeline, pool, distribution = charts["timeline"], charts["pool"], charts["distribution"]
    return {
        "lanes": timeline["lanes"],
        "bars": timeline["bars"],
        "clients": sorted(timeline["clients"]),
        "per_client": distribution["checkouts_per_client"],
        "per_connection": distribution["checkouts_per_connection"],
        "waits": charts["latency"]["samples"]["wait_time_ms"],
        "max_used": pool["max_used"],
        "max_total": pool["max_total"],
        "max_pending": pool["max_pending"],
    }


def test_the_report_draws_the_default_stream_as_it_draws_every_event(
    every_event: Path, tmp_path: Path
) -> None:
    """The same run, once with every event and once without the detail events: the same
    lanes, bars, checkouts per client and per connection, waits, and pool counts."""
    default = _default_stream_of(every_event, tmp_path / "default.jsonl")
    full, folded = _drawn(tmp_path / "full", every_event), _drawn(tmp_path / "folded", default)
    assert folded == full
    summary = parse_events(every_event.read_text())[-1]["summary"]
    assert folded["bars"] == summary["checkouts"]
    assert folded["max_pending"] == summary["max_pending_requests"]
