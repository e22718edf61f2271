"""Scheduled faults: what is done to the server during a run, and when.

`restart`: with the embedded server, a real fast restart (every session is terminated, the
server comes back); with an external server, which we cannot restart, every backend of ours is
terminated with `pg_terminate_backend`, which the pool sees the same way. Either way it comes
between checkouts (see `FaultInjector._restart`), and is written as `fault.restart` when it
begins and `fault.restarted` when it is over. `terminate`: our
backends only, the idle ones or all. Session timeouts (`idle_session_timeout`,
`idle_in_transaction_session_timeout`) are not scheduled: they are set on every session the
pool opens, with the scenario's other session settings (session_settings.py), and the server
itself closes our sessions when they expire.
"""

from __future__ import annotations

import asyncio
import time

from loadsim.config.scenario import Faults
from loadsim.run.database import EmbeddedPostgres, ServerObserver, terminate_sessions
from loadsim.run.events import EventLog
from loadsim.run.workload import CheckoutGate

#: How long a restart waits for the checkouts under way to end before it ends the sessions
#: anyway (with long holds, or leaked connections, there may be no quiet moment).
QUIET_WAIT_S = 1.0


class FaultInjector:
    def __init__(
        self,
        faults: Faults,
        *,
        server: EmbeddedPostgres | None,
        observer: ServerObserver,
        application_name: str,
        events: EventLog,
        gate: CheckoutGate,
    ) -> None:
        self.faults = faults
        self.server = server
        self.observer = observer
        self.application_name = application_name
        self.events = events
        self.gate = gate

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
        """Between checkouts: new ones are held while the server's sessions end (a moment
        unless a checkout is under way: up to QUIET_WAIT_S for it to end), so that the restart
        kills connections idle in the pool, the ones pre-ping is for. With the embedded server
        the gate opens once the server has stopped, and clients meet it down while it starts."""
        self.gate.close()
        try:
            in_flight = await self.gate.quiet(QUIET_WAIT_S)
            began = self.events.elapsed()
            method = (
                "server restart"
                if self.server is not None
                else "pg_terminate_backend on every session of ours"
            )
            self.events.emit(
                "fault.restart",
                at_s=at,
                began_t=round(began, 6),
                method=method,
                in_flight=in_flight,
            )
            started = time.perf_counter()
            if self.server is not None:
                loop = asyncio.get_running_loop()

                def server_down() -> None:  # in the restart's thread
                    loop.call_soon_threadsafe(self.gate.open)

                await asyncio.to_thread(self.server.restart, server_down)
                terminated = None
            else:
                connection = await self.observer.open()
                terminated = await terminate_sessions(connection, self.application_name, "all")
        finally:
            self.gate.open()
        self.events.emit(
            "fault.restarted",
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
