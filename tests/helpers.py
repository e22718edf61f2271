"""What the tests share: plain functions, classes and constants. Fixtures live in conftest.py.

Running the real command, as a subprocess, in a clean environment (no variable loadsim reads):

- `run_loadsim(*arguments, cwd=...)`: a finished run (the `loadsim` fixture is this, in the
  test's own temporary directory); `run_events(loadsim, ...)`: `loadsim run ...`'s events.
- `start_loadsim(*arguments, cwd=...)`: a running process, to signal, read or kill;
  `wait_for_start(process)` reads up to its first event, run.start.

Reading what it wrote: `parse_events` (every line JSON, every event as schema.py declares it),
`by_name`. The server: `sessions_left`, and the embedded servers loadsim starts
(`server_directories_of`, `embedded_server_processes`, `assert_server_gone`).

In process: `CapturingSink`, the events an `EventLog` emits kept as dicts, for tests of the
pool monitor and the clients against a real engine (the `monitored` fixture gives both).

Recorded logs for the report tests: `RECORDED_RUNS` (what `tests/data/record.py` records),
`unpack_recorded_logs` (the `recorded` fixture), and reading them: `events_of`, `first_lines`,
`with_pool_counts`, `charts_of` (a report's chart data).

Live metrics: `free_port`; `metrics_text`, `parse_metrics`, `scrape` and `scrape_while_running`
(a run's `/metrics`, read with prometheus-client's parser); `published_moments` (what a scrape
may show, from the run's own events) and `live_figures` (the same figures from a scrape).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from loadsim.config.settings import ENVIRONMENT_VARIABLES
from loadsim.run.database import asyncpg_arguments
from loadsim.run.events import EventHandover, EventLog, EventSink
from loadsim.schema import event_problems

if TYPE_CHECKING:
    from loadsim.report import Report
    from loadsim.run.monitor import PoolMonitor

REPOSITORY = Path(__file__).resolve().parent.parent
#: Logs recorded by `tests/data/record.py`, for the report tests.
DATA = Path(__file__).resolve().parent / "data"

Event = dict[str, Any]


# ---------------------------------------------------------------- running loadsim


def clean_environment(**extra: str) -> dict[str, str]:
    """The process environment without any variable loadsim reads, plus `extra`."""
    environment = {
        key: value for key, value in os.environ.items() if key not in ENVIRONMENT_VARIABLES
    }
    environment.update(extra)
    return environment


def loadsim_command(*arguments: str) -> list[str]:
    """`python -m loadsim ARGS`, with this interpreter."""
    return [sys.executable, "-m", "loadsim", *arguments]


def run_loadsim(
    *arguments: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs `loadsim ARGS` to the end in `cwd` (a directory of the test's own: no stray
    .env), in a clean environment plus `env`; `stdin` is what it reads (nothing otherwise).
    Its output comes back as text."""
    completed = subprocess.run(
        loadsim_command(*arguments),
        capture_output=True,
        env=clean_environment(**(env or {})),
        cwd=cwd,
        timeout=timeout,
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
    )
    return subprocess.CompletedProcess(
        completed.args, completed.returncode, _text(completed.stdout), _text(completed.stderr)
    )


def _text(output: bytes) -> str:
    """Output as text mode would read it: UTF-8, universal newlines."""
    return output.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


#: The `loadsim` fixture: `run_loadsim` in the test's temporary directory (`cwd` to change it).
RunLoadsim = Callable[..., subprocess.CompletedProcess[str]]


def start_loadsim(
    *arguments: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stderr: Any = subprocess.PIPE,
    text: bool = True,
    **options: Any,
) -> subprocess.Popen[Any]:
    """Starts `loadsim ARGS` in `cwd`, in a clean environment plus `env`, and leaves it
    running: stdout (and stderr, unless given) are pipes, stdin reads nothing. `options` go
    to `subprocess.Popen` (`start_new_session`, ...)."""
    return subprocess.Popen(
        loadsim_command(*arguments),
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        text=text,
        env=clean_environment(**(env or {})),
        cwd=cwd,
        **options,
    )


