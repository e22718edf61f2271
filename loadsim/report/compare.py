"""Runs side by side: the figures that matter for sizing a pool, as a text table and as charts.

A "run" here is one scenario of one log: `loadsim run pooled unpooled` gives two. The figures
come from each scenario's `run.end` summary (the runner's HDR percentiles); a scenario cut short
has no summary, and its figures are computed from its events instead (percentiles then from
logarithmic buckets, within about 2.4 %).
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from loadsim.report import palette
from loadsim.report.aggregate import ScenarioData
from loadsim.report.charts import (
    WIDTH_IN,
    Chart,
    drawn_texts,
    empty_message,
    figure,
    monitor_column,
    render,
)
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


#: (title, unit, [(figure, legend label)], colours) of each panel of the comparison.
PANELS: tuple[tuple[str, str, tuple[tuple[str, str | None], ...], tuple[str, ...]], ...] = (
    (
        "Throughput (higher is better)",
        "checkouts per second",
        (("checkouts_per_s", None),),
        (palette.KIND["checkout"],),
    ),
    (
        "Wait for a connection (lower is better)",
        "milliseconds",
        (("wait_p50", "p50"), ("wait_p95", "p95"), ("wait_p99", "p99")),
        palette.WAIT_SHADES,
    ),
    (
        "Use time (checkout to return)",
        "milliseconds",
        (("use_p50", "p50"), ("use_p95", "p95"), ("use_p99", "p99")),
        palette.USE_SHADES,
    ),
    ("Connections opened", "connects", (("connects", None),), (palette.KIND["connect"],)),
    ("Pool timeouts", "timeouts", (("timeouts", None),), (palette.KIND["timeout"],)),
    ("Errors", "errors", (("errors", None),), (palette.KIND["error"],)),
)


def _tick_label(label: str, width: int) -> str:
    """A run's name on the x axis, wrapped to `width` characters (the log's name, in
    parentheses, on a line of its own)."""
    scenario, _, rest = label.partition(" (")
    # (never inside a word: "long-transactions" was cut into "long-trans" and "actions")
    lines = textwrap.wrap(scenario, width, break_long_words=False) or [scenario]
    if rest:
        lines.append("(" + rest)
    return "\n".join(lines)


def _boxes(artists: Sequence[Any], renderer: Any) -> list[tuple[float, float, float, float]]:
    """The artists' extents on the canvas, in pixels: (x0, y0, x1, y1)."""
    boxes = []
    for artist in artists:
        if artist.get_visible() and (not isinstance(artist, Text) or artist.get_text()):
            box = artist.get_window_extent(renderer)
            boxes.append((float(box.x0), float(box.y0), float(box.x1), float(box.y1)))
    return boxes


def overlaps(
    first: Sequence[tuple[float, float, float, float]],
    second: Sequence[tuple[float, float, float, float]] | None = None,
) -> list[tuple[int, int]]:
    """Pairs of boxes that overlap (by more than half a pixel): within `first`, or between
    `first` and `second`."""
    found = []
    for i, a in enumerate(first):
        others = enumerate(second) if second is not None else enumerate(first[i + 1 :], i + 1)
        for j, b in others:
            if min(a[2], b[2]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[1], b[1]) > 0.5:
                found.append((i, j))
    return found


