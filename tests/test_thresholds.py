"""Thresholds (`--threshold`, a scenario's `thresholds`): parsed, evaluated against a summary,
and, in a real run, written as run.threshold events that fail the run with exit 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadsim.config.thresholds import metric_value, parse_threshold
from tests.helpers import RunLoadsim, by_name, parse_events, write_scenarios


@pytest.mark.parametrize(
    ("text", "summary", "passed"),
    [
        ("timeouts == 0", {"timeouts": 0}, True),
        ("timeouts == 0", {"timeouts": 3}, False),
        ("wait_time_p95_ms < 100", {"wait_time_ms": {"count": 9, "p95": 99.9}}, True),
        ("wait_time_p95_ms < 100", {"wait_time_ms": {"count": 9, "p95": 100.0}}, False),
        ("leaks == 0", {"leaks_suspected": 2}, False),
        ("utilisation_max <= 0.9", {"utilisation_max": 0.9}, True),
        ("utilisation_max <= 0.9", {"utilisation_max": None}, False),  # no value: not passed
    ],
)
def test_thresholds_evaluate(text: str, summary: dict[str, Any], passed: bool) -> None:
    assert parse_threshold(text).evaluate(summary)["passed"] is passed


@pytest.mark.parametrize("text", ["timeouts = 0", "nonsense < 1", "wait_time_p95_ms < x", ""])
def test_bad_thresholds_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_threshold(text)


def test_a_latency_with_no_samples_counts_as_zero() -> None:
    assert metric_value({"wait_time_ms": {"count": 0}}, "wait_time_max_ms") == 0.0


# ------------------------------------------------------------ against a server


def test_thresholds_fail_the_run_with_exit_1(loadsim: RunLoadsim, database_url: str) -> None:
    result = loadsim(
        "run",
        "exhaustion",
        "--duration",
        "5s",
        "--database-url",
        database_url,
        "--threshold",
        "timeouts == 0",
        "--threshold",
        "checkouts > 0",
    )
    assert result.returncode == 1, result.stderr
    events = parse_events(result.stdout)
    summary = by_name(events, "run.end")[0]["summary"]
    verdicts_said = [line for line in result.stderr.splitlines() if " threshold " in line]
    assert verdicts_said == [  # both, in the order given, each with the figure it judged
        f"loadsim: threshold failed in exhaustion: timeouts == 0 "
        f"(timeouts = {len(by_name(events, 'client.timeout'))})",
        f"loadsim: threshold passed in exhaustion: checkouts > 0 "
        f"(checkouts = {len(by_name(events, 'client.acquired'))})",
    ]
    assert summary["timeouts"] > 0
    verdicts = {event["threshold"]: event["passed"] for event in by_name(events, "run.threshold")}
    assert verdicts == {"timeouts == 0": False, "checkouts > 0": True}
    assert events[-1]["event"] == "run.end"
    assert any(event["kind"] == "saturated" for event in by_name(events, "monitor.alert"))


def test_thresholds_from_the_scenario_file_pass(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = write_scenarios(
        tmp_path,
        """
        [scenarios.calm]
        clients = 2
        iterations = 5
        thresholds = ["timeouts == 0", "wait_time_p95_ms < 1000", "leaks == 0"]
        workload = { hold = "10ms" }
        """,
    )
    result = loadsim("run", "calm", "--file", str(file), "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    summary = parse_events(result.stdout)[-1]["summary"]
    assert [verdict["passed"] for verdict in summary["thresholds"]] == [True, True, True]
    said = [line for line in result.stderr.splitlines() if " threshold " in line]
    assert [line.split(": ", 2)[1:] for line in said] == [
        ["threshold passed in calm", f"timeouts == 0 (timeouts = {summary['timeouts']})"],
        [
            "threshold passed in calm",
            f"wait_time_p95_ms < 1000 (wait_time_p95_ms = {summary['wait_time_ms']['p95']:g})",
        ],
        ["threshold passed in calm", "leaks == 0 (leaks = 0)"],
    ]
    quiet = loadsim("run", "calm", "-q", "--file", str(file), "--database-url", database_url)
    assert quiet.returncode == 0 and quiet.stderr == ""  # --quiet: only failures are said