def first_line(process: subprocess.Popen[str]) -> str:
    """The first line of a running process's stdout, read without reading past it, so that
    `communicate()` later returns everything after it (a buffered `readline()` may take
    more of the stream than one line, and `communicate()` would never see that part)."""
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(process.stdout.fileno(), 1)
        if not byte:
            break
        line += byte
    return line.decode()


def wait_for_start(process: subprocess.Popen[str]) -> str:
    """Reads up to the first event, run.start: by then the server is up and clients go."""
    first = first_line(process)
    assert json.loads(first)["event"] == "run.start", first
    return first


def run_events(loadsim: RunLoadsim, *arguments: str, **options: Any) -> list[Event]:
    """The events of `loadsim run ARGS`, which must succeed without a traceback."""
    result = loadsim("run", *arguments, **options)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return parse_events(result.stdout)


def write_scenarios(directory: Path, text: str, name: str = "scenarios.toml") -> Path:
    """Writes a scenario file into `directory`; `text` may be indented as the test is (its
    common indentation is removed)."""
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ------------------------------------------------------------------ reading events


def parse_events(stdout: str) -> list[Event]:
    """Every line of a run's stdout as JSON; fails the test on any line that is not, or that
    is not an event as `loadsim/schema.py` declares it (an unknown name, a field it does not
    declare, a declared field missing or of another type)."""
    events = []
    for number, line in enumerate(stdout.splitlines(), start=1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"stdout line {number} is not JSON: {line[:200]!r}")
        problems = event_problems(event)
        if problems:
            pytest.fail(
                f"stdout line {number} does not match loadsim/schema.py: {'; '.join(problems)}"
            )
        events.append(event)
    return events


def by_name(events: list[Event], name: str) -> list[Event]:
    return [event for event in events if event["event"] == name]


# ---------------------------------------------------------------------- the server


def sessions_left(database_url: str, run_id: str) -> int:
    """Sessions of the run `run_id` (any instance) still on the server, waiting up to two
    seconds for backends whose clients have just disconnected to finish exiting."""

    async def count() -> int:
        connection = await asyncpg.connect(**asyncpg_arguments(make_url(database_url)))
        try:
            for _ in range(20):
                left: int = await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                    " OR application_name LIKE $2",
                    f"loadsim:{run_id}",
                    f"loadsim:{run_id}/%",
                )
                if left == 0:
                    break
                await asyncio.sleep(0.1)
            return left
        finally:
            await connection.close()

    return asyncio.run(count())


def embedded_server_processes() -> list[str]:
    """Command lines of every embedded PostgreSQL process loadsim started on this machine."""
    listing = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if "loadsim-pg-" in line]


def server_directories_of(pid: int) -> list[Path]:
    """The embedded servers' directories that the loadsim process `pid` owns."""
    found = []
    for directory in Path(tempfile.gettempdir()).glob("loadsim-pg-*"):
        try:
            if (directory / "owner.pid").read_text() == str(pid):
                found.append(directory)
        except OSError:
            continue
    return found


def assert_server_gone(directory: Path) -> None:
    """The embedded server that lived in `directory` is stopped and its files deleted."""
    assert not directory.exists(), f"{directory} is still there"
    assert not [line for line in embedded_server_processes() if str(directory) in line]


# ------------------------------------------------------------------------ in process


