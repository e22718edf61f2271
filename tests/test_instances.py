"""A fleet of application instances: processes with their own pools, one event stream."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from loadsim.run.database import EmbeddedPostgres
from tests.helpers import (
    RunLoadsim,
    by_name,
    parse_events,
    sessions_left,
    start_loadsim,
    wait_for_start,
    write_scenarios,
)


def instances_of(parent: int) -> list[int]:
    """The pids of the fleet instances that the loadsim process `parent` started (not those
    of any other test's fleet running on the machine)."""
    listing = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True
    ).stdout
    found = []
    for line in listing.splitlines():
        pid, ppid, arguments = line.split(None, 2)
        if int(ppid) == parent and "loadsim _instance" in arguments:
            found.append(int(pid))
    return found


def test_instances_merge_into_one_stream(loadsim: RunLoadsim, database_url: str) -> None:
    result = loadsim(
        "run",
        "saturation",
        "--instances",
        "3",
        "--duration",
        "2s",
        "--database-url",
        database_url,
    )
    assert result.returncode == 0, result.stderr
    events = parse_events(result.stdout)  # every line whole JSON, though three wrote at once
    assert {event["instance"] for event in events if event["event"] != "run.summary"} == {0, 1, 2}
    assert sorted(e["instance"] for e in by_name(events, "run.start")) == [0, 1, 2]
    ends = {event["instance"]: event["summary"] for event in by_name(events, "run.end")}
    assert sorted(ends) == [0, 1, 2]
    assert events[-1]["event"] == "run.summary"
    fleet = events[-1]["summary"]
    assert fleet["instances"] == 3
    assert fleet["checkouts"] == sum(summary["checkouts"] for summary in ends.values())
    assert fleet["connects"] == sum(summary["connects"] for summary in ends.values())
    assert fleet["wait_time_ms"]["count"] == fleet["checkouts"]
    assert fleet["wait_time_ms"]["max"] == max(s["wait_time_ms"]["max"] for s in ends.values())
    assert [row["instance"] for row in fleet["by_instance"]] == [0, 1, 2]
    # each instance has its own pool: its own connections and its own name on the server
    names = {event["application_name"] for event in by_name(events, "run.start")}
    assert len(names) == 3
    assert "checkouts" in result.stderr  # the summary table, for the fleet


def test_instances_from_the_scenario_file(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = write_scenarios(
        tmp_path, "[scenarios.pair]\ninstances = 2\nclients = 2\niterations = 3\n"
    )
    result = loadsim("run", "pair", "--file", str(file), "--database-url", database_url, "-q")
    assert result.returncode == 0, result.stderr
    events = parse_events(result.stdout)
    assert events[-1]["summary"]["checkouts"] == 2 * 2 * 3
    assert all(
        event["sources"]["instances"] == "scenario" for event in by_name(events, "run.start")
    )


def test_ctrl_c_stops_every_instance(database_url: str, tmp_path: Path) -> None:
    process = start_loadsim(
        "run",
        "saturation",
        "--instances",
        "2",
        "--duration",
        "60s",
        "--database-url",
        database_url,
        "-q",
        cwd=tmp_path,
    )
    first = wait_for_start(process)
    time.sleep(2)
    instances = instances_of(process.pid)
    assert len(instances) == 2
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    events = parse_events(first + rest)
    ends = by_name(events, "run.end")
    assert len(ends) == 2
    assert all(end["summary"]["interrupted"] for end in ends)
    assert events[-1]["event"] == "run.summary"
    assert not [pid for pid in instances if Path(f"/proc/{pid}").exists()]
    assert sessions_left(database_url, events[0]["run_id"]) == 0


def test_the_fleet_is_checked_against_max_connections(loadsim: RunLoadsim, tmp_path: Path) -> None:
    with EmbeddedPostgres(max_connections=30) as server:
        url = server.url.render_as_string(hide_password=False)
        result = loadsim(
            "run", "normal", "--instances", "3", "--iterations", "1", "--database-url", url
        )
    assert result.returncode == 0, result.stderr
    # normal may open 5 + 10 = 15 connections per instance: 45 > 30 - 3 reserved
    assert "3 instances of scenario 'normal' may open 45 connections" in result.stderr
    assert "max_connections >= instances x (pool_size + max_overflow) + 20" in result.stderr
