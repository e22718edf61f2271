"""How a run stops when it is told to: Ctrl-C (once, or twice), SIGTERM, a reader that
closes the pipe. It never loses the run's end, never leaks a server connection or an embedded
server, and never shows a traceback. Through the real command, against a real server."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import (
    assert_server_gone,
    by_name,
    parse_events,
    server_directories_of,
    sessions_left,
    start_loadsim,
    wait_for_start,
)

# --------------------------------------------------------------------- signals


def test_ctrl_c_ends_the_run_cleanly(tmp_path: Path) -> None:
    process = start_loadsim("run", "normal", "--clients", "2000", "--duration", "60s", cwd=tmp_path)
    first = wait_for_start(process)  # run.start: the server is up and clients are starting
    (directory,) = server_directories_of(process.pid)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    rest, stderr = process.communicate(timeout=30)
    assert time.monotonic() - stopped < 10
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    events = parse_events(first + rest)
    assert events[-1]["event"] == "run.end"
    assert events[-1]["summary"]["interrupted"] is True
    assert events[-1]["summary"]["signal"] == "SIGINT"
    assert_server_gone(directory)


def test_sigterm_stops_cleanly_with_exit_143(database_url: str, tmp_path: Path) -> None:
    output = tmp_path / "run.jsonl"
    process = start_loadsim(
        "run",
        "saturation",
        "--duration",
        "60s",
        "--database-url",
        database_url,
        "--output",
        str(output),
        cwd=tmp_path,
    )
    first = wait_for_start(process)
    time.sleep(1.5)
    process.send_signal(signal.SIGTERM)
    rest, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    events = parse_events(first + rest)
    assert events[-1]["event"] == "run.end"
    assert events[-1]["summary"]["signal"] == "SIGTERM"
    assert parse_events(output.read_text()) == events  # the file is complete JSON too
    assert sessions_left(database_url, events[0]["run_id"]) == 0


def test_ten_thousand_waiting_clients_stop_promptly(database_url: str, tmp_path: Path) -> None:
    """The issue asks for about two seconds; bench/ measures it. Here, on a shared machine,
    the bound is loose: what must not happen is a stop that waits for clients to finish."""
    process = start_loadsim(
        "run",
        "normal",
        "--clients",
        "10000",
        "--duration",
        "120s",
        "--database-url",
        database_url,
        "-q",
        cwd=tmp_path,
    )
    first = wait_for_start(process)
    time.sleep(3)
    process.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    rest, stderr = process.communicate(timeout=60)
    took = time.monotonic() - stopped
    assert process.returncode == 130, stderr
    assert took < 10, f"took {took:.1f}s to stop"
    events = parse_events(first + rest)
    summary = events[-1]["summary"]
    assert summary["interrupted"] is True
    assert summary["clients"] == 10000
    assert sessions_left(database_url, events[0]["run_id"]) == 0


def test_a_second_ctrl_c_exits_at_once_and_leaves_no_server(tmp_path: Path) -> None:
    process = start_loadsim(
        "run", "normal", "--clients", "3000", "--duration", "60s", "-q", cwd=tmp_path
    )
    wait_for_start(process)
    (directory,) = server_directories_of(process.pid)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert_server_gone(directory)


@pytest.mark.parametrize("signal_name", ["SIGINT"])
def test_interrupted_output_file_is_valid_json(
    database_url: str, tmp_path: Path, signal_name: str
) -> None:
    output = tmp_path / "run.jsonl"
    process = start_loadsim(
        "run",
        "exhaustion",
        "--duration",
        "60s",
        "--database-url",
        database_url,
        "--output",
        str(output),
        "-q",
        cwd=tmp_path,
    )
    wait_for_start(process)
    time.sleep(2.5)
    process.send_signal(getattr(signal, signal_name))
    process.communicate(timeout=30)
    events = parse_events(output.read_text())
    assert events[-1]["event"] == "run.end"
    assert by_name(events, "client.timeout")  # it was mid-run, with timeouts in flight


# ------------------------------------------------------------------ broken pipe


def test_a_closed_pipe_ends_the_run_quietly(tmp_path: Path) -> None:
    """As `loadsim run saturation | head -n 3`: the reader takes three lines and goes."""
    process = start_loadsim("run", "saturation", "--duration", "30s", cwd=tmp_path)
    assert process.stdout is not None and process.stderr is not None
    lines = [process.stdout.readline() for _ in range(3)]
    (directory,) = server_directories_of(process.pid)
    process.stdout.close()  # what head does after three lines
    stderr = process.stderr.read()
    assert process.wait(timeout=30) == 0
    assert all(json.loads(line) for line in lines)
    for noise in ("Traceback", "Exception ignored", "BrokenPipeError"):
        assert noise not in stderr, stderr
    assert "checkouts" in stderr  # it ended the ordinary way, with its summary
    assert_server_gone(directory)
