"""Aggregation: latencies as HDR histograms, rates per window, utilisation, the run summary.

Latencies are recorded in microseconds into a histogram for the current window; each
`monitor.stats` snapshot folds the window into the run's histogram and starts a new one.
Names follow OpenTelemetry's database client metrics: wait_time (db.client.connection.
wait_time), use_time (.use_time), create_time (.create_time). `wait_time` is every wait, a
timed-out one at its full length; `acquired_wait_time` only the waits that got a connection.

The summary's rates are over the measured window: from the start to the moment the run was
due to stop (`stop_measuring`: its duration ended, or a signal came), with the counts as they
were then. The grace period after it, while clients holding a connection finish, is
`grace_s`, averaged into nothing.

Queue jumps (`queue_jumps`: checkouts granted while a client that asked earlier was still
waiting) are counted as the waits start and end, by the line of `loadsim.run.queue_jumps`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from loadsim.run.histogram import (
    count_into,
    cumulative_counts,
    encode,
    figures,
    new_histogram,
    reset,
    share_above,
    squared_variation,
)
from loadsim.run.queue_jumps import WaitLine
from loadsim.schema import LATENCY_NAMES


@dataclass(frozen=True)
class Buckets:
    """A latency's values so far against a histogram's bounds (microseconds)."""

    cumulative: tuple[int, ...]  # values at or below each bound
    count: int
    sum_us: int
    min_us: int
    max_us: int


class Latency:
    """A latency in milliseconds, kept as HDR histograms for the run and for the window.

    `add` is on every checkout's path, so it only appends to a list; the values are counted
    into the window's histogram in one tight loop when figures are wanted (each
    `monitor.stats`), or every `_BATCH` values. hdrhistogram's own `record_value` costs
    about 1.5 µs a value in Python, five function calls deep; `histogram.count_into` does the same
    arithmetic inline (a test checks that the counts agree).
    """

    _BATCH = 4096

    def __init__(self) -> None:
        self._window = new_histogram()
        self._run = new_histogram()
        self._pending: list[int] = []  # microseconds not yet counted into the window
        self._window_sum_us = 0
        self._run_sum_us = 0

    def add(self, milliseconds: float) -> None:
        pending = self._pending
        pending.append(int(milliseconds * 1000))
        if len(pending) >= self._BATCH:
            self._count_pending()

    def close_window(self) -> dict[str, float]:
        """The window's figures; the window is then folded into the run and emptied."""
        self._count_pending()
        window = figures(self._window, self._window_sum_us)
        self._fold()
        return window

    def run_figures(self) -> dict[str, float]:
        self._fold()
        return figures(self._run, self._run_sum_us)

    def clear(self) -> None:
        """Forget every value (in place: the loop-lag probe holds on to its latency)."""
        self._window, self._run = new_histogram(), new_histogram()
        self._pending = []
        self._window_sum_us = self._run_sum_us = 0

    def share_above(self, milliseconds: float) -> float:
        """The share of the run's values above `milliseconds` (`loadsim size`: P(wait))."""
        self._fold()
        return share_above(self._run, int(milliseconds * 1000))

    def squared_variation(self) -> float | None:
        """The run's variance over its mean squared (1 for exponential times)."""
        self._fold()
        return squared_variation(self._run)

    def encoded(self) -> str:
        """The run's histogram, compressed and base64-encoded, for merging elsewhere."""
        self._fold()
        return encode(self._run)

    def buckets(self, bounds_us: list[int]) -> Buckets:
        """Every value so far (the run's and the open window's), counted at or below each
        bound: a live histogram's buckets. Changes no figure of the window."""
        self._count_pending()
        histograms = (self._run, self._window)
        count = sum(int(histogram.get_total_count()) for histogram in histograms)
        recorded = [histogram for histogram in histograms if histogram.get_total_count()]
        return Buckets(
            cumulative=tuple(cumulative_counts(histograms, bounds_us)),
            count=count,
            sum_us=self._run_sum_us + self._window_sum_us,
            min_us=min((int(h.get_min_value()) for h in recorded), default=0),
            max_us=max((int(h.get_max_value()) for h in recorded), default=0),
        )

    def _count_pending(self) -> None:
        if self._pending:
            self._window_sum_us += count_into(self._window, self._pending)
            self._pending = []

    def _fold(self) -> None:
        self._count_pending()
        window = self._window
        if window.get_total_count():
            self._run.add(window)
            reset(window)
            self._run_sum_us += self._window_sum_us
            self._window_sum_us = 0


