"""The scenarios of a run, in this process: for each, engine → monitor → clients → stop
cleanly → summary.

The lifecycle around them (event loop, signals, the embedded server, the loop over scenarios,
a closed output) is `Lifecycle`'s, shared with a fleet (lifecycle.py). The runner owns every
task it starts (one `asyncio.TaskGroup` per scenario) and cancels them all on the way out.
SIGINT, SIGTERM and SIGHUP stop the clients, write `run.end` with `interrupted: true`, dispose the
engine and stop the embedded server; a second signal stops the server at once and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import sqlalchemy
from sqlalchemy.engine import URL

from loadsim import __version__
from loadsim.config.scenario import ClientGroup
from loadsim.config.settings import RunConfig
from loadsim.run.dashboard import REFRESH_PER_SECOND, Dashboard, DashboardSnapshot
from loadsim.run.database import ServerObserver, server_info
from loadsim.run.engine import application_name, create_engine, mask_url
from loadsim.run.events import EventLog, EventSink, LogFormat
from loadsim.run.faults import FaultInjector, check_supported
from loadsim.run.lifecycle import Lifecycle, RunOutcome
from loadsim.run.metrics import RunMetrics
from loadsim.run.monitor import PoolMonitor, Watcher
from loadsim.run.workload import ClientFleet, ClientState, plan_clients
from loadsim.schema import EVENT_NAMES, SCHEMA_VERSION

#: How long clients still holding a connection get to finish once a run is due to stop. The
#: measured window ends when the run is due to stop; this grace period is `grace_s`, apart.
STOP_GRACE_S = 5.0


class Runner(Lifecycle):
    """The scenarios run in this process, one pool each: a single run, or one instance of a
    fleet (`instance` set: its events say so, and its sessions are told apart on the
    server). The lifecycle around them is `Lifecycle`'s."""

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
        parent_fd: int | None = None,
    ) -> None:
        super().__init__(
            configs,
            sink,
            log_format=log_format,
            colours=colours,
            warn=warn,
            kinds=kinds,
            loop=loop,
            run_id=run_id,
            parent_fd=parent_fd,
        )
        self.instance = instance
        self.dashboard = dashboard
        self._stop_reason: str | None = None

    def run(self) -> RunOutcome:
        _quiet_collected_connection_warnings()
        return super().run()

    # ----------------------------------------------------------------- scenario

    async def run_scenario(self, config: RunConfig, url: URL) -> None:
        events = self.event_log(config, self.instance or 0)
        our_name = application_name(self.outcome.run_id, self.instance)
        observer = ServerObserver(url)  # for faults and the final count
        sampler = ServerObserver(url)  # for monitor.stats, concurrently with faults
        try:
            info = await server_info(await observer.open())
            await check_supported(config.faults, observer, config.scenario)
            self.warn_if_too_small(config, info, events, instances=1)
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
                server=self.server,
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
                stop_reason=self._stop_reason or self.stop_reason() or "iterations",
                event_loop=self.outcome.event_loop,
                signal=self.outcome.interrupted_by,
                pool_state=pool_state,
                server_sessions=server_sessions,
            )
            if self.instance is not None:
                summary["histograms"] = metrics.histograms()
            self.finish_scenario(config, events, "run.end", summary)
        finally:
            await observer.close()
            await sampler.close()

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
        if self.stop_requested.is_set():
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
                await self.stop_requested.wait()
        self._stop_reason = "duration" if not self.stop_requested.is_set() else self.stop_reason()
        # The measured window ends now: what follows is the grace period for holders.
        fleet.metrics.stop_measuring(time.perf_counter(), fleet.monitor.counters.connects)
        fleet.stopping = True
        interrupted = self.stopping
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
