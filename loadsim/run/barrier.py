"""`run --barrier`: a fleet's shards begin their load at one instant, agreed in the database
under test, and each shard's clock measured against the server's.

No table, no privilege beyond connecting: a shard arrives by taking a session-level advisory
lock, (K, I) for shard I of the barrier K (a 32-bit key from the run id and the scenario), and
listens on the `loadsim_barrier` channel. Arrivals are counted in `pg_locks`, so a shard
that dies while it waits counts no longer (its session ends, and its lock with it), and a
second process claiming the same shard is refused. The arrivals are serialised by a
transaction-level lock on K: exactly one shard, the last, finds all N there. It fixes the
start on the SERVER's clock (its `clock_timestamp()` plus `START_MARGIN_S`, or the
fleet's `--start-at` if that is later) and sends it to the others with NOTIFY; each shard
turns it into its own clock with the offset it measured (`measure_offset`) and sleeps until
then. Closing the barrier's connection releases the shard's lock: nothing is left behind.

The connection must be a session of its own to the server (not through a pooler in
transaction mode, which would hand the lock and the LISTEN to someone else).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from dataclasses import dataclass
from typing import Any

from loadsim.errors import DatabaseUnavailable, LoadsimError, ScenarioError
from loadsim.run.database import CONNECTION_BROKE

CHANNEL = "loadsim_barrier"
#: How far after the last arrival the fleet begins: time for the NOTIFY to reach every shard
#: and for each to check its clock once more.
START_MARGIN_S = 0.25
#: How long a shard waits for the others unless told (`--barrier-timeout`).
DEFAULT_TIMEOUT_S = 600.0
#: How often a waiting shard checks its connection (and counts the arrivals for its error).
_POLL_S = 1.0
#: The last stretch before the start, spent spinning: timers wake up to a millisecond late.
_SPIN_S = 0.002


class BarrierTimeout(LoadsimError):
    """Not every shard reached the barrier within its bound: the load never began."""

    exit_code = 1


@dataclass(frozen=True)
class ClockOffset:
    """The server's clock less ours, from the round trip with the shortest time."""

    offset_s: float
    rtt_s: float

    def to_server(self, local: float) -> float:
        return local + self.offset_s

    def to_local(self, server: float) -> float:
        return server - self.offset_s


async def measure_offset(connection: Any, samples: int = 5) -> ClockOffset:
    """The server's clock against ours: the server's `clock_timestamp()` taken to be read at
    the midpoint of its round trip, best (shortest round trip) of `samples`. Good to half
    that round trip."""
    best: ClockOffset | None = None
    for _ in range(samples):
        sent = time.time()
        server = await connection.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
        back = time.time()
        sample = ClockOffset(offset_s=server - (sent + back) / 2, rtt_s=back - sent)
        if best is None or sample.rtt_s < best.rtt_s:
            best = sample
    assert best is not None
    return best


def _better(before: ClockOffset, after: ClockOffset) -> ClockOffset:
    """The measure to trust: the later one when the two disagree beyond their precision (the
    clock was stepped meanwhile), else the one with the shorter round trip."""
    if abs(after.offset_s - before.offset_s) > (after.rtt_s + before.rtt_s) / 2:
        return after
    return after if after.rtt_s <= before.rtt_s else before


def barrier_key(run_id: str, scenario: str, ordinal: int) -> int:
    """The 32-bit key (as pg_locks shows it: unsigned) of one scenario's barrier in a run;
    `ordinal` tells apart a scenario that a run runs twice."""
    return zlib.crc32(f"loadsim barrier {run_id} {ordinal} {scenario}".encode())


def _signed(key: int) -> int:
    """The key as the int4 that pg_advisory_lock(int4, int4) takes."""
    return key - (1 << 32) if key >= 1 << 31 else key


_COUNT = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
    " AND objsubid = 2 AND classid::bigint = $1"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@dataclass(frozen=True)
class Agreed:
    """What a shard leaves the barrier with."""

    #: The fleet's start, epoch seconds on the server's clock.
    start_server_s: float
    #: This shard's clock against the server's, measured as it left.
    offset: ClockOffset
    #: How long it waited for the others.
    waited_s: float


