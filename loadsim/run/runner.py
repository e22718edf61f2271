"""One invocation of `loadsim run`: find or start the server, then run each scenario in turn.

For each scenario: engine → monitor → clients → stop cleanly → summary. The runner owns every
task it starts (one `asyncio.TaskGroup` per scenario) and cancels them all on the way out.
SIGINT and SIGTERM stop the clients, write `run.end` with `interrupted: true`, dispose the
engine and stop the embedded server; a second signal stops the server at once and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import platform
import signal
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy
from sqlalchemy.engine import URL

from loadsim import __version__
from loadsim.config.scenario import ClientGroup
from loadsim.config.settings import RunConfig
from loadsim.config.thresholds import evaluate
from loadsim.errors import ScenarioError
from loadsim.run.dashboard import REFRESH_PER_SECOND, Dashboard, DashboardSnapshot
from loadsim.run.database import EmbeddedPostgres, ServerInfo, ServerObserver, server_info
from loadsim.run.engine import application_name, create_engine, mask_url, parse_database_url
from loadsim.run.events import EventLog, EventSink, LogFormat
from loadsim.run.faults import FaultInjector, check_supported
from loadsim.run.metrics import RunMetrics
from loadsim.run.monitor import PoolMonitor, Watcher
from loadsim.run.workload import ClientFleet, ClientState, plan_clients
from loadsim.schema import EVENT_NAMES, SCHEMA_VERSION

#: How long clients still holding a connection get to finish once a run is due to stop.
STOP_GRACE_S = 5.0
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


class Runner:
    def __init__(
        self,
        configs: Sequence[RunConfig],
        sink: EventSink,
        *,
        log_format: LogFormat = "json",
        colours: bool = False,
        warn: Callable[[str], None] = lambda message: None,
        dashboard: Dashboard | None = None,
        kinds: frozenset[str] = EVENT_NAMES,
        loop: str = "auto",
        run_id: str | None = None,
        instance: int | None = None,
    ) -> None:
        """`instance` is set when this process is one instance of a fleet (see instances.py):
        its events say so, and its sessions are told apart on the server."""
        self.instance = instance
        self.kinds = kinds
        self.loop = loop
        self.configs = list(configs)
        self.dashboard = dashboard
        self.sink = sink
        self.log_format = log_format
        self.colours = colours
        self.warn = warn
        self.outcome = RunOutcome(run_id=run_id or new_run_id())
        self._server: EmbeddedPostgres | None = None
        self._stop_requested = asyncio.Event()
        self._stop_reason: str | None = None

    # ---------------------------------------------------------------- lifecycle

    def run(self) -> RunOutcome:
        """Runs every scenario; always stops the embedded server it started."""
        _quiet_collected_connection_warnings()
        loop_factory, self.outcome.event_loop = choose_event_loop(self.loop)
        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(self._main())
        finally:
            self.sink.flush()
            if self._server is not None:
                self._server.stop()
        return self.outcome

    async def _main(self) -> None:
        self._install_signal_handlers()
        self._server = await start_server_if_needed(self.configs, self.warn)
        for config in self.configs:
            if self.outcome.interrupted_by or self.outcome.output_closed:
                break
            await self._run_scenario(config, scenario_url(config, self._server))

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if self.outcome.interrupted_by is not None:
            # A second signal: no more patience. Leave no server behind, then go.
            if self._server is not None:
                self._server.stop(mode="immediate")
            self.sink.close()  # everything sent is written before we go
            os._exit(128 + signum)
        self.outcome.interrupted_by = signal.Signals(signum).name
        self._request_stop()

    def _request_stop(self) -> None:
        self._stop_requested.set()

    # ----------------------------------------------------------------- scenario

    async def _run_scenario(self, config: RunConfig, url: URL) -> None:
        events = EventLog(
            self.sink,
            run_id=self.outcome.run_id,
            scenario=config.scenario,
            instance=self.instance or 0,
            log_format=self.log_format,
            level=config.log_level,
            colours=self.colours,
            kinds=self.kinds,
        )
        our_name = application_name(self.outcome.run_id, self.instance)
        observer = ServerObserver(url)  # for faults and the final count
        sampler = ServerObserver(url)  # for monitor.stats, concurrently with faults
        try:
            info = await server_info(await observer.open())
            await check_supported(config.faults, observer, config.scenario)
            self._warn_if_too_small(capacity_warning(config, info, instances=1), events)
            engine = create_engine(url, config.pool, our_name, config.faults.session_settings())
            metrics = RunMetrics(
                config.total_clients, config.pool.capacity, started=time.perf_counter()
            )
            monitor = PoolMonitor(engine, events, metrics, config.monitor)
            monitor.attach()
            watcher = Watcher(monitor, sampler, our_name)
            events.emit(
                "run.start",
                schema_version=SCHEMA_VERSION,
                description=config.description,
                database="embedded" if config.database_url is None else mask_url(url),
                server_version=info.version,
                server_max_connections=info.max_connections,
                application_name=our_name,
                pool=asdict(config.pool),
                workload=_describe_workload(config),
                groups=[_describe_group(group) for group in config.groups],
                faults=asdict(config.faults),
                monitor=asdict(config.monitor),
                thresholds=[threshold.expression for threshold in config.thresholds],
                arrivals=asdict(config.arrivals) if config.arrivals is not None else None,
                instances=config.instances,
                seed=config.seed,
                sources=dict(config.sources),
                loadsim_version=__version__,
                sqlalchemy_version=sqlalchemy.__version__,
                python_version=platform.python_version(),
            )
            faults = FaultInjector(
                config.faults,
                server=self._server,
                observer=observer,
                application_name=our_name,
                events=events,
            )
            metrics.started = time.perf_counter()
            try:
                await self._drive_clients(config, engine, monitor, events, faults, watcher)
                ended = time.perf_counter()
                pool_state = monitor.state()
                server_sessions = await observer.sessions(our_name)
            finally:
                monitor.disposing = True
                await engine.dispose()
            summary = metrics.summary(
                ended,
                monitor.counters_now(),
                interrupted=self.outcome.interrupted_by is not None,
                stop_reason=self._stop_reason or self._why_stop() or "iterations",
                event_loop=self.outcome.event_loop,
                signal=self.outcome.interrupted_by,
                pool_state=pool_state,
                server_sessions=server_sessions,
            )
            if self.instance is not None:
                summary["histograms"] = metrics.histograms()
            results = evaluate(config.thresholds, summary)
            for result in results:
                events.emit("run.threshold", **result)
            if results:
                summary["thresholds"] = results
            events.emit("run.end", summary=summary)
            events.flush()
            self.outcome.summaries.append({"scenario": config.scenario, **summary})
        finally:
            await observer.close()
            await sampler.close()

    def _warn_if_too_small(self, message: str | None, events: EventLog) -> None:
        if message is not None:
            events.emit("run.warning", message=message)
            self.warn(message)

    async def _drive_clients(
        self,
        config: RunConfig,
        engine: Any,
        monitor: PoolMonitor,
        events: EventLog,
        faults: FaultInjector,
        watcher: Watcher,
    ) -> None:
        self._stop_reason = None
        if self._stop_requested.is_set():
            return
        all_done = asyncio.Event()
        fleet = ClientFleet(
            engine=engine,
            monitor=monitor,
            events=events,
            workload=config.workload,
            metrics=monitor.metrics,
            seed=config.seed,
            clients=plan_clients(config.workload, config.groups, config.arrivals is not None),
            arrivals=config.arrivals,
            on_all_done=all_done.set,
        )
        if self.dashboard is not None:
            self.dashboard.start()
        try:
            async with asyncio.TaskGroup() as group:
                clients = [group.create_task(fleet.run_client(client)) for client in fleet.clients]
                helpers = [
                    group.create_task(self._flush_periodically(events)),
                    group.create_task(self._stop_when_due(config, fleet, clients, all_done)),
                    group.create_task(watcher.run()),
                    group.create_task(watcher.probe_loop_lag()),
                    group.create_task(faults.run()),
                ]
                await asyncio.sleep(0)  # let the clients start...
                gc.freeze()  # ...then keep the run's long-lived objects out of every collection
                if self.dashboard is not None:
                    helpers.append(
                        group.create_task(self._refresh_dashboard(self.dashboard, config, watcher))
                    )
                await all_done.wait()
                for helper in helpers:
                    helper.cancel()
        finally:
            gc.unfreeze()
            if self.dashboard is not None:
                self.dashboard.stop()

    def _why_stop(self) -> str | None:
        if self.outcome.interrupted_by is not None:
            return f"signal {self.outcome.interrupted_by}"
        if self.outcome.output_closed:
            return "output closed"
        return None

    async def _stop_when_due(
        self,
        config: RunConfig,
        fleet: ClientFleet,
        clients: list[asyncio.Task[None]],
        all_done: asyncio.Event,
    ) -> None:
        duration = config.workload.duration
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration):
                await self._stop_requested.wait()
        self._stop_reason = "duration" if not self._stop_requested.is_set() else self._why_stop()
        fleet.stopping = True
        interrupted = self.outcome.interrupted_by is not None or self.outcome.output_closed
        for client, task in zip(fleet.clients, clients, strict=True):
            if interrupted or fleet.states.get(client.id) != ClientState.HOLDING:  # leakers too
                task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE_S):
                await all_done.wait()
        for task in clients:
            task.cancel()

    async def _refresh_dashboard(
        self, dashboard: Dashboard, config: RunConfig, watcher: Watcher
    ) -> None:
        monitor = watcher.monitor
        metrics, counters = monitor.metrics, monitor.counters
        while True:
            state = monitor.state()
            dashboard.update(
                DashboardSnapshot(
                    scenario=config.scenario,
                    elapsed_s=monitor.events.elapsed(),
                    duration_s=config.workload.duration,
                    pool_size=config.pool.pool_size,
                    capacity=config.pool.capacity,
                    used=state["connections_used"],
                    idle=state["connections_idle"],
                    overflow=state["overflow"],
                    waiting=state["pending_requests"],
                    oldest_wait_ms=monitor.oldest_wait_ms(),
                    checkouts=metrics.checkouts,
                    timeouts=metrics.timeouts,
                    errors=metrics.errors,
                    leaks=counters.leaks_suspected,
                    stats=watcher.latest,
                )
            )
            await asyncio.sleep(1 / REFRESH_PER_SECOND)

    async def _flush_periodically(self, events: EventLog) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            events.flush()
            if not self.sink.streams and not self.outcome.output_closed:
                self.outcome.output_closed = True
                self._request_stop()


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
    for directory in server.reaped:
        warn(f"stopped an embedded PostgreSQL abandoned by an earlier run ({directory})")
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


def _quiet_collected_connection_warnings() -> None:
    """A connection garbage-collected while checked out is a leak loadsim reports itself
    (`monitor.leak_collected`); SQLAlchemy's own warning and log line about it would only
    repeat that on stderr."""
    warnings.filterwarnings("ignore", message="The garbage collector is trying to clean up")
    for pool_class in ("AsyncAdaptedQueuePool", "NullPool"):
        logging.getLogger(f"sqlalchemy.pool.impl.{pool_class}").addFilter(
            lambda record: "The garbage collector is trying" not in record.getMessage()
        )


def _describe_group(group: ClientGroup) -> dict[str, Any]:
    described = asdict(group)
    described["hold"], described["think"] = str(group.hold), str(group.think)
    return described


def _describe_workload(config: RunConfig) -> dict[str, Any]:
    workload = config.workload
    return {
        "clients": workload.clients,
        "duration_s": workload.duration,
        "iterations": workload.iterations,
        "ramp_up_s": workload.ramp_up,
        "hold": str(workload.hold),
        "think": str(workload.think),
        "query": workload.query,
        "in_transaction": workload.in_transaction,
    }
