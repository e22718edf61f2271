"""The recommendation, from measured steps (the fields of `size.step` events): the smallest
pool that meets the SLO at the target rate, never past the knee; `max_overflow` for bursts,
up to the knee; and, for a fleet, what each instance may have within the server's
connections, and what one shared pool would save.

Pure: steps in, a `Recommendation` out, so that a recorded log gives the same answer.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from loadsim.size.erlang import predict, smallest_pool

CAPACITY, QUEUE = "capacity", "queue"


@dataclass(frozen=True)
class Recommendation:
    pool_size: int | None  # None: no size qualifies (the command exits 1)
    max_overflow: int
    met: bool
    reason: str
    knee: int | None
    instances: int
    fleet_connections: int | None  # instances x (pool_size + max_overflow)
    server_connections: int | None  # the server's max_connections less its reserved slots
    shared_pool_size: int | None  # one pool for the whole fleet, by Erlang C
    shared_saving: int | None  # connections the shared pool saves

    def fields(self) -> dict[str, Any]:
        return asdict(self)


def sizes_meeting(steps: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, int]]:
    """For each pool size with queue steps: (repeats that met the SLO, repeats)."""
    tally: dict[int, tuple[int, int]] = {}
    for step in steps:
        if step["kind"] != QUEUE or step.get("slo_passed") is None:
            continue
        passed, total = tally.get(step["pool_size"], (0, 0))
        tally[step["pool_size"]] = (passed + bool(step["slo_passed"]), total + 1)
    return dict(sorted(tally.items()))


def _median(steps: Sequence[Mapping[str, Any]], size: int, key: str) -> float | None:
    values = [
        step[key]
        for step in steps
        if step["kind"] == QUEUE and step["pool_size"] == size and step.get(key) is not None
    ]
    return statistics.median(values) if values else None


def recommend(
    steps: Sequence[Mapping[str, Any]],
    *,
    slo: str,
    knee: int | None,
    target_rate: float | None,
    instances: int = 1,
    server_connections: int | None = None,
    edge: bool = False,
) -> Recommendation:
    """`slo` is the SLO's text (for the reason); `knee` from the USL fit of the capacity
    steps (None: no fit), `edge` when that is only the largest size measured (throughput was
    still growing there); `target_rate` the queue steps' arrival rate per instance."""
    meeting = sizes_meeting(steps)
    knee_words = (
        f"the knee at {knee} connections, past which more connections buy no throughput"
        if knee is not None
        else None
    )
    if edge and knee is not None:  # throughput still grows at the largest size measured
        knee_words = f"the largest size measured, {knee} (no knee within the sweep)"

    def done(pool: int | None, overflow: int, met: bool, reason: str) -> Recommendation:
        return _fleet(
            steps, pool, overflow, met, reason, knee, target_rate, instances, server_connections
        )

    if not meeting:  # no target rate: only the capacity sweep
        capacity = [step for step in steps if step["kind"] == CAPACITY]
        if knee is not None:
            return done(
                knee,
                0,
                True,
                f"pool_size {knee}: no target rate was given, so "
                f"{knee_words}; give --rate to size for an SLO",
            )
        if not capacity:
            return done(None, 0, False, "nothing was measured")
        best = max(capacity, key=lambda step: step["checkouts_per_s"])
        return done(
            best["pool_size"],
            0,
            True,
            f"pool_size {best['pool_size']}: the highest "
            "throughput measured (too few sizes for a fit, and no target rate)",
        )
    rate = f"{target_rate:g}/s" if target_rate is not None else "the target rate"
    passing = [size for size, (passed, total) in meeting.items() if passed * 2 > total]
    if not passing:
        largest = max(meeting)
        value = _median(steps, largest, "slo_value")
        shown = "no value" if value is None else f"{value:g}"
        why = f"no pool size measured meets {slo} at {rate}: the largest, {largest}, had {shown}"
        if knee is not None and largest >= knee and not edge:
            why += (
                f"; it is past {knee_words}: the server, not the pool, is the limit "
                "(a faster query, or a bigger server)"
            )
        else:
            why += "; measure larger pools (--pool-sizes)"
        return done(None, 0, False, why)
    chosen = passing[0]
    passed, total = meeting[chosen]
    if knee is not None and chosen > knee:
        return done(
            None,
            0,
            False,
            f"the smallest pool meeting {slo} at {rate} is {chosen}, "
            f"past {knee_words}: the server, not the pool, is the limit",
        )
    value = _median(steps, chosen, "slo_value")
    model = _median(steps, chosen, "model_p99_wait_ms")
    reason = (
        f"pool_size {chosen}: the smallest pool that meets {slo} at {rate} "
        f"({'' if value is None else f'median {value:g}, '}met in {passed} of {total} repeats"
    )
    if model is not None:
        reason += f"; Erlang C predicts a p99 wait of {model:.3g} ms"
    reason += ")"
    overflow = max(knee - chosen, 0) if knee is not None else 0
    if overflow:
        reason += f"; max_overflow {overflow} for bursts, up to {knee_words}"
    elif knee is not None:
        reason += f"; max_overflow 0: it is already at {knee_words}"
    return done(chosen, overflow, True, reason)


def _fleet(
    steps: Sequence[Mapping[str, Any]],
    pool: int | None,
    overflow: int,
    met: bool,
    reason: str,
    knee: int | None,
    target_rate: float | None,
    instances: int,
    server_connections: int | None,
) -> Recommendation:
    """The fleet's limits on the recommendation, and what one shared pool would need."""
    shared = saving = fleet = None
    if pool is not None:
        fleet = instances * (pool + overflow)
        if server_connections is not None and fleet > server_connections:
            room = server_connections // instances - pool
            if room < 0:
                return Recommendation(
                    None,
                    0,
                    False,
                    f"{instances} instances x pool_size {pool} = {instances * pool} connections, "
                    f"but the server allows {server_connections} (max_connections less its "
                    "reserved slots): raise max_connections, run fewer instances, or share "
                    "one pool through a pooler such as PgBouncer",
                    knee,
                    instances,
                    instances * pool,
                    server_connections,
                    None,
                    None,
                )
            reason += (
                f"; max_overflow cut from {overflow} to {room} so that {instances} "
                f"instances fit the server's {server_connections} connections"
            )
            overflow = room
            fleet = instances * (pool + overflow)
        hold = _median(steps, pool, "use_mean_ms")
        model = _median(steps, pool, "model_p99_wait_ms")
        if instances > 1 and target_rate and hold and model is not None:
            one = predict(pool, target_rate, hold)
            target = max(model, one.wait_percentile_ms(99))
            shared = smallest_pool(target_rate * instances, hold, target)
            if shared is not None:
                saving = instances * pool - shared
                reason += (
                    f"; one pool shared by the {instances} instances (a pooler such as "
                    f"PgBouncer) would need {shared} connections for the same p99 wait, "
                    f"{saving} fewer than {instances} x {pool}"
                )
    return Recommendation(
        pool, overflow, met, reason, knee, instances, fleet, server_connections, shared, saving
    )
