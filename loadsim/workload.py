"""What a client does: a closed loop of think → check out → hold (real SQL) → return.

A pool timeout or a database error is a measurement: it becomes an event and a counter, and
the client carries on. Each client records whether it is idle, waiting on the pool or holding
a connection, so that a stopping run can cancel the idle and waiting ones at once and let the
holders finish what they are doing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

import asyncpg
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

from loadsim.events import EventLog
from loadsim.monitor import PoolMonitor, current_client
from loadsim.scenario import Workload
from loadsim.stats import ClientMeasurements

_SLEEP = text("SELECT pg_sleep(:hold)")
#: After a connect or query error, a client pauses this long so a dead server is not hammered.
ERROR_BACKOFF_S = 0.1


class ClientState(IntEnum):
    IDLE = 0
    WAITING = 1
    HOLDING = 2
    DONE = 3


@dataclass
class ClientFleet:
    """Everything the clients of one run share."""

    engine: AsyncEngine
    monitor: PoolMonitor
    events: EventLog
    workload: Workload
    measured: ClientMeasurements
    seed: int | None
    states: list[ClientState] = field(default_factory=list)
    stopping: bool = False
    on_all_done: Callable[[], None] = lambda: None
    _running: int = 0

    def __post_init__(self) -> None:
        self.states = [ClientState.IDLE] * self.workload.clients
        self._running = self.workload.clients
        query = self.workload.query
        self._statement = text(query) if query else _SLEEP
        self._binds_hold = query is None or ":hold" in query

    def rng_for(self, client: int) -> random.Random:
        return random.Random(None if self.seed is None else self.seed * 1_000_003 + client)

    async def run_client(self, client: int, start_delay: float) -> None:
        try:
            await self._loop(client, start_delay)
        finally:
            self.states[client] = ClientState.DONE
            self._running -= 1
            if self._running == 0:
                self.on_all_done()

    async def _loop(self, client: int, start_delay: float) -> None:
        current_client.set(client)
        workload, events, monitor, measured = (
            self.workload,
            self.events,
            self.monitor,
            self.measured,
        )
        states = self.states
        rng = self.rng_for(client)
        if start_delay > 0:
            await asyncio.sleep(start_delay)
        iteration = 0
        while not self.stopping and (
            workload.iterations is None or iteration < workload.iterations
        ):
            iteration += 1
            think = workload.think.sample(rng)
            if think > 0:
                await asyncio.sleep(think)
                if self.stopping:
                    break
            hold = workload.hold.sample(rng)
            states[client] = ClientState.WAITING
            events.emit("client.waiting", client=client)
            monitor.client_waiting(+1)
            asked = time.perf_counter()
            waiting = True
            try:
                async with self.engine.connect() as connection:
                    acquired = time.perf_counter()
                    waiting = False
                    monitor.client_waiting(-1)
                    states[client] = ClientState.HOLDING
                    wait_ms = (acquired - asked) * 1000
                    measured.wait_ms.add(wait_ms)
                    measured.checkouts_per_client[client] += 1
                    conn = monitor.last_checkout.get(client)
                    events.emit(
                        "client.acquired", client=client, conn=conn, wait_ms=round(wait_ms, 3)
                    )
                    parameters = {"hold": hold} if self._binds_hold else {}
                    await connection.execute(self._statement, parameters)
                released = time.perf_counter()
                held_ms = (released - acquired) * 1000
                measured.hold_ms.add(held_ms)
                events.emit("client.released", client=client, conn=conn, held_ms=round(held_ms, 3))
            except exc.TimeoutError as error:
                measured.timeouts += 1
                events.emit(
                    "client.timeout",
                    client=client,
                    wait_ms=round((time.perf_counter() - asked) * 1000, 3),
                    message=str(error).splitlines()[0],
                    **_pool_state_at_timeout(monitor),
                )
            except (exc.SQLAlchemyError, asyncpg.PostgresError, OSError) as error:
                phase = "connect" if waiting else "query"
                measured.error(f"{phase}:{_error_kind(error)}")
                events.emit(
                    "client.error",
                    client=client,
                    phase=phase,
                    error=_error_kind(error),
                    message=_first_line(error),
                )
                if waiting:
                    monitor.client_waiting(-1)
                    waiting = False
                states[client] = ClientState.IDLE
                await asyncio.sleep(ERROR_BACKOFF_S)
            finally:
                if waiting:
                    monitor.client_waiting(-1)
                states[client] = ClientState.IDLE


def start_delays(workload: Workload) -> list[float]:
    """When each client starts: spread evenly over `ramp_up`, or all at once."""
    if workload.ramp_up <= 0 or workload.clients == 1:
        return [0.0] * workload.clients
    step = workload.ramp_up / workload.clients
    return [client * step for client in range(workload.clients)]


def _pool_state_at_timeout(monitor: PoolMonitor) -> dict[str, int]:
    state = monitor.state()
    return {
        "total": state["connections_total"],
        "in_use": state["connections_used"],
        "idle": state["connections_idle"],
        "waiting": state["pending_requests"],
    }


def _error_kind(error: BaseException) -> str:
    original = getattr(error, "orig", None)
    return type(original if original is not None else error).__name__


def _first_line(error: BaseException) -> str:
    original = getattr(error, "orig", None)
    lines = str(original if original is not None else error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
