"""The lifecycle of `loadsim run`, one for a single run and for a fleet of instances.

`Lifecycle.run` chooses the event loop, installs the signal handlers, starts the embedded
server when a scenario needs one, runs each scenario in turn — until a signal or a closed
output stops the run — flushes the event stream as it goes, and always stops the server it
started. A subclass supplies what is particular to it: how one scenario runs
(`run_scenario`, which ends with `finish_scenario`: thresholds and the closing event), and
what else a signal or a closed output must do (`on_signal`, `on_output_closed`).

- `Runner` (runner.py): one process, one pool per scenario.
- `Fleet` (fleet.py): N instance processes, each a `Runner`, relayed into one stream.

Stopping: the first SIGINT, SIGTERM or SIGHUP records itself (`interrupted_by`: the CLI
exits 128 + its number) and asks the run to stop (`stop_requested`); during the embedded
server's start it cancels the start, which leaves nothing behind. A second stops the server
at once (waiting for a cancelled start to have cleaned up), writes what was sent, and exits.
The handlers are the process's own (`signal.signal`, not the loop's), installed before the
event loop exists and kept until the server is stopped after it has closed: a signal while
the loop runs is handed to it; before or after, it is recorded (a second makes the server's
stop immediate). So a signal after the last scenario's `run.end`, while the server stops,
still ends in a clean stop and exit status 128 + n; that run.end keeps `interrupted: false`
(its figures are whole).

When every output stream has failed (`loadsim run … | head`), the run stops as if its time
were up, with `stop_reason` "output closed"; when one fails of itself (a full disk:
`EventSink.write_error`), it stops the same way, "output failed".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from sqlalchemy.engine import URL

from loadsim import signals
from loadsim.config.limits import CONNECTION_HEADROOM
from loadsim.config.settings import RunConfig, new_run_id
from loadsim.config.thresholds import evaluate
from loadsim.errors import DatabaseUnavailable, LoadsimError, ScenarioError
from loadsim.run.database import (
    EmbeddedPostgres,
    ServerInfo,
    StartCancelled,
    quiet_cancelled_connects,
)
from loadsim.run.engine import parse_database_url
from loadsim.run.events import EventLog, EventSink, LogFormat
from loadsim.schema import DEFAULT_EVENTS

#: How often the event stream is flushed, and a closed output noticed.
FLUSH_INTERVAL_S = 0.25


@dataclass
class RunOutcome:
    run_id: str
    summaries: list[dict[str, Any]] = field(default_factory=list)
    interrupted_by: str | None = None
    output_closed: bool = False
    event_loop: str = "asyncio"
    #: Failures that did not stop the run (an instance of a fleet that crashed): the CLI
    #: reports each after the summary and exits with the first one's code.
    failures: list[LoadsimError] = field(default_factory=list)


class Lifecycle:
    """One invocation of `loadsim run`, whatever runs its scenarios."""

    def __init__(
        self,
        configs: Sequence[RunConfig],
        sink: EventSink,
        *,
        log_format: LogFormat = "json",
        colours: bool = False,
        warn: Callable[[str], None] = lambda message: None,
        kinds: frozenset[str] = DEFAULT_EVENTS,
        loop: str = "auto",
        run_id: str | None = None,
        parent_fd: int | None = None,
    ) -> None:
        """`parent_fd`, in an instance of a fleet: the pipe from the parent (our stdin). The
        parent closes it when the fleet's output has closed, and it closes when the parent
        dies; either way this run stops as a run whose output closed does."""
        self.configs = list(configs)
        self.sink = sink
        self.log_format = log_format
        self.colours = colours
        self.warn = warn
        self.kinds = kinds
        self.loop = loop
        self.outcome = RunOutcome(run_id=run_id or new_run_id())
        self.server: EmbeddedPostgres | None = None
        #: Set by the first signal and by a closed output: the scenario under way stops.
        self.stop_requested = asyncio.Event()
        self._parent_fd = parent_fd
        self._signals = 0
        #: The running loop, while `_main` runs: a signal is handed to it.
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ for subclasses

    async def run_scenario(self, config: RunConfig, url: URL) -> None:
        raise NotImplementedError

    def on_signal(self, signum: int, again: bool) -> None:
        """What a signal does besides stopping this process's run (`again`: not the first)."""

    def on_output_closed(self) -> None:
        """What a closed output does besides stopping this process's run."""

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> RunOutcome:
        """Runs every scenario; always stops the embedded server it started. The stop
        signals are this run's from the start to the end (the handlers that were there
        before are back when it returns)."""
        saved = signals.install(self._signalled)
        try:
            loop_factory, self.outcome.event_loop = choose_event_loop(self.loop)
            try:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    runner.run(self._main())
            finally:
                self.sink.flush()
                if self.server is not None:
                    self.server.stop()  # a signal now: recorded; a second: an immediate stop
        finally:
            signals.restore(saved)
        return self.outcome

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(quiet_cancelled_connects)
        self._loop = loop
        if self._parent_fd is not None:
            self._watch_parent(loop, self._parent_fd)
        watch = asyncio.create_task(self._flush_periodically())
        try:
            if self.stopping:
                return  # a signal before the loop was up
            self.server = embedded_server_for(self.configs)
            if self.server is not None and not await self._start_server(self.server):
                return
            for config in self.configs:
                if self.stopping:
                    break
                await self.run_scenario(config, scenario_url(config, self.server))
        finally:
            self._loop = None
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _start_server(self, server: EmbeddedPostgres) -> bool:
        """Starts the embedded server in a thread: True once it is up, False when a signal
        cancelled the start (it left nothing behind)."""
        try:
            await asyncio.to_thread(server.start)
        except StartCancelled:
            return False
        except DatabaseUnavailable:
            if self.outcome.interrupted_by is not None:
                return False  # it failed because it was interrupted: not the database's fault
            raise
        for message in server.reaper_warnings:  # abandoned servers stopped, or left alone
            self.warn(message)
        return True

    @property
    def stopping(self) -> bool:
        """A signal or a closed output has stopped the run: no more scenarios start."""
        return self.outcome.interrupted_by is not None or self.outcome.output_closed

    def stop_reason(self) -> str | None:
        """Why the run stopped early, or None when it did not."""
        if self.outcome.interrupted_by is not None:
            return f"signal {self.outcome.interrupted_by}"
        if self.outcome.output_closed:
            return "output failed" if self.sink.write_error is not None else "output closed"
        return None

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        """The stop signals' handler: runs in the main thread between any two bytecodes, so
        it only hands the signal to the loop (as asyncio.Runner does with SIGINT), or, with
        no loop running, records it."""
        if signum == signal.SIGHUP:
            signals.let_go_of_a_hung_up_terminal()  # before anything writes to it again
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._on_signal, signum)
                return
            except RuntimeError:  # the loop has just closed
                pass
        self._on_signal_outside_loop(signum)

    def _count(self, signum: int) -> bool:
        """Records a signal; True when it is not the first."""
        self._signals += 1
        if self.outcome.interrupted_by is None:
            self.outcome.interrupted_by = signal.Signals(signum).name
        return self._signals > 1

    def _on_signal(self, signum: int) -> None:
        """A signal, in the loop."""
        again = self._count(signum)
        self.on_signal(signum, again)
        if again:
            # A second signal: no more patience. Leave no server behind (a start under way
            # is cancelled and has cleaned up first), write what was sent, and go.
            if self.server is not None:
                self.server.abort()
            self.sink.close()  # everything sent is written before we go
            assert self.outcome.interrupted_by is not None
            os._exit(signals.exit_status(self.outcome.interrupted_by))
        if self.server is not None:
            self.server.cancel()  # a start under way stops; nothing once the server is up
        self.stop_requested.set()

    def _on_signal_outside_loop(self, signum: int) -> None:
        """A signal before the loop runs, or after it closed (the server stopping): the
        run stops, or has stopped; a second makes the server's stop immediate."""
        again = self._count(signum)
        self.on_signal(signum, again)
        if again and self.server is not None:
            self.server.hurry()
        self.stop_requested.set()

    def output_closed(self) -> None:
        """Every output stream has gone (a reader that went away): stop as if time were up."""
        if self.outcome.output_closed:
            return
        self.outcome.output_closed = True
        self.on_output_closed()
        self.stop_requested.set()

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.sink.flush()
            if not self.sink.streams or self.sink.write_error is not None:
                self.output_closed()  # a failed stream (a full disk) stops the run too

    def _watch_parent(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        def parent_closed() -> None:
            loop.remove_reader(fd)
            self.output_closed()

        # (not a pipe, e.g. orders from a file by hand: then there is nothing to watch)
        with contextlib.suppress(OSError, ValueError):
            loop.add_reader(fd, parent_closed)

    # ------------------------------------------------------------------ scenarios

    def event_log(self, config: RunConfig, instance: int | None) -> EventLog:
        """The events of one scenario, from this process (`instance` None: a fleet's parent)."""
        return EventLog(
            self.sink,
            run_id=self.outcome.run_id,
            scenario=config.scenario,
            instance=instance,
            log_format=self.log_format,
            level=config.log_level,
            colours=self.colours,
            kinds=self.kinds,
        )

    def warning(self, events: EventLog, message: str, *, on_stderr: bool = True) -> None:
        """A `run.warning` event, and the same on stderr for people unless told otherwise."""
        events.emit("run.warning", message=message)
        if on_stderr:
            self.warn(message)

    def warn_if_too_small(
        self, config: RunConfig, info: ServerInfo, events: EventLog, instances: int
    ) -> None:
        message = capacity_warning(config, info, instances)
        if message is not None:
            self.warning(events, message)

    def finish_scenario(
        self,
        config: RunConfig,
        events: EventLog,
        event: str,
        summary: dict[str, Any],
        **fields: Any,
    ) -> None:
        """Thresholds against the summary, then the closing event (`run.end`, `run.summary`)."""
        results = evaluate(config.thresholds, summary)
        for result in results:
            events.emit("run.threshold", **result)
        if results:
            summary["thresholds"] = results
        events.emit(event, **fields, summary=summary)
        events.flush()
        self.outcome.summaries.append({"scenario": config.scenario, **summary})


def embedded_server_for(configs: Sequence[RunConfig]) -> EmbeddedPostgres | None:
    """The embedded server (not started), when a scenario has no DATABASE_URL, with room for
    the most connections any of them may open (every instance of it) plus the seed's 20. A
    bad URL fails here, before anything starts."""
    for config in configs:
        if config.database_url is not None:
            parse_database_url(config.database_url)
    if all(config.database_url is not None for config in configs):
        return None
    largest = max(config.instances * config.most_connections for config in configs)
    return EmbeddedPostgres(max_connections=max(100, largest + CONNECTION_HEADROOM))


def capacity_warning(config: RunConfig, info: ServerInfo, instances: int) -> str | None:
    """The seed's sizing rule, checked before a run: a warning when `instances` copies of the
    scenario's pool may open more connections than the server allows, else None."""
    needed = instances * config.most_connections
    available = info.available_connections
    if needed <= available:
        return None
    who = f"scenario {config.scenario!r}"
    if instances > 1:
        who = f"{instances} instances of {who}"
    return (
        f"{who} may open {needed} connections but the server allows {available} "
        "(max_connections minus reserved slots); size the server as max_connections >= "
        "instances x (pool_size + max_overflow) + 20"
    )


def scenario_url(config: RunConfig, server: EmbeddedPostgres | None) -> URL:
    if config.database_url is not None:
        return parse_database_url(config.database_url)
    assert server is not None
    return server.url


def choose_event_loop(wanted: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The event loop factory for a run, and its name for the summary. `auto` takes uvloop
    when it is installed (`pip install 'loadsim[fast]'`), else asyncio's own."""
    if wanted == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        if wanted == "uvloop":
            raise ScenarioError(
                "--loop uvloop: uvloop is not installed; pip install 'loadsim[fast]'"
            ) from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"
