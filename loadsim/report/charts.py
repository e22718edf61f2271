"""The charts of one scenario, drawn with matplotlib's object API on the Agg canvas (no pyplot,
no display, no global state).

Each function takes a `ScenarioData` and returns a `Chart`: the PNG bytes, a title and a
caption for the page, and `data`, the numbers the chart drew (lanes, bars, extents, counts),
so that tests can check what a chart shows without looking at pixels.
"""

from __future__ import annotations

import heapq
import io
import math
import textwrap
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex, to_rgba_array
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Annotation, Text
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.typing import RcKeyType

from loadsim.report import palette
from loadsim.report.aggregate import MARK_KINDS, MONITOR_COLUMNS, ScenarioData
from loadsim.report.series import SEVERAL_CLIENTS, LogHistogram, merge_close

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

DPI = 100
WIDTH_IN = 13.0
#: Up to this many connections, one lane each; past it, connections that never overlap in
#: time share a row (a NullPool run opens one connection per checkout).
MAX_LANES = 80
#: Past this many checkouts, those close together on a row are drawn as one bar.
MAX_BARS_DRAWN = 20_000
#: Up to this many clients (or connections), a bar each; past it, a ranked profile.
MAX_BARS_PER_ITEM = 60
#: The narrowest a checkout's bar is drawn, in pixels, and about how much of the figure's
#: width the timeline's axes take (the rest: its labels and legend).
MIN_BAR_PX = 2
PLOT_WIDTH_SHARE = 0.6
#: Clients named one by one in the timeline's legend, at most.
MAX_CLIENTS_IN_LEGEND = 12

STYLE: dict[RcKeyType, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.titlesize": 14,
    "figure.titleweight": "bold",
}


@dataclass
class Chart:
    """One image of the report and the numbers it drew."""

    name: str  # file name, e.g. "saturation-timeline.png"
    title: str
    caption: str  # what it shows, for people
    png: bytes
    data: dict[str, Any]


# ------------------------------------------------------------------------------ helpers


@contextmanager
def figure(height_in: float, title: str, notes: Sequence[str] = ()) -> Iterator[SubFigure]:
    """A figure in the report's style: a header with the title and, under it, notes in grey,
    above a body (yielded) for the chart's axes."""
    lines = [line for note in notes for line in textwrap.wrap(note, 165, break_on_hyphens=False)]
    header_in = 0.42 + (0.17 * len(lines) + 0.08 if lines else 0.0)
    with matplotlib.rc_context(STYLE):
        root = Figure(figsize=(WIDTH_IN, height_in + header_in), dpi=DPI, layout="constrained")
        FigureCanvasAgg(root)
        grid = root.add_gridspec(2, 1, height_ratios=[header_in, height_in])
        header = root.add_subfigure(grid[0])
        header.text(
            0.004, 1 - 0.06 / header_in, title, ha="left", va="top", fontsize=14, fontweight="bold"
        )
        if lines:
            header.text(
                0.004,
                1 - 0.38 / header_in,
                "\n".join(lines),
                ha="left",
                va="top",
                fontsize=9,
                color="#555555",
                linespacing=1.35,
            )
        yield root.add_subfigure(grid[1])


def render(fig: SubFigure) -> bytes:
    buffer = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return buffer.getvalue()


def slug(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text.lower())
    return cleaned.strip("-") or "run"


def floats(values: Sequence[float] | npt.NDArray[Any]) -> Floats:
    return np.asarray(values, dtype=np.float64)


def ints(values: Sequence[int]) -> Ints:
    return np.asarray(values, dtype=np.int64)


def empty_message(ax: Axes, message: str) -> None:
    ax.text(
        0.5,
        0.5,
        message,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="#777777",
        fontsize=10,
    )


