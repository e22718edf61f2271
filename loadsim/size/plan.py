"""What a sweep measures, and in which order: pool sizes from `--pool-sizes`, a step's
configuration for each (pool size, kind, repeat), and an order that does not confound pool
size with the machine's drift (each repeat is a round of every step, shuffled by the seed).

- A capacity step is a closed, saturating load: two clients per connection, no think
  time, `max_overflow = 0`.
- A queue step is an open workload at the target rate (the scenario's arrivals, or
  `--rate`), Poisson unless the scenario says otherwise, `max_overflow = 0`, with the SLO
  as the run's threshold.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from loadsim.config.limits import MAX_ARRIVAL_RATE, POSTGRES_MAX_CONNECTIONS
from loadsim.config.scenario import Arrivals, Distribution, Faults
from loadsim.config.settings import RunConfig, check_resources
from loadsim.config.thresholds import Threshold
from loadsim.errors import ScenarioError
from loadsim.size.recommend import CAPACITY, QUEUE

#: `--pool-sizes auto`: doubling from one connection.
AUTO_SIZES = (1, 2, 4, 8, 16, 32)
#: Clients per connection in a capacity step: enough that a connection never waits for one.
CLIENTS_PER_CONNECTION = 2
MAX_REPEATS = 100


def parse_pool_sizes(text: str) -> tuple[int, ...]:
    """`2,4,8,16`, `4..16` (every size between), or `auto`: sorted, distinct, each >= 1."""
    text = text.strip()
    if text == "auto":
        return AUTO_SIZES
    span = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", text)
    try:
        if span is not None:
            low, high = int(span.group(1)), int(span.group(2))
            if low > high:
                raise ValueError
            sizes = tuple(range(low, high + 1))
        else:
            sizes = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise ScenarioError(
            f"--pool-sizes: expected sizes such as '2,4,8,16', a range such as '4..16', or "
            f"'auto', got {text!r}"
        ) from None
    if not sizes or sizes[0] < 1 or sizes[-1] > POSTGRES_MAX_CONNECTIONS:
        raise ScenarioError(
            f"--pool-sizes: each size must be 1 to {POSTGRES_MAX_CONNECTIONS:,} "
            f"(PostgreSQL's largest max_connections), got {text!r}"
        )
    if len(sizes) > 64:
        raise ScenarioError(f"--pool-sizes: at most 64 sizes a sweep, got {len(sizes)}")
    return sizes


@dataclass(frozen=True)
class Step:
    kind: str  # CAPACITY | QUEUE
    pool_size: int
    repeat: int
    config: RunConfig


@dataclass(frozen=True)
class SweepPlan:
    base: RunConfig
    sizes: tuple[int, ...]
    target_rate: float | None
    slo: Threshold
    warmup_s: float
    step_s: float
    repeats: int
    instances: int
    steps: tuple[Step, ...]

    @property
    def seconds(self) -> float:
        return len(self.steps) * (self.warmup_s + self.step_s)


def target_rate(base: RunConfig, rate: float | None) -> float | None:
    """`--rate`, else the scenario's own arrival rate (its last stage's target)."""
    if rate is not None:
        if not 0 < rate <= MAX_ARRIVAL_RATE:
            raise ScenarioError(
                f"--rate: a rate above 0 and at most {MAX_ARRIVAL_RATE:,.0f} a second, got {rate:g}"
            )
        return rate
    if base.arrivals is None:
        return None
    stages = base.arrivals.stages
    return stages[-1].target if stages else base.arrivals.rate


def plan_sweep(
    base: RunConfig,
    *,
    sizes: tuple[int, ...],
    slo: Threshold,
    rate: float | None,
    step_s: float,
    warmup_s: float,
    repeats: int,
    instances: int,
) -> SweepPlan:
    if not 1 <= repeats <= MAX_REPEATS:
        raise ScenarioError(f"--repeats: 1 to {MAX_REPEATS}, got {repeats}")
    if step_s <= 0:
        raise ScenarioError("--step-duration: must be above 0")
    target = target_rate(base, rate)
    kinds = (CAPACITY, QUEUE) if target is not None else (CAPACITY,)
    shuffle = random.Random(base.seed if base.seed is not None else 0)
    steps: list[Step] = []
    for repeat in range(repeats):
        round_ = [(kind, size) for size in sizes for kind in kinds]
        shuffle.shuffle(round_)
        steps.extend(
            Step(kind, size, repeat, step_config(base, kind, size, target, slo, warmup_s + step_s))
            for kind, size in round_
        )
    largest = max(sizes)
    for step in steps[: len(sizes) * len(kinds)]:  # one round: the largest pool's steps
        if step.pool_size == largest:  # the most clients and connections of any step
            try:
                check_resources(step.config)
            except ScenarioError as error:
                raise ScenarioError(
                    f"--pool-sizes: a {step.kind} step with a pool of {largest}: {error}"
                ) from None
    return SweepPlan(base, sizes, target, slo, warmup_s, step_s, repeats, instances, tuple(steps))


def step_config(
    base: RunConfig,
    kind: str,
    size: int,
    rate: float | None,
    slo: Threshold,
    seconds: float,
) -> RunConfig:
    """One step's run: the scenario's pool settings, its hold and query, at this size."""
    pool = replace(base.pool, pool_class="queue", pool_size=size, max_overflow=0)
    workload = replace(
        base.workload,
        clients=CLIENTS_PER_CONNECTION * size,
        duration=seconds,
        iterations=None,
        ramp_up=0.0,
        think=Distribution("fixed", 0.0),
    )
    arrivals = None
    thresholds: tuple[Threshold, ...] = ()
    if kind == QUEUE:
        assert rate is not None
        declared = base.arrivals
        arrivals = Arrivals(
            rate=rate,
            distribution=declared.distribution if declared is not None else "poisson",
            max_in_flight=declared.max_in_flight if declared is not None else 1000,
        )
        thresholds = (slo,)
    return replace(
        base,
        pool=pool,
        workload=workload,
        groups=(),
        faults=Faults(),
        arrivals=arrivals,
        thresholds=thresholds,
        instances=1,
    )
