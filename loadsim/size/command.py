"""`loadsim size`, end to end below the command line: the plan from the flags, the sweep,
its progress and, at the end, the table and the recommendation on stderr. Returns the exit
code: 0, 1 when no pool size qualifies, 128 + n after a signal."""

from __future__ import annotations

import sys
from collections.abc import Callable

from loadsim import signals
from loadsim.config.limits import max_instances
from loadsim.config.scenario import parse_duration
from loadsim.config.settings import RunConfig
from loadsim.config.thresholds import parse_threshold
from loadsim.errors import ScenarioError
from loadsim.run.events import EventSink
from loadsim.size.plan import parse_pool_sizes, plan_sweep
from loadsim.size.progress import SweepProgress
from loadsim.size.sweep import SweepRunner
from loadsim.size.table import format_sweep


def _seconds(flag: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise ScenarioError(f"{flag}: {error}") from None


def run_size(
    base: RunConfig,
    sink: EventSink,
    *,
    pool_sizes: str,
    slo: str,
    rate: float | None,
    instances: int,
    step_duration: str,
    warmup: str,
    repeats: int,
    quiet: bool,
    loop: str,
    warn: Callable[[str], None],
) -> int:
    try:
        threshold = parse_threshold(slo)
    except ValueError as error:
        raise ScenarioError(f"--slo: {error}") from None
    if not 1 <= instances <= max_instances():
        raise ScenarioError(f"--instances: 1 to {max_instances()} on this machine, got {instances}")
    plan = plan_sweep(
        base,
        sizes=parse_pool_sizes(pool_sizes),
        slo=threshold,
        rate=rate,
        step_s=_seconds("--step-duration", step_duration),
        warmup_s=_seconds("--warmup", warmup),
        repeats=repeats,
        instances=instances,
    )
    if not quiet:
        kinds = "capacity and queue" if plan.target_rate is not None else "capacity"
        print(
            f"loadsim: size {base.scenario}: pool sizes {', '.join(map(str, plan.sizes))}, "
            f"{kinds} steps, {plan.repeats} repeats: {len(plan.steps)} steps, about "
            f"{plan.seconds:.0f} s",
            file=sys.stderr,
        )
    progress = SweepProgress(plan, live=sys.stderr.isatty() and not quiet)
    runner = SweepRunner(
        plan,
        sink,
        warn=warn,
        on_step=progress.step,
        on_result=progress.result if not quiet else lambda fields: None,
        loop=loop,
    )
    try:
        runner.run()
    finally:
        progress.stop()
    sweep = runner.sweep
    recommendation = sweep.recommendation
    if not quiet and recommendation is not None:
        predicted = {
            point["pool_size"]: point["checkouts_per_s"]
            for point in (sweep.fit_fields or {}).get("predicted", [])
        }
        fit = sweep.fit_fields or {}
        lines = [format_sweep(sweep.steps, predicted, None), ""]
        if fit.get("fitted"):
            lines.append(
                f"USL: gamma {fit['gamma']:g}/s, alpha {fit['alpha']:g}, beta {fit['beta']:g}, "
                f"N* {fit['peak'] if fit['peak'] is not None else 'none'}, ceiling "
                f"{fit['ceiling'] if fit['ceiling'] is not None else 'none'}/s, knee "
                f"{fit['knee']} (R squared {fit['r_squared']:g})"
            )
        elif fit:
            lines.append(f"USL: not fitted: {fit['reason']}")
        print("\n".join(lines), file=sys.stderr)
    if sweep.interrupted_by is not None:
        if not quiet:
            print(
                f"loadsim: size interrupted after {len(sweep.steps)} of {len(plan.steps)} steps; "
                "the recommendation is from those",
                file=sys.stderr,
            )
        if recommendation is not None and not quiet:
            print(f"recommendation: {recommendation.reason}", file=sys.stderr)
        return signals.exit_status(sweep.interrupted_by)
    if recommendation is None:
        return 0  # the output closed: nobody is reading
    if not recommendation.met or recommendation.pool_size is None:
        print(f"loadsim: no pool size qualifies: {recommendation.reason}", file=sys.stderr)
        return 1
    if not quiet:
        print(f"recommendation: {recommendation.reason}", file=sys.stderr)
    return 0