def shade_faults(ax: Axes, data: ScenarioData, *, label: bool) -> int:
    """Each fault as a magenta band (its downtime) and line; returns how many were drawn."""
    width = max(data.duration_s, 1.0) * 0.003
    for fault in data.faults:
        ax.axvspan(
            fault.t, max(fault.end_t, fault.t + width), color=palette.KIND["fault"], alpha=0.2
        )
        ax.axvline(fault.t, color=palette.KIND["fault"], linewidth=1.2)
        if label:
            ax.annotate(
                fault.label,
                (fault.t, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
                fontweight="bold",
                color=palette.KIND["fault"],
                annotation_clip=False,
            )
    return len(data.faults)


def time_axis(ax: Axes, data: ScenarioData) -> tuple[float, float]:
    limits = (0.0, max(data.duration_s, 1e-3) * 1.01)
    ax.set_xlim(*limits)
    return limits


def fault_handle() -> Patch:
    return Patch(facecolor=palette.KIND["fault"], alpha=0.35, label="fault (downtime)")


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def sampled_note(kept: int, seen: int, noun: str) -> str:
    return f"Showing an even sample of {kept:,} of {seen:,} {noun} (drawing cap)."


# ----------------------------------------------------------------------------- timeline


def pack_rows(opened: Floats, closed: Floats) -> tuple[Ints, int]:
    """Rows for lanes such that lanes sharing a row never overlap in time (greedy, in order
    of opening); returns each lane's row and the number of rows."""
    rows = np.zeros(len(opened), dtype=np.int64)
    free: list[tuple[float, int]] = []  # (time the row frees up, row)
    count_rows = 0
    for lane in np.argsort(opened, kind="stable"):
        start = float(opened[lane])
        if free and free[0][0] <= start:
            _, row = heapq.heappop(free)
        else:
            row = count_rows
            count_rows += 1
        rows[lane] = row
        heapq.heappush(free, (float(closed[lane]), row))
    return rows, count_rows


def client_colours(clients: Ints) -> npt.NDArray[np.float64]:
    size = palette.client_palette_size()
    table = to_rgba_array([palette.client_colour(i) for i in range(size)])
    colours = table[np.mod(clients, size)]
    colours[clients < 0] = to_rgba_array([palette.NO_CLIENT])[0]
    colours[clients == SEVERAL_CLIENTS] = to_rgba_array([palette.KIND["checkout"]])[0]
    return colours


def timeline_chart(data: ScenarioData, name_prefix: str) -> Chart:
    lanes = data.lanes
    n_lanes = len(lanes)
    end = max(data.duration_s, 1e-3)
    opened = np.frombuffer(lanes.opened, dtype=np.float64)
    closed = np.frombuffer(lanes.closed, dtype=np.float64).copy()
    still_open = np.isnan(closed)
    closed[still_open] = end
    packed = n_lanes > MAX_LANES
    if packed:
        rows, n_rows = pack_rows(opened, closed)
    else:
        rows, n_rows = np.arange(n_lanes, dtype=np.int64), n_lanes

    bars = data.bars
    starts, ends, bar_lanes, bar_clients, bar_counts = bars.arrays()
    bar_rows = rows[bar_lanes]
    gap = bars.gap
    if len(starts) > MAX_BARS_DRAWN:  # more than the chart has pixels for: merge by row
        span = max(end, 1e-3)
        gap = max(gap, span / 20_000)
        while len(starts) > MAX_BARS_DRAWN and gap < span / 300:
            starts, ends, bar_rows, bar_clients, bar_counts = merge_close(
                starts, ends, bar_rows, bar_clients, bar_counts, gap
            )
            gap *= 2
    n_bars = len(starts)
    # a checkout shorter than a pixel or two would be drawn as nothing but its white edge:
    # every bar is drawn at least MIN_BAR_PX wide (and the note says so)
    shortest = max(end, 1e-3) * 1.01 / (PLOT_WIDTH_SHARE * WIDTH_IN * DPI) * MIN_BAR_PX
    widened = int(((ends - starts) < shortest).sum())
    drawn_ends = np.maximum(ends, starts + shortest)

    notes: list[str] = []
    if widened:
        notes.append(
            f"{count(widened, 'bar')} shorter than {shortest * 1000:.2g} ms (about "
            f"{MIN_BAR_PX} pixels) drawn that wide, to be seen."
        )
    if packed:
        notes.append(
            f"{n_lanes:,} connections in {n_rows:,} rows: connections whose lifetimes never "
            "overlap share a row (one lane each would be unreadable)."
        )
    if gap > 0:
        notes.append(
            f"{data.checkouts:,} checkouts drawn as {n_bars:,} bars: checkouts less than "
            f"{_seconds(gap)} apart on a {'row' if packed else 'connection'} are drawn as one "
            "(blue when several clients held them)."
        )
    if bars.thinned:
        notes.append(
            f"Past {aggregate_caps()['bars']:,} bars even merged, only one checkout in "
            f"{bars.stride} is drawn."
        )
    if data.marks.thinned and not packed:
        notes.append(sampled_note(len(data.marks), data.marks.seen, "marks"))
    if data.still_held:
        notes.append(f"{count(data.still_held, 'checkout')} never returned: drawn to the end.")

    routine = {"connect", "close"} if packed else set()
    if packed:
        causes = Counter(lanes.cause_of(lane) for lane in range(n_lanes))
        by_cause = ", ".join(
            f"{cause} {number:,}" for cause, number in causes.most_common() if cause is not None
        )
        notes.append(
            "Connects and closes are not marked: every segment starts with a connect and ends "
            f"with a close (closes by cause: {by_cause or 'none'})."
        )
    legend_entries = 3 + min(len(set(bar_clients.tolist())), MAX_CLIENTS_IN_LEGEND + 1) + 10
    height = min(22.0, max(4.5, 2.2 + 0.24 * max(n_rows, 1), 1.0 + 0.2 * legend_entries))
    title = (
        f"{data.label}: connection lifecycle — {count(n_lanes, 'connection')}, "
        f"{count(data.checkouts, 'checkout')}"
    )
    marks_drawn: dict[str, int] = {}
    legend: list[Any] = []
    with figure(height, title, notes) as fig:
        ax = fig.add_subplot()
        ax.grid(axis="y", visible=False)
        if n_lanes:
            life_rows, life_start, life_end = rows, opened, closed
            if n_lanes > MAX_BARS_DRAWN:  # lifetimes that touch on a row: one line
                life_start, life_end, life_rows, _, _ = merge_close(
                    opened,
                    closed,
                    rows,
                    np.zeros(n_lanes, np.int64),
                    np.ones(n_lanes, np.int64),
                    max(end, 1e-3) / 3000,
                )
            ax.hlines(
                life_rows,
                life_start,
                life_end,
                color=palette.KIND["open"],
                linewidth=max(1.0, min(6.0, 120 / max(n_rows, 1))),
                zorder=1,
            )
            legend.append(Patch(color=palette.KIND["open"], label="connection open"))
        if n_bars:
            y = bar_rows.astype(np.float64)
            half = 0.36

            verts = np.empty((n_bars, 4, 2), dtype=np.float64)
            verts[:, 0, 0] = starts
            verts[:, 1, 0] = starts
            verts[:, 2, 0] = drawn_ends
            verts[:, 3, 0] = drawn_ends
            verts[:, 0, 1] = y - half
            verts[:, 1, 1] = y + half
            verts[:, 2, 1] = y + half
            verts[:, 3, 1] = y - half
            edges = n_bars <= 3000
            ax.add_collection(
                PolyCollection(
                    list(verts) if n_bars < 2 else verts,  # type: ignore[arg-type]
                    facecolors=client_colours(bar_clients),
                    edgecolors="white" if edges else "none",
                    linewidths=0.4 if edges else 0.0,
                    zorder=2,
                )
            )
            several = bar_clients == SEVERAL_CLIENTS
            distinct = np.unique(bar_clients[~several])
            if several.any():
                legend.append(
                    Patch(color=palette.KIND["checkout"], label="checkouts by several clients")
                )
            if several.mean() > 0.5:
                pass  # mostly merged: client colours are rare, not worth a legend
            elif len(distinct) <= min(MAX_CLIENTS_IN_LEGEND, palette.client_palette_size()):
                # (named one by one only while no two share a colour: client 0 and client 9
                # listed in the same teal could not be told apart)
                legend.extend(
                    Patch(
                        color=palette.client_colour(int(c)),
                        label="no client" if c < 0 else f"client {int(c)}",
                    )
                    for c in distinct
                )
            else:
                legend.append(
                    Patch(
                        color=palette.client_colour(1),
                        label=f"checkout ({len(distinct):,} clients; colour = client, "
                        f"{palette.client_palette_size()} colours repeat)",
                    )
                )
        else:
            empty_message(ax, "no checkouts in this log")
        marks_drawn = _draw_marks(ax, data, rows, n_rows, legend, skip=routine)
        faults = shade_faults(ax, data, label=True)
        if faults:
            legend.append(fault_handle())
        time_axis(ax, data)
        ax.set_ylim(max(n_rows, 1) - 0.5, -0.5)
        ax.set_xlabel("time since the scenario started (s)")
        if packed:
            ax.set_ylabel("row (connections that never overlap share one)")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            ax.set_ylabel("connection")
            several_instances = len(set(lanes.instance)) > 1
            if n_rows <= 40:
                ax.set_yticks(
                    range(n_rows),
                    [
                        (f"i{lanes.instance[i]} " if several_instances else "")
                        + f"conn {lanes.conn[i]}"
                        for i in range(n_rows)
                    ],
                )
        if legend:
            ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.005, 1.0))
        png = render(fig)
        texts = drawn_texts(fig)
        to_px = ax.transData.transform
        narrowest_px = (
            float(
                np.min(
                    to_px(np.column_stack([drawn_ends, np.zeros(n_bars)]))[:, 0]
                    - to_px(np.column_stack([starts, np.zeros(n_bars)]))[:, 0]
                )
            )
            if n_bars
            else None
        )
        legend_labels = [(str(handle.get_label()), _handle_colour(handle)) for handle in legend]
    extent = (float(starts.min()), float(ends.max())) if n_bars else (0.0, 0.0)
    return Chart(
        name=f"{name_prefix}timeline.png",
        title="Connection lifecycle",
        caption=(
            "One lane per connection the pool opened, from connect (green tick) to close "
            "(square, coloured by cause). Each bar is a checkout, coloured by the client that "
            "held it; red crosses are invalidations, olive triangles leaks suspected by the "
            "monitor, magenta bands injected faults."
        ),
        png=png,
        data={
            "lanes": [int(c) for c in lanes.conn],
            "rows": int(n_rows),
            "packed": packed,
            "bars": int(n_bars),
            "checkouts": data.checkouts,
            "checkouts_drawn": int(bar_counts.sum()),
            "bars_merged": gap > 0,
            "merge_gap_s": gap,
            "bars_thinned": bars.thinned,
            "extent": extent,
            "xlim": (0.0, end),
            "marks": marks_drawn,
            "bars_widened": widened,
            "narrowest_bar_px": narrowest_px,
            "legend": legend_labels,  # (label, colour) of each legend entry
            "texts": texts,
            "faults": [fault.t for fault in data.faults],
            "clients": sorted({int(c) for c in np.unique(bar_clients) if c != SEVERAL_CLIENTS}),
        },
    )


