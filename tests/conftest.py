"""Test fixtures: a real PostgreSQL for the whole session, a way to run the real command, and
the recorded logs the report tests read. Plain helpers are in tests/helpers.py.

The server is the embedded one (started once for the session) unless LOADSIM_TEST_DATABASE_URL
names another, e.g. postgresql://postgres@127.0.0.1:5432/test.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from loadsim.config.scenario import MonitorSettings, PoolConfig
from loadsim.report import Report, build_report
from loadsim.run.database import EmbeddedPostgres
from loadsim.run.engine import create_engine, parse_database_url
from loadsim.run.metrics import RunMetrics
from loadsim.run.monitor import PoolMonitor
from tests.helpers import (
    REPOSITORY,
    CapturingSink,
    Monitored,
    RecordedLogs,
    RunLoadsim,
    run_loadsim,
    unpack_recorded_logs,
)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A URL of a real PostgreSQL server for the tests."""
    external = os.environ.get("LOADSIM_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with EmbeddedPostgres(max_connections=300) as server:
        yield server.url.render_as_string(hide_password=False)


@pytest.fixture
def loadsim(tmp_path: Path) -> RunLoadsim:
    """Runs `python -m loadsim ARGS` as a subprocess, by default in the test's empty
    temporary directory (no stray .env): `run_loadsim` with `cwd` made optional."""

    def run(
        *arguments: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run_loadsim(*arguments, cwd=cwd or tmp_path, env=env, timeout=timeout, stdin=stdin)

    return run


# ------------------------------------------------------------------------ in process


@pytest.fixture
async def monitored(database_url: str) -> AsyncIterator[Monitored]:
    """Monitored engines on the test server, made from pool settings (and monitor settings,
    and the number of clients the metrics count): each engine's `PoolMonitor`, attached, and
    the `CapturingSink` its events go to. The engines are disposed of afterwards."""
    engines: list[AsyncEngine] = []

    def make(
        pool: PoolConfig, settings: MonitorSettings | None = None, clients: int = 2
    ) -> tuple[PoolMonitor, CapturingSink]:
        engine = create_engine(
            parse_database_url(database_url), pool, f"loadsim-test:{uuid.uuid4().hex[:8]}"
        )
        engines.append(engine)
        sink = CapturingSink()
        metrics = RunMetrics(clients=clients, capacity=pool.capacity, started=time.perf_counter())
        monitor = PoolMonitor(engine, sink.log(), metrics, settings)
        monitor.attach()
        return monitor, sink

    yield make
    for engine in engines:
        await engine.dispose()


# --------------------------------------------------------------- the report's logs


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> RecordedLogs:
    """The logs checked in under tests/data (tests/data/record.py records them), unpacked."""
    return unpack_recorded_logs(tmp_path_factory.mktemp("recorded"))


@pytest.fixture(scope="session")
def saturation_report(recorded: RecordedLogs) -> Report:
    return build_report([recorded.saturation], recorded.directory / "saturation-report")


@pytest.fixture(scope="session")
def pooled_report(recorded: RecordedLogs) -> Report:
    return build_report([recorded.pooled], recorded.directory / "pooled-report")


@pytest.fixture
def no_stray_reports() -> Iterator[None]:
    """Reports are written where the test says, never in the repository."""
    yield
    assert not list(REPOSITORY.glob("*-report"))
