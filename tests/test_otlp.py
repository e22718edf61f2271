"""`--otlp-endpoint`: a real run pushes its live metrics over OTLP/HTTP to a receiver here
that decodes them with OTLP's own protobuf messages (opentelemetry-proto); each push is a
moment of the run's log, the last one its run.end, and a collector that cannot be reached is
one warning while the run goes on."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from loadsim.run.live_metrics import BUCKETS_S
from tests.helpers import (
    RunLoadsim,
    free_port,
    live_figures,
    parse_events,
    published_moments,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Receiver(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, ExportMetricsServiceRequest]] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        self.server.requests.append((self.path, self.headers["Content-Type"], request))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def samples_of(request: ExportMetricsServiceRequest) -> Samples:
    """A push as the samples a scrape of /metrics would show (Prometheus's names), and
    checks of what only OTLP has (units, temporality, bucket counts)."""
    samples: Samples = {}
    for resource in request.resource_metrics:
        attributes = {item.key: item.value.string_value for item in resource.resource.attributes}
        assert attributes["service.name"] == "loadsim"
        for scope in resource.scope_metrics:
            assert scope.scope.name == "loadsim"
            for metric in scope.metrics:
                name = metric.name.replace(".", "_") + ("_seconds" if metric.unit == "s" else "")
                kind = metric.WhichOneof("data")
                if kind == "histogram":
                    assert metric.histogram.aggregation_temporality == 2  # cumulative
                    for point in metric.histogram.data_points:
                        assert list(point.explicit_bounds) == list(BUCKETS_S)
                        assert sum(point.bucket_counts) == point.count
                        samples[(f"{name}_count", _labels(point.attributes))] = point.count
                    continue
                points = metric.sum.data_points if kind == "sum" else metric.gauge.data_points
                if kind == "sum":
                    assert metric.sum.is_monotonic
                    name += "_total"
                for point in points:
                    samples[(name, _labels(point.attributes))] = point.as_double
    return samples


def _labels(attributes: object) -> frozenset[tuple[str, str]]:
    return frozenset((item.key, item.value.string_value) for item in attributes)  # type: ignore[attr-defined]


def test_every_push_is_a_moment_and_the_last_is_run_end(
    loadsim: RunLoadsim, receiver: Receiver, database_url: str
) -> None:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    result = loadsim(
        *("run", "saturation", "--duration", "3s", "-q", "--database-url", database_url),
        *("--otlp-endpoint", endpoint),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    events = parse_events(result.stdout)
    moments = published_moments(events, "saturation")
    assert len(receiver.requests) >= 3  # the start, the snapshots, the end
    pushed = []
    for path, content_type, request in receiver.requests:
        assert path == "/v1/metrics"
        assert content_type == "application/x-protobuf"
        figures = live_figures(samples_of(request), "saturation/0")
        assert set(figures) == set(moments[0].figures)
        assert any(moment.figures == figures for moment in moments), figures
        pushed.append(figures)
    assert pushed[-1] == moments[-1].figures  # the collector has run.end's totals
    assert pushed[-1]["checkouts"] > 0


def test_an_unreachable_collector_is_one_warning(loadsim: RunLoadsim, database_url: str) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1/metrics"
    result = loadsim(
        *("run", "normal", "--duration", "2s", "--database-url", database_url),
        *("--otlp-endpoint", endpoint),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "--otlp-endpoint" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"loadsim: warning: --otlp-endpoint {endpoint}: cannot push")
    parse_events(result.stdout)  # the run went on: its events are whole
    assert '"event":"run.end"' in result.stdout.replace(" ", "")