def _handle_colour(handle: Any) -> str:
    """The colour a legend entry shows, as #rrggbb."""
    if isinstance(handle, Line2D):
        colour = handle.get_markerfacecolor()
        return to_hex(colour if colour not in (None, "none") else handle.get_color())
    return to_hex(handle.get_facecolor())


def _draw_marks(
    ax: Axes,
    data: ScenarioData,
    rows: Ints,
    n_rows: int,
    legend: list[Any],
    skip: set[str],
) -> dict[str, int]:
    marks = data.marks
    if not len(marks):
        return {}
    t = np.frombuffer(marks.columns[0], dtype=np.float64)
    lanes = np.frombuffer(marks.columns[1], dtype=np.int64)
    kinds = np.frombuffer(marks.columns[2], dtype=np.int16)
    causes = np.frombuffer(marks.columns[3], dtype=np.int16)
    y = rows[lanes]
    size = 40.0 if n_rows <= 20 else 22.0 if n_rows <= 50 else 10.0
    drawn: dict[str, int] = {}
    labels = {
        "connect": "connect",
        "invalidate": "invalidate",
        "soft_invalidate": "soft invalidate",
        "detach": "detach (holder garbage-collected)",
        "leak": "leak suspected",
        "cancelled": "holder's task cancelled",
    }
    for index, kind in enumerate(MARK_KINDS):
        mask = kinds == index
        if not mask.any() or kind in skip:
            continue
        if kind == "close":
            for cause_index in np.unique(causes[mask]):
                cause = data.lanes.causes[int(cause_index)] if cause_index >= 0 else "closed"
                if f"close:{cause}" in skip:
                    continue
                sub = mask & (causes == cause_index)
                colour = palette.close_colour(cause)
                ax.scatter(
                    t[sub],
                    y[sub],
                    marker=palette.MARKER["close"],
                    s=size * 0.6,
                    color=colour,
                    edgecolors="black",
                    linewidths=0.4,
                    zorder=4,
                )
                drawn[f"close:{cause}"] = int(sub.sum())
                legend.append(
                    Line2D(
                        [],
                        [],
                        marker=palette.MARKER["close"],
                        linestyle="none",
                        markerfacecolor=colour,
                        markeredgecolor="black",
                        markeredgewidth=0.4,
                        label=f"close: {cause}",
                    )
                )
            continue
        colour = palette.KIND["leak" if kind == "cancelled" else kind]
        marker = palette.MARKER[kind]
        line_marker = marker in ("|", "x")
        ax.scatter(
            t[mask],
            y[mask],
            marker=marker,
            s=size * (2.2 if marker == "|" else 1.2),
            color=colour,
            edgecolors=None if line_marker else "black",
            linewidths=1.6 if line_marker else 0.4,
            zorder=5,
        )
        drawn[kind] = int(mask.sum())
        legend.append(
            Line2D(
                [],
                [],
                marker=marker,
                linestyle="none",
                color=colour,
                markeredgecolor=colour if line_marker else "black",
                markeredgewidth=1.6 if line_marker else 0.4,
                markersize=8,
                label=labels[kind],
            )
        )
    return drawn


# ------------------------------------------------------------------------- pool over time


def monitor_column(data: ScenarioData, name: str) -> Floats:
    return np.frombuffer(data.monitor.columns[MONITOR_COLUMNS.index(name)], dtype=np.float64)


_LINESTYLES = ("-", "--", "-.", ":")


def per_instance(data: ScenarioData) -> list[tuple[int, npt.NDArray[np.bool_]]]:
    """Each instance's monitor snapshots, as a mask over the monitor rows."""
    instances = monitor_column(data, "instance")
    return [(int(i), instances == i) for i in np.unique(instances)]


def fleet_sum(data: ScenarioData, name: str) -> tuple[Floats, Floats]:
    """A monitor column over time; with several instances, summed per whole second (the
    instances take their snapshots about a second apart each, not at the same instant)."""
    t = monitor_column(data, "t")
    values = monitor_column(data, name)
    if not data.several_instances or not len(t):
        return t, values
    seconds, index = np.unique(np.round(t), return_inverse=True)
    sums = np.zeros(len(seconds))
    np.add.at(sums, index, np.nan_to_num(values))
    return seconds, sums


