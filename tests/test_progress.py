"""Progress lines: when stderr is not a terminal (CI) and not `--quiet`, a line every
PROGRESS_INTERVAL_S with the run's figures so far, which agree with its own events."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from loadsim.run.dashboard import DashboardSnapshot
from loadsim.run.progress import PROGRESS_INTERVAL_S, Progress, progress_line
from tests.helpers import RunLoadsim, by_name, parse_events, write_scenarios

#: A pool of one that 3 clients holding 300 ms each cannot share within a 200 ms timeout.
STARVED = """
[scenarios.starved]
clients = 3
duration = "5.6s"
pool = { pool_size = 1, max_overflow = 0, pool_timeout = "200ms" }
workload = { hold = "300ms" }
"""

LINE = re.compile(
    r"^loadsim: (?P<scenario>\S+) (?P<elapsed>[\d.]+)/(?P<duration>[\d.]+) s · "
    r"(?P<checkouts>[\d,]+) checkouts \((?P<rate>[\d,]+)/s\) · in use (?P<used>\d+)/(?P<cap>\d+) "
    r"· waiting (?P<waiting>\d+) · wait p95 (?P<wait>[\d,.]+ ms|-) · "
    r"timeouts (?P<timeouts>[\d,]+) · errors (?P<errors>[\d,]+)$"
)


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def test_a_log_gets_progress_lines_that_agree_with_the_events(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = write_scenarios(tmp_path, STARVED)
    result = loadsim("run", "starved", "-f", str(file), "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    events = parse_events(result.stdout)  # stdout is untouched: JSONL only
    lines = [line for line in result.stderr.splitlines() if line.startswith("loadsim: starved ")]
    assert len(lines) == 1, result.stderr  # 5.6 s: one line, at 5 s
    match = LINE.match(lines[0])
    assert match, lines[0]
    elapsed = float(match["elapsed"])
    summary = by_name(events, "run.end")[0]["summary"]
    assert PROGRESS_INTERVAL_S <= elapsed <= summary["elapsed_s"] + summary["grace_s"] + 0.5
    assert match["duration"] == "5.6"
    assert match["cap"] == "1" and int(match["used"]) <= 1 and int(match["waiting"]) <= 2

    def so_far(name: str, by: float) -> int:  # (`t` and the line's time: from the log's start)
        return sum(1 for event in by_name(events, name) if event["t"] <= by)

    def counted_then(name: str) -> range:
        """What the line may say: the line's time is rounded to 0.1 s (0.05 s either way),
        and timeouts come five at once: the events up to either end of that window."""
        return range(so_far(name, elapsed - 0.06), so_far(name, elapsed + 0.06) + 1)

    assert _number(match["checkouts"]) in counted_then("client.acquired")
    assert _number(match["timeouts"]) > 0
    assert _number(match["timeouts"]) in counted_then("client.timeout")
    assert _number(match["errors"]) == 0
    assert "elapsed s (measured window)" in result.stderr  # the summary still ends it


def test_quiet_means_no_progress(loadsim: RunLoadsim, database_url: str, tmp_path: Path) -> None:
    file = write_scenarios(tmp_path, STARVED.replace('"5.6s"', '"5.2s"'))
    result = loadsim("run", "starved", "-q", "-f", str(file), "--database-url", database_url)
    assert result.returncode == 0 and result.stderr == ""


def _snapshot(elapsed: float, checkouts: int) -> DashboardSnapshot:
    return DashboardSnapshot(
        scenario="s",
        elapsed_s=elapsed,
        duration_s=None,
        pool_size=5,
        capacity=None,
        used=2,
        idle=3,
        overflow=0,
        waiting=0,
        oldest_wait_ms=0.0,
        checkouts=checkouts,
        timeouts=0,
        errors=0,
        leaks=0,
        stats={"checkouts_per_s": 12.0, "totals": {"requests": 1500, "dropped": 7}},
    )


def test_one_line_each_interval_however_often_or_late_it_is_updated() -> None:
    written: list[str] = []
    progress = Progress(written.append, interval=2.0)
    progress.start()
    for step in range(0, 41):  # 4 updates a second for 10 s: lines at 2, 4, 6, 8, 10 s
        progress.update(_snapshot(step / 4, step))
    assert [line.split(" ")[2] for line in written] == ["2.0", "4.0", "6.0", "8.0", "10.0"]
    progress.update(_snapshot(17.3, 99))  # a late update: one line, then on from 18 s
    progress.update(_snapshot(17.9, 99))
    progress.update(_snapshot(18.0, 100))
    assert len(written) == 7
    progress.start()  # a new scenario counts from its own start
    progress.update(_snapshot(2.0, 1))
    assert len(written) == 8
    assert written[0] == (
        "loadsim: s 2.0 s · 1,500 requests (7 dropped) · 8 checkouts (12/s) · in use 2/∞ · "
        "waiting 0 · wait p95 - · timeouts 0 · errors 0"
    )
    assert progress_line(_snapshot(1.0, 1)).startswith("loadsim: s 1.0 s ·")


def test_a_fleet_gets_progress_lines_adding_up_its_instances(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = write_scenarios(tmp_path, STARVED)
    result = loadsim(
        "run", "starved", "--instances", "2", "-f", str(file), "--database-url", database_url
    )
    assert result.returncode == 0, result.stderr
    events = parse_events(result.stdout)
    lines = [line for line in result.stderr.splitlines() if line.startswith("loadsim: starved ")]
    assert len(lines) == 1, result.stderr
    match = LINE.match(lines[0])
    assert match, lines[0]
    assert match["cap"] == "2"  # two pools of one
    # The line was drawn when the first snapshot at 5 s or later was relayed, from each
    # instance's latest snapshot at that moment: the stream's order says which they were.
    latest: dict[int, dict[str, Any]] = {}
    for event in by_name(events, "monitor.stats"):
        latest[event["instance"]] = event
        if event["t"] >= PROGRESS_INTERVAL_S:
            break
    assert set(latest) == {0, 1}
    assert float(match["elapsed"]) == pytest.approx(max(e["t"] for e in latest.values()), abs=0.05)
    for key in ("checkouts", "timeouts", "errors"):
        assert _number(match[key]) == sum(e["totals"][key] for e in latest.values()), key
    assert _number(match["timeouts"]) > 0
    assert _number(match["waiting"]) == sum(e["pending_requests"] for e in latest.values())
    assert _number(match["rate"]) == round(sum(e["checkouts_per_s"] for e in latest.values()))
    assert match["wait"] == "-"  # percentiles do not add up: none until run.summary
