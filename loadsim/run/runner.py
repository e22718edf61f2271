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
from dataclasses import asdict, replace
from typing import Any

import sqlalchemy
from sqlalchemy.engine import URL

from loadsim import __version__, exiting
from loadsim.config.scenario import ClientGroup
from loadsim.config.settings import RunConfig
from loadsim.run.barrier import ClockOffset, barrier_key, measure_offset, meet, sleep_until
from loadsim.run.dashboard import REFRESH_PER_SECOND, DashboardSnapshot, LiveView
from loadsim.run.database import ServerObserver, server_info
from loadsim.run.engine import application_name, create_engine, mask_url
from loadsim.run.events import EventLog, EventSink, LogFormat
from loadsim.run.faults import FaultInjector
from loadsim.run.lifecycle import Lifecycle, RunOutcome
from loadsim.run.live_metrics import LiveMetrics, Moment, families, moment_of
from loadsim.run.metrics import RunMetrics
from loadsim.run.monitor import PoolMonitor, Watcher
from loadsim.run.server_memory import MemorySampler
from loadsim.run.session_settings import check_session_settings
from loadsim.run.workload import CheckoutGate, ClientFleet, plan_clients
from loadsim.schema import DEFAULT_EVENTS, SCHEMA_VERSION

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
        dashboard: LiveView | None = None,
        kinds: frozenset[str] = DEFAULT_EVENTS,
        loop: str = "auto",
        run_id: str | None = None,
        instance: int | None = None,
        parent_fd: int | None = None,
        fleet_size: int = 1,
        start_at: float | None = None,
        barrier_timeout: float | None = None,
    ) -> None:
        """`fleet_size` > 1: this process is one shard of a fleet started elsewhere
        (`run --shard I/N`): the whole fleet is checked against the server, thresholds are
        left to `loadsim merge`, which judges the fleet, and the shard's clock is measured
        against the server's, so that merge can say how far apart the shards began.
        `barrier_timeout` (a shard's `--barrier`): before each scenario's load, wait at most
        this long for every shard of the fleet, then begin together (barrier.py)."""
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
        self.fleet_size = fleet_size
        #: --start-at, in epoch seconds: the load begins no sooner (a fleet's shards together).
        self.start_at = start_at
        self.barrier_timeout = barrier_timeout
        self._barriers = 0  # the barriers met so far: a scenario run twice meets two
        self.dashboard = dashboard
        self._stop_reason: str | None = None
        self.live: LiveMetrics | None = None

    def run(self) -> RunOutcome:
        _quiet_collected_connection_warnings()
        # --metrics-port, --otlp-endpoint: a port in use fails here, before the run starts
        self.live = LiveMetrics(self.configs[0], self.outcome.run_id, self.instance, self.warn)
        try:
            return super().run()
        finally:
            self.live.close()

    def _publish(self, config: RunConfig, moment: Moment, metrics: RunMetrics) -> None:
        """The live metrics of this scenario's pool, as they are at this moment."""
        if self.live is None or not self.live.wanted:
            return
        instance = self.instance or 0
        self.live.publish(
            f"{config.scenario}/{instance}",
            families(config, self.outcome.run_id, instance, moment, metrics),
        )

    # ----------------------------------------------------------------- scenario

    async def run_scenario(self, config: RunConfig, url: URL) -> None:
        events = self.event_log(config, self.instance or 0)
        our_name = application_name(self.outcome.run_id, self.instance)
        observer = ServerObserver(url)  # for faults and the final count
        sampler = ServerObserver(url)  # for monitor.stats, concurrently with faults
        try:
            info = await server_info(await observer.open())
            session_settings = config.session_settings
            await check_session_settings(session_settings, url, observer, config.scenario)
            self.warn_if_too_small(config, info, events, instances=self.fleet_size)
            memory = await MemorySampler.for_server(await observer.open())
            engine = create_engine(url, config.pool, our_name, session_settings)
            metrics = RunMetrics(
                config.total_clients, config.pool.capacity, started=time.perf_counter()
            )
            monitor = PoolMonitor(engine, events, metrics, config.monitor)
            monitor.attach()
            watcher = Watcher(monitor, sampler, our_name, memory)
            extra: dict[str, Any] = {}
            watcher.on_snapshot = lambda snapshot: self._publish(
                config, moment_of(snapshot), metrics
            )
            extra.update(await self._wait_for_start(config, url, observer))
            events.emit(
                "run.start",
                **extra,
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
                session_settings=session_settings,
                monitor=asdict(config.monitor),
                thresholds=[threshold.expression for threshold in config.thresholds],
                arrivals=asdict(config.arrivals) if config.arrivals is not None else None,
                instances=config.instances,
                seed=config.seed,
                sources=dict(config.sources),
                loadsim_version=__version__,
                sqlalchemy_version=sqlalchemy.__version__,
                python_version=platform.python_version(),
                server_memory=memory.described(),
            )
            faults = FaultInjector(
                config.faults,
                server=self.server,
                observer=observer,
                application_name=our_name,
                events=events,
                gate=CheckoutGate(),
            )
            metrics.started = time.perf_counter()
            self._publish(config, _moment(monitor, metrics, None, None), metrics)
            try:
                await self._drive_clients(config, engine, monitor, events, faults, watcher)
                ended = time.perf_counter()
                pool_state = monitor.state()
                server_sessions = await observer.sessions(our_name)
                utilisation = watcher.latest.get("utilisation")
                final = _moment(monitor, metrics, server_sessions, utilisation, pool_state)
                self._publish(config, final, metrics)  # the pool as run.end has it
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
                **memory.summary(),
            )
            if self.instance is not None:
                summary["histograms"] = metrics.histograms()
            judged = config if self.fleet_size == 1 else replace(config, thresholds=())
            self.finish_scenario(judged, events, "run.end", summary)
        finally:
            await observer.close()
            await sampler.close()

    async def _wait_for_start(
        self, config: RunConfig, url: URL, observer: ServerObserver
    ) -> dict[str, Any]:
        """Waits for the fleet at the barrier (then for the start it agreed), or for
        --start-at; a signal ends either wait. run.start's fields about it: the wait, and,
        for an instance of a fleet, a shard or a --start-at, when the load began, on our clock
        and (a shard) on the server's."""
        began = time.perf_counter()
        fields: dict[str, Any] = {}
        offset: ClockOffset | None = None
        if self.barrier_timeout is not None:
            barrier = ServerObserver(url)  # its own session: its lock, its LISTEN
            try:
                self._barriers += 1
                agreed = await meet(
                    await barrier.open(),
                    key=barrier_key(self.outcome.run_id, config.scenario, self._barriers),
                    shard=self.instance or 0,
                    shards=self.fleet_size,
                    what=f"--barrier (run {self.outcome.run_id}, scenario {config.scenario!r})",
                    timeout=self.barrier_timeout,
                    stop=self.stop_requested,
                    start_at=self.start_at,
                )
            finally:
                await barrier.close()  # our arrival ends with the session
            if agreed is not None:
                offset = agreed.offset
                fields["barrier_wait_s"] = round(agreed.waited_s, 3)
                fields["barrier_start_server_s"] = round(agreed.start_server_s, 6)
                await sleep_until(offset.to_local(agreed.start_server_s), self.stop_requested)
        else:
            if self.fleet_size > 1:
                offset = await measure_offset(await observer.open())
            if self.start_at is not None:
                await sleep_until(self.start_at, self.stop_requested)
        if self.barrier_timeout is not None or self.start_at is not None:
            fields["start_wait_s"] = round(time.perf_counter() - began, 3)  # a stop cuts it
        if self.stop_requested.is_set():
            return fields  # no load begins
        if self.instance is None and self.start_at is None:
            return fields  # a run of its own: nothing to line up with
        now = time.time()
        fields["began_epoch_s"] = round(now, 6)
        if offset is not None:
            fields["server_clock_offset_ms"] = round(offset.offset_s * 1000, 3)
            fields["clock_rtt_ms"] = round(offset.rtt_s * 1000, 3)
            fields["began_server_s"] = round(offset.to_server(now), 6)
        return fields

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
            gate=faults.gate,
            on_all_done=all_done.set,
        )
        if self.dashboard is not None:
            self.dashboard.start()
        clients: list[asyncio.Task[None]] = []
        try:
            async with asyncio.TaskGroup() as group:
                starting = group.create_task(fleet.start_clients(clients))
                helpers = [
                    group.create_task(self._stop_when_due(config, fleet, clients, all_done)),
                    group.create_task(watcher.run()),
                    group.create_task(watcher.probe_loop_lag()),
                    group.create_task(faults.run()),
                ]
                if self.dashboard is not None:
                    helpers.append(
                        group.create_task(self._refresh_dashboard(self.dashboard, config, watcher))
                    )
                await starting
                await all_done.wait()
                for helper in helpers:
                    helper.cancel()
            if fleet.failure is not None:
                raise fleet.failure
        finally:  # (after a fault: what is still running ends, as a TaskGroup would end it)
            await fleet.wind_down(_by_client(fleet, clients), cancel_holders=True)
            if not fleet.stranded:  # else the process ends now: no collection is worth it
                gc.unfreeze()
                gc.enable()
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
        # What is in flight now only winds down: a full collection would look at every one of
        # its objects again and again (a second each at 28,000 requests) and find nothing.
        gc.disable()
        tasks = _by_client(fleet, clients)
        if self.stopping and exiting.may_strand():
            fleet.strand_waiters(tasks)  # the process ends with this run: they hold nothing
        fleet.cancel_waiters_first(tasks, cancel_holders=self.stopping)  # leakers too
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_GRACE_S):
                await all_done.wait()
        for task in clients:
            if task not in fleet.stranded:
                task.cancel()

    async def _refresh_dashboard(
        self, dashboard: LiveView, config: RunConfig, watcher: Watcher
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
                    queue_jumps=metrics.queue_jumps,
                    stats=watcher.latest,
                )
            )
            await asyncio.sleep(1 / REFRESH_PER_SECOND)


def _by_client(
    fleet: ClientFleet, tasks: list[asyncio.Task[None]]
) -> dict[int, asyncio.Task[None]]:
    """The clients' tasks by client id: those started so far (a stop during start-up starts
    no more)."""
    return {client.id: task for client, task in zip(fleet.clients, tasks, strict=False)}


def _moment(
    monitor: PoolMonitor,
    metrics: RunMetrics,
    server: dict[str, int] | None,
    utilisation: float | None,
    pool: dict[str, int] | None = None,
) -> Moment:
    """The pool now (or as `pool` says), outside a snapshot: at the start and at the end of a
    scenario."""
    return Moment(
        pool=pool if pool is not None else monitor.state(),
        oldest_wait_ms=monitor.oldest_wait_ms(),
        totals=metrics.totals(monitor.counters_now()),
        server=server,
        utilisation=utilisation,
    )


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
        "deadline_s": workload.deadline,
    }
