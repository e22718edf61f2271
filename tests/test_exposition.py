"""`--metrics-port`: `/metrics` during a real run, read with prometheus-client's own parser,
against the run's own events: every scrape is one of the moments the log records (a
`monitor.stats`, the start, `run.end`), its histograms hold the waits the events report up to
that moment, and a port in use, a bad port or a bad URL are one-line errors before the run
starts. A real Prometheus server scraping a run is tests/test_prometheus.py."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest

from loadsim.run.histogram import cumulative_counts, new_histogram
from loadsim.run.live_metrics import BUCKETS_S
from tests.helpers import (
    RunLoadsim,
    Samples,
    assert_user_error,
    free_port,
    live_figures,
    parse_events,
    parse_metrics,
    published_moments,
    scrape,
    scrape_while_running,
    start_loadsim,
    wait_for_start,
)


def test_every_scrape_is_a_moment_the_run_recorded(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    # 14 clients on 7 connections: some always wait
    arguments = (
        "saturation",
        "--duration",
        "3s",
        "--clients",
        "14",
        "--database-url",
        database_url,
    )
    by_port, stdout = scrape_while_running([port], *arguments, cwd=tmp_path)
    scrapes = [parse_metrics(text) for text in by_port[port]]
    events = parse_events(stdout)  # every stdout line is still an event
    moments = published_moments(events, "saturation")
    assert len(moments) >= 4  # the start, 2+ snapshots, the end
    pool = "saturation/0"
    matched = []
    for samples in scrapes:
        figures = live_figures(samples, pool)
        assert set(figures) == set(moments[0].figures), figures
        same = [moment for moment in moments if moment.figures == figures]
        assert same, f"a scrape matches no moment of the log: {figures}"
        matched.append(same[-1])
        assert samples[("db_client_connection_max", _labels(events, pool))] == 7
        assert samples[("db_client_connection_idle_max", _labels(events, pool))] == 5
    seen = [moment.figures for moment in matched if moment.position is not None]
    assert any(figures["used"] > 5 and figures["pending"] > 0 for figures in seen)  # overflow
    assert any(figures["wait_count"] > 0 for figures in seen)
    for samples, moment in zip(scrapes, matched, strict=True):
        _check_wait_buckets(samples, moment.position, events, pool)


def _labels(events: list[dict[str, object]], pool: str) -> frozenset[tuple[str, str]]:
    run_id = str(events[0]["run_id"])
    return frozenset({("run_id", run_id), ("scenario", pool.split("/")[0]), ("pool_name", pool)})


def _check_wait_buckets(
    samples: Samples, position: int | None, events: list[dict[str, object]], pool: str
) -> None:
    """The wait histogram's buckets hold the waits the events report before that moment (a
    wait within 0.1% above a bound may count below it: 3 significant digits)."""
    waits = [
        float(event["wait_ms"])  # type: ignore[arg-type]
        for event in events[: position or 0]
        if event["event"] in ("client.acquired", "client.timeout") and "wait_ms" in event
    ]
    labels = _labels(events, pool)
    for bound in (*BUCKETS_S, "+Inf"):
        le = repr(bound) if bound != "+Inf" else "+Inf"
        got = samples[("db_client_connection_wait_time_seconds_bucket", labels | {("le", le)})]
        if bound == "+Inf":
            assert got == len(waits)
            continue
        assert isinstance(bound, float)
        at_most = sum(1 for wait in waits if wait / 1000 <= bound)
        within = sum(1 for wait in waits if wait / 1000 <= bound * 1.001 + 1e-6)
        assert at_most <= got <= within, (bound, at_most, got, within)


def test_cumulative_counts_agree_with_counting_the_values() -> None:
    values = [1, 7, 999, 1000, 1001, 4_999, 5_000, 250_000, 2_000_000, 70_000_000]
    histogram = new_histogram()
    for value in values:
        histogram.record_value(value)
    bounds = [round(bound * 1_000_000) for bound in BUCKETS_S]
    assert cumulative_counts([histogram, new_histogram()], bounds) == [
        sum(1 for value in values if value <= bound) for bound in bounds
    ]


def test_a_port_in_use_is_one_line_before_the_run_starts(
    loadsim: RunLoadsim, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = loadsim("run", "normal", "--metrics-port", str(port), "--output", "run.jsonl")
        assert_user_error(result, 2, f"--metrics-port {port}", "in use")
        result = loadsim("run", "normal", env={"LOADSIM_METRICS_PORT": str(port)})
        assert_user_error(result, 2, f"LOADSIM_METRICS_PORT={port}", "in use")
    assert not (tmp_path / "run.jsonl").exists()  # nothing started, nothing left


@pytest.mark.parametrize(
    ("arguments", "environment", "details"),
    [
        (("--metrics-port", "0"), {}, ("--metrics-port", "from 1 to 65535", "got 0")),
        (("--metrics-port", "nine"), {}, ("--metrics-port", "integer")),
        ((), {"LOADSIM_METRICS_PORT": "70000"}, ("LOADSIM_METRICS_PORT", "65535")),
        (("--otlp-endpoint", "collector:4318"), {}, ("--otlp-endpoint", "http://")),
        ((), {"LOADSIM_OTLP_ENDPOINT": "ftp://x"}, ("LOADSIM_OTLP_ENDPOINT", "ftp://x")),
    ],
)
def test_bad_settings_are_one_line(
    loadsim: RunLoadsim,
    arguments: tuple[str, ...],
    environment: dict[str, str],
    details: tuple[str, ...],
) -> None:
    assert_user_error(loadsim("run", "normal", *arguments, env=environment), 2, *details)


def test_show_says_where_the_settings_came_from(loadsim: RunLoadsim) -> None:
    environment = {"LOADSIM_METRICS_PORT": "9464", "LOADSIM_OTLP_ENDPOINT": "http://otel:4318"}
    shown = loadsim("show", "normal", env=environment).stdout
    assert re.search(r"^metrics_port +9464  \(environment\)$", shown, re.MULTILINE)
    assert re.search(
        r"^otlp_endpoint +http://otel:4318/v1/metrics  \(environment\)$", shown, re.MULTILINE
    )
    flagged = loadsim("show", "normal", "--metrics-port", "9500", env=environment).stdout
    assert re.search(r"^metrics_port +9500  \(flag\)$", flagged, re.MULTILINE)  # flag wins
    unset = loadsim("show", "normal").stdout
    assert re.search(r"^metrics_port +-  \(default\)$", unset, re.MULTILINE)
    assert re.search(r"^otlp_endpoint +-  \(default\)$", unset, re.MULTILINE)


def test_each_instance_of_a_fleet_is_a_target_of_its_own(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    while not _free(port + 1):
        port = free_port()
    arguments = ("normal", "--instances", "2", "--duration", "2s", "--database-url", database_url)
    by_port, _ = scrape_while_running([port, port + 1], *arguments, cwd=tmp_path)
    pools = {
        target: {
            value
            for samples in map(parse_metrics, scrapes)
            for _, labels in samples
            for key, value in labels
            if key == "pool_name"
        }
        for target, scrapes in by_port.items()
    }
    assert pools == {port: {"normal/0"}, port + 1: {"normal/1"}}


def test_a_fleet_checks_its_instances_ports_first(loadsim: RunLoadsim) -> None:
    for _ in range(5):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            second = taken.getsockname()[1]
            if not _free(second - 1):
                continue  # instance 0's port is taken too: another pair
            result = loadsim("run", "normal", "--instances", "2", "--metrics-port", f"{second - 1}")
            assert_user_error(result, 2, f"instance 1's port {second}", "in use")
            return
    pytest.fail("found no free port below a free port in five tries")


def _free(port: int) -> bool:
    """A server could listen on it (as servers do, past connections in TIME_WAIT)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def test_ctrl_c_stops_the_server_with_the_run(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    process = start_loadsim(
        *("run", "saturation", "--duration", "60s", "-q", "--database-url", database_url),
        *("--metrics-port", str(port)),
        cwd=tmp_path,
    )
    try:
        wait_for_start(process)
        deadline = time.monotonic() + 10
        while not (scrape(port) or {}) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert scrape(port), "no /metrics while the run goes"
        process.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        stdout, stderr = process.communicate(timeout=20)
        took = time.monotonic() - stopped
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert took < 5, f"stopping took {took:.1f} s"
    assert parse_events(stdout)[-1]["summary"]["interrupted"] is True
    assert scrape(port) is None and _free(port)  # the server is gone, the port released
