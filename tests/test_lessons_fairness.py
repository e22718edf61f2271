"""Two lessons of issue 13: `sequential` (one client: one connection and one backend for the
whole run) and the async pool's queue jumps (`queue_jumps`, the `fairness` scenario).

The jumps are checked three ways: the line of waiters driven by hand, step by step, against
what a scripted sequence of waits says happened, and against a brute-force count (a scan
of every waiter, the definition as written); a run without contention, on the real server,
where there are none; and the `fairness` scenario on the real server, where the run's
count is recomputed independently from the stream's own client.waiting / client.acquired /
client.timeout / client.error / pool.connect events.
"""

from __future__ import annotations

import asyncio
import io
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console
from sqlalchemy.engine import make_url

from loadsim.report import build_report
from loadsim.run.dashboard import DashboardSnapshot, render
from loadsim.run.database import asyncpg_arguments
from loadsim.run.metrics import RunMetrics
from loadsim.run.queue_jumps import WaitLine
from tests.helpers import (
    RunLoadsim,
    by_name,
    charts_of,
    parse_events,
    run_events,
    start_loadsim,
    wait_for_start,
)

Event = dict[str, Any]


# ------------------------------------------------------------- the line, driven by hand


def scripted() -> RunMetrics:
    return RunMetrics(clients=4, capacity=1, started=0.0)


A, B, C, D = 0, 1, 2, 3


def test_a_later_waiter_granted_first_jumped_the_queue() -> None:
    """A waits, B waits, B is granted: one jump; then A is granted: none more."""
    metrics = scripted()
    metrics.wait_started(A)
    metrics.wait_started(B)
    metrics.wait_ended(B, granted=True)
    assert metrics.queue_jumps == 1
    metrics.wait_ended(A, granted=True)
    assert metrics.queue_jumps == 1


def test_first_come_first_served_is_no_jump() -> None:
    metrics = scripted()
    for client in (A, B, C):
        metrics.wait_started(client)
    for client in (A, B, C):
        metrics.wait_ended(client, granted=True)
    metrics.wait_started(A)  # alone in the line
    metrics.wait_ended(A, granted=True)
    assert metrics.queue_jumps == 0


def test_a_waiter_that_later_times_out_was_still_waiting() -> None:
    """A checkout granted before an earlier waiter's timeout jumped it; after the timeout
    the line no longer holds it, and a timeout is never a jump itself."""
    metrics = scripted()
    metrics.wait_started(A)
    metrics.wait_started(B)
    metrics.wait_started(C)
    metrics.wait_ended(B, granted=True)  # A still waits (it times out later): a jump
    assert metrics.queue_jumps == 1
    metrics.wait_ended(A)  # A's timeout (or error, or cancellation): no jump
    metrics.wait_ended(C, granted=True)  # nobody before C waits any more
    assert metrics.queue_jumps == 1


def test_a_client_the_pool_opens_a_connection_for_leaves_the_line() -> None:
    """A connect serves its own client: it takes no one's turn, and a client connecting is
    not waiting for a connection handed back."""
    metrics = scripted()
    metrics.wait_started(A)
    metrics.connecting(A)  # the pool opens a connection for A
    metrics.wait_started(B)
    metrics.wait_ended(B, granted=True)  # an idle one handed to B while A connects
    metrics.wait_ended(A, granted=True)
    assert metrics.queue_jumps == 0
    metrics.wait_started(C)
    metrics.wait_started(D)
    metrics.connecting(D)  # overflow opened for D while C waits for one handed back
    metrics.wait_ended(D, granted=True)
    assert metrics.queue_jumps == 0


def test_jumps_are_counted_per_window_and_in_the_summary() -> None:
    metrics = scripted()
    metrics.wait_started(A)
    metrics.wait_started(B)
    metrics.wait_ended(B, granted=True)
    metrics.acquired(1.0)
    metrics.wait_ended(A, granted=True)
    metrics.acquired(2.0)
    first = metrics.snapshot(1.0, {})
    assert first["totals"]["queue_jumps"] == first["window"]["queue_jumps"] == 1
    assert first["queue_jump_share"] == 0.5
    second = metrics.snapshot(2.0, {})
    assert second["window"]["queue_jumps"] == 0 and second["totals"]["queue_jumps"] == 1
    assert second["queue_jump_share"] is None  # no checkout in the window
    summary = metrics.summary(2.0, {"connects": 1})
    assert summary["queue_jumps"] == 1 and summary["queue_jump_share"] == 0.5


def brute_force_jumps(operations: list[tuple[str, int]]) -> int:
    """The definition as written, by a scan of every waiter at each grant: a grant jumped if
    a client that began waiting earlier is still waiting."""
    waiting: dict[int, int] = {}  # client → when (operation number) it began to wait
    jumps = 0
    for when, (operation, client) in enumerate(operations):
        if operation == "wait":
            waiting[client] = when
        elif client in waiting:
            began = waiting.pop(client)
            if operation == "grant" and any(other < began for other in waiting.values()):
                jumps += 1
    return jumps


