"""Statement timeouts against client deadlines: `statement-timeout` and `client-deadline`,
run by name on the real server, their lessons read from the event stream; the server settings
of a scenario's `[session]` table on our sessions only; bad `[session]` input.

`statement-timeout`: the server cancels a query past `statement_timeout` (SQLSTATE 57014,
the server's own code), the client counts a `client.error`, and the connection goes back to
the pool healthy: no invalidation, no new connect. `client-deadline`: the same workload with
the deadline on the client (`asyncio.timeout`); every missed deadline costs the connection
(invalidated, closed, a new connect with a new server backend in its place).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import URL

from loadsim.config.scenario import load_scenarios
from loadsim.config.settings import Flags, resolve
from loadsim.run.database import asyncpg_arguments
from loadsim.run.engine import create_engine, parse_database_url, render_url
from tests.helpers import (
    REPOSITORY,
    RunLoadsim,
    assert_user_error,
    by_name,
    run_events,
    write_scenarios,
)

Event = dict[str, Any]
#: Long enough for several queries past 200 ms (one in seven of them, 5 clients).
DURATION = "3s"
#: The shipped scenarios' pool (both): pool_size 5, max_overflow 0.
POOL_SIZE = 5


def run_lesson(loadsim: RunLoadsim, database_url: str, name: str) -> list[Event]:
    events = run_events(
        loadsim, name, "--duration", DURATION, "--database-url", database_url, "-q",
        "--events", "all",  # pool.checkin and pool.checkout by their own names
    )  # fmt: skip
    assert events[0]["event"] == "run.start" and events[-1]["event"] == "run.end"
    assert {event["scenario"] for event in events} == {name}
    return events


def during_the_run(events: list[Event], name: str) -> list[Event]:
    """`name` events, without the closes of the engine's disposal at the end."""
    return [
        event
        for event in by_name(events, name)
        if not (name == "pool.close" and event.get("cause") == "disposed")
    ]


async def server_setting(connection: Any, name: str) -> tuple[str, str]:
    """A session's value of a setting and where the server says it came from."""
    row = await connection.fetchrow(
        "SELECT current_setting(name) AS value, source FROM pg_settings WHERE name = $1", name
    )
    return row["value"], row["source"]


# ------------------------------------------------------------------- statement-timeout


def test_statement_timeout_is_an_error_and_the_connection_stays(
    loadsim: RunLoadsim, database_url: str
) -> None:
    events = run_lesson(loadsim, database_url, "statement-timeout")
    start, summary = events[0], events[-1]["summary"]
    assert start["session_settings"] == {"statement_timeout": "200ms"}

    errors = by_name(events, "client.error")
    cancelled = [e for e in errors if e["sqlstate"] == "57014"]
    assert cancelled, "no query outlasted statement_timeout"
    assert cancelled == errors  # nothing else failed
    for error in cancelled:
        assert error["phase"] == "query" and error["error"] == "QueryCanceledError"
        assert "statement timeout" in error["message"]
        assert error["conn"] is not None and "deadline_ms" not in error
    assert summary["errors"] == len(cancelled)
    assert summary["errors_by_kind"] == {"query:QueryCanceledError": len(cancelled)}

    # The connection was not invalidated, nor closed, nor replaced: the pool's first
    # connections served the whole run, each with the one backend it opened with.
    assert not by_name(events, "pool.invalidate") and summary["invalidations"] == 0
    assert not during_the_run(events, "pool.close")
    connects = by_name(events, "pool.connect")
    assert len(connects) == summary["connects"] <= POOL_SIZE
    backends = {event["conn"]: event["backend_pid"] for event in connects}
    assert len(set(backends.values())) == len(connects)
    # ... and each one a query was cancelled on went back to the pool (checked in by the
    # client before it reported the error), and served again
    checkins, checkouts = by_name(events, "pool.checkin"), by_name(events, "pool.checkout")
    for error in cancelled:
        took = max(
            e["t"]
            for e in checkouts
            if (e["conn"], e["client"]) == (error["conn"], error["client"]) and e["t"] <= error["t"]
        )
        assert [
            e
            for e in checkins
            if (e["conn"], e["client"]) == (error["conn"], error["client"])
            and took <= e["t"] <= error["t"]
        ], error
    served_again = [
        checkout
        for error in cancelled
        for checkout in checkouts
        if checkout["conn"] == error["conn"] and checkout["t"] > error["t"]
    ]
    assert served_again, "no connection a query was cancelled on was used again"
    assert all(e["backend_pid"] == backends[e["conn"]] for e in served_again)


