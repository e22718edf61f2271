"""A fleet of application instances: N processes, each with its own engine and pool, as a
fleet of app servers has, against one server.

The parent's lifecycle is a single run's (`Lifecycle`): it starts the embedded server when
there is no DATABASE_URL, checks that N x (pool_size + max_overflow) fits the server's
max_connections, then, for each scenario, starts N instance processes (`loadsim _instance`,
given their resolved configuration on stdin) in sessions of their own, so that a terminal's
Ctrl-C reaches the parent alone and is passed on exactly once. Each instance writes its events
to a pipe; the parent writes them on, whole lines only, into one stream, and ends each
scenario with `run.summary`: the instances' figures added up, their latency histograms
merged, and a line per instance.

An instance's stdin stays open while it runs: the parent closes it when its own output has
closed, and the instance stops as a run whose output closed does. An instance that exits
with a status the parent did not cause with a signal, or is killed, has failed: a
`run.warning` names it, the summary lists it in `failed_instances`, and the run fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import IO, Any

from sqlalchemy.engine import URL

from loadsim import signals
from loadsim.config.settings import RunConfig
from loadsim.errors import DatabaseUnavailable, InstanceFailed
from loadsim.run.dashboard import DashboardSnapshot, LiveView
from loadsim.run.database import ServerObserver, server_info
from loadsim.run.engine import mask_url, render_url
from loadsim.run.events import EventLog, EventSink, LogFormat
from loadsim.run.histogram import merged_figures
from loadsim.run.lifecycle import Lifecycle, RunOutcome
from loadsim.run.live_metrics import check_fleet_ports
from loadsim.run.metrics import share
from loadsim.run.session_settings import check_session_settings
from loadsim.schema import ADDITIVE_FIGURES, DEFAULT_EVENTS, LATENCY_NAMES

INSTANCE_COMMAND = "_instance"
#: How an instance may end once we passed it a signal: stopped by it (128 + n: 130, 143,
#: 129), finished first (0), or killed by it (at a second signal: SIGKILL).
_STOPPED_BY_US = {
    0,
    *(128 + n for n in signals.STOP_SIGNALS),
    *(-n for n in signals.STOP_SIGNALS),
    -signal.SIGKILL,
}
#: How long a signal waits for an instance to have its handlers (its interpreter starting).
_READY_WAIT_S = 10.0


@dataclass(frozen=True)
class InstanceOrders:
    """What one instance process runs: handed to it pickled on stdin."""

    config: RunConfig
    run_id: str
    instance: int
    log_format: LogFormat
    kinds: frozenset[str]
    loop: str


class Fleet(Lifecycle):
    """The scenarios run by instance processes, their events relayed into one stream. The
    lifecycle around them is `Lifecycle`'s: a signal is passed on to the instances, and a
    closed output is passed on by closing their stdin (they stop as a run whose output
    closed does, and their summaries still come back for the table on stderr)."""

    def __init__(
        self,
        configs: Sequence[RunConfig],
        sink: EventSink,
        *,
        log_format: LogFormat = "json",
        warn: Callable[[str], None] = lambda message: None,
        kinds: frozenset[str] = DEFAULT_EVENTS,
        loop: str = "auto",
        view: LiveView | None = None,
    ) -> None:
        super().__init__(configs, sink, log_format=log_format, warn=warn, kinds=kinds, loop=loop)
        #: Shown the fleet's figures, added up from each instance's latest monitor.stats.
        self.view = view
        self._latest: dict[int, dict[str, Any]] = {}
        self._children: list[asyncio.subprocess.Process] = []
        self._passing: set[asyncio.Task[None]] = set()  # signals waiting for an instance

    def run(self) -> RunOutcome:
        check_fleet_ports(self.configs)  # each instance serves its own /metrics
        return super().run()

    def on_signal(self, signum: int, again: bool) -> None:
        """Passes each signal on to the instances, once; at the second, kills them."""
        for child in self._children:
            if again:
                _send_signal(child, signal.SIGKILL)
            else:
                self._pass_on(child, signum)

    def _pass_on(self, child: asyncio.subprocess.Process, signum: int) -> None:
        """The signal to an instance as soon as it has loadsim's handlers: one still in its
        interpreter's start-up would die of it with a traceback, and fail the fleet."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # (no loop: no instance is starting either)
            loop = None
        if loop is not None and signals.handles_stop_signals(child.pid) is False:
            task = loop.create_task(_send_when_ready(child, signum))
            self._passing.add(task)
            task.add_done_callback(self._passing.discard)
        else:
            _send_signal(child, signum)

    def on_output_closed(self) -> None:
        for child in self._children:
            _close_stdin(child)

    def _pass_on_stop(self, child: asyncio.subprocess.Process) -> None:
        """For an instance that started while the run was being stopped."""
        if self.outcome.interrupted_by is not None:
            self._pass_on(child, signal.Signals[self.outcome.interrupted_by])
        elif self.outcome.output_closed:
            _close_stdin(child)

    async def run_scenario(self, config: RunConfig, url: URL) -> None:
        events = self.event_log(config, None)
        await self._check_capacity(config, url, events)
        if self.stopping:
            return  # stopped before any instance started
        database_url = render_url(url)  # what parse_database_url reads back exactly
        ends: dict[int, dict[str, Any]] = {}
        starts: dict[int, dict[str, Any]] = {}
        self._children = []
        try:
            for instance in range(config.instances):
                orders = InstanceOrders(
                    # (sources and session are read-only views, which pickle cannot carry:
                    # plain copies can)
                    config=replace(
                        config,
                        database_url=database_url,
                        thresholds=(),
                        sources=dict(config.sources),
                        session=dict(config.session),
                    ),
                    run_id=self.outcome.run_id,
                    instance=instance,
                    log_format=self.log_format,
                    kinds=self.kinds,
                    loop=self.loop,
                )
                child = await _start_instance(orders)
                self._children.append(child)
                if self.stopping:
                    self._pass_on_stop(child)
            self._latest = {}
            if self.view is not None:
                self.view.start()
            async with asyncio.TaskGroup() as group:
                for instance, child in enumerate(self._children):
                    group.create_task(self._relay(instance, child, starts, ends, config))
        finally:
            if self.view is not None:
                self.view.stop()
            for child in self._children:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                _close_stdin(child)
        children, self._children = self._children, []
        failures = [
            (instance, child.returncode)
            for instance, child in enumerate(children)
            if child.returncode is not None and not self._ended_well(child.returncode)
        ]
        for instance, code in failures:
            message = f"instance {instance} of {config.scenario!r} {_how_it_ended(code, url)}"
            self.warning(events, message, on_stderr=False)  # the CLI says it as an error
        failure = _failure(config, url, failures)
        if not ends:
            if failure is not None:
                raise failure  # nothing ran: the run cannot go on
            return  # every instance stopped by our signal before it reported
        summary = aggregate(ends, failures)
        skew = start_skew_ms(starts.values())
        self.finish_scenario(
            config,
            events,
            "run.summary",
            summary,
            instances=config.instances,
            **({} if skew is None else {"start_skew_ms": skew}),
        )
        if failure is not None:
            self.outcome.failures.append(failure)

    def _ended_well(self, code: int) -> bool:
        """Finished, or stopped by a signal we passed on; anything else is a failure."""
        return code == 0 or (self.outcome.interrupted_by is not None and code in _STOPPED_BY_US)

    async def _relay(
        self,
        instance: int,
        child: asyncio.subprocess.Process,
        starts: dict[int, dict[str, Any]],
        ends: dict[int, dict[str, Any]],
        config: RunConfig,
    ) -> None:
        """Writes an instance's events on, line by line, and keeps its run.start and its
        run.end summary."""
        assert child.stdout is not None and child.stderr is not None
        errors = asyncio.create_task(_forward_stderr(child.stderr, self.warn, instance))
        async for line in child.stdout:
            if not line.endswith(b"\n"):
                break  # the instance died mid-line: a partial line is never passed on
            self.sink.msg(line)
            if b'"run.end"' in line[:120]:
                with contextlib.suppress(ValueError):
                    ends[instance] = json.loads(line)["summary"]
            elif b'"run.start"' in line[:120]:
                with contextlib.suppress(ValueError):
                    starts[instance] = json.loads(line)
            elif self.view is not None and b'"monitor.stats"' in line[:120]:
                with contextlib.suppress(ValueError):
                    self._latest[instance] = json.loads(line)
                    self.view.update(fleet_snapshot(config, self._latest))
        await child.wait()
        await errors

    async def _check_capacity(self, config: RunConfig, url: URL, events: EventLog) -> None:
        observer = ServerObserver(url)
        try:
            info = await server_info(await observer.open())
            # a setting the server refuses is one line here, not one per instance
            await check_session_settings(config.session_settings, url, observer, config.scenario)
        finally:
            await observer.close()
        self.warn_if_too_small(config, info, events, instances=config.instances)


