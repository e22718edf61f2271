"""The live dashboard on stderr: what it draws from a snapshot, and, on a (pseudo-)terminal in
a real run, that it is drawn there while stdout stays the event stream."""

from __future__ import annotations

import io
import json
import os
import pty
import threading
from pathlib import Path

from rich.console import Console

from loadsim.run.dashboard import DashboardSnapshot, render
from tests.helpers import start_loadsim


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
    process = start_loadsim(
        "run",
        "saturation",
        "--duration",
        "3s",
        "--database-url",
        database_url,
        stderr=terminal,
        text=False,
        env={"COLUMNS": "100", "LINES": "40", "TERM": "xterm-256color"},
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
