"""The lifecycle of `loadsim run`, one for a single run and for a fleet of instances.

`Lifecycle.run` chooses the event loop, installs the signal handlers, starts the embedded
server when a scenario needs one, runs each scenario in turn — until a signal or a closed
output stops the run — flushes the event stream as it goes, and always stops the server it
started. A subclass supplies what is particular to it: how one scenario runs
(`run_scenario`, which ends with `finish_scenario`: thresholds and the closing event), and
what else a signal or a closed output must do (`on_signal`, `on_output_closed`).

- `Runner` (runner.py): one process, one pool per scenario.
- `Fleet` (fleet.py): N instance processes, each a `Runner`, relayed into one stream.

Stopping: the first SIGINT or SIGTERM records itself (`interrupted_by`) and asks the run to
stop (`stop_requested`); a second stops the embedded server at once, writes what was sent,
and exits 128 + the signal. When every output stream has failed (`loadsim run … | head`),
the run stops as if its time were up, with `stop_reason` "output closed"; when one fails of
itself (a full disk: `EventSink.write_error`), it stops the same way, "output failed".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import URL

from loadsim.config.settings import RunConfig
from loadsim.config.thresholds import evaluate
from loadsim.errors import LoadsimError, ScenarioError
from loadsim.run.database import EmbeddedPostgres, ServerInfo
from loadsim.run.engine import parse_database_url
from loadsim.run.events import EventLog, EventSink, LogFormat
from loadsim.schema import EVENT_NAMES

#: How often the event stream is flushed, and a closed output noticed.
FLUSH_INTERVAL_S = 0.25
#: Headroom above the largest pool for the embedded server (the seed's "+ 20").
EMBEDDED_HEADROOM = 20


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
        kinds: frozenset[str] = EVENT_NAMES,
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

    # ------------------------------------------------------------ for subclasses

    async def run_scenario(self, config: RunConfig, url: URL) -> None:
        raise NotImplementedError

    def on_signal(self, signum: int, again: bool) -> None:
        """What a signal does besides stopping this process's run (`again`: not the first)."""

    def on_output_closed(self) -> None:
        """What a closed output does besides stopping this process's run."""

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> RunOutcome:
        """Runs every scenario; always stops the embedded server it started."""
        loop_factory, self.outcome.event_loop = choose_event_loop(self.loop)
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(self._main())
        finally:
            self.sink.flush()
            if self.server is not None:
                self.server.stop()
        return self.outcome

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        if self._parent_fd is not None:
            self._watch_parent(loop, self._parent_fd)
        watch = asyncio.create_task(self._flush_periodically())
        try:
            self.server = await start_server_if_needed(self.configs, self.warn)
            for config in self.configs:
                if self.stopping:
                    break
                await self.run_scenario(config, scenario_url(config, self.server))
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

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

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        again = self._signals > 1
        if self.outcome.interrupted_by is None:
            self.outcome.interrupted_by = signal.Signals(signum).name
        self.on_signal(signum, again)
        if again:
            # A second signal: no more patience. Leave no server behind, then go.
            if self.server is not None:
                self.server.stop(mode="immediate")
            self.sink.close()  # everything sent is written before we go
            os._exit(128 + signum)
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


async def start_server_if_needed(
    configs: Sequence[RunConfig], warn: Callable[[str], None]
) -> EmbeddedPostgres | None:
    """The embedded server, started when a scenario has no DATABASE_URL, with room for the
    most connections any of them may open (every instance of it) plus the seed's 20. A bad
    URL fails here, before anything starts."""
    for config in configs:
        if config.database_url is not None:
            parse_database_url(config.database_url)
    if all(config.database_url is not None for config in configs):
        return None
    largest = max(config.instances * config.most_connections for config in configs)
    server = EmbeddedPostgres(max_connections=max(100, largest + EMBEDDED_HEADROOM))
    await asyncio.to_thread(server.start)
    for message in server.reaper_warnings:  # abandoned servers stopped, or left alone
        warn(message)
    return server


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


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


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