def _how_it_ended(code: int, url: URL, several: bool = False) -> str:
    if code < 0:
        return f"{'were' if several else 'was'} killed by {signal.Signals(-code).name}"
    if code == DatabaseUnavailable.exit_code:
        return f"could not use {mask_url(url)} (exit status {code})"
    return f"failed (exit status {code})"


def _failure(
    config: RunConfig, url: URL, failures: Sequence[tuple[int, int]]
) -> InstanceFailed | None:
    """One error for a scenario's failed instances, with the exit code of the first that
    said what went wrong (2: bad input, 3: the database), else 1."""
    if not failures:
        return None
    said = [code for _, code in failures if code in (2, DatabaseUnavailable.exit_code)]
    alike: dict[int, list[str]] = {}  # instances that ended alike are said once
    for instance, code in failures:
        alike.setdefault(code, []).append(str(instance))
    message = "; ".join(
        f"{_instances(numbers)} of {config.scenario!r} "
        f"{_how_it_ended(code, url, several=len(numbers) > 1)}"
        for code, numbers in alike.items()
    )
    return InstanceFailed(message, exit_code=said[0] if said else 1)


def _instances(numbers: list[str]) -> str:
    if len(numbers) == 1:
        return f"instance {numbers[0]}"
    return f"instances {', '.join(numbers[:-1])} and {numbers[-1]}"


