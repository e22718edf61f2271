"""Memory growth from overflow: `memory-growth` (pool 5 + overflow 45) beside
`memory-growth-capped` (overflow 5), both run by name on the real server, and what loadsim
says of memory (loadsim/run/server_memory.py, `monitor.stats`, `run.end`, the report's chart).

The figures are checked against truths of their own: the kernel's per-mapping accounting
(`/proc/<pid>/smaps`, summed by the test, against the module's `smaps_rollup`) for backends
the test opens itself, the events of the run (connects, waits, each snapshot's own counts),
and, where memory cannot be read, a null with its reason, never a 0.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from loadsim.report import build_report
from loadsim.run import server_memory
from loadsim.run.database import asyncpg_arguments
from loadsim.run.server_memory import MemorySampler, backend_on_this_host, measure_backends
from tests.helpers import Event, RecordedLogs, by_name, charts_of, parse_events, run_loadsim

pytestmark = pytest.mark.usefixtures("no_stray_reports")

SCENARIOS = ("memory-growth", "memory-growth-capped")


@dataclass(frozen=True)
class MemoryRuns:
    events: dict[str, list[Event]]  # by scenario
    log: Path  # the --output of both


@pytest.fixture(scope="module")
def runs(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> MemoryRuns:
    """Both scenarios, by name, in one invocation (3 s each), their stream kept as a log."""
    directory = tmp_path_factory.mktemp("memory")
    log = directory / "memory.jsonl"
    result = run_loadsim(
        "run",
        *SCENARIOS,
        "--duration",
        "3s",
        "--database-url",
        database_url,
        "--output",
        str(log),
        "-q",
        cwd=directory,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    events: dict[str, list[Event]] = {name: [] for name in SCENARIOS}
    for event in parse_events(result.stdout):
        events[event["scenario"]].append(event)
    return MemoryRuns(events, log)


def _summary(events: list[Event]) -> dict[str, Any]:
    (end,) = by_name(events, "run.end")
    summary: dict[str, Any] = end["summary"]
    return summary


def _measured_snapshots(events: list[Event]) -> list[Event]:
    return [e for e in by_name(events, "monitor.stats") if e["server_memory_mb"] is not None]


def _pss_from_smaps(pid: int) -> int:
    """A process's Pss in KiB the long way: every mapping's Pss line of /proc/<pid>/smaps,
    added up (the module reads the kernel's own rollup, smaps_rollup)."""
    with open(f"/proc/{pid}/smaps", "rb") as smaps:
        return sum(int(line.split()[1]) for line in smaps if line.startswith(b"Pss:"))


async def _connect(database_url: str) -> Any:
    """A plain asyncpg connection to the test server: a backend of the test's own."""
    return await asyncpg.connect(**asyncpg_arguments(make_url(database_url)))


def _a_pid_that_does_not_exist() -> int:
    """Pids are below pid_max: pid_max itself is never a process."""
    return int(Path("/proc/sys/kernel/pid_max").read_text())


# ---------------------------------------------------------------------- the lesson


def test_both_runs_measure_their_backends_on_this_host(runs: MemoryRuns) -> None:
    """The server (embedded, or the machine's at 127.0.0.1) is on this host: run.start says
    so once, and every snapshot with connections open measures memory above zero."""
    for name in SCENARIOS:
        (start,) = by_name(runs.events[name], "run.start")
        assert start["server_memory"]["measured"] is True, start["server_memory"]
        assert start["server_memory"]["reason"] is None
        snapshots = _measured_snapshots(runs.events[name])
        assert snapshots, name
        with_connections = [s for s in snapshots if s["server_memory_backends"] > 0]
        assert with_connections, name
        for snapshot in with_connections:
            assert snapshot["server_memory_mb"] > 0
            assert snapshot["server_memory_per_connection_mb"] > 0
            assert snapshot["client_memory_mb"] > 0
        summary = _summary(runs.events[name])
        assert summary["server_memory_per_connection_mb"] > 0
        assert summary["client_memory_peak_mb"] > 0


def test_more_overflow_a_higher_peak_and_more_connects_capped_waits_instead(
    runs: MemoryRuns,
) -> None:
    growth, capped = runs.events["memory-growth"], runs.events["memory-growth-capped"]
    # the peak: the summary's, and the highest snapshot of the stream, which it must be
    peaks = {}
    for name, events in runs.events.items():
        summary = _summary(events)
        highest = max(s["server_memory_mb"] for s in _measured_snapshots(events))
        assert summary["server_memory_peak_mb"] == highest, name
        peaks[name] = highest
    assert peaks["memory-growth"] > peaks["memory-growth-capped"]
    # connect churn, counted from the pool's own events: overflow closed on return, opened
    # again at the next burst; the capped pool opens its ten and keeps them (nearly: its
    # clients fall out of step, and a return finds five idle now and then)
    connects = {name: len(by_name(events, "pool.connect")) for name, events in runs.events.items()}
    assert connects["memory-growth"] > connects["memory-growth-capped"]
    overflow_closes = [e for e in by_name(growth, "pool.close") if e["cause"] == "overflow"]
    assert overflow_closes
    assert max(e["connections_total"] for e in by_name(capped, "pool.connect")) <= 10
    # ... and the capped clients wait instead: their longest wait, from client.acquired
    waits = {
        name: max(e["wait_ms"] for e in by_name(events, "client.acquired"))
        for name, events in runs.events.items()
    }
    assert waits["memory-growth-capped"] > waits["memory-growth"]


def test_each_snapshot_adds_up(runs: MemoryRuns) -> None:
    """Per connection times backends measured is the total; the backends measured are the pool's
    open connections (fewer only when one ended while being read); the summary's figure per
    connection is the snapshots' memory over their backends."""
    for name, events in runs.events.items():
        memory, backends = 0.0, 0
        for snapshot in _measured_snapshots(events):
            measured = snapshot["server_memory_backends"]
            assert 0 <= measured <= snapshot["connections_total"]
            if measured:
                product = snapshot["server_memory_per_connection_mb"] * measured
                assert math.isclose(product, snapshot["server_memory_mb"], abs_tol=0.001 * measured)
            memory += snapshot["server_memory_mb"]
            backends += measured
        summary = _summary(events)
        assert math.isclose(
            summary["server_memory_per_connection_mb"], memory / backends, abs_tol=0.001
        ), name


# ------------------------------------------------------------- against the kernel


async def test_backends_memory_is_the_kernels_pss_of_those_processes(database_url: str) -> None:
    """Three idle backends of our own: the module's total is what the test adds up from each
    one's /proc/<pid>/smaps, and less than their RSS (which counts shared pages in full)."""
    connections = [await _connect(database_url) for _ in range(3)]
    try:
        pids = [connection.get_server_pid() for connection in connections]
        for connection in connections:
            await connection.fetchval("SELECT 1")
        measured = measure_backends(pids)
        truth_kib = sum(_pss_from_smaps(pid) for pid in pids)
        rss_kib = 0
        for pid in pids:
            status = Path(f"/proc/{pid}/status").read_text()
            rss_kib += int(
                next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]
            )
    finally:
        for connection in connections:
            await connection.close()
    assert measured.backends == 3 and measured.reason is None
    assert measured.total_mb is not None and measured.per_connection_mb is not None
    assert math.isclose(measured.total_mb, truth_kib / 1024, rel_tol=0.05)
    assert math.isclose(measured.per_connection_mb * 3, measured.total_mb, abs_tol=0.003)
    assert measured.total_mb < rss_kib / 1024


