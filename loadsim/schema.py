"""The event stream's schema: the one place an event, a field or a summary key is declared.

Standard library only: the run side emits what is declared here, and the report side, the
thresholds and the benchmarks read it, without either importing the other. Every event is
one flat JSON object: the envelope (`ENVELOPE_FIELDS`), then its own fields (`EVENTS`). A
field has a JSON type, a unit where it has one (`ms`, `s`, `count`, `count/s`, `ratio`, `MiB`) and
a one-line meaning. `event_problems` checks an event against its declaration (the tests
check every event they see), and `json_schema` gives the same declarations as a JSON Schema
document (`loadsim schema`).

A change to an event's fields is a new `SCHEMA_VERSION`; `FIELD_RENAMES` says how an older
log's fields read in the current names, so that `loadsim report` reads every version in
`SUPPORTED_SCHEMA_VERSIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

#: The version `run.start` carries. 2: `client.timeout` carries the pool's counts under the
#: names every pool event uses (`connections_total`, ..., `pending_requests`, and `overflow`)
#: instead of version 1's `total`, `in_use`, `idle`, `waiting`. 3: `wait_time_ms` counts
#: every wait, those that ended in the pool's TimeoutError too (at their full length), and
#: `acquired_wait_time_ms` the ones that got a connection; the summary's `elapsed_s` and its
#: rates are the measured window, and `grace_s` the time after it for holders to finish.
#: 4: `fault.restart` is written as the restart begins (with `in_flight`), and its end is
#: `fault.restarted` (`downtime_ms`, `terminated`); `client.error` names its `conn`.
#: 5: `queue_jumps` among the counters and `queue_jump_share` in `monitor.stats` and the
#: summary; memory figures (`server_memory_mb`, ..., `client_memory_mb`) and `run.start`'s
#: `server_memory` and `session_settings`; a missed client deadline's `client.error`.
#: 6: `client.acquired` carries its connection's `backend_pid` and the pool's counts (the
#: moment `pool.checkout` describes), and the default stream leaves out the events that
#: repeat another's moment (`DETAIL_EVENTS`: `--events all` writes them).
SCHEMA_VERSION = 6
#: Versions of a log `loadsim report` and `compare` read.
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2, 3, 4, 5, 6})

# ------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Field:
    """One key of an event (or of an object inside one).

    `types` are JSON Schema's type names. An object's `keys`, when given, are all the keys it
    may have; `each` declares every item of an array, or every value of an object whose keys
    are open (sessions by state, errors by kind).
    """

    name: str
    types: tuple[str, ...]
    meaning: str
    unit: str | None = None
    required: bool = True
    keys: tuple[Field, ...] | None = None
    each: Field | None = None

    @property
    def description(self) -> str:
        return self.meaning if self.unit is None else f"{self.meaning} (unit: {self.unit})"


@dataclass(frozen=True)
class EventSpec:
    """One event: its name, what it means, and its fields after the envelope."""

    name: str
    meaning: str
    fields: tuple[Field, ...]

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(field.name for field in self.fields)


def _field(
    name: str,
    types: str,
    meaning: str,
    unit: str | None = None,
    *,
    optional: bool = False,
    keys: tuple[Field, ...] | None = None,
    each: Field | None = None,
) -> Field:
    """A Field, its JSON types written `"integer|null"`."""
    return Field(name, tuple(types.split("|")), meaning, unit, not optional, keys, each)


# ---------------------------------------------------------------------- the envelope

ENVELOPE_FIELDS: tuple[Field, ...] = (
    _field("ts", "string", "when the event happened, ISO 8601 in UTC"),
    _field("t", "number", "time since the scenario started (monotonic clock)", "s"),
    _field("event", "string", "the event's name, subject.verb"),
    _field("run_id", "string", "the run: every scenario and instance of one invocation"),
    _field("scenario", "string", "the scenario the event belongs to"),
    _field(
        "instance",
        "integer|null",
        "which application instance (0 for one; null: a fleet's parent process)",
    ),
)
#: The keys every event carries, first and in this order.
ENVELOPE = tuple(field.name for field in ENVELOPE_FIELDS)

# -------------------------------------------------------------------- latency figures

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def percentile_key(percentile: float) -> str:
    """A percentile's key in latency figures: 50 → `p50`, 99.9 → `p99_9`."""
    return "p" + f"{percentile:g}".replace(".", "_")


PERCENTILE_KEYS = tuple(percentile_key(percentile) for percentile in PERCENTILES)
STAT_COUNT, STAT_MEAN, STAT_MAX = "count", "mean", "max"
#: The figures of every latency, in `monitor.stats` and in the summary. With nothing
#: measured there is only `count` (0).
LATENCY_STATS = (STAT_COUNT, STAT_MEAN, *PERCENTILE_KEYS, STAT_MAX)
#: Latencies (each `NAME_ms` in a snapshot and in the summary), with what each measures and
#: the OpenTelemetry metric it is, where there is one.
LATENCIES: Mapping[str, str] = MappingProxyType(
    {
        "wait_time": "every wait for a connection, from asking the pool to getting one or "
        "to the pool's TimeoutError, a timed-out wait at its full length "
        "(db.client.connection.wait_time)",
        "acquired_wait_time": "the waits that got a connection (wait_time without the "
        "timed-out ones)",
        "use_time": "checkouts, from getting a connection to returning it "
        "(db.client.connection.use_time)",
        "query_time": "the work done on a checked-out connection",
        "create_time": "connects: the pool opening a DBAPI connection "
        "(db.client.connection.create_time)",
        "response_time": "open workloads' requests, from their intended start to their end",
        "loop_lag": "how late the event loop woke a 10 ms sleep (loadsim keeping up)",
    }
)
LATENCY_NAMES = tuple(LATENCIES)


def latency_key(name: str) -> str:
    """A latency's key in a snapshot or a summary: `wait_time` → `wait_time_ms`."""
    if name not in LATENCIES:
        raise KeyError(f"no latency {name!r}; latencies: {', '.join(LATENCY_NAMES)}")
    return f"{name}_ms"


