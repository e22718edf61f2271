"""`loadsim report` on a `loadsim size` log: the sweep's curves, drawn from its `size.*`
events alone (the report never imports the sweep).

- throughput against pool size: every capacity repeat, the USL fit through them, its
  ceiling, N* and the knee, and the recommended size;
- wait and use time against pool size, stacked (a checkout's time: waiting, then holding);
- P(wait) and p99 wait against pool size at the target rate, measured beside Erlang C;
- and the recommendation in one sentence, on the page.
"""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadsim.errors import EventLogError
from loadsim.report.reader import Event, LogSource, Note, read_events

#: A log is a sweep's when it holds one of these (the first few kilobytes rarely do: each
#: step's run.start and run.end come first).
_MARKER = b'"event":"size.'


def is_size_log(source: LogSource) -> bool:
    """A file written by `loadsim size` (standard input is never taken for one)."""
    if source.path is None:
        return False
    try:
        with source.path.open("rb") as stream:
            tail = b""
            while chunk := stream.read(1 << 20):
                if _MARKER in tail + chunk:
                    return True
                tail = chunk[-len(_MARKER) :]
    except OSError:
        return False
    return False


@dataclass
class SizeData:
    source: str
    scenario: str = ""
    run_id: str = ""
    steps: list[Event] = field(default_factory=list)
    fit: Event | None = None
    recommendation: Event | None = None
    start: Event | None = None


def read_size_log(source: LogSource, note: Note | None = None) -> SizeData:
    data = SizeData(source.label)
    for _, event in read_events(source, note):
        name = event["event"]
        if name == "run.start" and data.start is None:
            data.start, data.scenario, data.run_id = event, event["scenario"], event["run_id"]
        elif name == "size.step":
            data.steps.append(event)
        elif name == "size.fit":
            data.fit = event
        elif name == "size.recommendation":
            data.recommendation = event
    if not data.steps:
        raise EventLogError(f"{source.label}: a loadsim size log with no size.step")
    if data.recommendation is None and note is not None:
        note(f"{source.label}: the sweep has no size.recommendation (it was cut short)")
    return data


def _by_size(steps: Sequence[Event], kind: str, key: str) -> tuple[list[int], list[float]]:
    """Pool sizes and the median of `key` over each size's repeats."""
    values: dict[int, list[float]] = {}
    for step in steps:
        if step["kind"] == kind and step.get(key) is not None:
            values.setdefault(step["pool_size"], []).append(float(step[key]))
    sizes = sorted(values)
    return sizes, [statistics.median(values[size]) for size in sizes]


def usl(fit: Event, connections: float) -> float:
    n = connections
    return float(fit["gamma"] * n / (1 + fit["alpha"] * (n - 1) + fit["beta"] * n * (n - 1)))