class CapturingSink(EventSink):
    """A sink for an `EventLog` that keeps every event it is handed as a dict, unrendered:
    `{"t": seconds since the log started, "event": name, **envelope, **fields}`.

    Each event is checked against `loadsim/schema.py`, as `parse_events` checks a stream.
    For tests that drive the run side in this process (a `PoolMonitor` on a real engine, a
    client): `log = CapturingSink().log()`, then read `log.sink.events` or `named(...)`.
    """

    def __init__(self) -> None:
        super().__init__([])
        self.events: list[Event] = []

    def writer_for(self, log: EventLog) -> EventHandover:
        identity = log.identity
        envelope = {
            "run_id": identity.run_id,
            "scenario": identity.scenario,
            "instance": identity.instance,
        }
        events = self.events

        def hand_over(elapsed: float, event: str, fields: Mapping[str, Any]) -> None:
            captured = {"t": elapsed, "event": event, **envelope, **fields}
            problems = event_problems({"ts": "(not rendered)", **captured})
            if problems:
                pytest.fail(f"{event} does not match loadsim/schema.py: {'; '.join(problems)}")
            events.append(captured)

        return hand_over

    def named(self, name: str) -> list[Event]:
        """The events called `name`, in order."""
        return by_name(self.events, name)

    def names(self) -> list[str]:
        return [event["event"] for event in self.events]

    def log(self, *, run_id: str = "test", scenario: str = "test", **options: Any) -> EventLog:
        """An `EventLog` writing here (`options` as `EventLog` takes them: `level`, `kinds`)."""
        return EventLog(self, run_id=run_id, scenario=scenario, **options)


#: The `monitored` fixture: `monitored(PoolConfig(...))` is a new engine's attached
#: `PoolMonitor` (its engine `.engine`, its metrics `.metrics`) and the sink of its events.
Monitored = Callable[..., "tuple[PoolMonitor, CapturingSink]"]


# ------------------------------------------------------------------- recorded logs


#: A scenario file for the pooled / unpooled log: the shipped scenarios' pools and query,
#: with fixed iterations so the log stays small (>1000 pooled checkouts, >100 unpooled, as
#: the report's tests of its bar cap need) and a monitor snapshot every 100 ms of a short run.
POOLED_SCENARIOS = """\
[scenarios.pooled]
description = "Short queries through a pool of 10 connections, opened once"
clients = 20
iterations = 55
pool = { pool_size = 10, max_overflow = 0 }
workload = { query = "SELECT 1" }
monitor = { interval = "100ms" }

[scenarios.unpooled]
description = "The same short queries with NullPool: a new connection, and a new backend, for each"
clients = 20
iterations = 8
pool = { pool_class = "null" }
workload = { query = "SELECT 1" }
monitor = { interval = "100ms" }
"""


@dataclass(frozen=True)
class RecordedRun:
    """One log checked in under tests/data (as NAME.jsonl.gz), and how it is recorded."""

    name: str
    arguments: tuple[str, ...]  # of `loadsim run`
    scenario_file: str | None = None  # written as scenarios.toml, passed as --file

    def record(
        self, directory: Path, database_url: str | None = None, timeout: float = 180
    ) -> Path:
        """Runs it in `directory` (against `database_url`, or loadsim's own embedded
        server) and returns the log, NAME.jsonl."""
        arguments = list(self.arguments)
        if self.scenario_file is not None:
            file = write_scenarios(directory, self.scenario_file, name=f"{self.name}.toml")
            arguments += ["--file", str(file)]
        if database_url is not None:
            arguments += ["--database-url", database_url]
        log = directory / f"{self.name}.jsonl"
        result = run_loadsim(
            "run", *arguments, "--output", str(log), "-q", cwd=directory, timeout=timeout
        )
        assert result.returncode == 0, result.stderr
        return log


RECORDED_RUNS = (
    RecordedRun("saturation", ("saturation", "exhaustion", "--duration", "2s")),
    RecordedRun("pooled", ("pooled", "unpooled"), POOLED_SCENARIOS),
    RecordedRun("instances", ("saturation", "--instances", "2", "--duration", "2s")),
    RecordedRun("exhaustion", ("exhaustion",)),
)


@dataclass(frozen=True)
class RecordedLogs:
    """The checked-in logs, unpacked: each a JSONL file as `loadsim run --output` wrote it."""

    directory: Path
    saturation: Path  # saturation then exhaustion, 2 s each
    pooled: Path  # pooled (1100 checkouts) then unpooled (160)
    instances: Path  # saturation in two application instances, 2 s
    exhaustion: Path  # the shipped exhaustion, 10 s: the pool stalled, 5 clients waiting


