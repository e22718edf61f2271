"""`--otlp-endpoint`: the live metrics pushed over OTLP/HTTP (protobuf) to a collector, with
the OpenTelemetry SDK's data model and its OTLP exporter.

The families are the ones `/metrics` serves (live_metrics.py), turned into the SDK's
`MetricsData` (cumulative sums, gauges, explicit-bucket histograms) and handed to
`OTLPMetricExporter.export`: no instrument records a value a second time, the run's own
figures are what is sent. A thread of its own sends the latest families at each
`monitor.stats` (the newest wins when the collector is slow), and the last ones when the run
ends, so the collector gets the final totals. A collector that cannot be reached is a
warning, once; the run goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from loadsim import __version__
from loadsim.run.live_metrics import BUCKETS_S, Family, Sample

#: How long one push may take, and how long the end waits for the last one.
EXPORT_TIMEOUT_S = 5.0
_CUMULATIVE = AggregationTemporality.CUMULATIVE


class OtlpPush:
    """Pushes what is published to one OTLP/HTTP endpoint, from a thread of its own."""

    def __init__(self, endpoint: str, run_id: str, warn: Callable[[str], None]) -> None:
        self.endpoint = endpoint
        self._warn = warn
        self._exporter = OTLPMetricExporter(endpoint=endpoint, timeout=EXPORT_TIMEOUT_S)
        self._resource = Resource.create(
            {"service.name": "loadsim", "service.version": __version__, "loadsim.run_id": run_id}
        )
        self._scope = InstrumentationScope("loadsim", __version__)
        self._published: dict[str, tuple[Family, ...]] = {}
        self._started: dict[str, int] = {}  # pool → when its cumulative figures began (ns)
        self._changed = threading.Event()
        self._closing = False
        self._warned = False
        self._problem = _FirstProblem()
        logging.getLogger("opentelemetry.exporter").addHandler(self._problem)
        logging.getLogger("opentelemetry.exporter").propagate = False  # said once, by us
        self._thread = threading.Thread(target=self._send, name="loadsim-otlp", daemon=True)
        self._thread.start()

    def publish(self, pool: str, families: tuple[Family, ...]) -> None:
        self._started.setdefault(pool, time.time_ns())
        self._published = {**self._published, pool: families}
        self._changed.set()

    def close(self) -> None:
        """Sends what was last published, then stops."""
        self._closing = True
        self._changed.set()
        self._thread.join(timeout=EXPORT_TIMEOUT_S * 2)  # one under way, then the last
        self._exporter.shutdown(timeout_millis=EXPORT_TIMEOUT_S * 1000)
        logging.getLogger("opentelemetry.exporter").removeHandler(self._problem)

    def _send(self) -> None:
        while True:
            self._changed.wait()
            self._changed.clear()
            published = self._published
            if published:
                result = self._exporter.export(
                    self.metrics_data(published), timeout_millis=EXPORT_TIMEOUT_S * 1000
                )
                if result is not MetricExportResult.SUCCESS and not self._warned:
                    self._warned = True
                    reason = self._problem.first or "the collector did not accept them"
                    self._warn(f"--otlp-endpoint {self.endpoint}: cannot push metrics: {reason}")
            if self._closing:
                return

    def metrics_data(self, published: dict[str, tuple[Family, ...]]) -> MetricsData:
        now = time.time_ns()
        by_name: dict[str, list[tuple[str, Family]]] = {}
        for pool, families in published.items():
            for family in families:
                by_name.setdefault(family.name, []).append((pool, family))
        metrics = [self._metric(same, now) for same in by_name.values()]
        return MetricsData(
            resource_metrics=[
                ResourceMetrics(
                    resource=self._resource,
                    scope_metrics=[ScopeMetrics(scope=self._scope, metrics=metrics, schema_url="")],
                    schema_url="",
                )
            ]
        )

    def _metric(self, same: list[tuple[str, Family]], now: int) -> Metric:
        first = same[0][1]
        data: Sum | Gauge | Histogram
        if first.kind == "histogram":
            data = Histogram(
                data_points=[
                    _histogram_point(sample, self._started[pool], now)
                    for pool, family in same
                    for sample in family.samples
                ],
                aggregation_temporality=_CUMULATIVE,
            )
        else:
            points = [
                NumberDataPoint(
                    attributes=dict(sample.labels),
                    start_time_unix_nano=self._started[pool],
                    time_unix_nano=now,
                    value=sample.value,
                )
                for pool, family in same
                for sample in family.samples
            ]
            if first.kind == "counter":
                data = Sum(
                    data_points=points, aggregation_temporality=_CUMULATIVE, is_monotonic=True
                )
            else:
                data = Gauge(data_points=points)
        return Metric(name=first.name, description=first.description, unit=first.unit, data=data)


def _histogram_point(sample: Sample, started: int, now: int) -> HistogramDataPoint:
    """OTLP's buckets are counts per bucket (the last one past every bound), not cumulative."""
    cumulative = [*sample.buckets, sample.count]
    counts = [cumulative[0]] + [
        cumulative[i] - cumulative[i - 1] for i in range(1, len(cumulative))
    ]
    return HistogramDataPoint(
        attributes=dict(sample.labels),
        start_time_unix_nano=started,
        time_unix_nano=now,
        count=sample.count,
        sum=sample.sum,
        bucket_counts=counts,
        explicit_bounds=list(BUCKETS_S),
        min=sample.min,
        max=sample.max,
    )


class _FirstProblem(logging.Handler):
    """The exporter's first complaint, for our one warning."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is None:  # the first says why; later ones that it kept failing
            self.first = record.getMessage().splitlines()[0][:300]