def size_charts(data: SizeData, prefix: str) -> list[Any]:
    from loadsim.report import palette
    from loadsim.report.charts import Chart, figure, render

    steps, fit, advice = data.steps, data.fit or {}, data.recommendation or {}
    recommended = advice.get("pool_size")
    charts: list[Chart] = []

    # 1. throughput and the USL
    capacity = [step for step in steps if step["kind"] == "capacity"]
    with figure(4.2, "Throughput against pool size", _fit_notes(fit)) as fig:
        axes = fig.subplots()
        points = [(step["pool_size"], step["checkouts_per_s"]) for step in capacity]
        if points:
            axes.scatter(
                [x for x, _ in points],
                [y for _, y in points],
                color=palette.KIND["checkout"],
                s=22,
                label="measured (each repeat)",
                zorder=3,
            )
        curve: list[tuple[float, float]] = []
        if fit.get("fitted"):
            largest = max(step["pool_size"] for step in steps)
            top = max(largest, math.ceil(fit["peak"] or 0) if fit.get("peak") else 0)
            sizes_measured = {step["pool_size"] for step in steps}  # the curve passes through each
            grid = sorted({1 + (top - 1) * i / 200 for i in range(201)} | sizes_measured)
            curve = [(n, usl(fit, n)) for n in grid]
            axes.plot(*zip(*curve, strict=True), color="#333333", label="USL fit")
            if fit.get("ceiling") is not None:
                axes.axhline(
                    fit["ceiling"],
                    color="#333333",
                    linestyle=":",
                    linewidth=1,
                    label=f"ceiling {fit['ceiling']:.4g}/s",
                )
            if fit.get("peak") is not None:
                axes.axvline(
                    fit["peak"],
                    color="#777777",
                    linestyle="--",
                    linewidth=1,
                    label=f"N* {fit['peak']:.3g}",
                )
            if fit.get("knee") is not None:
                axes.axvline(
                    fit["knee"],
                    color=palette.KIND["overflow"],
                    linewidth=1.5,
                    label=f"knee {fit['knee']}",
                )
        if recommended is not None:
            axes.axvline(
                recommended,
                color=palette.KIND["connect"],
                linewidth=2,
                label=f"recommended {recommended}",
            )
        if points and max(x for x, _ in points) >= 8 * min(x for x, _ in points):
            axes.set_xscale("log", base=2)  # doubling sizes, evenly spaced
            axes.xaxis.set_major_formatter("{x:g}")
        axes.set_xlabel("pool size (connections)")
        axes.set_ylabel("checkouts/s")
        axes.set_ylim(bottom=0)
        axes.legend(loc="lower right")
        charts.append(
            Chart(
                f"{prefix}size-throughput.png",
                "Throughput against pool size",
                "Closed, saturating load (two clients a connection, no think time): every "
                "repeat, the Universal Scalability Law through them, its ceiling, N* (the "
                "size of the highest throughput) and the knee (past it, more connections "
                "buy no throughput: only time inside the server).",
                render(fig),
                {
                    "points": points,
                    "curve": curve,
                    "knee": fit.get("knee"),
                    "recommended": recommended,
                },
            )
        )

    # 2. wait and use time, stacked
    with figure(3.8, "Wait and use time against pool size") as fig:
        panels = fig.subplots(1, 2)
        drawn: dict[str, Any] = {}
        for axes, kind, title in zip(
            panels, ("capacity", "queue"), ("saturating load", "at the target rate"), strict=True
        ):
            sizes, waits = _by_size(steps, kind, "wait_mean_ms")
            _, uses = _by_size(steps, kind, "use_mean_ms")
            labels = [str(size) for size in sizes]
            axes.bar(labels, uses, color=palette.KIND["checkout"], label="use (held)")
            axes.bar(labels, waits, bottom=uses, color=palette.KIND["waiting"], label="wait")
            axes.set_title(title)
            axes.set_xlabel("pool size")
            axes.set_ylabel("mean ms a checkout")
            axes.legend(loc="upper left")
            drawn[kind] = {"sizes": sizes, "wait_ms": waits, "use_ms": uses}
        charts.append(
            Chart(
                f"{prefix}size-time.png",
                "Wait and use time against pool size",
                "The mean time of a checkout, waiting for a connection (purple) on top of "
                "holding it (blue): past the knee, waiting turns into use time, inside the "
                "server.",
                render(fig),
                drawn,
            )
        )

    # 3. P(wait) and p99 wait, measured and modelled
    if any(step["kind"] == "queue" for step in steps):
        with figure(3.8, "P(wait) and p99 wait against pool size, measured and Erlang C") as fig:
            left, right = fig.subplots(1, 2)
            sizes, measured = _by_size(steps, "queue", "p_wait")
            model_sizes, modelled = _by_size(steps, "queue", "model_p_wait_longer")
            c_sizes, c_values = _by_size(steps, "queue", "model_p_wait")
            threshold = steps[0].get("wait_threshold_ms", 1.0)
            left.plot(
                sizes,
                measured,
                "o-",
                color=palette.KIND["waiting"],
                label=f"measured: waited > {threshold:g} ms",
            )
            left.plot(
                model_sizes,
                modelled,
                "s--",
                color="#333333",
                label=f"Erlang C: P(Wq > {threshold:g} ms)",
            )
            left.plot(c_sizes, c_values, ":", color="#777777", label="Erlang C: C(c, a)")
            left.set_ylim(0, 1.05)
            left.set_xlabel("pool size")
            left.set_ylabel("share of checkouts")
            left.legend(loc="upper right")
            p_sizes, p99 = _by_size(steps, "queue", "wait_p99_ms")
            m_sizes, m99 = _by_size(steps, "queue", "model_p99_wait_ms")
            right.plot(p_sizes, p99, "o-", color=palette.KIND["waiting"], label="measured p99")
            right.plot(m_sizes, m99, "s--", color="#333333", label="Erlang C p99")
            slo = str(advice.get("slo") or "")
            limit = _wait_limit(slo)
            if limit is not None:
                right.axhline(limit, color=palette.KIND["timeout"], linewidth=1, label=slo)
            right.set_yscale("symlog", linthresh=1.0)
            right.set_ylim(bottom=0)
            right.set_xlabel("pool size")
            right.set_ylabel("wait ms")
            right.legend(loc="upper right")
            charts.append(
                Chart(
                    f"{prefix}size-queue.png",
                    "P(wait) and p99 wait against pool size",
                    "An open workload at the target rate: the share of checkouts that "
                    "queued and the 99th percentile wait, measured (purple) beside Erlang C's "
                    "prediction from the measured arrival rate and mean hold (grey).",
                    render(fig),
                    {
                        "p_wait": (sizes, measured),
                        "model_p_wait": (model_sizes, modelled),
                        "p99": (p_sizes, p99),
                        "model_p99": (m_sizes, m99),
                    },
                )
            )
    return charts


