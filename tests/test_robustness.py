"""Never lose the run, never leak a server connection, never show a traceback: signals, broken
pipes, a server that says no, secrets, and a crashed earlier run. Everything through the real
command, as a subprocess, against a real server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from loadsim.run.database import EmbeddedPostgres
from tests.conftest import (
    RunLoadsim,
    assert_server_gone,
    clean_environment,
    embedded_server_processes,
    first_line,
    parse_events,
    server_directories_of,
    write_scenarios,
)
from tests.test_run import by_name, sessions_left

SECRET = "s3cret-Pa55word"


def start(*arguments: str, cwd: Path, **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loadsim", "run", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_environment(),
        cwd=cwd,
        **options,
    )


def wait_for_start(process: subprocess.Popen[str]) -> str:
    """Reads up to the first event, run.start: by then the server is up and clients go."""
    assert process.stdout is not None
    first = first_line(process)
    assert json.loads(first)["event"] == "run.start", first
    return first


# --------------------------------------------------------------------- stopping


def test_sigterm_stops_cleanly_with_exit_143(database_url: str, tmp_path: Path) -> None:
    output = tmp_path / "run.jsonl"
    process = start(
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
    process = start(
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
    process = start("normal", "--clients", "3000", "--duration", "60s", "-q", cwd=tmp_path)
    wait_for_start(process)
    (directory,) = server_directories_of(process.pid)
    time.sleep(1)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert_server_gone(directory)


# ------------------------------------------------------------------ broken pipe


def test_a_closed_pipe_ends_the_run_quietly(tmp_path: Path) -> None:
    """As `loadsim run saturation | head -n 3`: the reader takes three lines and goes."""
    process = start("saturation", "--duration", "30s", cwd=tmp_path)
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


# --------------------------------------------------------------- the server says no


def test_too_many_clients_mid_run_is_recorded_and_the_run_goes_on(
    loadsim: RunLoadsim, tmp_path: Path
) -> None:
    """A server with max_connections = 8: our observer connections take two, the pool may
    open fifteen. PostgreSQL refuses the rest ("too many clients already", 53300)."""
    file = write_scenarios(
        tmp_path,
        "[scenarios.crowd]\n"
        "clients = 15\n"
        'duration = "3s"\n'
        "pool = { pool_size = 5, max_overflow = 10 }\n"
        'workload = { hold = "300ms" }\n',
    )
    with EmbeddedPostgres(max_connections=8) as server:
        url = server.url.render_as_string(hide_password=False)
        result = loadsim("run", "crowd", "--file", str(file), "--database-url", url)
    assert result.returncode == 0, result.stderr
    assert "max_connections >= instances x (pool_size + max_overflow) + 20" in result.stderr
    events = parse_events(result.stdout)
    refused = [e for e in by_name(events, "client.error") if e["phase"] == "connect"]
    assert refused, "no connection was refused"
    assert all(e["error"] == "TooManyConnectionsError" for e in refused)
    assert all("too many clients" in e["message"] for e in refused)
    assert all(e["sqlstate"] == "53300" for e in refused)
    summary = events[-1]["summary"]
    assert summary["errors"] == len(by_name(events, "client.error"))
    assert summary["checkouts"] > 0  # the run carried on with the connections it had
    assert by_name(events, "run.warning")


# ----------------------------------------------------------------------- secrets


def test_no_password_appears_anywhere(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    with_secret = make_url(database_url).set(password=SECRET).render_as_string(hide_password=False)
    output = tmp_path / "run.jsonl"
    run = loadsim(
        "run",
        "normal",
        "--iterations",
        "2",
        "--database-url",
        with_secret,
        "--output",
        str(output),
        "--log-format",
        "json",
    )
    assert run.returncode == 0, run.stderr
    console = loadsim(
        "run",
        "normal",
        "--iterations",
        "1",
        "--log-format",
        "console",
        env={"DATABASE_URL": with_secret},
    )
    show = loadsim("show", "normal", "--database-url", with_secret)
    echo = loadsim(
        "run",
        "normal",
        "--iterations",
        "1",
        env={"DATABASE_URL": with_secret, "ECHO_POOL": "debug"},
    )
    for result in (run, console, show, echo):
        assert result.returncode == 0, result.stderr
        assert SECRET not in result.stdout
        assert SECRET not in result.stderr
    assert SECRET not in output.read_text()
    assert "***" in show.stdout


# ------------------------------------------------------------- the embedded server


def test_a_crashed_runs_server_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    process = start("normal", "--duration", "60s", "-q", cwd=tmp_path)
    wait_for_start(process)
    (directory,) = server_directories_of(process.pid)
    process.send_signal(signal.SIGKILL)  # no chance to clean up
    process.communicate(timeout=30)
    assert any(str(directory) in line for line in embedded_server_processes())

    result = subprocess.run(
        [sys.executable, "-m", "loadsim", "run", "normal", "--iterations", "1"],
        capture_output=True,
        text=True,
        env=clean_environment(),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "abandoned by an earlier run" in result.stderr
    assert_server_gone(directory)


def test_the_embedded_server_listens_only_on_a_private_socket(tmp_path: Path) -> None:
    process = start("normal", "--duration", "30s", "-q", cwd=tmp_path)
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


@pytest.mark.parametrize("signal_name", ["SIGINT"])
def test_interrupted_output_file_is_valid_json(
    database_url: str, tmp_path: Path, signal_name: str
) -> None:
    output = tmp_path / "run.jsonl"
    process = start(
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
