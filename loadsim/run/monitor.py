"""Pool event listeners and live counters: the one source of truth for pool state.

Listeners hang on `engine.sync_engine` and run synchronously inside SQLAlchemy's greenlet, in
the task of the client that caused them, so the `current_client` contextvar set by the client
is visible here. Each DBAPI connection gets a small stable id (`conn`) for the run.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import greenlet
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool

from loadsim.config.scenario import MonitorSettings
from loadsim.run.database import ServerObserver
from loadsim.run.events import EventLog, milliseconds
from loadsim.run.metrics import RunMetrics
from loadsim.run.pool_internals import close_cause, queue_is_full
from loadsim.run.server_memory import MemorySampler

#: The client (an integer id) on whose behalf the current task uses the pool.
current_client: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "loadsim_client", default=None
)


@dataclass
class PoolCounters:
    """Running totals of what the pool did, counted from its own events."""

    connects: int = 0
    closes: int = 0
    invalidations: int = 0
    detaches: int = 0
    max_open: int = 0
    max_pending_requests: int = 0
    leaks_suspected: int = 0
    leaks_reclaimed: int = 0
    leaks_collected: int = 0


class LeakReclaimed(Exception):
    """Why the monitor invalidated a connection (the reason on its `pool.invalidate`)."""


@dataclass(slots=True)
class Checkout:
    """A connection out of the pool: who has it, since when, and (with leak detection on) a
    weak reference to SQLAlchemy's proxy, to reclaim it, and where it was taken."""

    conn: int | None
    client: int | None
    since: float
    proxy: weakref.ref[Any] | None = None
    acquired_at: list[str] | None = None
    suspected: bool = False
    reclaimed: bool = False


