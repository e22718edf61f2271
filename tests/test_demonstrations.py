"""The shipped demonstration scenarios, run for real by name: each test reads the event stream
and checks that the behaviour the scenario exists to show did happen.

Assertions are made on the events themselves (what the pool, the clients, the monitor and the
server sampler reported as it happened), not only on run.end's summary, which is the code's
own counters. With an external server (LOADSIM_TEST_DATABASE_URL) the `restart` fault
terminates our backends instead of restarting the server; every test holds either way.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

from tests.helpers import RunLoadsim, by_name, parse_events, run_events

Event = dict[str, Any]

DEMONSTRATIONS = (
    "normal",
    "saturation",
    "exhaustion",
    "leak",
    "recycle",
    "recycle-off",
    "pre-ping",
    "pre-ping-off",
    "long-transactions",
    "pooled",
    "unpooled",
    "sequential",  # (their own tests: test_lessons_fairness.py)
    "fairness",
)


# ------------------------------------------------------------------------------- helpers


def run_scenario(loadsim: RunLoadsim, database_url: str, name: str) -> list[Event]:
    """The events of one real, shipped scenario, run quietly against the test server."""
    events = run_events(loadsim, name, "--database-url", database_url, "-q")
    assert events[0]["event"] == "run.start"
    assert events[-1]["event"] == "run.end"
    assert {event["scenario"] for event in events} == {name}
    return events


def run_restart_scenario(
    loadsim: RunLoadsim, database_url: str, name: str, runs: int, duration: str
) -> list[list[Event]]:
    """A scenario with a `restart` fault, `runs` times in a row in one invocation (one
    server's start for them all); the events of each run. On an external server
    (LOADSIM_TEST_DATABASE_URL) loadsim can only terminate our backends; otherwise it runs
    without --database-url, so that it starts its own embedded server, which it really
    restarts. (With the session's embedded server passed as --database-url it would only
    terminate backends, as on an external one.)
    """
    external = os.environ.get("LOADSIM_TEST_DATABASE_URL")
    target = ("--database-url", database_url) if external else ()
    events = run_events(loadsim, *[name] * runs, *target, "--duration", duration, "-q")
    starts = [index for index, event in enumerate(events) if event["event"] == "run.start"]
    assert len(starts) == runs and starts[0] == 0, starts
    each = [events[a:b] for a, b in zip(starts, [*starts[1:], len(events)], strict=True)]
    for own in each:
        assert own[-1]["event"] == "run.end" and {e["scenario"] for e in own} == {name}
        method = the_restart(own)["method"]
        assert method.startswith("pg_terminate_backend" if external else "server restart"), method
    return each


def pool_events(events: list[Event]) -> list[Event]:
    return [event for event in events if event["event"].startswith("pool.")]


def between(events: list[Event], start: float, end: float = float("inf")) -> list[Event]:
    """The events with start <= t <= end."""
    return [event for event in events if start <= event["t"] <= end]


def group_clients(start: Event) -> dict[str, list[int]]:
    """Client ids by group, numbered as the runner plans them: the main workload's clients
    first ("main"), then each group's in the order the scenario declares them."""
    main = start["workload"]["clients"]
    clients = {"main": list(range(main))}
    next_id = main
    for group in start["groups"]:
        clients[group["name"]] = list(range(next_id, next_id + group["clients"]))
        next_id += group["clients"]
    return clients


def matches(event: Event, name: str, fields: dict[str, Any]) -> bool:
    return event["event"] == name and all(event.get(key) == value for key, value in fields.items())


def first_after(events: list[Event], index: int, name: str, **fields: Any) -> Event | None:
    """The first event called `name` (with these `fields`) after position `index`."""
    return next((event for event in events[index + 1 :] if matches(event, name, fields)), None)


def last_before(events: list[Event], index: int, name: str, **fields: Any) -> Event | None:
    """The last event called `name` (with these `fields`) before position `index`."""
    return next((event for event in reversed(events[:index]) if matches(event, name, fields)), None)


def position(events: list[Event], event: Event) -> int:
    """Where `event` (this very object) is in the stream."""
    return next(index for index, candidate in enumerate(events) if candidate is event)


def the_restart(events: list[Event]) -> Event:
    """The run's one restart, as it ended (fault.restarted)."""
    restarts = by_name(events, "fault.restarted")
    assert len(restarts) == 1, restarts
    return restarts[0]


# ----------------------------------------------------------------------------- scenarios


def test_list_shows_every_demonstration_with_a_description(loadsim: RunLoadsim) -> None:
    """`loadsim list` is how people find the demonstrations: each one, with what it shows."""
    result = loadsim("list")
    assert result.returncode == 0, result.stderr
    descriptions = {}
    for line in result.stdout.splitlines():
        name, _, description = line.partition(" ")
        descriptions[name] = description.strip()
    for name in DEMONSTRATIONS:
        assert descriptions.get(name), f"{name} is missing or has no description"


def test_normal_reuses_connections_without_waiting(loadsim: RunLoadsim, database_url: str) -> None:
    """normal: a healthy pool opens a connection once and hands it out again and again,
    with no one waiting."""
    events = run_scenario(loadsim, database_url, "normal")

    connects = by_name(events, "pool.connect")
    acquired = by_name(events, "client.acquired")
    assert 1 <= len(connects) <= 3  # three clients never need more than three connections
    assert len(acquired) >= 20 * len(connects)

    # The first checkout of each connection also opened it, so its wait includes connect_ms
    # (2 to 25 ms seen); every other checkout found an idle connection and waited for none.
    # 50 ms is a margin for a busy machine's event loop, still far below a real queue's wait
    # (saturation's clients wait for a 100 ms hold).
    connect_ms = {event["conn"]: event["connect_ms"] or 0.0 for event in connects}
    opened: set[int] = set()
    for event in acquired:
        allowance = 50.0
        if event["conn"] not in opened:
            opened.add(event["conn"])
            allowance += connect_ms.get(event["conn"], 0.0)
        assert event["wait_ms"] <= allowance, event


def test_saturation_opens_overflow_and_queues(loadsim: RunLoadsim, database_url: str) -> None:
    """saturation: ten clients on a pool of 5 + 2 overflow: the overflow connections open,
    clients queue for a while, but within pool_timeout, and overflow ones close on return."""
    events = run_scenario(loadsim, database_url, "saturation")
    pooled = pool_events(events)

    assert len(by_name(events, "pool.connect")) > 5  # beyond pool_size: overflow opened
    assert any(event.get("pending_requests", 0) > 0 for event in events)
    assert max(event["wait_ms"] for event in by_name(events, "client.acquired")) > 10
    assert by_name(events, "client.timeout") == []
    causes = Counter(event["cause"] for event in by_name(events, "pool.close"))
    assert causes["overflow"] >= 1
    assert all(event["overflow"] >= 0 for event in pooled)
    assert max(event["connections_total"] for event in pooled) <= 7  # pool_size + max_overflow


def test_exhaustion_times_out_at_the_pool_limit(loadsim: RunLoadsim, database_url: str) -> None:
    """exhaustion: clients hold connections (2.5 s) longer than pool_timeout (1 s): the pool
    stops at its limit of 10, on the server too, and the clients who cannot get one time out
    and carry on."""
    events = run_scenario(loadsim, database_url, "exhaustion")

    assert max(event["connections_total"] for event in pool_events(events)) <= 10
    stats = by_name(events, "monitor.stats")
    assert stats
    for event in stats:  # the server's own count of our sessions (pg_stat_activity)
        assert isinstance(event["server"], dict), event
        assert sum(event["server"].values()) <= 10, event

    timeouts = by_name(events, "client.timeout")
    assert timeouts
    for event in timeouts:
        assert "QueuePool limit of size 5 overflow 5 reached" in event["message"]
        assert event["connections_total"] == event["connections_used"] == 10, event
        assert event["overflow"] == 5, event
    first_timeout = min(event["t"] for event in timeouts)
    assert between(by_name(events, "client.acquired"), first_timeout + 1e-9)  # the run goes on


def test_leak_is_detected_reclaimed_and_collected(loadsim: RunLoadsim, database_url: str) -> None:
    """leak: connections that are never given back are reported past leak_threshold (2 s),
    with where they were taken; the pool runs dry; past leak_reclaim (5 s) the monitor takes
    them back and clients are served again. A late return is reported as such, and an asyncio
    task cancelled while holding a connection is found when it is garbage-collected."""
    events = run_scenario(loadsim, database_url, "leak")
    clients = group_clients(events[0])
    forgetful, (slow,), (cancelled,) = (
        clients["forgetful"],
        clients["slow-to-return"],
        clients["cancelled"],
    )

    suspected = by_name(events, "monitor.leak_suspected")
    assert sorted(event["client"] for event in suspected) == sorted([*forgetful, slow])
    for event in suspected:
        assert event["conn"] is not None
        assert event["held_ms"] >= 2000
        assert event["acquired_at"], event
        assert all("workload.py" in frame for frame in event["acquired_at"]), event

    reclaimed = by_name(events, "monitor.leak_reclaimed")
    assert sorted(event["client"] for event in reclaimed) == sorted(forgetful)
    suspected_conn = {event["client"]: event["conn"] for event in suspected}
    for event in reclaimed:
        assert event["held_ms"] >= 5000
        assert event["conn"] == suspected_conn[event["client"]]
        invalidate = first_after(events, position(events, event), "pool.invalidate")
        assert invalidate is not None and invalidate["conn"] == event["conn"], event

    # The pool ran dry while the leaked connections were held: from when the last leaker got
    # its connection until the monitor took them back, other clients timed out.
    leakers = {*forgetful, slow}
    leaked_since = max(
        event["t"] for event in by_name(events, "client.acquired") if event["client"] in leakers
    )
    first_reclaim = min(event["t"] for event in reclaimed)
    assert between(by_name(events, "client.timeout"), leaked_since, first_reclaim)

    last_reclaim = max(event["t"] for event in reclaimed)
    served_again = between(by_name(events, "client.acquired"), last_reclaim)
    assert {event["client"] for event in served_again} & set(clients["main"])

    (returned,) = by_name(events, "monitor.leak_returned")
    assert returned["client"] == slow
    assert 2000 <= returned["held_ms"] < 5000  # past the threshold, before reclaim

    # The asyncio leak: cancelled while holding, never checked in, detached when collected.
    (cancel,) = by_name(events, "client.cancelled")
    assert cancel["client"] == cancelled
    conn = cancel["conn"]
    assert conn is not None
    (collected,) = by_name(events, "monitor.leak_collected")
    assert (collected["client"], collected["conn"]) == (cancelled, conn)
    of_conn = [event for event in pool_events(events) if event["conn"] == conn]
    names = [event["event"] for event in of_conn]
    assert "pool.detach" in names and "pool.close_detached" in names
    # its last checkout was never returned (the default stream's checkout and return)
    on_conn = [event["event"] for event in events if event.get("conn") == conn]
    last_checkout = max(i for i, name in enumerate(on_conn) if name == "client.acquired")
    assert "client.released" not in on_conn[last_checkout:]


def test_recycle_replaces_connections_before_the_server_closes_them(
    loadsim: RunLoadsim, database_url: str
) -> None:
    """recycle: the server closes sessions idle for 2 s; pool_recycle = 1 s replaces each
    connection at checkout before that happens, so no client ever meets a closed one."""
    events = run_scenario(loadsim, database_url, "recycle")
    assert events[0]["faults"]["idle_session_timeout"] == 2.0

    recycled = [event for event in by_name(events, "pool.close") if event["cause"] == "recycled"]
    assert recycled
    for close in recycled:
        index = position(events, close)
        # The same checkout opens the replacement (other clients' events may come between).
        connect = first_after(events, index, "pool.connect", client=close["client"])
        assert connect is not None, close
        assert connect["t"] >= close["t"]
        assert all(event.get("conn") != connect["conn"] for event in events[:index])  # new
    assert by_name(events, "client.error") == []


def test_recycle_off_hands_out_connections_the_server_closed(
    loadsim: RunLoadsim, database_url: str
) -> None:
    """recycle-off: without pool_recycle, idle connections the server has closed stay in the
    pool; a client gets one, its query fails, and the pool invalidates it."""
    events = run_scenario(loadsim, database_url, "recycle-off")

    errors = by_name(events, "client.error")
    assert any(event["phase"] == "query" for event in errors), errors
    assert by_name(events, "pool.invalidate")
    assert all(event["cause"] != "recycled" for event in by_name(events, "pool.close"))


#: Each restart demonstration runs this many times in a row (one invocation, one server):
#: its lesson must show every time.
RESTART_RUNS = 3
#: Shorter than shipped (the restart is at 2 s): long enough to show the pool recovering.
RESTART_DURATION = "4s"


def restart_lesson(events: list[Event]) -> dict[str, Any]:
    """What a restart run shows, from its events: the restart's two events, the connections
    that were open before it (the ones it killed), the checkouts after it began, and the
    client errors sorted by what pre-ping can and cannot prevent."""
    (restart,) = by_name(events, "fault.restart")
    (restarted,) = by_name(events, "fault.restarted")
    assert position(events, restart) < position(events, restarted)
    began, over = restart["t"], restarted["t"]
    assert restart["began_t"] == restarted["began_t"], (restart, restarted)
    assert abs(restart["began_t"] - began) < 0.01, restart  # written as it began
    # Written as the restart begins: nothing it caused comes before it.
    assert all(
        event["t"] >= began
        for event in events[position(events, restart) :]
        if event["event"] in {"client.error", "pool.invalidate"}
    )
    assert not [e for e in events[: position(events, restart)] if e["event"] == "client.error"]
    old = {event["conn"] for event in by_name(events, "pool.connect") if event["t"] < began}
    assert old, "no connection was open when the server restarted"
    errors = between(by_name(events, "client.error"), began)
    return {
        "began": began,
        "over": over,
        "old": old,
        "acquired_after": between(by_name(events, "client.acquired"), began),
        # a query on a pooled connection the restart killed: the lesson's figure
        "dead": [e for e in errors if e["phase"] == "query" and e["conn"] in old],
        "other_query": [e for e in errors if e["phase"] == "query" and e["conn"] not in old],
        # asking for a connection while the server is down: no pool setting prevents it
        "connect": [e for e in errors if e["phase"] == "connect"],
    }


def assert_server_was_down(connect_errors: list[Event], began: float, over: float) -> None:
    """Connect errors are what a client meets while the server is down: each says so, with
    the driver's own exception beside it, and none comes long after the restart is over."""
    for error in connect_errors:
        assert error["conn"] is None, error
        if error["error"] in {"FileNotFoundError", "ConnectionRefusedError"}:
            assert error["message"].startswith(
                f"the server is not accepting connections ({error['error']}: "
            ), error
        else:  # the server's own word while it stops or starts
            assert error["error"] == "CannotConnectNowError", error
        assert began <= error["t"] <= over + 0.5, (error, began, over)


def assert_every_client_served_after(events: list[Event], t: float) -> None:
    served = between(by_name(events, "client.released"), t)
    assert {event["client"] for event in served} == set(group_clients(events[0])["main"])


def test_pre_ping_replaces_dead_connections_at_checkout(
    loadsim: RunLoadsim, database_url: str
) -> None:
    """pre-ping, three runs in a row: the server restarts (or, on an external server, our
    backends are terminated) while every connection is idle in the pool; pool_pre_ping finds
    each dead one at checkout and replaces it, so no query ever fails on a connection the
    restart killed. The only errors are connects made while the embedded server is down."""
    figures = []
    for events in run_restart_scenario(
        loadsim, database_url, "pre-ping", RESTART_RUNS, RESTART_DURATION
    ):
        lesson = restart_lesson(events)
        assert by_name(events, "fault.restart")[0]["in_flight"] == 0

        # The lesson: no query failed on a dead connection, and none was handed out.
        assert lesson["dead"] == [] and lesson["other_query"] == [], lesson
        assert all(event["conn"] not in lesson["old"] for event in lesson["acquired_after"])
        # ...because pre-ping found them: its failed ping is an InvalidatePoolError.
        pinged = [
            event
            for event in between(by_name(events, "pool.invalidate"), lesson["began"])
            if (event["reason"] or "").startswith("InvalidatePoolError")
        ]
        assert pinged and {event["conn"] for event in pinged} <= lesson["old"], pinged
        assert_server_was_down(lesson["connect"], lesson["began"], lesson["over"])
        assert_every_client_served_after(events, lesson["over"] + 0.5)
        # The summary counts the same: connect errors only.
        by_kind = events[-1]["summary"]["errors_by_kind"]
        assert not [kind for kind in by_kind if kind.startswith("query:")], by_kind
        assert sum(by_kind.values()) == len(lesson["connect"])
        figures.append(len(lesson["dead"]))
    assert figures == [0] * RESTART_RUNS


def test_pre_ping_off_fails_queries_then_recovers(loadsim: RunLoadsim, database_url: str) -> None:
    """pre-ping-off, three runs in a row: without pre-ping, the pool hands out a connection
    the restart killed; its query fails, the pool invalidates it (and the rest of that
    generation) and clients go on with new connections."""
    for events in run_restart_scenario(
        loadsim, database_url, "pre-ping-off", RESTART_RUNS, RESTART_DURATION
    ):
        lesson = restart_lesson(events)
        assert by_name(events, "fault.restart")[0]["in_flight"] == 0

        # The lesson: queries failed on dead pooled connections, handed out after the restart.
        dead = lesson["dead"]
        assert dead, "no query failed on a connection the restart killed"
        assert lesson["other_query"] == [], lesson  # fresh connections work
        for error in dead:
            index = position(events, error)
            acquired = last_before(events, index, "client.acquired", client=error["client"])
            assert acquired is not None and acquired["conn"] == error["conn"], error
            assert acquired["t"] >= lesson["began"], (acquired, lesson["began"])
            # SQLAlchemy invalidates the connection before it re-raises the error to the
            # client (other clients' events may come between when several fail at once).
            invalidate = last_before(events, index, "pool.invalidate", client=error["client"])
            assert invalidate is not None and invalidate["conn"] == error["conn"], error
        assert_server_was_down(lesson["connect"], lesson["began"], lesson["over"])

        # ...then the pool recovers: every client is served on new connections.
        last_error = max(event["t"] for event in dead + lesson["connect"])
        assert_every_client_served_after(events, last_error)
        by_kind = events[-1]["summary"]["errors_by_kind"]
        assert sum(n for kind, n in by_kind.items() if kind.startswith("query:")) == len(dead)


def test_long_transactions_deplete_the_pool(loadsim: RunLoadsim, database_url: str) -> None:
    """long-transactions: from t=2 s, five clients sit idle in transaction for 3 s at a time
    on every connection of the pool: the server shows them, the other clients' waits climb
    from milliseconds to around a second, and some of them time out."""
    events = run_scenario(loadsim, database_url, "long-transactions")

    servers = [event["server"] or {} for event in by_name(events, "monitor.stats")]
    assert any(server.get("idle_in_transaction", 0) >= 1 for server in servers), servers

    main = set(group_clients(events[0])["main"])
    waits = [event for event in by_name(events, "client.acquired") if event["client"] in main]
    before = max(event["wait_ms"] for event in waits if event["t"] < 2.0)
    after = max(event["wait_ms"] for event in between(waits, 2.5))
    # Before, the largest wait is a checkout that opened a connection (10 to 25 ms seen);
    # after, clients wait for a long transaction to end (~1 s seen, up to pool_timeout 2 s).
    # Ten times is far inside that gap yet unmistakably "climbed".
    assert after > 10 * before, (before, after)
    assert by_name(events, "client.timeout")  # 3 s holds outlast pool_timeout = 2 s


def test_pooled_beats_unpooled(loadsim: RunLoadsim, database_url: str) -> None:
    """pooled vs unpooled: the same short queries, through a pool of 10 connections opened
    once, and through NullPool, which opens a connection (a new backend) per checkout."""
    result = loadsim("run", "pooled", "unpooled", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    comparison = re.search(r"pooled made (\d+\.\d\d)x the checkouts/s of unpooled", result.stderr)
    assert comparison, result.stderr
    assert float(comparison.group(1)) > 1

    events = parse_events(result.stdout)
    assert {event["scenario"] for event in events} == {"pooled", "unpooled"}
    marks = [
        (event["event"], event["scenario"])
        for event in events
        if event["event"] in {"run.start", "run.end"}
    ]
    assert marks == [
        ("run.start", "pooled"),
        ("run.end", "pooled"),
        ("run.start", "unpooled"),
        ("run.end", "unpooled"),
    ]

    rates = {}
    for name in ("pooled", "unpooled"):
        own = [event for event in events if event["scenario"] == name]
        acquired = by_name(own, "client.acquired")
        connects = by_name(own, "pool.connect")
        if name == "pooled":
            assert len(connects) <= 10
            # Each connection serves many checkouts (about 1000 seen); 50 leaves room for a
            # slow machine and still shows reuse.
            assert len(acquired) >= 50 * len(connects)
        else:
            assert len(connects) == len(acquired)
            assert len({event["conn"] for event in acquired}) == len(acquired)
        elapsed = own[-1]["t"] - own[0]["t"]  # run.start to run.end
        rates[name] = len(acquired) / elapsed
    assert rates["pooled"] > rates["unpooled"], rates