def test_the_line_counts_what_a_scan_of_every_waiter_counts() -> None:
    """Random sequences of asks, grants in any order, timeouts and connects: the line's
    count (O(1) a step) is the brute-force count, and it keeps no more than about twice the
    waiters however long one of them starves."""
    rng = random.Random(13)
    for _ in range(200):
        metrics = RunMetrics(clients=30, capacity=5, started=0.0)
        operations: list[tuple[str, int]] = []
        waiting: list[int] = []
        for _ in range(rng.randrange(1, 300)):
            idle = [client for client in range(30) if client not in waiting]
            if idle and (not waiting or rng.random() < 0.5):
                client = rng.choice(idle)
                waiting.append(client)
                metrics.wait_started(client)
                operations.append(("wait", client))
                continue
            client = waiting.pop(rng.randrange(len(waiting)))
            kind = rng.choices(["grant", "timeout", "connect"], weights=[6, 1, 1])[0]
            if kind == "grant":
                metrics.wait_ended(client, granted=True)
            elif kind == "timeout":
                metrics.wait_ended(client)
            else:
                metrics.connecting(client)
                metrics.wait_ended(client, granted=True)  # (already out of the line)
            operations.append((kind, client))
        assert metrics.queue_jumps == brute_force_jumps(operations), operations

    line = WaitLine()
    line.join(-1)  # starves from the first to the last
    for client in range(100_000):
        line.join(client)
        assert line.leave(client)  # -1 asked first and still waits
    assert len(line) == 1 and len(line._line) <= 2 * len(line) + WaitLine._SLACK + 1


# ------------------------------------------------------------ the events, independently


def jumps_in(events: list[Event]) -> tuple[int, int]:
    """(queue jumps, checkouts) recomputed from one instance's events alone.

    A wait runs from its `client.waiting` to the client's `client.acquired` (granted),
    `client.timeout` or connect `client.error`. A wait during which the pool opened a
    connection for the client (a `pool.connect` naming it) was served by that connect: it is
    out of the line from its start (in these runs the pool connects for a client as soon as
    it asks; the tests check that). A granted wait jumped if an earlier wait still in the
    line had not ended."""
    waits: list[dict[str, Any]] = []
    open_waits: dict[Any, dict[str, Any]] = {}  # client → its wait under way
    for position, event in enumerate(events):
        name, client = event["event"], event.get("client")
        if name == "client.waiting":
            wait = {"start": position, "end": None, "connected": False, "granted": False}
            waits.append(wait)
            open_waits[client] = wait
        elif name == "pool.connect" and client in open_waits:
            open_waits[client]["connected"] = True
        elif name in ("client.acquired", "client.timeout") or (
            name == "client.error" and event["phase"] == "connect"
        ):
            ended = open_waits.pop(client, None)
            if ended is not None:
                ended["end"], ended["granted"] = position, name == "client.acquired"
    in_line = [wait for wait in waits if not wait["connected"]]
    jumps = 0
    for wait in in_line:
        if wait["granted"]:
            jumps += any(
                other["start"] < wait["start"]
                and (other["end"] is None or other["end"] > wait["end"])
                for other in in_line
            )
    return jumps, len(by_name(events, "client.acquired"))


#: The most a connect may start after its client asked, and still count as opened at once:
#: between the two there is only code that never yields (some 0.1 ms measured).
AT_ONCE_MS = 5.0


def connects_at_once(events: list[Event]) -> bool:
    """Every pool.connect was opened for a client as it asked: its connect took the client's
    whole wait so far but for a few ms, so the client never waited in the line first."""
    asked: dict[Any, float] = {}
    for event in events:
        if event["event"] == "client.waiting":
            asked[event["client"]] = event["t"]
        elif event["event"] == "pool.connect":
            waited_ms = (event["t"] - asked[event["client"]]) * 1000
            if event["connect_ms"] is None or waited_ms - event["connect_ms"] > AT_ONCE_MS:
                return False
    return True


def summary_of(events: list[Event]) -> dict[str, Any]:
    assert events[-1]["event"] == "run.end"
    summary: dict[str, Any] = events[-1]["summary"]
    return summary


# --------------------------------------------------------------------- on the real server


def test_sequential_uses_one_connection_and_one_backend(database_url: str, tmp_path: Path) -> None:
    """sequential: one client, one operation after another. One connect for the whole run,
    every checkout on the same connection and the same server backend — the one the
    server's own pg_stat_activity shows for our application_name while the run goes on."""
    process = start_loadsim(
        "run", "sequential", "--duration", "2s", "--database-url", database_url, "-q", cwd=tmp_path
    )
    try:
        first = wait_for_start_event(process)
        server_pids = asyncio.run(our_backends(database_url, first["application_name"]))
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    events = [first, *parse_events(stdout)]
    assert {event["scenario"] for event in events} == {"sequential"}

    connects = by_name(events, "pool.connect")
    assert len(connects) == 1
    checkouts = by_name(events, "client.acquired")
    assert len(checkouts) > 1
    backends = {event["backend_pid"] for event in checkouts}
    conns = {event["conn"] for event in checkouts}
    assert backends == {connects[0]["backend_pid"]} and None not in backends
    assert conns == {connects[0]["conn"]}
    assert server_pids == backends  # the server saw that one backend, and no other of ours
    for stats in by_name(events, "monitor.stats"):
        assert stats["server"] is not None and sum(stats["server"].values()) == 1, stats
    summary = summary_of(events)
    assert summary["connects"] == 1 and summary["checkouts"] == len(checkouts)
    assert summary["queue_jumps"] == 0 and summary["max_pending_requests"] == 1


