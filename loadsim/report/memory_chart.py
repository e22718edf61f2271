"""The memory chart of a scenario: our backends' memory on the server over time, in total and
per connection, with loadsim's own beside it (`monitor.stats`' `*_memory_mb` fields).

A log without those figures (written before they were measured, or a fleet's parent) gets no
chart at all, not an empty panel; a log whose server could not be read (another host) gets
loadsim's own memory, and the reason `run.start` gave.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loadsim.report import palette
from loadsim.report.aggregate import MEMORY_COLUMNS, ScenarioData
from loadsim.report.charts import (
    Chart,
    Floats,
    figure,
    render,
    sampled_note,
    shade_faults,
    time_axis,
)

_LINESTYLES = ("-", "--", "-.", ":")


def memory_column(data: ScenarioData, name: str) -> Floats:
    return np.frombuffer(data.memory.columns[MEMORY_COLUMNS.index(name)], dtype=np.float64)


def _finite(values: Floats) -> bool:
    return bool(len(values)) and bool(np.isfinite(values).any())


def _peak(values: Floats) -> float | None:
    return float(np.nanmax(values)) if _finite(values) else None


def _not_measured_reason(data: ScenarioData) -> str | None:
    described = data.start.get("server_memory")
    return described.get("reason") if isinstance(described, dict) else None


def memory_chart(data: ScenarioData, name_prefix: str) -> Chart | None:
    """None when the log has no memory figures."""
    t = memory_column(data, "t")
    total = memory_column(data, "server_memory_mb")
    per_connection = memory_column(data, "server_memory_per_connection_mb")
    client = memory_column(data, "client_memory_mb")
    server_measured, client_measured = _finite(total), _finite(client)
    if not server_measured and not client_measured:
        return None
    instances = memory_column(data, "instance")
    masks = [(int(i), instances == i) for i in np.unique(instances)]
    notes = []
    if not server_measured:
        reason = _not_measured_reason(data) or "no snapshot could read them"
        notes.append(f"Our backends' memory on the server was not measured: {reason}.")
    if len(masks) > 1:
        notes.append(f"{len(masks)} application instances: one line per instance.")
    if data.memory.thinned:
        notes.append(sampled_note(len(data.memory), data.memory.seen, "memory snapshots"))
    title = f"{data.label}: memory — our sessions on the server, and loadsim itself"
    panels = 2 if server_measured else 1
    with figure(4.2, title, notes) as fig:
        axes = fig.subplots(1, panels, squeeze=False)[0]
        ax_total = axes[0]
        for index, (_, mask) in enumerate(masks):
            style = _LINESTYLES[index % len(_LINESTYLES)]
            first = index == 0
            if server_measured:
                ax_total.plot(
                    t[mask],
                    total[mask],
                    marker=".",
                    color=palette.KIND["memory"],
                    linestyle=style,
                    label="our backends on the server (Pss, total)" if first else None,
                )
            if client_measured:
                ax_total.plot(
                    t[mask],
                    client[mask],
                    color=palette.KIND["client_memory"],
                    linestyle=style,
                    linewidth=1.2,
                    label="loadsim itself (Pss)" if first else None,
                )
        ax_total.set_title("Memory, at each snapshot")
        ax_total.set_ylabel("MiB")
        highest = max(_peak(total) or 0.0, _peak(client) or 0.0)
        ax_total.set_ylim(0, max(highest, 1.0) * 1.3)  # room above the lines for the legend
        ax_total.legend(loc="upper left", ncols=2)
        if server_measured:
            ax_each = axes[1]
            for index, (_, mask) in enumerate(masks):
                ax_each.plot(
                    t[mask],
                    per_connection[mask],
                    marker=".",
                    color=palette.KIND["memory"],
                    linestyle=_LINESTYLES[index % len(_LINESTYLES)],
                )
            ax_each.set_title("Per connection: our backends' memory over their number")
            ax_each.set_ylabel("MiB per backend")
            ax_each.set_ylim(0, max(_peak(per_connection) or 0.0, 0.1) * 1.15)
        for ax in axes:
            ax.set_xlabel("time since the scenario started (s)")
            shade_faults(ax, data, label=False)
            time_axis(ax, data)
        png = render(fig)
    drawn: dict[str, Any] = {
        "snapshots": len(t),
        "panels": panels,
        "server_measured": server_measured,
        "server_peak_mb": _peak(total),
        "per_connection_mb": [float(v) for v in per_connection if np.isfinite(v)],
        "server_total_mb": [float(v) for v in total if np.isfinite(v)],
        "client_peak_mb": _peak(client),
        "reason": None if server_measured else _not_measured_reason(data),
    }
    return Chart(
        name=f"{name_prefix}memory.png",
        title="Memory",
        caption=(
            "Left: the memory of our sessions' backends on the server (their proportional set "
            "size, Pss: a shared page counted once among the processes that map it), added up, "
            "and loadsim's own, at each monitor snapshot. Right: the same per connection. "
            "Every overflow connection is a backend of its own."
        ),
        png=png,
        data=drawn,
    )
