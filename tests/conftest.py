"""Test fixtures: a real PostgreSQL for the whole session, and a way to run the real command.

The server is the embedded one (started once for the session) unless LOADSIM_TEST_DATABASE_URL
names another, e.g. postgresql://postgres@127.0.0.1:5432/test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loadsim.config.settings import ENVIRONMENT_VARIABLES
from loadsim.run.database import EmbeddedPostgres
from loadsim.schema import event_problems

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A URL of a real PostgreSQL server for the tests."""
    external = os.environ.get("LOADSIM_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with EmbeddedPostgres(max_connections=300) as server:
        yield server.url.render_as_string(hide_password=False)


def clean_environment(**extra: str) -> dict[str, str]:
    """The process environment without any variable loadsim reads, plus `extra`."""
    environment = {
        key: value for key, value in os.environ.items() if key not in ENVIRONMENT_VARIABLES
    }
    environment.update(extra)
    return environment


RunLoadsim = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def loadsim(tmp_path: Path) -> RunLoadsim:
    """Runs `python -m loadsim ARGS` as a subprocess in an empty directory (no stray .env)."""

    def run(
        *arguments: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loadsim", *arguments],
            capture_output=True,
            text=True,
            env=clean_environment(**(env or {})),
            cwd=cwd or tmp_path,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    return run


def parse_events(stdout: str) -> list[dict[str, Any]]:
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


def write_scenarios(directory: Path, text: str, name: str = "scenarios.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path