def pool_chart(data: ScenarioData, name_prefix: str) -> Chart:
    times_list, (used_l, total_l, overflow_l, pending_l) = data.pool.peaks()
    end = max(data.duration_s, 1e-3)
    times = floats([*times_list, end]) if times_list else floats([])
    used = ints([*used_l, used_l[-1]]) if used_l else ints([])
    total = ints([*total_l, total_l[-1]]) if total_l else ints([])
    overflow = ints([*overflow_l, overflow_l[-1]]) if overflow_l else ints([])
    pending = ints([*pending_l, pending_l[-1]]) if pending_l else ints([])
    pool = data.pool_config
    queue_pool = pool.get("pool_class", "queue") != "null"
    pool_size = pool.get("pool_size") if queue_pool else None
    max_overflow = pool.get("max_overflow") if queue_pool else None
    limit = (
        pool_size + max_overflow
        if isinstance(pool_size, int) and isinstance(max_overflow, int) and max_overflow >= 0
        else None
    )
    instances = max(1, len(data.instances))
    times_n = f" \u00d7 {instances} instances" if instances > 1 else ""
    notes = []
    if instances > 1:
        notes.append(
            f"{instances} application instances, each with its own pool: the counts are the "
            "fleet's sums; utilisation is drawn per instance."
        )
    if data.pool.width > 0.002 and len(times):
        notes.append(f"Each step is the peak within a {_seconds(data.pool.width)} window.")
    if not queue_pool:
        notes.append("NullPool: no pool_size or limit; every checkout opens a connection.")
    title = f"{data.label}: the pool over time"
    monitor_t = monitor_column(data, "t")
    utilisation = monitor_column(data, "utilisation") * 100
    server_t, server = fleet_sum(data, "server_sessions")
    below = np.flatnonzero(utilisation < 0)
    if len(below):
        notes.append(
            f"The log's utilisation is below 0 from t = {monitor_t[below[0]]:.1f} s (a release "
            "counted without its checkout, e.g. a connection invalidated at checkout); drawn "
            "as recorded."
        )
    timeouts = floats(data.timeouts.column(0))
    errors = floats(data.errors.column(0))
    # overflow on its own axes: drawn with the connections, it lies on the pool_size line
    # whenever the pool is full (its value is then exactly pool_size - 0 ... max_overflow)
    can_overflow = queue_pool and isinstance(max_overflow, int) and max_overflow != 0
    overflowed = bool(overflow.max(initial=0))
    if can_overflow and not overflowed:  # a panel with nothing in it: a note instead
        notes.append(
            "No overflow: the pool never opened more than pool_size "
            f"(max_overflow = {max_overflow} was not needed)."
        )
    has_utilisation = bool(len(monitor_t)) and not np.isnan(utilisation).all()
    if not has_utilisation:
        notes.append(
            "No utilisation panel: "
            + (
                "NullPool has no limit to be a share of."
                if not queue_pool
                else "no monitor.stats snapshots in this log."
            )
            + (" Monitor alerts are marked on the connections." if data.alerts else "")
        )
    ratios = [3.0, *([1.3] if overflowed else []), 1.6, *([1.3] if has_utilisation else [])]
    with figure(4.3 + 1.6 * len(ratios), title, notes) as fig:
        axes = list(
            fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
        )
        top = axes.pop(0)
        over = axes.pop(0) if overflowed else None
        middle = axes.pop(0)
        bottom = axes.pop(0) if has_utilisation else None
        alerts_on = bottom if bottom is not None else top
        handles: list[Any] = []
        if len(times):
            top.fill_between(
                times,
                total,
                step="post",
                color=palette.KIND["idle"],
                linewidth=0,
                label="open, idle",
            )
            top.fill_between(
                times,
                used,
                step="post",
                color=palette.KIND["checkout"],
                linewidth=0,
                label="in use (checked out)",
            )
            if over is not None:
                over.fill_between(
                    times,
                    overflow,
                    step="post",
                    color=palette.KIND["overflow"],
                    alpha=0.85,
                    linewidth=0,
                    label="overflow connections open",
                )
            middle.fill_between(
                times,
                pending,
                step="post",
                color=palette.KIND["waiting"],
                alpha=0.8,
                linewidth=0,
                label="clients waiting",
            )
        else:
            empty_message(top, "no pool events in this log (filtered by LOG_LEVEL?)")
        if isinstance(pool_size, int):
            top.axhline(
                pool_size * instances,
                color=palette.KIND["limit"],
                linestyle="--",
                linewidth=1.2,
                zorder=3,
                label=f"pool_size{times_n} = {pool_size * instances}"
                + (" = max (max_overflow = 0)" if limit == pool_size else ""),
            )
        if limit is not None and limit != pool_size:  # one line when they are one value
            top.axhline(
                limit * instances,
                color=palette.KIND["limit"],
                linestyle=":",
                linewidth=1.4,
                zorder=3,
                label=f"max = (pool_size + max_overflow){times_n} = {limit * instances}",
            )
        if len(server_t) and not np.isnan(server).all():
            top.plot(
                server_t,
                server,
                linestyle="none",
                marker="o",
                markersize=4,
                color=palette.KIND["server"],
                label="server's count (pg_stat_activity)",
            )
        top.set_ylabel("connections")
        top.set_title(
            "Connections: open and in use"
            + ("" if can_overflow or not queue_pool else " (max_overflow = 0: no overflow)")
        )
        highest = max(
            int(total.max(initial=0)),
            (limit or 0) * instances,
            (pool_size if isinstance(pool_size, int) else 0) * instances,
            float(np.nanmax(server)) if len(server) and not np.isnan(server).all() else 0,
            1,
        )
        top.set_ylim(0, highest * 1.12)  # the limit lines above the area, not on its edge
        if over is not None:
            most = (
                max_overflow * instances
                if isinstance(max_overflow, int) and max_overflow > 0
                else None
            )
            over.set_ylabel("connections")
            over.set_title(
                "Overflow: connections open beyond pool_size"
                + (f" (at most max_overflow{times_n} = {most})" if most else "")
            )
            over.set_ylim(0, max(most or 0, int(overflow.max(initial=0)), 1) * 1.15)
        timeout_marks = _coinciding(timeouts, end / 120)  # about 7 pixels
        count_labels: list[Text] = []
        if len(timeouts):
            middle.scatter(
                [t for t, _ in timeout_marks],
                np.zeros(len(timeout_marks)),
                marker="x",
                s=30,
                color=palette.KIND["timeout"],
                clip_on=False,
                zorder=5,
                label=f"client timeout ({data.timeouts.seen:,})",
            )
            for t_mark, number in timeout_marks:  # five at one instant are one cross
                if number > 1:
                    label = middle.annotate(
                        f"\u00d7{number}",
                        (t_mark, 0),
                        xytext=(5, 4),
                        textcoords="offset points",
                        fontsize=8,
                        fontweight="bold",
                        color=palette.KIND["timeout"],
                        annotation_clip=False,
                        bbox={"facecolor": "white", "alpha": 0.9, "linewidth": 0, "pad": 1},
                        zorder=6,
                    )
                    label.set_in_layout(False)
                    count_labels.append(label)
        if len(errors):
            middle.scatter(
                errors,
                np.zeros(len(errors)),
                marker="o",
                s=22,
                facecolors="none",
                edgecolors=palette.KIND["error"],
                clip_on=False,
                zorder=5,
                label=f"client error ({data.errors.seen:,})",
            )
        middle.set_ylabel("clients")
        middle.set_title("Clients waiting for a connection (pending requests)")
        middle.set_ylim(bottom=0)
        if bottom is not None:
            interval = monitor_interval(data)
            for index, (instance, mask) in enumerate(per_instance(data)):
                # each value is the mean over the window that ends at its snapshot
                window_t, window_u = monitor_t[mask], utilisation[mask]
                bottom.step(
                    np.concatenate([[max(0.0, window_t[0] - interval)], window_t]),
                    np.concatenate([window_u[:1], window_u]),
                    where="pre",
                    color=palette.KIND["utilisation"],
                    linestyle=_LINESTYLES[index % len(_LINESTYLES)],
                    linewidth=1.8,
                    label=f"instance {instance}"
                    if instances > 1
                    else "utilisation (time-weighted, per snapshot)",
                )
            bottom.set_ylim(min(0.0, float(np.nanmin(utilisation)) * 1.1), 105)
            bottom.set_ylabel("% of max in use")
            bottom.set_title("Pool utilisation: connections in use / (pool_size + max_overflow)")
        alert_labels = _draw_alerts(alerts_on, data)
        panels = [ax for ax in (top, over, middle, bottom) if ax is not None]
        panels[-1].set_xlabel("time since the scenario started (s)")
        for ax in (top, over, middle):  # counts of connections and clients: whole numbers
            if ax is not None:
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        drawn_in: dict[str, list[str]] = {}
        for ax in panels:
            if shade_faults(ax, data, label=ax is top):
                handles = [fault_handle()]
            time_axis(ax, data)
            ax_handles, ax_labels = ax.get_legend_handles_labels()
            drawn_in[ax.get_title(loc="left")] = ax_labels
            if ax_handles or handles:
                ax.legend(
                    handles=ax_handles + handles, loc="upper left", bbox_to_anchor=(1.005, 1.0)
                )
        _spread_labels(fig, [*alert_labels, *count_labels])
        png = render(fig)
        texts = drawn_texts(fig)
        ticks = count_ticks(
            {ax.get_title(loc="left"): ax for ax in (top, over, middle) if ax is not None}
        )
    return Chart(
        name=f"{name_prefix}pool.png",
        title="The pool over time",
        caption=(
            "Connections open (light blue) and in use (blue) against pool_size (dashed) and "
            "the most the pool may open (dotted); under them, on their own axis, overflow "
            "connections beyond pool_size (orange); then clients waiting for a connection "
            "(purple) with timeouts (red crosses), and the pool's utilisation per monitor "
            "snapshot, with monitor alerts (dark gold). A panel with nothing to show (no "
            "overflow; NullPool's utilisation) is left out, and a note says so."
        ),
        png=png,
        data={
            "extent": (float(times[0]), float(times[-1])) if len(times) else (0.0, 0.0),
            "xlim": (0.0, end),
            "max_used": int(used.max(initial=0)),
            "max_total": int(total.max(initial=0)),
            "max_overflow": int(overflow.max(initial=0)),
            "max_pending": int(pending.max(initial=0)),
            # clients waiting as drawn: from each time, the peak until the next
            "waiting": (times.tolist(), pending.tolist()),
            "overflow": (times.tolist(), overflow.tolist()),
            "panels": drawn_in,  # each panel's title → the labels of what it drew
            "pool_size": pool_size,
            "limit": limit,
            "instances": instances,
            "window_s": data.pool.width,
            "points": len(times),
            "monitor_snapshots": len(monitor_t),
            "timeouts": int(data.timeouts.seen),
            "errors": int(data.errors.seen),
            "texts": texts,
            "count_ticks": ticks,
            "timeout_marks": timeout_marks,  # (time, timeouts drawn as that one cross)
        },
    )