LATENCY_FIELDS: tuple[Field, ...] = (
    _field(STAT_COUNT, "integer", "how many were measured", "count"),
    _field(STAT_MEAN, "number", "the mean", "ms", optional=True),
    *(
        _field(key, "number", f"the {percentile:g}th percentile", "ms", optional=True)
        for key, percentile in zip(PERCENTILE_KEYS, PERCENTILES, strict=True)
    ),
    _field(STAT_MAX, "number", "the largest", "ms", optional=True),
)


def _latencies(meaning: str) -> tuple[Field, ...]:
    return tuple(
        _field(
            latency_key(name),
            "object",
            f"{meaning}: {measures}; HDR histogram figures, 3 significant digits",
            keys=LATENCY_FIELDS,
        )
        for name, measures in LATENCIES.items()
    )


# ----------------------------------------------------------------------- pool counts

#: The pool's counts, as every `pool.*` event, `client.timeout` and `monitor.stats` carry
#: them (OpenTelemetry's database client names).
POOL_COUNT_FIELDS: tuple[Field, ...] = (
    _field("connections_total", "integer", "connections open, in use or idle", "count"),
    _field(
        "connections_used",
        "integer",
        "connections checked out (db.client.connection.count, state used)",
        "count",
    ),
    _field(
        "connections_idle",
        "integer",
        "connections open in the pool, not checked out (db.client.connection.count, state idle)",
        "count",
    ),
    _field("overflow", "integer", "connections open beyond pool_size (never negative)", "count"),
    _field(
        "pending_requests",
        "integer",
        "clients waiting for a connection (db.client.connection.pending_requests)",
        "count",
    ),
)
POOL_COUNTS = tuple(field.name for field in POOL_COUNT_FIELDS)

# ------------------------------------------------------------------------ counters

#: Running totals of a run, in `monitor.stats` (`totals`, and `window`: the change since the
#: snapshot before, without the high-water marks) and in the summary.
COUNTER_FIELDS: tuple[Field, ...] = (
    _field("checkouts", "integer", "connections clients got from the pool", "count"),
    _field("requests", "integer", "open workloads: requests due to start", "count"),
    _field(
        "dropped",
        "integer",
        "open workloads: requests not started (max_in_flight reached, or over a second late)",
        "count",
    ),
    _field(
        "timeouts",
        "integer",
        "checkouts that ended in the pool's TimeoutError (db.client.connection.timeouts)",
        "count",
    ),
    _field("errors", "integer", "connect and query errors", "count"),
    _field("connects", "integer", "DBAPI connections the pool opened", "count"),
    _field("closes", "integer", "DBAPI connections the pool closed", "count"),
    _field("invalidations", "integer", "connections invalidated", "count"),
    _field("detaches", "integer", "connections detached from the pool", "count"),
    _field("max_open", "integer", "the most connections open at once", "count"),
    _field("max_pending_requests", "integer", "the most clients waiting at once", "count"),
    _field("leaks_suspected", "integer", "checkouts held past leak_threshold", "count"),
    _field(
        "leaks_reclaimed",
        "integer",
        "leaked checkouts held past leak_reclaim and invalidated",
        "count",
    ),
    _field(
        "leaks_collected",
        "integer",
        "checked-out connections garbage-collected with their holder",
        "count",
    ),
    # -- queue jumps (issue 13): the async pool is not first-come first-served
    _field(
        "queue_jumps",
        "integer",
        "checkouts granted while a client that asked earlier was still waiting (one that "
        "later timed out included); a checkout the pool opened a new connection for jumps "
        "no one",
        "count",
    ),
)
#: The share of checkouts that jumped the queue (`monitor.stats`: the window's; the summary:
#: the run's).
QUEUE_JUMP_SHARE = "queue_jump_share"
#: High-water marks among the counters: not in a window's counts.
HIGH_WATER_MARKS = ("max_open", "max_pending_requests")

# ------------------------------------------------------------------------------ memory

#: Memory, in MiB: our sessions' backends on the server (their proportional set size, Pss, from
#: /proc/<pid>/smaps_rollup, where the server is on this host and readable) and loadsim's own
#: process. Optional: logs written before they were measured do not have them.
MEMORY_SNAPSHOT_FIELDS: tuple[Field, ...] = (
    _field(
        "server_memory_mb",
        "number|null",
        "our backends' memory on the server: the Pss of every connection the pool has open, "
        "added up (null: it cannot be read; run.start's server_memory says why)",
        "MiB",
        optional=True,
    ),
    _field(
        "server_memory_per_connection_mb",
        "number|null",
        "server_memory_mb over the backends measured (null: none was)",
        "MiB",
        optional=True,
    ),
    _field(
        "server_memory_backends",
        "integer",
        "how many backends server_memory_mb adds up",
        "count",
        optional=True,
    ),
    _field(
        "client_memory_mb",
        "number|null",
        "loadsim's own memory: this process's Pss (null: /proc cannot tell)",
        "MiB",
        optional=True,
    ),
)
MEMORY_SUMMARY_FIELDS: tuple[Field, ...] = (
    _field(
        "server_memory_peak_mb",
        "number|null",
        "the most memory our backends had at any snapshot (null: never measured)",
        "MiB",
        optional=True,
    ),
    _field(
        "server_memory_per_connection_mb",
        "number|null",
        "our backends' memory per connection: over every snapshot, the memory measured over "
        "the backends it was of (null: never measured)",
        "MiB",
        optional=True,
    ),
    _field(
        "client_memory_peak_mb",
        "number|null",
        "loadsim's own memory at its highest snapshot (null: not measured)",
        "MiB",
        optional=True,
    ),
)
MEMORY_START_FIELD = _field(
    "server_memory",
    "object",
    "whether our backends' memory is measured, and if not, why (said once, here)",
    optional=True,
    keys=(
        _field("measured", "boolean", "whether monitor.stats carries server_memory_mb"),
        _field("method", "string|null", "how it is measured"),
        _field(
            "reason",
            "string|null",
            "why it is not: the server is not on this host, or its processes are not readable",
        ),
    ),
)

# ----------------------------------------------------------------------- the summary

