"""Runs side by side: the figures that matter for sizing a pool, as a text table and as charts.

A "run" here is one scenario of one log: `loadsim run pooled unpooled` gives two. The figures
come from each scenario's `run.end` summary (the runner's HDR percentiles); a scenario cut short
has no summary, and its figures are computed from its events instead (percentiles then from
logarithmic buckets, within about 12 %).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from loadsim.report import palette
from loadsim.report.aggregate import ScenarioData
from loadsim.report.charts import Chart, empty_message, figure, monitor_column, render
from loadsim.report.series import LogHistogram
from loadsim.schema import latency_metric, summary_figure

#: (key, label, format) of each row of the table, in order.
ROWS: tuple[tuple[str, str, str], ...] = (
    ("checkouts_per_s", "checkouts/s", "{:,.1f}"),
    ("checkouts", "checkouts", "{:,.0f}"),
    ("wait_p50", "wait ms p50", "{:,.2f}"),
    ("wait_p95", "wait ms p95", "{:,.2f}"),
    ("wait_p99", "wait ms p99", "{:,.2f}"),
    ("wait_max", "wait ms max", "{:,.2f}"),
    ("use_p50", "use ms p50", "{:,.2f}"),
    ("use_p95", "use ms p95", "{:,.2f}"),
    ("use_p99", "use ms p99", "{:,.2f}"),
    ("connects", "connects", "{:,.0f}"),
    ("connect_p50", "connect ms p50", "{:,.2f}"),
    ("reuse_ratio", "checkouts per connect", "{:,.1f}"),
    ("max_open", "max open connections", "{:,.0f}"),
    ("timeouts", "timeouts", "{:,.0f}"),
    ("errors", "errors", "{:,.0f}"),
    ("elapsed_s", "elapsed s", "{:,.2f}"),
)


@dataclass
class RunFigures:
    label: str
    data: ScenarioData
    values: dict[str, float]
    from_summary: bool


def labels_for(scenarios: Sequence[ScenarioData]) -> list[str]:
    """Scenario names, made unique with the log's name (and a number) where they repeat."""
    names = Counter(s.scenario for s in scenarios)
    labels = [
        s.scenario if names[s.scenario] == 1 else f"{s.scenario} ({Path(s.source).name})"
        for s in scenarios
    ]
    seen: Counter[str] = Counter()
    unique = []
    for label in labels:
        seen[label] += 1
        unique.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return unique


def figures(scenarios: Sequence[ScenarioData]) -> list[RunFigures]:
    return [
        _figures(label, data) for label, data in zip(labels_for(scenarios), scenarios, strict=True)
    ]


#: Where each row's figure is in a run's summary: the schema's name for it (the name a
#: threshold uses), read with `loadsim.schema.summary_figure`.
_SUMMARY_FIGURE: dict[str, str] = {
    "checkouts_per_s": "checkouts_per_s",
    "checkouts": "checkouts",
    **{f"wait_{stat}": latency_metric("wait_time", stat) for stat in ("p50", "p95", "p99", "max")},
    **{f"use_{stat}": latency_metric("use_time", stat) for stat in ("p50", "p95", "p99")},
    "connects": "connects",
    "connect_p50": latency_metric("create_time", "p50"),
    "reuse_ratio": "reuse_ratio",
    "max_open": "max_open",
    "timeouts": "timeouts",
    "errors": "errors",
    "elapsed_s": "elapsed_s",
}


def _figures(label: str, data: ScenarioData) -> RunFigures:
    summary = data.summary
    if summary:
        values = {key: _num(summary_figure(summary, name)) for key, name in _SUMMARY_FIGURE.items()}
        return RunFigures(label, data, values, True)
    elapsed = data.duration_s
    connects = data.events["pool.connect"]
    values = {
        "checkouts_per_s": data.checkouts / elapsed if elapsed > 0 else math.nan,
        "checkouts": float(data.checkouts),
        **_percentiles("wait", data.wait_ms),
        "wait_max": data.wait_ms.max if data.wait_ms.count else math.nan,
        **_percentiles("use", data.use_ms),
        "connects": float(connects),
        "connect_p50": data.connect_ms.percentile(50),
        "reuse_ratio": data.checkouts / connects if connects else math.nan,
        "max_open": float(max((c for c in _totals(data)), default=0)),
        "timeouts": float(data.timeouts.seen),
        "errors": float(data.errors.seen),
        "elapsed_s": elapsed,
    }
    return RunFigures(label, data, values, False)


def _totals(data: ScenarioData) -> list[int]:
    return data.pool.peaks()[1][1]


def _percentiles(prefix: str, histogram: LogHistogram) -> dict[str, float]:
    return {f"{prefix}_p{q}": histogram.percentile(q) for q in (50, 95, 99)}


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


# ---------------------------------------------------------------------------------- table