def _send_signal(child: asyncio.subprocess.Process, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.send_signal(signum)


async def _send_when_ready(child: asyncio.subprocess.Process, signum: int) -> None:
    """Sends `signum` once the instance handles it (or has ended, or after _READY_WAIT_S)."""
    deadline = asyncio.get_running_loop().time() + _READY_WAIT_S
    while child.returncode is None and signals.handles_stop_signals(child.pid) is False:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.005)
    if child.returncode is None:
        _send_signal(child, signum)


def _close_stdin(child: asyncio.subprocess.Process) -> None:
    """The end of an instance's stdin tells it that the fleet's output has closed."""
    if child.stdin is not None and not child.stdin.is_closing():
        child.stdin.close()


async def _start_instance(orders: InstanceOrders) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadsim",
        INSTANCE_COMMAND,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # a terminal's Ctrl-C reaches the parent only
        limit=1 << 24,
    )
    assert child.stdin is not None
    child.stdin.write(pickle.dumps(orders))
    with contextlib.suppress(ConnectionError):  # it died at once: its exit status says why
        await child.stdin.drain()
    return child  # its stdin stays open: see `on_output_closed`


async def _forward_stderr(
    stream: asyncio.StreamReader, warn: Callable[[str], None], instance: int
) -> None:
    async for line in stream:
        text = line.decode(errors="replace").rstrip()
        if text:
            warn(f"instance {instance}: {text}")


_SUMMED = ("clients", *ADDITIVE_FIGURES)


def fleet_snapshot(config: RunConfig, latest: Mapping[int, Mapping[str, Any]]) -> DashboardSnapshot:
    """The fleet's figures from each instance's latest `monitor.stats`: counts and rates
    added up, the oldest wait the oldest of any. Percentiles do not add up, and the
    instances' histograms come only with run.end: none are shown while it runs."""
    stats = list(latest.values())

    def total(key: str) -> int:
        return sum(int(item.get(key) or 0) for item in stats)

    def counted(key: str) -> int:
        return sum(int((item.get("totals") or {}).get(key) or 0) for item in stats)

    capacity = config.pool.capacity
    return DashboardSnapshot(
        scenario=config.scenario,
        elapsed_s=max(float(item.get("t") or 0.0) for item in stats),
        duration_s=config.workload.duration,
        pool_size=config.pool.pool_size * config.instances,
        capacity=None if capacity is None else capacity * config.instances,
        used=total("connections_used"),
        idle=total("connections_idle"),
        overflow=total("overflow"),
        waiting=total("pending_requests"),
        oldest_wait_ms=max(float(item.get("oldest_wait_ms") or 0.0) for item in stats),
        checkouts=counted("checkouts"),
        timeouts=counted("timeouts"),
        errors=counted("errors"),
        leaks=counted("leaks_suspected"),
        queue_jumps=counted("queue_jumps"),
        stats={
            "checkouts_per_s": sum(float(item.get("checkouts_per_s") or 0.0) for item in stats),
            "totals": {"requests": counted("requests"), "dropped": counted("dropped")},
        },
    )