_VERDICT_FIELDS: tuple[Field, ...] = (
    _field("threshold", "string", "the threshold as written, METRIC OP NUMBER"),
    _field("metric", "string", "the summary figure it tests"),
    _field("value", "number|null", "the figure's value (null: the run has no such figure)"),
    _field("passed", "boolean", "whether the threshold held"),
)
_SESSIONS = _field("state", "integer", "sessions in this state", "count")


_RATES: tuple[Field, ...] = (
    _field(
        "checkouts_per_s",
        "number",
        "checkouts per second: those of the measured window over its length (elapsed_s)",
        "count/s",
    ),
    _field(
        "requests_per_s",
        "number",
        "open workloads: requests per second over the measured window",
        "count/s",
    ),
    _field("connects_per_s", "number", "connects per second over the measured window", "count/s"),
)
_COMMON_SUMMARY: tuple[Field, ...] = (
    _field(
        "elapsed_s",
        "number",
        "the measured window: from the clients' start to the moment the run was due to stop "
        "(its duration, a signal) or, stopping by itself, its last client's end; rates and "
        "utilisation_mean are over it",
        "s",
    ),
    _field("clients", "integer", "clients of the run (every group's)", "count"),
    *COUNTER_FIELDS,
    *_RATES,
    _field(
        "errors_by_kind",
        "object",
        "errors by phase and driver exception, e.g. query:ConnectionDoesNotExistError",
        each=_field("kind", "integer", "errors of this kind", "count"),
    ),
    _field("reuse_ratio", "number|null", "checkouts per connect (null: no connect)", "ratio"),
    *_latencies("over the run"),
    _field(
        "utilisation_mean",
        "number|null",
        "time-weighted connections in use over the pool's maximum, over the measured window "
        "(null: no maximum)",
        "ratio",
    ),
    _field(
        "utilisation_max",
        "number|null",
        "the highest utilisation of any monitor window (null: no maximum)",
        "ratio",
    ),
    _field("interrupted", "boolean", "whether a signal stopped the run"),
    _field(
        QUEUE_JUMP_SHARE,
        "number|null",
        "queue_jumps over checkouts: the share of checkouts granted while an earlier waiter "
        "was still waiting (null: no checkout)",
        "ratio",
    ),
    _field(
        "thresholds",
        "array",
        "the thresholds' verdicts, when there are thresholds",
        optional=True,
        each=_field("verdict", "object", "one threshold's verdict", keys=_VERDICT_FIELDS),
    ),
)
_FAIRNESS_FIELDS: tuple[Field, ...] = (
    _field("min", "integer", "the fewest checkouts of a client", "count"),
    _field("median", "integer", "the median client's checkouts", "count"),
    _field("max", "integer", "the most checkouts of a client", "count"),
    _field("starved_share", "number", "the share of clients that got no checkout", "ratio"),
    _field(
        "jain_index",
        "number|null",
        "Jain's fairness index of checkouts per client (1: perfectly even)",
        "ratio",
    ),
)
#: `run.end`'s summary: one instance's whole run.
SUMMARY_FIELDS: tuple[Field, ...] = (
    *_COMMON_SUMMARY,
    _field(
        "grace_s",
        "number",
        "how long the run went on after the measured window for clients holding a connection "
        "to finish (in no rate)",
        "s",
    ),
    _field(
        "clients_started_s",
        "number|null",
        "when the last client asked for its first connection",
        "s",
    ),
    _field(
        "checkouts_per_client",
        "object",
        "how evenly the pool served the clients",
        keys=_FAIRNESS_FIELDS,
    ),
    _field("stop_reason", "string", "why the run stopped: duration, iterations, signal ..."),
    _field("event_loop", "string", "the event loop that ran the clients: asyncio or uvloop"),
    _field("signal", "string|null", "the signal that interrupted the run, if one did"),
    _field(
        "pool_state", "object", "the pool's counts when the clients stopped", keys=POOL_COUNT_FIELDS
    ),
    _field(
        "server_sessions",
        "object|null",
        "the server's own count of our sessions then, by pg_stat_activity state "
        "(null: the server did not answer)",
        each=_SESSIONS,
    ),
    _field(
        "histograms",
        "object",
        "a fleet's instance only: every latency's HDR histogram, compressed and base64 "
        "encoded, for the fleet's percentiles",
        optional=True,
        keys=tuple(
            _field(name, "string", f"the encoded histogram of {name}_ms") for name in LATENCIES
        ),
    ),
    *MEMORY_SUMMARY_FIELDS,
)
_BY_INSTANCE_FIELDS: tuple[Field, ...] = (
    _field("instance", "integer", "the instance"),
    _field("checkouts", "integer", "its checkouts", "count"),
    _field("checkouts_per_s", "number", "its checkouts per second", "count/s"),
    _field("wait_time_p95_ms", "number|null", "its 95th percentile wait", "ms"),
    _field("timeouts", "integer", "its pool timeouts", "count"),
    _field("errors", "integer", "its errors", "count"),
    _field("max_open", "integer", "the most connections it had open", "count"),
)
_FAILED_INSTANCE_FIELDS: tuple[Field, ...] = (
    _field("instance", "integer", "the instance"),
    _field("exit_status", "integer", "its exit status (negative: killed by that signal)"),
)
#: `run.summary`'s summary: a fleet's instances together (counts added up; `max_open` and
#: `max_pending_requests` are sums of each instance's peak, an upper bound; percentiles from
#: the merged histograms).
FLEET_SUMMARY_FIELDS: tuple[Field, ...] = (
    *_COMMON_SUMMARY,
    _field("instances", "integer", "how many instances ended with a summary", "count"),
    _field(
        "failed_instances",
        "array",
        "the instances that failed: exited with a status the fleet did not cause with a "
        "signal, or were killed (their figures are only what they reported, if anything)",
        each=_field("failed", "object", "one failed instance", keys=_FAILED_INSTANCE_FIELDS),
    ),
    _field(
        "by_instance",
        "array",
        "a line per instance",
        each=_field("instance", "object", "one instance's figures", keys=_BY_INSTANCE_FIELDS),
    ),
)
SUMMARY_KEYS = frozenset(field.name for field in SUMMARY_FIELDS)
FLEET_SUMMARY_KEYS = frozenset(field.name for field in FLEET_SUMMARY_FIELDS)