def _coinciding(times: Floats, within: float) -> list[tuple[float, int]]:
    """Times that lie closer than `within` to the first of their group, as (that time, how
    many): marks a chart draws on one another, counted."""
    groups: list[tuple[float, int]] = []
    for t in np.sort(times):
        if groups and t - groups[-1][0] < within:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((float(t), 1))
    return groups


def monitor_interval(data: ScenarioData) -> float:
    """Seconds between two `monitor.stats` snapshots, as the run was configured (1 s when the
    log does not say)."""
    monitor = data.start.get("monitor")
    interval = monitor.get("interval") if isinstance(monitor, dict) else None
    return float(interval) if isinstance(interval, int | float) and interval > 0 else 1.0


def snapshot_phrase(data: ScenarioData) -> str:
    """ "one-second snapshot", or the run's own interval."""
    interval = monitor_interval(data)
    return "one-second snapshot" if interval == 1 else f"{interval:g} s snapshot"


def _draw_alerts(ax: Axes, data: ScenarioData) -> list[Text]:
    """Each monitor alert as a dark gold line with its kind written beside it."""
    labels: list[Text] = []
    for t_alert, kind in data.alerts:
        ax.axvline(t_alert, color=palette.KIND["alert"], linewidth=2, alpha=0.9, zorder=4)
        label = ax.annotate(
            kind.replace("_", " "),
            (t_alert, 0.03),
            xycoords=("data", "axes fraction"),
            xytext=(3, 0),
            textcoords="offset points",
            fontsize=8,
            color=palette.KIND["alert"],
            bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0, "pad": 1},
        )
        label.set_in_layout(False)
        labels.append(label)
    if data.alerts:
        ax.plot([], [], color=palette.KIND["alert"], linewidth=2, label="monitor alert")
    return labels


def _spread_labels(fig: SubFigure, labels: Sequence[Text]) -> None:
    """Keeps labels written beside a line readable, measured on the laid-out figure: one that
    would pass its axes' right edge is written on the line's left instead, and one that
    would lie on an earlier one is moved up a line (alerts at about the same time)."""
    if not labels:
        return
    fig.figure.draw_without_rendering()
    renderer = fig.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    placed: list[Any] = []
    for label in labels:
        assert isinstance(label, Annotation)
        axes = label.axes
        box = label.get_window_extent(renderer)
        if axes is not None and box.x1 > axes.get_window_extent(renderer).x1:
            x, y = label.get_position()
            label.set_position((-abs(x), y))
            label.set_horizontalalignment("right")
        for _ in range(len(placed) + 1):
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            x, y = label.get_position()
            label.set_position((x, y + box.height + 1))
        placed.append(label.get_window_extent(renderer))