def _wait_limit(slo: str) -> float | None:
    parts = slo.split()
    if len(parts) == 3 and parts[0] == "wait_time_p99_ms" and parts[1] in ("<", "<="):
        try:
            return float(parts[2])
        except ValueError:
            return None
    return None


def _fit_notes(fit: Event) -> list[str]:
    if not fit:
        return ["no size.fit in the log"]
    if not fit.get("fitted"):
        return [f"no USL fit: {fit.get('reason')}"]
    return [
        f"USL: gamma {fit['gamma']:.4g}/s, alpha {fit['alpha']:.3g}, beta {fit['beta']:.3g}, "
        f"R squared {fit['r_squared']:.3g}"
    ]


_CUT_SHORT = "No recommendation: the sweep was cut short."


def size_page(data: SizeData, charts: Sequence[Any]) -> str:
    from loadsim.report.html import _SCRIPT, _STYLE, e, image

    advice = data.recommendation or {}
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    title = f"loadsim size: {data.scenario}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_STYLE}</style><script>{_SCRIPT}</script>",
        "</head><body><main>",
        f"<h1>{e(title)}</h1>",
        f'<p class="meta">From {e(data.source)} · run {e(data.run_id)} · '
        f"{len(data.steps)} steps · generated {e(generated)} by loadsim</p>",
        f'<p class="verdict">{e(advice.get("reason") or _CUT_SHORT)}</p>',
    ]
    if advice.get("notes"):
        parts.append(
            '<div class="notes"><strong>Where measurement and model differ</strong><ul>'
            + "".join(f"<li>{e(line)}</li>" for line in advice["notes"])
            + "</ul></div>"
        )
    parts.extend(image(chart) for chart in charts)
    parts.append("</main></body></html>")
    return "\n".join(parts)


def build_size_report(
    source: LogSource, out: Path, note: Note | None
) -> tuple[SizeData, list[Any], str]:
    from loadsim.report.charts import slug

    data = read_size_log(source, note)
    charts = size_charts(data, f"{slug(data.scenario)}-")
    return data, charts, size_page(data, charts)