#: Summary figures that add up across instances: counts, rates, and (an upper bound) peaks.
ADDITIVE_FIGURES = (
    *(field.name for field in COUNTER_FIELDS),
    *(field.name for field in _RATES),
)

# ---------------------------------------------------------------- threshold metrics

#: Figures thresholds accept besides the additive ones (every one is in both summaries).
RATIO_FIGURES = ("utilisation_mean", "utilisation_max", "reuse_ratio", QUEUE_JUMP_SHARE)
#: Short names people reach for first.
METRIC_ALIASES: Mapping[str, str] = MappingProxyType(
    {"leaks": "leaks_suspected", "utilisation": "utilisation_max"}
)


def latency_metric(name: str, stat: str) -> str:
    """A latency statistic's metric name: (`wait_time`, `p95`) → `wait_time_p95_ms`."""
    if stat not in LATENCY_STATS or stat == STAT_COUNT:
        raise KeyError(f"no latency statistic {stat!r}")
    return f"{latency_key(name)[: -len('_ms')]}_{stat}_ms"


#: The metric names thresholds accept (`wait_time_p95_ms < 100`, `timeouts == 0`).
METRICS: tuple[str, ...] = (
    *ADDITIVE_FIGURES,
    *RATIO_FIGURES,
    *METRIC_ALIASES,
    *(
        latency_metric(latency, stat)
        for latency in LATENCY_NAMES
        for stat in LATENCY_STATS
        if stat != STAT_COUNT
    ),
)
#: Each latency metric's summary key and statistic: `wait_time_p95_ms` → (`wait_time_ms`, `p95`).
LATENCY_METRICS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        latency_metric(latency, stat): (latency_key(latency), stat)
        for latency in LATENCY_NAMES
        for stat in LATENCY_STATS
        if stat != STAT_COUNT
    }
)
_NUMERIC = frozenset({"integer", "number"})
#: Every name `summary_figure` answers for.
FIGURES = frozenset(METRICS) | {
    field.name for field in (*SUMMARY_FIELDS, *FLEET_SUMMARY_FIELDS) if _NUMERIC & set(field.types)
}


def summary_figure(summary: Mapping[str, Any], metric: str) -> float | None:
    """A figure of a summary by its metric name: a key (`timeouts`, `elapsed_s`), an alias
    (`leaks`) or a latency's statistic (`wait_time_p95_ms`); None when the summary has none.
    An undeclared name is a KeyError: a reader's typo, not a missing figure."""
    if metric not in FIGURES:
        raise KeyError(f"{metric!r} is not a summary figure declared in loadsim.schema")
    metric = METRIC_ALIASES.get(metric, metric)
    latency = LATENCY_METRICS.get(metric)
    if latency is not None:
        figures = summary.get(latency[0])
        value = figures.get(latency[1]) if isinstance(figures, Mapping) else None
    else:
        value = summary.get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


# ------------------------------------------------------------------------ the events

_CONN = _field(
    "conn", "integer|null", "the DBAPI connection: a small integer, stable within the run"
)
_CLIENT = _field("client", "integer", "the client (a coroutine, or an open workload's request)")
_POOL_CONTEXT: tuple[Field, ...] = (
    _CONN,
    _field("backend_pid", "integer|null", "the server process behind the connection"),
    _field(
        "client",
        "integer|null",
        "the client holding or asking for the connection, when there is one",
    ),
)
_REASON = _field(
    "reason", "string|null", "the exception behind it, `Type: first line` (null: none)"
)
_HELD_MS = _field("held_ms", "number", "how long the client had held the connection", "ms")
_MESSAGE = _field("message", "string", "what happened, for people")


def _pool(name: str, meaning: str, *fields: Field) -> EventSpec:
    """A `pool.*` event: the connection, its backend and client, its own fields, then the
    pool's counts right after the event."""
    return EventSpec(name, meaning, (*_POOL_CONTEXT, *fields, *POOL_COUNT_FIELDS))


def _leak(name: str, meaning: str, *fields: Field) -> EventSpec:
    return EventSpec(
        name,
        meaning,
        (
            _field("client", "integer|null", "the client that took the connection"),
            _CONN,
            _HELD_MS,
            *fields,
        ),
    )


