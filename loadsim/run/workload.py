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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any

from sqlalchemy import TextClause, exc, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loadsim.config.scenario import Arrivals, ClientGroup, Workload
from loadsim.exiting import strand
from loadsim.run.database import CONNECTION_BROKE, describe_connect_error
from loadsim.run.events import EventLog, milliseconds
from loadsim.run.metrics import RunMetrics
from loadsim.run.monitor import PoolMonitor, current_client
from loadsim.run.pool_internals import hand_nothing_to_waiters

_SLEEP = text("SELECT pg_sleep(:hold)")
_OPEN_TRANSACTION = text("SELECT 1")
#: After a connect or query error, a client pauses this long so a dead server is not hammered.
ERROR_BACKOFF_S = 0.1
_DATABASE_ERRORS = (exc.SQLAlchemyError, *CONNECTION_BROKE)


class ClientState(IntEnum):
    IDLE = 0
    WAITING = 1
    HOLDING = 2
    #: Holding a connection it is not going to give back (a leak client): stop it at once.
    LEAKING = 3
    DONE = 4


class CheckoutGate:
    """Lets a fault hold new checkouts for a moment, and know when none is under way.

    A client passes the gate before it asks the pool for a connection and is `busy` from then
    until it has given the connection back (or failed to get one). A restart closes the gate,
    waits for `busy` to drop to 0, ends the server's sessions and opens the gate again, so
    that it finds every connection idle in the pool: what a client then meets is what the
    pool hands out, not a query that happened to be in flight.
    """

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.busy = 0

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def passed(self) -> None:
        if not self._open.is_set():
            await self._open.wait()
        self.busy += 1

    def done(self) -> None:
        self.busy -= 1

    async def quiet(self, timeout: float) -> int:
        """Waits (up to `timeout` seconds) until no checkout is under way; how many still are."""
        deadline = time.perf_counter() + timeout
        while self.busy > 0 and time.perf_counter() < deadline:
            await asyncio.sleep(0.001)
        return self.busy


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
#: Clients started in one turn of the event loop. A client's first step (its first checkout,
#: through a greenlet) takes up to ~0.1 ms, so a batch holds the loop ~0.1 s at most: between
#: batches it serves its I/O (the pool's first connects), its timers and a stop request,
#: however many clients a run has. Started all at once, 200,000 clients held the loop ~20 s
#: a turn: no connect ever completed and Ctrl-C took half a minute.
START_BATCH = 1_000


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
    gate: CheckoutGate = field(default_factory=CheckoutGate)
    states: dict[int, ClientState] = field(default_factory=dict)
    stopping: bool = False
    on_all_done: Callable[[], None] = lambda: None
    #: An exception a client's task ended with: a fault of loadsim's, which ends the run.
    failure: BaseException | None = None
    _running: int = 0
    _not_yet_asked: int = 0
    #: An open workload's requests in flight, by id.
    requests_in_flight: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    #: The tasks of waiters left where they were (`strand_waiters`).
    stranded: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.states = {client.id: ClientState.IDLE for client in self.clients}
        self._running = self._not_yet_asked = len(self.clients)

    async def start_clients(self, tasks: list[asyncio.Task[None]]) -> None:
        """Starts every client, `START_BATCH` a turn of the loop, appending each task to
        `tasks` in client order; once the run is stopping, starts no more. The run is done
        (`on_all_done`) when every task started has ended (a task cancelled before its first
        step too: hence a done callback, not the coroutine's own `finally`), or when one has
        failed (`failure`)."""
        for first in range(0, len(self.clients), START_BATCH):
            if self.stopping:
                self._not_yet_asked -= len(self.clients) - first
                self._clients_ended(len(self.clients) - first)
                return
            for client in self.clients[first : first + START_BATCH]:
                task = asyncio.create_task(self.run_client(client))
                task.add_done_callback(self._client_ended)
                tasks.append(task)
            await asyncio.sleep(0)  # the batch's first steps
            gc.freeze()  # the clients so far out of every collection (each walked them all)

    def _client_ended(self, task: asyncio.Task[None]) -> None:
        if task in self.stranded:
            return  # counted as it was stranded
        self._note_failure(task)
        self._clients_ended(1)

    def _note_failure(self, task: asyncio.Task[None]) -> None:
        """A client or request that ended with an exception is a fault of loadsim's own: the
        run ends with it (`failure`), as a TaskGroup's would."""
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()
            self.stopping = True
            self.on_all_done()

    def _clients_ended(self, count: int) -> None:
        self._running -= count
        if self._running == 0:
            self.on_all_done()

    def strand_waiters(self, tasks: Mapping[int, asyncio.Task[None]]) -> int:
        """Leaves the clients waiting in the pool's queue where they are, never to be handed a
        connection, for a process that ends with this run (loadsim/exiting.py): their waits
        are over for the figures, and the run is done without them. How many there were.

        Only those in the line of waiters: a client whose checkout is opening a connection
        (or pinging one it was handed) holds it, and is cancelled with the holders."""
        hand_nothing_to_waiters(self.engine.sync_engine.pool)
        line, monitor, requests = self.metrics.wait_line, self.monitor, self.requests_in_flight
        stranded, clients = [], 0
        for client in monitor.waiting_clients():
            task = tasks.get(client) or requests.get(client)
            if task is not None and client in line and not task.done():
                stranded.append(task)
                clients += client in tasks  # (a request is not one of the run's clients)
                monitor.waiting_ended(client)
                self.states[client] = ClientState.DONE
        self.stranded.update(stranded)
        strand(stranded)
        self._clients_ended(clients)
        return len(stranded)

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
            await self._with_connection(
                client, functools.partial(_use, group=group, hold=hold), group.deadline
            )

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
        self._first_request()
        in_flight = self.requests_in_flight
        self.states[driver.id] = ClientState.HOLDING  # it winds down by itself at the end
        cancelled = False
        try:
            await self._drive(driver, in_flight)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:  # the end of the run (the holders have their grace period), or a stop
            await self.wind_down(in_flight, cancel_holders=cancelled)

    async def wind_down(
        self, tasks: Mapping[int, asyncio.Task[None]], *, cancel_holders: bool
    ) -> None:
        """What a TaskGroup of these clients' or requests' tasks would do on its way out, but
        for the stranded ones, which never end: cancels the waiters, in the order they
        waited (and the holders, with `cancel_holders`), and waits for every task to end;
        cancelled meanwhile, it cancels them all and still waits, then is cancelled."""
        self.cancel_waiters_first(tasks, cancel_holders=cancel_holders)
        interrupted = False
        while pending := [
            task for task in tasks.values() if not task.done() and task not in self.stranded
        ]:
            try:
                await asyncio.wait(pending)
            except asyncio.CancelledError:
                interrupted = True
                self.cancel_waiters_first(tasks, cancel_holders=True)
        if interrupted:
            raise asyncio.CancelledError

    async def _drive(self, driver: Client, in_flight: dict[int, asyncio.Task[None]]) -> None:
        assert self.arrivals is not None
        arrivals, metrics, group = self.arrivals, self.metrics, driver.group
        rng = self.rng_for(driver.id)
        poisson = arrivals.distribution == "poisson"
        next_id = len(self.clients)
        horizon = self.workload.duration or math.inf
        started = time.perf_counter()
        due = arrivals.time_after(0.0, rng.expovariate(1.0) if poisson else 0.0, horizon)
        turn = started  # when the loop last had a turn
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
                task = asyncio.create_task(
                    self._request(request, started + due, group.hold.sample(rng), in_flight)
                )
                task.add_done_callback(self._note_failure)
                in_flight[next_id] = task
                next_id += 1
                due = arrivals.time_after(due, rng.expovariate(1.0) if poisson else 1.0, horizon)
            if now - turn > YIELD_S:  # behind schedule: the loop's other work goes first
                await asyncio.sleep(0)
                turn = time.perf_counter()

    def cancel_waiters_first(
        self, tasks: Mapping[int, asyncio.Task[None]], *, cancel_holders: bool
    ) -> None:
        """Cancels the tasks of clients waiting for a connection in the order they began to
        wait, then every other one not holding a connection (every one, with
        `cancel_holders`), but for those stranded. asyncio.Queue takes a cancelled waiter out
        of its line by a search from the front: in the line's own order each search ends at
        once, in any other order stopping 28,000 waiters is quadratic and takes seconds."""
        cancelled = set()
        for client in self.monitor.waiting_clients():
            task = tasks.get(client)
            if task is not None:
                task.cancel()
                cancelled.add(client)
        for client, task in tasks.items():
            if (
                client not in cancelled
                and task not in self.stranded
                and (cancel_holders or self.states.get(client) != ClientState.HOLDING)
            ):
                task.cancel()

    async def _request(
        self, client: Client, intended: float, hold: float, in_flight: dict[int, Any]
    ) -> None:
        current_client.set(client.id)
        try:
            group = client.group
            await self._with_connection(
                client, functools.partial(_use, group=group, hold=hold), group.deadline
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
        conn = self.monitor.last_checkout.get(client.id)
        self.events.emit(
            "client.acquired",
            client=client.id,
            conn=conn,
            backend_pid=self.monitor.backend_pid(conn),
            **self.monitor.state(),
        )
        await connection.execute(_OPEN_TRANSACTION)
        await asyncio.Event().wait()

    async def _with_connection(
        self,
        client: Client,
        use: Callable[[AsyncConnection], Awaitable[None]],
        deadline: float | None = None,
    ) -> None:
        """Checks a connection out, uses it (within `deadline` seconds, when there is one),
        returns it; records the wait (a timed-out one too: `wait_time` is every wait), the
        hold, and a timeout, an error or a missed deadline instead of raising it."""
        await self.gate.passed()  # held there while a restart ends the server's sessions
        try:
            await self._checkout(client, use, deadline)
        finally:
            self.gate.done()

    async def _checkout(
        self,
        client: Client,
        use: Callable[[AsyncConnection], Awaitable[None]],
        deadline: float | None,
    ) -> None:
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
                monitor.waiting_ended(client.id, granted=True)
                states[client.id] = ClientState.HOLDING
                metrics.acquired((acquired - asked) * 1000)
                if not client.request:
                    metrics.checkouts_per_client[client.id] += 1
                conn = monitor.last_checkout.get(client.id)
                events.emit(
                    "client.acquired",
                    client=client.id,
                    conn=conn,
                    backend_pid=monitor.backend_pid(conn),
                    wait_ms=milliseconds(acquired - asked),
                    **monitor.state(),
                )
                if deadline is None:
                    await use(connection)
                else:
                    await _within(deadline, use, connection)
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
        except DeadlineMissed as missed:
            self._deadline_missed(client, missed.deadline, acquired)
            await asyncio.sleep(ERROR_BACKOFF_S)
        except _DATABASE_ERRORS as error:
            phase = "connect" if waiting else "query"
            if waiting:
                monitor.waiting_ended(client.id)
                waiting = False
            cause = _root_cause(error)
            kind = type(cause).__name__
            metrics.error(f"{phase}:{kind}")
            events.emit(
                "client.error",
                client=client.id,
                phase=phase,
                conn=None if phase == "connect" else monitor.last_checkout.get(client.id),
                error=kind,
                sqlstate=getattr(cause, "sqlstate", None),
                message=describe_connect_error(cause),
            )
            states[client.id] = ClientState.IDLE
            await asyncio.sleep(ERROR_BACKOFF_S)
        finally:
            if waiting:
                monitor.waiting_ended(client.id)
            if client.id in states:
                states[client.id] = ClientState.IDLE

    def _deadline_missed(self, client: Client, deadline: float, acquired: float) -> None:
        """The client's deadline expired while it held a connection: its task was cancelled
        in the middle of its work (a query, usually). Counted as a query error
        (`query:TimeoutError`, what asyncio.timeout raises), with how long the client held
        the connection until it had control back: the deadline and what the cancellation
        itself took."""
        held = time.perf_counter() - acquired
        self.metrics.error("query:TimeoutError")
        self.events.emit(
            "client.error",
            client=client.id,
            phase="query",
            conn=self.monitor.last_checkout.get(client.id),
            error="TimeoutError",
            sqlstate=None,
            message=f"the client's deadline of {milliseconds(deadline):g} ms expired "
            "while it held the connection: asyncio.timeout cancelled what it was doing",
            deadline_ms=milliseconds(deadline),
            held_ms=milliseconds(held),
        )
        self.states[client.id] = ClientState.IDLE


class DeadlineMissed(Exception):
    """A client's deadline expired while it held a connection (its query was cancelled)."""

    def __init__(self, deadline: float) -> None:
        super().__init__(f"deadline of {deadline} s expired")
        self.deadline = deadline


async def _within(
    deadline: float,
    use: Callable[[AsyncConnection], Awaitable[None]],
    connection: AsyncConnection,
) -> None:
    """`use(connection)` under the client's own deadline, `asyncio.timeout` around it, as an
    application would write it: when it expires the task is cancelled in the middle of its
    query, holding the connection; DeadlineMissed then. (A TimeoutError of the query's own
    is not the deadline's and goes on as it is.)"""
    timer = asyncio.timeout(deadline)
    try:
        async with timer:
            await use(connection)
    except TimeoutError:
        if timer.expired():
            raise DeadlineMissed(deadline) from None
        raise


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
    if isinstance(cause, CONNECTION_BROKE):
        return cause
    return original
