"""`--metrics-port`: Prometheus's `/metrics` for as long as the run lasts (prometheus-client).

The server is prometheus-client's own (a daemon thread); it reads the families last published
for each pool (live_metrics.py), which the run replaces at every `monitor.stats`: a scrape
never waits for the event loop, and never sees a half-made update (the families are frozen,
swapped in one assignment). Binding happens before the run starts: a port in use is a
one-line error then.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from loadsim.errors import ScenarioError
from loadsim.run.live_metrics import BUCKETS_S, Family, prometheus_name

#: Every interface, as exporters do (a container's port is published from there).
ADDRESS = "0.0.0.0"


class PoolCollector(Collector):
    """The families last published for each pool, as Prometheus metric families."""

    def __init__(self) -> None:
        self._published: dict[str, tuple[Family, ...]] = {}

    def publish(self, pool: str, families: tuple[Family, ...]) -> None:
        self._published = {**self._published, pool: families}  # one swap: a scrape sees all

    def collect(self) -> Iterator[Metric]:
        by_name: dict[str, list[Family]] = {}
        for families in self._published.values():
            for family in families:
                by_name.setdefault(family.name, []).append(family)
        for same in by_name.values():
            yield _metric(same)


def _metric(families: list[Family]) -> Metric:
    first = families[0]
    name, help_text = prometheus_name(first), first.description
    samples = [sample for family in families for sample in family.samples]
    keys = [key for key, _ in samples[0].labels] if samples else []
    metric: GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily
    if first.kind == "histogram":
        metric = HistogramMetricFamily(name, help_text, labels=keys, unit="seconds")
        for sample in samples:
            buckets = [
                (_bound(bound), float(count))
                for bound, count in zip(BUCKETS_S, sample.buckets, strict=True)
            ]
            buckets.append(("+Inf", float(sample.count)))
            metric.add_metric([value for _, value in sample.labels], buckets, sample.sum)
        return metric
    if first.kind == "counter":
        metric = CounterMetricFamily(name, help_text, labels=keys)
    else:
        metric = GaugeMetricFamily(name, help_text, labels=keys)
    for sample in samples:
        metric.add_metric([value for _, value in sample.labels], sample.value)
    return metric


def _bound(seconds: float) -> str:
    return repr(seconds)


class Exposition:
    """The `/metrics` server of one process."""

    def __init__(self, port: int, named: str) -> None:
        """`named`: how the person set the port (`--metrics-port 9464`), for the error."""
        self.port = port
        self.collector = PoolCollector()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        try:
            self._server, self._thread = start_http_server(port, addr=ADDRESS, registry=registry)
        except OSError as error:
            raise ScenarioError(port_problem(named, error)) from None

    def publish(self, pool: str, families: tuple[Family, ...]) -> None:
        self.collector.publish(pool, families)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def port_problem(named: str, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return f"{named}: the port is in use (another loadsim, or another exporter?)"
    return f"{named}: cannot serve metrics there: {error.strerror or error}"


def check_port_free(port: int, named: str) -> None:
    """Binds the port as the server would, and lets go: a fleet's parent checks its
    instances' ports before starting any."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ADDRESS, port))
        except OSError as error:
            raise ScenarioError(port_problem(named, error)) from None