def drawn_texts(fig: SubFigure) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Every visible, non-empty text of the figure as drawn (after `render`): its string and
    its extent on the canvas in pixels, (x0, y0, x1, y1). For tests: no text may lie on
    another, nor outside the figure."""
    renderer = fig.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    # a tick's label is drawn only when the tick is within the axis' view
    ticks: dict[int, bool] = {}
    for ax in fig.figure.get_axes():
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            span = (high - low) * 1e-9
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                location = tick.get_loc()
                shown = location is not None and low - span <= location <= high + span
                ticks[id(tick.label1)] = ticks[id(tick.label2)] = shown and ax.get_visible()
    found = []
    for text in fig.figure.findobj(Text):
        if not isinstance(text, Text) or not text.get_visible() or not text.get_text().strip():
            continue
        if not ticks.get(id(text), True) or (text.axes is not None and not text.axes.get_visible()):
            continue
        found.append((text.get_text(), _box(text.get_window_extent(renderer))))
    return found


def _box(box: Any) -> tuple[float, float, float, float]:
    return (float(box.x0), float(box.y0), float(box.x1), float(box.y1))


def count_ticks(axes: dict[str, Axes]) -> dict[str, list[float]]:
    """The y ticks shown on axes that count things (connections, clients, checkouts)."""
    found = {}
    for title, ax in axes.items():
        low, high = ax.get_ylim()
        found[title] = [float(t) for t in ax.get_yticks() if low <= t <= high]
    return found


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


# --------------------------------------------------------------------------- distribution


def distribution_chart(data: ScenarioData, name_prefix: str) -> Chart:
    keys = sorted(data.clients)
    clients = [data.client_label(key) for key in keys]
    checkouts = {data.client_label(k): data.clients[k].checkouts for k in keys}
    timeouts = {data.client_label(k): data.clients[k].timeouts for k in keys}
    waits = {data.client_label(k): data.clients[k].wait_mean_ms for k in keys}
    wait_max = {data.client_label(k): data.clients[k].wait_max_ms for k in keys}
    lanes = data.lanes
    conn_checkouts = np.frombuffer(lanes.checkouts, dtype=np.int64)
    conns: list[int | str] = []  # named one by one only when they get a bar each
    if len(lanes) <= MAX_BARS_PER_ITEM:
        conns = [
            f"{lanes.instance[lane]}/{lanes.conn[lane]}"
            if data.several_instances
            else int(lanes.conn[lane])
            for lane in range(len(lanes))
        ]
    notes = []
    summary_per_client = (data.summary or {}).get("checkouts_per_client")
    if isinstance(summary_per_client, dict) and isinstance(
        summary_per_client.get("jain_index"), int | float
    ):  # (null: no client got a checkout)
        notes.append(
            f"Fairness among clients: Jain index {summary_per_client['jain_index']:.3f} "
            f"(1 = perfectly even); {summary_per_client.get('starved_share', 0):.0%} of "
            "clients starved."
        )
    jumps = queue_jumps(data.summary or {})
    if jumps is not None:
        notes.append(jumps_note(*jumps))
    title = f"{data.label}: how the work was shared"
    with figure(11.0, title, notes) as fig:
        ax_clients, ax_conns, ax_wait = fig.subplots(3, 1)
        ranked_clients = len(clients) > MAX_BARS_PER_ITEM
        _per_item(
            ax_clients,
            clients,
            [checkouts[c] for c in clients],
            "client",
            [palette.client_colour(key[1]) for key in keys],
            stacked=[timeouts[c] for c in clients],
            stacked_label="timeouts",
        )
        ax_clients.set_title(
            "Checkouts per client" + (" (and timeouts)" if any(timeouts.values()) else "")
        )
        ax_clients.set_ylabel("checkouts" + (" and timeouts" if any(timeouts.values()) else ""))
        _per_item(
            ax_conns,
            conns or range(len(lanes)),
            conn_checkouts,
            "connection",
            [palette.KIND["checkout"]] * min(len(lanes), MAX_BARS_PER_ITEM + 1),
        )
        ax_conns.set_title("Checkouts per connection (reuse)")
        ax_conns.set_ylabel("checkouts")
        with_waits = [c for c in clients if not math.isnan(waits[c])]
        _per_item(
            ax_wait,
            with_waits,
            [waits[c] for c in with_waits],
            "client",
            [palette.KIND["waiting"]] * len(with_waits),
            peaks=[wait_max[c] for c in with_waits],
        )
        ax_wait.set_title("Wait for a connection per client: mean (bar) and longest (dot)")
        ax_wait.set_ylabel("wait (ms)")
        png = render(fig)
        texts = drawn_texts(fig)
        ticks = count_ticks({ax.get_title(loc="left"): ax for ax in (ax_clients, ax_conns)})
    return Chart(
        name=f"{name_prefix}distribution.png",
        title="How the work was shared",
        caption=(
            "Checkouts per client (a fair pool gives every client about the same share), "
            "checkouts per connection (how often each connection was reused), and how long "
            "each client waited for a connection. With many clients or connections, they are "
            "ranked from most to least instead of drawn one bar each."
        ),
        png=png,
        data={
            "checkouts_per_client": checkouts,
            "timeouts_per_client": timeouts,
            "checkouts_per_connection": dict(zip(conns, conn_checkouts.tolist(), strict=True))
            if conns
            else None,
            "connections": len(lanes),
            "checkouts_in_lanes": int(conn_checkouts.sum()),
            "wait_mean_ms_per_client": {c: waits[c] for c in with_waits},
            "clients_ranked": ranked_clients,
            "connections_ranked": len(lanes) > MAX_BARS_PER_ITEM,
            "queue_jumps": jumps[0] if jumps is not None else None,
            "queue_jump_share": jumps[2] if jumps is not None else None,
            "texts": texts,
            "count_ticks": ticks,
        },
    )


def queue_jumps(summary: dict[str, Any]) -> tuple[int, int, float] | None:
    """(queue jumps, checkouts, their share) from a summary that counts them (logs before
    issue 13 do not), with at least one checkout; else None."""
    jumps, checkouts = summary.get("queue_jumps"), summary.get("checkouts")
    if not isinstance(jumps, int) or not isinstance(checkouts, int) or checkouts <= 0:
        return None
    return jumps, checkouts, round(jumps / checkouts, 4)


def jumps_note(jumps: int, checkouts: int, share: float) -> str:
    if not jumps:
        return "Queue jumps: none; no client was served while one that asked earlier still waited."
    return (
        f"Queue jumps: {jumps:,} of {checkouts:,} checkouts ({share:.0%}) were granted while a "
        "client that asked earlier was still waiting: the async pool is not first-come "
        "first-served."
    )


def _per_item(
    ax: Axes,
    items: Sequence[int | str] | range,
    values: Sequence[float] | Ints,
    noun: str,
    colours: Sequence[str],
    *,
    stacked: Sequence[int] | None = None,
    stacked_label: str = "",
    peaks: Sequence[float] | None = None,
) -> None:
    """A bar per item (by id), or past MAX_BARS_PER_ITEM items a ranked profile."""
    if not items:
        empty_message(ax, f"no {noun}s in this log")
        return
    if peaks is None:  # counts of checkouts: whole numbers
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(items) > MAX_BARS_PER_ITEM:
        order = np.argsort(-floats(values), kind="stable")
        ranked = floats(values)[order]
        ranks = np.arange(1, len(items) + 1)
        # a ranked profile is monotone: a couple of thousand points draw it exactly enough
        shown = np.unique(np.linspace(0, len(items) - 1, 2000).astype(np.int64))
        ax.fill_between(
            ranks[shown], ranked[shown], step="mid", color=colours[0], alpha=0.85, linewidth=0
        )
        if peaks is not None:
            ax.plot(ranks[shown], floats(peaks)[order][shown], ".", color="black", markersize=3)
        ax.set_xlabel(f"{noun}s, ranked from most to least ({len(items):,} {noun}s)")
        ax.set_xlim(0.5, len(items) + 0.5)
        finite = ranked[np.isfinite(ranked)]
        if len(finite):
            ax.annotate(
                f"min {finite.min():,.1f} · median {np.median(finite):,.1f} · "
                f"max {finite.max():,.1f}",
                (0.99, 0.95),
                xycoords="axes fraction",
                ha="right",
                va="top",
                fontsize=9,
                bbox={"facecolor": "white", "alpha": 0.85, "linewidth": 0, "pad": 2},
            )
        ax.set_ylim(bottom=0)  # a profile of counts or waits: from zero, as bars are
        return
    x = np.arange(len(items))
    ax.grid(axis="x", visible=False)  # a grid line through every bar's middle
    ax.bar(x, values, color=colours, edgecolor="#333333", linewidth=0.4)
    if stacked is not None and any(stacked):
        ax.bar(
            x,
            stacked,
            bottom=values,
            color=palette.KIND["timeout"],
            edgecolor="#333333",
            linewidth=0.4,
            label=stacked_label,
        )
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0))
    if peaks is not None:
        ax.plot(x, peaks, "o", color="black", markersize=4, label="longest wait")
    ax.set_xticks(x, [str(i) for i in items], fontsize=8 if len(items) > 30 else 9)
    several = any(isinstance(item, str) for item in items)
    ax.set_xlabel(
        noun
        + (" (conn id)" if noun == "connection" else " (id)")
        + (", instance/id" if several else "")
    )
    ax.set_xlim(-0.6, len(items) - 0.4)


# -------------------------------------------------------------------------------- latency


def latency_chart(data: ScenarioData, name_prefix: str) -> Chart:
    t = monitor_column(data, "t")
    summary = data.summary or {}
    title = f"{data.label}: latency — waiting for a connection, and holding it"
    notes = []
    if data.several_instances:
        notes.append(
            f"{len(data.instances)} application instances: one line per instance (solid, "
            "dashed, ...); the distributions below hold every instance's samples."
        )
    if data.monitor.thinned:
        notes.append(sampled_note(len(data.monitor), data.monitor.seen, "monitor snapshots"))
    with figure(9.0, title, notes) as fig:
        grid = fig.add_gridspec(2, 6)
        ax_wait = fig.add_subplot(grid[0, :3])
        ax_use = fig.add_subplot(grid[0, 3:], sharex=ax_wait)
        hist_axes = [fig.add_subplot(grid[1, 2 * i : 2 * i + 2]) for i in range(3)]
        over_time: dict[str, int] = {}
        for ax, kind, shades, noun in (
            (ax_wait, "wait", palette.WAIT_SHADES, "Wait for a connection"),
            (ax_use, "use", palette.USE_SHADES, "Use time (checkout to return)"),
        ):
            drawn = 0
            for index, (_, mask) in enumerate(per_instance(data)):
                style = _LINESTYLES[index % len(_LINESTYLES)]
                for label, shade in zip(("p50", "p95", "p99"), shades, strict=True):
                    values = monitor_column(data, f"{kind}_{label}")[mask]
                    if len(values) and not np.isnan(values).all():
                        ax.plot(
                            t[mask],
                            values,
                            marker=".",
                            color=shade,
                            linewidth=1.6,
                            linestyle=style,
                            label=label if index == 0 else None,
                        )
                        drawn += int(np.isfinite(values).sum())
                peaks = monitor_column(data, f"{kind}_max")[mask]
                if len(peaks) and not np.isnan(peaks).all():
                    ax.plot(
                        t[mask],
                        peaks,
                        linestyle=":",
                        color=shades[-1],
                        linewidth=1.2,
                        label="max" if index == 0 else None,
                    )
            peaks = monitor_column(data, f"{kind}_max")
            if len(peaks) and not np.isnan(peaks).all():
                _log_if_wide(ax, np.concatenate([peaks, monitor_column(data, f"{kind}_p50")]))
            over_time[kind] = drawn
            if not drawn:
                empty_message(ax, "no monitor.stats percentiles in this log")
            ax.set_title(f"{noun}, per {snapshot_phrase(data)}")
            ax.set_ylabel("milliseconds")
            ax.set_xlabel("time since the scenario started (s)")
            linear = ax.get_yscale() == "linear"
            low, high = ax.get_ylim()
            # room above the lines for the legend
            ax.set_ylim(0 if linear else low, high * 1.25 if linear else high * 6)
            shade_faults(ax, data, label=False)
            time_axis(ax, data)
            if drawn:
                ax.legend(loc="upper left", ncols=4)
        counts: dict[str, int] = {}
        distributions: dict[str, dict[str, Any]] = {}
        percentile_labels: list[Text] = []
        labels_of: dict[str, tuple[Axes, list[Text]]] = {}
        for ax, histogram, colour, noun, key in (
            (
                hist_axes[0],
                data.wait_ms,
                palette.KIND["waiting"],
                "Wait for a connection",
                "wait_time_ms",
            ),
            (hist_axes[1], data.use_ms, palette.KIND["checkout"], "Use time", "use_time_ms"),
            (
                hist_axes[2],
                data.connect_ms,
                palette.KIND["connect"],
                "Connect time",
                "create_time_ms",
            ),
        ):
            first_label = len(percentile_labels)
            drawn_as = _histogram(ax, histogram, colour, summary.get(key), percentile_labels)
            labels_of[key] = (ax, percentile_labels[first_label:])
            counts[key] = drawn_as["samples"]
            distributions[key] = drawn_as
            ax.set_title(f"{noun}: {count(histogram.count, 'sample')}", fontsize=10)
            ax.set_ylabel("count")
        _spread_labels(fig, percentile_labels)
        png = render(fig)
        texts = drawn_texts(fig)
        renderer = fig.figure.canvas.get_renderer()  # type: ignore[attr-defined]
        for key, (ax, labels) in labels_of.items():
            axes_box = ax.get_window_extent(renderer)
            distributions[key]["labels"] = [
                (
                    label.get_text(),
                    _box(label.get_window_extent(renderer)),
                    (axes_box.x0, axes_box.x1),
                )
                for label in labels
            ]
            distributions[key]["labels_left"] = sum(
                label.get_horizontalalignment() == "right" for label in labels
            )
    return Chart(
        name=f"{name_prefix}latency.png",
        title="Latency",
        caption=(
            "Top: percentiles of the wait for a connection and of the use time (checkout to "
            "return), from the monitor's snapshots (one a second unless the run set another "
            "interval). Bottom: the distributions over the whole run, on a logarithmic scale "
            "(linear when they are narrow), with p50, p95 and p99 marked."
        ),
        png=png,
        data={
            "monitor_snapshots": len(t),
            "extent": (float(t.min()), float(t.max())) if len(t) else (0.0, 0.0),
            "xlim": (0.0, max(data.duration_s, 1e-3)),
            "points_over_time": over_time,
            "samples": counts,
            "distributions": distributions,  # how each was drawn: scale, bars, ticks
            "texts": texts,
        },
    )


def _log_if_wide(ax: Axes, values: Floats) -> None:
    positive = values[np.isfinite(values) & (values > 0)]
    if len(positive) and positive.max() / max(positive.min(), 1e-3) > 200:
        ax.set_yscale("log")


#: A distribution narrower than this (its highest over its lowest value) is drawn on a
#: linear axis: on a log axis it is one block with a single tick.
LINEAR_SPREAD = 4.0
#: Bars a distribution is drawn with, about.
HISTOGRAM_BINS = 40


def histogram_bins(histogram: LogHistogram) -> tuple[str, Floats, Floats, Floats]:
    """How to draw a distribution, chosen from its spread: the scale ("linear" or "log") and
    each bar's low edge, high edge and count. The histogram's buckets (2.3 % wide) are
    gathered into about HISTOGRAM_BINS bars, equal on the scale drawn."""
    buckets = histogram.nonzero()
    lows = floats([max(low, 0.0005) for low, _, _ in buckets])
    highs = floats([high if math.isfinite(high) else low * 1.024 for low, high, _ in buckets])
    counts = floats([c for _, _, c in buckets])
    if not len(counts):
        return "log", lows, highs, counts
    low, high = float(lows.min()), float(max(highs.max(), histogram.max))
    middles = np.sqrt(lows * highs)
    # no narrower than a bucket (or a bar would be a sliver with a gap beside it), and fewer
    # with few samples
    wanted = min(HISTOGRAM_BINS, max(10, int(3 * math.sqrt(histogram.count))))
    if high / low < LINEAR_SPREAD:
        n = max(1, min(wanted, int((high - low) / (float((highs - lows).min()) or 1.0))))
        edges = np.linspace(low, high, n + 1)
        scale = "linear"
    else:
        n = max(1, min(wanted, int(math.log10(high / low) * 100)))
        edges = np.geomspace(low, high, n + 1)
        scale = "log"
    index = np.clip(np.searchsorted(edges, middles, side="right") - 1, 0, n - 1)
    binned = np.bincount(index, weights=counts, minlength=n)
    keep = binned > 0
    return scale, edges[:-1][keep], edges[1:][keep], floats(binned[keep])


def _histogram(
    ax: Axes, histogram: LogHistogram, colour: str, summary: Any, labels: list[Text]
) -> dict[str, Any]:
    """Draws a distribution; returns how (scale, bars, the ticks inside the data's range).
    The labels of its percentiles are added to `labels` (for `_spread_labels`)."""
    if not histogram.count:
        empty_message(ax, "no samples")
        return {"samples": 0, "scale": None, "bars": 0, "ticks": []}
    scale, lows, highs, values = histogram_bins(histogram)
    ax.bar(lows, values, width=highs - lows, align="edge", color=colour, alpha=0.85, linewidth=0)
    if scale == "log":
        ax.set_xscale("log")
        decades = math.log10(max(float(highs.max()), 1e-3) / float(lows.min()))
        ax.xaxis.set_major_locator(
            LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,))
        )
        ax.xaxis.set_major_formatter(FuncFormatter(_ms_tick))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("milliseconds (log scale)")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.set_xlabel("milliseconds")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    marks = (
        {key: summary.get(key) for key in ("p50", "p95", "p99")}
        if isinstance(summary, dict) and summary.get("count")
        else {key: histogram.percentile(float(key[1:])) for key in ("p50", "p95", "p99")}
    )
    if scale == "linear":  # the bars and the percentiles marked, with a margin
        shown = [float(lows.min()), float(highs.max())]
        shown += [  # (a mark far from every bar would squash the bars into a sliver)
            float(v)
            for v in marks.values()
            if isinstance(v, int | float) and shown[0] / 2 <= v <= shown[1] * 2
        ]
        margin = max((max(shown) - min(shown)) * 0.04, max(shown) * 0.002)
        ax.set_xlim(min(shown) - margin, max(shown) + margin)
    for (label, value), style in zip(marks.items(), ("-", "--", ":"), strict=True):
        if isinstance(value, int | float) and value > 0 and math.isfinite(value):
            ax.axvline(value, color="black", linestyle=style, linewidth=1.0)
            annotation = ax.annotate(
                f"{label} {_ms(value)} ms",
                (value, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -2 - 11 * ("p50", "p95", "p99").index(label)),
                textcoords="offset points",
                fontsize=8,
                va="top",
                bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0, "pad": 1},
                annotation_clip=True,
            )
            annotation.set_in_layout(False)
            labels.append(annotation)
    low, high = ax.get_xlim()
    return {
        "samples": histogram.count,
        "scale": scale,
        "bars": len(values),
        "ticks": [float(t) for t in ax.get_xticks() if low <= t <= high],
    }


def _ms(value: float) -> str:
    """Milliseconds in a label: three significant digits, whole from 100 ms (never 3.01e+03)."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _ms_tick(value: float, _position: int | None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def aggregate_caps() -> dict[str, int]:
    from loadsim.report import aggregate

    return {"bars": aggregate.MAX_BARS, "marks": aggregate.MAX_MARKS}