async def test_the_session_settings_are_our_sessions_only(database_url: str) -> None:
    """`SHOW statement_timeout` on one of our pooled sessions (opened as the runner opens
    them, from the shipped scenario's resolved settings) says 200ms, set by the client; a
    session not ours keeps the server's own value, before, during and after."""
    url = parse_database_url(database_url)
    shipped = load_scenarios(REPOSITORY / "loadsim" / "scenarios.toml")
    config = resolve(shipped, shipped.get("statement-timeout"), {}, Flags())
    assert config.session_settings == {"statement_timeout": "200ms"}
    other = await asyncpg.connect(**asyncpg_arguments(url))
    try:
        before = await server_setting(other, "statement_timeout")
        assert before[0] != "200ms"
        engine = create_engine(url, config.pool, "loadsim:lessons", config.session_settings)
        try:
            async with engine.connect() as connection:
                shown = (await connection.execute(text("SHOW statement_timeout"))).scalar()
                source = (
                    await connection.execute(
                        text("SELECT source FROM pg_settings WHERE name = 'statement_timeout'")
                    )
                ).scalar()
                assert (shown, source) == ("200ms", "client")
                assert await server_setting(other, "statement_timeout") == before
        finally:
            await engine.dispose()
        fresh = await asyncpg.connect(**asyncpg_arguments(url))
        try:
            assert await server_setting(fresh, "statement_timeout") == before
        finally:
            await fresh.close()
    finally:
        await other.close()


# --------------------------------------------------------------------- client-deadline


def test_a_client_deadline_costs_the_connection(loadsim: RunLoadsim, database_url: str) -> None:
    events = run_lesson(loadsim, database_url, "client-deadline")
    start, summary = events[0], events[-1]["summary"]
    assert start["workload"]["deadline_s"] == 0.2
    assert start["session_settings"] == {}  # the server has no statement_timeout of ours

    missed = by_name(events, "client.error")
    assert missed, "no query outlasted the deadline"
    for error in missed:
        assert error["phase"] == "query" and error["error"] == "TimeoutError"
        assert error["sqlstate"] is None  # the server never said no: the client gave up
        assert error["deadline_ms"] == 200 and error["held_ms"] >= error["deadline_ms"]
    assert summary["errors_by_kind"] == {"query:TimeoutError": len(missed)}

    # Each missed deadline invalidated the connection it held (the cancellation reached the
    # driver in the middle of its query) and closed it, before the client had control back.
    invalidated = by_name(events, "pool.invalidate")
    assert len(invalidated) == summary["invalidations"] == len(missed)
    for error in missed:
        (invalidation,) = [e for e in invalidated if e["conn"] == error["conn"]]
        assert invalidation["reason"].startswith("CancelledError")
        assert invalidation["t"] <= error["t"]
    closes = during_the_run(events, "pool.close")
    assert Counter(e["conn"] for e in closes) == Counter(e["conn"] for e in missed)
    assert {e["cause"] for e in closes} == {"invalidated"}
    # ... never used again; the pool opened a new connection, a new server backend, instead
    checkouts = by_name(events, "pool.checkout")
    for error in missed:
        assert not [e for e in checkouts if e["conn"] == error["conn"] and e["t"] > error["t"]]
    connects = by_name(events, "pool.connect")
    assert len(connects) == summary["connects"]
    assert len({e["backend_pid"] for e in connects}) == len(connects)
    replacements = len(connects) - len(missed)
    assert 0 < replacements <= POOL_SIZE, (len(connects), len(missed))
    assert summary["create_time_ms"]["count"] == len(connects)


