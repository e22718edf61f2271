"""The embedded PostgreSQL that `loadsim run` starts when no server is named: started for the
run, private to it, stopped and deleted after it, and cleaned up after a run that crashed."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.helpers import (
    assert_server_gone,
    embedded_server_processes,
    first_line,
    parse_events,
    run_loadsim,
    server_directories_of,
    start_loadsim,
    wait_for_start,
)


def test_embedded_server_is_started_and_stopped(tmp_path: Path) -> None:
    # the ramp-up keeps the run (and its server) going for 1.3 s after run.start: long enough
    # to find the server's processes on a busy machine (9 checkouts alone take 0.2 s)
    process = start_loadsim("run", "normal", "--iterations", "3", "--ramp-up", "2s", cwd=tmp_path)
    first = first_line(process)
    (directory,) = server_directories_of(process.pid)
    assert any(str(directory) in line for line in embedded_server_processes())
    rest, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    events = parse_events(first + rest)
    assert events[0]["database"] == "embedded"
    assert events[0]["server_version"].startswith("18")
    assert events[-1]["summary"]["checkouts"] == 9
    assert_server_gone(directory)


def test_a_crashed_runs_server_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    process = start_loadsim("run", "normal", "--duration", "60s", "-q", cwd=tmp_path)
    wait_for_start(process)
    (directory,) = server_directories_of(process.pid)
    process.send_signal(signal.SIGKILL)  # no chance to clean up
    process.communicate(timeout=30)
    assert any(str(directory) in line for line in embedded_server_processes())

    result = run_loadsim("run", "normal", "--iterations", "1", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "abandoned by an earlier run" in result.stderr
    assert_server_gone(directory)


def test_the_embedded_server_listens_only_on_a_private_socket(tmp_path: Path) -> None:
    process = start_loadsim("run", "normal", "--duration", "30s", "-q", cwd=tmp_path)
    try:
        wait_for_start(process)
        (directory,) = server_directories_of(process.pid)
        (command,) = [
            line
            for line in embedded_server_processes()
            if f"-D {directory}/data" in line and "postgres -D" in line
        ]
        assert "listen_addresses=" in command and "listen_addresses=*" not in command
        assert f"unix_socket_directories={directory} " in command
        assert directory.stat().st_mode & 0o077 == 0  # only its owner can even look inside
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