async def meet(
    connection: Any,
    *,
    key: int,
    shard: int,
    shards: int,
    what: str,
    timeout: float,
    stop: asyncio.Event,
    start_at: float | None = None,
) -> Agreed | None:
    """Arrives at the barrier `key` as `shard` of `shards` and waits, at most `timeout`
    seconds, until all have: the agreed start, or None when `stop` was set first.
    `start_at` (epoch seconds, our clock): the fleet begins no sooner. `what` names the
    barrier in errors. BarrierTimeout when the others do not come; DatabaseUnavailable when
    the connection breaks."""
    began = time.perf_counter()
    offset = await measure_offset(connection)
    released: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    tag = f"{key} "

    def notified(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload.startswith(tag) and not released.done():
            released.set_result(float(payload[len(tag) :]))

    try:
        await connection.add_listener(CHANNEL, notified)
        if stop.is_set():
            return None  # stopped on the way: it never arrives, so nobody begins for it
        start = await _arrive(connection, key, shard, shards, what, offset, start_at)
        if start is None:
            start = await _wait(connection, key, shards, what, timeout, began, stop, released)
            if start is None:
                return None
        waited = time.perf_counter() - began
        # the clock once more, if there is time: a clock stepped while we waited
        if offset.to_local(start) - time.time() > 10 * offset.rtt_s + 0.02:
            offset = _better(offset, await measure_offset(connection, samples=3))
        return Agreed(start_server_s=start, offset=offset, waited_s=waited)
    except CONNECTION_BROKE as error:
        raise DatabaseUnavailable(f"{what}: the connection to the server broke: {error}") from None
    finally:
        with contextlib.suppress(*CONNECTION_BROKE):
            await connection.remove_listener(CHANNEL, notified)


async def _arrive(
    connection: Any,
    key: int,
    shard: int,
    shards: int,
    what: str,
    offset: ClockOffset,
    start_at: float | None,
) -> float | None:
    """Takes this shard's lock: the start when we were the last to arrive, else None."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1::bigint)", key)
        if not await connection.fetchval(
            "SELECT pg_try_advisory_lock($1::int4, $2::int4)", _signed(key), shard
        ):
            raise ScenarioError(
                f"{what}: shard {shard} is already there: another process runs the same "
                "--shard (or JOB_COMPLETION_INDEX)"
            )
        arrived = int(await connection.fetchval(_COUNT, key))
        if arrived < shards:
            return None
        wanted = None if start_at is None else offset.to_server(start_at)
        start = float(
            await connection.fetchval(
                "SELECT greatest(extract(epoch FROM clock_timestamp())::float8 + $1::float8,"
                " coalesce($2::float8, 0))",
                START_MARGIN_S,
                wanted,
            )
        )
        await connection.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{key} {start!r}")
        return start


async def _wait(
    connection: Any,
    key: int,
    shards: int,
    what: str,
    timeout: float,
    began: float,
    stop: asyncio.Event,
    released: asyncio.Future[float],
) -> float | None:
    """Until the last shard's NOTIFY, a stop (None), or the bound (BarrierTimeout)."""
    stopped = asyncio.ensure_future(stop.wait())
    either: set[asyncio.Future[Any]] = {released, stopped}
    try:
        while True:
            left = timeout - (time.perf_counter() - began)
            if left <= 0:
                arrived = int(await connection.fetchval(_COUNT, key))
                raise BarrierTimeout(
                    f"{what}: {arrived} of {shards} shards arrived within "
                    f"{_seconds(timeout)}; the load did not begin"
                )
            done, _ = await asyncio.wait(
                either, timeout=min(_POLL_S, left), return_when=asyncio.FIRST_COMPLETED
            )
            if released in done:
                return released.result()
            if stopped in done:
                return None
            await connection.fetchval("SELECT 1")  # a broken connection would wait in vain
    finally:
        stopped.cancel()


async def sleep_until(moment: float, stop: asyncio.Event) -> None:
    """Until `moment` (epoch seconds, our clock) or a stop: the last millisecond or two spun
    away, as timers are coarser than that."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, moment - time.time() - _SPIN_S)):
            await stop.wait()
    while not stop.is_set() and time.time() < moment:
        pass


def _seconds(value: float) -> str:
    return f"{value:g} s"
