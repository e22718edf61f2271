"""Charts that must not lie: what a chart draws is what the log says, its colours mean what
the README says they mean, and what it puts on the page can be read (no label on another, no
axis that exaggerates, no empty box). Checked on the numbers a chart drew and, where the
question is how it looks, on matplotlib's own layout of it (text extents from the Agg
renderer), against the logs checked in under tests/data."""

from __future__ import annotations

import itertools
import math
import struct
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from matplotlib.colors import to_rgb

from loadsim.report import palette
from loadsim.report.aggregate import ScenarioData, read_log
from loadsim.report.charts import (
    LINEAR_SPREAD,
    MIN_BAR_PX,
    Chart,
    distribution_chart,
    latency_chart,
    pool_chart,
    timeline_chart,
)
from loadsim.report.compare import (
    PANELS,
    RunFigures,
    comparison_chart,
    comparison_over_time_chart,
    figures,
    overlaps,
)
from loadsim.report.reader import LogSource
from tests.helpers import Event, RecordedLogs, events_of

pytestmark = pytest.mark.usefixtures("no_stray_reports")


def drawn_at(series: tuple[list[float], list[int]], t: float) -> int:
    """The value a step series (each value holds from its time to the next) shows at t."""
    times, values = series
    return values[max(0, int(np.searchsorted(times, t, side="right")) - 1)]


def snapshots(events: list[Event]) -> list[Event]:
    return [e for e in events if e["event"] == "monitor.stats"]


# --------------------------------------------------------------- clients waiting


def test_clients_waiting_through_a_stall_are_the_snapshots_count(
    recorded: RecordedLogs,
) -> None:
    """exhaustion: 15 clients, at most 10 connections, each held 2.5 s past the 1 s
    pool_timeout. While the pool is stalled there are no pool events, and every snapshot says
    5 clients wait: so must the chart (it once said about 1, the last pool event's count)."""
    events = events_of(recorded.exhaustion)["exhaustion"]
    (data,) = read_log(LogSource.of(recorded.exhaustion)).scenarios
    waiting = pool_chart(data, "").data["waiting"]
    stats = snapshots(events)
    stalled = [s for s in stats if s["pending_requests"] == 5]
    assert len(stalled) >= 5  # the log is what this test is about
    *during, last = stats
    for snapshot in stalled:
        assert drawn_at(waiting, snapshot["t"]) == 5, snapshot["t"]
    # the chart draws each step's peak: a snapshot taken just before clients (re)queue in the
    # same step is drawn at their count, never below its own
    for snapshot in during:
        assert drawn_at(waiting, snapshot["t"]) >= snapshot["pending_requests"], snapshot["t"]
    # the run stopped: the waiting clients were cancelled (no event says so), the last
    # snapshot counts none, and from it on the chart shows none
    assert last["pending_requests"] == 0
    times, values = waiting
    assert all(v == 0 for t, v in zip(times, values, strict=True) if t > last["t"] + 0.01)
    clients = events[0]["workload"]["clients"]
    assert max(values) <= clients
    assert max(values) == events[-1]["summary"]["max_pending_requests"]


@pytest.mark.parametrize("log", ["saturation", "instances", "pooled"])
def test_clients_waiting_never_below_a_snapshot(recorded: RecordedLogs, log: str) -> None:
    """In busy runs too: at each snapshot's time the chart shows at least the clients the
    snapshot counted waiting (several instances: their sum, each at its own snapshot's time),
    and its peak is the run's max_pending_requests."""
    path = getattr(recorded, log)
    by_scenario = events_of(path)
    for data in read_log(LogSource.of(path)).scenarios:
        events = by_scenario[data.scenario]
        waiting = pool_chart(data, "").data["waiting"]
        if data.several_instances:
            most = max(s["pending_requests"] for s in snapshots(events))
            assert most <= max(waiting[1]) <= events[-1]["summary"]["max_pending_requests"]
            continue
        for snapshot in snapshots(events)[:-1]:  # the last may follow the stop
            assert drawn_at(waiting, snapshot["t"]) >= snapshot["pending_requests"]
        assert max(waiting[1]) == events[-1]["summary"]["max_pending_requests"]


# ---------------------------------------------------------------------- colours


def lab(colour: str) -> tuple[float, float, float]:
    """CIE L*a*b* (D65) of an sRGB colour."""
    red, green, blue = (
        c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(colour)
    )
    x = (0.4124 * red + 0.3576 * green + 0.1805 * blue) / 0.95047
    y = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    z = (0.0193 * red + 0.1192 * green + 0.9505 * blue) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def chroma_hue(colour: str) -> tuple[float, float]:
    _, a, b = lab(colour)
    return math.hypot(a, b), math.degrees(math.atan2(b, a)) % 360


