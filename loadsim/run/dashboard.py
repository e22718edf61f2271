"""The live view: the pool breathing, on stderr, only when stderr is a terminal.

`render` is a pure function of a `DashboardSnapshot`, so it can be drawn to a recording
console in tests; `Dashboard` refreshes it a few times a second with rich's Live display,
which redraws in place (no flicker) and leaves stdout alone: the event stream stays clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

REFRESH_PER_SECOND = 4


@dataclass(frozen=True)
class DashboardSnapshot:
    """What the dashboard shows at one moment."""

    scenario: str
    elapsed_s: float
    duration_s: float | None
    pool_size: int
    capacity: int | None  # pool_size + max_overflow; None when unlimited
    used: int
    idle: int
    overflow: int
    waiting: int
    oldest_wait_ms: float
    checkouts: int
    timeouts: int
    errors: int
    leaks: int
    #: Checkouts granted while an earlier waiter still waited (the pool is not FIFO).
    queue_jumps: int = 0
    #: The latest `monitor.stats` snapshot (rates, percentiles, the server's view); may be {}.
    stats: dict[str, Any] = field(default_factory=dict)


def render(snapshot: DashboardSnapshot) -> RenderableType:
    title = f"loadsim · {snapshot.scenario}"
    return Panel(
        Group(
            _progress(snapshot),
            _gauges(snapshot),
            _figures(snapshot),
        ),
        title=title,
        border_style="cyan",
    )


def _progress(snapshot: DashboardSnapshot) -> RenderableType:
    if snapshot.duration_s is None:
        return Text(f"elapsed {snapshot.elapsed_s:6.1f}s")
    done = min(snapshot.elapsed_s, snapshot.duration_s)
    table = Table.grid(padding=(0, 1))
    table.add_row(
        ProgressBar(total=snapshot.duration_s, completed=done, width=40),
        Text(f"{done:5.1f}s / {snapshot.duration_s:g}s"),
    )
    return table


def _gauges(snapshot: DashboardSnapshot) -> RenderableType:
    limit = snapshot.capacity or max(snapshot.used + snapshot.idle, 1)
    table = Table.grid(padding=(0, 1))
    table.add_column(justify="right", style="bold")
    table.add_column()
    table.add_column(justify="right")
    rows: list[tuple[str, int, int, str]] = [
        ("in use", snapshot.used, limit, "green"),
        ("idle", snapshot.idle, limit, "blue"),
        ("overflow", snapshot.overflow, max(limit - snapshot.pool_size, 1), "yellow"),
        ("waiting", snapshot.waiting, max(snapshot.waiting, limit), "red"),
    ]
    for label, value, total, colour in rows:
        table.add_row(
            label,
            ProgressBar(total=total, completed=min(value, total), width=30, complete_style=colour),
            f"{value} / {'∞' if snapshot.capacity is None and label != 'waiting' else total}",
        )
    if snapshot.waiting:
        table.add_row("oldest wait", "", f"{snapshot.oldest_wait_ms:,.0f} ms")
    if snapshot.queue_jumps and snapshot.checkouts:
        table.add_row(
            "queue jumps",
            ProgressBar(
                total=snapshot.checkouts,
                completed=min(snapshot.queue_jumps, snapshot.checkouts),
                width=30,
                complete_style="magenta",
            ),
            f"{snapshot.queue_jumps:,} of {snapshot.checkouts:,} checkouts "
            f"({snapshot.queue_jumps / snapshot.checkouts:.0%}): granted while an earlier "
            "waiter still waited",
        )
    return table


def _figures(snapshot: DashboardSnapshot) -> RenderableType:
    stats = snapshot.stats
    table = Table(box=None, padding=(0, 2), show_header=True, header_style="bold")
    table.add_column("")
    for heading in ("p50", "p95", "p99", "max"):
        table.add_column(heading, justify="right")
    for label, key in (
        ("wait ms", "wait_time_ms"),  # every wait, a timed-out one at its full length
        ("acquired wait ms", "acquired_wait_time_ms"),
        ("use ms", "use_time_ms"),
    ):
        figures = stats.get(key) or {}
        table.add_row(label, *(_ms(figures.get(name)) for name in ("p50", "p95", "p99", "max")))
    server = stats.get("server")
    server_text = (
        ", ".join(f"{state} {count}" for state, count in sorted(server.items())) or "none"
        if isinstance(server, dict)
        else "unknown"
    )
    totals = Text.assemble(
        ("checkouts/s ", "bold"),
        f"{stats.get('checkouts_per_s', 0):,.0f}   ",
        ("connects/s ", "bold"),
        f"{stats.get('connects_per_s', 0):,.1f}   ",
        ("checkouts ", "bold"),
        f"{snapshot.checkouts:,}   ",
        ("timeouts ", "bold"),
        (f"{snapshot.timeouts:,}", "red" if snapshot.timeouts else ""),
        "   ",
        ("errors ", "bold"),
        (f"{snapshot.errors:,}", "red" if snapshot.errors else ""),
        "   ",
        ("leaks ", "bold"),
        (f"{snapshot.leaks:,}", "yellow" if snapshot.leaks else ""),
        "\n",
        ("server sessions ", "bold"),
        server_text,
    )
    return Group(table, totals)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


class LiveView(Protocol):
    """What a run shows while it runs: the dashboard on a terminal, progress lines on a log."""

    def start(self) -> None: ...
    def update(self, snapshot: DashboardSnapshot) -> None: ...
    def stop(self) -> None: ...


class Dashboard:
    """Live display on a console (stderr by default). Call `update` as often as you like;
    it redraws at most REFRESH_PER_SECOND times a second."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._live: Live | None = None

    def start(self) -> None:
        self._live = Live(
            console=self.console,
            refresh_per_second=REFRESH_PER_SECOND,
            auto_refresh=False,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def update(self, snapshot: DashboardSnapshot) -> None:
        if self._live is not None:
            self._live.update(render(snapshot), refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
