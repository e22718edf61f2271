"""A fleet's lifecycle is a single run's: it fails when an instance fails, and it stops when
its output closes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import (
    by_name,
    first_line,
    parse_events,
    sessions_left,
    start_loadsim,
    wait_for_start,
)


def instance_pids(parent: int, count: int, timeout: float = 30) -> list[int]:
    """The pids of the `count` instance processes of the fleet run by `parent`, once they
    are all running."""
    deadline = time.monotonic() + timeout
    while True:
        listing = subprocess.run(
            ["ps", "-o", "pid=,args=", "--ppid", str(parent)], capture_output=True, text=True
        ).stdout
        pids = [int(line.split()[0]) for line in listing.splitlines() if "_instance" in line]
        if len(pids) >= count or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_instance_killed_mid_run_fails_the_run_and_is_named(
    database_url: str, tmp_path: Path
) -> None:
    process = start_loadsim(
        "run",
        "saturation",
        "--instances",
        "2",
        "--duration",
        "6s",
        "--database-url",
        database_url,
        "-q",
        cwd=tmp_path,
    )
    first = wait_for_start(process)
    pids = instance_pids(process.pid, 2)
    assert len(pids) == 2
    time.sleep(1)
    os.kill(pids[0], signal.SIGKILL)
    rest, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    found = re.search(
        r"^loadsim: error: instance (\d) of 'saturation' was killed by SIGKILL$", stderr, re.M
    )
    assert found, stderr
    killed = int(found.group(1))
    survivor = 1 - killed
    events = parse_events(first + rest)
    # the killed instance never wrote its run.end: the one that did is the other
    assert [end["instance"] for end in by_name(events, "run.end")] == [survivor]
    warnings = [event["message"] for event in by_name(events, "run.warning")]
    assert f"instance {killed} of 'saturation' was killed by SIGKILL" in warnings
    assert events[-1]["event"] == "run.summary"
    fleet = events[-1]["summary"]
    assert fleet["failed_instances"] == [{"instance": killed, "exit_status": -signal.SIGKILL}]
    assert fleet["instances"] == 1
    assert [row["instance"] for row in fleet["by_instance"]] == [survivor]
    assert sessions_left(database_url, events[0]["run_id"]) == 0


def test_a_fleet_whose_reader_goes_away_stops_early_and_quietly(
    database_url: str, tmp_path: Path
) -> None:
    """As `loadsim run saturation --instances 2 | head -n 1`."""
    duration = 30
    started = time.monotonic()
    process = start_loadsim(
        "run",
        "saturation",
        "--instances",
        "2",
        "--duration",
        f"{duration}s",
        "--database-url",
        database_url,
        cwd=tmp_path,
    )
    assert process.stdout is not None and process.stderr is not None
    line = first_line(process)
    pids = instance_pids(process.pid, 2)
    process.stdout.close()  # what head does after one line
    stderr = process.stderr.read()
    assert process.wait(timeout=duration + 30) == 0, stderr
    took = time.monotonic() - started
    assert took < duration / 2, f"took {took:.1f}s of a {duration}s run"
    for noise in ("Traceback", "Exception ignored", "BrokenPipeError", "loadsim: error"):
        assert noise not in stderr, stderr
    assert "checkouts" in stderr  # it ended the ordinary way, with its summary table
    assert not [pid for pid in pids if alive(pid)]  # every instance stopped
    assert sessions_left(database_url, json.loads(line)["run_id"]) == 0
