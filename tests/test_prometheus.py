"""A real Prometheus server (Debian's `prometheus`, tests/components.py) scrapes a real run's
`--metrics-port` every second; what it stored, read back through its HTTP API, is what the
run's own log says: each scrape one of its moments (the start, a `monitor.stats`, the
`run.end`), the pool filling past pool_size with clients queueing, then drained."""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadsim.run.live_metrics import BUCKETS_S
from tests.components import debian_program
from tests.helpers import (
    LIVE_FIGURES,
    REPOSITORY,
    free_port,
    live_figures,
    parse_events,
    published_moments,
    run_loadsim,
)

BOARD = REPOSITORY / "docker" / "grafana" / "dashboards" / "loadsim.json"
#: Prometheus's start, at most (a fresh TSDB, on a busy machine).
READY_TIMEOUT_S = 30


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A Prometheus server scraping 127.0.0.1:PORT every second: its API URL, and PORT."""
    program = debian_program("prometheus", "prometheus")
    target, web = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
        "scrape_configs:\n  - job_name: loadsim\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{target}']\n",
        encoding="utf-8",
    )
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            program,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(url):
            assert server.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.2)
        yield url, target
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def scrape_health(url: str) -> str:
    """Prometheus's own account of its scrapes of loadsim: which failed, and how long each
    took (for a failure's message)."""
    answers = {
        name: [
            value
            for series in query(url, f'{name}{{job="loadsim"}}[5m]')
            for value in series["values"]
        ]
        for name in ("up", "scrape_duration_seconds")
    }
    return "; ".join(
        f"{name}: " + ", ".join(f"{float(value):.3g}" for _, value in values)
        for name, values in answers.items()
    )


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """An instant query through Prometheus's HTTP API."""
    address = f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(address, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def test_prometheus_sees_the_pool_fill_and_drain(
    prometheus: tuple[str, int], tmp_path: Path, database_url: str
) -> None:
    url, port = prometheus
    # saturation, then normal in the same process: /metrics still serves saturation's pool as
    # run.end left it while normal runs, so Prometheus scrapes it drained. (8 s each: on a
    # machine busy with other tests, some scrapes miss their 900 ms timeout.)
    result = run_loadsim(
        *("run", "saturation", "normal", "--duration", "8s", "--clients", "14", "-q"),
        *("--metrics-port", str(port), "--database-url", database_url),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    events = parse_events(result.stdout)
    run_id = events[0]["run_id"]
    time.sleep(1.5)  # the last scrape, written
    # Every raw sample Prometheus stored for this run, by scrape (one timestamp per scrape).
    scrapes: dict[float, dict[tuple[str, frozenset[tuple[str, str]]], float]] = defaultdict(dict)
    names = "|".join(sorted({name for name, _ in LIVE_FIGURES}))
    for series in query(url, f'{{__name__=~"{names}",run_id="{run_id}"}}[5m]'):
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        assert labels.pop("job") == "loadsim"
        assert labels.pop("instance") == f"127.0.0.1:{port}"
        for timestamp, value in series["values"]:
            scrapes[timestamp][(name, frozenset(labels.items()))] = float(value)
    health = scrape_health(url)
    assert len(scrapes) >= 4, f"Prometheus scraped the run {len(scrapes)} times; {health}"

    for scenario in ("saturation", "normal"):
        moments = published_moments(events, scenario)
        seen = []
        for timestamp in sorted(scrapes):
            figures = live_figures(scrapes[timestamp], f"{scenario}/0")
            if not figures:
                continue  # this scenario had not started
            same = [moment for moment in moments if moment.figures == figures]
            assert same, f"{scenario} at {timestamp}: {figures} is no moment of the run's log"
            seen.append(figures)
        assert seen, f"Prometheus never saw {scenario}"
        if scenario == "saturation":
            peak = max(range(len(seen)), key=lambda index: seen[index]["used"])
            assert seen[peak]["used"] > 5, seen  # pool_size 5 + overflow in use
            assert seen[peak]["overflow"] == seen[peak]["used"] - 5
            assert any(figures["pending"] > 0 for figures in seen), (seen, health)  # a queue
            drained = seen[-1]
            assert drained == moments[-1].figures  # run.end's pool and totals
            assert drained["used"] == drained["pending"] == drained["overflow"] == 0
            assert drained["idle"] == 5  # back to pool_size: the overflow was closed
            assert peak < len(seen) - 1
    # Prometheus's own p99 of the run's wait buckets lies in the bucket that holds the wait
    # of that rank among the waits the events report (Prometheus interpolates within it).
    (answer,) = query(
        url,
        "histogram_quantile(0.99, max_over_time(db_client_connection_wait_time_seconds_bucket"
        f'{{run_id="{run_id}",scenario="saturation"}}[5m]))',
    )
    waits = sorted(
        event["wait_ms"] / 1000
        for event in events
        if event["scenario"] == "saturation"
        and event["event"] in ("client.acquired", "client.timeout")
        and "wait_ms" in event
    )
    wait = waits[math.ceil(0.99 * len(waits)) - 1]
    lower = max((bound for bound in BUCKETS_S if bound < wait / 1.001), default=0.0)
    upper = min(bound for bound in BUCKETS_S if bound >= wait * 1.001)  # (3 digits)
    assert lower <= float(answer["value"][1]) <= upper, (answer["value"], wait)
    # The Grafana board's queries are PromQL this Prometheus accepts, and show this run.
    board = json.loads(BOARD.read_text(encoding="utf-8"))
    shown = 0
    for panel in board["panels"]:
        for target in panel["targets"]:
            expression = (
                target["expr"]
                .replace("$__rate_interval", "5m")
                .replace("$run_id", run_id)
                .replace("$pool_name", ".*")
            )
            shown += bool(query(url, expression))  # query() fails on a PromQL error
    assert shown >= len(board["panels"])  # most queries have data (errors and leaks: none)
