"""`run --barrier`: shard processes started a second apart, as Kubernetes starts a Job's pods,
meet in the database under test and begin their load together; `loadsim merge` says how far
apart they began (`start_skew_ms`), and warns when that is far."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from loadsim.run.barrier import barrier_key
from loadsim.run.database import asyncpg_arguments
from loadsim.run.fleet import start_skew_ms
from tests.conftest import RunLoadsim
from tests.helpers import (
    assert_user_error,
    by_name,
    parse_events,
    run_shards,
    start_loadsim,
)

#: How far apart the shards are started, and how close together they must begin (this
#: machine is small and shared; the barrier itself reaches a few milliseconds).
STAGGER_S = 1.0
TOGETHER_S = 0.05


class ArrivalWatch:
    """When each shard arrived at a barrier, as the server shows it (its advisory lock in
    pg_locks), watched from a thread every 10 ms: a clock apart from the shards' own."""

    def __init__(self, database_url: str, key: int) -> None:
        self.database_url, self.key = database_url, key
        self.seen: dict[int, float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._watch()))

    def __enter__(self) -> ArrivalWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    async def _watch(self) -> None:
        connection = await asyncpg.connect(**asyncpg_arguments(make_url(self.database_url)))
        try:
            while not self._done.is_set():
                rows = await connection.fetch(_SHARDS_THERE, self.key)
                now = time.time()
                for row in rows:
                    self.seen.setdefault(int(row["objid"]), now)
                await asyncio.sleep(0.01)
        finally:
            await connection.close()


_SHARDS_THERE = (
    "SELECT objid::bigint AS objid FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND objsubid = 2 AND classid::bigint = $1"
)


def staggered_shards(
    database_url: str, directory: Path, run_id: str, *extra: str, count: int = 3
) -> list[Path]:
    """`count` shard processes of one run, started STAGGER_S apart; their logs (every
    shard's clients think alike before their first checkout: one seed)."""
    return run_shards(
        database_url, directory, count, "--seed", "7", *extra, run_id=run_id, stagger=STAGGER_S
    )


def epoch(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["ts"]).timestamp()


