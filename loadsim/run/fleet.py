"""A fleet of application instances: N processes, each with its own engine and pool, as a
fleet of app servers has, against one server.

The parent starts the embedded server when there is no DATABASE_URL, checks that N x (pool_size
+ max_overflow) fits the server's max_connections, then, for each scenario, starts N instance
processes (`loadsim _instance`, given their resolved configuration on stdin) in sessions of
their own, so that a terminal's Ctrl-C reaches the parent alone and is passed on exactly once.
Each instance writes its events to a pipe; the parent writes them on, whole lines only, into
one stream, and ends each scenario with `run.summary`: the instances' figures added up, their
latency histograms merged, and a line per instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.engine import URL

from loadsim.config.settings import RunConfig
from loadsim.config.thresholds import evaluate
from loadsim.errors import DatabaseUnavailable, LoadsimError
from loadsim.run.database import EmbeddedPostgres, ServerObserver, server_info
from loadsim.run.engine import mask_url
from loadsim.run.events import EventLog, EventSink, LogFormat
from loadsim.run.histogram import merged_figures
from loadsim.run.runner import (
    RunOutcome,
    capacity_warning,
    new_run_id,
    scenario_url,
    start_server_if_needed,
)
from loadsim.schema import ADDITIVE_FIGURES, EVENT_NAMES, LATENCY_NAMES

INSTANCE_COMMAND = "_instance"
#: Exit codes of an instance that was stopped by a signal, not one that failed.
_STOPPED = {0, 1, 130, 143}


@dataclass(frozen=True)
class InstanceOrders:
    """What one instance process runs: handed to it pickled on stdin."""

    config: RunConfig
    run_id: str
    instance: int
    log_format: LogFormat
    kinds: frozenset[str]
    loop: str


class Fleet:
    def __init__(
        self,
        configs: Sequence[RunConfig],
        sink: EventSink,
        *,
        log_format: LogFormat = "json",
        warn: Callable[[str], None] = lambda message: None,
        kinds: frozenset[str] = EVENT_NAMES,
        loop: str = "auto",
    ) -> None:
        self.configs = list(configs)
        self.sink = sink
        self.log_format = log_format
        self.warn = warn
        self.kinds = kinds
        self.loop = loop
        self.outcome = RunOutcome(run_id=new_run_id())
        self._server: EmbeddedPostgres | None = None
        self._children: list[asyncio.subprocess.Process] = []
        self._signals = 0

    def run(self) -> RunOutcome:
        try:
            asyncio.run(self._main())
        finally:
            self.sink.flush()
            if self._server is not None:
                self._server.stop()
        return self.outcome

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._on_signal, signum)
        self._server = await start_server_if_needed(self.configs, self.warn)
        for config in self.configs:
            if self.outcome.interrupted_by is not None:
                break
            await self._run_scenario(config, scenario_url(config, self._server))

    def _on_signal(self, signum: int) -> None:
        """Passes each signal on to the instances, once; at the second, stop everything now."""
        self._signals += 1
        if self.outcome.interrupted_by is None:
            self.outcome.interrupted_by = signal.Signals(signum).name
        for child in self._children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGKILL if self._signals > 1 else signum)
        if self._signals > 1:
            if self._server is not None:
                self._server.stop(mode="immediate")
            self.sink.close()  # everything sent is written before we go
            os._exit(128 + signum)

    async def _run_scenario(self, config: RunConfig, url: URL) -> None:
        events = EventLog(
            self.sink,
            run_id=self.outcome.run_id,
            scenario=config.scenario,
            instance=None,
            log_format=self.log_format,
            kinds=self.kinds,
        )
        await self._check_capacity(config, url, events)
        database_url = url.render_as_string(hide_password=False)
        ends: dict[int, dict[str, Any]] = {}
        self._children = []
        for instance in range(config.instances):
            orders = InstanceOrders(
                # (sources is a read-only view, which pickle cannot carry: a plain copy can)
                config=replace(
                    config, database_url=database_url, thresholds=(), sources=dict(config.sources)
                ),
                run_id=self.outcome.run_id,
                instance=instance,
                log_format=self.log_format,
                kinds=self.kinds,
                loop=self.loop,
            )
            self._children.append(await _start_instance(orders))
        try:
            async with asyncio.TaskGroup() as group:
                for instance, child in enumerate(self._children):
                    group.create_task(self._relay(instance, child, ends))
        finally:
            for child in self._children:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
        failures = [
            (instance, child.returncode)
            for instance, child in enumerate(self._children)
            if child.returncode not in _STOPPED
        ]
        self._children = []
        if failures and not ends:
            instance, code = failures[0]
            if code == DatabaseUnavailable.exit_code:
                raise DatabaseUnavailable(f"instance {instance} could not use {mask_url(url)}")
            raise LoadsimError(f"instance {instance} of {config.scenario!r} failed (exit {code})")
        summary = aggregate([ends[instance] for instance in sorted(ends)])
        results = evaluate(config.thresholds, summary)
        for result in results:
            events.emit("run.threshold", **result)
        if results:
            summary["thresholds"] = results
        events.emit("run.summary", instances=config.instances, summary=summary)
        events.flush()
        self.outcome.summaries.append({"scenario": config.scenario, **summary})

    async def _relay(
        self, instance: int, child: asyncio.subprocess.Process, ends: dict[int, dict[str, Any]]
    ) -> None:
        """Writes an instance's events on, line by line, and keeps its run.end summary."""
        assert child.stdout is not None and child.stderr is not None
        errors = asyncio.create_task(_forward_stderr(child.stderr, self.warn, instance))
        async for line in child.stdout:
            if not line.endswith(b"\n"):
                break  # the instance died mid-line: a partial line is never passed on
            self.sink.msg(line)
            if b'"run.end"' in line[:120]:
                with contextlib.suppress(ValueError):
                    ends[instance] = json.loads(line)["summary"]
        await child.wait()
        await errors

    async def _check_capacity(self, config: RunConfig, url: URL, events: EventLog) -> None:
        observer = ServerObserver(url)
        try:
            info = await server_info(await observer.open())
        finally:
            await observer.close()
        message = capacity_warning(config, info, config.instances)
        if message is not None:
            events.emit("run.warning", message=message)
            self.warn(message)


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
    await child.stdin.drain()
    child.stdin.close()
    return child