_EVENT_SPECS: tuple[EventSpec, ...] = (
    # -- pool.*: SQLAlchemy's pool events, by their own names
    _pool(
        "pool.connect",
        "the pool opened a DBAPI connection",
        _field(
            "connect_ms",
            "number|null",
            "how long the connect took (null: not timed)",
            "ms",
        ),
    ),
    _pool("pool.first_connect", "the pool's first connection, once per pool"),
    _pool(
        "pool.checkout",
        "a connection left the pool for a client (not in the default stream: client.acquired "
        "is its moment)",
    ),
    _pool(
        "pool.checkin",
        "a connection returned to the pool (not in the default stream: client.released follows it)",
    ),
    _pool(
        "pool.close",
        "the pool closed a connection",
        _field(
            "cause",
            "string",
            "why: overflow, recycled, invalidated, pool_invalidated, disposed, returned "
            "(NullPool) or closed",
        ),
    ),
    _pool("pool.close_detached", "a detached connection was closed"),
    _pool("pool.detach", "a connection was detached from the pool"),
    _pool("pool.invalidate", "a connection was invalidated: it will be closed", _REASON),
    _pool(
        "pool.soft_invalidate",
        "a connection was soft-invalidated: replaced at its next checkout",
        _REASON,
    ),
    _pool(
        "pool.reset",
        "the pool reset (rolled back) a returned connection (not in the default stream)",
        _field(
            "terminate_only",
            "boolean",
            "whether the connection is being closed rather than returned",
        ),
    ),
    # -- client.*: what the clients saw
    EventSpec(
        "client.waiting",
        "a client asked the pool for a connection (not in the default stream: at the "
        "t - wait_ms of its client.acquired or client.timeout)",
        (_CLIENT,),
    ),
    EventSpec(
        "client.acquired",
        "a client got a connection: the moment of its pool.checkout, with the pool's counts "
        "right after it",
        (
            _CLIENT,
            _CONN,
            _field("backend_pid", "integer|null", "the server process behind the connection"),
            _field(
                "wait_ms",
                "number",
                "how long it waited: it asked the pool (client.waiting) at t - wait_ms/1000 "
                "(absent for a cancel client's checkout)",
                "ms",
                optional=True,
            ),
            *POOL_COUNT_FIELDS,
        ),
    ),
    EventSpec(
        "client.released",
        "a client gave its connection back: after its pool.reset and pool.checkin",
        (
            _CLIENT,
            _CONN,
            _HELD_MS,
            _field(
                "invalidated",
                "boolean",
                "true when the connection was invalidated while held (absent otherwise)",
                optional=True,
            ),
        ),
    ),
    EventSpec(
        "client.timeout",
        "a checkout ended in the pool's TimeoutError; the pool's counts at that moment",
        (
            _CLIENT,
            _field("wait_ms", "number", "how long the client waited", "ms"),
            _field("message", "string", "the first line of SQLAlchemy's message"),
            *POOL_COUNT_FIELDS,
        ),
    ),
    EventSpec(
        "client.error",
        "a connect or query error (a query cut short by the client's own deadline too)",
        (
            _CLIENT,
            _field("phase", "string", "connect (asking for a connection) or query"),
            _field(
                "conn",
                "integer|null",
                "the connection the query failed on (null: a connect error, there was none)",
            ),
            _field("error", "string", "the driver's exception, e.g. TooManyConnectionsError"),
            _field("sqlstate", "string|null", "the server's SQLSTATE, when there is one"),
            _field(
                "message",
                "string",
                "the first line of the error; for a connect that found nothing listening "
                "(a unix socket gone, a refused TCP port), 'the server is not accepting "
                "connections' with the driver's exception and message beside it",
            ),
            _field(
                "deadline_ms",
                "number",
                "the client's own deadline (workload key `deadline`, asyncio.timeout) that "
                "expired while it held the connection, cancelling its query; absent for "
                "other errors",
                "ms",
                optional=True,
            ),
            _field(
                "held_ms",
                "number",
                "a missed deadline: how long the client held the connection until it had "
                "control back (the deadline, and what the cancellation took)",
                "ms",
                optional=True,
            ),
        ),
    ),
    EventSpec(
        "client.cancelled",
        "a client's task was cancelled while holding a connection",
        (_CLIENT, _CONN),
    ),
    # -- monitor.*: the periodic view, leaks and alerts
    EventSpec(
        "monitor.stats",
        "a snapshot, every monitor interval: the pool, the window's rates and latencies, "
        "the run's totals and the server's count of our sessions",
        (
            *POOL_COUNT_FIELDS,
            _field("oldest_wait_ms", "number", "how long the longest waiter has waited", "ms"),
            _field("interval_s", "number", "the window's length", "s"),
            _field(
                "window",
                "object",
                "the counters' changes over the window",
                keys=tuple(f for f in COUNTER_FIELDS if f.name not in HIGH_WATER_MARKS),
            ),
            _field("checkouts_per_s", "number", "checkouts per second in the window", "count/s"),
            _field("connects_per_s", "number", "connects per second in the window", "count/s"),
            _field(
                "utilisation",
                "number|null",
                "time-weighted connections in use over the pool's maximum in the window "
                "(null: no maximum)",
                "ratio",
            ),
            _field(
                QUEUE_JUMP_SHARE,
                "number|null",
                "the window's queue_jumps over its checkouts (null: no checkout in the window)",
                "ratio",
            ),
            *_latencies("in the window"),
            _field("totals", "object", "the counters since the start", keys=COUNTER_FIELDS),
            _field(
                "server",
                "object|null",
                "our sessions on the server by pg_stat_activity state (null: no answer)",
                each=_SESSIONS,
            ),
            *MEMORY_SNAPSHOT_FIELDS,
        ),
    ),
    _leak(
        "monitor.leak_suspected",
        "a checkout held past leak_threshold",
        _field("threshold_ms", "number", "the leak threshold", "ms"),
        _field(
            "acquired_at",
            "array|null",
            "where the connection was taken, innermost frame first",
            each=_field("frame", "string", "file:line in function"),
        ),
    ),
    _leak(
        "monitor.leak_reclaimed",
        "a suspected leak held past leak_reclaim: invalidated, its place freed",
    ),
    _leak("monitor.leak_returned", "a suspected leak was returned after all"),
    _leak(
        "monitor.leak_collected",
        "a checked-out connection was garbage-collected with its holder",
    ),
    EventSpec(
        "monitor.alert",
        "a condition that lasted three snapshots in a row",
        (
            _field("kind", "string", "saturated or server_disagrees"),
            _MESSAGE,
            _field(
                "pending_requests",
                "integer",
                "saturated: clients waiting",
                "count",
                optional=True,
            ),
            _field(
                "oldest_wait_ms",
                "number",
                "saturated: the longest wait so far",
                "ms",
                optional=True,
            ),
            _field(
                "pool_connections",
                "integer",
                "server_disagrees: connections open by the pool's count",
                "count",
                optional=True,
            ),
            _field(
                "server_sessions",
                "integer|null",
                "server_disagrees: our sessions by the server's count",
                "count",
                optional=True,
            ),
        ),
    ),
    # -- fault.*: what was done to the server
    EventSpec(
        "fault.restart",
        "a server restart begins (or, when the server is not ours, the termination of all "
        "our sessions); written as it begins, before anything it causes",
        (
            _field("at_s", "number", "when it was scheduled", "s"),
            _field("began_t", "number", "when it began, on the event clock `t`", "s"),
            _field("method", "string", "how: a server restart, or pg_terminate_backend"),
            _field(
                "in_flight",
                "integer",
                "checkouts under way as it began (0: it waited for a moment between "
                "checkouts, holding new ones; its sessions were all idle)",
                "count",
            ),
        ),
    ),
    EventSpec(
        "fault.restarted",
        "the restart is over: the server is up again (or our sessions have all ended)",
        (
            _field("at_s", "number", "when it was scheduled", "s"),
            _field("began_t", "number", "when it began, on the event clock `t`", "s"),
            _field("method", "string", "how: a server restart, or pg_terminate_backend"),
            _field("downtime_ms", "number", "how long it took, from began_t", "ms"),
            _field(
                "terminated",
                "integer|null",
                "sessions terminated (null: a restart)",
                "count",
            ),
        ),
    ),
    EventSpec(
        "fault.terminate",
        "our backends were terminated with pg_terminate_backend",
        (
            _field("at_s", "number", "when it was scheduled", "s"),
            _field("began_t", "number", "when it began, on the event clock `t`", "s"),
            _field("which", "string", "idle or all"),
            _field("terminated", "integer", "sessions terminated", "count"),
        ),
    ),
    # -- run.*: the run's beginning, verdicts and end
    EventSpec(
        "run.start",
        "a scenario starts: the resolved configuration (the first event of a log)",
        (
            _field("schema_version", "integer", "the version of this schema the log follows"),
            _field("description", "string", "the scenario's one-line description"),
            _field("database", "string", "embedded, or the server's URL with the password masked"),
            _field("server_version", "string", "PostgreSQL's version"),
            _field("server_max_connections", "integer", "the server's max_connections", "count"),
            _field("application_name", "string", "how our sessions are named on the server"),
            _field("pool", "object", "the resolved pool settings ([pool] of a scenario)"),
            _field("workload", "object", "the resolved main workload (durations in s)"),
            _field(
                "groups",
                "array",
                "the client groups besides the main workload",
                each=_field("group", "object", "one group's settings"),
            ),
            _field("faults", "object", "the scheduled faults and session timeouts"),
            _field(
                "session_settings",
                "object",
                "the server settings every session of the pool gets (asyncpg server_settings: "
                "our sessions only): the scenario's [session] table and its [faults] idle "
                "timeouts (in ms)",
                optional=True,
                each=_field("value", "string", "the setting's value, as PostgreSQL takes it"),
            ),
            _field("monitor", "object", "the monitor's interval and leak thresholds"),
            _field(
                "thresholds",
                "array",
                "the thresholds to check at the end",
                each=_field("threshold", "string", "METRIC OP NUMBER"),
            ),
            _field("arrivals", "object|null", "an open workload's arrivals (null: closed)"),
            _field("instances", "integer", "application instances of the scenario", "count"),
            _field(
                "start_wait_s",
                "number",
                "with --start-at or --barrier: how long this process waited before its load "
                "began, for the fleet's other shards and the start they agreed, or for the "
                "start time (0 when the time had passed; a stop cuts it short)",
                "s",
                optional=True,
            ),
            _field(
                "barrier_wait_s",
                "number",
                "with --barrier: the part of start_wait_s spent waiting for the other shards "
                "to arrive (the last to arrive waits least)",
                "s",
                optional=True,
            ),
            _field(
                "barrier_start_server_s",
                "number",
                "with --barrier: the instant the fleet agreed to begin, epoch seconds on the "
                "database server's clock",
                "s",
                optional=True,
            ),
            _field(
                "began_epoch_s",
                "number",
                "a shard's, an instance's of --instances, or with --start-at: when this "
                "process's load began (after any wait), epoch seconds on its own clock; absent "
                "when a stop came first",
                "s",
                optional=True,
            ),
            _field(
                "began_server_s",
                "number",
                "a shard's began_epoch_s on the database server's clock (with "
                "server_clock_offset_ms): what `loadsim merge` compares across machines",
                "s",
                optional=True,
            ),
            _field(
                "server_clock_offset_ms",
                "number",
                "a shard's measure of the server's clock less its own: the server's "
                "clock_timestamp() against the midpoint of the round trip, the shortest of a "
                "few",
                "ms",
                optional=True,
            ),
            _field(
                "clock_rtt_ms",
                "number",
                "that measurement's round trip: the offset is good to half of it",
                "ms",
                optional=True,
            ),
            _field("seed", "integer|null", "the random seed (null: unseeded)"),
            _field(
                "sources",
                "object",
                "where each resolved value came from (flag, environment, scenario, preset)",
                each=_field("source", "string", "the value's source"),
            ),
            _field("loadsim_version", "string", "loadsim's version"),
            _field("sqlalchemy_version", "string", "SQLAlchemy's version"),
            _field("python_version", "string", "Python's version"),
            MEMORY_START_FIELD,
        ),
    ),
    EventSpec(
        "run.warning",
        "something worth knowing before the results",
        (_MESSAGE,),
    ),
    EventSpec("run.threshold", "a threshold evaluated at the end", _VERDICT_FIELDS),
    EventSpec(
        "run.end",
        "a scenario (or one instance of it) ended: its summary",
        (_field("summary", "object", "the run's summary", keys=SUMMARY_FIELDS),),
    ),
    EventSpec(
        "size.step",
        "loadsim size: one measured step (a pool size, a kind, a repeat), after its warm-up",
        (
            _field("kind", "string", "capacity (closed, saturating) or queue (open, target rate)"),
            _field("pool_size", "integer", "the pool's size (max_overflow 0)", "count"),
            _field("repeat", "integer", "which repeat of this size and kind, from 0", "count"),
            _field("clients", "integer", "closed-loop clients (two per connection)", "count"),
            _field("warmup_s", "number", "the time left out at the start", "s"),
            _field("elapsed_s", "number", "the measured time after the warm-up", "s"),
            _field(
                "checkouts",
                "integer",
                "checkouts after the warm-up, with the holders finishing",
                "count",
            ),
            _field("checkouts_per_s", "number", "throughput", "count/s"),
            _field("requests_per_s", "number|null", "queue steps: requests started", "count/s"),
            _field("dropped", "integer", "requests dropped (max_in_flight reached)", "count"),
            _field("timeouts", "integer", "the pool's TimeoutErrors", "count"),
            _field("errors", "integer", "connect and query errors", "count"),
            _field("wait_mean_ms", "number|null", "mean wait for a connection", "ms"),
            _field("wait_p50_ms", "number|null", "median wait", "ms"),
            _field("wait_p99_ms", "number|null", "99th percentile wait", "ms"),
            _field("use_mean_ms", "number|null", "mean time a connection was held", "ms"),
            _field("use_p99_ms", "number|null", "99th percentile hold", "ms"),
            _field("hold_cv2", "number|null", "holds' variance over their mean squared", "ratio"),
            _field(
                "p_wait", "number", "share of checkouts that waited past the threshold", "ratio"
            ),
            _field("wait_threshold_ms", "number", "a wait longer than this queued", "ms"),
            _field(
                "loop_lag_p99_ms", "number|null", "event loop lag, p99: is loadsim keeping up", "ms"
            ),
            _field("utilisation", "number|null", "mean connections in use / pool size", "ratio"),
            _field(
                "server_memory_peak_mb",
                "number|null",
                "our backends' memory at its peak (null: not measured, see run.start)",
                "MiB",
                optional=True,
            ),
            _field(
                "server_memory_per_connection_mb",
                "number|null",
                "our backends' memory per connection",
                "MiB",
                optional=True,
            ),
            _field("drift", "number|null", "second half's throughput / first half's - 1", "ratio"),
            _field("steady", "boolean", "the throughput drifted by at most a fifth"),
            _field("slo_value", "number|null", "queue steps: the SLO's metric"),
            _field("slo_passed", "boolean|null", "queue steps: the SLO held"),
            _field("model_p_wait", "number|null", "Erlang C's C(c, a)", "ratio"),
            _field("model_p_wait_longer", "number|null", "Erlang C's P(Wq > threshold)", "ratio"),
            _field("model_mean_wait_ms", "number|null", "Erlang C's (Allen-Cunneen) E[Wq]", "ms"),
            _field("model_p99_wait_ms", "number|null", "Erlang C's 99th percentile wait", "ms"),
            _field(
                "model_gap",
                "number|null",
                "(measured - modelled mean wait) / the larger of the two",
                "ratio",
            ),
        ),
    ),
    EventSpec(
        "size.fit",
        "loadsim size: the Universal Scalability Law fitted to the capacity steps",
        (
            _field("fitted", "boolean", "a fit was possible (three sizes or more)"),
            _field("reason", "string|null", "why not, when not"),
            _field("gamma", "number|null", "throughput of one connection", "count/s"),
            _field("alpha", "number|null", "contention", "ratio"),
            _field("beta", "number|null", "coherency", "ratio"),
            _field("r_squared", "number|null", "the fit's R squared", "ratio"),
            _field("peak", "number|null", "N* = sqrt((1 - alpha) / beta); null: no peak", "count"),
            _field("ceiling", "number|null", "the most throughput the fit allows", "count/s"),
            _field(
                "knee", "integer|null", "the smallest size with 95% of the best throughput", "count"
            ),
            _field("points", "integer", "capacity steps fitted", "count"),
            _field(
                "predicted",
                "array",
                "the fit's throughput at each measured pool size",
                each=_field(
                    "point",
                    "object",
                    "one pool size",
                    keys=(
                        _field("pool_size", "integer", "the pool's size", "count"),
                        _field("checkouts_per_s", "number", "the fit's throughput", "count/s"),
                    ),
                ),
            ),
        ),
    ),
    EventSpec(
        "size.recommendation",
        "loadsim size: the recommended pool, and why",
        (
            _field(
                "pool_size", "integer|null", "recommended pool_size; null: none qualifies", "count"
            ),
            _field("max_overflow", "integer", "recommended max_overflow, for bursts", "count"),
            _field("met", "boolean", "a size met the SLO (else the command exits 1)"),
            _field("reason", "string", "the recommendation in words"),
            _field("slo", "string", "the SLO, as a threshold"),
            _field("target_rate", "number|null", "the queue steps' arrival rate", "count/s"),
            _field("knee", "integer|null", "the USL fit's knee", "count"),
            _field("instances", "integer", "application instances sized for", "count"),
            _field(
                "fleet_connections",
                "integer|null",
                "instances x (pool_size + max_overflow)",
                "count",
            ),
            _field(
                "server_connections",
                "integer|null",
                "the server's max_connections less its reserved slots",
                "count",
            ),
            _field(
                "shared_pool_size", "integer|null", "one pool for the fleet, by Erlang C", "count"
            ),
            _field("shared_saving", "integer|null", "connections one shared pool saves", "count"),
            _field("steps", "integer", "steps measured", "count"),
            _field("interrupted", "boolean", "the sweep was stopped before its end"),
            _field(
                "notes",
                "array",
                "where measurement and model differ, with the likely cause",
                each=_field("note", "string", "one difference"),
            ),
        ),
    ),
    EventSpec(
        "run.summary",
        "with --instances, after every instance's run.end (and from `loadsim merge`, after "
        "every shard's): the fleet's figures",
        (
            _field("instances", "integer", "the scenario's instances", "count"),
            _field(
                "start_skew_ms",
                "number",
                "how far apart the instances began their load: the latest run.start "
                "began_server_s (shards' logs that all have it; else began_epoch_s, each "
                "machine's own clock) less the earliest",
                "ms",
                optional=True,
            ),
            _field(
                "summary",
                "object",
                "the instances' summaries together",
                keys=FLEET_SUMMARY_FIELDS,
            ),
        ),
    ),
)
#: Every event, by name.
EVENTS: Mapping[str, EventSpec] = MappingProxyType({spec.name: spec for spec in _EVENT_SPECS})


