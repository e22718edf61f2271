"""Metrics people can trust: checked against a real server, and against arithmetic."""

from __future__ import annotations

import io
import json
import os
import pty
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram
from rich.console import Console

from loadsim.config.thresholds import metric_value, parse_threshold
from loadsim.run.dashboard import DashboardSnapshot, render
from loadsim.run.events import ConsoleLines
from loadsim.run.metrics import Latency, Utilisation, fairness
from tests.conftest import RunLoadsim, clean_environment, parse_events, write_scenarios
from tests.test_run import by_name, run_events

# ------------------------------------------------------------------ arithmetic


def test_latency_percentiles_match_the_recorded_values() -> None:
    latency = Latency()
    for value in range(1, 1001):  # 1 ms .. 1000 ms, one each
        latency.add(float(value))
    window = latency.close_window()
    assert window["count"] == 1000
    assert window["p50"] == pytest.approx(500, rel=0.002)  # 3 significant digits
    assert window["p99"] == pytest.approx(990, rel=0.002)
    assert window["p99_9"] == pytest.approx(999, rel=0.002)
    assert window["max"] == pytest.approx(1000, rel=0.002)
    assert window["mean"] == pytest.approx(500.5, rel=0.002)
    latency.add(5000.0)
    assert latency.close_window()["count"] == 1  # a window starts empty
    assert latency.run_figures()["count"] == 1001  # ... and the run keeps everything


def test_percentiles_agree_with_hdrhistograms_own() -> None:
    rng = random.Random(7)
    for count in (1, 3, 100, 5000):
        latency, reference = Latency(), HdrHistogram(1, 3_600_000_000, 3)
        for _ in range(count):
            value = rng.expovariate(1 / 200.0)
            latency.add(value)
            reference.record_value(max(1, int(value * 1000)))
        figures = latency.close_window()
        for percentile in (50, 90, 95, 99, 99.9):
            key = "p" + f"{percentile:g}".replace(".", "_")
            assert figures[key] == round(reference.get_value_at_percentile(percentile) / 1000, 3)
        assert figures["max"] == round(reference.get_max_value() / 1000, 3)


def test_latency_counts_every_value_where_record_value_would() -> None:
    """Latency counts values with its own inline arithmetic, in batches: the counts, across
    every magnitude and past both ends of the range, must be hdrhistogram's own."""
    rng = random.Random(11)
    latency, reference = Latency(), HdrHistogram(1, 3_600_000_000, 3)
    windows = []
    for batch in (10, Latency._BATCH * 2 + 17, 1):  # below, across and at a batch's size
        values = [rng.uniform(0, 10 ** rng.randint(-3, 7)) for _ in range(batch)]
        values += [0.0, -1.0, 0.0004, 0.001, 3_600_000.0, 9e12]  # clamped to 1 µs .. 1 h
        for value in values:
            latency.add(value)
            reference.record_value(min(max(1, int(value * 1000)), 3_600_000_000))
        windows.append(latency.close_window()["count"])
    assert windows == [16, Latency._BATCH * 2 + 23, 7]  # each window starts empty
    run = latency.run_figures()
    assert run["count"] == reference.get_total_count()
    assert list(latency._run.counts) == list(reference.counts)
    assert run["max"] == round(reference.get_max_value() / 1000, 3)


def test_utilisation_is_time_weighted() -> None:
    utilisation = Utilisation(capacity=4, started=0.0)
    utilisation.change(+2, 0.0)  # 2 of 4 in use for the first second
    utilisation.change(+2, 1.0)  # 4 of 4 for the next
    assert utilisation.close_window(2.0) == pytest.approx(0.75)
    utilisation.change(-4, 2.0)
    assert utilisation.close_window(4.0) == pytest.approx(0.0)
    assert utilisation.peak == pytest.approx(0.75)
    assert utilisation.run_mean(4.0) == pytest.approx(1.5 * 2 / (4 * 4) * 4 / 2)


