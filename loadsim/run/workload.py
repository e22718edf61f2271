"""What a client does.

A `loop` client thinks, checks a connection out (timing the wait), holds it while real SQL
runs on the server, gives it back, and goes again. `leak` and `cancel` clients misbehave on
purpose, once, so that the monitor has leaks to find. A pool timeout or a database error is a
measurement: it becomes an event and a counter, and the client carries on.

Each client records whether it is idle, waiting on the pool or holding a connection, so that a
stopping run can cancel the idle and waiting ones at once and let the holders finish.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

import asyncpg
from sqlalchemy import TextClause, exc, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loadsim.config.scenario import Arrivals, ClientGroup, Workload
from loadsim.run.events import EventLog, milliseconds
from loadsim.run.metrics import RunMetrics
from loadsim.run.monitor import PoolMonitor, current_client

_SLEEP = text("SELECT pg_sleep(:hold)")
_OPEN_TRANSACTION = text("SELECT 1")
#: After a connect or query error, a client pauses this long so a dead server is not hammered.
ERROR_BACKOFF_S = 0.1
_DATABASE_ERRORS = (exc.SQLAlchemyError, asyncpg.PostgresError, OSError)


class ClientState(IntEnum):
    IDLE = 0
    WAITING = 1
    HOLDING = 2
    #: Holding a connection it is not going to give back (a leak client): stop it at once.
    LEAKING = 3
    DONE = 4


@dataclass(frozen=True)
class Client:
    id: int
    group: ClientGroup
    start_delay: float
    #: One request of an open workload, rather than a client that stays for the run.
    request: bool = False


_ARRIVALS_DRIVER = "arrivals"  # the behaviour of the task that starts an open workload's requests
#: The arrivals driver gives the event loop a turn at least this often, however far behind.
YIELD_S = 0.002
#: ... and sleeps at most this long at a time, so that it notices a stop.
WAKE_S = 0.1
#: A request the driver reaches this long after its intended start is dropped and counted.
LATE_S = 1.0


def plan_clients(
    workload: Workload, groups: tuple[ClientGroup, ...], open_workload: bool = False
) -> list[Client]:
    """Every client of a run, numbered from 0: the main workload's first (started evenly over
    `ramp_up`) or, for an open workload, the one task that starts its requests; then each
    group's (started at the group's `start`)."""
    main = workload.main_group()
    if open_workload:
        clients = [Client(0, replace(main, name=_ARRIVALS_DRIVER, behaviour=_ARRIVALS_DRIVER), 0)]
    else:
        step = workload.ramp_up / main.clients if workload.ramp_up > 0 else 0.0
        clients = [Client(index, main, index * step) for index in range(main.clients)]
    for group in groups:
        clients.extend(Client(len(clients), group, group.start) for _ in range(group.clients))
    return clients


@dataclass
class ClientFleet:
    """Everything the clients of one run share."""

    engine: AsyncEngine
    monitor: PoolMonitor
    events: EventLog
    workload: Workload
    metrics: RunMetrics
    seed: int | None
    clients: list[Client]
    arrivals: Arrivals | None = None
    states: dict[int, ClientState] = field(default_factory=dict)
    stopping: bool = False
    on_all_done: Callable[[], None] = lambda: None
    _running: int = 0
    _not_yet_asked: int = 0

    def __post_init__(self) -> None:
        self.states = {client.id: ClientState.IDLE for client in self.clients}
        self._running = self._not_yet_asked = len(self.clients)

    def rng_for(self, client: int) -> random.Random:
        return random.Random(None if self.seed is None else self.seed * 1_000_003 + client)

    async def run_client(self, client: Client) -> None:
        behaviour = {
            "loop": self._loop,
            "leak": self._leak,
            "cancel": self._cancel,
            _ARRIVALS_DRIVER: self._start_requests,
        }
        try:
            current_client.set(client.id)
            if client.start_delay > 0:
                await asyncio.sleep(client.start_delay)
            await behaviour[client.group.behaviour](client)
        finally:
            self.states[client.id] = ClientState.DONE
            self._running -= 1
            if self._running == 0:
                self.on_all_done()

    # ------------------------------------------------------------------ behaviours

    async def _loop(self, client: Client) -> None:
        group, rng = client.group, self.rng_for(client.id)
        iterations = self.workload.iterations
        self._first_request()
        count = 0
        while not self.stopping and (iterations is None or count < iterations):
            count += 1
            think = group.think.sample(rng)
            if think > 0:
                await asyncio.sleep(think)
                if self.stopping:
                    break
            hold = group.hold.sample(rng)
            await self._with_connection(client, functools.partial(_use, group=group, hold=hold))

    def _first_request(self) -> None:
        """Counts clients in: the moment the last one starts is `clients_started_s`."""
        self._not_yet_asked -= 1
        if self._not_yet_asked == 0:
            self.metrics.clients_started_s = round(time.perf_counter() - self.metrics.started, 3)

    async def _start_requests(self, driver: Client) -> None:
        """An open workload: start a request at each intended time, whether or not the pool
        keeps up. A request's response time runs from its intended start, so a stalled pool
        shows up as latency instead of as a quietly lower load (coordinated omission).

        The driver keeps to its schedule and never holds the event loop: it gives the loop a
        turn at least every `YIELD_S` however far behind it is. A request due while
        `max_in_flight` are in flight, or reached more than `LATE_S` after its time (the
        process could not keep up), is dropped: counted in `requests` and `dropped`, and not
        started."""
        assert self.arrivals is not None
        arrivals, metrics, group = self.arrivals, self.metrics, driver.group
        rng = self.rng_for(driver.id)
        self._first_request()
        poisson = arrivals.distribution == "poisson"
        in_flight: dict[int, asyncio.Task[None]] = {}
        next_id = len(self.clients)
        self.states[driver.id] = ClientState.HOLDING  # it winds down by itself at the end
        horizon = self.workload.duration or math.inf
        started = time.perf_counter()
        due = arrivals.time_after(0.0, rng.expovariate(1.0) if poisson else 0.0, horizon)
        turn = started  # when the loop last had a turn
        async with asyncio.TaskGroup() as requests:
            while not self.stopping:
                now = time.perf_counter()
                ahead = started + due - now  # inf: nothing more is due before the end
                if ahead > 0:
                    await asyncio.sleep(min(ahead, WAKE_S))  # wakes to notice a stop
                    turn = time.perf_counter()
                    continue
                if -ahead > LATE_S or len(in_flight) >= arrivals.max_in_flight:
                    # Behind, or no room: every request due by now is dropped and counted, at
                    # once (one by one, a high rate would take all the process's time).
                    caught_up = now - started
                    overdue = arrivals.expected(due, caught_up)
                    if poisson:  # the one due, and as many as are expected after it
                        missed = 1 + round(overdue)
                        due = arrivals.time_after(caught_up, rng.expovariate(1.0), horizon)
                    else:  # each one due up to now, and the next on the same beat
                        missed = max(1, math.ceil(overdue))
                        due = arrivals.time_after(due, float(missed), horizon)
                    metrics.requests += missed
                    metrics.dropped += missed
                else:
                    metrics.requests += 1
                    request = Client(next_id, group, 0.0, request=True)
                    self.states[next_id] = ClientState.IDLE
                    in_flight[next_id] = requests.create_task(
                        self._request(request, started + due, group.hold.sample(rng), in_flight)
                    )
                    next_id += 1
                    due = arrivals.time_after(
                        due, rng.expovariate(1.0) if poisson else 1.0, horizon
                    )
                if now - turn > YIELD_S:  # behind schedule: the loop's other work goes first
                    await asyncio.sleep(0)
                    turn = time.perf_counter()
            for request_id, task in in_flight.items():
                if self.states.get(request_id) != ClientState.HOLDING:
                    task.cancel()

    async def _request(
        self, client: Client, intended: float, hold: float, in_flight: dict[int, Any]
    ) -> None:
        current_client.set(client.id)
        try:
            await self._with_connection(
                client, functools.partial(_use, group=client.group, hold=hold)
            )
            self.metrics.response_time.add((time.perf_counter() - intended) * 1000)
        finally:  # a request's traces go with it: a long open run must not grow
            in_flight.pop(client.id, None)
            self.states.pop(client.id, None)
            self.monitor.last_checkout.pop(client.id, None)

    async def _leak(self, client: Client) -> None:
        """Check out once and keep the connection for `hold` (forever: until the run ends)."""
        self._first_request()
        hold = client.group.hold.sample(self.rng_for(client.id))

        async def keep(connection: AsyncConnection) -> None:
            await connection.execute(_OPEN_TRANSACTION)
            self.states[client.id] = ClientState.LEAKING
            await asyncio.sleep(hold) if math.isfinite(hold) else await asyncio.Event().wait()

        await self._with_connection(client, keep)

    async def _cancel(self, client: Client) -> None:
        """Have a task check out a connection and get cancelled while holding it, the way an
        asyncio application leaks one: nothing ever returns it. SQLAlchemy finds it when the
        garbage collector frees it; we collect at once so that the effect shows at once."""
        self._first_request()
        holder = asyncio.create_task(self._hold_without_returning(client))
        await asyncio.sleep(client.group.hold.sample(self.rng_for(client.id)))
        holder.cancel()
        await asyncio.wait([holder])
        if holder.cancelled():
            self.events.emit(
                "client.cancelled", client=client.id, conn=self.monitor.last_checkout.get(client.id)
            )
        del holder
        gc.collect()

    async def _hold_without_returning(self, client: Client) -> None:
        connection = await self.engine.connect()  # deliberately not `async with`
        self.states[client.id] = ClientState.LEAKING
        self.events.emit(
            "client.acquired", client=client.id, conn=self.monitor.last_checkout.get(client.id)
        )
        await connection.execute(_OPEN_TRANSACTION)
        await asyncio.Event().wait()

    async def _with_connection(
        self, client: Client, use: Callable[[AsyncConnection], Awaitable[None]]
    ) -> None:
        """Checks a connection out, uses it, returns it; records the wait (a timed-out one
        too: `wait_time` is every wait), the hold, and a timeout or an error instead of
        raising it."""
        states, events, monitor, metrics = self.states, self.events, self.monitor, self.metrics
        states[client.id] = ClientState.WAITING
        events.emit("client.waiting", client=client.id)
        asked = time.perf_counter()
        monitor.waiting_started(client.id, asked)
        waiting = True
        try:
            async with self.engine.connect() as connection:
                acquired = time.perf_counter()
                waiting = False
                monitor.waiting_ended(client.id)
                states[client.id] = ClientState.HOLDING
                metrics.acquired((acquired - asked) * 1000)
                if not client.request:
                    metrics.checkouts_per_client[client.id] += 1
                conn = monitor.last_checkout.get(client.id)
                events.emit(
                    "client.acquired",
                    client=client.id,
                    conn=conn,
                    wait_ms=milliseconds(acquired - asked),
                )
                await use(connection)
                metrics.query_time.add((time.perf_counter() - acquired) * 1000)
                invalidated = connection.invalidated
            held = time.perf_counter() - acquired
            metrics.use_time.add(held * 1000)
            events.emit(
                "client.released",
                client=client.id,
                conn=conn,
                held_ms=milliseconds(held),
                **({"invalidated": True} if invalidated else {}),
            )
        except exc.TimeoutError as error:
            waited = time.perf_counter() - asked
            metrics.timed_out(waited * 1000)  # a wait too, of its full length
            monitor.waiting_ended(client.id)
            waiting = False
            events.emit(
                "client.timeout",
                client=client.id,
                wait_ms=milliseconds(waited),
                message=str(error).splitlines()[0],
                **monitor.state(),
            )
        except _DATABASE_ERRORS as error:
            phase = "connect" if waiting else "query"
            if waiting:
                monitor.waiting_ended(client.id)
                waiting = False
            kind = _error_kind(error)
            metrics.error(f"{phase}:{kind}")
            events.emit(
                "client.error",
                client=client.id,
                phase=phase,
                error=kind,
                sqlstate=getattr(_root_cause(error), "sqlstate", None),
                message=_first_line(error),
            )
            states[client.id] = ClientState.IDLE
            await asyncio.sleep(ERROR_BACKOFF_S)
        finally:
            if waiting:
                monitor.waiting_ended(client.id)
            if client.id in states:
                states[client.id] = ClientState.IDLE


async def _use(connection: AsyncConnection, group: ClientGroup, hold: float) -> None:
    """What a client does with a connection it holds: real work on the server for `hold`."""
    if group.in_transaction:
        await connection.execute(_OPEN_TRANSACTION)  # BEGIN: from here the session is idle
        await asyncio.sleep(hold)  # in transaction on the server, for `hold`
        await connection.commit()
    elif group.query is None:
        await connection.execute(_SLEEP, {"hold": hold})
    else:
        parameters = {"hold": hold} if ":hold" in group.query else {}
        await connection.execute(_statement(group.query), parameters)


@functools.lru_cache(maxsize=64)
def _statement(query: str) -> TextClause:
    """One TextClause per distinct query, built once rather than at every checkout."""
    return text(query)


def _root_cause(error: BaseException) -> BaseException:
    """The driver's own exception behind SQLAlchemy's wrappers (asyncpg's error names the
    problem: TooManyConnectionsError, ConnectionDoesNotExistError, ...)."""
    original = getattr(error, "orig", None) or error
    cause = original.__cause__
    if isinstance(cause, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
        return cause
    return original


def _error_kind(error: BaseException) -> str:
    return type(_root_cause(error)).__name__


def _first_line(error: BaseException) -> str:
    lines = str(_root_cause(error)).strip().splitlines()
    return lines[0] if lines else type(error).__name__
