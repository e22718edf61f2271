"""One measured step, as the fields of its `size.step` event: what the run's summary says
(after the warm-up), P(wait), whether it was steady, and, for a queue step, what Erlang C
predicts from the measured arrival rate and mean hold.

P(wait) is measured as the share of checkouts that waited longer than `WAIT_THRESHOLD_MS`
(a checkout that does not queue still takes a little while to be handed a connection), and
set beside the model's P(Wq > that), like with like, as well as Erlang C's C(c, a).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from loadsim.size.erlang import predict
from loadsim.size.plan import Step
from loadsim.size.recommend import QUEUE

#: A wait longer than this counts as having queued.
WAIT_THRESHOLD_MS = 1.0
#: A step whose throughput in its second half differs from its first by more than this
#: share did not reach a steady state.
STEADY_DRIFT = 0.2
#: Measurement and model "differ" past this share (the issue's "more than a quarter").
MODEL_GAP = 0.25


def drift(samples: Sequence[tuple[float, int]]) -> float | None:
    """(seconds, checkouts so far) samples → the second half's rate against the first's,
    minus 1 (None with too few samples)."""
    if len(samples) < 3:
        return None
    middle = len(samples) // 2
    (t0, c0), (t1, c1), (t2, c2) = samples[0], samples[middle], samples[-1]
    if t1 <= t0 or t2 <= t1:
        return None
    first, second = (c1 - c0) / (t1 - t0), (c2 - c1) / (t2 - t1)
    if first <= 0:
        return None if second <= 0 else math.inf
    return round(second / first - 1, 4)


def _figure(summary: Mapping[str, Any], latency: str, stat: str) -> float | None:
    figures = summary.get(latency) or {}
    value = figures.get(stat)
    if value is None and figures.get("count") == 0:
        return 0.0
    return float(value) if value is not None else None


def step_fields(
    step: Step,
    summary: Mapping[str, Any],
    *,
    warmup_s: float,
    p_wait: float,
    hold_cv2: float | None,
    samples: Sequence[tuple[float, int]],
) -> dict[str, Any]:
    change = drift(samples)
    fields: dict[str, Any] = {
        "kind": step.kind,
        "pool_size": step.pool_size,
        "repeat": step.repeat,
        "clients": summary.get("clients"),
        "warmup_s": warmup_s,
        "elapsed_s": summary.get("elapsed_s"),
        "checkouts": summary.get("checkouts"),
        "checkouts_per_s": summary.get("checkouts_per_s"),
        "requests_per_s": summary.get("requests_per_s") if step.kind == QUEUE else None,
        "dropped": summary.get("dropped", 0),
        "timeouts": summary.get("timeouts", 0),
        "errors": summary.get("errors", 0),
        "wait_mean_ms": _figure(summary, "wait_time_ms", "mean"),
        "wait_p50_ms": _figure(summary, "wait_time_ms", "p50"),
        "wait_p99_ms": _figure(summary, "wait_time_ms", "p99"),
        "use_mean_ms": _figure(summary, "use_time_ms", "mean"),
        "use_p99_ms": _figure(summary, "use_time_ms", "p99"),
        "hold_cv2": None if hold_cv2 is None else round(hold_cv2, 4),
        "p_wait": round(p_wait, 4),
        "wait_threshold_ms": WAIT_THRESHOLD_MS,
        "loop_lag_p99_ms": _figure(summary, "loop_lag_ms", "p99"),
        "utilisation": summary.get("utilisation_mean"),
        "server_memory_peak_mb": summary.get("server_memory_peak_mb"),
        "server_memory_per_connection_mb": summary.get("server_memory_per_connection_mb"),
        "drift": None if change is None or not math.isfinite(change) else change,
        "steady": change is not None and abs(change) <= STEADY_DRIFT,
        "slo_value": None,
        "slo_passed": None,
        "model_p_wait": None,
        "model_p_wait_longer": None,
        "model_mean_wait_ms": None,
        "model_p99_wait_ms": None,
        "model_gap": None,
    }
    if step.kind == QUEUE:
        verdicts = summary.get("thresholds") or []
        if verdicts:
            fields["slo_value"], fields["slo_passed"] = verdicts[0]["value"], verdicts[0]["passed"]
        arrivals = step.config.arrivals
        fields.update(
            _model(step, fields, arrivals is not None and arrivals.distribution == "poisson")
        )
    return fields


def _model(step: Step, fields: Mapping[str, Any], poisson: bool) -> dict[str, Any]:
    rate, hold = fields["checkouts_per_s"], fields["use_mean_ms"]
    if not rate or not hold:
        return {}
    prediction = predict(
        step.pool_size,
        float(rate),
        float(hold),
        arrival_cv2=1.0 if poisson else 0.0,
        hold_cv2=fields["hold_cv2"] if fields["hold_cv2"] is not None else 1.0,
    )
    model: dict[str, Any] = {
        "model_p_wait": round(prediction.p_wait, 4),
        "model_p_wait_longer": round(prediction.p_wait_longer(WAIT_THRESHOLD_MS), 4),
        "model_mean_wait_ms": _finite(prediction.mean_wait_ms),
        "model_p99_wait_ms": _finite(prediction.wait_percentile_ms(99)),
    }
    measured, modelled = fields["wait_mean_ms"], prediction.mean_wait_ms
    if measured is not None and math.isfinite(modelled):
        scale = max(measured, modelled)
        model["model_gap"] = round((measured - modelled) / scale, 4) if scale > 0 else 0.0
    return model


def _finite(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


def disagreements(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where measured waits and Erlang C's differ by more than a quarter (and by more than
    the wait threshold), with the likely cause."""
    queue = [step for step in steps if step["kind"] == QUEUE and step.get("model_gap") is not None]
    if not queue:
        return []
    smallest = min(queue, key=lambda step: step["pool_size"])
    base_hold = smallest["use_mean_ms"] or 0.0
    notes = []
    for size in sorted({step["pool_size"] for step in queue}):
        mine = [step for step in queue if step["pool_size"] == size]
        gap = sorted(step["model_gap"] for step in mine)[len(mine) // 2]
        measured = sorted(step["wait_mean_ms"] for step in mine)[len(mine) // 2]
        modelled = sorted(step["model_mean_wait_ms"] or 0.0 for step in mine)[len(mine) // 2]
        if abs(gap) <= MODEL_GAP or abs(measured - modelled) <= WAIT_THRESHOLD_MS:
            continue
        hold = sorted(step["use_mean_ms"] for step in mine)[len(mine) // 2]
        lag = max(step["loop_lag_p99_ms"] or 0.0 for step in mine)
        if base_hold and hold > 1.25 * base_hold and size > smallest["pool_size"]:
            cause = (
                f"hold time grows with the pool ({base_hold:.3g} ms at {smallest['pool_size']}, "
                f"{hold:.3g} ms here): the server is the bottleneck"
            )
        elif lag > max(2.0, hold / 2):
            cause = f"the event loop lags (p99 {lag:.3g} ms): the client is the bottleneck"
        else:
            cause = "holds or arrivals far from the model's assumptions"
        notes.append(
            f"pool {size}: measured mean wait {measured:.3g} ms, Erlang C {modelled:.3g} ms "
            f"({'more' if gap > 0 else 'less'} by {abs(gap):.0%}); likely cause: {cause}"
        )
    return notes


def unsteady(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """A note when steps did not reach a steady state."""
    drifting = [step for step in steps if not step["steady"]]
    if not drifting:
        return []
    which = ", ".join(
        f"{step['kind']} {step['pool_size']} (repeat {step['repeat'] + 1})" for step in drifting
    )
    return [
        f"{len(drifting)} of {len(steps)} steps did not reach a steady state (their throughput "
        f"moved by more than {STEADY_DRIFT:.0%} within the step): {which}; the machine was "
        "busy with other work, or the steps are too short (--step-duration, --warmup)"
    ]