def start_skew_ms(starts: Iterable[Mapping[str, Any]]) -> float | None:
    """How far apart a fleet's instances began their load, from their run.start events: on
    the database server's clock when every one has it (shards, each of which measured its
    clock against the server's), else on their own clocks (one machine's, for --instances).
    Instances that never began (a stop came first) are left out; None with fewer than two
    that began (or logs older than these fields)."""
    began = [start for start in starts if _number(start.get("began_epoch_s"))]
    if len(began) < 2:
        return None
    key = "began_server_s" if all(_number(s.get("began_server_s")) for s in began) else None
    instants = [float(start[key or "began_epoch_s"]) for start in began]
    return round((max(instants) - min(instants)) * 1000, 3)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def aggregate(
    ends: Mapping[int, dict[str, Any]], failed: Sequence[tuple[int, int]] = ()
) -> dict[str, Any]:
    """The fleet's summary from the instances' `run.end` summaries, by instance: counts and
    rates added up (`max_open` and `max_pending_requests` are sums of each instance's peak:
    an upper bound), latencies from merged histograms. `failed`, (instance, exit status)
    pairs, become `failed_instances`: a failed instance's figures are those it reported
    before it failed, if any, never zeros in its name."""
    numbers = sorted(ends)
    summaries = [ends[instance] for instance in numbers]
    total: dict[str, Any] = {
        key: round(sum(summary.get(key) or 0 for summary in summaries), 3) for key in _SUMMED
    }
    total["elapsed_s"] = max((summary["elapsed_s"] for summary in summaries), default=0.0)
    for name in LATENCY_NAMES:
        key = f"{name}_ms"
        encoded = [summary["histograms"][name] for summary in summaries if "histograms" in summary]
        counts = [
            (summary[key].get("count", 0), summary[key].get("mean", 0.0)) for summary in summaries
        ]
        total[key] = merged_figures(encoded, counts)
    utilisations = [
        s["utilisation_mean"] for s in summaries if s.get("utilisation_mean") is not None
    ]
    total["utilisation_mean"] = (
        round(sum(utilisations) / len(utilisations), 4) if utilisations else None
    )
    peaks = [s["utilisation_max"] for s in summaries if s.get("utilisation_max") is not None]
    total["utilisation_max"] = max(peaks) if peaks else None
    errors_by_kind: dict[str, int] = {}
    for summary in summaries:
        for kind, count in summary.get("errors_by_kind", {}).items():
            errors_by_kind[kind] = errors_by_kind.get(kind, 0) + count
    total["errors_by_kind"] = errors_by_kind
    total["reuse_ratio"] = (
        round(total["checkouts"] / total["connects"], 2) if total["connects"] else None
    )
    total["queue_jump_share"] = share(total["queue_jumps"], total["checkouts"])
    total["interrupted"] = any(summary.get("interrupted") for summary in summaries)
    total["instances"] = len(summaries)
    total["failed_instances"] = [
        {"instance": instance, "exit_status": code} for instance, code in failed
    ]
    total["by_instance"] = [
        {
            "instance": instance,
            "checkouts": summary["checkouts"],
            "checkouts_per_s": summary["checkouts_per_s"],
            "wait_time_p95_ms": summary["wait_time_ms"].get("p95"),
            "timeouts": summary["timeouts"],
            "errors": summary["errors"],
            "max_open": summary["max_open"],
        }
        for instance, summary in zip(numbers, summaries, strict=True)
    ]
    return total


def run_instance(source: IO[bytes], sink: EventSink, warn: Callable[[str], None]) -> RunOutcome:
    """The instance side: run one scenario as instance K of a fleet. Its orders come pickled
    on `source` (stdin), which then stays open until the fleet's output closes."""
    from loadsim.run.runner import Runner  # (the parent never needs the run's own modules)

    orders: InstanceOrders = pickle.load(source)
    return Runner(
        [orders.config],
        sink,
        log_format=orders.log_format,
        warn=warn,
        kinds=orders.kinds,
        loop=orders.loop,
        run_id=orders.run_id,
        instance=orders.instance,
        parent_fd=source.fileno(),
    ).run()
