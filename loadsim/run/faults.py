"""Scheduled faults: what is done to the server during a run, and when.

`restart`: with the embedded server, a real fast restart (every session is terminated, the
server comes back); with an external server, which we cannot restart, every backend of ours is
terminated with `pg_terminate_backend`, which the pool sees the same way. `terminate`: our
backends only, the idle ones or all. Session timeouts (`idle_session_timeout`,
`idle_in_transaction_session_timeout`) are not scheduled: they are set on every session the
pool opens, and the server itself closes our sessions when they expire.
"""

from __future__ import annotations

import asyncio
import time

from loadsim.config.scenario import Faults
from loadsim.errors import ScenarioError
from loadsim.run.database import (
    EmbeddedPostgres,
    ServerObserver,
    missing_settings,
    terminate_sessions,
)
from loadsim.run.events import EventLog


async def check_supported(faults: Faults, observer: ServerObserver, scenario: str) -> None:
    """Fails before the run when the server cannot do what the faults ask."""
    wanted = list(faults.session_settings())
    if not wanted:
        return
    missing = await missing_settings(await observer.open(), wanted)
    if missing:
        raise ScenarioError(
            f"scenario {scenario!r} sets {', '.join(missing)}, which this server does not have "
            "(it needs PostgreSQL 14 or newer)"
        )


class FaultInjector:
    def __init__(
        self,
        faults: Faults,
        *,
        server: EmbeddedPostgres | None,
        observer: ServerObserver,
        application_name: str,
        events: EventLog,
    ) -> None:
        self.faults = faults
        self.server = server
        self.observer = observer
        self.application_name = application_name
        self.events = events

    async def run(self) -> None:
        schedule = sorted(
            [(at, self._restart) for at in self.faults.restart]
            + [(at, self._terminate) for at in self.faults.terminate],
            key=lambda item: item[0],
        )
        for at, inject in schedule:
            delay = at - self.events.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            await inject(at)

    async def _restart(self, at: float) -> None:
        began = self.events.elapsed()
        started = time.perf_counter()
        if self.server is not None:
            await asyncio.to_thread(self.server.restart)
            method, terminated = "server restart", None
        else:
            connection = await self.observer.open()
            terminated = await terminate_sessions(connection, self.application_name, "all")
            method = "pg_terminate_backend on every session of ours"
        self.events.emit(
            "fault.restart",
            at_s=at,
            began_t=round(began, 6),
            method=method,
            downtime_ms=round((time.perf_counter() - started) * 1000, 3),
            terminated=terminated,
        )

    async def _terminate(self, at: float) -> None:
        began = self.events.elapsed()
        which = self.faults.terminate_which
        connection = await self.observer.open()
        terminated = await terminate_sessions(connection, self.application_name, which)
        self.events.emit(
            "fault.terminate",
            at_s=at,
            began_t=round(began, 6),
            which=which,
            terminated=terminated,
        )