def test_fairness_reports_starved_clients_and_jain_index() -> None:
    assert fairness([5, 5, 5, 5])["jain_index"] == 1.0
    uneven = fairness([10, 0, 0, 0])
    assert uneven["starved_share"] == 0.75
    assert uneven["jain_index"] == 0.25  # one client got everything: 1/n
    assert (uneven["min"], uneven["max"]) == (0, 10)


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


def _scenario(tmp_path: Path, body: str) -> str:
    return str(write_scenarios(tmp_path, body.replace("\n        ", "\n")))


def test_use_time_of_a_fixed_hold_is_the_hold(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = _scenario(
        tmp_path,
        """
        [scenarios.fixed]
        clients = 2
        iterations = 10
        pool = { pool_size = 2, max_overflow = 0 }
        workload = { hold = "200ms" }
        """,
    )
    events = run_events(loadsim, "fixed", "--file", file, "--database-url", database_url, "-q")
    use = events[-1]["summary"]["use_time_ms"]
    assert use["count"] == 20
    # pg_sleep(0.2) never returns early; on top come BEGIN and the ROLLBACK at checkin, two
    # loopback round trips of well under a millisecond each, and scheduling on a shared
    # machine: a few ms. HDR's 3 significant digits add at most 0.1%.
    assert 200 <= use["p50"] <= 206
    released = [event["held_ms"] for event in by_name(events, "client.released")]
    assert min(released) >= 200


def test_wait_time_and_throughput_follow_littles_law(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    """Ten clients, five connections, 100 ms holds, no think time: at any moment five clients
    hold and five wait, so a wait lasts about one hold and the pool completes pool_size / hold
    = 50 checkouts a second."""
    file = _scenario(
        tmp_path,
        """
        [scenarios.queue]
        clients = 10
        duration = "5s"
        pool = { pool_size = 5, max_overflow = 0 }
        workload = { hold = "100ms", think = "0s" }
        """,
    )
    summary = run_events(loadsim, "queue", "--file", file, "--database-url", database_url, "-q")[
        -1
    ]["summary"]
    # Each checkout costs a little beyond its hold (BEGIN/ROLLBACK round trips, handing the
    # connection to the next waiter, event emission: ~1-3 ms on this kind of machine), so
    # throughput sits a few percent under 50/s; 15% leaves room for a noisy shared machine.
    assert summary["checkouts_per_s"] == pytest.approx(50, rel=0.15)
    # Little's law: 5 waiting / 50 per second = 100 ms. The pool is not FIFO, so single waits
    # spread widely, but the mean holds; the first and last cycles (no queue yet / draining)
    # pull it down slightly.
    assert summary["wait_time_ms"]["mean"] == pytest.approx(100, rel=0.2)
    assert summary["utilisation_mean"] > 0.9


def test_server_side_counts_equal_the_pools(loadsim: RunLoadsim, database_url: str) -> None:
    events = run_events(loadsim, "normal", "--duration", "4s", "--database-url", database_url)
    stats = [event for event in by_name(events, "monitor.stats") if event["t"] > 1.0]
    assert len(stats) >= 2
    for snapshot in stats:
        assert snapshot["server"] is not None
        assert sum(snapshot["server"].values()) == snapshot["connections_total"]
    assert not [e for e in by_name(events, "monitor.alert") if e["kind"] == "server_disagrees"]


def test_monitor_stats_carry_rates_and_percentiles(loadsim: RunLoadsim, database_url: str) -> None:
    events = run_events(
        loadsim, "saturation", "--duration", "3s", "--database-url", database_url, "-q"
    )
    stats = by_name(events, "monitor.stats")
    assert len(stats) >= 2
    first = stats[0]
    assert first["interval_s"] == pytest.approx(1.0, abs=0.2)
    assert first["window"]["checkouts"] == first["wait_time_ms"]["count"]
    assert first["checkouts_per_s"] > 0
    for key in ("p50", "p90", "p95", "p99", "p99_9", "max"):
        assert key in first["wait_time_ms"]
    assert 0 < first["utilisation"] <= 1
    acquired = by_name(events, "client.acquired")
    assert stats[-1]["totals"]["checkouts"] <= len(acquired)
    assert events[-1]["summary"]["checkouts"] == len(acquired)


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
    assert "threshold failed in exhaustion: timeouts == 0" in result.stderr
    events = parse_events(result.stdout)
    verdicts = {event["threshold"]: event["passed"] for event in by_name(events, "run.threshold")}
    assert verdicts == {"timeouts == 0": False, "checkouts > 0": True}
    assert events[-1]["event"] == "run.end"
    assert any(event["kind"] == "saturated" for event in by_name(events, "monitor.alert"))


def test_thresholds_from_the_scenario_file_pass(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = _scenario(
        tmp_path,
        """
        [scenarios.calm]
        clients = 2
        iterations = 5
        thresholds = ["timeouts == 0", "wait_time_p95_ms < 1000", "leaks == 0"]
        workload = { hold = "10ms" }
        """,
    )
    result = loadsim("run", "calm", "--file", file, "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    summary = parse_events(result.stdout)[-1]["summary"]
    assert [verdict["passed"] for verdict in summary["thresholds"]] == [True, True, True]


# ------------------------------------------------------------------- for people


def test_dashboard_renders_the_pool() -> None:
    snapshot = DashboardSnapshot(
        scenario="saturation",
        elapsed_s=2.5,
        duration_s=10.0,
        pool_size=5,
        capacity=7,
        used=7,
        idle=0,
        overflow=2,
        waiting=3,
        oldest_wait_ms=42.0,
        checkouts=123,
        timeouts=1,
        errors=0,
        leaks=0,
        stats={
            "checkouts_per_s": 61.0,
            "wait_time_ms": {"p50": 6.5, "p95": 80.0, "p99": 91.0, "max": 95.0},
            "use_time_ms": {"p50": 101.0, "p95": 105.0, "p99": 108.0, "max": 110.0},
            "server": {"active": 7},
        },
    )
    console = Console(record=True, width=100, file=io.StringIO(), color_system=None)
    console.print(render(snapshot))
    screen = console.export_text()
    assert "loadsim · saturation" in screen
    assert "2.5s / 10s" in screen
    for line, numbers in (("in use", "7 / 7"), ("overflow", "2 / 2"), ("waiting", "3 / 7")):
        assert any(line in row and numbers in row for row in screen.splitlines()), screen
    assert "42 ms" in screen
    assert any("wait ms" in row and "80.0" in row and "91.0" in row for row in screen.splitlines())
    assert "timeouts 1" in screen
    assert "server sessions active 7" in screen


def test_dashboard_on_a_terminal_and_only_json_on_stdout(database_url: str, tmp_path: Path) -> None:
    """As a person sees it: stderr is a terminal (a pseudo-terminal here), stdout a pipe."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadsim",
            "run",
            "saturation",
            "--duration",
            "3s",
            "--database-url",
            database_url,
        ],
        stdout=subprocess.PIPE,
        stderr=terminal,
        stdin=subprocess.DEVNULL,
        env=clean_environment(COLUMNS="100", LINES="40", TERM="xterm-256color"),
        cwd=tmp_path,
    )
    os.close(terminal)
    screen = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the other side closed
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read_terminal)
    reader.start()
    stdout, _ = process.communicate(timeout=60)
    reader.join(timeout=10)
    os.close(controller)
    assert process.returncode == 0
    text = screen.decode(errors="replace")
    assert "loadsim · saturation" in text  # the live panel was drawn
    assert "in use" in text and "waiting" in text
    assert "checkouts per connect" in text  # the summary table stays at the end
    for line in stdout.decode().splitlines():
        json.loads(line)  # stdout is the event stream and nothing else


def test_console_format_colours_events_by_kind() -> None:
    render_line = ConsoleLines(colours=True)
    timeout = render_line(None, "info", {"event": "client.timeout", "t": 1.0, "client": 3})
    checkout = render_line(None, "info", {"event": "pool.checkout", "t": 1.0, "conn": 1})
    assert "\x1b[1;31m" in timeout and "client=3" in timeout
    assert "\x1b[36m" in checkout and "conn=1" in checkout
    plain = ConsoleLines(colours=False)(None, "info", {"event": "client.timeout", "t": 1.0})
    assert "\x1b[" not in plain
