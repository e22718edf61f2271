"""One streaming pass over a run log, folding its events into what the charts need.

Nothing here keeps events. Each scenario of a log (one `run.start` … `run.end` section) becomes
a `ScenarioData`: the configuration and summary, one lane per connection (when it opened and
closed, why, how many checkouts it served), the checkouts as bars (start, end, lane, client)
in compact arrays, marks on the lanes, the pool's counts over time as peaks per window, the
monitor's one-second snapshots, per-client counts, and histograms of wait, use and connect
times. Everything that could grow with the log is capped, merged or thinned (see `series`);
`ScenarioData` says when it was, and the charts say so too. The one thing kept per connection
is its lane (about 50 bytes): a NullPool run opens one connection per checkout.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from loadsim.errors import EventLogError
from loadsim.report.reader import Event, LogSource, Note, read_events
from loadsim.report.series import Bars, LogHistogram, PeakSeries, Sampled
from loadsim.schema import ENVELOPE, STAT_COUNT, STAT_MAX, percentile_key, summary_figure

#: Caps on what is kept per scenario (rows past a cap are thinned evenly, and said).
MAX_BARS = 200_000
MAX_MARKS = 50_000
MAX_MONITOR_ROWS = 20_000
MAX_INSTANTS = 20_000  # timeouts, errors
MAX_LISTED = 1_000  # faults, alerts
MAX_MESSAGES = 50  # run.warning messages kept for the page

#: Marks on the timeline's lanes, by kind (an index into this tuple is stored per mark).
MARK_KINDS: tuple[str, ...] = (
    "connect",
    "invalidate",
    "soft_invalidate",
    "detach",
    "leak",
    "cancelled",
    "close",  # close marks are "close" + cause; the cause is looked up in Lanes.causes
)
_MARK = {kind: index for index, kind in enumerate(MARK_KINDS)}

#: Columns of monitor rows.
MONITOR_COLUMNS: tuple[str, ...] = (
    "t",
    "utilisation",
    "checkouts_per_s",
    "wait_p50",
    "wait_p95",
    "wait_p99",
    "wait_max",
    "use_p50",
    "use_p95",
    "use_p99",
    "use_max",
    "server_sessions",
    "connections_total",
    "pending_requests",
    "instance",
)
#: Columns of memory rows: the snapshots that measured memory (MiB; NaN: not measured).
MEMORY_COLUMNS: tuple[str, ...] = (
    "t",
    "server_memory_mb",
    "server_memory_per_connection_mb",
    "client_memory_mb",
    "instance",
)
#: The latency figures in monitor rows (the wait_* and use_* columns), as the schema names them.
_PERCENTILE_KEYS = (*(percentile_key(p) for p in (50, 95, 99)), STAT_MAX)


@dataclass
class ClientStats:
    checkouts: int = 0
    waits: int = 0
    wait_sum_ms: float = 0.0
    wait_max_ms: float = 0.0
    timeouts: int = 0
    errors: int = 0

    @property
    def wait_mean_ms(self) -> float:
        return self.wait_sum_ms / self.waits if self.waits else math.nan


class Lanes:
    """One lane per connection, in the order they opened: compact arrays indexed by lane."""

    def __init__(self) -> None:
        self.conn = array("q")
        self.instance = array("q")
        self.opened = array("d")
        self.closed = array("d")  # NaN while open
        self.cause = array("h")  # index into `causes`; -1 while open
        self.checkouts = array("q")
        self.causes: list[str] = []
        self._cause_index: dict[str, int] = {}
        self.open: dict[tuple[int, int], int] = {}  # (instance, conn) → lane, while open

    def __len__(self) -> int:
        return len(self.conn)

    def add(self, instance: int, conn: int, t: float) -> int:
        lane = len(self.conn)
        self.conn.append(conn)
        self.instance.append(instance)
        self.opened.append(t)
        self.closed.append(math.nan)
        self.cause.append(-1)
        self.checkouts.append(0)
        self.open[(instance, conn)] = lane
        return lane

    def close(self, lane: int, t: float, cause: str) -> None:
        index = self._cause_index.get(cause)
        if index is None:
            index = self._cause_index[cause] = len(self.causes)
            self.causes.append(cause)
        self.closed[lane] = t
        self.cause[lane] = index
        self.open.pop((self.instance[lane], self.conn[lane]), None)

    def cause_of(self, lane: int) -> str | None:
        index = self.cause[lane]
        return None if index < 0 else self.causes[index]


@dataclass
class Fault:
    t: float
    end_t: float
    kind: str  # "restart", "terminate"
    label: str


@dataclass
class ScenarioData:
    """What the charts and the page need to know about one scenario of one log."""

    source: str
    scenario: str
    run_id: str
    start: Event  # run.start, as written
    #: run.end's summary (with several instances, run.summary's: the fleet's); None if the
    #: run did not end
    summary: dict[str, Any] | None = None
    first_line: int = 0
    last_t: float = 0.0
    events: Counter[str] = field(default_factory=Counter)
    lanes: Lanes = field(default_factory=Lanes)
    #: checkouts: start, end (s), lane, client (-1: none; -2: several, when merged), count
    bars: Bars = field(default_factory=lambda: Bars(MAX_BARS))
    #: marks on lanes: t, lane, kind (index into MARK_KINDS), cause (for closes; -1)
    marks: Sampled = field(default_factory=lambda: Sampled("dqhh", MAX_MARKS))
    pool: PeakSeries = field(default_factory=PeakSeries)
    monitor: Sampled = field(
        default_factory=lambda: Sampled("d" * len(MONITOR_COLUMNS), MAX_MONITOR_ROWS)
    )
    #: memory at each snapshot that measured it (MEMORY_COLUMNS)
    memory: Sampled = field(
        default_factory=lambda: Sampled("d" * len(MEMORY_COLUMNS), MAX_MONITOR_ROWS)
    )
    timeouts: Sampled = field(default_factory=lambda: Sampled("d", MAX_INSTANTS))
    errors: Sampled = field(default_factory=lambda: Sampled("d", MAX_INSTANTS))
    faults: list[Fault] = field(default_factory=list)
    alerts: list[tuple[float, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    thresholds: list[dict[str, Any]] = field(default_factory=list)
    #: (instance, client) → what the client did
    clients: dict[tuple[int, int], ClientStats] = field(default_factory=dict)
    instances: list[int] = field(default_factory=list)  # those with a run.start, sorted
    instance_summaries: dict[int, dict[str, Any]] = field(default_factory=dict)  # run.end's
    fleet_summary: dict[str, Any] | None = None  # run.summary's, with several instances
    wait_ms: LogHistogram = field(default_factory=LogHistogram)
    use_ms: LogHistogram = field(default_factory=LogHistogram)
    connect_ms: LogHistogram = field(default_factory=LogHistogram)
    checkouts: int = 0
    still_held: int = 0  # checkouts not returned when the log ends
    _open_bars: dict[int, tuple[float, int]] = field(default_factory=dict)  # lane → start
    _open_per_instance: Counter[int] = field(default_factory=Counter)  # connections open
    #: instance → clients waiting, as the last pool event or snapshot said (used for an
    #: instance whose log has no client.waiting events)
    _pending: dict[int, int] = field(default_factory=dict)
    #: instance → client → when it began waiting: the waits under way (instances whose log
    #: has client.waiting events)
    _waits: dict[int, dict[int, float]] = field(default_factory=dict)

    #: the name shown in charts and on the page, unique among the runs of a report
    display: str = ""

    @property
    def label(self) -> str:
        return self.display or self.scenario

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def several_instances(self) -> bool:
        return len(self.instances) > 1

    def client_label(self, key: tuple[int, int]) -> int | str:
        """A client's name in charts: its id, or instance/id with several instances."""
        return f"{key[0]}/{key[1]}" if self.several_instances else key[1]

    @property
    def config(self) -> dict[str, Any]:
        return {key: value for key, value in self.start.items() if key not in ENVELOPE}

    @property
    def pool_config(self) -> dict[str, Any]:
        pool = self.start.get("pool")
        return pool if isinstance(pool, dict) else {}

    @property
    def duration_s(self) -> float:
        """How long the scenario ran: run.end's elapsed time, else the last event's time."""
        elapsed = summary_figure(self.summary or {}, "elapsed_s")
        if elapsed is not None and elapsed > 0:
            return max(elapsed, self.last_t)
        return self.last_t