def test_client_memory_is_this_processs_pss() -> None:
    client = server_memory.client_memory_mb()
    assert client is not None
    assert math.isclose(client, _pss_from_smaps(os.getpid()) / 1024, rel_tol=0.05)


async def test_the_server_is_located_by_its_backend_and_its_start(database_url: str) -> None:
    """The test's own backend is found here; the same pid with another start time is another
    server's backend; a pid that does not exist is a server elsewhere. Each 'no' says why."""
    connection = await _connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT pg_backend_pid() AS pid,"
            " extract(epoch FROM pg_postmaster_start_time())::float8 AS started"
        )
        assert await server_memory.locate_server(connection) is None
    finally:
        await connection.close()
    # (the backend has ended now: check identity with one still open)
    keeper = await _connect(database_url)
    try:
        pid = keeper.get_server_pid()
        assert backend_on_this_host(pid, row["started"]) is None
        elsewhere = backend_on_this_host(pid, row["started"] - 3600)
        assert elsewhere is not None and "another PostgreSQL" in elsewhere
    finally:
        await keeper.close()
    missing = _a_pid_that_does_not_exist()
    reason = backend_on_this_host(missing, time.time())
    assert reason is not None and "not on this host" in reason and str(missing) in reason
    not_postgres = backend_on_this_host(os.getpid(), time.time())
    assert not_postgres is not None and "not a PostgreSQL backend" in not_postgres