def unpack_recorded_logs(directory: Path) -> RecordedLogs:
    """The logs of tests/data, decompressed into `directory`."""
    paths = {}
    for run in RECORDED_RUNS:
        packed = DATA / f"{run.name}.jsonl.gz"
        paths[run.name] = directory / f"{run.name}.jsonl"
        paths[run.name].write_bytes(gzip.decompress(packed.read_bytes()))
    return RecordedLogs(directory, **paths)


def events_of(path: Path) -> dict[str, list[Event]]:
    """The events of a log file, by scenario, each scenario's in order."""
    by_scenario: dict[str, list[Event]] = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            event = json.loads(line)
            by_scenario.setdefault(event["scenario"], []).append(event)
    return by_scenario


def with_pool_counts(events: list[Event]) -> list[Event]:
    """The events that carry the pool's counts: pool.*, client.acquired, client.timeout."""
    return [
        event
        for event in events
        if event["event"].startswith("pool.")
        or event["event"] in ("client.acquired", "client.timeout")
    ]


def first_lines(path: Path, count: int) -> list[str]:
    """The start of a log: a run cut short (no run.end), quick to draw."""
    return path.read_text(encoding="utf-8").splitlines(keepends=True)[:count]


def charts_of(report: Report, scenario: str) -> dict[str, dict[str, Any]]:
    """The data of each chart of a scenario, by kind (timeline, pool, distribution, latency)."""
    for data, charts in report.scenarios:
        if data.scenario == scenario:
            return {
                chart.name.rsplit("-", 1)[1].removesuffix(".png"): chart.data for chart in charts
            }
    raise AssertionError(f"no scenario {scenario} in the report")


def assert_user_error(
    result: subprocess.CompletedProcess[str], exit_code: int, *details: str
) -> str:
    """The command failed with `exit_code` and one clear error line holding every detail."""
    report = f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert "Traceback" not in result.stderr, report
    assert result.returncode == exit_code, report
    assert result.stdout == "", report
    lines = result.stderr.splitlines()
    assert len(lines) == 1, report
    (line,) = lines
    assert line.startswith("loadsim: error:"), report
    for detail in details:
        assert detail in line, f"{detail!r} missing from the error line\n{report}"
    return line


# ------------------------------------------------------------------- live metrics


def free_port() -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


#: A figure of the live metrics: (metric as Prometheus names it, the labels that pick it out
#: beside the pool's own) → its name in `published_moments`.
LIVE_FIGURES: Mapping[tuple[str, tuple[tuple[str, str], ...]], str] = {
    ("db_client_connection_count", (("state", "used"),)): "used",
    ("db_client_connection_count", (("state", "idle"),)): "idle",
    ("db_client_connection_pending_requests", ()): "pending",
    ("loadsim_connection_overflow", ()): "overflow",
    ("db_client_connection_timeouts_total", ()): "timeouts",
    ("loadsim_checkouts_total", ()): "checkouts",
    ("loadsim_connects_total", ()): "connects",
    ("db_client_connection_wait_time_seconds_count", ()): "wait_count",
    ("db_client_connection_use_time_seconds_count", ()): "use_count",
    ("db_client_connection_create_time_seconds_count", ()): "create_count",
}


@dataclass(frozen=True)
class Moment:
    """What the live metrics of one pool may say, from the run's own events: at its start
    (nothing yet), at each `monitor.stats`, and at its `run.end`. `position`: the event's
    index in the stream (None for the start)."""

    figures: Mapping[str, float]
    position: int | None