def _kind(prefix: str) -> frozenset[str]:
    return frozenset(name for name in EVENTS if name.startswith(prefix))


POOL_EVENTS = _kind("pool.")
CLIENT_EVENTS = _kind("client.")
MONITOR_EVENTS = _kind("monitor.")
FAULT_EVENTS = _kind("fault.")
RUN_EVENTS = _kind("run.")
SIZE_EVENTS = _kind("size.")
EVENT_NAMES = frozenset(EVENTS)
#: Events that describe a moment another event of the default stream describes too, left out
#: of it (written with `--events all`, or when named): `pool.checkout` is `client.acquired`'s
#: moment and counts, `client.waiting` is at its `t - wait_ms`, and `pool.checkin` and
#: `pool.reset` come with every `client.released`. Six lines a checkout would be two.
DETAIL_EVENTS = frozenset({"pool.checkout", "pool.checkin", "pool.reset", "client.waiting"})
#: What a run writes when `--events` is not given.
DEFAULT_EVENTS = EVENT_NAMES - DETAIL_EVENTS
#: Events written whatever `--events` or LOG_LEVEL select.
ALWAYS_WRITTEN = frozenset({"run.start", "run.end", "run.summary", *SIZE_EVENTS})

#: Events that report a problem; LOG_LEVEL=warning keeps only these (and run.start/run.end).
WARNING_EVENTS = frozenset(
    {
        "client.timeout",
        "client.error",
        "client.cancelled",
        "pool.invalidate",
        "pool.soft_invalidate",
        "monitor.leak_suspected",
        "monitor.leak_reclaimed",
        "monitor.leak_returned",
        "monitor.leak_collected",
        "monitor.alert",
        "run.warning",
        *FAULT_EVENTS,
    }
)
#: Events that report a failure; LOG_LEVEL=error keeps only these (and run.start/run.end).
ERROR_EVENTS = frozenset({"client.error"})
LEVELS = ("debug", "info", "warning", "error")