@dataclass
class Utilisation:
    """Time-weighted connections in use, against the most the pool may open."""

    capacity: int | None
    started: float
    _in_use: int = 0
    _changed: float = 0.0
    _area: float = 0.0  # connection-seconds in use since the window began
    _window_started: float = 0.0
    _run_area: float = 0.0
    peak: float = 0.0

    def __post_init__(self) -> None:
        self._changed = self._window_started = self.started

    def change(self, delta: int, now: float) -> None:
        self._area += self._in_use * (now - self._changed)
        self._in_use += delta
        self._changed = now

    def close_window(self, now: float) -> float | None:
        """Mean utilisation over the window just ended (None: the pool has no limit)."""
        self.change(0, now)
        seconds = now - self._window_started
        area, self._area, self._window_started = self._area, 0.0, now
        self._run_area += area
        if self.capacity is None or seconds <= 0:
            return None
        value = area / (self.capacity * seconds)
        self.peak = max(self.peak, value)
        return round(value, 4)

    def run_mean(self, now: float) -> float | None:
        self.close_window(now)
        seconds = now - self.started
        if self.capacity is None or seconds <= 0:
            return None
        return round(self._run_area / (self.capacity * seconds), 4)

    def mean_until(self, now: float) -> float | None:
        """The mean from the start to `now` (not before the last change), closing no window."""
        seconds = now - self.started
        if self.capacity is None or seconds <= 0:
            return None
        area = self._run_area + self._area + self._in_use * max(now - self._changed, 0.0)
        return round(area / (self.capacity * seconds), 4)


@dataclass
class Window:
    """Counts and rates over the interval since the previous `monitor.stats` snapshot."""

    started: float
    _last: dict[str, int] = field(default_factory=dict)

    def close(self, totals: dict[str, int], now: float) -> dict[str, Any]:
        seconds = max(now - self.started, 1e-9)
        window = {
            key: value - self._last.get(key, 0)
            for key, value in totals.items()
            if not key.startswith("max_")  # high-water marks are not counts
        }
        self._last, self.started = dict(totals), now
        return {
            "interval_s": round(seconds, 3),
            "window": window,
            "checkouts_per_s": round(window.get("checkouts", 0) / seconds, 2),
            "connects_per_s": round(window.get("connects", 0) / seconds, 2),
        }