# -------------------------------------------------------------- where it cannot be read


async def test_memory_that_cannot_be_read_is_null_with_a_reason_never_zero() -> None:
    missing = _a_pid_that_does_not_exist()
    measured = measure_backends([missing])
    assert measured.total_mb is None and measured.per_connection_mb is None
    assert measured.backends == 0
    assert measured.reason is not None and str(missing) in measured.reason
    # a server elsewhere: null figures throughout, the reason once (run.start), and
    # loadsim's own memory measured all the same
    reason = backend_on_this_host(missing, time.time())
    sampler = MemorySampler(reason)
    assert sampler.described() == {"measured": False, "method": None, "reason": reason}
    fields = await sampler.sample([missing])
    assert fields["server_memory_mb"] is None
    assert fields["server_memory_per_connection_mb"] is None
    assert fields["client_memory_mb"] is not None and fields["client_memory_mb"] > 0
    summary = sampler.summary()
    assert summary["server_memory_peak_mb"] is None
    assert summary["server_memory_per_connection_mb"] is None
    # no backend open at all is 0 MiB (a truth, not a guess), with no figure per connection
    assert measure_backends([]).total_mb == 0.0
    assert measure_backends([]).per_connection_mb is None


# ------------------------------------------------------------------------ the report


def test_the_report_draws_memory_from_a_log_that_has_it(
    runs: MemoryRuns, tmp_path: Path, recorded: RecordedLogs
) -> None:
    report = build_report([runs.log], tmp_path / "memory-report")
    for name in SCENARIOS:
        chart = charts_of(report, name)["memory"]
        snapshots = _measured_snapshots(runs.events[name])
        assert chart["server_measured"] and chart["panels"] == 2
        assert chart["server_total_mb"] == [s["server_memory_mb"] for s in snapshots]
        assert chart["server_peak_mb"] == _summary(runs.events[name])["server_memory_peak_mb"]
        assert (tmp_path / "memory-report" / f"{name}-memory.png").stat().st_size > 0
    # the checked-in saturation log without its memory figures (as a log from a server
    # elsewhere, or of schema version 4, has them): no memory chart at all
    with_memory = build_report([recorded.saturation], tmp_path / "with-memory")
    without = tmp_path / "without-memory.jsonl"
    without.write_text(
        "".join(
            json.dumps({k: v for k, v in event.items() if "memory" not in k}) + "\n"
            for event in parse_events(recorded.saturation.read_text())
        )
    )
    report = build_report([without], tmp_path / "without-memory")
    for scenario in ("saturation", "exhaustion"):
        assert "memory" in charts_of(with_memory, scenario)
        assert "memory" not in charts_of(report, scenario)
