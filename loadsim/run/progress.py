"""Progress for a log, not a person: when stderr is not a terminal (CI), a line every few
seconds with the figures the dashboard shows (`DashboardSnapshot`), so that a long run is
not silent until its summary. Lines only, no cursor moves: a log file keeps each one.
"""

from __future__ import annotations

from collections.abc import Callable

from loadsim.run.dashboard import DashboardSnapshot

#: Seconds of a run between two lines.
PROGRESS_INTERVAL_S = 5.0


def progress_line(snapshot: DashboardSnapshot) -> str:
    """`loadsim: normal 5.0/10 s · 1,234 checkouts (246/s) · in use 3/15 · waiting 0 · wait
    p95 2.1 ms · timeouts 0 · errors 0`: totals so far, and the latest snapshot's rate and
    wait (every wait, a timed-out one at its full length)."""
    stats = snapshot.stats
    of = f"/{snapshot.duration_s:g}" if snapshot.duration_s is not None else ""
    wait = (stats.get("wait_time_ms") or {}).get("p95")
    capacity = "∞" if snapshot.capacity is None else str(snapshot.capacity)
    parts = [
        f"{snapshot.elapsed_s:.1f}{of} s",
        f"{snapshot.checkouts:,} checkouts ({stats.get('checkouts_per_s', 0):,.0f}/s)",
        f"in use {snapshot.used}/{capacity}",
        f"waiting {snapshot.waiting}",
        f"wait p95 {'-' if wait is None else f'{wait:,.1f} ms'}",
        f"timeouts {snapshot.timeouts:,}",
        f"errors {snapshot.errors:,}",
    ]
    totals = stats.get("totals") or {}
    if totals.get("requests"):  # an open workload
        parts.insert(1, f"{totals['requests']:,} requests ({totals.get('dropped', 0):,} dropped)")
    return f"loadsim: {snapshot.scenario} " + " · ".join(parts)


class Progress:
    """A live view as `Dashboard` is (`start`, `update` as often as you like, `stop`), that
    writes a line each time a run passes another PROGRESS_INTERVAL_S."""

    def __init__(self, write: Callable[[str], None], interval: float = PROGRESS_INTERVAL_S):
        self._write = write
        self.interval = interval
        self._next = interval

    def start(self) -> None:
        self._next = self.interval  # each scenario counts from its own start

    def update(self, snapshot: DashboardSnapshot) -> None:
        if snapshot.elapsed_s < self._next:
            return
        self._write(progress_line(snapshot))
        while self._next <= snapshot.elapsed_s:  # one line, however late this update is
            self._next += self.interval

    def stop(self) -> None:
        pass