# ------------------------------------------------------------------- older versions

#: Fields renamed in the version after each key: version → event → old name → new name.
#: (A version-1 `client.timeout` read this way has no `overflow`: version 1 did not count it.)
FIELD_RENAMES: Mapping[int, Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        1: {
            "client.timeout": {
                "total": "connections_total",
                "in_use": "connections_used",
                "idle": "connections_idle",
                "waiting": "pending_requests",
            }
        }
    }
)
#: Events whose fields an older version names differently.
RENAMED_EVENTS = frozenset(name for renames in FIELD_RENAMES.values() for name in renames)


def upgrade_event(event: dict[str, Any], version: int) -> dict[str, Any]:
    """A `version` event with its fields renamed to the current version's names (the same
    dict when nothing is renamed); the order of the fields is kept."""
    for older in range(version, SCHEMA_VERSION):
        renames = FIELD_RENAMES.get(older, {}).get(event.get("event", ""))
        if renames and not renames.keys().isdisjoint(event):
            event = {renames.get(key, key): value for key, value in event.items()}
    return event


# ----------------------------------------------------------------------- checking


def undeclared_fields(event: Mapping[str, Any]) -> list[str]:
    """The top-level fields of an event that its declaration lacks (every field but the
    envelope's when the event's name is unknown)."""
    spec = EVENTS.get(str(event.get("event")))
    declared = set(ENVELOPE) | (set(spec.field_names) if spec is not None else set())
    return [key for key in event if key not in declared]


