"""Thresholds, k6 style: `wait_time_p95_ms < 100`, `timeouts == 0`, `utilisation_max <= 0.9`.

Declared in a scenario (`thresholds = [...]`) or with `--threshold`, checked when the scenario
is resolved (an unknown metric is an error then, not at the end of a long run), evaluated
against the run's summary at the end. Any failure makes the exit code 1.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loadsim.schema import LATENCY_METRICS, METRIC_ALIASES, METRICS, STAT_COUNT, summary_figure

_OPERATORS: Mapping[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
#: Characters a threshold's number may have: beyond a float's 17 digits they mean nothing, and
#: a number of thousands of digits is a slip, not a limit (and is repeated in every summary).
MAX_LIMIT_CHARACTERS = 40
_EXPRESSION = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|==|!=|<|>)\s*(-?\d+(?:\.\d*)?|-?\.\d+)\s*$")


@dataclass(frozen=True)
class Threshold:
    expression: str
    metric: str
    comparison: str
    limit: float

    def evaluate(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        value = metric_value(summary, self.metric)
        passed = value is not None and _OPERATORS[self.comparison](value, self.limit)
        return {
            "threshold": self.expression,
            "metric": self.metric,
            "value": value,
            "passed": passed,
        }


def parse_threshold(text: object) -> Threshold:
    """A Threshold from `METRIC OP NUMBER`; ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a threshold such as 'timeouts == 0', got {text!r}")
    match = _EXPRESSION.match(text)
    if match is None:
        raise ValueError(
            f"expected METRIC OP NUMBER such as 'wait_time_p95_ms < 100' (OP one of "
            f"{', '.join(_OPERATORS)}), got {_cut(text)}"
        )
    metric, comparison, limit = match.groups()
    if metric not in METRICS:
        close = difflib.get_close_matches(metric, METRICS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown metric {_cut(metric)} in threshold {_cut(text)}{hint}; metrics: counts "
            "such as timeouts, errors, leaks, checkouts_per_s, utilisation_max, and latencies "
            "wait_time_/use_time_/query_time_/create_time_ + mean, p50, p90, p95, p99, "
            "p99_9, max + _ms"
        )
    if len(limit) > MAX_LIMIT_CHARACTERS:
        raise ValueError(
            f"the number in threshold '{metric} {comparison} ...' has {len(limit)} characters: "
            f"at most {MAX_LIMIT_CHARACTERS} (a float holds 17 digits)"
        )
    return Threshold(" ".join((metric, comparison, limit)), metric, comparison, float(limit))


def _cut(text: str, limit: int = 60) -> str:
    """A threshold as an error repeats it: cut short when it is long."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def metric_value(summary: Mapping[str, Any], metric: str) -> float | None:
    """A metric's value in a run summary (None when the run has no such figure)."""
    value = summary_figure(summary, metric)
    latency = LATENCY_METRICS.get(METRIC_ALIASES.get(metric, metric))
    if value is None and latency is not None:
        figures = summary.get(latency[0])
        if isinstance(figures, Mapping) and figures.get(STAT_COUNT) == 0:
            return 0.0  # nothing was measured: no wait is a wait of 0
    return value


def evaluate(thresholds: tuple[Threshold, ...], summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [threshold.evaluate(summary) for threshold in thresholds]