def delta_e(first: str, second: str) -> float:
    """CIEDE2000: how different two colours look (about 2: just noticeable; 20: clearly
    another colour)."""
    l1, a1, b1 = lab(first)
    l2, a2, b2 = lab(second)
    c_mean = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_mean**7 / (c_mean**7 + 25**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = math.hypot(a1, b1), math.hypot(a2, b2)
    h1, h2 = math.degrees(math.atan2(b1, a1)) % 360, math.degrees(math.atan2(b2, a2)) % 360
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    d_hue = 2 * math.sqrt(c1 * c2) * math.sin(math.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1 + c2) / 2
    if c1 * c2 == 0:
        h_mean = h1 + h2
    elif abs(h1 - h2) <= 180:
        h_mean = (h1 + h2) / 2
    else:
        h_mean = (h1 + h2 + 360) / 2 if h1 + h2 < 360 else (h1 + h2 - 360) / 2
    t = (
        1
        - 0.17 * math.cos(math.radians(h_mean - 30))
        + 0.24 * math.cos(math.radians(2 * h_mean))
        + 0.32 * math.cos(math.radians(3 * h_mean + 6))
        - 0.20 * math.cos(math.radians(4 * h_mean - 63))
    )
    rotation = -math.sin(math.radians(60 * math.exp(-(((h_mean - 275) / 25) ** 2)))) * (
        2 * math.sqrt(c_mean**7 / (c_mean**7 + 25**7))
    )
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / math.sqrt(20 + (l_mean - 50) ** 2)
    s_c, s_h = 1 + 0.045 * c_mean, 1 + 0.015 * c_mean * t
    dl, dc, dhh = (l2 - l1) / s_l, (c2 - c1) / s_c, d_hue / s_h
    return math.sqrt(dl**2 + dc**2 + dhh**2 + rotation * dc * dhh)


def test_the_colour_arithmetic_is_right() -> None:
    # Sharma, Wu, Dalal (2005), the CIEDE2000 test data, pairs 1 and 17 (as sRGB: near)
    assert delta_e("#ff0000", "#ff0000") == 0
    assert delta_e("#000000", "#ffffff") == pytest.approx(100, abs=0.1)
    assert 50 < delta_e("#1f77b4", "#ff7f0e") < 90  # blue and orange: far apart
    assert delta_e("#1f77b4", "#3182bd") < 6  # two blues: the same to the eye


#: The colours the README promises mean one thing in every chart.
PROMISED = {
    "checkout": "blue",
    "connect": "green",
    "waiting": "purple",
    "overflow": "orange",
    "invalidate": "red",
    "fault": "magenta",
}


def far_apart(colour: str, semantic: str) -> bool:
    """Another colour to the eye: not a lighter or darker shade of the same hue."""
    chroma, hue = chroma_hue(colour)
    _, semantic_hue = chroma_hue(semantic)
    hue_apart = abs((hue - semantic_hue + 180) % 360 - 180)
    return delta_e(colour, semantic) >= 20 and (chroma < 15 or hue_apart >= 30)


@pytest.mark.parametrize("palette_of", ["client", "run"])
def test_no_client_or_run_colour_looks_like_a_semantic_one(palette_of: str) -> None:
    """Checkouts were coloured by client with tab20's orange, green, red and purple: a
    client's bar read as overflow, a connect, an invalidation, a wait."""
    assert set(PROMISED) <= set(palette.SEMANTIC)
    colours = palette.client_palette() if palette_of == "client" else palette.run_palette()
    assert len(set(colours)) == len(colours) >= 8
    for colour in colours:
        for kind, semantic in palette.SEMANTIC.items():
            assert colour.lower() != semantic.lower()
            assert far_apart(colour, semantic), f"{palette_of} colour {colour} looks like {kind}"
        # nor like what a chart draws behind the bars: the background, a connection open
        assert delta_e(colour, "#ffffff") >= 10 and delta_e(colour, palette.KIND["open"]) >= 10
    for first, second in itertools.combinations(colours, 2):
        assert delta_e(first, second) >= 8, f"{first} and {second} look alike"


def test_alerts_have_a_colour_of_their_own() -> None:
    alert = palette.KIND["alert"]
    for kind, colour in palette.SEMANTIC.items():
        if kind != "alert":
            assert far_apart(alert, colour), f"alert looks like {kind}"
    assert delta_e(alert, palette.KIND["leak"]) >= 15
    assert all(client_colour != alert for client_colour in palette.client_palette())


def test_every_client_of_a_run_gets_a_client_colour(recorded: RecordedLogs) -> None:
    (data,) = read_log(LogSource.of(recorded.exhaustion)).scenarios
    for client in range(data.start["workload"]["clients"]):
        assert palette.client_colour(client) in palette.client_palette()


# --------------------------------------------------------------------- overflow


def test_overflow_is_drawn_where_no_limit_line_hides_it(recorded: RecordedLogs) -> None:
    """exhaustion: the pool full, 5 overflow connections beyond pool_size 5. Drawn with the
    connections, overflow's line was the dashed pool_size line, unseen."""
    (data,) = read_log(LogSource.of(recorded.exhaustion)).scenarios
    chart = pool_chart(data, "").data
    times, overflow = chart["overflow"]
    assert max(overflow) == 5 == chart["pool_size"]  # the case that hid it
    (panel,) = [
        title
        for title, labels in chart["panels"].items()
        if any(label.startswith("overflow") for label in labels)
    ]
    assert not any(label.startswith(("pool_size", "max")) for label in chart["panels"][panel])
    # the overflow the chart drew is the connections open beyond pool_size
    events = events_of(recorded.exhaustion)["exhaustion"]
    for event in events:
        if event["event"] == "client.acquired":
            assert drawn_at((times, overflow), event["t"]) >= event["connections_total"] - 5


# ------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def runs(recorded: RecordedLogs) -> list[RunFigures]:
    """Five runs: saturation, exhaustion (2 s), the 10 s exhaustion, pooled, unpooled."""
    scenarios = [
        data
        for path in (recorded.saturation, recorded.exhaustion, recorded.pooled)
        for data in read_log(LogSource.of(path)).scenarios
    ]
    return figures(scenarios)


@pytest.fixture(scope="module")
def comparisons(runs: list[RunFigures]) -> dict[int, tuple[Chart, Chart]]:
    """The comparison charts of the first 2, 3 and 5 runs, drawn once for the module."""
    return {
        n: (comparison_chart(runs[:n]), comparison_over_time_chart(runs[:n])) for n in (2, 3, 5)
    }


@pytest.mark.parametrize("n", [2, 3, 5])
def test_comparison_panels_are_readable(
    runs: list[RunFigures], comparisons: dict[int, tuple[Chart, Chart]], n: int
) -> None:
    """Value labels collided ("494.4494.3"), legends sat on the bars, a y axis began at 7 ms,
    and panels with nothing in them were empty boxes. Measured on the laid-out figure."""
    chart = comparisons[n][0].data
    for title, panel in chart["panels"].items():
        assert panel["ylim"][0] == 0, title  # bars start at zero
        assert not overlaps(panel["value_labels"]), f"{title}: value labels overlap"
        assert not overlaps(panel["ticks"]), f"{title}: run names overlap"
        if panel["legend"] is not None:
            clash = overlaps([panel["legend"]], panel["bars"] + panel["value_labels"])
            assert not clash, f"{title}: the legend covers a bar or a label"
    for title in chart["omitted"]:  # left out only when there is nothing to show
        ((_, _, series, _),) = [panel for panel in PANELS if panel[0] == title]
        for run in runs[:n]:
            assert all(not run.values.get(key) or math.isnan(run.values[key]) for key, _ in series)
    assert set(chart["panels"]) | set(chart["omitted"]) == {panel[0] for panel in PANELS}


def test_a_comparison_of_runs_without_timeouts_leaves_the_panel_out(
    runs: list[RunFigures],
) -> None:
    pooled = [run for run in runs if run.label in ("pooled", "unpooled")]
    chart = comparison_chart(pooled).data
    assert "Pool timeouts" in chart["omitted"] and "Errors" in chart["omitted"]


# -------------------------------------------------------------- distributions


def test_a_narrow_distribution_is_drawn_on_a_scale_that_shows_it(
    recorded: RecordedLogs,
) -> None:
    """saturation's use times all lie within a few ms of 100 ms: on a log axis they were one
    solid block with a single tick."""
    data = read_log(LogSource.of(recorded.saturation)).scenarios[0]
    use = latency_chart(data, "").data["distributions"]["use_time_ms"]
    assert data.use_ms.max / data.use_ms.percentile(0) < LINEAR_SPREAD
    assert use["scale"] == "linear"
    # as fine as the log's histogram keeps them (buckets 2.3 % wide): no bucket merged
    assert use["bars"] == len(data.use_ms.nonzero()) >= 3
    assert len(use["ticks"]) >= 3
    wait = latency_chart(data, "").data["distributions"]["wait_time_ms"]
    assert wait["scale"] == "log" and wait["bars"] >= 10 and len(wait["ticks"]) >= 3


# ------------------------------------------------------- what a person can read


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height of a PNG, from its header."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


def assert_readable(chart: Chart) -> None:
    """Every text the chart drew lies inside the image, and none on another (extents from
    the Agg renderer, after layout)."""
    width, height = png_size(chart.png)
    texts = chart.data["texts"]
    assert texts, chart.name
    for text, (x0, y0, x1, y1) in texts:
        assert x0 >= -0.5 and x1 <= width + 0.5, f"{chart.name}: {text!r} leaves the figure"
        assert y0 >= -0.5 and y1 <= height + 0.5, f"{chart.name}: {text!r} leaves the figure"
    boxes = [box for _, box in texts]
    clashes = [(texts[i][0], texts[j][0]) for i, j in overlaps(boxes)]
    assert not clashes, f"{chart.name}: texts on each other: {clashes}"


@pytest.fixture(scope="module")
def every_scenario(recorded: RecordedLogs) -> list[ScenarioData]:
    return [
        data
        for path in (recorded.saturation, recorded.exhaustion, recorded.pooled, recorded.instances)
        for data in read_log(LogSource.of(path)).scenarios
    ]


DRAW: dict[str, Callable[[ScenarioData, str], Chart]] = {
    "timeline": timeline_chart,
    "pool": pool_chart,
    "distribution": distribution_chart,
    "latency": latency_chart,
}


@pytest.fixture(scope="module")
def every_chart(every_scenario: list[ScenarioData]) -> list[tuple[ScenarioData, dict[str, Chart]]]:
    """Each recorded scenario with its four charts, drawn once for the module."""
    return [
        (data, {kind: draw(data, "") for kind, draw in DRAW.items()}) for data in every_scenario
    ]


@pytest.mark.parametrize("kind", DRAW)
def test_no_label_lies_on_another_or_outside_the_figure(
    every_chart: list[tuple[ScenarioData, dict[str, Chart]]], kind: str
) -> None:
    """A percentile label beside a line at the axis' right end ran out of the figure
    ("p95 8.." cut off), and past its axes onto the next one's ticks; alerts' labels too."""
    for _, charts in every_chart:
        assert_readable(charts[kind])


def test_percentile_labels_near_the_right_edge_stay_in_their_axes(
    every_chart: list[tuple[ScenarioData, dict[str, Chart]]],
) -> None:
    """The labels of a distribution's percentiles stay within its own axes: a label that
    would pass the right edge is written on its line's left."""
    flipped = 0
    for data, charts in every_chart:
        chart = charts["latency"]
        for key, drawn in chart.data["distributions"].items():
            for label, (x0, _, x1, _), (ax0, ax1) in drawn.get("labels", []):
                assert ax0 - 0.5 <= x0 and x1 <= ax1 + 0.5, f"{data.scenario} {key}: {label}"
            flipped += drawn.get("labels_left", 0)
    assert flipped  # the logs hold a case that needed it


@pytest.mark.parametrize("n", [2, 3, 5])
def test_comparison_texts_are_readable(comparisons: dict[int, tuple[Chart, Chart]], n: int) -> None:
    for chart in comparisons[n]:
        assert_readable(chart)


def test_run_names_are_never_cut_inside_a_word(runs: list[RunFigures]) -> None:
    """ "long-transactions" under its bar was "long-trans" / "actions"."""
    named = [
        RunFigures(name, run.data, run.values, run.from_summary)
        for name, run in zip(
            ["long-transactions", "pre-ping-off", "recycle-off", "saturation", "unpooled"],
            runs,
            strict=True,
        )
    ]
    chart = comparison_chart(named).data
    for panel in chart["panels"].values():
        for tick, name in zip(panel["tick_texts"], [run.label for run in named], strict=True):
            lines = tick.split("\n")
            assert "".join(lines) == name
            for line in lines[:-1]:
                assert line.endswith("-"), f"{name!r} cut as {lines}"


# --------------------------------------------------------------- no empty panel


def test_the_pool_chart_draws_no_empty_panel(
    every_chart: list[tuple[ScenarioData, dict[str, Chart]]],
) -> None:
    """An overflow panel that said "no overflow" and a NullPool utilisation panel with an
    axis from -0.05 to 0.05 were empty boxes: what they would say is a note now."""
    seen = Counter[str]()
    for data, charts in every_chart:
        chart = charts["pool"].data
        panels = chart["panels"]
        for title, labels in panels.items():
            assert labels, f"{data.scenario}: the panel {title!r} is empty"
        has_overflow = any(title.startswith("Overflow") for title in panels)
        assert has_overflow == (chart["max_overflow"] > 0), data.scenario
        has_utilisation = any(title.startswith("Pool utilisation") for title in panels)
        queue_pool = data.pool_config.get("pool_class", "queue") != "null"
        assert has_utilisation == queue_pool, data.scenario
        if data.alerts:  # drawn wherever the utilisation is, or on the connections
            assert any("monitor alert" in labels for labels in panels.values()), data.scenario
        seen["overflow" if has_overflow else "no overflow"] += 1
        seen["utilisation" if has_utilisation else "no utilisation"] += 1
    assert len(seen) == 4  # the logs hold each case


def test_pool_size_is_one_line_when_it_is_the_limit(
    every_chart: list[tuple[ScenarioData, dict[str, Chart]]],
) -> None:
    """max_overflow = 0: pool_size and the limit are one value; drawn as two lines, one hid
    the other and the legend named both."""
    for data, charts in every_chart:
        chart = charts["pool"].data
        (top,) = [labels for title, labels in chart["panels"].items() if "open and in" in title]
        limits = [label for label in top if label.startswith(("pool_size", "max ="))]
        if chart["pool_size"] is None:
            assert not limits
        elif chart["limit"] == chart["pool_size"]:
            assert len(limits) == 1 and "max" in limits[0], data.scenario
        else:
            assert len(limits) == 2, data.scenario
    assert any(
        charts["pool"].data["limit"] == charts["pool"].data["pool_size"]
        for _, charts in every_chart
    )


def test_count_axes_have_whole_number_ticks(
    every_chart: list[tuple[ScenarioData, dict[str, Chart]]],
) -> None:
    """Clients waiting 0.2, 0.4, ...; checkouts per client 0.5, 1.5, 2.5."""
    for data, charts in every_chart:
        for chart in (charts["pool"], charts["distribution"]):
            for title, ticks in chart.data["count_ticks"].items():
                assert ticks and all(t == int(t) for t in ticks), f"{data.scenario} {title}"


# ----------------------------------------------------------------------- timeline


def test_every_checkout_is_wide_enough_to_be_seen(
    every_chart: list[tuple[ScenarioData, dict[str, Chart]]],
) -> None:
    """pre-ping-off's checkouts of about a millisecond on a 3 s axis were drawn as nothing
    but their white edges: each bar is at least MIN_BAR_PX wide, and the chart says so."""
    widened = 0
    for data, charts in every_chart:
        chart = charts["timeline"].data
        if chart["bars"]:
            assert chart["narrowest_bar_px"] >= MIN_BAR_PX * 0.9, data.scenario
        widened += chart["bars_widened"]
        if chart["bars_widened"]:
            assert any("drawn that wide" in text for text, _ in chart["texts"])
    assert widened  # the logs hold short checkouts


def test_no_two_clients_in_the_legend_share_a_colour(
    every_chart: list[tuple[ScenarioData, dict[str, Chart]]],
) -> None:
    """With 10 or 12 clients and 9 colours, the legend named client 0 and client 9 in the
    same teal: which bar was whose could not be read from it."""
    for data, charts in every_chart:
        legend = charts["timeline"].data["legend"]
        clients = [colour for label, colour in legend if label.startswith("client ")]
        assert len(clients) == len(set(clients)), data.scenario
        for label, colour in legend:
            if label.startswith("client "):
                assert colour in palette.client_palette()


def test_timeouts_at_one_instant_are_counted_where_they_coincide(
    recorded: RecordedLogs, every_chart: list[tuple[ScenarioData, dict[str, Chart]]]
) -> None:
    """exhaustion: five clients time out together each time; their five crosses were one,
    and 40 timeouts looked like 8. Each cross now says how many it stands for."""
    events = events_of(recorded.exhaustion)["exhaustion"]
    timed_out = sorted(e["t"] for e in events if e["event"] == "client.timeout")
    seen_coinciding, checked = False, 0
    for data, charts in every_chart:
        chart = charts["pool"].data
        marks = chart["timeout_marks"]
        assert sum(number for _, number in marks) == chart["timeouts"], data.scenario
        texts = [text for text, _ in chart["texts"]]
        for _, number in marks:
            if number > 1:
                seen_coinciding = True
                assert f"\u00d7{number}" in texts, data.scenario
        if data.source == str(recorded.exhaustion):
            checked += 1
            assert chart["timeouts"] == len(timed_out) == 40
            for t, _ in marks:  # each cross is drawn at a timeout's own time
                assert min(abs(t - other) for other in timed_out) < 1e-6
    assert seen_coinciding and checked == 1