def test_a_deadline_outside_a_query_costs_no_connection(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    """What costs the connection is the cancellation reaching the driver in the middle of a
    query. A deadline that expires while the client waits in an open transaction (no query
    running) is missed as well, and the connection is rolled back and reused: no
    invalidation, no new connect."""
    write_scenarios(
        tmp_path,
        """
        [scenarios.idle-deadline]
        clients = 2
        duration = "2s"
        pool = { pool_size = 2, max_overflow = 0 }
        workload = { hold = "300ms", in_transaction = true, deadline = "100ms" }
        """,
    )
    events = run_events(
        loadsim, "idle-deadline", "--database-url", database_url, "-q", "--events", "all"
    )
    missed = by_name(events, "client.error")
    assert missed and all(e["deadline_ms"] == 100 for e in missed)
    assert not by_name(events, "pool.invalidate")
    assert len(by_name(events, "pool.connect")) == events[-1]["summary"]["connects"] <= 2
    assert by_name(events, "pool.reset")  # rolled back on its return, as any checkin


# --------------------------------------------------------------------------- bad input


def test_a_bad_session_table_is_one_line(loadsim: RunLoadsim, tmp_path: Path) -> None:
    """Refused before anything connects: no server is needed to say so."""
    write_scenarios(
        tmp_path,
        """
        [scenarios.bad.session]
        "statement timeout" = "1s"
        """,
    )
    assert_user_error(loadsim("run", "bad"), 2, "[session]", "'statement timeout'")
    write_scenarios(tmp_path, '[scenarios.bad.session]\napplication_name = "x"\n')
    assert_user_error(loadsim("validate", "scenarios.toml"), 2, "application_name")


def test_a_setting_the_server_refuses_is_one_line(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    """The server judges a value: 2m is no duration of PostgreSQL's (it writes 2min), and a
    setting it does not have; one line naming the setting, exit 2, before run.start."""
    cases = {
        'statement_timeout = "2m"': ("statement_timeout = '2m'", "Valid units for this"),
        'lock_timeout = "1s"\nno_such_setting = 1': ("no_such_setting",),
        'lock_timeout = "-5"': ("lock_timeout = '-5'", "outside the valid range"),
    }
    for table, details in cases.items():
        write_scenarios(
            tmp_path, f'[scenarios.bad]\nduration = "1s"\n[scenarios.bad.session]\n{table}\n'
        )
        result = loadsim("run", "bad", "--database-url", database_url)
        assert_user_error(result, 2, "scenario 'bad'", *details)


def test_every_instance_of_a_fleet_gets_the_session_settings(
    loadsim: RunLoadsim, database_url: str
) -> None:
    """`--instances 2`: each instance process opens its sessions with the scenario's
    settings (handed to it with its configuration): the server cancels queries in both."""
    events = run_events(
        loadsim,
        "statement-timeout",
        "--instances",
        "2",
        "--duration",
        DURATION,
        "--database-url",
        database_url,
        "-q",
    )
    starts = by_name(events, "run.start")
    assert {e["instance"] for e in starts} == {0, 1}
    assert all(e["session_settings"] == {"statement_timeout": "200ms"} for e in starts)
    cancelled = Counter(
        e["instance"] for e in by_name(events, "client.error") if e["sqlstate"] == "57014"
    )
    assert set(cancelled) == {0, 1}, cancelled
    assert not by_name(events, "pool.invalidate")


# ------------------------------------------------------------------- long-transactions


async def sessions_ended_by_the_server(url: URL) -> int:
    """The server's own count of sessions of the database that ended in a FATAL error (an
    idle-in-transaction timeout is one): `pg_stat_database.sessions_fatal`, PostgreSQL 14+.
    Other sessions on a shared server can only add to it."""
    connection = await asyncpg.connect(**asyncpg_arguments(url))
    try:
        count: int = await connection.fetchval(
            "SELECT sessions_fatal FROM pg_stat_database WHERE datname = current_database()"
        )
        return count
    finally:
        await connection.close()


async def test_the_server_ends_transactions_left_idle_and_the_pool_finds_out_at_next_use(
    loadsim: RunLoadsim, database_url: str
) -> None:
    """long-transactions: its long clients sit idle in transaction for 3 s, and its
    idle_in_transaction_session_timeout (2 s) has the server end those sessions first. The
    pool does not know: each client finds out when it next uses its connection (COMMIT fails,
    connection closed), and only then is the connection invalidated and replaced."""
    url = parse_database_url(database_url)
    before = await sessions_ended_by_the_server(url)
    events = await asyncio.to_thread(
        run_events,
        loadsim,
        "long-transactions",
        "--duration",
        "4s",  # the long transactions start at 2 s and finish in the grace period
        "--database-url",
        database_url,
        "-q",
    )
    after = await sessions_ended_by_the_server(url)
    start = events[0]
    assert start["session_settings"] == {"idle_in_transaction_session_timeout": "2000"}
    main = start["workload"]["clients"]
    (long,) = start["groups"]
    long_clients = set(range(main, main + long["clients"]))

    errors = by_name(events, "client.error")
    assert errors, "no session left idle in transaction was ended by the server"
    assert {e["client"] for e in errors} <= long_clients
    for error in errors:
        assert error["phase"] == "query" and "connection is closed" in error["message"]
    # The server ended them (its own count), and the pool found out at their next use only
    assert after - before >= len(errors), (before, after, len(errors))
    invalidated = by_name(events, "pool.invalidate")
    assert len(invalidated) == len(errors) == events[-1]["summary"]["invalidations"]
    checkouts = by_name(events, "client.acquired")
    for error in errors:
        (invalidation,) = [e for e in invalidated if e["conn"] == error["conn"]]
        assert invalidation["client"] == error["client"] and invalidation["t"] <= error["t"]
        assert "connection is closed" in invalidation["reason"]
        took = max(
            e["t"] for e in checkouts if e["conn"] == error["conn"] and e["t"] < invalidation["t"]
        )
        # held all along by the client that then failed: nothing found out before it did
        assert not [
            e
            for e in events
            if e.get("conn") == error["conn"]
            and took < e["t"] < invalidation["t"]
            and e["event"].startswith("pool.")
        ]
        assert not [e for e in checkouts if e["conn"] == error["conn"] and e["t"] > error["t"]]


async def test_a_setting_this_role_may_not_set_is_one_line_exit_3(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    """log_min_duration_statement is a superuser's setting: a role without that right is
    refused it by the server at connect, which is the server refusing us (exit 3), named."""
    url = parse_database_url(database_url)
    role = f"loadsim_plain_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(**asyncpg_arguments(url))
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        plain = render_url(url.set(username=role, password=None))
        write_scenarios(
            tmp_path,
            '[scenarios.bad]\nduration = "1s"\n'
            '[scenarios.bad.session]\nlog_min_duration_statement = "1s"\n',
        )
        result = await asyncio.to_thread(loadsim, "run", "bad", "--database-url", plain)
        assert_user_error(
            result, 3, "session setting log_min_duration_statement = '1s'", "permission denied"
        )
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
