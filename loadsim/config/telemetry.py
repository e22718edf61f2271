"""Where a run's live metrics go: the port `/metrics` is served on (`--metrics-port`,
`LOADSIM_METRICS_PORT`) and the OTLP endpoint they are pushed to (`--otlp-endpoint`,
`LOADSIM_OTLP_ENDPOINT`), checked before anything starts."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from loadsim.config.scenario import _integer

#: A TCP port; 0 (any free port) would serve metrics nobody can find.
METRICS_PORT = _integer(1, "a TCP port from 1 to 65535", 65_535, "the largest TCP port")

#: OTLP over HTTP: a collector's base URL gets the signal's path appended, as the
#: OpenTelemetry SDK does for OTEL_EXPORTER_OTLP_ENDPOINT.
OTLP_METRICS_PATH = "/v1/metrics"


def parse_otlp_endpoint(value: object) -> str:
    """An http(s) URL with a host: `http://collector:4318` posts to `/v1/metrics` there; a
    URL with a path of its own is used as it is."""
    text = str(value).strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (a bad port raises here)
    except ValueError as error:
        raise ValueError(f"expected an http:// or https:// URL, got {text!r} ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"expected an http:// or https:// URL with a host (OTLP over HTTP, "
            f"e.g. http://localhost:4318), got {text!r}"
        )
    path = parts.path if parts.path not in ("", "/") else OTLP_METRICS_PATH
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