class PoolMonitor:
    """Listens to one engine's pool and emits a `pool.*` event per SQLAlchemy pool event.

    It also knows every checkout in progress, which is how it finds leaks: a checkout held
    past `leak_threshold` is reported, and one held past `leak_reclaim` is taken back
    (invalidated, so the pool opens a fresh connection in its place).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        events: EventLog,
        metrics: RunMetrics,
        settings: MonitorSettings | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self._waiting_since: dict[int, float] = {}  # client → when it asked for a connection
        self.settings = settings or MonitorSettings()
        self._tracks_leaks = self.settings.leak_threshold is not None
        self.pool: Pool = engine.sync_engine.pool
        self.events = events
        self.counters = PoolCounters()
        self.disposing = False
        self._ids: dict[int, int] = {}  # id(dbapi connection) → conn
        self._pids: dict[int, int | None] = {}  # conn → backend pid, while it is open
        #: conns between their `connect` and their close: those `state()` counts open (a
        #: first connect is registered earlier, while the dialect initialises it)
        self._connected: set[int] = set()
        self._connections_seen = 0
        self._close_cause: dict[int, str] = {}  # conn → why it is about to be closed
        self._open = 0  # connections open now, counted from events (any pool class)
        self._used = 0  # connections checked out now
        self._queue_pool = isinstance(self.pool, QueuePool)
        self._pool_size = self.pool.size() if isinstance(self.pool, QueuePool) else 0
        self._checkouts: dict[int, Checkout] = {}  # id(connection record) → checkout
        #: client → the conn it checked out most recently
        self.last_checkout: dict[int, int] = {}
        self._connect_started: dict[int | None, float] = {}  # client → when it began connecting

    # ---------------------------------------------------------------------- public

    def attach(self) -> None:
        """Listens to the pool. Events that only describe (no count depends on them) are
        listened to only when they are written: a `reset` listener costs every checkin."""
        target = self.engine.sync_engine
        described_only = {"first_connect", "soft_invalidate", "reset"}
        for name in (
            "connect",
            "first_connect",
            "checkout",
            "checkin",
            "close",
            "close_detached",
            "detach",
            "invalidate",
            "soft_invalidate",
            "reset",
        ):
            if name not in described_only or f"pool.{name}" in self.events.wanted:
                event.listen(target, name, getattr(self, f"_on_{name}"))
        event.listen(target, "do_connect", self._on_do_connect)

    def waiting_started(self, client: int, now: float) -> None:
        waiting = self._waiting_since
        waiting[client] = now
        if len(waiting) > self.counters.max_pending_requests:
            self.counters.max_pending_requests = len(waiting)
        self.metrics.wait_started(client)

    def waiting_ended(self, client: int, *, granted: bool = False) -> None:
        """`client`'s wait is over: `granted` a connection, or not (a timeout, an error, a
        cancellation). Called again for a wait already over, it does nothing."""
        if self._waiting_since.pop(client, None) is not None:
            self.metrics.wait_ended(client, granted=granted)

    def waiting_clients(self) -> list[int]:
        """The clients waiting for a connection, in the order they began to wait."""
        return list(self._waiting_since)

    def oldest_wait_ms(self) -> float:
        """How long the longest-waiting client has been waiting (0 when none is)."""
        if not self._waiting_since:
            return 0.0
        return round((time.perf_counter() - min(self._waiting_since.values())) * 1000, 3)

    def backend_pids(self) -> list[int]:
        """The server pid of every connection open now, by the pool's own events (those
        `connections_total` counts)."""
        pids = self._pids
        return [pid for conn in self._connected if (pid := pids.get(conn)) is not None]

    def backend_pid(self, conn: int | None) -> int | None:
        """The server process behind a connection, while it is open."""
        return None if conn is None else self._pids.get(conn)

    def counters_now(self) -> dict[str, int]:
        return asdict(self.counters)

    def state(self) -> dict[str, int]:
        """The pool's counts right now, HikariCP style: total, in use, idle, waiting.

        Counted from the pool's own events rather than read from the pool: SQLAlchemy fires
        `checkin` before the connection is back in its queue, and counts a connection being
        opened as checked out before it exists, so its counters lag or lead the event that
        is being described. These are the counts right after the event.
        """
        used, total = self._used, self._open
        return {
            "connections_total": total,
            "connections_used": used,
            "connections_idle": max(0, total - used),
            "overflow": max(0, total - self._pool_size) if self._queue_pool else 0,
            "pending_requests": len(self._waiting_since),
        }

    def check_leaks(self) -> None:
        """Reports checkouts held past the threshold, and reclaims those held past reclaim."""
        threshold, reclaim = self.settings.leak_threshold, self.settings.leak_reclaim
        if threshold is None:
            return
        now = time.perf_counter()
        for checkout in list(self._checkouts.values()):
            held = now - checkout.since
            if not checkout.suspected and held >= threshold:
                checkout.suspected = True
                self.counters.leaks_suspected += 1
                self.events.emit(
                    "monitor.leak_suspected",
                    client=checkout.client,
                    conn=checkout.conn,
                    held_ms=round(held * 1000, 3),
                    threshold_ms=round(threshold * 1000, 3),
                    acquired_at=checkout.acquired_at,
                )
            if reclaim is not None and not checkout.reclaimed and held >= reclaim:
                proxy = checkout.proxy() if checkout.proxy is not None else None
                if proxy is None or not proxy.is_valid:
                    continue
                checkout.reclaimed = True
                self.counters.leaks_reclaimed += 1
                self.events.emit(
                    "monitor.leak_reclaimed",
                    client=checkout.client,
                    conn=checkout.conn,
                    held_ms=round(held * 1000, 3),
                )
                # closes it and frees its place in the pool
                proxy.invalidate(LeakReclaimed(f"held {held:.1f}s, past leak_reclaim"))

    # ------------------------------------------------------------------- listeners

    def _emit(self, name: str, conn: int | None, **fields: Any) -> None:
        if name not in self.events.wanted:
            return  # not written: skip the work of describing it (counts are kept anyway)
        self.events.emit_fields(
            name,
            {
                "conn": conn,
                "backend_pid": self.backend_pid(conn),
                "client": current_client.get(),
                **fields,
                **self.state(),
            },
        )

    def _register(self, dbapi_connection: Any) -> int:
        conn = self._ids.get(id(dbapi_connection))
        if conn is None:
            self._connections_seen += 1
            conn = self._connections_seen
            self._ids[id(dbapi_connection)] = conn
            self._pids[conn] = _backend_pid(dbapi_connection)
        return conn

    def _drop_pid(self, conn: int | None) -> None:
        """After a connection's last event: a NullPool run opens one per checkout."""
        if conn is not None:
            self._pids.pop(conn, None)
            self._connected.discard(conn)

    def _forget(self, dbapi_connection: Any) -> int | None:
        conn = self._ids.pop(id(dbapi_connection), None)
        if conn is not None:
            self._open -= 1
            self.counters.closes += 1
        return conn

    def _on_do_connect(self, *_: Any) -> None:
        client = current_client.get()
        self._connect_started[client] = time.perf_counter()
        if client is not None:
            self.metrics.connecting(client)  # served by its own connect: out of the line

    def _on_connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        conn = self._register(dbapi_connection)
        self._open += 1
        self._connected.add(conn)
        counters = self.counters
        counters.connects += 1
        counters.max_open = max(counters.max_open, self._open)
        started = self._connect_started.pop(current_client.get(), None)
        connect_ms = None
        if started is not None:
            connect_ms = milliseconds(time.perf_counter() - started)
            self.metrics.create_time.add(connect_ms)
        self._emit("pool.connect", conn, connect_ms=connect_ms)

    def _on_first_connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        self._emit("pool.first_connect", self._register(dbapi_connection))

    def _on_checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        self._used += 1
        now = time.perf_counter()
        self.metrics.utilisation.change(+1, now)
        conn = self._ids.get(id(dbapi_connection))
        client = current_client.get()
        if client is not None and conn is not None:
            self.last_checkout[client] = conn
        checkout = Checkout(conn, client, now)
        if self._tracks_leaks:
            checkout.proxy = weakref.ref(proxy)
            checkout.acquired_at = _where_acquired()
        self._checkouts[id(record)] = checkout
        self._emit("pool.checkout", conn)

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        checkout = self._checkouts.pop(id(record), None)
        if checkout is not None:  # (a failed pre-ping checks in what was never checked out)
            self._used -= 1
            self.metrics.utilisation.change(-1, time.perf_counter())
        if dbapi_connection is None:  # invalidated while checked out: already closed
            conn = checkout.conn if checkout is not None else None
        else:
            conn = self._ids.get(id(dbapi_connection))
            if conn is not None and queue_is_full(self.pool):
                self._close_cause[conn] = "overflow" if self._queue_pool else "returned"
        self._emit("pool.checkin", conn)
        if checkout is not None and checkout.suspected and not checkout.reclaimed:
            self.events.emit(
                "monitor.leak_returned",
                client=checkout.client,
                conn=checkout.conn,
                held_ms=_ms_since(checkout.since),
            )

    def _on_close(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        conn = self._ids.get(id(dbapi_connection))
        cause = self._close_cause.pop(conn, None) if conn is not None else None
        if cause is None:
            cause = self._cause_from_record(record)
        self._forget(dbapi_connection)
        self._emit("pool.close", conn, cause=cause)
        self._drop_pid(conn)

    def _cause_from_record(self, record: ConnectionPoolEntry) -> str:
        if self.disposing:
            return "disposed"
        return close_cause(self.pool, record) or "closed"

    def _on_close_detached(self, dbapi_connection: Any) -> None:
        conn = self._forget(dbapi_connection)
        self._emit("pool.close_detached", conn)
        self._drop_pid(conn)

    def _on_detach(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        self.counters.detaches += 1
        checkout = self._checkouts.pop(id(record), None)
        if checkout is not None:
            self._used -= 1
            self.metrics.utilisation.change(-1, time.perf_counter())
        self._emit("pool.detach", self._ids.get(id(dbapi_connection)))
        if checkout is not None:
            # loadsim never detaches on purpose: this is a checked-out connection whose holder
            # was garbage-collected (a cancelled task that never returned it).
            self.counters.leaks_collected += 1
            self.events.emit(
                "monitor.leak_collected",
                client=checkout.client,
                conn=checkout.conn,
                held_ms=_ms_since(checkout.since),
            )

    def _on_invalidate(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exception: BaseException | None
    ) -> None:
        conn = self._ids.get(id(dbapi_connection))
        self.counters.invalidations += 1
        if conn is not None:
            self._close_cause[conn] = "invalidated"
        self._emit("pool.invalidate", conn, reason=_describe(exception))

    def _on_soft_invalidate(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exception: BaseException | None
    ) -> None:
        self._emit(
            "pool.soft_invalidate",
            self._ids.get(id(dbapi_connection)),
            reason=_describe(exception),
        )

    def _on_reset(self, dbapi_connection: Any, record: ConnectionPoolEntry, state: Any) -> None:
        self._emit(
            "pool.reset",
            self._ids.get(id(dbapi_connection)),
            terminate_only=bool(getattr(state, "terminate_only", False)),
        )


#: Samples in a row after which a lasting condition becomes a `monitor.alert`.
ALERT_AFTER_SAMPLES = 3
#: How often checkouts are checked against the leak threshold, when there is one.
LEAK_CHECK_INTERVAL_S = 0.1


class Watcher:
    """The periodic side of monitoring: a `monitor.stats` snapshot every interval, with the
    server's own count of our sessions beside the pool's; leak checks in between; and a
    `monitor.alert` when the pool stays saturated or disagrees with the server."""

    def __init__(
        self,
        monitor: PoolMonitor,
        sampler: ServerObserver,
        application_name: str,
        memory: MemorySampler | None = None,
    ) -> None:
        self.monitor = monitor
        self.sampler = sampler
        self.application_name = application_name
        #: Memory of our backends and of loadsim, in each snapshot (None: not measured).
        self.memory = memory
        #: The latest snapshot, for the live dashboard.
        self.latest: dict[str, Any] = {}
        #: Called with each snapshot as it is emitted (the live metrics).
        self.on_snapshot: Callable[[dict[str, Any]], None] | None = None
        self._streaks: dict[str, int] = {"saturated": 0, "server_disagrees": 0}

    async def run(self) -> None:
        settings = self.monitor.settings
        interval = settings.interval
        tick = min(interval, LEAK_CHECK_INTERVAL_S) if settings.leak_threshold else interval
        events = self.monitor.events
        next_stats = events.elapsed() + interval
        while True:
            await asyncio.sleep(max(0.0, min(tick, next_stats - events.elapsed())))
            self.monitor.check_leaks()
            if events.elapsed() >= next_stats - 0.001:
                next_stats += interval
                await self.report()

    async def probe_loop_lag(self, period: float = 0.01) -> None:
        """How late the event loop wakes a short sleep, recorded as `loop_lag_ms`: when it
        grows, loadsim itself is the bottleneck and its figures say more about it than
        about the pool."""
        lag = self.monitor.metrics.loop_lag
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(period)
            lag.add((time.perf_counter() - asked - period) * 1000)

    async def report(self) -> None:
        monitor = self.monitor
        server = await self.sampler.sessions(self.application_name)
        # memory first (read in a thread): the counts below, its time and its emission are
        # one moment, with no wait between them for the others to go stale
        memory = await self._memory() if self.memory is not None else {}
        pool = monitor.state()
        snapshot = {
            **pool,
            "oldest_wait_ms": monitor.oldest_wait_ms(),
            **monitor.metrics.snapshot(time.perf_counter(), monitor.counters_now()),
            "server": server,
            **memory,
        }
        self.latest = snapshot
        monitor.events.emit("monitor.stats", **snapshot)
        if self.on_snapshot is not None:
            self.on_snapshot(snapshot)
        self._alert_when_lasting(
            "saturated",
            pool["pending_requests"] > 0,
            f"clients have been waiting for a connection for {ALERT_AFTER_SAMPLES} snapshots "
            "in a row: the pool is too small for this load",
            pending_requests=pool["pending_requests"],
            oldest_wait_ms=snapshot["oldest_wait_ms"],
        )
        server_total = sum(server.values()) if server is not None else None
        self._alert_when_lasting(
            "server_disagrees",
            server_total is not None and server_total != pool["connections_total"],
            "the server's count of our sessions (pg_stat_activity) differs from the pool's "
            f"for {ALERT_AFTER_SAMPLES} snapshots in a row",
            pool_connections=pool["connections_total"],
            server_sessions=server_total,
        )

    async def _memory(self) -> dict[str, Any]:
        """The snapshot's memory fields; the first time our backends could not be read
        (after the start found that they could), a `run.warning` says why."""
        assert self.memory is not None
        failed_before = self.memory.failure
        backends = self.monitor.backend_pids  # the connections the snapshot counts
        fields = await self.memory.sample(backends(), still_open=backends)
        if failed_before is None and self.memory.failure is not None:
            self.monitor.events.emit(
                "run.warning",
                message=f"our backends' memory could not be read: {self.memory.failure}",
            )
        return fields

    def _alert_when_lasting(self, kind: str, condition: bool, message: str, **fields: Any) -> None:
        """One alert per episode: when the condition has held for ALERT_AFTER_SAMPLES."""
        streak = self._streaks[kind] + 1 if condition else 0
        self._streaks[kind] = streak
        if streak == ALERT_AFTER_SAMPLES:
            self.monitor.events.emit("monitor.alert", kind=kind, message=message, **fields)


def _backend_pid(dbapi_connection: Any) -> int | None:
    driver = getattr(dbapi_connection, "driver_connection", None)
    get_pid = getattr(driver, "get_server_pid", None)
    return int(get_pid()) if get_pid is not None else None


def _ms_since(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


_ASYNCIO = os.path.dirname(asyncio.__file__)
#: Frames from these packages are left out of `acquired_at`.
_LIBRARY_PATHS = (
    _ASYNCIO,
    os.path.dirname(sqlalchemy.__file__),
    os.path.dirname(greenlet.__file__),
)


def _where_acquired(limit: int = 4) -> list[str]:
    """Where the client's code asked for the connection now being checked out, innermost
    first. Pool listeners run in SQLAlchemy's greenlet; the client's coroutines are suspended
    in the parent greenlet, at the frame that spawned it."""
    parent = greenlet.getcurrent().parent
    frame = parent.gr_frame if parent is not None else sys._getframe(1)
    frames: list[str] = []
    while frame is not None and len(frames) < limit:
        filename = frame.f_code.co_filename
        if filename.startswith(_ASYNCIO):
            break  # the event loop: above here is not the client's
        if not filename.startswith(_LIBRARY_PATHS):
            frames.append(f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        frame = frame.f_back
    return frames


def _describe(exception: BaseException | None) -> str | None:
    if exception is None:
        return None
    text = str(exception).strip().splitlines()
    return f"{type(exception).__name__}: {text[0] if text else ''}"