async def _forward_stderr(
    stream: asyncio.StreamReader, warn: Callable[[str], None], instance: int
) -> None:
    async for line in stream:
        text = line.decode(errors="replace").rstrip()
        if text:
            warn(f"instance {instance}: {text}")


_SUMMED = ("clients", *ADDITIVE_FIGURES)


def aggregate(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The fleet's summary: counts and rates added up (`max_open` and `max_pending_requests`
    are sums of each instance's peak: an upper bound), latencies from merged histograms."""
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
    total["interrupted"] = any(summary.get("interrupted") for summary in summaries)
    total["instances"] = len(summaries)
    total["by_instance"] = [
        {
            "instance": index,
            "checkouts": summary["checkouts"],
            "checkouts_per_s": summary["checkouts_per_s"],
            "wait_time_p95_ms": summary["wait_time_ms"].get("p95"),
            "timeouts": summary["timeouts"],
            "errors": summary["errors"],
            "max_open": summary["max_open"],
        }
        for index, summary in enumerate(summaries)
    ]
    return total


def run_instance(payload: bytes, sink: EventSink, warn: Callable[[str], None]) -> RunOutcome:
    """The instance side: run one scenario as instance K of a fleet."""
    from loadsim.run.runner import Runner

    orders: InstanceOrders = pickle.loads(payload)
    return Runner(
        [orders.config],
        sink,
        log_format=orders.log_format,
        warn=warn,
        kinds=orders.kinds,
        loop=orders.loop,
        run_id=orders.run_id,
        instance=orders.instance,
    ).run()
