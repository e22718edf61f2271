"""Text for people at the end of a sweep: one row per pool size and kind, the medians of
its repeats and their spread (min-max), measured beside modelled; then the recommendation."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from loadsim.size.recommend import CAPACITY, QUEUE

_HEADER = (
    "pool",
    "kind",
    "n",
    "checkouts/s (min-max)",
    "USL",
    "wait p99 ms",
    "Erlang p99",
    "P(wait)",
    "Erlang",
    "use ms",
    "steady",
    "SLO",
)


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"


def format_sweep(
    steps: Sequence[Mapping[str, Any]],
    predicted: Mapping[int, float],
    recommendation: str | None,
) -> str:
    groups: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for step in steps:
        groups.setdefault((step["pool_size"], step["kind"]), []).append(step)
    rows = [list(_HEADER)]
    for (size, kind), mine in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        rates = [step["checkouts_per_s"] for step in mine]
        passed = [step["slo_passed"] for step in mine if step.get("slo_passed") is not None]
        rows.append(
            [
                str(size),
                kind,
                str(len(mine)),
                f"{_number(_median(rates), 4)} ({_number(min(rates), 4)}-{_number(max(rates), 4)})",
                _number(predicted.get(size), 4) if kind == CAPACITY else "",
                _number(_median([step["wait_p99_ms"] for step in mine])),
                _number(_median([step["model_p99_wait_ms"] for step in mine]))
                if kind == QUEUE
                else "",
                _number(_median([step["p_wait"] for step in mine]), 2),
                _number(_median([step["model_p_wait_longer"] for step in mine]), 2)
                if kind == QUEUE
                else "",
                _number(_median([step["use_mean_ms"] for step in mine])),
                f"{sum(bool(step['steady']) for step in mine)}/{len(mine)}",
                f"{sum(passed)}/{len(passed)}" if passed else "",
            ]
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADER))]
    lines = ["  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    if recommendation:
        lines += ["", recommendation]
    return "\n".join(lines)