def comparison_chart(runs: Sequence[RunFigures], name: str = "comparison.png") -> Chart:
    labels = [run.label for run in runs]
    x = np.arange(len(runs))
    joined = " vs ".join(labels)
    title = f"Side by side: {joined}" if len(joined) <= 90 else f"Side by side: {len(runs)} runs"
    data: dict[str, Any] = {"labels": labels, "figures": {r.label: dict(r.values) for r in runs}}

    def shown(series: tuple[tuple[str, str | None], ...]) -> bool:
        values = [run.values.get(key, math.nan) for run in runs for key, _ in series]
        return any(math.isfinite(v) and v != 0 for v in values)

    drawn = [panel for panel in PANELS if shown(panel[2])]
    omitted = [panel[0] for panel in PANELS if panel not in drawn]
    notes = []
    if omitted:
        notes.append(
            "Not drawn, nothing to show (zero or not measured in every run): "
            + ", ".join(title.split(" (")[0].lower() for title in omitted)
            + "."
        )
    columns = {1: 1, 2: 2, 4: 2}.get(len(drawn), 3)
    rows = max(1, math.ceil(len(drawn) / columns))
    panel_px = WIDTH_IN * 72 / columns
    wrap = max(10, int(panel_px / max(len(runs), 1) / 6.2))
    ticks = [_tick_label(label, wrap) for label in labels]
    panels: dict[str, dict[str, Any]] = {}
    with figure(4.6 * rows, title, notes) as fig:
        axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
        value_labels: dict[Any, list[Text]] = {}
        legends: dict[Any, Any] = {}
        bar_patches: dict[Any, list[Any]] = {}
        for ax in axes[len(drawn) :]:
            ax.set_visible(False)
        if not drawn:
            empty_message(axes[0], "nothing to show: no run has any of these figures")
            axes[0].set_visible(True)
            axes[0].set_axis_off()
        for ax, (panel_title, unit, series, colours) in zip(axes, drawn, strict=False):
            width = 0.8 / len(series)
            texts: list[Text] = []
            patches: list[Any] = []
            highest = 0.0
            for i, ((key, label), colour) in enumerate(zip(series, colours, strict=True)):
                values = np.array([run.values.get(key, math.nan) for run in runs], dtype=float)
                heights = np.nan_to_num(values, nan=0.0)
                highest = max(highest, float(heights.max(initial=0.0)))
                offset = (i - (len(series) - 1) / 2) * width
                bars = ax.bar(x + offset, heights, width=width * 0.95, color=colour, label=label)
                patches.extend(bars.patches)
                texts.extend(
                    ax.bar_label(bars, labels=[_short(v) for v in values], fontsize=8, padding=2)
                )
            ax.set_title(panel_title)
            ax.set_ylabel(unit)
            ax.set_ylim(0, highest * 1.15 if highest > 0 else 1)  # bars start at zero
            ax.set_xticks(x, ticks, fontsize=8 if len(runs) > 3 else 9)
            if unit in ("connects", "timeouts", "errors"):
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlim(-0.6, len(runs) - 0.4)
            ax.grid(axis="x", visible=False)
            if len(series) > 1:
                legends[ax] = ax.legend(loc="upper left", ncols=len(series), handlelength=1.2)
            value_labels[ax] = texts
            bar_patches[ax] = patches
        _declutter(fig, value_labels, legends, bar_patches)
        png = render(fig)
        renderer = fig.figure.canvas.get_renderer()  # type: ignore[attr-defined]
        for ax, (panel_title, *_rest) in zip(axes, drawn, strict=False):
            legend = legends.get(ax)
            panels[panel_title] = {
                "ylim": tuple(float(v) for v in ax.get_ylim()),
                "value_labels": _boxes(value_labels[ax], renderer),
                "value_labels_shown": [t.get_text() for t in value_labels[ax] if t.get_visible()],
                "bars": _boxes(bar_patches[ax], renderer),
                "legend": _boxes([legend], renderer)[0] if legend is not None else None,
                "ticks": _boxes(ax.get_xticklabels(), renderer),
                "tick_texts": [t.get_text() for t in ax.get_xticklabels()],
            }
        data["texts"] = drawn_texts(fig)
    data["panels"] = panels
    data["omitted"] = omitted
    return Chart(
        name=name,
        title="Side by side",
        caption=(
            "Each run's throughput, percentiles of the wait for a connection and of the use "
            "time, connections opened, pool timeouts and errors (a figure no run has is left "
            "out). Every axis starts at zero."
        ),
        png=png,
        data=data,
    )


def _declutter(
    fig: Any,
    value_labels: dict[Any, list[Text]],
    legends: dict[Any, Any],
    bar_patches: dict[Any, list[Any]],
) -> None:
    """Makes each panel readable, measured on the laid-out figure: run names that run into
    each other are set upright; value labels that run into each other are turned upright, then
    made smaller, then left to the table; the top of the axis is raised until the labels and
    the legend clear the bars and each other."""
    fig.figure.draw_without_rendering()
    renderer = fig.figure.canvas.get_renderer()
    if any(overlaps(_boxes(ax.get_xticklabels(), renderer)) for ax in value_labels):
        for ax in value_labels:  # run names that run into each other: upright
            for tick in ax.get_xticklabels():
                tick.set_rotation(90)
    for ax, texts in value_labels.items():
        for attempt in range(12):
            fig.figure.draw_without_rendering()
            renderer = fig.figure.canvas.get_renderer()
            boxes = _boxes(texts, renderer)
            if overlaps(boxes):
                if attempt == 0:
                    for text in texts:
                        text.set_rotation(90)
                elif attempt == 1:
                    for text in texts:
                        text.set_fontsize(7)
                else:
                    for text in texts:
                        text.set_visible(False)
                continue
            axes_box = ax.get_window_extent(renderer)
            legend = legends.get(ax)
            legend_boxes = _boxes([legend], renderer) if legend is not None else []
            bars = _boxes(bar_patches[ax], renderer)
            clash = overlaps(legend_boxes, bars + boxes) if legend_boxes else []
            outside = any(box[3] > axes_box.y1 for box in boxes)
            if not clash and not outside:
                break
            low, high = ax.get_ylim()
            ax.set_ylim(low, high * 1.25)


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
        ax_rate.set_title("Throughput per monitor snapshot")
        ax_rate.set_ylabel("checkouts per second")
        ax_rate.set_ylim(bottom=0)
        ax_wait.set_title("Wait for a connection, p95 per snapshot")
        ax_wait.set_ylabel("milliseconds")
        ax_wait.set_xlabel("time since each scenario started (s)")
        ax_wait.set_ylim(bottom=0)
        ax_rate.set_xlim(left=0)
        if any(points.values()):
            ax_rate.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0))
        png = render(fig)
        texts = drawn_texts(fig)
    return Chart(
        name=name,
        title="Over time",
        caption=(
            "Throughput and the 95th percentile of the wait for a connection in each "
            "monitor snapshot (one a second by default), one line per run, each from its "
            "own start."
        ),
        png=png,
        data={"labels": [run.label for run in runs], "points": points, "texts": texts},
    )


def _short(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{value:.3g}"