@dataclass
class LogData:
    """Every scenario of one log, in order, and what was noted while reading it."""

    source: LogSource
    scenarios: list[ScenarioData]
    notes: list[str]
    lines: int


def read_log(source: LogSource, note: Note | None = None) -> LogData:
    """Reads and folds one log in a single streaming pass."""
    notes: list[str] = []

    def noted(message: str) -> None:
        notes.append(message)
        if note is not None:
            note(message)

    folder = Folder(source.label)
    lines = 0
    for number, event in read_events(source, noted):
        folder.feed(number, event)
        lines = number
    scenarios = folder.finish()
    for data in scenarios:
        if not data.complete:
            missing = (
                "no run.summary (the fleet's figures)"
                if data.several_instances and len(data.instance_summaries) == len(data.instances)
                else "no run.end"
            )
            noted(
                f"{source.label}: scenario {data.scenario!r} has {missing} (the run was "
                "interrupted?): its figures are computed from the events that are there"
            )
        if data.still_held:
            noted(
                f"{source.label}: scenario {data.scenario!r}: {data.still_held} checkout(s) "
                "were never returned before the log ends; drawn up to its last event"
            )
    return LogData(source, scenarios, notes, lines)


Handler = Callable[["ScenarioData", Event, float], None]


class Folder:
    """Folds events, one at a time, into a ScenarioData per scenario."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._scenarios: dict[tuple[Any, str], ScenarioData] = {}
        self._order: list[ScenarioData] = []
        self._last_key: tuple[Any, str] | None = None
        self._last: ScenarioData | None = None
        self._handlers: dict[str, Handler] = {
            "pool.connect": self._connect,
            "pool.first_connect": self._first_connect,
            "pool.checkout": self._checkout,
            "pool.checkin": self._checkin,
            "pool.close": self._close,
            "pool.close_detached": self._close_detached,
            "pool.detach": self._detach,
            "pool.invalidate": self._invalidate,
            "pool.soft_invalidate": self._soft_invalidate,
            "client.waiting": self._waiting,
            "client.acquired": self._acquired,
            "client.released": self._released,
            "client.timeout": self._timeout,
            "client.error": self._error,
            "client.cancelled": self._cancelled,
            "monitor.stats": self._stats,
            "monitor.leak_suspected": self._leak,
            "monitor.alert": self._alert,
            "fault.restart": self._fault,
            "fault.terminate": self._fault,
            "fault.restarted": self._fault_over,
            "run.end": self._end,
            "run.summary": self._fleet,
            "run.warning": self._warning,
            "run.threshold": self._threshold,
        }

    def feed(self, number: int, event: Event) -> None:
        name: str = event["event"]
        key = (event.get("run_id"), event["scenario"])
        if name == "run.start":
            instance = event.get("instance") or 0
            existing = self._scenarios.get(key)
            if existing is None:
                data = ScenarioData(
                    source=self.label,
                    scenario=event["scenario"],
                    run_id=str(event.get("run_id")),
                    start=event,
                    first_line=number,
                )
                self._scenarios[key] = data
                self._order.append(data)
            elif instance in existing.instances:
                raise EventLogError(
                    f"{self.label}: line {number}: a second run.start for scenario "
                    f"{event['scenario']!r} of run {event.get('run_id')}"
                    + (f", instance {instance}" if existing.several_instances else "")
                )
            else:
                data = existing
            data.instances = sorted([*data.instances, instance])
        elif key == self._last_key and self._last is not None:
            data = self._last
        else:
            found = self._scenarios.get(key)
            if found is None:
                raise EventLogError(
                    f"{self.label}: line {number}: {name} for scenario {event['scenario']!r} "
                    f"of run {event.get('run_id')}, which has no run.start before it"
                )
            data = found
        self._last_key, self._last = key, data
        t: float = event["t"]
        if t > data.last_t and name != "run.summary":  # run.summary: the parent's clock
            data.last_t = t
        data.events[name] += 1
        try:
            handler = self._handlers.get(name)
            if handler is not None:
                handler(data, event, t)
            if name.startswith("pool."):
                self._pool_counts(data, event, t)
        except (TypeError, ValueError, KeyError) as error:
            raise EventLogError(
                f"{self.label}: line {number}: {name}: a field is missing or of the "
                f"wrong type ({type(error).__name__}: {error})"
            ) from None

    def finish(self) -> list[ScenarioData]:
        for data in self._order:
            if data.fleet_summary is not None:
                data.summary = data.fleet_summary
            elif len(data.instance_summaries) == 1 and not data.several_instances:
                data.summary = next(iter(data.instance_summaries.values()))
            for lane, (start, client) in data._open_bars.items():
                data.bars.append(start, data.last_t, lane, client)
                data.still_held += 1
            data._open_bars.clear()
        return self._order

    # ------------------------------------------------------------------- helpers

    @staticmethod
    def _pool_counts(data: ScenarioData, event: Event, t: float) -> None:
        """The pool's counts after a pool event, from the events themselves: connections open
        are the lanes open, in use the checkouts not yet returned. The counts the events
        carry are SQLAlchemy's, taken inside its listeners, and some are taken before the
        pool accounts for the event (a checkin still counts its connection in use, an
        overflow close its connection open, a dispose drains the queue while "in use"
        rises). Clients waiting are the waits under way (see `_waiting`); only where the log
        has no client.waiting events is the `pending_requests` a pool event carries used.
        With several instances, these are the fleet's sums."""
        instance = event.get("instance") or 0
        pending = event.get("pending_requests")
        if isinstance(pending, int) and instance not in data._waits:
            data._pending[instance] = pending
        Folder._add_counts(data, t)

    @staticmethod
    def _add_counts(data: ScenarioData, t: float) -> None:
        """A point of the pool's counts over time, as they are now."""
        pool_size = data.pool_config.get("pool_size")
        overflow = 0
        if data.pool_config.get("pool_class", "queue") != "null" and isinstance(pool_size, int):
            for opened in data._open_per_instance.values():
                if opened > pool_size:
                    overflow += opened - pool_size
        waiting = sum(data._pending.values())
        for waits in data._waits.values():
            waiting += len(waits)
        data.pool.add(t, len(data._open_bars), len(data.lanes.open), overflow, waiting)

    @staticmethod
    def _wait_ended(data: ScenarioData, event: Event, t: float) -> None:
        """A client stopped waiting (it got a connection, timed out, or failed to connect)."""
        instance = event.get("instance") or 0
        waits = data._waits.get(instance)
        client = event.get("client")
        if waits is not None and client is not None and waits.pop(int(client), None) is not None:
            Folder._add_counts(data, t)

    @staticmethod
    def _lane(data: ScenarioData, event: Event, t: float, create: bool) -> int | None:
        conn = event.get("conn")
        if conn is None:
            return None
        key = (event.get("instance") or 0, conn)
        lane = data.lanes.open.get(key)
        if lane is None and create:
            lane = data.lanes.add(key[0], conn, t)
            data._open_per_instance[key[0]] += 1
            data.marks.append(t, lane, _MARK["connect"], -1)
        return lane

    @staticmethod
    def _end_bar(data: ScenarioData, lane: int, t: float) -> None:
        opened = data._open_bars.pop(lane, None)
        if opened is not None:
            data.bars.append(opened[0], t, lane, opened[1])

    @staticmethod
    def _client(data: ScenarioData, event: Event) -> ClientStats | None:
        client = event.get("client")
        if client is None:
            return None
        key = (int(event.get("instance") or 0), int(client))
        stats = data.clients.get(key)
        if stats is None:
            stats = data.clients[key] = ClientStats()
        return stats

    def _mark(self, data: ScenarioData, event: Event, t: float, kind: str) -> None:
        lane = self._lane(data, event, t, create=False)
        if lane is not None:
            data.marks.append(t, lane, _MARK[kind], -1)

    # ------------------------------------------------------------------ handlers

    def _connect(self, data: ScenarioData, event: Event, t: float) -> None:
        self._lane(data, event, t, create=True)
        connect_ms = event.get("connect_ms")
        if connect_ms is not None:
            data.connect_ms.add(connect_ms)

    def _first_connect(self, data: ScenarioData, event: Event, t: float) -> None:
        self._lane(data, event, t, create=True)

    def _checkout(self, data: ScenarioData, event: Event, t: float) -> None:
        data.checkouts += 1
        client = event.get("client")
        stats = self._client(data, event)
        if stats is not None:
            stats.checkouts += 1
        lane = self._lane(data, event, t, create=True)
        if lane is None:
            return
        data.lanes.checkouts[lane] += 1
        if lane in data._open_bars:  # a checkout never seen returned: end it here
            self._end_bar(data, lane, t)
        data._open_bars[lane] = (t, -1 if client is None else int(client))

    def _checkin(self, data: ScenarioData, event: Event, t: float) -> None:
        lane = self._lane(data, event, t, create=False)
        if lane is not None:
            self._end_bar(data, lane, t)

    def _returned(self, data: ScenarioData, event: Event, t: float) -> None:
        """A client.released standing for its checkin. The pool may have handed the
        connection on (a waiter's client.acquired) before the client that returned it wrote
        this: that checkout already ended its bar, and the bar open now is not this
        client's."""
        lane = self._lane(data, event, t, create=False)
        if lane is None:
            return
        opened = data._open_bars.get(lane)
        if opened is not None and opened[1] == int(event["client"]):
            self._end_bar(data, lane, t)
            self._add_counts(data, t)

    def _close(self, data: ScenarioData, event: Event, t: float) -> None:
        self._closed(data, event, t, str(event.get("cause") or "closed"))

    def _close_detached(self, data: ScenarioData, event: Event, t: float) -> None:
        self._closed(data, event, t, "detached")

    def _closed(self, data: ScenarioData, event: Event, t: float, cause: str) -> None:
        lane = self._lane(data, event, t, create=False)
        if lane is None:
            return
        self._end_bar(data, lane, t)
        data.lanes.close(lane, t, cause)
        data._open_per_instance[int(data.lanes.instance[lane])] -= 1
        data.marks.append(t, lane, _MARK["close"], data.lanes.cause[lane])

    def _detach(self, data: ScenarioData, event: Event, t: float) -> None:
        lane = self._lane(data, event, t, create=False)
        if lane is not None:
            self._end_bar(data, lane, t)
            data.marks.append(t, lane, _MARK["detach"], -1)

    def _invalidate(self, data: ScenarioData, event: Event, t: float) -> None:
        self._mark(data, event, t, "invalidate")

    def _soft_invalidate(self, data: ScenarioData, event: Event, t: float) -> None:
        self._mark(data, event, t, "soft_invalidate")

    def _leak(self, data: ScenarioData, event: Event, t: float) -> None:
        self._mark(data, event, t, "leak")

    def _cancelled(self, data: ScenarioData, event: Event, t: float) -> None:
        self._mark(data, event, t, "cancelled")

    def _waiting(self, data: ScenarioData, event: Event, t: float) -> None:
        """A client asked the pool for a connection: it waits until its client.acquired,
        client.timeout or client.error (a connect error), or until a snapshot counts fewer
        waiting than are under way here (a client cancelled while it waited, as when the
        run stops, writes no event)."""
        instance = event.get("instance") or 0
        client = event.get("client")
        if client is None:
            return
        waits = data._waits.get(instance)
        if waits is None:  # from now on, this instance's waits are counted from its events
            waits = data._waits[instance] = {}
            data._pending.pop(instance, None)
        waits[int(client)] = t
        self._add_counts(data, t)

    def _acquired(self, data: ScenarioData, event: Event, t: float) -> None:
        """A client got a connection. In the default stream (schema 6), which has no
        pool.checkout, this is the checkout too, with the pool's counts."""
        if not data.events["pool.checkout"]:
            self._checkout(data, event, t)
            self._pool_counts(data, event, t)
        self._wait_ended(data, event, t)
        self._waited(data, event)

    def _waited(self, data: ScenarioData, event: Event) -> None:
        """A wait that ended, with a connection or in a timeout at its full length: every
        wait counts, as in the summary's `wait_time_ms`."""
        wait = event.get("wait_ms")
        if wait is None:
            return
        data.wait_ms.add(wait)
        stats = self._client(data, event)
        if stats is not None:
            stats.waits += 1
            stats.wait_sum_ms += wait
            if wait > stats.wait_max_ms:
                stats.wait_max_ms = wait

    def _released(self, data: ScenarioData, event: Event, t: float) -> None:
        if not data.events["pool.checkin"]:  # the default stream: this is the checkin
            self._returned(data, event, t)
        held = event.get("held_ms")
        if held is not None:
            data.use_ms.add(held)

    def _timeout(self, data: ScenarioData, event: Event, t: float) -> None:
        self._wait_ended(data, event, t)
        instance = event.get("instance") or 0
        pending = event.get("pending_requests")
        if isinstance(pending, int) and instance not in data._waits:
            data._pending[instance] = pending
            self._add_counts(data, t)
        data.timeouts.append(t)
        self._waited(data, event)
        stats = self._client(data, event)
        if stats is not None:
            stats.timeouts += 1

    def _error(self, data: ScenarioData, event: Event, t: float) -> None:
        if event.get("phase") != "query":  # a connect error ends the wait for a connection
            self._wait_ended(data, event, t)
        data.errors.append(t)
        stats = self._client(data, event)
        if stats is not None:
            stats.errors += 1

    def _stats(self, data: ScenarioData, event: Event, t: float) -> None:
        self._snapshot_pending(data, event, t)
        wait = _percentiles(event.get("wait_time_ms"))
        use = _percentiles(event.get("use_time_ms"))
        server = event.get("server")
        sessions = (
            float(sum(v for v in server.values() if isinstance(v, int | float)))
            if isinstance(server, dict)
            else math.nan
        )
        data.monitor.append(
            t,
            _number(event.get("utilisation")),
            _number(event.get("checkouts_per_s")),
            *wait,
            *use,
            sessions,
            _number(event.get("connections_total")),
            _number(event.get("pending_requests")),
            float(event.get("instance") or 0),
        )
        if any(key in event for key in MEMORY_COLUMNS[1:-1]):
            data.memory.append(
                t,
                *(_number(event.get(key)) for key in MEMORY_COLUMNS[1:-1]),
                float(event.get("instance") or 0),
            )

    @staticmethod
    def _snapshot_pending(data: ScenarioData, event: Event, t: float) -> None:
        """A snapshot's count of clients waiting. Where the waits are counted from their
        events, the snapshot is taken on the same event loop, so the two agree unless waits
        ended without an event (cancelled): the longest ones under way are taken to have
        ended. Elsewhere, the snapshot's count is the count."""
        instance = event.get("instance") or 0
        pending = event.get("pending_requests")
        if not isinstance(pending, int) or isinstance(pending, bool):
            return
        waits = data._waits.get(instance)
        if waits is None:
            data._pending[instance] = pending
        elif len(waits) > pending:
            for client in sorted(waits, key=waits.__getitem__)[: len(waits) - pending]:
                del waits[client]
        else:
            return
        Folder._add_counts(data, t)

    def _alert(self, data: ScenarioData, event: Event, t: float) -> None:
        if len(data.alerts) < MAX_LISTED:
            data.alerts.append((t, str(event.get("kind") or "alert")))

    def _fault(self, data: ScenarioData, event: Event, t: float) -> None:
        if len(data.faults) >= MAX_LISTED:
            return
        kind = event["event"].split(".", 1)[1]
        began = event.get("began_t")
        start = float(began) if isinstance(began, int | float) else t
        downtime = event.get("downtime_ms")
        end = start + float(downtime) / 1000 if isinstance(downtime, int | float) else start
        label = str(event.get("method") or kind)
        data.faults.append(Fault(start, max(end, start), kind, label))

    def _fault_over(self, data: ScenarioData, event: Event, t: float) -> None:
        """A restart's end (schema 4 on): its band runs from when it began to here."""
        for fault in reversed(data.faults):
            if fault.kind == "restart":
                fault.end_t = max(fault.end_t, t)
                return

    def _end(self, data: ScenarioData, event: Event, t: float) -> None:
        instance = event.get("instance") or 0
        waits = data._waits.get(instance)
        if waits or data._pending.get(instance):  # the run is over: no one waits any more
            if waits:
                waits.clear()
            else:
                data._pending[instance] = 0
            self._add_counts(data, t)
        summary = event.get("summary")
        data.instance_summaries[int(event.get("instance") or 0)] = (
            summary if isinstance(summary, dict) else {}
        )

    def _fleet(self, data: ScenarioData, event: Event, t: float) -> None:
        summary = event.get("summary")
        data.fleet_summary = summary if isinstance(summary, dict) else {}

    def _warning(self, data: ScenarioData, event: Event, t: float) -> None:
        if len(data.warnings) < MAX_MESSAGES:
            data.warnings.append(str(event.get("message")))

    def _threshold(self, data: ScenarioData, event: Event, t: float) -> None:
        if len(data.thresholds) < MAX_LISTED:
            data.thresholds.append(
                {key: value for key, value in event.items() if key not in ENVELOPE}
            )


def _number(value: Any) -> float:
    return (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
    )


def _percentiles(values: Any) -> tuple[float, ...]:
    if not isinstance(values, dict) or not values.get(STAT_COUNT):
        return (math.nan,) * len(_PERCENTILE_KEYS)
    return tuple(_number(values.get(key)) for key in _PERCENTILE_KEYS)


def read_logs(sources: Iterable[LogSource], note: Note | None = None) -> list[LogData]:
    """Reads several logs; standard input at most once."""
    logs: list[LogData] = []
    stdin_used = False
    for source in sources:
        if source.path is None:
            if stdin_used:
                raise EventLogError("'-' (standard input) can be given only once")
            stdin_used = True
        logs.append(read_log(source, note))
    return logs
