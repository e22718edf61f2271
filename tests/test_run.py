"""`loadsim run` end to end, as a subprocess against a real PostgreSQL: the event stream shows
what the pool did, what the server refused, and what the flags, the environment and .env chose."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from loadsim.run.database import EmbeddedPostgres
from loadsim.schema import SCHEMA_VERSION
from tests.helpers import (
    RunLoadsim,
    by_name,
    parse_events,
    run_events,
    sessions_left,
    write_scenarios,
)


def test_normal_reuses_a_few_connections(loadsim: RunLoadsim, database_url: str) -> None:
    events = run_events(loadsim, "normal", "--duration", "3s", "--database-url", database_url)

    assert events[0]["event"] == "run.start"
    assert events[0]["schema_version"] == SCHEMA_VERSION
    assert events[-1]["event"] == "run.end"
    for event in events:
        assert {"ts", "t", "event", "run_id", "scenario", "instance"} <= event.keys()
        assert event["scenario"] == "normal"
    assert [event["t"] for event in events] == sorted(event["t"] for event in events)

    connects = by_name(events, "pool.connect")
    checkouts = by_name(events, "client.acquired")
    assert 1 <= len(connects) <= 3  # three clients never need more than three connections
    assert len(checkouts) >= 10 * len(connects)  # each connection is reused many times
    # conn ids are small, stable, and carry their backend's pid on every event
    pids = {event["conn"]: event["backend_pid"] for event in connects}
    assert sorted(pids) == list(range(1, len(connects) + 1))
    assert len(set(pids.values())) == len(pids)
    for event in checkouts:
        assert event["backend_pid"] == pids[event["conn"]]
        assert event["client"] in {0, 1, 2}
        assert event["overflow"] == 0
        assert event["connections_used"] >= 1

    acquired = by_name(events, "client.acquired")
    released = by_name(events, "client.released")
    assert len(acquired) == len(checkouts)
    assert all(event["conn"] in pids for event in acquired)
    assert min(event["held_ms"] for event in released) >= 19  # hold = 20ms of pg_sleep

    summary = events[-1]["summary"]
    assert summary["checkouts"] == len(checkouts)
    assert summary["connects"] == len(connects)
    assert summary["timeouts"] == summary["errors"] == 0
    assert summary["interrupted"] is False
    # The pool's count and the server's own (pg_stat_activity) agree at the end of the run.
    assert summary["pool_state"]["connections_total"] == sum(summary["server_sessions"].values())
    assert summary["server_sessions"].get("idle", 0) == summary["pool_state"]["connections_idle"]
    # ... and after it, the engine is disposed: no session of ours is left on the server.
    assert sessions_left(database_url, events[0]["run_id"]) == 0


def test_overflow_connections_are_closed_when_returned(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = write_scenarios(
        tmp_path,
        """
        [scenarios.busy]
        clients = 8
        duration = "3s"
        pool = { pool_size = 2, max_overflow = 2 }
        workload = { hold = "30ms", think = "exp(5ms)" }
        """,
    )
    events = run_events(loadsim, "busy", "--file", str(file), "--database-url", database_url)

    pool_events = [event for event in events if event["event"].startswith("pool.")]
    assert max(event["connections_total"] for event in pool_events) <= 4
    assert max(event["overflow"] for event in pool_events) >= 1
    assert all(event["overflow"] >= 0 for event in pool_events)
    assert max(event["pending_requests"] for event in pool_events) >= 1
    causes = Counter(event["cause"] for event in by_name(events, "pool.close"))
    assert causes["overflow"] >= 1
    assert causes["disposed"] == 2  # the pool_size connections, closed by dispose at the end
    assert events[-1]["summary"]["max_open"] <= 4


def test_pool_timeout_is_recorded_and_the_run_goes_on(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = write_scenarios(
        tmp_path,
        """
        [scenarios.dry]
        clients = 3
        duration = "2s"
        pool = { pool_size = 1, max_overflow = 0, pool_timeout = "300ms" }
        workload = { hold = "1s" }
        """,
    )
    events = run_events(loadsim, "dry", "--file", str(file), "--database-url", database_url)

    timeouts = by_name(events, "client.timeout")
    assert timeouts
    for event in timeouts:
        assert "QueuePool limit of size 1 overflow 0 reached" in event["message"]
        assert event["wait_ms"] >= 290
        assert event["connections_total"] == event["connections_used"] == 1
        assert event["connections_idle"] == 0
        assert event["pending_requests"] >= 1
    assert events[-1]["summary"]["timeouts"] == len(timeouts)
    assert len(by_name(events, "client.released")) >= 2  # clients went on after timing out


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


def test_log_level_warning_keeps_only_problems(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = write_scenarios(
        tmp_path,
        """
        [scenarios.dry]
        clients = 2
        iterations = 1
        pool = { pool_size = 1, max_overflow = 0, pool_timeout = "200ms" }
        workload = { hold = "600ms" }
        """,
    )
    events = run_events(
        loadsim,
        "dry",
        "--file",
        str(file),
        "--database-url",
        database_url,
        env={"LOG_LEVEL": "warning"},
    )
    assert [event["event"] for event in events] == ["run.start", "client.timeout", "run.end"]
    assert events[-1]["summary"]["checkouts"] == 1  # metrics still count what was not written


def test_null_pool_opens_a_connection_per_checkout(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    file = write_scenarios(
        tmp_path,
        """
        [scenarios.unpooled]
        clients = 2
        iterations = 5
        pool = { pool_class = "null" }
        workload = { hold = "1ms" }
        """,
    )
    events = run_events(loadsim, "unpooled", "--file", str(file), "--database-url", database_url)

    assert len(by_name(events, "client.acquired")) == 10  # 2 clients x 5 iterations
    assert len(by_name(events, "pool.connect")) == 10
    closes = by_name(events, "pool.close")
    assert len(closes) == 10
    assert {event["cause"] for event in closes} == {"returned"}
    assert events[0]["pool"]["pool_class"] == "null"


def test_iterations_and_output_file(loadsim: RunLoadsim, database_url: str, tmp_path: Path) -> None:
    output = tmp_path / "run.jsonl"
    result = loadsim(
        "run",
        "normal",
        "--iterations",
        "4",
        "--database-url",
        database_url,
        "--output",
        str(output),
    )
    assert result.returncode == 0, result.stderr
    events = parse_events(result.stdout)
    assert events[-1]["summary"]["checkouts"] == 12  # 3 clients x 4
    assert events[0]["workload"]["duration_s"] is None
    assert output.read_text() == result.stdout
    assert "checkouts" in result.stderr  # the summary table is for people, on stderr


def test_environment_and_dotenv_sit_between_flags_and_scenario(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(f"POOL_SIZE=4\nDATABASE_URL={database_url}\n")
    start = run_events(loadsim, "normal", "--iterations", "1")[0]
    assert start["pool"]["pool_size"] == 4
    assert start["sources"]["pool_size"] == "environment"

    start = run_events(loadsim, "normal", "--iterations", "1", env={"POOL_SIZE": "3"})[0]
    assert start["pool"]["pool_size"] == 3  # the real environment beats .env

    start = run_events(loadsim, "normal", "--iterations", "1", "--pool-size", "2")[0]
    assert start["pool"]["pool_size"] == 2
    assert start["sources"]["pool_size"] == "flag"


def test_ten_thousand_clients_in_one_process(loadsim: RunLoadsim, database_url: str) -> None:
    events = run_events(
        loadsim,
        "normal",
        "--clients",
        "10000",
        "--duration",
        "3s",
        "--database-url",
        database_url,
        timeout=180,
    )
    summary = events[-1]["summary"]
    assert summary["clients"] == 10000
    assert summary["checkouts"] > 100
    assert summary["errors"] == 0
    assert summary["max_open"] <= 15  # pool_size 5 + max_overflow 10
    assert summary["max_pending_requests"] > 5000
    # Starvation, measured: a few thousand checkouts shared among 10,000 clients.
    fairness = summary["checkouts_per_client"]
    assert fairness["starved_share"] > 0.3
    assert fairness["min"] == 0
    assert 0 < fairness["jain_index"] < 1
    assert max(event["oldest_wait_ms"] for event in by_name(events, "monitor.stats")) > 1000


def test_events_flag_filters_the_stream_but_not_the_metrics(
    loadsim: RunLoadsim, database_url: str
) -> None:
    events = run_events(
        loadsim,
        "saturation",
        "--duration",
        "2s",
        "--events",
        "monitor.*",
        "--database-url",
        database_url,
        "-q",
    )
    names = {event["event"] for event in events}
    assert names == {"run.start", "monitor.stats", "run.end"}
    summary = events[-1]["summary"]
    assert summary["checkouts"] > 50  # counted although no checkout event was written
    assert summary["connects"] >= 5
    assert by_name(events, "monitor.stats")[0]["window"]["checkouts"] > 0


def test_the_summary_names_the_event_loop(loadsim: RunLoadsim, database_url: str) -> None:
    events = run_events(
        loadsim,
        "normal",
        "--iterations",
        "1",
        "--loop",
        "asyncio",
        "--database-url",
        database_url,
        "-q",
    )
    assert events[-1]["summary"]["event_loop"] == "asyncio"
