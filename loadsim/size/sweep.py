"""The sweep: the project's own runner, once per step, with the pool sizes and loads of a
`SweepPlan`; after each step's `run.end`, a `size.step`; at the end (also when a signal
stopped it: with what was measured), `size.fit` and `size.recommendation`.

Each step is one scenario run of `Runner` (its engine, monitor, metrics and histograms, its
clean stop), lasting the warm-up and the step; at the warm-up's end the metrics forget what
they had (`RunMetrics.discard_warmup`), so the step's summary is the measured time alone,
and the throughput is sampled as it goes to check that it was steady. A step cut short by a
signal is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import URL

from loadsim.config.settings import RunConfig
from loadsim.run.database import ServerInfo
from loadsim.run.events import EventLog, EventSink
from loadsim.run.metrics import RunMetrics
from loadsim.run.monitor import PoolMonitor, Watcher
from loadsim.run.runner import Runner
from loadsim.schema import RUN_EVENTS, SIZE_EVENTS
from loadsim.size.measure import WAIT_THRESHOLD_MS, disagreements, step_fields, unsteady
from loadsim.size.plan import Step, SweepPlan
from loadsim.size.recommend import CAPACITY, Recommendation, recommend
from loadsim.size.usl import UslFit, fit_usl

#: What a sweep writes: its own events and each step's run.* (start, end, thresholds).
SIZE_KINDS = RUN_EVENTS | SIZE_EVENTS
#: Throughput samples over a step's measured time, to check it was steady.
SAMPLES = 8


@dataclass
class SweepOutcome:
    steps: list[dict[str, Any]] = field(default_factory=list)
    fit: UslFit | None = None
    fit_fields: dict[str, Any] | None = None
    recommendation: Recommendation | None = None
    interrupted_by: str | None = None
    output_closed: bool = False


class SweepRunner(Runner):
    """Runs the plan's steps, one scenario run each, and concludes."""

    def __init__(
        self,
        plan: SweepPlan,
        sink: EventSink,
        *,
        warn: Callable[[str], None] = lambda message: None,
        on_step: Callable[[int, Step], None] = lambda index, step: None,
        on_result: Callable[[dict[str, Any]], None] = lambda fields: None,
        loop: str = "auto",
    ) -> None:
        super().__init__(
            [step.config for step in plan.steps], sink, warn=warn, kinds=SIZE_KINDS, loop=loop
        )
        self.plan = plan
        self.sweep = SweepOutcome()
        self._on_step, self._on_result = on_step, on_result
        self._next = 0
        self._step: Step | None = None
        self._metrics: RunMetrics | None = None
        self._samples: list[tuple[float, int]] = []
        self._warm = False
        self._server: ServerInfo | None = None
        self._log: EventLog | None = None

    async def _main(self) -> None:
        self._log = self.event_log(self.plan.base, 0)
        await super()._main()
        self._conclude()

    async def run_scenario(self, config: RunConfig, url: URL) -> None:
        self._step = self.plan.steps[self._next]
        self._on_step(self._next, self._step)
        self._next += 1
        await super().run_scenario(config, url)

    def warn_if_too_small(
        self, config: RunConfig, info: ServerInfo, events: EventLog, instances: int
    ) -> None:
        self._server = info
        super().warn_if_too_small(config, info, events, instances)

    async def _drive_clients(
        self,
        config: RunConfig,
        engine: Any,
        monitor: PoolMonitor,
        events: EventLog,
        faults: Any,
        watcher: Watcher,
    ) -> None:
        self._metrics, self._samples, self._warm = monitor.metrics, [], False
        measuring = asyncio.create_task(self._measure(monitor.metrics))
        try:
            await super()._drive_clients(config, engine, monitor, events, faults, watcher)
        finally:
            measuring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await measuring

    async def _measure(self, metrics: RunMetrics) -> None:
        await asyncio.sleep(self.plan.warmup_s)
        if metrics.stopped is not None:
            return  # stopped (a signal) before the warm-up ended: nothing to measure
        now = time.perf_counter()
        metrics.discard_warmup(now)
        self._warm = True
        self._samples.append((now, 0))
        period = self.plan.step_s / SAMPLES
        while True:
            await asyncio.sleep(period)
            if metrics.stopped is not None:
                return
            self._samples.append((time.perf_counter(), metrics.checkouts))

    def finish_scenario(
        self,
        config: RunConfig,
        events: EventLog,
        event: str,
        summary: dict[str, Any],
        **fields: Any,
    ) -> None:
        super().finish_scenario(config, events, event, summary, **fields)
        step, metrics = self._step, self._metrics
        if step is None or metrics is None or not self._warm or summary.get("interrupted"):
            return  # cut short (or still warming up) when a signal came: not counted
        if self.outcome.output_closed:
            return
        result = step_fields(
            step,
            summary,
            warmup_s=self.plan.warmup_s,
            p_wait=metrics.acquired_wait_time.share_above(WAIT_THRESHOLD_MS),
            hold_cv2=metrics.use_time.squared_variation(),
            samples=self._samples,
        )
        events.emit("size.step", **result)
        self.sweep.steps.append(result)
        self._on_result(result)

    def _conclude(self) -> None:
        log = self._log
        assert log is not None
        steps = self.sweep.steps
        self.sweep.interrupted_by = self.outcome.interrupted_by
        self.sweep.output_closed = self.outcome.output_closed
        if self.outcome.output_closed:
            return
        capacity = [step for step in steps if step["kind"] == CAPACITY and step["checkouts_per_s"]]
        fit_fields: dict[str, Any] = {"fitted": False, "reason": None, "points": len(capacity)}
        for name in ("gamma", "alpha", "beta", "r_squared", "peak", "ceiling", "knee"):
            fit_fields[name] = None
        fit_fields["predicted"] = []
        try:
            fit = fit_usl(
                [step["pool_size"] for step in capacity],
                [step["checkouts_per_s"] for step in capacity],
            )
        except ValueError as error:
            fit, fit_fields["reason"] = None, str(error)
        if fit is not None:
            largest = max(self.plan.sizes)
            fit_fields.update(
                fitted=True,
                gamma=round(fit.gamma, 3),
                alpha=round(fit.alpha, 6),
                beta=round(fit.beta, 8),
                r_squared=fit.r_squared,
                peak=round(fit.peak, 2) if fit.peak != float("inf") else None,
                ceiling=round(fit.ceiling, 2) if fit.ceiling != float("inf") else None,
                knee=fit.knee(largest),
                predicted=[
                    {"pool_size": size, "checkouts_per_s": round(fit.throughput(size), 2)}
                    for size in self.plan.sizes
                ],
            )
        log.emit("size.fit", **fit_fields)
        server = self._server
        available = server.available_connections if server is not None else None
        result = recommend(
            steps,
            slo=self.plan.slo.expression,
            knee=fit_fields["knee"],
            target_rate=self.plan.target_rate,
            instances=self.plan.instances,
            server_connections=available,
            edge=fit is not None
            and fit_fields["knee"] == max(self.plan.sizes)
            and (fit_fields["peak"] is None or fit_fields["peak"] > max(self.plan.sizes)),
        )
        log.emit(
            "size.recommendation",
            **result.fields(),
            slo=self.plan.slo.expression,
            target_rate=self.plan.target_rate,
            steps=len(steps),
            interrupted=self.outcome.interrupted_by is not None,
            notes=disagreements(steps) + unsteady(steps),
        )
        log.flush()
        self.sweep.fit, self.sweep.fit_fields, self.sweep.recommendation = fit, fit_fields, result
