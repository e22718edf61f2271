"""How a run stops when it is told to: Ctrl-C (once, or twice), SIGTERM, a reader that
closes the pipe. It never loses the run's end, never leaks a server connection or an embedded
server, and never shows a traceback. Through the real command, against a real server."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest

from loadsim.run.database import quiet_cancelled_connects
from tests.helpers import (
    assert_server_gone,
    by_name,
    parse_events,
    server_directories_of,
    sessions_left,
    start_loadsim,
    wait_for_start,
    write_scenarios,
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
    # the waiters were stranded (loadsim/exiting.py): no task left to be destroyed noisily
    assert "Traceback" not in stderr and "Task was destroyed" not in stderr, stderr
    events = parse_events(first + rest)
    summary = events[-1]["summary"]
    assert summary["interrupted"] is True
    assert summary["clients"] == 10000
    # their waits are over in the figures: the pool at the end has no one waiting
    assert summary["pool_state"]["pending_requests"] == 0
    assert sessions_left(database_url, events[0]["run_id"]) == 0


FLOOD = """[scenarios.flood]
description = "Far more requests than the pool can serve, all left waiting"
duration = "60s"
pool = { pool_size = 5, max_overflow = 0, pool_timeout = "1h" }
workload = { hold = "1ms" }
arrivals = { rate = 20000, max_in_flight = 200000 }
"""


def test_an_open_workload_stops_with_its_requests_still_waiting(
    database_url: str, tmp_path: Path
) -> None:
    """A stop strands the requests waiting in the pool's queue as it does a closed
    workload's clients; those holding a connection are cancelled and give it back."""
    (tmp_path / "flood.toml").write_text(FLOOD)
    output = tmp_path / "run.jsonl"
    process = start_loadsim(
        "run",
        "flood",
        "--file",
        "flood.toml",
        "--database-url",
        database_url,
        "--output",
        str(output),
        "-q",
        cwd=tmp_path,
    )
    wait_for_start(process)
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Task was destroyed" not in stderr, stderr
    events = parse_events(output.read_text())
    summary = events[-1]["summary"]
    assert summary["interrupted"] is True
    assert summary["requests"] - summary["dropped"] - summary["checkouts"] > 1000  # waiting
    assert summary["pool_state"]["pending_requests"] == 0
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


# ------------------------------------------------------- a stop as a connection opens


def test_a_run_that_stops_while_a_connection_opens_says_nothing(
    database_url: str, tmp_path: Path
) -> None:
    """A 1 s run stops about when the monitor opens its control connection: a connect
    cancelled in asyncpg's SSL negotiation used to leave "Future exception was never
    retrieved" on stderr (in about half of such runs here), which `--quiet` must keep empty:
    a pod's log is stdout and stderr together, and merge takes events only."""
    write_scenarios(
        tmp_path,
        """\
        [scenarios.short]
        clients = 2
        duration = "1s"
        workload = { hold = "5ms", think = "5ms" }
        """,
    )
    runs = [
        start_loadsim(
            "run",
            "short",
            "--quiet",
            "--loop",
            "asyncio",
            cwd=tmp_path,
            env={"DATABASE_URL": database_url},
        )
        for _ in range(4)
    ]
    for process in runs:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert stderr == ""
        assert parse_events(stdout)[-1]["event"] == "run.end"


def test_the_loop_reports_every_other_unretrieved_error() -> None:
    """quiet_cancelled_connects drops asyncpg's one artifact, nothing else."""
    reported: list[dict[str, object]] = []
    loop = asyncio.new_event_loop()
    try:
        loop.default_exception_handler = reported.append  # type: ignore[method-assign]
        artifact = ConnectionError("unexpected connection_lost() call")
        other = ConnectionError("connection refused")
        message = "Future exception was never retrieved"
        quiet_cancelled_connects(loop, {"message": message, "exception": artifact})
        quiet_cancelled_connects(loop, {"message": message, "exception": other})
        quiet_cancelled_connects(loop, {"message": "Task was destroyed", "exception": artifact})
    finally:
        loop.close()
    assert [context["exception"] for context in reported] == [other, artifact]