def published_moments(events: list[Event], scenario: str) -> list[Moment]:
    """Every moment a scrape of `scenario`'s pool may show, in the order they came."""
    moments = [Moment(dict.fromkeys(LIVE_FIGURES.values(), 0.0), None)]
    counts = {"wait_count": 0, "use_count": 0, "create_count": 0}
    for position, event in enumerate(events):
        if event["scenario"] != scenario:
            continue
        if event["event"] == "monitor.stats":
            for key, latency in (
                ("wait_count", "wait_time_ms"),
                ("use_count", "use_time_ms"),
                ("create_count", "create_time_ms"),
            ):
                counts[key] += event[latency]["count"]
            pool, totals = event, event["totals"]
        elif event["event"] == "run.end":
            summary = event["summary"]
            pool, totals = summary["pool_state"], summary
            counts = {
                key: summary[latency]["count"]
                for key, latency in (
                    ("wait_count", "wait_time_ms"),
                    ("use_count", "use_time_ms"),
                    ("create_count", "create_time_ms"),
                )
            }
        else:
            continue
        figures = {
            "used": pool["connections_used"],
            "idle": pool["connections_idle"],
            "pending": pool["pending_requests"],
            "overflow": pool["overflow"],
            "timeouts": totals["timeouts"],
            "checkouts": totals["checkouts"],
            "connects": totals["connects"],
            **counts,
        }
        moments.append(Moment({key: float(value) for key, value in figures.items()}, position))
    return moments


def live_figures(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], pool: str
) -> dict[str, float]:
    """The figures of `published_moments` in one scrape of a pool: `samples` maps (metric,
    its labels) to its value."""
    figures: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if ("pool_name", pool) not in labels:
            continue
        own = tuple(sorted(item for item in labels if item[0] in ("state", "kind")))
        key = LIVE_FIGURES.get((name, own))
        if key is not None:
            figures[key] = value
    return figures


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_text(port: int) -> str | None:
    """One scrape of http://127.0.0.1:PORT/metrics (None: nobody answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def parse_metrics(text: str) -> Samples:
    """Prometheus's text format, read by prometheus-client's own parser."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> Samples | None:
    """One scrape, parsed (None: nobody answers)."""
    text = metrics_text(port)
    return parse_metrics(text) if text is not None else None


def scrape_while_running(
    ports: list[int], *arguments: str, cwd: Path
) -> tuple[dict[int, list[str]], str]:
    """Scrapes each port every 0.2 s while `loadsim run ARGS --metrics-port PORTS[0]` runs
    (its output read meanwhile: a finished run waits for its reader); the scrapes of each
    port (their text), and its stdout."""
    process = start_loadsim("run", *arguments, "--metrics-port", str(ports[0]), "-q", cwd=cwd)
    scrapes: dict[int, list[str]] = {port: [] for port in ports}
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        output = reader.submit(process.communicate, timeout=120)
        try:
            while not output.done():
                for port in ports:
                    text = metrics_text(port)
                    if text:
                        scrapes[port].append(text)
                time.sleep(0.2)
            stdout, stderr = output.result()
        finally:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    return scrapes, stdout


def run_shards(
    database_url: str,
    directory: Path,
    count: int,
    *extra: str,
    run_id: str,
    stagger: float = 0.0,
) -> list[Path]:
    """`count` shard processes of one run of `normal` (1 s, 3 clients), each as pod I of an
    Indexed Job starts it, `stagger` seconds apart; their logs, once all have succeeded."""
    logs = [directory / f"shard{index}.jsonl" for index in range(count)]
    processes = []
    for index, log in enumerate(logs):
        if index and stagger:
            time.sleep(stagger)
        processes.append(
            subprocess.Popen(
                loadsim_command(
                    "run",
                    "normal",
                    "--duration",
                    "1s",
                    "--clients",
                    "3",
                    "--quiet",
                    "--output",
                    str(log),
                    *extra,
                ),
                cwd=directory,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=clean_environment(
                    DATABASE_URL=database_url,
                    LOADSIM_SHARDS=str(count),
                    JOB_COMPLETION_INDEX=str(index),
                    LOADSIM_RUN_ID=run_id,
                ),
            )
        )
    for process in processes:
        _, errors = process.communicate(timeout=120)
        assert process.returncode == 0, errors
    return logs