def table(runs: Sequence[RunFigures]) -> str:
    """A column per run, a row per figure; then how each run compares with the first."""
    header = ["", *(run.label for run in runs)]
    rows = [header]
    for key, label, fmt in ROWS:
        rows.append([label, *(_cell(run.values.get(key, math.nan), fmt) for run in runs)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in rows
    ]
    estimated = [run.label for run in runs if not run.from_summary]
    if estimated:
        lines.append("")
        lines.append(
            "no run.end (interrupted), figures computed from the events: " + ", ".join(estimated)
        )
    lines.extend(verdicts(runs))
    return "\n".join(lines)


def verdicts(runs: Sequence[RunFigures]) -> list[str]:
    """One sentence per run after the first: throughput and p95 wait against the first."""
    if len(runs) < 2:
        return []
    first = runs[0]
    lines = [""]
    for other in runs[1:]:
        a, b = first.values["checkouts_per_s"], other.values["checkouts_per_s"]
        if not (a > 0 and b > 0):
            continue
        ratio = a / b
        text = (
            f"{first.label} made {ratio:.2f}x the checkouts/s of {other.label}"
            if ratio >= 1
            else f"{other.label} made {1 / ratio:.2f}x the checkouts/s of {first.label}"
        )
        ca, cb = first.values["connects"], other.values["connects"]
        if ca > 0 and cb > 0 and ca != cb:
            text += f", with {_cell(ca, '{:,.0f}')} connects against {_cell(cb, '{:,.0f}')}"
        lines.append(text)
    return lines


def _cell(value: float, fmt: str) -> str:
    return "-" if value is None or math.isnan(value) else fmt.format(value)


# --------------------------------------------------------------------------------- charts


def comparison_chart(runs: Sequence[RunFigures], name: str = "comparison.png") -> Chart:
    labels = [run.label for run in runs]
    x = np.arange(len(runs))
    title = "Side by side: " + " vs ".join(labels)
    width_labels = max((len(label) for label in labels), default=1)
    rotate = len(runs) > 4 or width_labels > 14
    data: dict[str, Any] = {"labels": labels, "figures": {r.label: dict(r.values) for r in runs}}
    with figure(9.5, title) as fig:
        axes = fig.subplots(2, 3)
        panels = (
            (
                axes[0][0],
                "Throughput (higher is better)",
                "checkouts per second",
                [("checkouts_per_s", None)],
                (palette.KIND["checkout"],),
            ),
            (
                axes[0][1],
                "Wait for a connection (lower is better)",
                "milliseconds",
                [("wait_p50", "p50"), ("wait_p95", "p95"), ("wait_p99", "p99")],
                palette.WAIT_SHADES,
            ),
            (
                axes[0][2],
                "Use time (checkout to return)",
                "milliseconds",
                [("use_p50", "p50"), ("use_p95", "p95"), ("use_p99", "p99")],
                palette.USE_SHADES,
            ),
            (
                axes[1][0],
                "Connections opened",
                "connects",
                [("connects", None)],
                (palette.KIND["connect"],),
            ),
            (
                axes[1][1],
                "Pool timeouts",
                "timeouts",
                [("timeouts", None)],
                (palette.KIND["timeout"],),
            ),
            (axes[1][2], "Errors", "errors", [("errors", None)], (palette.KIND["error"],)),
        )
        for ax, panel_title, unit, series, colours in panels:
            width = 0.8 / len(series)
            for i, ((key, label), colour) in enumerate(zip(series, colours, strict=True)):
                values = np.array([run.values.get(key, math.nan) for run in runs], dtype=float)
                shown = np.nan_to_num(values, nan=0.0)
                offset = (i - (len(series) - 1) / 2) * width
                bars = ax.bar(x + offset, shown, width=width * 0.95, color=colour, label=label)
                ax.bar_label(
                    bars,
                    labels=[_short(v) for v in values],
                    fontsize=8,
                    padding=2,
                )
            ax.set_title(panel_title)
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
            if not any(run.values.get(key, 0) or 0 for run in runs for key, _ in series):
                ax.set_ylim(0, 1)
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
                empty_message(ax, "none in any run")
            ax.set_xticks(
                x, labels, rotation=30 if rotate else 0, ha="right" if rotate else "center"
            )
            ax.margins(y=0.15)
            ax.grid(axis="x", visible=False)
            if len(series) > 1:
                ax.legend(loc="upper left", ncols=3)
        png = render(fig)
    return Chart(
        name=name,
        title="Side by side",
        caption=(
            "Each run's throughput, percentiles of the wait for a connection and of the use "
            "time, connections opened, pool timeouts and errors."
        ),
        png=png,
        data=data,
    )


def comparison_over_time_chart(
    runs: Sequence[RunFigures], name: str = "comparison-over-time.png"
) -> Chart:
    title = "Over time: throughput and waits, run by run"
    points: dict[str, int] = {}
    with figure(7.0, title) as fig:
        ax_rate, ax_wait = fig.subplots(2, 1, sharex=True)
        for index, run in enumerate(runs):
            t = monitor_column(run.data, "t")
            colour, line, marker = palette.run_style(index)
            rate = monitor_column(run.data, "checkouts_per_s")
            wait = monitor_column(run.data, "wait_p95")
            for ax, values in ((ax_rate, rate), (ax_wait, wait)):
                ax.plot(
                    t,
                    values,
                    marker=marker,
                    markersize=4,
                    color=colour,
                    linestyle=line,
                    linewidth=1.8,
                    label=run.label,
                )
            points[run.label] = len(t)
        if not any(points.values()):
            empty_message(ax_rate, "no monitor.stats snapshots in these logs")
        ax_rate.set_title("Throughput per one-second snapshot")
        ax_rate.set_ylabel("checkouts per second")
        ax_rate.set_ylim(bottom=0)
        ax_wait.set_title("Wait for a connection, p95 per snapshot")
        ax_wait.set_ylabel("milliseconds")
        ax_wait.set_xlabel("time since each scenario started (s)")
        for ax in (ax_rate, ax_wait):
            ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0))
        png = render(fig)
    return Chart(
        name=name,
        title="Over time",
        caption=(
            "Throughput and the 95th percentile of the wait for a connection in each "
            "one-second snapshot, one line per run, each from its own start."
        ),
        png=png,
        data={"labels": [run.label for run in runs], "points": points},
    )


def _short(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{value:.3g}"
