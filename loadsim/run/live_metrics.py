"""The live metrics of a run, one model for Prometheus's `/metrics` and for an OTLP push.

They are taken from what the run measures, at the moment it measures it: each `monitor.stats`
snapshot (and the pool's state at the end of a scenario) is turned into `Family`s, published
to the exposition (exposition.py) and the OTLP push (otlp.py). So a scrape and the event log
agree exactly: every value is one of a `monitor.stats` snapshot's, or the run's histograms as
they were at it (`Latency.buckets`).

Names are OpenTelemetry's database client metrics (`db.client.connection.*`) and loadsim's
own (`loadsim.*`); Prometheus spells them with underscores, the unit (`_seconds`) and, for
counters, `_total` (`prometheus_name`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from loadsim.config.settings import RunConfig
from loadsim.errors import ScenarioError
from loadsim.run.metrics import Buckets, Latency, RunMetrics

Kind = Literal["gauge", "counter", "histogram"]
Labels = tuple[tuple[str, str], ...]

#: Histogram bounds in seconds: from half a millisecond (a connection handed straight over)
#: to a minute (past any pool_timeout worth having).
BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_BUCKETS_US = [round(bound * 1_000_000) for bound in BUCKETS_S]


@dataclass(frozen=True)
class Sample:
    labels: Labels
    value: float = 0.0
    #: Histograms: values at or below each of BUCKETS_S, their count and sum (seconds).
    buckets: tuple[int, ...] = ()
    count: int = 0
    sum: float = 0.0
    min: float = 0.0
    max: float = 0.0


@dataclass(frozen=True)
class Family:
    name: str  # OpenTelemetry's spelling: db.client.connection.count
    kind: Kind
    unit: str  # UCUM, as OpenTelemetry has it: "s", "{connection}"
    description: str
    samples: tuple[Sample, ...] = field(default=())


def prometheus_name(family: Family) -> str:
    """As Prometheus spells it (without the `_total` that counters get on exposition)."""
    name = family.name.replace(".", "_")
    return f"{name}_seconds" if family.unit == "s" else name


@dataclass(frozen=True)
class Moment:
    """What a snapshot says about the pool, as `monitor.stats` has it."""

    pool: Mapping[str, int]  # connections_used, connections_idle, overflow, pending_requests
    oldest_wait_ms: float
    totals: Mapping[str, int]
    server: Mapping[str, int] | None
    utilisation: float | None


def moment_of(snapshot: Mapping[str, Any]) -> Moment:
    """A `monitor.stats` snapshot's figures."""
    return Moment(
        pool=snapshot,
        oldest_wait_ms=snapshot["oldest_wait_ms"],
        totals=snapshot["totals"],
        server=snapshot["server"],
        utilisation=snapshot["utilisation"],
    )


def families(
    config: RunConfig, run_id: str, instance: int, moment: Moment, metrics: RunMetrics
) -> tuple[Family, ...]:
    """Every live metric of one pool at one moment."""
    base: Labels = (
        ("run_id", run_id),
        ("scenario", config.scenario),
        ("pool_name", f"{config.scenario}/{instance}"),
    )

    def one(value: float, **labels: str) -> Sample:
        return Sample(base + tuple(labels.items()), value=float(value))

    def histogram(latency: Latency) -> tuple[Sample, ...]:
        return (_histogram_sample(base, latency.buckets(_BUCKETS_US)),)

    pool, totals = moment.pool, moment.totals
    queue_pool = config.pool.pool_class == "queue"
    capacity = config.pool.capacity
    connection = "{connection}"
    leaks = ("suspected", "reclaimed", "collected")
    return (
        Family(
            "db.client.connection.count",
            "gauge",
            connection,
            "Connections open in the pool, by state (used: checked out; idle: in the pool)",
            (
                one(pool["connections_used"], state="used"),
                one(pool["connections_idle"], state="idle"),
            ),
        ),
        Family(
            "db.client.connection.max",
            "gauge",
            connection,
            "The most connections the pool may open (pool_size + max_overflow)",
            (one(capacity),) if capacity is not None else (),
        ),
        Family(
            "db.client.connection.idle.max",
            "gauge",
            connection,
            "The most idle connections the pool keeps (pool_size)",
            (one(config.pool.pool_size if queue_pool else 0),),
        ),
        Family(
            "db.client.connection.pending_requests",
            "gauge",
            "{request}",
            "Clients waiting for a connection",
            (one(pool["pending_requests"]),),
        ),
        Family(
            "db.client.connection.timeouts",
            "counter",
            "{timeout}",
            "Waits for a connection that ended in the pool's TimeoutError",
            (one(totals["timeouts"]),),
        ),
        Family(
            "db.client.connection.create_time",
            "histogram",
            "s",
            "Time to open a new connection",
            histogram(metrics.create_time),
        ),
        Family(
            "db.client.connection.wait_time",
            "histogram",
            "s",
            "Time waiting for a connection: every wait, a timed-out one at its full length",
            histogram(metrics.wait_time),
        ),
        Family(
            "db.client.connection.use_time",
            "histogram",
            "s",
            "Time between checking a connection out and giving it back",
            histogram(metrics.use_time),
        ),
        Family(
            "loadsim.connection.overflow",
            "gauge",
            connection,
            "Overflow connections open beyond pool_size",
            (one(pool["overflow"]),),
        ),
        Family(
            "loadsim.oldest_wait",
            "gauge",
            "s",
            "How long the longest-waiting client has been waiting",
            (one(moment.oldest_wait_ms / 1000),),
        ),
        Family(
            "loadsim.utilisation",
            "gauge",
            "1",
            "Time-weighted connections in use / the pool's maximum, over the last interval",
            (one(moment.utilisation),) if moment.utilisation is not None else (),
        ),
        Family(
            "loadsim.checkouts",
            "counter",
            "{checkout}",
            "Connections checked out of the pool",
            (one(totals["checkouts"]),),
        ),
        Family(
            "loadsim.connects",
            "counter",
            connection,
            "Connections the pool opened",
            (one(totals["connects"]),),
        ),
        Family(
            "loadsim.errors",
            "counter",
            "{error}",
            "Connect and query errors, by the driver's exception",
            tuple(one(count, kind=kind) for kind, count in sorted(metrics.errors_by_kind.items())),
        ),
        Family(
            "loadsim.leaks",
            "counter",
            "{checkout}",
            "Checkouts held past leak_threshold (suspected), taken back (reclaimed), or "
            "garbage-collected while checked out (collected)",
            tuple(one(totals[f"leaks_{kind}"], kind=kind) for kind in leaks),
        ),
        Family(
            "loadsim.server.sessions",
            "gauge",
            "{session}",
            "Our sessions on the server by state, from pg_stat_activity",
            tuple(
                one(count, state=state) for state, count in sorted((moment.server or {}).items())
            ),
        ),
        Family(
            "loadsim.loop_lag",
            "histogram",
            "s",
            "How late the event loop wakes a 10 ms sleep: is loadsim itself keeping up?",
            histogram(metrics.loop_lag),
        ),
    )