def event_problems(event: Mapping[str, Any]) -> list[str]:
    """What is wrong with one event (a line of the stream, parsed) against the schema: an
    unknown name, a field not declared, a declared field missing or of another JSON type,
    at any depth. Empty when it conforms."""
    name = event.get("event")
    spec = EVENTS.get(name) if isinstance(name, str) else None
    if spec is None:
        return [f"unknown event name {name!r}"]
    problems: list[str] = []
    _check_keys(event, (*ENVELOPE_FIELDS, *spec.fields), spec.name, problems)
    return problems


def _check_keys(
    value: Mapping[str, Any], fields: tuple[Field, ...], path: str, problems: list[str]
) -> None:
    declared = {field.name: field for field in fields}
    for key in value:
        if key not in declared:
            problems.append(f"{path}: field {key!r} is not declared in loadsim.schema")
    for field in fields:
        if field.name in value:
            _check_value(value[field.name], field, f"{path}.{field.name}", problems)
        elif field.required:
            problems.append(f"{path}: declared field {field.name!r} is missing")


def _check_value(value: Any, field: Field, path: str, problems: list[str]) -> None:
    kind = _json_type(value)
    if kind not in field.types and not (kind == "integer" and "number" in field.types):
        problems.append(f"{path}: {kind} {value!r:.60}, declared {'|'.join(field.types)}")
        return
    if kind == "object":
        if field.keys is not None:
            _check_keys(value, field.keys, path, problems)
        elif field.each is not None:
            for key, item in value.items():
                _check_value(item, field.each, f"{path}.{key}", problems)
    elif kind == "array" and field.each is not None:
        for index, item in enumerate(value):
            _check_value(item, field.each, f"{path}[{index}]", problems)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    ):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


# -------------------------------------------------------------------- JSON Schema

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """The schema as a JSON Schema (draft 2020-12) document describing one line of the
    event stream: one of the events, told apart by `event`."""
    definitions = {spec.name: _event_schema(spec) for spec in EVENTS.values()}
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:loadsim:event-stream:v{SCHEMA_VERSION}",
        "title": "loadsim event",
        "description": (
            f"One line of loadsim's JSONL event stream, schema version {SCHEMA_VERSION} "
            "(run.start's schema_version). Durations are in keys ending _ms; units are given "
            "in each field's description."
        ),
        "type": "object",
        "required": list(ENVELOPE),
        "properties": {"event": {"enum": sorted(EVENTS)}},
        "oneOf": [{"$ref": f"#/$defs/{name}"} for name in definitions],
        "$defs": definitions,
    }


def _event_schema(spec: EventSpec) -> dict[str, Any]:
    fields = (*ENVELOPE_FIELDS, *spec.fields)
    properties = {field.name: _field_schema(field) for field in fields}
    properties["event"] = {"const": spec.name, "description": properties["event"]["description"]}
    return {
        "description": spec.meaning,
        "type": "object",
        "properties": properties,
        "required": [field.name for field in fields if field.required],
        "additionalProperties": False,
    }


def _field_schema(field: Field) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": field.types[0] if len(field.types) == 1 else list(field.types),
        "description": field.description,
    }
    if field.keys is not None:
        schema["properties"] = {key.name: _field_schema(key) for key in field.keys}
        schema["required"] = [key.name for key in field.keys if key.required]
        schema["additionalProperties"] = False
    elif field.each is not None and "object" in field.types:
        schema["additionalProperties"] = _field_schema(field.each)
    if field.each is not None and "array" in field.types:
        schema["items"] = _field_schema(field.each)
    return schema