@dataclass
class RunMetrics:
    """Every figure of one scenario's run. Clients record waits, uses, queries, timeouts and
    errors; the pool monitor records connection create times and changes in use."""

    clients: int
    capacity: int | None
    started: float
    #: Every wait for a connection: those that got one, and those that timed out.
    wait_time: Latency = field(default_factory=Latency)
    #: Only the waits that got a connection.
    acquired_wait_time: Latency = field(default_factory=Latency)
    use_time: Latency = field(default_factory=Latency)
    query_time: Latency = field(default_factory=Latency)
    create_time: Latency = field(default_factory=Latency)
    #: Open workloads: from a request's intended start to its end.
    response_time: Latency = field(default_factory=Latency)
    #: How late the event loop wakes a 10 ms sleep: is loadsim itself keeping up?
    loop_lag: Latency = field(default_factory=Latency)
    #: Seconds from the start until every client had asked for its first connection.
    clients_started_s: float | None = None
    requests: int = 0  # open workloads: requests due to start
    dropped: int = 0  # ... of which not started: max_in_flight was reached
    checkouts: int = 0
    timeouts: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    checkouts_per_client: list[int] = field(default_factory=list)
    #: Checkouts granted while a client that asked earlier was still waiting (see
    #: `loadsim.run.queue_jumps`), and the line of waiters that tells.
    queue_jumps: int = 0
    wait_line: WaitLine = field(default_factory=WaitLine)
    utilisation: Utilisation = field(init=False)
    window: Window = field(init=False)
    #: The end of the measured window (None: not yet, or the run ended by itself), and the
    #: counts and utilisation as they were then.
    stopped: float | None = None
    _at_stop: dict[str, int] = field(default_factory=dict)
    _utilisation_at_stop: float | None = None

    def __post_init__(self) -> None:
        self.checkouts_per_client = [0] * self.clients
        self.utilisation = Utilisation(self.capacity, self.started)
        self.window = Window(self.started)

    def acquired(self, wait_ms: float) -> None:
        """A wait that got a connection."""
        self.wait_time.add(wait_ms)
        self.acquired_wait_time.add(wait_ms)
        self.checkouts += 1

    def wait_started(self, client: int) -> None:
        """`client` asked the pool for a connection: it joins the line of waiters."""
        self.wait_line.join(client)

    def wait_ended(self, client: int, *, granted: bool = False) -> None:
        """`client` stopped waiting: `granted` a connection, or timed out, failed or was
        cancelled. A granted one jumped the queue if someone who asked earlier still waits."""
        if self.wait_line.leave(client) and granted:
            self.queue_jumps += 1

    def connecting(self, client: int) -> None:
        """The pool is opening a new connection for `client`: it leaves the line, waiting
        for no connection handed back, and its checkout jumps no one."""
        self.wait_line.leave(client)

    def timed_out(self, wait_ms: float) -> None:
        """A wait that ended in the pool's TimeoutError: a wait of its full length."""
        self.wait_time.add(wait_ms)
        self.timeouts += 1

    def stop_measuring(self, now: float, connects: int) -> None:
        """The run is due to stop: the measured window ends here (once). What follows, the
        holders finishing, is the grace period."""
        if self.stopped is not None:
            return
        self.stopped = now
        self._at_stop = {
            "checkouts": self.checkouts,
            "requests": self.requests,
            "connects": connects,
        }
        self._utilisation_at_stop = self.utilisation.mean_until(now)

    def discard_warmup(self, now: float) -> None:
        """Forget what was measured so far: the measured window starts `now` (a warm-up
        `loadsim size` leaves out). The pool's own counters (connects, ...) go on."""
        for name in LATENCY_NAMES:
            getattr(self, name).clear()
        self.checkouts = self.timeouts = self.errors = self.requests = self.dropped = 0
        self.queue_jumps = 0  # (the line itself goes on: those waiting still wait)
        self.errors_by_kind = {}
        self.checkouts_per_client = [0] * self.clients
        in_use = self.utilisation._in_use
        self.utilisation = Utilisation(self.capacity, now)
        self.utilisation._in_use = in_use
        self.window.started = now
        self.window._last = {
            key: 0
            if key in ("checkouts", "requests", "dropped", "timeouts", "errors", "queue_jumps")
            else value
            for key, value in self.window._last.items()
        }
        self.started = now

    def error(self, kind: str) -> None:
        self.errors += 1
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def totals(self, pool_counters: dict[str, int]) -> dict[str, int]:
        """The running totals, as `monitor.stats` has them."""
        return {
            "checkouts": self.checkouts,
            "requests": self.requests,
            "dropped": self.dropped,
            "timeouts": self.timeouts,
            "errors": self.errors,
            **pool_counters,
            "queue_jumps": self.queue_jumps,
        }

    def snapshot(self, now: float, pool_counters: dict[str, int]) -> dict[str, Any]:
        """`monitor.stats`: the window's rates and latencies, and the running totals."""
        totals = self.totals(pool_counters)
        window = self.window.close(totals, now)
        counts = window["window"]
        return {
            **window,
            "queue_jump_share": share(counts["queue_jumps"], counts["checkouts"]),
            "utilisation": self.utilisation.close_window(now),
            "wait_time_ms": self.wait_time.close_window(),
            "acquired_wait_time_ms": self.acquired_wait_time.close_window(),
            "use_time_ms": self.use_time.close_window(),
            "query_time_ms": self.query_time.close_window(),
            "create_time_ms": self.create_time.close_window(),
            "response_time_ms": self.response_time.close_window(),
            "loop_lag_ms": self.loop_lag.close_window(),
            "totals": totals,
        }

    def histograms(self) -> dict[str, str]:
        """Every latency's encoded histogram: how a fleet merges its instances' percentiles."""
        return {name: getattr(self, name).encoded() for name in LATENCY_NAMES}

    def summary(self, now: float, pool_counters: dict[str, int], **extra: Any) -> dict[str, Any]:
        """`run.end`: the whole run; rates over the measured window (`elapsed_s`)."""
        connects = pool_counters.get("connects", 0)
        if self.stopped is None:  # it ended by itself: the window is the whole run
            self.stop_measuring(now, connects)
        assert self.stopped is not None
        measured_end = min(self.stopped, now)
        elapsed = measured_end - self.started
        at_stop = self._at_stop
        utilisation_mean = self._utilisation_at_stop
        self.utilisation.run_mean(now)  # closes the last window: the peak counts it
        return {
            "elapsed_s": round(elapsed, 3),
            "grace_s": round(max(now - measured_end, 0.0), 3),
            "clients": self.clients,
            "checkouts": self.checkouts,
            "checkouts_per_s": rate(at_stop["checkouts"], elapsed),
            "requests": self.requests,
            "requests_per_s": rate(at_stop["requests"], elapsed),
            "dropped": self.dropped,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "errors_by_kind": dict(self.errors_by_kind),
            **pool_counters,
            "queue_jumps": self.queue_jumps,
            "queue_jump_share": share(self.queue_jumps, self.checkouts),
            "connects_per_s": rate(at_stop["connects"], elapsed),
            "reuse_ratio": (
                round(self.checkouts / pool_counters["connects"], 2)
                if pool_counters.get("connects")
                else None
            ),
            "wait_time_ms": self.wait_time.run_figures(),
            "acquired_wait_time_ms": self.acquired_wait_time.run_figures(),
            "use_time_ms": self.use_time.run_figures(),
            "query_time_ms": self.query_time.run_figures(),
            "create_time_ms": self.create_time.run_figures(),
            "response_time_ms": self.response_time.run_figures(),
            "loop_lag_ms": self.loop_lag.run_figures(),
            "clients_started_s": self.clients_started_s,
            "utilisation_mean": utilisation_mean,
            "utilisation_max": (
                round(self.utilisation.peak, 4) if self.capacity is not None else None
            ),
            "checkouts_per_client": fairness(self.checkouts_per_client),
            **extra,
        }


def fairness(checkouts_per_client: list[int]) -> dict[str, Any]:
    """How evenly the pool served the clients: min, median, max checkouts per client, the
    share that got none, and Jain's fairness index (1 = perfectly even)."""
    counts = sorted(checkouts_per_client)
    if not counts:
        return {"min": 0, "median": 0, "max": 0, "starved_share": 0.0, "jain_index": None}
    total = sum(counts)
    squares = sum(count * count for count in counts)
    return {
        "min": counts[0],
        "median": counts[len(counts) // 2],
        "max": counts[-1],
        "starved_share": round(sum(1 for count in counts if count == 0) / len(counts), 4),
        "jain_index": round(total * total / (len(counts) * squares), 4) if squares else None,
    }


def share(part: int, whole: int) -> float | None:
    """`part` of `whole` as a ratio (4 decimals); None when `whole` is 0."""
    return round(part / whole, 4) if whole else None


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 and math.isfinite(seconds) else 0.0