def _histogram_sample(labels: Labels, buckets: Buckets) -> Sample:
    return Sample(
        labels,
        buckets=buckets.cumulative,
        count=buckets.count,
        sum=buckets.sum_us / 1_000_000,
        min=buckets.min_us / 1_000_000,
        max=buckets.max_us / 1_000_000,
    )


class Output(Protocol):
    """Where published families go: the exposition, the OTLP push."""

    def publish(self, pool: str, families: tuple[Family, ...]) -> None: ...

    def close(self) -> None: ...


class LiveMetrics:
    """Where a process's live metrics go: `/metrics` on a port, an OTLP endpoint, or both.
    Each library is imported only when it is asked for."""

    def __init__(
        self,
        config: RunConfig,
        run_id: str,
        instance: int | None,
        warn: Callable[[str], None],
    ) -> None:
        self._outputs: list[Output] = []
        if config.metrics_port is not None:
            from loadsim.run.exposition import Exposition

            port = config.metrics_port + (instance or 0)
            self._outputs.append(Exposition(port, port_named(config, instance)))
        if config.otlp_endpoint is not None:
            from loadsim.run.otlp import OtlpPush

            try:
                self._outputs.append(OtlpPush(config.otlp_endpoint, run_id, warn))
            except BaseException:
                self.close()
                raise

    @property
    def wanted(self) -> bool:
        return bool(self._outputs)

    def publish(self, pool: str, published: tuple[Family, ...]) -> None:
        for output in self._outputs:
            output.publish(pool, published)

    def close(self) -> None:
        outputs, self._outputs = self._outputs, []
        for output in reversed(outputs):
            output.close()


def port_named(config: RunConfig, instance: int | None) -> str:
    """The port as the person set it, for an error: `--metrics-port 9464`,
    `LOADSIM_METRICS_PORT=9464`, and in a fleet which instance's port it is."""
    assert config.metrics_port is not None
    source = config.sources.get("metrics_port")
    named = (
        f"--metrics-port {config.metrics_port}"
        if source == "flag"
        else f"LOADSIM_METRICS_PORT={config.metrics_port}"
    )
    if instance is None:
        return named
    return f"{named}: instance {instance}'s port {config.metrics_port + instance}"


def check_fleet_ports(configs: Sequence[RunConfig]) -> None:
    """A fleet's instances serve `/metrics` on consecutive ports from --metrics-port: the
    parent checks they are all free (and are ports) before any instance starts."""
    first = configs[0]
    if first.metrics_port is None:
        return
    from loadsim.run.exposition import check_port_free

    instances = max(config.instances for config in configs)
    for instance in range(instances):
        named = port_named(first, instance)
        if first.metrics_port + instance > 65_535:
            raise ScenarioError(
                f"{named}: the instances serve metrics on ports {first.metrics_port} to "
                f"{first.metrics_port + instances - 1}, past the largest TCP port (65535)"
            )
        check_port_free(first.metrics_port + instance, named)