def starts_and_first_clients(logs: list[Path]) -> tuple[list[dict[str, Any]], list[float]]:
    """Each shard's run.start, and when its first client event was (epoch seconds)."""
    starts, first = [], []
    for log in logs:
        events = parse_events(log.read_text())
        (start,) = by_name(events, "run.start")
        starts.append(start)
        first.append(min(epoch(e) for e in events if e["event"].startswith("client.")))
    return starts, first


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def test_staggered_shards_begin_together_at_the_barrier(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    with ArrivalWatch(database_url, barrier_key("barrier01", "normal", 1)) as watch:
        logs = staggered_shards(database_url, tmp_path, "barrier01", "--barrier")
    starts, first_clients = starts_and_first_clients(logs)
    # one agreed instant, on the server's clock, and every shard began at it
    assert len({start["barrier_start_server_s"] for start in starts}) == 1
    agreed = starts[0]["barrier_start_server_s"]
    for start in starts:
        assert abs(start["began_server_s"] - agreed) < TOGETHER_S, start
        assert abs(start["server_clock_offset_ms"]) < 5  # one machine: one clock
    assert spread([start["began_server_s"] for start in starts]) < TOGETHER_S
    assert spread([start["began_epoch_s"] for start in starts]) < TOGETHER_S
    assert spread(first_clients) < TOGETHER_S, first_clients
    # each waited from its arrival, as the server saw it, to the start: the stagger. The
    # last to arrive leaves at once, and may come and go between two looks at pg_locks.
    last = min(range(3), key=lambda index: starts[index]["start_wait_s"])
    assert starts[last]["barrier_wait_s"] < 0.2  # it found the others there
    assert starts[last]["start_wait_s"] == pytest.approx(0.25, abs=0.2)  # the margin
    earlier = sorted(set(range(3)) - {last})
    assert set(earlier) <= set(watch.seen), watch.seen
    # (process start-up on this shared machine moves arrivals by up to a second or so: the
    # stagger the shards met is their arrivals, not the moments they were started)
    for index in earlier:
        start = starts[index]
        assert start["start_wait_s"] == pytest.approx(
            start["began_epoch_s"] - watch.seen[index], abs=0.1
        ), (start, watch.seen)
        assert start["barrier_wait_s"] < start["start_wait_s"]
        assert start["start_wait_s"] > starts[last]["start_wait_s"]
    assert max(start["start_wait_s"] for start in starts) > STAGGER_S / 2  # it waited
    # merge reports the skew, and does not warn of it
    merged = loadsim("merge", *map(str, logs))
    assert merged.returncode == 0, merged.stderr
    summary = parse_events(merged.stdout)[-1]
    assert summary["event"] == "run.summary"
    assert 0 <= summary["start_skew_ms"] < TOGETHER_S * 1000
    assert "began" not in merged.stderr


def test_without_the_barrier_staggered_shards_begin_apart(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    logs = staggered_shards(database_url, tmp_path, "barrier02")
    starts, first_clients = starts_and_first_clients(logs)
    assert all("start_wait_s" not in start and "barrier_wait_s" not in start for start in starts)
    assert first_clients == sorted(first_clients)  # each began when it was ready
    assert spread(first_clients) > STAGGER_S, first_clients  # 2 s, less start-up noise
    began = [start["began_server_s"] for start in starts]  # measured without the barrier too
    merged = loadsim("merge", *map(str, logs))
    assert merged.returncode == 0, merged.stderr
    skew = parse_events(merged.stdout)[-1]["start_skew_ms"]
    assert skew == pytest.approx(spread(began) * 1000, abs=0.01)
    assert skew > STAGGER_S * 1000
    assert f"the shards began {skew:.0f} ms apart (more than 50 ms)" in merged.stderr


def test_the_barrier_waits_for_start_at(database_url: str, tmp_path: Path) -> None:
    """--barrier with --start-at: the shards meet, then begin together at that time."""
    start_at = round(time.time() + 5, 3)  # as the flag gives it
    logs = staggered_shards(
        database_url, tmp_path, "barrier03", "--barrier", "--start-at", f"{start_at:.3f}", count=2
    )
    starts, first_clients = starts_and_first_clients(logs)
    for start in starts:
        # at that time, as the clocks agree: converted to the server's and back (one machine)
        assert start_at - 0.005 <= start["began_epoch_s"] < start_at + TOGETHER_S, start
        assert start["barrier_start_server_s"] == pytest.approx(start_at, abs=0.01)
        assert start["start_wait_s"] > start["barrier_wait_s"]  # it waited past the meeting
    assert spread(first_clients) < TOGETHER_S, first_clients


def advisory_locks(database_url: str, key: int) -> int:
    """Shards at the barrier `key` now, as pg_locks shows their arrivals."""

    async def count() -> int:
        connection = await asyncpg.connect(**asyncpg_arguments(make_url(database_url)))
        try:
            found: int = await connection.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objsubid = 2 AND classid::bigint = $1",
                key,
            )
            return found
        finally:
            await connection.close()

    return asyncio.run(count())


def wait_for_arrivals(database_url: str, key: int, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while advisory_locks(database_url, key) < count:
        assert time.monotonic() < deadline, "no shard arrived at the barrier"
        time.sleep(0.1)


def test_a_barrier_not_every_shard_reaches_fails_after_its_bound(
    loadsim: RunLoadsim, database_url: str
) -> None:
    began = time.monotonic()
    result = loadsim(
        "run",
        "normal",
        "--shard",
        "0/3",
        "--run-id",
        "barrier04",
        "--barrier",
        "--barrier-timeout",
        "1s",
        "--quiet",
        "--database-url",
        database_url,
    )
    took = time.monotonic() - began
    assert_user_error(result, 1, "--barrier (run barrier04", "1 of 3 shards arrived within 1 s")
    assert 1 <= took < 15
    assert advisory_locks(database_url, barrier_key("barrier04", "normal", 1)) == 0


def test_a_signal_at_the_barrier_stops_cleanly_and_a_shard_is_claimed_once(
    loadsim: RunLoadsim, database_url: str, tmp_path: Path
) -> None:
    arguments = ("--shard", "0/2", "--run-id", "barrier05", "--barrier", "--quiet")
    waiting = start_loadsim(
        "run", "normal", *arguments, cwd=tmp_path, env={"DATABASE_URL": database_url}
    )
    key = barrier_key("barrier05", "normal", 1)
    try:
        wait_for_arrivals(database_url, key, 1)
        # a second process that claims the same shard is refused, and the first still waits
        twin = loadsim("run", "normal", *arguments, "--database-url", database_url)
        assert_user_error(twin, 2, "shard 0 is already there", "--shard")
        assert waiting.poll() is None
        time.sleep(0.5)
        waiting.send_signal(signal.SIGINT)
        output, errors = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()
    assert waiting.returncode == 130, errors
    assert "Traceback" not in errors
    events = parse_events(output)
    (start,) = by_name(events, "run.start")
    assert 0.5 <= start["start_wait_s"] < 30  # as waited, until the signal
    assert "began_epoch_s" not in start  # no load began
    (end,) = by_name(events, "run.end")
    assert end["summary"]["interrupted"] is True
    assert end["summary"]["checkouts"] == 0
    assert advisory_locks(database_url, key) == 0  # its arrival ended with it


@pytest.mark.parametrize(
    ("arguments", "env", "detail"),
    [
        (["--barrier"], {"DATABASE_URL": "postgresql://x@127.0.0.1/x"}, "--barrier is for a shard"),
        (["--barrier", "--shard", "0/2", "--run-id", "x"], {}, "--database-url or DATABASE_URL"),
        (["--barrier-timeout", "5s"], {}, "add --barrier"),
        (
            ["--barrier", "--shard", "0/2", "--run-id", "x", "--barrier-timeout", "soon"],
            {"DATABASE_URL": "postgresql://x@127.0.0.1/x"},
            "--barrier-timeout 'soon'",
        ),
        (
            ["--barrier", "--shard", "0/2", "--run-id", "x", "--barrier-timeout", "0s"],
            {"DATABASE_URL": "postgresql://x@127.0.0.1/x"},
            "longer than 0",
        ),
    ],
)
def test_barrier_misused_is_one_line(
    loadsim: RunLoadsim, arguments: list[str], env: dict[str, str], detail: str
) -> None:
    result = loadsim("run", "normal", *arguments, env={"LOADSIM_RUN_ID": "", **env})
    assert_user_error(result, 2, detail)


def test_start_skew_is_on_the_servers_clock_when_every_shard_measured_it() -> None:
    # shards on machines whose clocks are 5 s apart began 10 ms apart, as the server saw it
    shards = [
        {"began_epoch_s": 100.0, "began_server_s": 200.000},
        {"began_epoch_s": 105.0, "began_server_s": 200.010},
    ]
    assert start_skew_ms(shards) == 10.0
    # one machine's instances (--instances) have their own clock only
    assert start_skew_ms([{"began_epoch_s": 1.0}, {"began_epoch_s": 1.25}]) == 250.0
    # a shard stopped before its load began is left out; one that began says nothing
    assert start_skew_ms([*shards, {"start_wait_s": 3.0}]) == 10.0
    assert start_skew_ms(shards[:1]) is None
    assert start_skew_ms([{}, {}]) is None  # logs older than these fields