def wait_for_start_event(process: subprocess.Popen[str]) -> Event:
    return parse_events(wait_for_start(process))[0]


async def our_backends(database_url: str, application_name: str) -> set[int]:
    """The backends of our sessions by the server's own view, once there is one (up to 10 s);
    read twice, half a second apart, so that a second backend would show."""
    connection = await asyncpg.connect(**asyncpg_arguments(make_url(database_url)))
    try:
        query = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
        seen: set[int] = set()
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            seen = {row["pid"] for row in await connection.fetch(query, application_name)}
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        seen |= {row["pid"] for row in await connection.fetch(query, application_name)}
        return seen
    finally:
        await connection.close()


def test_no_queue_jumps_without_contention(loadsim: RunLoadsim, database_url: str) -> None:
    """As many clients as the pool has connections: no one ever waits for a connection
    handed back, so no checkout jumps anyone — by the run's count and by the events."""
    events = run_events(
        loadsim, "normal", "--clients", "5", "--duration", "2s", "--database-url", database_url,
        "--events", "all",  # client.waiting, where each wait began in the stream's order
    )  # fmt: skip
    summary = summary_of(events)
    assert summary["checkouts"] > 50
    assert summary["queue_jumps"] == 0 and summary["queue_jump_share"] == 0.0
    assert connects_at_once(events)  # (as jumps_in reads them)
    assert jumps_in(events) == (0, summary["checkouts"])
    for stats in by_name(events, "monitor.stats"):
        assert stats["totals"]["queue_jumps"] == 0 and stats["queue_jump_share"] in (0.0, None)


def test_fairness_shows_queue_jumps_counted_from_the_waits(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    """fairness: 300 clients on a pool of 5. Checkouts jump the queue; the run's count is
    what the stream's own waits say (recomputed here from the events alone), the share is
    that count over the checkouts, the snapshots' windows add up to the totals, and the
    summary table and the report's "how the work was shared" chart show the same count."""
    log = tmp_path / "fairness.jsonl"
    result = loadsim(
        "run", "fairness", "--duration", "3s", "--database-url", database_url, "--output", str(log),
        "--events", "all",  # client.waiting, where each wait began in the stream's order
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = parse_events(result.stdout)
    summary = summary_of(events)
    assert summary["max_pending_requests"] > 100  # contention: a long line
    connects = by_name(events, "pool.connect")
    assert len(connects) == 5 and connects_at_once(events)  # (as jumps_in reads them)
    jumps, checkouts = jumps_in(events)
    assert checkouts == summary["checkouts"] > 100
    assert jumps > 0
    assert summary["queue_jumps"] == jumps
    assert summary["queue_jump_share"] == round(jumps / checkouts, 4)

    stats = by_name(events, "monitor.stats")
    assert stats
    assert (
        sum(snapshot["window"]["queue_jumps"] for snapshot in stats)
        == (stats[-1]["totals"]["queue_jumps"])
    )
    assert stats[-1]["totals"]["queue_jumps"] <= jumps
    for snapshot in stats:
        window = snapshot["window"]
        if window["checkouts"]:
            expected = round(window["queue_jumps"] / window["checkouts"], 4)
            assert snapshot["queue_jump_share"] == expected, snapshot

    row = f"{jumps:,} ({jumps / checkouts:.0%})"
    assert any(
        line.startswith("queue jumps (share of checkouts)") and line.endswith(row)
        for line in result.stderr.splitlines()
    ), result.stderr

    report = build_report([log], tmp_path / "report")
    chart = charts_of(report, "fairness")["distribution"]
    assert chart["queue_jumps"] == jumps
    assert chart["queue_jump_share"] == round(jumps / checkouts, 4)


def test_the_dashboard_shows_queue_jumps() -> None:
    snapshot = DashboardSnapshot(
        scenario="fairness",
        elapsed_s=2.0,
        duration_s=10.0,
        pool_size=5,
        capacity=5,
        used=5,
        idle=0,
        overflow=0,
        waiting=295,
        oldest_wait_ms=1500.0,
        checkouts=800,
        timeouts=0,
        errors=0,
        leaks=0,
        queue_jumps=600,
    )
    console = Console(record=True, width=140, file=io.StringIO(), color_system=None)
    console.print(render(snapshot))
    screen = console.export_text()
    assert any(
        "queue jumps" in row and "600 of 800 checkouts (75%)" in row for row in screen.splitlines()
    ), screen
