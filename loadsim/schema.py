"""The event stream's schema: the one place an event, a field or a summary key is declared.

Standard library only: the run side emits what is declared here, and the report side, the
thresholds and the benchmarks read it, without either importing the other.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

POOL_EVENTS = frozenset(
    {
        "pool.connect",
        "pool.first_connect",
        "pool.checkout",
        "pool.checkin",
        "pool.close",
        "pool.close_detached",
        "pool.detach",
        "pool.invalidate",
        "pool.soft_invalidate",
        "pool.reset",
    }
)
CLIENT_EVENTS = frozenset(
    {
        "client.waiting",
        "client.acquired",
        "client.released",
        "client.timeout",
        "client.error",
        "client.cancelled",
    }
)
MONITOR_EVENTS = frozenset(
    {
        "monitor.stats",
        "monitor.leak_suspected",
        "monitor.leak_reclaimed",
        "monitor.leak_returned",
        "monitor.leak_collected",
        "monitor.alert",
    }
)
FAULT_EVENTS = frozenset({"fault.restart", "fault.terminate"})
RUN_EVENTS = frozenset({"run.start", "run.end", "run.warning", "run.threshold", "run.summary"})
EVENT_NAMES = POOL_EVENTS | CLIENT_EVENTS | MONITOR_EVENTS | FAULT_EVENTS | RUN_EVENTS
#: Events written whatever `--events` or LOG_LEVEL select.
ALWAYS_WRITTEN = frozenset({"run.start", "run.end", "run.summary"})

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

# ------------------------------------------------------------------------ the summary

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def _percentile_key(percentile: float) -> str:
    return "p" + f"{percentile:g}".replace(".", "_")


PERCENTILE_KEYS = tuple(_percentile_key(percentile) for percentile in PERCENTILES)
#: The figures of every latency, in `monitor.stats` and in the summary.
LATENCY_STATS = ("count", "mean", *PERCENTILE_KEYS, "max")
#: Latencies (each `NAME_ms` in a snapshot and in the summary).
LATENCY_NAMES = ("wait_time", "use_time", "query_time", "create_time", "response_time", "loop_lag")

#: Summary figures that add up across instances: counts, rates, and (an upper bound) peaks.
ADDITIVE_FIGURES = (
    "checkouts",
    "checkouts_per_s",
    "requests",
    "requests_per_s",
    "dropped",
    "timeouts",
    "errors",
    "connects",
    "connects_per_s",
    "closes",
    "invalidations",
    "detaches",
    "max_open",
    "max_pending_requests",
    "leaks_suspected",
    "leaks_reclaimed",
    "leaks_collected",
)
